//! The compiled config: a validated `Config` turned into what requests run on (keys parsed,
//! hooks, templates, routes, limits, TLS material, listener settings). Immutable once built;
//! a reload builds a new one and swaps it in whole, and a request finishes on the one it
//! started with. What must outlive it (counters, caches, pools) it only borrows from `Stores`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;

use crate::auth::Hook;
use crate::body::Body;
use crate::config::{Config, ConfigErrors, FieldError, Loaded};
use crate::forward_auth::ForwardAuths;
use crate::keys::KeyRing;
use crate::ledger::{Ledger, LedgerShape};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::ratelimit::RateLimit;
use crate::server::{ConnLimits, ConnSettings};
use crate::shared::{Shared, SharedShape};
use crate::stores::Stores;
use crate::tls::{self, Tls, TlsError};
use crate::token::{Compiled, Routes};

/// Everything derived from one config.
pub struct Gateway {
    pub config: Config,
    /// SHA-256 of the config text and the files it read, hex (see `config::digest`).
    pub digest: String,
    /// The files besides the config file that went into it.
    pub files: Vec<PathBuf>,
    pub proxy: Proxy,
    pub keys: KeyRing,
    pub routes: Routes,
    /// `forward_auth` entries: decisions for a proxy in front.
    pub forward_auths: ForwardAuths,
    /// Limits applied to forwarded traffic (`proxy_rate_limits`), in order.
    pub proxy_limits: Vec<Arc<RateLimit>>,
    /// The JWK set, serialized once.
    pub jwks: Bytes,
    pub tls: Option<Tls>,
    /// The ledger (top-level `ledger`), shared with every route; long-lived, in `Stores`.
    pub ledger: Option<Ledger>,
    /// Redis (`shared_state`), for the token routes' limits and for revocation.
    pub shared: Option<Shared>,
    /// `tracing` (SPEC §9), when its exporter is `otlp`.
    pub tracer: Option<crate::trace::Tracer>,
    /// How the public and admin listeners treat new connections.
    pub public: Arc<ConnSettings>,
    pub admin: Arc<ConnSettings>,
}

