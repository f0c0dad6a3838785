//! The `http` hook: a subrequest to the backend's session endpoint with the listed headers;
//! 2xx allows (identity from its answer), 401/403 denies, anything else fails closed (503).
//! Answers are cached per credential (single-flight), locally and, with `shared_state`, in
//! Redis for the other replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderName;
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use super::identity::{self, Identity, IdentitySource};
use super::{AuthCache, AuthError, AuthRequest, AuthShape, HookStores};
use crate::body::UpstreamBody;
use crate::config::{AuthHookConfig, FieldError, HttpUrl};
use crate::header_view::HeaderView;
use crate::metrics::Metrics;
use crate::proxy::pool::Pool;
use crate::shared::Shared;

/// The largest session-endpoint answer we read.
const MAX_HOOK_BODY: usize = 256 * 1024;

/// A session-endpoint hook: where to ask, what to pass on, and its cache of answers.
pub struct SessionHook {
    url: HttpUrl,
    method: Method,
    forward: Vec<HeaderName>,
    timeout: Duration,
    pool: Pool,
    cache: Arc<AuthCache>,
    /// The Redis tier behind `cache` (`shared_state`), scoped to this hook's shape.
    shared: Option<(Shared, String)>,
    ttl: Duration,
    negative_ttl: Duration,
}

impl SessionHook {
    /// Builds the hook; its cache comes from `stores`, its pool from `pool_for`.
    pub fn build(
        name: &str,
        cfg: &AuthHookConfig,
        timeout: Duration,
        stores: &HookStores<'_>,
        at: impl Fn(&str, String) -> FieldError,
        pool_for: impl Fn(&HttpUrl, &str) -> Result<Pool, FieldError>,
    ) -> Result<Self, FieldError> {
        let url = cfg.url.clone().ok_or_else(|| at("url", "missing required key for type http".into()))?;
        let method = cfg.method.as_ref().map_or(Method::GET, |m| m.0.clone());
        let forward: Vec<HeaderName> = cfg.forward_headers.iter().map(|h| h.0.clone()).collect();
        let c = cfg.cache.clone().unwrap_or_default();
        let shape = AuthShape {
            hook: name.to_owned(),
            url: url.to_string(),
            method: method.clone(),
            forward: forward.clone(),
            identity: cfg.identity.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ttl: c.ttl.0,
            negative_ttl: c.negative_ttl.0,
            max_entries: c.max_entries,
            max_negative_entries: c.negative_entries(),
        };
        // Replicas share entries only between hooks of the same shape.
        let scope = format!("{shape:?}");
        let cache = stores
            .caches
            .try_take(shape, || {
                AuthCache::new(c.ttl.0, c.negative_ttl.0, c.max_entries, c.negative_entries()).map(Arc::new)
            })
            .map_err(|e| at("cache", e))?;
        let pool = pool_for(&url, "url")?;
        let shared = stores.shared.map(|s| (s.clone(), scope));
        let (ttl, negative_ttl) = (c.ttl.0, c.negative_ttl.0);
        Ok(Self { pool, url, method, forward, timeout, cache, shared, ttl, negative_ttl })
    }

    /// Decides who is calling, from the cache or the session endpoint; `asked` when the
    /// endpoint itself answered (only its decisions are counted in `auth_hook_total`).
    pub async fn authenticate(
        &self,
        name: &str,
        mapping: &[(String, IdentitySource)],
        req: &AuthRequest<'_>,
        metrics: &Metrics,
    ) -> (Result<Arc<Identity>, AuthError>, bool) {
        let key = self.cache.key(&self.forward, req.headers);
        let from_redis = AtomicBool::new(false);
        let call = || async {
            let Some((shared, scope)) = &self.shared else {
                return self.call(name, mapping, req, metrics).await;
            };
            let redis_key = shared.key("auth", &self.credential(scope, req.headers));
            // A miss and a failure look the same here: the span is never marked failed.
            let cached = crate::trace::redis(req.parent, "GET", shared.cache_get(&redis_key), |_| true).await;
            if let Some(decision) = cached.and_then(shared_entry) {
                from_redis.store(true, Ordering::Relaxed);
                return Ok(decision);
            }
            let answer = self.call(name, mapping, req, metrics).await;
            crate::trace::redis(req.parent, "SET", self.share(shared, &redis_key, &answer), |_| true).await;
            answer
        };
        let (outcome, called) = self.cache.get_or_call(key, call).await;
        // Asked: neither cache had it (the hook counts it in `tokengate_auth_cache_total`).
        let asked = called && !from_redis.load(Ordering::Relaxed);
        (outcome, asked)
    }
}

