//! The auth cache: per credential, keyed by a MAC (keyed BLAKE3) of the forwarded credential
//! headers under a per-process random key (never the raw values), so one caller's identity
//! cannot be served to another. Concurrent misses for one key make one hook call. Allows live `ttl`, denies
//! `negative_ttl`; failures are never cached. Allows and denies are bounded apart
//! (`max_entries`, `max_negative_entries`): a flood of bad credentials evicts other bad
//! credentials, never a real user's session.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use http::HeaderName;
use smallvec::SmallVec;

use super::{AuthError, Identity};
use crate::header_view::HeaderView;

/// Why a miss gave no identity; shared by every caller waiting on the same call.
#[derive(Debug)]
enum Miss {
    Denied,
    Failed(String),
}

/// Bounded caches of auth decisions.
pub struct AuthCache {
    key: [u8; 32],
    allows: moka::future::Cache<[u8; 32], Arc<Identity>, DigestHash>,
    denies: moka::future::Cache<[u8; 32], (), DigestHash>,
}

/// Hashes a cache key by taking its first 8 bytes: a key is already a MAC under a secret
/// per-process key, as evenly spread as SipHash's output and as impossible for a caller to
/// aim, so hashing it again (SipHash, twice a look-up) buys nothing.
#[derive(Clone, Copy, Default)]
struct DigestHash;

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See `DigestHash`.
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length, then its bytes in one write.
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }

    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

impl AuthCache {
    /// Empty caches under a fresh random key; fails only if the system RNG does.
    pub fn new(
        ttl: Duration,
        negative_ttl: Duration,
        max_entries: u64,
        max_negative_entries: u64,
    ) -> Result<Self, String> {
        let mut secret = [0u8; 32];
        SystemRandom::new().fill(&mut secret).map_err(|_| "the system random number generator failed".to_owned())?;
        Ok(Self {
            key: secret,
            allows: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build_with_hasher(DigestHash),
            denies: moka::future::Cache::builder()
                .max_capacity(max_negative_entries)
                .time_to_live(negative_ttl)
                .build_with_hasher(DigestHash),
        })
    }

    /// The cache key of a request: a MAC over the names and values of the forwarded headers,
    /// each value length-prefixed so that no two header sets hash the same input.
    ///
    /// The input is gathered first and hashed in one call: BLAKE3's incremental hasher copies each
    /// piece into its chunk buffer, five calls for one cookie.
    pub fn key(&self, names: &[HeaderName], headers: HeaderView<'_>) -> [u8; 32] {
        let mut input = SmallVec::<[u8; 256]>::new();
        for name in names {
            input.extend_from_slice(name.as_str().as_bytes());
            input.push(0);
            for value in headers.get_all(name) {
                input.extend_from_slice(&(value.len() as u64).to_be_bytes());
                input.extend_from_slice(value);
            }
            input.push(0xff);
        }
        *blake3::keyed_hash(&self.key, &input).as_bytes()
    }

