//! Rate limits (SPEC §2 `rate_limits`): GCRA per key, keys `client_ip`, `user`, `user.<field>`
//! (an identity field: a tenant, a plan), `route`, `global` or `header:NAME`. A `dry_run` limit
//! is counted like any other but never refuses (its caller reports what it would have done). Counters live in a bounded store that outlives the config (a
//! reload keeps them when the limit's shape is unchanged): a key idle for longer than its
//! limit's horizon is forgotten (it would be as good as new anyway), and at most `max_keys`
//! keys are tracked per limit, so a flood of distinct IPs or cookies cannot grow memory.

pub mod fields;
pub mod gcra;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use http::HeaderName;

use crate::config::{FieldError, RateLimitConfig, RateLimitHeaders};
use crate::header_view::HeaderView;
use crate::shelf::Shelf;
pub use gcra::{Decision, Quota};

/// Keys tracked per limit when `max_keys` is not set.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;

/// Independent locks, so concurrent checks rarely wait on each other.
const SHARDS: usize = 64;

#[derive(Clone, Debug)]
enum KeyKind {
    ClientIp,
    User,
    /// An identity field (`user.tenant`); a missing field shares one bucket.
    UserField(String),
    Route,
    Global,
    Header(HeaderName),
}

/// The bytes a request is counted under (an address's octets, a user id, a header value).
pub enum LimitKey<'a> {
    Ip([u8; 16], usize),
    Bytes(&'a [u8]),
    /// A non-string identity field, as JSON.
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for LimitKey<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Ip(bytes, len) => &bytes[..*len],
            Self::Bytes(b) => b,
            Self::Owned(b) => b,
        }
    }
}

/// What a limit may key on, for one request.
pub struct LimitInput<'a> {
    pub client_ip: IpAddr,
    /// The caller's identity fields, once the auth hook has said who it is.
    pub identity: Option<&'a serde_json::Map<String, serde_json::Value>>,
    pub route: &'a str,
    pub headers: HeaderView<'a>,
}

/// One named limit, compiled from the config: what it keys on, its quota, and a handle to its
/// counters, which live on the process's shelf and outlive the config.
pub struct RateLimit {
    pub name: String,
    kind: KeyKind,
    pub quota: Quota,
    /// Counted, never refusing (SPEC §2 `dry_run`).
    pub dry_run: bool,
    /// The RateLimit fields its refusals carry (the top-level `rate_limit_headers`).
    pub headers: RateLimitHeaders,
    /// Keys tracked per shard at most (`max_keys` / shards).
    per_shard: usize,
    /// Name, key kind and quota as text, for the Redis key (see `shape_text`).
    shape_text: String,
    store: Arc<LimitStore>,
}

/// What a limit's counters mean: a store is reused by a new config only when its name, key and
/// quota are the same (`max_keys` may change: it only bounds how many are kept).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LimitShape {
    name: String,
    key: String,
    quota: Quota,
}

/// A limit's counters: per key, only the GCRA timestamp, under a keyed 64-bit hash of the key
/// (a per-store random key, so nobody can aim collisions; ~20 bytes per key).
pub struct LimitStore {
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
    epoch: Instant,
}

impl Default for LimitStore {
    fn default() -> Self {
        Self {
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: Instant::now(),
        }
    }
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimit({})", self.name)
    }
}

