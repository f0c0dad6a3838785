//! Token routes (SPEC §3), in this order: method (405) → body size (413) → auth hook (401/503)
//! → template inputs (400) → mint (or reuse) → respond. Every answer carries
//! `Cache-Control: no-store`; errors use the route's `error_response` shape.

pub mod limits;
pub mod mint;
mod record;
pub mod request;
mod reuse;

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::auth::{AuthError, AuthRequest, Hook, Identity};
use crate::body::{self, Body, ClientBodyError, ClientFault, RequestBody};
use crate::config::{Config, FieldError, OnError, RouteConfig};
use crate::conn_info::ConnInfo;
use crate::context::RequestCtx;
use crate::error::{add_error_headers, Error};
use crate::keys::KeyRing;
use crate::ledger::{Ledger, Recorder};
use crate::metrics::Metrics;
use crate::proxy::ForwardRules;
use crate::ratelimit::{LimitInput, RateLimit};
use crate::shared::Shared;
use crate::shelf::Shelf;
use crate::template::{Scope, Source, Template};
use mint::{Minted, TokenSpec};
use request::{PathPattern, Values};

/// Reused tokens held per route.
const TOKEN_CACHE_ENTRIES: u64 = 100_000;

/// A route's minted tokens, by cache key (see `TokenSpec::cache_key`).
pub type TokenCache = moka::sync::Cache<String, Minted>;

/// What makes a token cache reusable by a new config: the same route minting the same tokens
/// (claims, lifetimes, headers, and the signing keys' material).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenShape {
    route: String,
    tokens: String,
}

struct Rendered {
    status: StatusCode,
    content_type: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Template,
}

/// One configured token route.
pub struct Route {
    pub name: String,
    pattern: PathPattern,
    methods: Vec<Method>,
    allow: HeaderValue,
    hook: Arc<Hook>,
    tokens: Vec<TokenSpec>,
    cache: Option<TokenCache>,
    response: Rendered,
    error_response: Option<Rendered>,
    body_limit: u64,
    /// Limits checked before the auth hook (not keyed by user), then after it.
    pre_auth_limits: Vec<Arc<RateLimit>>,
    user_limits: Vec<Arc<RateLimit>>,
    /// Where minted tokens are recorded (the top-level `ledger`), with this route's claims.
    ledger: Option<Recorder>,
    /// Redis, where this route's limits are counted across replicas, and what to do without.
    shared: Option<(Shared, OnError)>,
}

/// Whether an answer's tokens go to the ledger (`tokengate mint` previews record nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Ledger,
    Nothing,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Route({})", self.name)
    }
}

/// Every token route, matched by path.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    exact: HashMap<String, usize>,
    patterns: Vec<usize>,
}

fn compile(value: &Value, scope: Scope, at: String) -> Result<Template, FieldError> {
    Template::compile(value, scope, &at).map_err(|(path, reason)| FieldError::new(path, reason))
}

fn content_type(value: &str, at: String) -> Result<HeaderValue, FieldError> {
    HeaderValue::from_str(value).map_err(|_| FieldError::new(at, "invalid content type"))
}

