//! Rate limits (SPEC §2 `rate_limits`): GCRA per key, keys `client_ip`, `user`, `route`,
//! `global` or `header:NAME`. State lives in a bounded cache: a key idle for longer than its
//! limit's horizon is forgotten (it would be as good as new anyway), and at most `max_keys`
//! keys are tracked per limit, so a flood of distinct IPs or cookies cannot grow memory.

pub mod gcra;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderName};

use crate::config::{FieldError, RateLimitConfig};
pub use gcra::{Decision, Quota};

/// Keys tracked per limit when `max_keys` is not set.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;

#[derive(Clone, Debug)]
enum KeyKind {
    ClientIp,
    User,
    Route,
    Global,
    Header(HeaderName),
}

/// What a limit may key on, for one request.
pub struct LimitInput<'a> {
    pub client_ip: IpAddr,
    pub user: Option<&'a str>,
    pub route: &'a str,
    pub headers: &'a HeaderMap,
}

/// One named limit and its state.
pub struct RateLimit {
    pub name: String,
    kind: KeyKind,
    pub quota: Quota,
    cells: moka::sync::Cache<Box<str>, Arc<AtomicU64>>,
    epoch: Instant,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimit({})", self.name)
    }
}

impl RateLimit {
    pub fn build(name: &str, cfg: &RateLimitConfig) -> Result<Self, FieldError> {
        let kind = match cfg.key.as_str() {
            "client_ip" => KeyKind::ClientIp,
            "user" => KeyKind::User,
            "route" => KeyKind::Route,
            "global" => KeyKind::Global,
            other => KeyKind::Header(
                other.strip_prefix("header:").and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()).ok_or_else(
                    || FieldError::new(format!("rate_limits.{name}.key"), format!("invalid key {other:?}")),
                )?,
            ),
        };
        let quota = Quota::new(cfg.rate, cfg.per.0, cfg.burst);
        let cells = moka::sync::Cache::builder()
            .max_capacity(cfg.max_keys.unwrap_or(DEFAULT_MAX_KEYS))
            .time_to_idle(quota.horizon().max(std::time::Duration::from_millis(1)))
            .build();
        Ok(Self { name: name.to_owned(), kind, quota, cells, epoch: Instant::now() })
    }

    /// Keyed by the caller's identity: checked after the auth hook.
    pub fn is_user_keyed(&self) -> bool {
        matches!(self.kind, KeyKind::User)
    }

    /// Counts one request against this limit.
    pub fn check(&self, input: &LimitInput<'_>) -> Decision {
        let key: Box<str> = match &self.kind {
            KeyKind::ClientIp => input.client_ip.to_string().into(),
            KeyKind::User => input.user.unwrap_or_default().into(),
            KeyKind::Route => input.route.into(),
            KeyKind::Global => "".into(),
            // A missing header shares one bucket: leaving it out must not escape the limit.
            KeyKind::Header(h) => {
                input.headers.get(h).map(|v| String::from_utf8_lossy(v.as_bytes()).into()).unwrap_or_default()
            }
        };
        self.check_key(key)
    }

    /// Counts one request for `key`.
    pub fn check_key(&self, key: Box<str>) -> Decision {
        let cell = self.cells.get_with(key, || Arc::new(AtomicU64::new(0)));
        // +1: a stored 0 means "fresh", so `now` is never 0.
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let (decision, next) = self.quota.check(tat, now);
            if !decision.allowed {
                return decision;
            }
            match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return decision,
                Err(current) => tat = current,
            }
        }
    }

    /// Keys currently tracked (after pending evictions run).
    pub fn tracked_keys(&self) -> u64 {
        self.cells.run_pending_tasks();
        self.cells.entry_count()
    }
}
