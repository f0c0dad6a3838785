//! Auth hooks (SPEC §2 `auth_hooks`): who is calling a token route.
//!
//! - `http`: a subrequest to the backend's session endpoint with the listed headers; 2xx
//!   allows, 401/403 denies, anything else fails closed (503). Cached per credential.
//! - `api_key`: keys compared in constant time; identity from the request body.
//! - `jwt`: an IdP's bearer token, verified with a static key or a JWK set.
//! - `none`: no check; identity from the request (or none at all: anonymous callers).
//!
//! One file per kind (`session`, `api_key`, `jwt`); this one builds a hook, dispatches to its
//! kind and counts the decisions.

mod api_key;
mod cache;
mod identity;
pub mod jwks;
mod jwt;
mod session;

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use crate::config::{AuthHookConfig, AuthHookType, FieldError, HttpUrl};
use crate::header_view::HeaderView;
use crate::json_body::JsonBody;
use crate::metrics::{HookOutcomes, Metrics};
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
    /// The user id read from the request is neither a string nor a number: 400.
    #[error("field {0} must be a string")]
    NotAString(String),
}

/// What a hook needs to see of the request.
pub struct AuthRequest<'a> {
    pub headers: HeaderView<'a>,
    pub body: &'a JsonBody,
    /// Sent to the session endpoint (the `auth_hook` span is its parent), when traced.
    pub traceparent: Option<http::HeaderValue>,
    /// Set when the decision came from a cache (the `auth_hook` span's `cache.hit`).
    pub cache_hit: std::sync::atomic::AtomicBool,
    /// The `auth_hook` span of a traced request: the shared cache's Redis calls are its children.
    pub parent: crate::trace::Parent<'a>,
}

impl<'a> AuthRequest<'a> {
    pub fn new(headers: HeaderView<'a>, body: &'a JsonBody, traceparent: Option<http::HeaderValue>) -> Self {
        Self { headers, body, traceparent, cache_hit: Default::default(), parent: None }
    }
}

/// The kinds of hook, each in a file of its own.
enum Kind {
    // Boxed: built once, and the other kinds are small.
    Http(Box<session::SessionHook>),
    ApiKey(api_key::ApiKeyHook),
    Jwt(Box<jwt::JwtHook>),
    None,
}

/// One configured auth hook.
pub struct Hook {
    pub name: String,
    kind: Kind,
    identity: Vec<(String, IdentitySource)>,
    outcomes: HookOutcomes,
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
        metrics: &Metrics,
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
                Kind::Http(Box::new(session::SessionHook::build(name, cfg, timeout, stores, at, pool_for)?))
            }
            AuthHookType::ApiKey => Kind::ApiKey(api_key::ApiKeyHook::build(cfg, at)?),
            AuthHookType::Jwt => {
                Kind::Jwt(Box::new(jwt::JwtHook::build(name, cfg, timeout, connect_timeout, stores, at, pool_for)?))
            }
            AuthHookType::None => Kind::None,
        };
        Ok(Self { name: name.to_owned(), kind, identity, outcomes: metrics.hook_outcomes(name) })
    }

    /// Decides who is calling. Never returns an identity without an `id`.
    pub async fn authenticate(&self, req: &AuthRequest<'_>, metrics: &Metrics) -> Result<Arc<Identity>, AuthError> {
        let result = match &self.kind {
            Kind::Http(hook) => {
                let (outcome, asked) = hook.authenticate(&self.name, &self.identity, req, metrics).await;
                req.cache_hit.store(!asked, std::sync::atomic::Ordering::Relaxed);
                if asked { &self.outcomes.cache_miss } else { &self.outcomes.cache_hit }.get().inc();
                // `auth_hook_total` counts the hook's own decisions; a cache hit is none.
                return if asked { self.count(outcome) } else { outcome };
            }
            Kind::ApiKey(hook) => hook.authenticate(&self.identity, req),
            // Boxed: with the JWKS fetch in it, its future made every token request's 360 bytes
            // larger, JWT hook or not (`token::serve`'s size test).
            Kind::Jwt(hook) => Box::pin(hook.authenticate(&self.name, &self.identity, req)).await,
            Kind::None => identity::extract(&self.identity, None, req.body, req.headers).map(Arc::new),
        };
        self.count(result)
    }

    /// Counts the decision in `tokengate_auth_hook_total` and passes it on.
    fn count(&self, result: Result<Arc<Identity>, AuthError>) -> Result<Arc<Identity>, AuthError> {
        let outcome = match &result {
            Ok(_) => &self.outcomes.allow,
            Err(AuthError::Denied) => &self.outcomes.deny,
            Err(_) => &self.outcomes.error,
        };
        outcome.get().inc();
        result
    }
}
