//! Auth hooks (SPEC §2 `auth_hooks`): who is calling a token route.
//!
//! - `http`: a subrequest to the backend's session endpoint with the listed headers; 2xx
//!   allows, 401/403 denies, anything else fails closed (503). Cached per credential.
//! - `api_key`: keys compared in constant time; identity from the request body.
//! - `jwt`: an IdP's bearer token, verified with a static key (algorithms pinned, iss/aud/exp/nbf).
//! - `none`: no check; identity from the request.

mod cache;
mod identity;
pub mod jwks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::body::UpstreamBody;
use crate::config::{AuthHookConfig, AuthHookType, FieldError, HttpUrl, Secret};
use crate::metrics::Metrics;
use crate::proxy::pool::{Pool, PoolKey};
use crate::shared::Shared;
use crate::shelf::Shelf;
pub use cache::AuthCache;
pub use identity::{Identity, IdentitySource};

/// The credentials of `Authorization: Bearer <token>`; the scheme in any letter case (RFC 9110
/// §11.1), one or more spaces after it.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let split = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(split);
    let token = rest.trim_ascii_start();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// The largest session-endpoint answer we read.
const MAX_HOOK_BODY: usize = 256 * 1024;

/// Why a caller was not given an identity.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The hook said no (401/403, wrong key, bad bearer token): 401.
    #[error("credentials were refused")]
    Denied,
    /// The hook could not decide (5xx, timeout, unreachable, unusable answer): 503, fail closed.
    #[error("auth hook failed: {0}")]
    Unavailable(String),
    /// An identity field read from the request is missing: 400.
    #[error("missing required field: {0}")]
    Missing(String),
}

/// What a hook needs to see of the request.
pub struct AuthRequest<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a Value,
}

enum Kind {
    // Boxed: built once, and the other kinds are small.
    Http(Box<HttpHook>),
    ApiKey { header: HeaderName, keys: Vec<Secret> },
    // Boxed: jsonwebtoken's Validation is large, and hooks are built once.
    Jwt { keys: Box<JwtKeys>, validation: Box<jsonwebtoken::Validation> },
    None,
}

/// A session-endpoint hook: where to ask, what to pass on, and its cache of answers.
struct HttpHook {
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

/// Where a `jwt` hook's verification keys come from.
enum JwtKeys {
    Static(jsonwebtoken::DecodingKey),
    Jwks(Arc<jwks::JwksKeys>),
}

/// One configured auth hook.
pub struct Hook {
    pub name: String,
    kind: Kind,
    identity: Vec<(String, IdentitySource)>,
}

impl Hook {
    /// True for a `none` hook without `identity`: callers have no identity, so a route behind
    /// it has no `user.*` to template and no user to key a limit by.
    pub fn is_anonymous(&self) -> bool {
        matches!(self.kind, Kind::None) && self.identity.is_empty()
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hook({})", self.name)
    }
}

/// What makes an auth cache reusable by a new config: the same hook asking the same endpoint
/// the same way, mapping the answer to the same identity, with the same cache settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthShape {
    hook: String,
    url: String,
    method: Method,
    forward: Vec<HeaderName>,
    identity: Vec<(String, String)>,
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: u64,
    max_negative_entries: u64,
}

/// An IdP's JWK set is kept across reloads while the hook, its URL and how it is fetched stay
/// the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JwksShape {
    hook: String,
    url: String,
    timeout: Duration,
    connect_timeout: Duration,
    /// The digest of the hook's `ca_file`: a new CA is a new way of fetching.
    ca: Option<String>,
}

/// The shelves auth hooks keep their long-lived parts on.
pub struct HookStores<'a> {
    pub caches: &'a Shelf<AuthShape, Arc<AuthCache>>,
    pub pools: &'a Shelf<PoolKey, Pool>,
    pub jwks: &'a Shelf<JwksShape, Arc<jwks::JwksKeys>>,
    /// Redis, the second tier of the session hooks' caches.
    pub shared: Option<&'a Shared>,
}

/// Session endpoints and IdPs are kept alive this long between calls.
const HOOK_POOL_IDLE: Duration = Duration::from_secs(90);

