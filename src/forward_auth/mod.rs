//! Forward auth (SPEC §3 "Forward auth"): tokengate as the decision service of a proxy in front
//! (nginx `auth_request`, ingress-nginx `auth-url`, Traefik ForwardAuth, Caddy `forward_auth`,
//! Envoy `ext_authz`). A request to an entry's path is decided, never forwarded: the same
//! pipeline as a token route (limits before the hook, auth hook, per-user limits, optional
//! tokens, the ledger), answered with a status and headers instead of a body.
//!
//! `original` reads the request being decided; `decide` runs the pipeline and shapes the answer
//! for the proxy (`compat: nginx`).

mod decide;
mod original;

use std::collections::HashMap;

use http::header::HeaderName;
use http::Method;
use serde_json::Value;

use crate::config::{Compat, Config, FieldError, ForwardAuthConfig, MethodName, ResponseConfig, RouteConfig};
use crate::metrics::RouteMetrics;
use crate::shelf::Shelf;
use crate::template::{Scope, Source, Template};
use crate::token::request::PathPattern;
use crate::token::{Compiled, Route, TokenCache, TokenShape};
pub use original::{Fields, Original};

/// The methods a forward-auth entry decides about (and lists in a CORS preflight's answer).
const METHODS: [Method; 7] =
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS];

/// One `forward_auth` entry.
pub struct ForwardAuth {
    pub name: String,
    /// The token-route pipeline this entry runs (hook, limits, tokens, ledger, CORS, errors).
    route: Route,
    /// Set on an allow; a header whose value is missing is left out.
    headers: Vec<(HeaderName, Template)>,
    /// `original_path`: its captures are `path.<name>`.
    original_path: Option<PathPattern>,
    /// For a `path` ending in `/*`, what comes before it: the rest of a request's path is the
    /// original path (Envoy's ext_authz appends it to its `path_prefix`).
    prefix: Option<String>,
    compat: Compat,
}

impl std::fmt::Debug for ForwardAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ForwardAuth({})", self.name)
    }
}

impl ForwardAuth {
    fn build(
        i: usize,
        cfg: &ForwardAuthConfig,
        config: &Config,
        compiled: &Compiled<'_>,
        caches: &Shelf<TokenShape, TokenCache>,
    ) -> Result<Self, FieldError> {
        let place = format!("forward_auth[{i}]");
        let at = |key: &str| format!("{place}.{key}");
        let pipeline = RouteConfig {
            name: cfg.name.clone(),
            path: cfg.path.clone(),
            methods: METHODS.iter().cloned().map(MethodName).collect(),
            auth: cfg.auth.clone(),
            rate_limits: cfg.rate_limits.clone(),
            tokens: cfg.tokens.clone(),
            cache_tokens: cfg.cache_tokens,
            response: ResponseConfig::default(),
            error_response: cfg.error_response.clone(),
            ledger: cfg.ledger.clone(),
            cors: cfg.cors.clone(),
        };
        let route = Route::build(&place, &pipeline, config, compiled, caches)?;
        let mut headers = Vec::new();
        for (name, value) in &cfg.response_headers {
            let key = at(&format!("response_headers.{name}"));
            let header =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| FieldError::new(&key, "not a header name"))?;
            let template = Template::compile(&Value::String(value.clone()), Scope::Response, &key)
                .map_err(|(path, reason)| FieldError::new(path, reason))?;
            let mut sources = Vec::new();
            template.sources(&mut sources);
            if route.is_anonymous() && sources.iter().any(|s| matches!(s, Source::User(_))) {
                return Err(FieldError::new(key, format!("reads user.*: auth hook {:?} has no identity", cfg.auth)));
            }
            headers.push((header, template));
        }
        let original_path = match &cfg.original_path {
            Some(p) => Some(PathPattern::parse(p).map_err(|r| FieldError::new(at("original_path"), r))?),
            None => None,
        };
        let prefix = cfg.path.strip_suffix("/*").map(str::to_owned);
        Ok(Self { name: cfg.name.clone(), route, headers, original_path, prefix, compat: cfg.compat })
    }
}

impl ForwardAuth {
    /// Its decisions' request counter and latency (`route` = the entry's name).
    pub fn metrics(&self) -> &RouteMetrics {
        &self.route.metrics
    }

    /// The original path an auth request's own `path` carries: past the prefix of a `/*` entry
    /// (`/` when nothing follows it), else the path itself.
    fn own_path<'p>(&self, path: &'p str) -> &'p str {
        match &self.prefix {
            Some(prefix) => path.strip_prefix(prefix.as_str()).filter(|rest| rest.starts_with('/')).unwrap_or("/"),
            None => path,
        }
    }

    /// The fields the proxy describes the original request with: nginx and ingress-nginx (the
    /// proxies `compat: nginx` is for) set `X-Original-*`, the others `X-Forwarded-*`.
    fn fields(&self) -> Fields {
        match self.compat {
            Compat::Nginx => Fields::Original,
            Compat::Standard => Fields::Forwarded,
        }
    }
}

/// Every forward-auth entry, by path (exact, or the prefix of a `/*` path).
#[derive(Debug, Default)]
pub struct ForwardAuths {
    by_path: HashMap<String, ForwardAuth>,
    prefixed: Vec<ForwardAuth>,
}

impl ForwardAuths {
    /// Builds every entry; errors carry their key paths.
    pub fn build(
        config: &Config,
        compiled: &Compiled<'_>,
        caches: &Shelf<TokenShape, TokenCache>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut entries = Self::default();
        let mut errors = Vec::new();
        for (i, cfg) in config.forward_auth.iter().enumerate() {
            match ForwardAuth::build(i, cfg, config, compiled, caches) {
                Ok(entry) if entry.prefix.is_some() => entries.prefixed.push(entry),
                Ok(entry) => {
                    entries.by_path.insert(cfg.path.clone(), entry);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(entries)
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty() && self.prefixed.is_empty()
    }

    /// The entry serving `path` (normalized): an exact path, or the first `/*` entry whose
    /// prefix it is or lies under.
    pub fn find(&self, path: &str) -> Option<&ForwardAuth> {
        self.by_path.get(path).or_else(|| {
            self.prefixed.iter().find(|e| {
                let prefix = e.prefix.as_deref().unwrap_or_default();
                path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
        })
    }
}
