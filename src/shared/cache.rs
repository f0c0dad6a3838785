//! The Redis tier of the auth and token caches: entries every replica reads, each
//! authenticated by an HMAC under `shared_state.secret`, so someone who can write to Redis but
//! does not hold the secret can neither plant an identity or a token nor bring an old one back:
//!
//! ```text
//! <hex MAC>.<deadline, unix ms>.<generation key or ->.<generation>.<JSON value>
//! ```
//!
//! The MAC covers the entry's key and everything after it. An entry is a miss past its own
//! deadline, whatever TTL Redis was told, and, when it belongs to a user, unless it carries
//! that user's current revocation generation (a counter a revocation increments): an entry
//! saved before a revoke and written back afterwards is dead. A bad MAC, or a value that is not
//! an entry at all, is a miss counted as `tokengate_shared_state_errors_total{kind="bad_mac"}`.
//! Each user's entries are also listed in a set, so a revocation deletes them at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_lc_rs::hmac;
use serde_json::Value;

use super::Shared;

/// A revocation generation outlives every entry written before it by at least this much.
const MIN_GENERATION_LIFE: Duration = Duration::from_secs(3600);

/// One stored entry's parts, as written.
struct Entry<'a> {
    mac: Vec<u8>,
    deadline_ms: u64,
    generation_key: Option<&'a str>,
    generation: u64,
    json: &'a str,
}

impl<'a> Entry<'a> {
    fn parse(stored: &'a str) -> Option<Self> {
        let mut parts = stored.splitn(5, '.');
        let mac = decode_hex(parts.next()?)?;
        let deadline_ms = parts.next()?.parse().ok()?;
        let generation_key = Some(parts.next()?).filter(|k| *k != "-");
        let generation = parts.next()?.parse().ok()?;
        Some(Self { mac, deadline_ms, generation_key, generation, json: parts.next()? })
    }
}

impl Shared {
    fn user_set(&self, user: &str) -> String {
        self.key("user", &[user.as_bytes()])
    }

    /// Where `user`'s revocation generation is counted.
    fn generation_key(&self, user: &str) -> String {
        self.key("gen", &[user.as_bytes()])
    }

    /// A user's revocation generation now (0 before any revocation); None if Redis failed.
    async fn generation(&self, key: &str) -> Option<u64> {
        let mut get = redis::cmd("GET");
        get.arg(key);
        self.run(async |conn| conn.query::<Option<u64>>(&get).await).await.map(Option::unwrap_or_default)
    }

    fn forged(&self) {
        if let Some(m) = self.0.metrics.get() {
            m.errors.with_label_values(&["bad_mac"]).inc();
        }
        tracing::warn!("shared state: a cache entry in Redis failed its MAC; ignored");
    }