impl Route {
    fn build(
        i: usize,
        cfg: &RouteConfig,
        config: &Config,
        compiled: &Compiled<'_>,
        caches: &Shelf<TokenShape, TokenCache>,
    ) -> Result<Self, FieldError> {
        let Compiled { keys, hooks, limits, ledger, shared } = compiled;
        let at = |key: &str| format!("routes[{i}].{key}");
        let pattern = PathPattern::parse(&cfg.path).map_err(|r| FieldError::new(at("path"), r))?;
        let methods: Vec<Method> = cfg.methods.iter().map(|m| m.0.clone()).collect();
        let allow_text = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let hook = hooks
            .get(&cfg.auth)
            .cloned()
            .ok_or_else(|| FieldError::new(at("auth"), format!("no auth hook named {:?}", cfg.auth)))?;
        let tokens = cfg
            .tokens
            .iter()
            .map(|(name, t)| TokenSpec::build(name, t, keys, &at(&format!("tokens.{name}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let headers = cfg
            .response
            .headers
            .iter()
            .map(|(k, v)| {
                let bad = || FieldError::new(at(&format!("response.headers.{k}")), "invalid header");
                Ok((
                    HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad())?,
                    HeaderValue::from_str(v).map_err(|_| bad())?,
                ))
            })
            .collect::<Result<_, FieldError>>()?;
        let response = Rendered {
            status: StatusCode::from_u16(cfg.response.status)
                .map_err(|_| FieldError::new(at("response.status"), "invalid status"))?,
            content_type: content_type(&cfg.response.content_type, at("response.content_type"))?,
            headers,
            body: compile(&cfg.response.body, Scope::Response, at("response.body"))?,
        };
        let error_response = match &cfg.error_response {
            Some(e) => Some(Rendered {
                status: StatusCode::OK,
                content_type: content_type(&e.content_type, at("error_response.content_type"))?,
                headers: Vec::new(),
                body: compile(&e.body, Scope::Error, at("error_response.body"))?,
            }),
            None => None,
        };
        let cache = cfg.cache_tokens.then(|| {
            let longest = tokens.iter().map(TokenSpec::ttl).max().unwrap_or(0);
            let shape = TokenShape { route: cfg.name.clone(), tokens: tokens.iter().map(TokenSpec::shape).collect() };
            caches.take(shape, || {
                moka::sync::Cache::builder()
                    .max_capacity(TOKEN_CACHE_ENTRIES)
                    .time_to_live(std::time::Duration::from_secs(longest / 2 + 1))
                    .build()
            })
        });
        let mut named = Vec::new();
        for (j, name) in cfg.rate_limits.iter().enumerate() {
            let at_limit = at(&format!("rate_limits[{j}]"));
            let limit =
                limits.get(name).ok_or_else(|| FieldError::new(at_limit, format!("no rate limit named {name:?}")))?;
            named.push(limit.clone());
        }
        if hook.is_anonymous() {
            refuse_user_inputs(&hook.name, &tokens, &response, &named, &at)?;
        }
        let (user_limits, pre_auth_limits) = named.into_iter().partition(|l| l.is_user_keyed());
        let ledger = match (ledger, &config.ledger) {
            (Some(ledger), Some(settings)) => {
                let record = cfg.ledger.as_ref().map(|l| l.record.clone()).unwrap_or_default();
                Some(Recorder::new((*ledger).clone(), settings, record))
            }
            _ => None,
        };
        Ok(Self {
            ledger,
            shared: shared.map(|(s, on_error)| (s.clone(), on_error)),
            pre_auth_limits,
            user_limits,
            name: cfg.name.clone(),
            pattern,
            methods,
            allow: HeaderValue::from_str(&allow_text).unwrap_or(HeaderValue::from_static("POST")),
            hook,
            tokens,
            cache,
            response,
            error_response,
            body_limit: config.limits.token_route_body.0,
        })
    }

    /// Serves one request on this route; every failure becomes the route's error shape.
    pub async fn serve(
        &self,
        req: Request<RequestBody>,
        captures: Vec<(String, String)>,
        conn: &ConnInfo,
        rules: &ForwardRules,
        metrics: &Metrics,
        ctx: &mut RequestCtx<'_>,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let client_ip = crate::proxy::headers::client_ip(rules, conn.peer.ip(), &parts.headers);
        ctx.client_ip = Some(client_ip);
        let query = parts.uri.query().unwrap_or("");
        let now = crate::clock::unix_now();
        let mut values = Values {
            identity: None,
            body: &Value::Null,
            query,
            captures: &captures,
            headers: &parts.headers,
            client_ip,
            now,
            tokens: &[],
            first: None,
            error: None,
        };
        let body = match self.read_body(&parts.method, &parts.headers, body).await {
            Ok(body) => body,
            Err(e) => return self.error(&e, &values),
        };
        values.body = &body;
        let limit_input = |user| LimitInput { client_ip, user, route: &self.name, headers: &parts.headers };
        let shared = self.shared.as_ref();
        if let Err(e) = limits::check(&self.pre_auth_limits, &limit_input(None), shared, metrics).await {
            ctx.limited = limit_name(&e);
            return self.error(&e, &values);
        }
        let identity =
            match self.hook.authenticate(&AuthRequest { headers: &parts.headers, body: &body }, metrics).await {
                Ok(identity) => identity,
                Err(e) => {
                    let err = match e {
                        AuthError::Denied => Error::Unauthorized,
                        AuthError::Unavailable(cause) => {
                            tracing::warn!(hook = %self.hook.name, route = %self.name, %cause, "auth hook failed");
                            Error::AuthUnavailable { hook: self.hook.name.clone(), cause }
                        }
                        AuthError::Missing(field) => Error::InvalidRequest(format!("missing required field: {field}")),
                    };
                    ctx.auth = Some(if matches!(err, Error::Unauthorized) { "deny" } else { "error" });
                    return self.error(&err, &values);
                }
            };
        ctx.auth = Some("allow");
        if let Err(e) = limits::check(&self.user_limits, &limit_input(identity.id()), shared, metrics).await {
            ctx.limited = limit_name(&e);
            return self.error(&e, &values);
        }
        self.answer(&values, &identity, metrics, Record::Ledger).await
    }

    /// Mints the route's tokens for `identity`, records them in the ledger, and renders the
    /// route's response (or its error shape). A full ledger queue refuses before minting.
    pub async fn answer(
        &self,
        values: &Values<'_>,
        identity: &Identity,
        metrics: &Metrics,
        record: Record,
    ) -> Response<Body> {
        let values = Values { identity: Some(identity), ..*values };
        let ledger = self.ledger.as_ref().filter(|_| record == Record::Ledger);
        let reserved = match ledger.map(Recorder::reserve).transpose() {
            Ok(reserved) => reserved,
            Err(e) => return self.error(&Error::from(e), &values),
        };
        let minted = match self.mint_all(&values, identity, metrics).await {
            Ok(m) => m,
            Err(e) => return self.error(&e, &values),
        };
        if let (Some(reserved), Some(recorder)) = (reserved, ledger) {
            let entry = record::entry(self, recorder, &minted, identity, values.now);
            if let Err(e) = reserved.record(entry).await {
                tracing::warn!(route = %self.name, error = %e, "minted tokens not answered: the ledger did not take them");
                return self.error(&Error::from(e), &values);
            }
        }
        let minted: Vec<Minted> = minted.into_iter().map(|(m, _)| m).collect();
        let named: Vec<(String, String)> =
            self.tokens.iter().zip(&minted).map(|(spec, m)| (spec.name.clone(), m.token.to_string())).collect();
        let values = Values { tokens: &named, first: minted.first().map(|m| (m.iat, m.exp)), ..values };
        match self.response.body.render(&values) {
            Ok(rendered) => respond(&self.response, self.response.status, &rendered),
            Err(missing) => self.error(&Error::InvalidRequest(missing.to_string()), &values),
        }
    }

    /// Method (405), then body size (413), then JSON.
    async fn read_body(&self, method: &Method, headers: &http::HeaderMap, body: RequestBody) -> Result<Value, Error> {
        if !self.methods.contains(method) {
            return Err(Error::MethodNotAllowed { allow: self.allow.clone() });
        }
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.body_limit) {
            return Err(Error::PayloadTooLarge(self.body_limit));
        }
        let limit = usize::try_from(self.body_limit).unwrap_or(usize::MAX);
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Error::PayloadTooLarge(self.body_limit))
            }
            Err(e) => {
                return Err(match e.downcast_ref::<ClientBodyError>() {
                    Some(ClientBodyError::Timeout(_)) => Error::ClientBody(ClientFault::Timeout),
                    Some(ClientBodyError::Broken(_)) => Error::ClientBody(ClientFault::Broken),
                    None => Error::BodyRead(e),
                })
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|_| Error::InvalidRequest("request body is not valid JSON".into()))
    }

