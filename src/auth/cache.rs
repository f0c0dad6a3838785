//! The auth cache: per credential, keyed by an HMAC of the forwarded credential headers under a
//! per-process random key (never the raw values), so one caller's identity cannot be served
//! to another. Concurrent misses for one key make one hook call. Allows live `ttl`, denies
//! `negative_ttl`; failures are never cached.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use http::{HeaderMap, HeaderName};

use super::{AuthError, Identity};

/// A cached decision.
#[derive(Clone)]
enum Decision {
    Allow(Arc<Identity>),
    Deny,
}

struct ByDecision {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<[u8; 32], Decision> for ByDecision {
    fn expire_after_create(&self, _: &[u8; 32], value: &Decision, _: Instant) -> Option<Duration> {
        Some(match value {
            Decision::Allow(_) => self.ttl,
            Decision::Deny => self.negative_ttl,
        })
    }
}

/// Bounded (`max_entries`) cache of auth decisions.
pub struct AuthCache {
    key: hmac::Key,
    entries: moka::future::Cache<[u8; 32], Decision>,
}

impl AuthCache {
    /// An empty cache under a fresh random key; fails only if the system RNG does.
    pub fn new(ttl: Duration, negative_ttl: Duration, max_entries: u64) -> Result<Self, String> {
        let mut secret = [0u8; 32];
        SystemRandom::new().fill(&mut secret).map_err(|_| "the system random number generator failed".to_owned())?;
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            entries: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ByDecision { ttl, negative_ttl })
                .support_invalidation_closures()
                .build(),
        })
    }

    /// The cache key of a request: HMAC over the names and values of the forwarded headers.
    pub fn key(&self, names: &[HeaderName], headers: &HeaderMap) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for name in names {
            ctx.update(name.as_str().as_bytes());
            ctx.update(&[0]);
            for value in headers.get_all(name) {
                ctx.update(&(value.len() as u64).to_be_bytes());
                ctx.update(value.as_bytes());
            }
            ctx.update(&[0xff]);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(&tag.as_ref()[..32]);
        out
    }

    /// The cached decision, or the result of `call` (run once for concurrent misses).
    /// Returns whether this caller ran `call`.
    pub async fn get_or_call<F, Fut>(&self, key: [u8; 32], call: F) -> (Result<Arc<Identity>, AuthError>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Arc<Identity>>, String>>,
    {
        let called = AtomicBool::new(false);
        let result = self
            .entries
            .try_get_with(key, async {
                called.store(true, Ordering::Relaxed);
                call().await.map(|answer| match answer {
                    Some(identity) => Decision::Allow(identity),
                    None => Decision::Deny,
                })
            })
            .await;
        let outcome = match result {
            Ok(Decision::Allow(identity)) => Ok(identity),
            Ok(Decision::Deny) => Err(AuthError::Denied),
            Err(cause) => Err(AuthError::Unavailable(cause.to_string())),
        };
        (outcome, called.load(Ordering::Relaxed))
    }

    /// Forgets every cached identity of `user_id` (logout, `/admin/revoke`).
    pub fn forget_user(&self, user_id: &str) {
        let user = user_id.to_owned();
        let _ = self
            .entries
            .invalidate_entries_if(move |_, d| matches!(d, Decision::Allow(i) if i.id() == Some(user.as_str())));
    }
}