impl Hook {
    /// Builds a hook from validated config; its cache, connection pool and JWK set come from
    /// `stores`.
    pub fn build(
        name: &str,
        cfg: &AuthHookConfig,
        connect_timeout: Duration,
        stores: &HookStores<'_>,
    ) -> Result<Self, FieldError> {
        let at = |key: &str, reason: String| FieldError::new(format!("auth_hooks.{name}.{key}"), reason);
        let identity = cfg
            .identity
            .iter()
            .map(|(field, src)| {
                IdentitySource::parse(src).map(|s| (field.clone(), s)).map_err(|r| at(&format!("identity.{field}"), r))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A `none` hook without `identity` lets anyone in as nobody (the Telesign job has no
        // user); every other hook must say who the caller is.
        let anonymous = matches!(cfg.kind, AuthHookType::None) && identity.is_empty();
        if !anonymous && !identity.iter().any(|(f, _)| f == "id") {
            return Err(at("identity", "must say where `id` comes from".into()));
        }
        let timeout = cfg.timeout.map(|t| t.0).unwrap_or(Duration::from_secs(2));
        let pool_for = |url: &HttpUrl, key: &str| -> Result<Pool, FieldError> {
            let tls = crate::tls::client_for(url, cfg.ca_file.as_deref(), &format!("auth_hooks.{name}"))
                .map_err(|e| if e.path.ends_with(".url") { at(key, e.reason.clone()) } else { e })?;
            let pool_key = PoolKey::new(url, connect_timeout, HOOK_POOL_IDLE, tls.as_ref());
            Ok(Pool::shared(stores.pools, pool_key, tls))
        };
        let kind = match cfg.kind {
            AuthHookType::Http => {
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
                Kind::Http(Box::new(HttpHook { pool, url, method, forward, timeout, cache, shared, ttl, negative_ttl }))
            }
            AuthHookType::ApiKey => Kind::ApiKey {
                header: cfg
                    .header
                    .as_ref()
                    .map(|h| h.0.clone())
                    .ok_or_else(|| at("header", "missing required key for type api_key".into()))?,
                keys: cfg.keys.clone(),
            },
            AuthHookType::Jwt => {
                let algs: Vec<jsonwebtoken::Algorithm> = cfg.algorithms.iter().map(|a| a.to_jsonwebtoken()).collect();
                let keys = match (&cfg.secret, &cfg.public_key_file, &cfg.jwks_url) {
                    (Some(s), _, _) => JwtKeys::Static(jsonwebtoken::DecodingKey::from_secret(s.expose().as_bytes())),
                    (None, Some(file), _) => {
                        let pem =
                            std::fs::read(file).map_err(|e| at("public_key_file", format!("cannot read: {e}")))?;
                        let family = algs.first().map(|a| a.family());
                        use jsonwebtoken::AlgorithmFamily as F;
                        match family {
                            Some(F::Ec) => jsonwebtoken::DecodingKey::from_ec_pem(&pem),
                            Some(F::Ed) => jsonwebtoken::DecodingKey::from_ed_pem(&pem),
                            _ => jsonwebtoken::DecodingKey::from_rsa_pem(&pem),
                        }
                        .map(JwtKeys::Static)
                        .map_err(|e| at("public_key_file", format!("not a PEM public key: {e}")))?
                    }
                    (None, None, Some(url)) => {
                        let pool = pool_for(url, "jwks_url")?;
                        let ca = cfg.ca_file.as_ref().map(|f| crate::config::digest(b"", std::slice::from_ref(f)));
                        let shape =
                            JwksShape { hook: name.to_owned(), url: url.to_string(), timeout, connect_timeout, ca };
                        let make = || Arc::new(jwks::JwksKeys::new(url.clone(), pool, timeout));
                        JwtKeys::Jwks(stores.jwks.take(shape, make))
                    }
                    (None, None, None) => {
                        return Err(at("jwks_url", "give exactly one of jwks_url, public_key_file, secret".into()))
                    }
                };
                let mut validation =
                    jsonwebtoken::Validation::new(algs.first().copied().unwrap_or(jsonwebtoken::Algorithm::RS256));
                validation.algorithms = algs;
                validation.validate_nbf = true;
                validation.set_required_spec_claims(&["exp"]);
                if let Some(iss) = &cfg.issuer {
                    validation.set_issuer(&[iss]);
                }
                match &cfg.audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                Kind::Jwt { keys: Box::new(keys), validation: Box::new(validation) }
            }
            AuthHookType::None => Kind::None,
        };
        Ok(Self { name: name.to_owned(), kind, identity })
    }

    /// Decides who is calling. Never returns an identity without an `id`.
    pub async fn authenticate(&self, req: &AuthRequest<'_>, metrics: &Metrics) -> Result<Arc<Identity>, AuthError> {
        let result = match &self.kind {
            Kind::Http(hook) => {
                let key = hook.cache.key(&hook.forward, req.headers);
                let from_redis = std::sync::atomic::AtomicBool::new(false);
                let call = || async {
                    let Some((shared, scope)) = &hook.shared else {
                        return hook.call(&self.name, &self.identity, req.headers, metrics).await;
                    };
                    let redis_key = shared.key("auth", &hook.credential(scope, req.headers));
                    if let Some(decision) = shared.cache_get(&redis_key).await.and_then(shared_entry) {
                        from_redis.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Ok(decision);
                    }
                    let answer = hook.call(&self.name, &self.identity, req.headers, metrics).await;
                    hook.share(shared, &redis_key, &answer).await;
                    answer
                };
                let (outcome, called) = hook.cache.get_or_call(key, call).await;
                let asked = called && !from_redis.load(std::sync::atomic::Ordering::Relaxed);
                let result_label = if asked { "miss" } else { "hit" };
                metrics.auth_cache_total.with_label_values(&[&self.name, result_label]).inc();
                // `auth_hook_total` counts the hook's own decisions; a cache hit is none.
                return if asked { self.count(outcome, metrics) } else { outcome };
            }
            Kind::ApiKey { header, keys } => {
                let presented = req.headers.get(header).map(HeaderValue::as_bytes).unwrap_or_default();
                // Every key is compared, so timing does not tell which one nearly matched.
                let ok = keys.iter().fold(false, |acc, k| acc | k.matches(presented));
                if ok {
                    identity::extract(&self.identity, None, req.body, req.headers).map(Arc::new)
                } else {
                    Err(AuthError::Denied)
                }
            }
            Kind::Jwt { keys, validation } => {
                let bearer = req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| bearer_token(v.as_bytes()))
                    .and_then(|t| std::str::from_utf8(t).ok());
                let Some(token) = bearer else { return self.count(Err(AuthError::Denied), metrics) };
                let fetched;
                let key = match keys.as_ref() {
                    JwtKeys::Static(k) => k,
                    JwtKeys::Jwks(set) => {
                        let Some(kid) = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid) else {
                            return self.count(Err(AuthError::Denied), metrics);
                        };
                        fetched = match set.key(&kid).await {
                            Ok(Some(k)) => k,
                            Ok(None) => return self.count(Err(AuthError::Denied), metrics),
                            Err(cause) => return self.count(Err(AuthError::Unavailable(cause)), metrics),
                        };
                        &*fetched
                    }
                };
                match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, validation) {
                    Ok(data) => {
                        identity::extract(&self.identity, Some(&Value::Object(data.claims)), req.body, req.headers)
                            .map(Arc::new)
                    }
                    Err(e) => {
                        tracing::debug!(hook = %self.name, reason = %e, "bearer token refused");
                        Err(AuthError::Denied)
                    }
                }
            }
            Kind::None => identity::extract(&self.identity, None, req.body, req.headers).map(Arc::new),
        };
        self.count(result, metrics)
    }

