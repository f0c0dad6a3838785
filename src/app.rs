//! The running process: binds the listeners, starts the worker threads, the admin listener and
//! the reloader, and runs until told to shut down (SPEC §8: readiness off, stop accepting,
//! drain within the grace).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigErrors, Loaded, Overrides};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::reload::{ReloadHandle, Reloader};
use crate::state::{AdminSettings, PublicSettings, State};
use crate::stores::Stores;
use crate::{admin, server, stack};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigErrors),
}

/// Gives memory the allocator holds back to the OS, for the calling thread (the binary passes
/// mimalloc's `mi_collect`; the library holds no allocator of its own).
pub type Trim = fn();

/// How often each worker looks whether connections have closed since it last trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// A bound, not yet running tokengate.
pub struct App {
    public: TcpListener,
    /// More listeners on the same address (`SO_REUSEPORT`), one per extra worker thread.
    extra_public: Vec<std::net::TcpListener>,
    admin: TcpListener,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    /// Present when the config came from a file: reloads on SIGHUP and on file changes.
    reloader: Option<Reloader>,
    trim: Option<Trim>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let fail = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    Ok((listener, bound))
}

/// The public listener, plus `workers - 1` more on the same address for the extra worker
/// threads. `SO_REUSEPORT` only when there are several: it would let another process share
/// the port.
fn bind_public(
    addr: SocketAddr,
    workers: usize,
) -> Result<(TcpListener, SocketAddr, Vec<std::net::TcpListener>), StartError> {
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
    Ok((first, bound, extra))
}

