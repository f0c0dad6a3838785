//! The Redis tier of the auth and token caches: entries every replica reads, each
//! authenticated by an HMAC under `shared_state.secret` over its key and its value, so someone
//! who can write to Redis but does not hold the secret cannot plant an identity or a token. A
//! bad MAC is a miss, counted (`tokengate_shared_state_errors_total{kind="bad_mac"}`). Entries
//! expire with the local cache's TTL; each user's entries are listed in a set, so a revocation
//! deletes them on every replica's behalf.

use std::time::Duration;

use aws_lc_rs::hmac;
use serde_json::Value;

use super::Shared;

impl Shared {
    fn mac(&self, key: &str, json: &str) -> hmac::Tag {
        hmac::sign(&self.0.mac_key, &signed_input(key, json))
    }

    fn user_set(&self, user: &str) -> String {
        self.key("user", &[user.as_bytes()])
    }

    /// The entry under `key`, if it is there and its MAC holds.
    pub async fn cache_get(&self, key: &str) -> Option<Value> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let stored: Option<String> = self.run(async |conn| conn.query(&cmd).await).await?;
        let stored = stored?;
        let (mac_hex, json) = stored.split_once('.')?;
        let mac = decode_hex(mac_hex);
        // Constant time: aws-lc compares the tags.
        let valid = mac.as_deref().is_some_and(|m| hmac::verify(&self.0.mac_key, &signed_input(key, json), m).is_ok());
        if !valid {
            if let Some(m) = self.0.metrics.get() {
                m.errors.with_label_values(&["bad_mac"]).inc();
            }
            tracing::warn!("shared state: a cache entry in Redis failed its MAC; ignored");
            return None;
        }
        serde_json::from_str(json).ok()
    }

    /// Stores `value` under `key` for `ttl`, listed under `user` for revocation. Best effort:
    /// a failure only means the other replicas will ask for themselves.
    pub async fn cache_put(&self, key: &str, value: &Value, ttl: Duration, user: Option<&str>) {
        let json = value.to_string();
        let tag = self.mac(key, &json);
        let mut stored = String::with_capacity(json.len() + 65);
        for b in tag.as_ref() {
            stored.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            stored.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        stored.push('.');
        stored.push_str(&json);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
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

fn signed_input(key: &str, json: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(23 + key.len() + json.len());
    input.extend_from_slice(b"tokengate cache entry\0");
    input.extend_from_slice(key.as_bytes());
    input.push(0);
    input.extend_from_slice(json.as_bytes());
    input
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}