    /// The error in this route's `error_response` shape (or the default JSON body).
    fn error(&self, err: &Error, values: &Values<'_>) -> Response<Body> {
        let status = err.status();
        let mut resp = match &self.error_response {
            Some(shape) => {
                let message = err.public_message();
                let ctx = Values {
                    error: Some((&message, err.code(), status.as_u16())),
                    identity: None,
                    tokens: &[],
                    first: None,
                    ..*values
                };
                match shape.body.render(&ctx) {
                    Ok(rendered) => respond(shape, status, &rendered),
                    Err(_) => crate::error::rescue(err),
                }
            }
            None => crate::error::rescue(err),
        };
        add_error_headers(err, &mut resp);
        resp
    }
}

/// Behind an anonymous hook there is no user: a `user.*` input or a per-user limit is a
/// mistake `check` names, not a request-time 500.
fn refuse_user_inputs(
    hook: &str,
    tokens: &[TokenSpec],
    response: &Rendered,
    limits: &[Arc<RateLimit>],
    at: &dyn Fn(&str) -> String,
) -> Result<(), FieldError> {
    let why = format!("auth hook {hook:?} has no identity (type none without `identity`), so there is no user");
    let reads_user = |sources: &[Source]| sources.iter().any(|s| matches!(s, Source::User(_)));
    for spec in tokens {
        if reads_user(&spec.sources) {
            return Err(FieldError::new(at(&format!("tokens.{}.claims", spec.name)), format!("reads user.*: {why}")));
        }
    }
    let mut sources = Vec::new();
    response.body.sources(&mut sources);
    if reads_user(&sources) {
        return Err(FieldError::new(at("response.body"), format!("reads user.*: {why}")));
    }
    if let Some(j) = limits.iter().position(|l| l.is_user_keyed()) {
        return Err(FieldError::new(at(&format!("rate_limits[{j}]")), format!("is keyed by user: {why}")));
    }
    Ok(())
}