impl Gateway {
    /// Compiles a validated config, taking its long-lived stores from `stores`. Every error has
    /// its key path, so `check` reports what `run` and a reload would refuse.
    pub fn build(loaded: Loaded, stores: &Stores, metrics: &Metrics) -> Result<Self, Vec<FieldError>> {
        let Loaded { config, files, digest, .. } = loaded;
        let mut errors = Vec::new();
        let keys = KeyRing::load(&config.keys, crate::hsm::Modules::process()).unwrap_or_else(|e| {
            errors.extend(e);
            KeyRing::default()
        });
        let shared = match &config.shared_state {
            Some(cfg) => {
                stores.shared.try_take(SharedShape::of(cfg), || Shared::new(cfg)).map_err(|e| errors.push(e)).ok()
            }
            None => None,
        };
        let tracer = crate::trace::Tracer::build(config.tracing.as_ref(), &|name| std::env::var(name).ok())
            .map_err(|e| errors.push(e))
            .ok()
            .flatten();
        let hook_stores = stores.hooks(shared.as_ref());
        let mut hooks = HashMap::new();
        for (name, cfg) in &config.auth_hooks {
            match Hook::build(name, cfg, config.upstream.connect_timeout.0, &hook_stores, metrics) {
                Ok(hook) => {
                    hooks.insert(name.clone(), Arc::new(hook));
                }
                Err(e) => errors.push(e),
            }
        }
        let mut limits = HashMap::new();
        for (name, cfg) in &config.rate_limits {
            match RateLimit::build(name, cfg, config.rate_limit_headers, &stores.limits) {
                Ok(limit) => {
                    limits.insert(name.clone(), Arc::new(limit));
                }
                Err(e) => errors.push(e),
            }
        }
        let tls = match &config.tls {
            Some(t) => {
                tls::acceptor(&t.cert_file, &t.key_file).map_err(|e| errors.push(tls_error(&e, &t.key_file))).ok()
            }
            None => None,
        };
        let ledger = match &config.ledger {
            Some(cfg) => {
                stores.ledgers.try_take(LedgerShape::of(cfg), || Ledger::new(cfg)).map_err(|e| errors.push(e)).ok()
            }
            None => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let on_error = config.shared_state.as_ref().map(|s| s.on_error).unwrap_or_default();
        let compiled = Compiled {
            keys: &keys,
            hooks: &hooks,
            limits: &limits,
            ledger: ledger.as_ref(),
            shared: shared.as_ref().map(|s| (s, on_error)),
            metrics,
        };
        let routes = Routes::build(&config, &compiled, &stores.tokens)?;
        let forward_auths = ForwardAuths::build(&config, &compiled, &stores.tokens)?;
        let proxy_limits = config.proxy_rate_limits.iter().filter_map(|n| limits.get(n).cloned()).collect();
        let jwks = Bytes::from(keys.jwks().to_string());
        let l = &config.limits;
        let limits = ConnLimits {
            max_header_bytes: usize::try_from(l.max_header_bytes.0).unwrap_or(usize::MAX),
            header_read_timeout: l.header_read_timeout.0,
            idle_timeout: l.idle_timeout.0,
            request_body_timeout: l.request_body_timeout.0,
            max_connections: l.max_connections,
        };
        let settings = |tls: Option<&Tls>| Arc::new(ConnSettings::new(limits, tls.map(|t| t.acceptor.clone())));
        let (public, admin) = (settings(tls.as_ref()), settings(None));
        let proxy = Proxy::new(&config.upstream, &config.forwarding, &stores.pools).map_err(|e| vec![e])?;
        Ok(Self {
            config,
            digest,
            files,
            proxy,
            keys,
            routes,
            forward_auths,
            proxy_limits,
            jwks,
            tls,
            ledger,
            shared,
            tracer,
            public,
            admin,
        })
    }

    /// Called once this config is in service: applies its ledger settings and starts the
    /// ledger's writer and the Redis connection if they are new (`check` never calls it, so
    /// it opens nothing).
    pub fn start_background(&self, metrics: &Metrics) {
        self.keys.start(&metrics.signer);
        if let (Some(ledger), Some(cfg)) = (&self.ledger, &self.config.ledger) {
            ledger.configure(cfg);
            ledger.start(&metrics.ledger);
        }
        if let Some(shared) = &self.shared {
            shared.start(&metrics.shared);
        }
    }

    /// The short form of `digest` that metrics and logs show.
    pub fn hash(&self) -> &str {
        &self.digest[..self.digest.len().min(12)]
    }

    /// The JWK set as served on `jwks_path` and the admin listener.
    pub fn jwks_response(&self) -> Response<Body> {
        let mut resp = Response::new(crate::body::full(self.jwks.clone()));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
        resp
    }
}

/// The key path a TLS failure belongs to.
fn tls_error(e: &TlsError, key_file: &Path) -> FieldError {
    let at = match e {
        TlsError::Read { path, .. } if Path::new(path) == key_file => "tls.key_file",
        TlsError::Key { .. } => "tls.key_file",
        TlsError::Read { .. } | TlsError::Cert { .. } => "tls.cert_file",
        TlsError::Config(_) | TlsError::Ca { .. } | TlsError::ServerName(_) => "tls",
    };
    FieldError::new(at, crate::logging::chain(e))
}

/// Loads, validates and compiles a config file on its own (stores of its own, nothing
/// shared): what `check`, `jwks` and `mint` run.
pub fn load(path: &Path) -> Result<Gateway, ConfigErrors> {
    let loaded = crate::config::load_file(path)?;
    let stores = Stores::default();
    let build = stores.begin();
    // Counted nowhere: nothing is served.
    Gateway::build(loaded, &build, &Metrics::new())
        .map_err(|errors| ConfigErrors::new(path.display().to_string(), errors))
}