    /// The entry under `key`, if it is there, its MAC holds, its deadline has not passed and,
    /// for a user's entry, no revocation came after it.
    pub async fn cache_get(&self, key: &str) -> Option<Value> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let stored: Option<String> = self.run(async |conn| conn.query(&cmd).await).await?;
        let stored = stored?;
        let Some(entry) = Entry::parse(&stored) else {
            self.forged();
            return None;
        };
        let input = signed_input(key, entry.deadline_ms, entry.generation_key, entry.generation, entry.json);
        // Constant time: aws-lc compares the tags.
        if hmac::verify(&self.0.mac_key, &input, &entry.mac).is_err() {
            self.forged();
            return None;
        }
        if entry.deadline_ms <= crate::clock::unix_now_ms() {
            return None;
        }
        if let Some(generation_key) = entry.generation_key {
            if self.generation(generation_key).await? != entry.generation {
                return None;
            }
        }
        serde_json::from_str(entry.json).ok()
    }

    /// Stores `value` under `key` for `ttl`, tied to `user`'s revocation generation and listed
    /// under `user` for revocation. Best effort: a failure only means the other replicas will
    /// ask for themselves.
    pub async fn cache_put(&self, key: &str, value: &Value, ttl: Duration, user: Option<&str>) {
        let json = value.to_string();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.0.longest_entry_ms.fetch_max(ms, Ordering::Relaxed);
        let deadline_ms = crate::clock::unix_now_ms().saturating_add(ms);
        let generation_key = user.map(|u| self.generation_key(u));
        let generation = match &generation_key {
            Some(k) => match self.generation(k).await {
                Some(g) => g,
                None => return,
            },
            None => 0,
        };
        let tag =
            hmac::sign(&self.0.mac_key, &signed_input(key, deadline_ms, generation_key.as_deref(), generation, &json));
        let mut stored = String::with_capacity(json.len() + 140);
        for b in tag.as_ref() {
            stored.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            stored.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        for part in [&deadline_ms.to_string(), generation_key.as_deref().unwrap_or("-"), &generation.to_string()] {
            stored.push('.');
            stored.push_str(part);
        }
        stored.push('.');
        stored.push_str(&json);
        let mut set = redis::cmd("SET");
        set.arg(key).arg(stored).arg("PX").arg(ms);
        if self.run(async |conn| conn.query::<()>(&set).await).await.is_none() {
            return;
        }
        if let Some(user) = user {
            let index = self.user_set(user);
            let mut add = redis::pipe();
            add.cmd("SADD").arg(&index).arg(key).ignore();
            // The set outlives its longest entry; PEXPIRE GT needs Redis 7, so set it plainly.
            add.cmd("PEXPIRE").arg(&index).arg(ms.max(300_000)).ignore();
            let _ = self.run(async |conn| conn.pipeline::<()>(&add).await).await;
        }
    }

    /// Starts a new revocation generation for `user`: every entry written before it is dead,
    /// even one written back into Redis afterwards. The counter lives longer than any entry
    /// this replica has written (and at least an hour); false when Redis could not take it.
    pub async fn next_generation(&self, user: &str) -> bool {
        let key = self.generation_key(user);
        let longest = Duration::from_millis(self.0.longest_entry_ms.load(Ordering::Relaxed));
        let life = u64::try_from(longest.max(MIN_GENERATION_LIFE).as_millis() * 2).unwrap_or(u64::MAX);
        let mut bump = redis::pipe();
        bump.cmd("INCR").arg(&key).ignore();
        bump.cmd("PEXPIRE").arg(&key).arg(life).ignore();
        self.run(async |conn| conn.pipeline::<()>(&bump).await).await.is_some()
    }

    /// Deletes every entry stored for `user` (a revocation); false when Redis could not.
    pub async fn cache_forget_user(&self, user: &str) -> bool {
        let index = self.user_set(user);
        let mut members = redis::cmd("SMEMBERS");
        members.arg(&index);
        let Some(keys) = self.run(async |conn| conn.query::<Vec<String>>(&members).await).await else {
            return false;
        };
        // One DEL per key: on Redis Cluster they live on different shards.
        for key in keys.iter().chain(std::iter::once(&index)) {
            let mut del = redis::cmd("DEL");
            del.arg(key);
            if self.run(async |conn| conn.query::<i64>(&del).await).await.is_none() {
                return false;
            }
        }
        true
    }
}

/// What an entry's MAC covers: its key, its deadline, its user's generation and its value.
fn signed_input(key: &str, deadline_ms: u64, generation_key: Option<&str>, generation: u64, json: &str) -> Vec<u8> {
    let generation_key = generation_key.unwrap_or("-");
    let mut input = Vec::with_capacity(64 + key.len() + generation_key.len() + json.len());
    input.extend_from_slice(b"tokengate cache entry v2\0");
    for part in [key.as_bytes(), &deadline_ms.to_be_bytes(), generation_key.as_bytes(), &generation.to_be_bytes()] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part);
    }
    input.extend_from_slice(json.as_bytes());
    input
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}
