//! An IdP's JWK set, fetched on first use and cached; a token naming an unknown `kid` triggers
//! a refetch (key rotation), at most once per `REFETCH_EVERY` so junk tokens cannot make us
//! hammer the IdP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Request;
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;
use tokio::sync::Mutex;

use crate::body::UpstreamBody;
use crate::config::HttpUrl;
use crate::proxy::pool::Pool;

const REFETCH_EVERY: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Keys by `kid`.
type Keys = HashMap<String, Arc<DecodingKey>>;

/// An IdP's keys, fetched from its JWKS URL.
pub struct JwksKeys {
    url: HttpUrl,
    pool: Pool,
    timeout: Duration,
    keys: ArcSwap<Keys>,
    /// When we last fetched; held while fetching, so concurrent misses make one request.
    last_fetch: Mutex<Option<Instant>>,
}

impl JwksKeys {
    pub fn new(url: HttpUrl, pool: Pool, timeout: Duration) -> Self {
        Self { url, pool, timeout, keys: ArcSwap::default(), last_fetch: Mutex::new(None) }
    }

    /// The key for `kid`, refetching the set when it is unknown (rate-limited); a fetch carries
    /// `traceparent` when the request is traced.
    pub async fn key(
        &self,
        kid: &str,
        traceparent: Option<&http::HeaderValue>,
    ) -> Result<Option<Arc<DecodingKey>>, String> {
        if let Some(k) = self.keys.load().get(kid) {
            return Ok(Some(k.clone()));
        }
        let mut last = self.last_fetch.lock().await;
        // Someone else may have fetched while we waited for the lock.
        if let Some(k) = self.keys.load().get(kid) {
            return Ok(Some(k.clone()));
        }
        if last.is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
            return Ok(None);
        }
        *last = Some(Instant::now());
        let fresh = self.fetch(traceparent).await?;
        let found = fresh.get(kid).cloned();
        self.keys.store(Arc::new(fresh));
        Ok(found)
    }

    async fn fetch(&self, traceparent: Option<&http::HeaderValue>) -> Result<Keys, String> {
        let mut req = crate::proxy::pool::origin_request(http::Method::GET, &self.url);
        if let Some(traceparent) = traceparent {
            req = req.header("traceparent", traceparent);
        }
        let req: Request<UpstreamBody> =
            req.body(http_body_util::Either::Right(Default::default())).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(self.timeout, self.pool.send(req))
            .await
            .map_err(|_| "JWKS fetch timed out".to_owned())?
            .map_err(|e| crate::logging::chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("JWKS endpoint answered {}", resp.status()));
        }
        let bytes = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the JWK set: {e}"))?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| format!("not a JWK set: {e}"))?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, Arc::new(DecodingKey::from_jwk(jwk).ok()?))))
            .collect())
    }
}
