//! Config → running app: binds the listeners, builds the upstream pool and metrics, and runs
//! until told to shut down (SPEC §8: readiness off, stop accepting, drain within the grace).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::collections::HashMap;

use crate::auth::Hook;
use crate::config::{Config, ConfigErrors, FieldError, Loaded};
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::ratelimit::RateLimit;
use crate::server::{self, ServeOptions};
use crate::token::Routes;
use crate::{admin, stack, tls};

/// Everything derived from one config; swapped whole on reload.
pub struct Gateway {
    pub config: Config,
    pub proxy: Proxy,
    pub keys: KeyRing,
    pub hooks: HashMap<String, Arc<Hook>>,
    pub routes: Routes,
    /// Limits applied to forwarded traffic (`proxy_rate_limits`), in order.
    pub proxy_limits: Vec<Arc<RateLimit>>,
    /// The JWK set, serialized once.
    pub jwks: bytes::Bytes,
}

impl Gateway {
    /// Compiles a validated config: keys parsed, hooks and templates built. Every error has
    /// its key path, so `check` reports what `run` would refuse.
    pub fn build(config: Config) -> Result<Self, Vec<FieldError>> {
        let proxy = Proxy::new(&config);
        let mut errors = Vec::new();
        let keys = KeyRing::load(&config.keys).unwrap_or_else(|e| {
            errors.extend(e);
            KeyRing::default()
        });
        let mut hooks = HashMap::new();
        for (name, cfg) in &config.auth_hooks {
            match Hook::build(name, cfg, config.upstream.connect_timeout.0) {
                Ok(hook) => {
                    hooks.insert(name.clone(), Arc::new(hook));
                }
                Err(e) => errors.push(e),
            }
        }
        let mut limits = HashMap::new();
        for (name, cfg) in &config.rate_limits {
            match RateLimit::build(name, cfg) {
                Ok(limit) => {
                    limits.insert(name.clone(), Arc::new(limit));
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let routes = Routes::build(&config, &keys, &hooks, &limits)?;
        let proxy_limits = config.proxy_rate_limits.iter().filter_map(|n| limits.get(n).cloned()).collect();
        let jwks = bytes::Bytes::from(keys.jwks().to_string());
        Ok(Self { config, proxy, keys, hooks, routes, proxy_limits, jwks })
    }
}

/// Loads, validates and compiles a config file: what `check` runs and `run` starts from.
pub fn load(path: &std::path::Path) -> Result<Gateway, ConfigErrors> {
    let loaded = crate::config::load_file(path)?;
    Gateway::build(loaded.config).map_err(|errors| ConfigErrors { origin: path.display().to_string(), errors })
}

/// State shared by every connection, for the life of the process.
pub struct State {
    pub gateway: ArcSwap<Gateway>,
    pub metrics: Metrics,
    /// `/readyz`: true while listening, false once shutdown starts.
    pub ready: AtomicBool,
    /// Upgraded connections (WebSockets), drained on shutdown like requests.
    pub tunnels: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS material")]
    Tls(#[from] tls::TlsError),
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigErrors),
}

/// A bound, not yet running tokengate.
pub struct App {
    public: TcpListener,
    /// More listeners on the same address (`SO_REUSEPORT`), one per extra worker thread.
    extra_public: Vec<std::net::TcpListener>,
    admin: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    shutdown: CancellationToken,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

/// The public listener, plus `workers - 1` more on the same address for the extra worker
/// threads. `SO_REUSEPORT` only when there are several: it would let another process share
/// the port.
fn bind_public(addr: SocketAddr, workers: usize) -> Result<(TcpListener, Vec<std::net::TcpListener>), StartError> {
    let listen = |addr: SocketAddr| -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        if workers > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        socket.listen(1024)
    };
    let fail = |source| StartError::Bind { addr, source };
    let first = listen(addr).map_err(fail)?;
    let bound = first.local_addr().map_err(fail)?;
    let extra =
        (1..workers).map(|_| listen(bound).and_then(TcpListener::into_std)).collect::<Result<_, _>>().map_err(fail)?;
    Ok((first, extra))
}

impl App {
    /// Binds both listeners and builds the runtime state from a validated config.
    pub async fn bind(loaded: Loaded) -> Result<Self, StartError> {
        let gateway =
            Gateway::build(loaded.config).map_err(|errors| ConfigErrors { origin: "config".into(), errors })?;
        let config = &gateway.config;
        let tls = match &config.tls {
            Some(t) => Some(tls::acceptor(&t.cert_file, &t.key_file)?),
            None => None,
        };
        let workers = config.workers.unwrap_or(1).max(1);
        let (public, extra_public) = bind_public(config.listen, workers)?;
        let admin = bind(config.admin_listen).await?;
        let state = Arc::new(State {
            gateway: ArcSwap::from_pointee(gateway),
            metrics: Metrics::new(),
            ready: AtomicBool::new(false),
            tunnels: TaskTracker::new(),
        });
        Ok(Self { public, extra_public, admin, tls, state, shutdown: CancellationToken::new() })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public.local_addr().expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Cancel it to start a graceful shutdown (what SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token fires, then drains for up to `limits.shutdown_grace`.
    pub async fn run(self) {
        let App { public, extra_public, admin, tls, state, shutdown } = self;
        let limits = state.gateway.load().config.limits.clone();
        let options = |tls, gauge| ServeOptions {
            max_header_bytes: usize::try_from(limits.max_header_bytes.0).unwrap_or(usize::MAX),
            header_read_timeout: limits.header_read_timeout.0,
            max_connections: limits.max_connections,
            tls,
            open_connections: gauge,
        };
        let gauge = Some(state.metrics.open_connections.clone());
        // nginx's model: each extra worker is a thread with its own current-thread runtime and
        // listener, so a request, its upstream connection and its wake-ups stay on one thread.
        let mut workers_done = Vec::new();
        for (i, listener) in extra_public.into_iter().enumerate() {
            let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
            workers_done.push(done_rx);
            let (s, opts, stop) = (state.clone(), options(tls.clone(), gauge.clone()), shutdown.clone());
            let spawned = std::thread::Builder::new().name(format!("tg-worker-{}", i + 1)).spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("a listener from bind_public");
                    let tunnels = s.tunnels.clone();
                    server::serve(listener, opts, stack::Public(s), stop).await;
                    let _ = done.send(());
                    // Tunnels spawned on this runtime live until they end or the process exits.
                    tunnels.wait().await;
                });
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a worker thread");
            }
        }
        let public_opts = options(tls, gauge);
        let admin_opts = options(None, None);

        let s = state.clone();
        let public_task = tokio::spawn(server::serve(public, public_opts, stack::Public(s), shutdown.clone()));
        let admin_stop = CancellationToken::new();
        let s = state.clone();
        let admin_task = tokio::spawn(server::serve(
            admin,
            admin_opts,
            move |req, conn| admin::handle(s.clone(), req, conn),
            admin_stop.clone(),
        ));
        state.ready.store(true, Ordering::Release);

        shutdown.cancelled().await;
        state.ready.store(false, Ordering::Release);
        tracing::info!(
            grace_s = limits.shutdown_grace.0.as_secs_f64(),
            "shutting down: draining in-flight requests and tunnels"
        );
        let drain = async {
            let _ = public_task.await;
            for done in workers_done {
                let _ = done.await;
            }
            state.tunnels.close();
            state.tunnels.wait().await;
        };
        if tokio::time::timeout(limits.shutdown_grace.0, drain).await.is_err() {
            tracing::warn!("shutdown grace expired: closing what is left");
        }
        admin_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
        tracing::info!("stopped");
    }
}