    /// Counts the decision in `tokengate_auth_hook_total` and passes it on.
    fn count(&self, result: Result<Arc<Identity>, AuthError>, metrics: &Metrics) -> Result<Arc<Identity>, AuthError> {
        let outcome = match &result {
            Ok(_) => "allow",
            Err(AuthError::Denied) => "deny",
            Err(_) => "error",
        };
        metrics.auth_hook_total.with_label_values(&[&self.name, outcome]).inc();
        result
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

impl HttpHook {
    /// What the Redis key of a request's credentials is made of: the hook's shape and every
    /// forwarded header's name and values (the key is their HMAC, never the values).
    fn credential<'a>(&'a self, scope: &'a str, headers: &'a HeaderMap) -> Vec<&'a [u8]> {
        let mut parts = vec![scope.as_bytes()];
        for name in &self.forward {
            parts.push(name.as_str().as_bytes());
            parts.extend(headers.get_all(name).iter().map(HeaderValue::as_bytes));
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
        headers: &HeaderMap,
        metrics: &Metrics,
    ) -> Result<Option<Arc<Identity>>, String> {
        let (timeout, pool) = (&self.timeout, &self.pool);
        let mut req = crate::proxy::pool::origin_request(self.method.clone(), &self.url);
        for name in &self.forward {
            // A session endpoint reads one Cookie field; HTTP/2 clients send crumbs.
            match crate::proxy::joined_cookies(headers).filter(|_| name == http::header::COOKIE) {
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