    /// The cached decision, or the result of `call` (run once for concurrent misses).
    /// Returns whether this caller ran `call`.
    pub async fn get_or_call<F, Fut>(&self, key: [u8; 32], call: F) -> (Result<Arc<Identity>, AuthError>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Arc<Identity>>, String>>,
    {
        // A hit takes neither the single flight's future nor its key's allocation.
        if let Some(identity) = self.allows.get(&key).await {
            return (Ok(identity), false);
        }
        if self.denies.contains_key(&key) {
            return (Err(AuthError::Denied), false);
        }
        // Boxed: the single flight's future (moka's, holding the hook call's) is ~6 KiB, and
        // inline it made every future above this one as large, copied at each level per request.
        Box::pin(self.miss(key, call)).await
    }

    /// A key in neither cache: one hook call for all concurrent callers (`get_or_call`).
    async fn miss<F, Fut>(&self, key: [u8; 32], call: F) -> (Result<Arc<Identity>, AuthError>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Arc<Identity>>, String>>,
    {
        let called = AtomicBool::new(false);
        // Only allows are stored by the single flight; a deny comes back as its error, to
        // every waiter, and is stored apart.
        let result = self
            .allows
            .try_get_with(key, async {
                called.store(true, Ordering::Relaxed);
                match call().await {
                    Ok(Some(identity)) => Ok(identity),
                    Ok(None) => Err(Miss::Denied),
                    Err(cause) => Err(Miss::Failed(cause)),
                }
            })
            .await;
        let called = called.load(Ordering::Relaxed);
        let outcome = match result {
            Ok(identity) => Ok(identity),
            Err(miss) => match &*miss {
                Miss::Denied => {
                    if called {
                        self.denies.insert(key, ()).await;
                    }
                    Err(AuthError::Denied)
                }
                Miss::Failed(cause) => Err(AuthError::Unavailable(cause.clone())),
            },
        };
        (outcome, called)
    }

    /// Forgets every cached identity of `user_id` (logout, `/admin/revoke`).
    pub fn forget_user(&self, user_id: &str) {
        let user = user_id.to_owned();
        let _ = self.allows.invalidate_entries_if(move |_, identity| identity.id() == Some(user.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use std::time::Duration;

    use http::{HeaderMap, HeaderName, HeaderValue};

    use super::{AuthCache, DigestHash};
    use crate::header_view::HeaderView;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v))).collect()
    }

    /// BLAKE3 keyed by `key` over each name, a zero byte, its values each after its length as
    /// eight big-endian bytes, and 0xff: written out piece by piece with the incremental hasher.
    fn mac(key: &[u8; 32], names: &[HeaderName], headers: &HeaderMap) -> [u8; 32] {
        let mut mac = blake3::Hasher::new_keyed(key);
        for name in names {
            mac.update(name.as_str().as_bytes()).update(&[0]);
            for v in headers.get_all(name) {
                mac.update(&(v.len() as u64).to_be_bytes()).update(v.as_bytes());
            }
            mac.update(&[0xff]);
        }
        *mac.finalize().as_bytes()
    }

    /// The key is that MAC (whatever the length of the values: past the inline buffer too), so
    /// no two header sets that differ give the same input, and another process's key differs.
    #[test]
    fn a_key_is_a_mac_over_names_and_length_prefixed_values() {
        let cache = AuthCache::new(Duration::from_secs(1), Duration::from_secs(1), 10, 10).unwrap();
        let names = [HeaderName::from_static("cookie"), HeaderName::from_static("authorization")];
        let both = headers(&[("cookie", "a=1"), ("cookie", "b=2"), ("authorization", "Bearer x")]);
        let long = "s=".to_owned() + &"0123456789abcdef".repeat(40);
        let mut long_cookie = HeaderMap::new();
        long_cookie.insert(http::header::COOKIE, HeaderValue::from_str(&long).unwrap());
        let cases = [
            both.clone(),
            long_cookie,
            headers(&[("cookie", "a=1b=2"), ("authorization", "Bearer x")]),
            headers(&[("cookie", "a=1"), ("cookie", "b=2")]),
            headers(&[("authorization", "Bearer x"), ("cookie", "a=1"), ("cookie", "b=3")]),
            HeaderMap::new(),
        ];
        for (i, h) in cases.iter().enumerate() {
            assert_eq!(cache.key(&names, HeaderView::Map(h)), mac(&cache.key, &names, h), "{h:?}");
            for other in &cases[i + 1..] {
                assert_ne!(
                    cache.key(&names, HeaderView::Map(h)),
                    cache.key(&names, HeaderView::Map(other)),
                    "{h:?} and {other:?}"
                );
            }
        }
        let other_process = AuthCache::new(Duration::from_secs(1), Duration::from_secs(1), 10, 10).unwrap();
        assert_ne!(
            cache.key(&names, HeaderView::Map(&both)),
            other_process.key(&names, HeaderView::Map(&both)),
            "keyed per process"
        );
    }

    #[test]
    fn a_keys_hash_is_its_first_eight_bytes() {
        let mut key = [7u8; 32];
        key[..8].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
        assert_eq!(DigestHash.hash_one(key), 0x0123_4567_89ab_cdef);
        key[31] = 0;
        assert_eq!(DigestHash.hash_one(key), 0x0123_4567_89ab_cdef, "only the first 8 bytes");
        key[0] = 0;
        assert_ne!(DigestHash.hash_one(key), 0x0123_4567_89ab_cdef);
    }
}
