//! State shared by every replica through Redis (SPEC §7): rate-limit counters (one Lua GCRA
//! script per request phase) and revocation (pub/sub). Key names are HMACs under
//! `shared_state.secret`, never a user id or an IP in clear.
//!
//! Every call has `timeout`; one that fails trips the circuit breaker, and until a background
//! probe gets an answer, requests skip Redis and take the `on_error` fallback at once. Forwarded
//! traffic never gets here. The handle lives in `Stores`, so a reload keeps the connection.

mod breaker;
mod cache;
pub mod limits;
pub mod revoke;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::hmac;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use crate::config::{SharedStateConfig, SharedStateType};
use crate::metrics::SharedMetrics;
use breaker::Breaker;

/// How often the background task probes Redis while the breaker is open.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Longest a connection attempt may take (in the background, never on a request).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Checks a Redis URL without quoting it (it may hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    match redis::Client::open(url) {
        Ok(_) => Ok(()),
        Err(_) => Err("not a valid Redis URL: expected redis://[user:password@]host:port[/db] or rediss://…".into()),
    }
}

/// What makes two configs the same shared state: the servers, the key and the timeout.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SharedShape(String);

impl SharedShape {
    pub fn of(cfg: &SharedStateConfig) -> Self {
        let urls: Vec<&str> = cfg.url.iter().chain(&cfg.urls).map(|u| u.expose()).collect();
        // A CA file's content, not only its path: a rotated CA is a new connection.
        Self(format!(
            "{:?}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            cfg.kind,
            urls.join("\u{1}"),
            cfg.secret.expose(),
            cfg.key_prefix,
            cfg.timeout.0.as_micros(),
            crate::tls::ca_digest(cfg.ca_file.as_deref())
        ))
    }
}

// One per process, inside an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A handle to the shared state. Cheap to clone.
#[derive(Clone)]
pub struct Shared(Arc<Inner>);

struct Inner {
    target: Target,
    /// Where pub/sub subscribes (a cluster's first node).
    pubsub: redis::Client,
    conn: ArcSwapOption<Conn>,
    breaker: Breaker,
    timeout: Duration,
    prefix: String,
    mac_key: hmac::Key,
    started: AtomicBool,
    metrics: OnceLock<SharedMetrics>,
    /// The longest TTL of a cache entry written so far, in ms: how long a revocation
    /// generation must outlive it (`cache.rs`).
    longest_entry_ms: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// A handle for `cfg` (validated). Nothing connects until `start`.
    pub fn new(cfg: &SharedStateConfig) -> Result<Self, crate::config::FieldError> {
        let bad = |at: &str| crate::config::FieldError::new(at, "not a valid Redis URL");
        let checked =
            |at: String, url: &str| check_url(url).map_err(|reason| crate::config::FieldError::new(at, reason));
        match cfg.kind {
            SharedStateType::Redis => checked("shared_state.url".into(), cfg.url.as_ref().map_or("", |u| u.expose()))?,
            SharedStateType::RedisCluster => {
                for (i, url) in cfg.urls.iter().enumerate() {
                    checked(format!("shared_state.urls[{i}]"), url.expose())?;
                }
            }
        }
        let roots = match &cfg.ca_file {
            Some(file) => Some(
                crate::tls::roots_pem(file)
                    .map_err(|e| crate::config::FieldError::new("shared_state.ca_file", crate::logging::chain(&e)))?,
            ),
            None => None,
        };
        let certs = || redis::TlsCertificates { client_tls: None, root_cert: roots.clone() };
        let open = |url: &str| match roots {
            Some(_) => redis::Client::build_with_tls(url, certs()),
            None => redis::Client::open(url),
        };
        let (target, pubsub) = match cfg.kind {
            SharedStateType::Redis => {
                let url = cfg.url.as_ref().map(|u| u.expose()).unwrap_or_default();
                let client = open(url).map_err(|_| bad("shared_state.url"))?;
                (Target::Single(client.clone()), client)
            }
            SharedStateType::RedisCluster => {
                let urls: Vec<&str> = cfg.urls.iter().map(|u| u.expose()).collect();
                let first = open(urls.first().copied().unwrap_or_default()).map_err(|_| bad("shared_state.urls[0]"))?;
                let mut builder = redis::cluster::ClusterClient::builder(urls)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(cfg.timeout.0);
                if roots.is_some() {
                    builder = builder.certs(certs());
                }
                (Target::Cluster(builder.build().map_err(|_| bad("shared_state.urls"))?), first)
            }
        };
        Ok(Self(Arc::new(Inner {
            target,
            pubsub,
            conn: ArcSwapOption::empty(),
            breaker: Breaker::default(),
            timeout: cfg.timeout.0,
            prefix: cfg.key_prefix.clone(),
            mac_key: hmac::Key::new(hmac::HMAC_SHA256, cfg.secret.expose().as_bytes()),
            started: AtomicBool::new(false),
            metrics: OnceLock::new(),
            longest_entry_ms: std::sync::atomic::AtomicU64::new(0),
        })))
    }

