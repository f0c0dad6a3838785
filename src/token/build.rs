//! A token route compiled from its config: path pattern, methods, hook, tokens, response and
//! error shapes, limits (before and after the hook), token cache, ledger recorder.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde_json::Value;

use super::mint::TokenSpec;
use super::request::PathPattern;
use super::{Rendered, Route, TokenCache, TokenShape, TOKEN_CACHE_ENTRIES};
use crate::auth::Hook;
use crate::config::{Config, FieldError, OnError, RouteConfig};
use crate::cors::Cors;
use crate::keys::KeyRing;
use crate::ledger::{Ledger, Recorder};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;
use crate::shared::Shared;
use crate::shelf::Shelf;
use crate::template::{Scope, Source, Template};

/// What routes are built from, besides their own config.
pub struct Compiled<'a> {
    pub keys: &'a KeyRing,
    pub hooks: &'a HashMap<String, Arc<Hook>>,
    pub limits: &'a HashMap<String, Arc<RateLimit>>,
    /// The ledger every route records in, when the config has one.
    pub ledger: Option<&'a Ledger>,
    /// Redis for the routes' limits (`shared_state`), and its `on_error`.
    pub shared: Option<(&'a Shared, OnError)>,
    /// Where the routes' series are resolved (`RouteMetrics`, `Series`).
    pub metrics: &'a Metrics,
}

fn compile(value: &Value, scope: Scope, at: String) -> Result<Template, FieldError> {
    Template::compile(value, scope, &at).map_err(|(path, reason)| FieldError::new(path, reason))
}

fn content_type(value: &str, at: String) -> Result<HeaderValue, FieldError> {
    HeaderValue::from_str(value).map_err(|_| FieldError::new(at, "invalid content type"))
}

impl Route {
    /// Builds the route `cfg`, which sits at key path `place` (`routes[0]`, or `forward_auth[0]`
    /// for an entry's pipeline).
    pub(crate) fn build(
        place: &str,
        cfg: &RouteConfig,
        config: &Config,
        compiled: &Compiled<'_>,
        caches: &Shelf<TokenShape, TokenCache>,
    ) -> Result<Self, FieldError> {
        let Compiled { keys, hooks, limits, ledger, shared, metrics } = compiled;
        let at = |key: &str| format!("{place}.{key}");
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
        let minted = tokens.iter().map(|t| metrics.minted(&cfg.name, &t.name, t.key.algorithm.name())).collect();
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
        let response = Rendered::new(
            StatusCode::from_u16(cfg.response.status)
                .map_err(|_| FieldError::new(at("response.status"), "invalid status"))?,
            content_type(&cfg.response.content_type, at("response.content_type"))?,
            headers,
            compile(&cfg.response.body, Scope::Response, at("response.body"))?,
        );
        let error_response = match &cfg.error_response {
            Some(e) => Some(Rendered::new(
                StatusCode::OK,
                content_type(&e.content_type, at("error_response.content_type"))?,
                Vec::new(),
                compile(&e.body, Scope::Error, at("error_response.body"))?,
            )),
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
        let cors = match &cfg.cors {
            Some(c) => Some(Cors::build(c, &methods, config.rate_limit_headers, &at("cors"))?),
            None => None,
        };
        Ok(Self {
            cors,
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
            metrics: metrics.route(&cfg.name),
            minted,
        })
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
