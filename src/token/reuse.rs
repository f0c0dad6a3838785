//! Minting a route's tokens, reusing cached ones (`cache_tokens`) while over half their
//! lifetime is left: from this replica's cache, else (with `shared_state`) from the one in
//! Redis that every replica fills, each entry under an HMAC. A reused token was recorded in the
//! ledger by whoever minted it.

use std::sync::Arc;

use serde_json::{json, Value};

use super::mint::{Minted, Noted, TokenSpec};
use super::request::Values;
use super::Route;
use crate::auth::Identity;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::trace::Parent;

impl Route {
    /// Every token of the route, each fresh one with what the ledger records of it.
    pub(super) async fn mint_all(
        &self,
        values: &Values<'_>,
        identity: &Identity,
        metrics: &Metrics,
        parent: Parent<'_>,
    ) -> Result<Vec<(Minted, Option<Noted>)>, Error> {
        let mut minted = Vec::with_capacity(self.tokens.len());
        for (i, spec) in self.tokens.iter().enumerate() {
            let key =
                self.cache.as_ref().and_then(|_| spec.cache_key(&self.name, identity.id().unwrap_or_default(), values));
            // The Redis tier's key, once per token.
            let shared_key = key.as_ref().zip(self.shared.as_ref()).map(|(k, (s, _))| s.key("token", &[k.as_bytes()]));
            // `reuse` and `keep` boxed: their Redis exchanges would make every token request's
            // future (moved as it is built, level by level) as large, cache or not.
            if let Some(key) = &key {
                if let Some(hit) = Box::pin(self.reuse(spec, key, shared_key.as_deref(), values.now, parent)).await {
                    metrics.token_cache_total.with_label_values(&[&self.name, "hit"]).inc();
                    minted.push((hit, None));
                    continue;
                }
                metrics.token_cache_total.with_label_values(&[&self.name, "miss"]).inc();
            }
            let note = self.ledger.as_ref().map(|l| if i == 0 { l.record.as_slice() } else { &[] });
            let (token, noted) = spec.mint_noting(values, values.now, note).await?;
            if let Some(count) = self.minted.get(i) {
                count.get().inc();
            }
            if let Some(key) = key {
                Box::pin(self.keep(spec, key, shared_key.as_deref(), &token, (identity.id(), values.now), parent))
                    .await;
            }
            minted.push((token, noted));
        }
        Ok(minted)
    }

    /// A cached token with over half its lifetime left: this replica's, else the shared one.
    async fn reuse(
        &self,
        spec: &TokenSpec,
        key: &str,
        shared_key: Option<&str>,
        now: u64,
        parent: Parent<'_>,
    ) -> Option<Minted> {
        let fresh = |m: &Minted| now < m.iat + spec.ttl() / 2;
        if let Some(hit) = self.cache.as_ref()?.get(key).filter(fresh) {
            return Some(hit);
        }
        let (shared, _) = self.shared.as_ref()?;
        // A miss and a failure look the same here: the span is never marked failed.
        let entry = crate::trace::redis(parent, "GET", shared.cache_get(shared_key?), |_| true).await?;
        let token = Minted {
            token: Arc::from(entry.get("token")?.as_str()?),
            iat: entry.get("iat")?.as_u64()?,
            exp: entry.get("exp")?.as_u64()?,
        };
        let token = Some(token).filter(fresh)?;
        if let Some(cache) = &self.cache {
            cache.insert(key.to_owned(), token.clone());
        }
        Some(token)
    }

    /// Caches a fresh token here and, with shared state, for the other replicas until its
    /// half-life (listed under the user, for revocation).
    async fn keep(
        &self,
        spec: &TokenSpec,
        key: String,
        shared_key: Option<&str>,
        token: &Minted,
        (user, now): (Option<&str>, u64),
        parent: Parent<'_>,
    ) {
        if let (Some((shared, _)), Some(redis_key)) = (&self.shared, shared_key) {
            let left = (token.iat + spec.ttl() / 2).saturating_sub(now);
            if left > 0 {
                let entry: Value = json!({ "token": &*token.token, "iat": token.iat, "exp": token.exp });
                let put = shared.cache_put(redis_key, &entry, std::time::Duration::from_secs(left), user);
                crate::trace::redis(parent, "SET", put, |_| true).await;
            }
        }
        if let Some(cache) = &self.cache {
            cache.insert(key, token.clone());
        }
    }
}