    /// Starts the background task that connects and, while the breaker is open, probes.
    /// Once; later calls do nothing.
    pub fn start(&self, metrics: &SharedMetrics) {
        if self.0.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.0.metrics.set(metrics.clone());
        metrics.up.set(0);
        tokio::spawn(keep_connected(Arc::downgrade(&self.0)));
    }

    /// Whether requests use Redis now (else they take the fallback).
    pub fn is_up(&self) -> bool {
        self.0.breaker.closed()
    }

    /// A key name: the prefix, a kind, and an HMAC of `parts` (so no input is in clear).
    pub fn key(&self, kind: &str, parts: &[&[u8]]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0.mac_key);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut key = String::with_capacity(self.0.prefix.len() + kind.len() + 33);
        key.push_str(&self.0.prefix);
        key.push_str(kind);
        key.push(':');
        for b in &tag.as_ref()[..16] {
            key.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            key.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        key
    }

    fn is_cluster(&self) -> bool {
        matches!(self.0.target, Target::Cluster(_))
    }

    /// Runs `f` on the connection within `timeout`; None when the breaker is open, there is no
    /// connection yet, or the call failed (which trips the breaker).
    async fn run<T>(&self, f: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>) -> Option<T> {
        if !self.0.breaker.closed() {
            return None;
        }
        let mut conn = Conn::clone(&*self.0.conn.load_full()?);
        let started = Instant::now();
        let result = tokio::time::timeout(self.0.timeout, f(&mut conn)).await;
        if let Some(m) = self.0.metrics.get() {
            m.duration.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    "connection"
                } else {
                    "script"
                };
                self.failed(kind, &e.to_string());
                None
            }
            Err(_) => {
                self.failed("timeout", &format!("no answer within {:?}", self.0.timeout));
                None
            }
        }
    }

    fn failed(&self, kind: &'static str, cause: &str) {
        if let Some(m) = self.0.metrics.get() {
            m.errors.with_label_values(&[kind]).inc();
        }
        if self.0.breaker.trip() {
            if let Some(m) = self.0.metrics.get() {
                m.up.set(0);
            }
            tracing::warn!(kind, %cause, "shared state unavailable: requests skip Redis (on_error) until it answers");
        }
    }
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn pipeline<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => pipe.query_async(c).await,
            Self::Cluster(c) => pipe.query_async(c).await,
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        script: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => script.invoke_async(c).await,
            Self::Cluster(c) => script.invoke_async(c).await,
        }
    }
}

/// Connects, then probes while the breaker is open, until the handle is dropped.
async fn keep_connected(inner: Weak<Inner>) {
    let mut reported = false;
    loop {
        let Some(shared) = inner.upgrade().map(Shared) else { return };
        if shared.0.conn.load().is_none() {
            match connect(&shared.0.target, shared.0.timeout).await {
                Ok(conn) => shared.0.conn.store(Some(Arc::new(conn))),
                Err(e) => {
                    if !reported {
                        tracing::warn!(cause = %e, "shared state: cannot connect to Redis yet; retrying");
                        reported = true;
                    }
                    drop(shared);
                    tokio::time::sleep(PROBE_EVERY).await;
                    continue;
                }
            }
        }
        if !shared.0.breaker.closed() {
            let probe = async {
                let mut conn = Conn::clone(&*shared.0.conn.load_full()?);
                tokio::time::timeout(CONNECT_TIMEOUT, conn.query::<String>(&redis::cmd("PING"))).await.ok()?.ok()
            };
            if probe.await.is_some() {
                let first = !shared.0.breaker.is_open();
                if shared.0.breaker.reset() || first {
                    tracing::info!("shared state: Redis answers; limits and revocation are shared again");
                }
                if let Some(m) = shared.0.metrics.get() {
                    m.up.set(1);
                }
                reported = false;
            }
        }
        drop(shared);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

async fn connect(target: &Target, timeout: Duration) -> redis::RedisResult<Conn> {
    match target {
        Target::Single(client) => {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            Ok(Conn::Single(ConnectionManager::new_lazy_with_config(client.clone(), config)?))
        }
        Target::Cluster(client) => {
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
                .await
                .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "cluster connection timed out")))??;
            Ok(Conn::Cluster(conn))
        }
    }
}