impl RateLimit {
    /// Compiles one limit; its counters come from `stores` (kept when the shape is unchanged).
    pub fn build(
        name: &str,
        cfg: &RateLimitConfig,
        headers: RateLimitHeaders,
        stores: &Shelf<LimitShape, Arc<LimitStore>>,
    ) -> Result<Self, FieldError> {
        let kind = match cfg.key.as_str() {
            "client_ip" => KeyKind::ClientIp,
            "user" => KeyKind::User,
            "route" => KeyKind::Route,
            "global" => KeyKind::Global,
            other if other.starts_with("user.") => match &other["user.".len()..] {
                "" => {
                    return Err(FieldError::new(format!("rate_limits.{name}.key"), "user. needs a field: user.tenant"))
                }
                "id" => KeyKind::User,
                field => KeyKind::UserField(field.to_owned()),
            },
            other => KeyKind::Header(
                other.strip_prefix("header:").and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()).ok_or_else(
                    || FieldError::new(format!("rate_limits.{name}.key"), format!("invalid key {other:?}")),
                )?,
            ),
        };
        let max_keys = usize::try_from(cfg.max_keys.unwrap_or(DEFAULT_MAX_KEYS)).unwrap_or(usize::MAX).max(SHARDS);
        let quota = Quota::new(cfg.rate, cfg.per.0, cfg.burst);
        let shape = LimitShape { name: name.to_owned(), key: cfg.key.clone(), quota };
        let shape_text = format!("{name}\u{0}{kind:?}\u{0}{}\u{0}{}", quota.emission_ns, quota.burst);
        Ok(Self {
            name: name.to_owned(),
            kind,
            quota,
            dry_run: cfg.dry_run,
            headers,
            shape_text,
            per_shard: max_keys / SHARDS,
            store: stores.take(shape, Arc::default),
        })
    }

    /// Keyed by the caller's identity: checked after the auth hook.
    pub fn is_user_keyed(&self) -> bool {
        matches!(self.kind, KeyKind::User | KeyKind::UserField(_))
    }

    /// Counts one request against this limit.
    pub fn check(&self, input: &LimitInput<'_>) -> Decision {
        self.check_key(self.key_of(input).as_ref())
    }

    /// What this limit counts a request under.
    pub fn key_of<'a>(&self, input: &LimitInput<'a>) -> LimitKey<'a> {
        match &self.kind {
            KeyKind::ClientIp => {
                let mut bytes = [0u8; 16];
                let len = match input.client_ip {
                    IpAddr::V4(ip) => {
                        bytes[..4].copy_from_slice(&ip.octets());
                        4
                    }
                    IpAddr::V6(ip) => {
                        bytes.copy_from_slice(&ip.octets());
                        16
                    }
                };
                LimitKey::Ip(bytes, len)
            }
            KeyKind::User => LimitKey::Bytes(
                input
                    .identity
                    .and_then(|i| i.get("id"))
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .as_bytes(),
            ),
            KeyKind::UserField(field) => match input.identity.and_then(|i| i.get(field)) {
                Some(serde_json::Value::String(s)) => LimitKey::Bytes(s.as_bytes()),
                Some(other) => LimitKey::Owned(other.to_string().into_bytes()),
                None => LimitKey::Bytes(b""),
            },
            KeyKind::Route => LimitKey::Bytes(input.route.as_bytes()),
            KeyKind::Global => LimitKey::Bytes(b""),
            // A missing header shares one bucket: leaving it out must not escape the limit.
            KeyKind::Header(h) => LimitKey::Bytes(input.headers.get(h).unwrap_or_default()),
        }
    }

    /// What makes this limit's counters what they are (name, key kind, quota), as text: the
    /// Redis key includes it, so a changed quota starts fresh there too.
    pub fn shape_text(&self) -> &str {
        &self.shape_text
    }

    /// Counts one request for `key`.
    pub fn check_key(&self, key: &[u8]) -> Decision {
        self.store.check(key, &self.quota, self.per_shard)
    }

    /// Keys currently tracked.
    pub fn tracked_keys(&self) -> u64 {
        self.store.tracked_keys()
    }
}

impl LimitStore {
    /// Counts one request for `key` under `quota`, keeping at most `per_shard` keys a shard.
    fn check(&self, key: &[u8], quota: &Quota, per_shard: usize) -> Decision {
        let hash = self.hasher.hash_one(key);
        // The top bits pick the shard; the map hashes the whole value again.
        let shard = &self.shards[(hash >> 58) as usize % SHARDS];
        // +1: a stored 0 means "fresh", so `now` is never 0.
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = map.get(&hash).copied().unwrap_or(0);
        let (decision, next) = quota.check(tat, now);
        if decision.allowed {
            if map.len() >= per_shard && !map.contains_key(&hash) {
                make_room(&mut map, now, per_shard);
            }
            map.insert(hash, next);
        }
        decision
    }

    fn tracked_keys(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len() as u64).sum()
    }
}

/// Frees room in a shard holding `limit` keys. Keys whose TAT has passed are as good as new,
/// so they go first; if the shard is still full, the eighth of it closest to refilled goes
/// (they lose the least). Evicting a batch keeps a flood of new keys from rescanning the shard
/// on every insert.
fn make_room(map: &mut HashMap<u64, u64>, now: u64, limit: usize) {
    map.retain(|_, tat| *tat > now);
    if map.len() >= limit {
        let mut tats: Vec<u64> = map.values().copied().collect();
        // At least the smallest goes (cut 0); `len >= limit >= 1` here.
        let cut = (limit / 8).min(tats.len() - 1);
        let threshold = *tats.select_nth_unstable(cut).1;
        map.retain(|_, tat| *tat > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max_keys: u64) -> RateLimit {
        let cfg: RateLimitConfig = serde_json::from_value(
            serde_json::json!({"key": "client_ip", "rate": 1, "per": "1h", "max_keys": max_keys}),
        )
        .unwrap();
        RateLimit::build("t", &cfg, RateLimitHeaders::Both, &Shelf::default()).unwrap()
    }

    #[test]
    fn the_smallest_shards_stay_bounded_and_keep_limiting() {
        let l = limit(1); // one key per shard
        for i in 0u32..10_000 {
            assert!(l.check_key(&i.to_be_bytes()).allowed);
        }
        assert!(l.tracked_keys() <= SHARDS as u64);
        assert!(l.check_key(b"again").allowed);
        assert!(!l.check_key(b"again").allowed, "a tracked key is still limited");
    }

    #[test]
    fn stale_keys_make_room_first() {
        let mut map: HashMap<u64, u64> = (0..10).map(|k| (k, if k < 5 { 100 } else { 1_000 })).collect();
        make_room(&mut map, 500, 10);
        assert_eq!(map.len(), 5, "the five whose TAT passed went; the active ones stay");
    }
}