/// The decision in an entry another replica stored: `{"deny": true}` (Some(None)), or
/// `{"identity": {...}}` with an `id` (Some(Some)); anything else is no decision.
fn shared_entry(entry: Value) -> Option<Option<Arc<Identity>>> {
    if entry.get("deny") == Some(&Value::Bool(true)) {
        return Some(None);
    }
    match entry.get("identity") {
        Some(Value::Object(map)) if map.get("id").is_some_and(Value::is_string) => {
            Some(Some(Arc::new(Identity(map.clone()))))
        }
        _ => None,
    }
}

impl SessionHook {
    /// What the Redis key of a request's credentials is made of: the hook's shape and every
    /// forwarded header's name and values (the key is their MAC, never the values).
    fn credential<'a>(&'a self, scope: &'a str, headers: HeaderView<'a>) -> Vec<&'a [u8]> {
        let mut parts = vec![scope.as_bytes()];
        for name in &self.forward {
            parts.push(name.as_str().as_bytes());
            parts.extend(headers.get_all(name));
        }
        parts
    }

    /// Stores the hook's answer for the other replicas: an allow for `ttl`, a deny for
    /// `negative_ttl`; a failure never.
    async fn share(&self, shared: &Shared, redis_key: &str, answer: &Result<Option<Arc<Identity>>, String>) {
        match answer {
            Ok(Some(identity)) => {
                let entry = serde_json::json!({ "identity": Value::Object(identity.0.clone()) });
                shared.cache_put(redis_key, &entry, self.ttl, identity.id()).await;
            }
            Ok(None) => {
                shared.cache_put(redis_key, &serde_json::json!({ "deny": true }), self.negative_ttl, None).await
            }
            Err(_) => {}
        }
    }

    /// One subrequest to the session endpoint: Ok(Some) allow, Ok(None) deny, Err fail.
    async fn call(
        &self,
        hook: &str,
        mapping: &[(String, IdentitySource)],
        asking: &AuthRequest<'_>,
        metrics: &Metrics,
    ) -> Result<Option<Arc<Identity>>, String> {
        let (timeout, pool, headers) = (&self.timeout, &self.pool, asking.headers);
        let mut req = crate::proxy::pool::origin_request(self.method.clone(), &self.url);
        if let Some(traceparent) = &asking.traceparent {
            req = req.header("traceparent", traceparent);
        }
        for name in &self.forward {
            // A session endpoint reads one Cookie field; HTTP/2 clients send crumbs.
            let joined = (name == http::header::COOKIE).then(|| crate::proxy::joined_cookies(headers.get_all(name)));
            match joined.flatten() {
                Some(joined) => req = req.header(name, joined),
                None => {
                    for value in headers.get_all(name) {
                        req = req.header(name, value);
                    }
                }
            }
        }
        let req: Request<UpstreamBody> =
            req.body(http_body_util::Either::Right(Default::default())).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let answer = tokio::time::timeout(*timeout, async {
            let resp = pool.send(req).await.map_err(|e| crate::logging::chain(&e))?;
            let (parts, body) = resp.into_parts();
            if parts.status == http::StatusCode::UNAUTHORIZED || parts.status == http::StatusCode::FORBIDDEN {
                return Ok((parts, Bytes::new()));
            }
            let bytes = Limited::new(body, MAX_HOOK_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, bytes))
        })
        .await;
        metrics.auth_hook_duration_seconds.with_label_values(&[hook]).observe(start.elapsed().as_secs_f64());
        let (parts, bytes) = answer.map_err(|_| format!("no answer within {timeout:?}"))??;
        match parts.status.as_u16() {
            200..=299 => {
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))?
                };
                let identity = identity::extract_from_answer(mapping, &body, &parts.headers)?;
                Ok(Some(Arc::new(identity)))
            }
            401 | 403 => Ok(None),
            other => Err(format!("session endpoint answered {other}")),
        }
    }
}