impl App {
    /// Compiles the config, binds both listeners and sets up the process state. `overrides`
    /// (the command line) apply to this load and to every reload.
    pub async fn bind(loaded: Loaded, overrides: Overrides) -> Result<Self, StartError> {
        // Clients that build their TLS config from the process default (the Redis client's
        // `rediss://`) get the same aws-lc-rs provider as everything else.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let path = loaded.path.clone();
        let origin = path.as_ref().map_or_else(|| "config".to_owned(), |p| p.display().to_string());
        let stores = Stores::default();
        let metrics = Metrics::new();
        let gateway = {
            let build = stores.begin();
            let gateway =
                Gateway::build(loaded, &build, &metrics).map_err(|errors| ConfigErrors::new(origin, errors))?;
            build.commit();
            gateway
        };
        let workers = overrides.workers(&gateway.config);
        let (public, public_addr, extra_public) = bind_public(gateway.config.listen, workers)?;
        let (admin, admin_addr) = bind(gateway.config.admin_listen).await?;
        metrics.config_in_service(gateway.hash());
        gateway.start_background(&metrics);
        let state = Arc::new(State::new(gateway, stores, metrics));
        let reloader = path.map(|path| Reloader::new(state.clone(), path, overrides));
        Ok(Self {
            public,
            extra_public,
            admin,
            public_addr,
            admin_addr,
            state,
            shutdown: CancellationToken::new(),
            reloader,
            trim: None,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Cancel it to start a graceful shutdown (what SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Each worker thread calls `trim` after a drop in open connections, so that the memory
    /// they held goes back to the OS rather than stay in the allocator's free lists.
    pub fn with_memory_trim(mut self, trim: Trim) -> Self {
        self.trim = Some(trim);
        self
    }

    /// Asks for a reload (what SIGHUP does); None when the config did not come from a file.
    pub fn reload_handle(&self) -> Option<ReloadHandle> {
        self.reloader.as_ref().map(Reloader::handle)
    }

    /// Serves until the shutdown token fires, then drains for up to `limits.shutdown_grace`
    /// of the config in service by then.
    pub async fn run(self) {
        let App { public, extra_public, admin, state, shutdown, reloader, trim, .. } = self;
        // nginx's model: each extra worker is a thread with its own current-thread runtime and
        // listener, so a request, its upstream connection and its wake-ups stay on one thread.
        let mut workers_done = Vec::new();
        for (i, listener) in extra_public.into_iter().enumerate() {
            let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
            workers_done.push(done_rx);
            let (s, stop) = (state.clone(), shutdown.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("tg-worker-{}", i + 1))
                .spawn(move || worker(s, listener, stop, done, trim));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a worker thread");
            }
        }
        if let Some(trim) = trim {
            trimmer(state.clone(), trim);
        }
        let s = state.clone();
        let public_task = tokio::spawn(server::serve(
            public,
            PublicSettings(s.clone()),
            s.public_slots.clone(),
            stack::Public(s),
            shutdown.clone(),
        ));
        let admin_stop = CancellationToken::new();
        let s = state.clone();
        let admin_task = tokio::spawn(server::serve(
            admin,
            AdminSettings(s.clone()),
            s.admin_slots.clone(),
            move |req, conn| admin::handle(s.clone(), req, conn),
            admin_stop.clone(),
        ));
        let reloads = reloader.map(|r| tokio::spawn(r.run(shutdown.clone())));
        let revocations = tokio::spawn(crate::revocations::listen(state.clone()));
        state.set_ready(true);

        shutdown.cancelled().await;
        state.set_ready(false);
        let grace = state.gateway.load().config.limits.shutdown_grace.0;
        let shutdown_started = tokio::time::Instant::now();
        tracing::info!(grace_s = grace.as_secs_f64(), "shutting down: draining in-flight requests and tunnels");
        let drain = async {
            let _ = public_task.await;
            for done in workers_done {
                let _ = done.await;
            }
            state.tunnels.close();
            state.tunnels.wait().await;
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("shutdown grace expired: closing what is left");
        }
        if let Some(reloads) = reloads {
            reloads.abort();
        }
        revocations.abort();
        // The ledger's queue gets what is left of the grace (a second at least).
        drain_ledgers(&state, grace.saturating_sub(shutdown_started.elapsed()).max(LEDGER_DRAIN_MIN)).await;
        admin_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
        tracing::info!("stopped");
    }
}

/// The least time shutdown gives the ledger to commit what is queued, however long the
/// requests took (SPEC §6: records written before SIGTERM are on disk when the process exits).
const LEDGER_DRAIN_MIN: Duration = Duration::from_secs(1);

async fn drain_ledgers(state: &State, deadline: Duration) {
    for ledger in state.stores.ledgers.live() {
        match ledger.drain(deadline).await {
            Ok(()) => tracing::info!("ledger: every queued record is committed"),
            Err(waiting) => tracing::error!(
                waiting,
                wait_s = deadline.as_secs_f64(),
                "ledger: records still queued at exit are lost (the database did not take them in time)"
            ),
        }
    }
}

/// One extra worker thread: a current-thread runtime serving its own public listener.
fn worker(
    state: Arc<State>,
    listener: std::net::TcpListener,
    stop: CancellationToken,
    done: tokio::sync::oneshot::Sender<()>,
    trim: Option<Trim>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return tracing::error!(error = %e, "cannot start a worker runtime"),
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = %e, "cannot register a worker's listener"),
        };
        let tunnels = state.tunnels.clone();
        if let Some(trim) = trim {
            trimmer(state.clone(), trim);
        }
        let (settings, slots) = (PublicSettings(state.clone()), state.public_slots.clone());
        server::serve(listener, settings, slots, stack::Public(state), stop).await;
        let _ = done.send(());
        // Tunnels spawned on this runtime live until they end or the process exits.
        tunnels.wait().await;
    });
}

/// On this thread: trims after open connections and tunnels fell by an eighth of their peak
/// since the last trim (all of them closing included), at most every `TRIM_EVERY`. A WebSocket
/// gives its connection slot back when it becomes a tunnel, so tunnels are counted apart.
fn trimmer(state: Arc<State>, trim: Trim) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut peak = 0;
        loop {
            tick.tick().await;
            let open = state.public_slots.open() + state.tunnels.len();
            if open >= peak {
                peak = open;
            } else if peak - open >= peak.div_ceil(8) {
                trim();
                peak = open;
            }
        }
    });
}
