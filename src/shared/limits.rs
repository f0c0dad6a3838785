//! Rate limits in Redis: the GCRA of `ratelimit::gcra`, run atomically by one Lua script for all
//! of a request phase's limits (one round trip; a refusal counts against none of them). Time is
//! Redis's own clock (`TIME`), so replicas with skewed clocks agree; microseconds, which Lua's
//! doubles hold exactly. Each key expires once it would be as good as new.
//! On Redis Cluster keys may live on different shards, so each limit is its own call.

use std::sync::LazyLock;
use std::time::Duration;

use super::Shared;
use crate::ratelimit::{Decision, Quota};

/// KEYS: one per limit. ARGV: per limit, its emission interval and capacity in µs and 1 when it
/// is a dry run. Returns {i, reset_us, retry_us} for the first enforced limit i (1-based) that
/// refuses (and stores nothing); else stores every new TAT (a dry-run limit that would refuse
/// keeps its TAT, as a refusal would) and returns {-i, reset_us, retry_us} for the first dry-run
/// limit that would have refused, or {0}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local would = nil
for i = 1, #KEYS do
  local emission = tonumber(ARGV[3 * i - 2])
  local capacity = tonumber(ARGV[3 * i - 1])
  local dry = ARGV[3 * i] == '1'
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + emission
  if new_tat - now > capacity then
    if not dry then
      return {i, tat - now, new_tat - now - capacity}
    end
    if not would then would = {-i, tat - now, new_tat - now - capacity} end
  else
    tats[i] = new_tat
  end
end
for i = 1, #KEYS do
  if tats[i] then
    local ttl = math.ceil((tats[i] - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  end
end
if would then return would end
return {0}
"#;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA));

/// One limit of a check: its key in Redis, its quota, and whether it only reports.
pub struct SharedLimit<'a> {
    pub key: String,
    pub quota: &'a Quota,
    pub dry_run: bool,
}

/// What Redis decided for a request phase.
#[derive(Clone, Copy, Debug)]
pub enum Checked {
    AllAllow,
    /// Limit `i` (enforced) refuses; nothing was counted.
    Refused(usize, Decision),
    /// Limit `i` (a dry run) would have refused; the request was counted against the others.
    WouldRefuse(usize, Decision),
}

impl Shared {
    /// Counts one request against every limit at once; `None`: Redis could not answer (take
    /// the fallback).
    pub async fn check_limits(&self, limits: &[SharedLimit<'_>]) -> Option<Checked> {
        if self.is_cluster() {
            let mut checked = Checked::AllAllow;
            for (i, limit) in limits.iter().enumerate() {
                match self.run_script(std::slice::from_ref(limit)).await? {
                    Checked::Refused(_, decision) => return Some(Checked::Refused(i, decision)),
                    Checked::WouldRefuse(_, decision) if matches!(checked, Checked::AllAllow) => {
                        checked = Checked::WouldRefuse(i, decision);
                    }
                    _ => {}
                }
            }
            return Some(checked);
        }
        self.run_script(limits).await
    }

    async fn run_script(&self, limits: &[SharedLimit<'_>]) -> Option<Checked> {
        let mut invocation = SCRIPT.prepare_invoke();
        for l in limits {
            let emission_us = (l.quota.emission_ns / 1000).max(1);
            invocation
                .key(&l.key)
                .arg(emission_us)
                .arg(emission_us.saturating_mul(u64::from(l.quota.burst)))
                .arg(u8::from(l.dry_run));
        }
        let reply: Vec<i64> = self.run(async |conn| conn.invoke(&invocation).await).await?;
        let micros = |v: Option<&i64>| Duration::from_micros(u64::try_from(v.copied().unwrap_or(0)).unwrap_or(0));
        let first = reply.first().copied().unwrap_or(0);
        if first == 0 {
            return Some(Checked::AllAllow);
        }
        let index = usize::try_from(first.unsigned_abs() - 1).unwrap_or(0).min(limits.len().saturating_sub(1));
        let decision =
            Decision { allowed: false, remaining: 0, reset: micros(reply.get(1)), retry_after: micros(reply.get(2)) };
        Some(if first > 0 { Checked::Refused(index, decision) } else { Checked::WouldRefuse(index, decision) })
    }
}
