//! Rate limits in Redis: the GCRA of `ratelimit::gcra`, run atomically by one Lua script for all
//! of a request phase's limits (one round trip; a refusal counts against none of them). Time is
//! Redis's own clock (`TIME`), so replicas with skewed clocks agree; microseconds, which Lua's
//! doubles hold exactly. Each key expires once it would be as good as new.
//! On Redis Cluster keys may live on different shards, so each limit is its own call.

use std::sync::LazyLock;
use std::time::Duration;

use super::Shared;
use crate::ratelimit::{Decision, Quota};

/// KEYS: one per limit. ARGV: per limit, its emission interval and capacity in µs.
/// Returns {0} when all allow (and stores every new TAT), else {i, reset_us, retry_us} for the
/// first limit i (1-based) that refuses (and stores nothing).
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i = 1, #KEYS do
  local emission = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + emission
  if new_tat - now > capacity then
    return {i, tat - now, new_tat - now - capacity}
  end
  tats[i] = new_tat
end
for i = 1, #KEYS do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
end
return {0}
"#;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA));

/// One limit of a check: its key in Redis and its quota.
pub struct SharedLimit<'a> {
    pub key: String,
    pub quota: &'a Quota,
}

impl Shared {
    /// Counts one request against every limit at once. `Some(None)`: all allow; `Some(Some(i,
    /// d))`: limit `i` refuses; `None`: Redis could not answer (take the fallback).
    pub async fn check_limits(&self, limits: &[SharedLimit<'_>]) -> Option<Option<(usize, Decision)>> {
        if self.is_cluster() {
            for (i, limit) in limits.iter().enumerate() {
                if let Some((_, decision)) = self.run_script(std::slice::from_ref(limit)).await? {
                    return Some(Some((i, decision)));
                }
            }
            return Some(None);
        }
        self.run_script(limits).await
    }

    async fn run_script(&self, limits: &[SharedLimit<'_>]) -> Option<Option<(usize, Decision)>> {
        let mut invocation = SCRIPT.prepare_invoke();
        for l in limits {
            let emission_us = (l.quota.emission_ns / 1000).max(1);
            invocation.key(&l.key).arg(emission_us).arg(emission_us.saturating_mul(u64::from(l.quota.burst)));
        }
        let reply: Vec<i64> = self.run(async |conn| conn.invoke(&invocation).await).await?;
        let micros = |v: Option<&i64>| Duration::from_micros(u64::try_from(v.copied().unwrap_or(0)).unwrap_or(0));
        match reply.first().copied() {
            Some(i) if i >= 1 => {
                let index = usize::try_from(i - 1).unwrap_or(0).min(limits.len().saturating_sub(1));
                let decision = Decision {
                    allowed: false,
                    remaining: 0,
                    reset: micros(reply.get(1)),
                    retry_after: micros(reply.get(2)),
                };
                Some(Some((index, decision)))
            }
            _ => Some(None),
        }
    }
}