fn respond(shape: &Rendered, status: StatusCode, rendered: &Value) -> Response<Body> {
    let is_json = shape.content_type.as_bytes().starts_with(b"application/json");
    let bytes = match rendered {
        Value::String(s) if !is_json => s.clone().into_bytes(),
        // A JSON value always serializes.
        other => serde_json::to_vec(other).unwrap_or_default(),
    };
    let mut resp = Response::new(body::full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, shape.content_type.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (k, v) in &shape.headers {
        h.insert(k.clone(), v.clone());
    }
    resp
}

/// `tokengate mint`: what `route` answers for a caller with id `user_id` and the given
/// `SOURCE=VALUE` inputs. Returns the status and the body text.
pub async fn preview(
    routes: &Routes,
    route: &str,
    user_id: &str,
    sets: &[String],
) -> Result<(StatusCode, String), String> {
    let route = routes.by_name(route).ok_or_else(|| format!("no route named {route:?}"))?;
    let mut identity = serde_json::Map::new();
    identity.insert("id".into(), Value::String(user_id.to_owned()));
    let (mut body, mut query, mut captures, mut headers) =
        (serde_json::Map::new(), Vec::new(), Vec::new(), http::HeaderMap::new());
    for set in sets {
        let (source, value) = set.split_once('=').ok_or_else(|| format!("--set {set:?}: expected SOURCE=VALUE"))?;
        let value_json = || serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        match source.split_once('.') {
            Some(("user", f)) => {
                identity.insert(f.to_owned(), value_json());
            }
            Some(("body", f)) => {
                body.insert(f.to_owned(), value_json());
            }
            Some(("query", f)) => query.push(format!("{f}={value}")),
            Some(("path", f)) => captures.push((f.to_owned(), value.to_owned())),
            Some(("header", f)) => {
                let name = HeaderName::from_bytes(f.as_bytes()).map_err(|_| format!("invalid header {f:?}"))?;
                headers
                    .insert(name, HeaderValue::from_str(value).map_err(|_| format!("invalid header value for {f}"))?);
            }
            _ => return Err(format!("--set {source:?}: expected user.*, body.*, query.*, path.* or header.*")),
        }
    }
    let (body, query) = (Value::Object(body), query.join("&"));
    let values = Values {
        identity: None,
        body: &body,
        query: &query,
        captures: &captures,
        headers: &headers,
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        now: crate::clock::unix_now(),
        tokens: &[],
        first: None,
        error: None,
    };
    // A preview mints nothing anyone receives: nothing to record.
    let resp = route.answer(&values, &Identity(identity), &Metrics::new(), Record::Nothing).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// What routes are built from, besides their own config.
pub struct Compiled<'a> {
    pub keys: &'a KeyRing,
    pub hooks: &'a HashMap<String, Arc<Hook>>,
    pub limits: &'a HashMap<String, Arc<RateLimit>>,
    /// The ledger every route records in, when the config has one.
    pub ledger: Option<&'a Ledger>,
    /// Redis for the routes' limits (`shared_state`), and its `on_error`.
    pub shared: Option<(&'a Shared, OnError)>,
}

/// The name of the limit that refused, for the request's context.
fn limit_name(err: &Error) -> Option<String> {
    match err {
        Error::RateLimited { limit, .. } => Some(limit.clone()),
        _ => None,
    }
}

impl Routes {
    /// Builds every route; errors carry their key paths. Token caches come from `caches`.
    pub fn build(
        config: &Config,
        compiled: &Compiled<'_>,
        caches: &Shelf<TokenShape, TokenCache>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut routes = Routes::default();
        let mut errors = Vec::new();
        for (i, cfg) in config.routes.iter().enumerate() {
            match Route::build(i, cfg, config, compiled, caches) {
                Ok(route) => {
                    let index = routes.routes.len();
                    if route.pattern.is_exact() {
                        routes.exact.insert(cfg.path.clone(), index);
                    } else {
                        routes.patterns.push(index);
                    }
                    routes.routes.push(route);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(routes)
        } else {
            Err(errors)
        }
    }

    /// The route serving `path`, with its captures.
    pub fn find(&self, path: &str) -> Option<(&Route, Vec<(String, String)>)> {
        if self.routes.is_empty() {
            return None;
        }
        if let Some(&i) = self.exact.get(path) {
            return Some((&self.routes[i], Vec::new()));
        }
        self.patterns.iter().find_map(|&i| self.routes[i].pattern.matches(path).map(|c| (&self.routes[i], c)))
    }

    pub fn by_name(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// Forgets every token of `user_id` in `cache` (`/admin/revoke`).
pub fn forget_user(cache: &TokenCache, user_id: &str) {
    let marker = format!("\u{0}{user_id}\u{0}");
    let doomed: Vec<Arc<String>> = cache.iter().filter(|(k, _)| k.contains(&marker)).map(|(k, _)| k).collect();
    for k in doomed {
        cache.invalidate(k.as_str());
    }
}
