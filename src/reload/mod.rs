//! Reload (SPEC §8). SIGHUP, or a change to the config file or any file it reads, makes the
//! reloader load, validate and compile the file whole, off the request path (a blocking-pool
//! thread, never a worker), then swap it in: requests and tunnels in flight finish on the config
//! they started with. The long-lived stores are matched to the new config by name and shape
//! (see `shelf`). A file that fails is refused whole: one log line per error with its key path,
//! `tokengate_config_reloads_total{result="failure"}`, and the old config keeps serving.
//!
//! `listen`, `admin_listen` and `workers` are bound at start: a change to them is refused with
//! a message saying it needs a restart. TLS material, limits and everything else apply to the
//! connections and requests that come after the swap.

mod diff;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigErrors, FieldError, Overrides};
use crate::gateway::Gateway;
use crate::ledger::Ledger;
use crate::state::State;
use crate::stores::Summary;

/// Quiet time after a file event before looking: editors and Kubernetes change several
/// entries in a row.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Look at the latest after this long even if events keep coming.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// Why the reloader should look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: reload, changed or not.
    Signal,
    /// Something changed in a watched directory: reload if our files did.
    Files,
}

/// Asks the reloader for a reload. Cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle(mpsc::Sender<Trigger>);

impl ReloadHandle {
    /// What SIGHUP does.
    pub fn request(&self) {
        // A full queue already holds reloads to come.
        let _ = self.0.try_send(Trigger::Signal);
    }
}

/// A config put in service.
pub struct Applied {
    pub gateway: Arc<Gateway>,
    pub previous_hash: String,
    pub changes: String,
    pub stores: Summary,
}

/// Reloads the config file at `path` into `state`, if it loads, validates and compiles whole.
/// Blocking: file reads and key parsing.
pub fn reload(state: &State, path: &Path, overrides: &Overrides) -> Result<Applied, ConfigErrors> {
    let origin = path.display().to_string();
    let loaded = config::load_file(path)?;
    let old = state.gateway.load_full();
    let restart = needs_restart(&old.config, &loaded.config, overrides);
    if !restart.is_empty() {
        return Err(ConfigErrors { origin, errors: restart, files: loaded.files });
    }
    let files = loaded.files.clone();
    let build = state.stores.begin();
    let gateway = Gateway::build(loaded, &build, &state.metrics).map_err(|errors| ConfigErrors {
        origin: origin.clone(),
        errors,
        files: files.clone(),
    })?;
    let (was, now) = moved_ledger(&old, &gateway);
    let (was, now) = (was.cloned(), now.cloned());
    if let Some(new) = &now {
        open_before_swap(new, &gateway.config).map_err(|e| ConfigErrors { origin, errors: vec![e], files })?;
    }
    let gateway = Arc::new(gateway);
    state.gateway.store(gateway.clone());
    let stores = build.commit();
    if let (Some(was), Some(now)) = (was, now) {
        // What the old ledger still holds, or cannot write, goes to the new one.
        was.retire_to(&now);
    }
    gateway.start_background(&state.metrics);
    // A raised `max_connections` lets waiting accept loops go on.
    state.public_slots.recheck();
    state.admin_slots.recheck();
    state.metrics.config_in_service(gateway.hash());
    Ok(Applied { changes: diff::changes(&old, &gateway), previous_hash: old.hash().to_owned(), gateway, stores })
}

/// The ledgers before and after, when the new config records somewhere the old one did not.
fn moved_ledger<'a>(old: &'a Gateway, new: &'a Gateway) -> (Option<&'a Ledger>, Option<&'a Ledger>) {
    match (&old.ledger, &new.ledger) {
        (Some(was), Some(now)) if was.same(now) => (None, None),
        (was, now) => (was.as_ref(), now.as_ref()),
    }
}

/// How long a reload waits for a new ledger to open before refusing it.
const LEDGER_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens and migrates a ledger the new config brings, before it is swapped in: a destination
/// that cannot be used fails the reload (naming the key), and the old ledger keeps recording.
fn open_before_swap(ledger: &Ledger, config: &Config) -> Result<(), FieldError> {
    let key = match config.ledger.as_ref().map(|l| l.kind) {
        Some(crate::config::LedgerType::Postgres) => "ledger.url",
        _ => "ledger.path",
    };
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| FieldError::new(key, "cannot open the new ledger here (no runtime)"))?;
    runtime
        .block_on(ledger.open_now(LEDGER_OPEN_TIMEOUT))
        .map_err(|e| FieldError::new(key, format!("cannot open the ledger: {}", crate::logging::chain(&e))))
}

/// The settings bound at start that `new` would change.
fn needs_restart(old: &Config, new: &Config, overrides: &Overrides) -> Vec<FieldError> {
    let restart = |key: &str, was: String, now: String| {
        FieldError::new(key, format!("changed from {was} to {now}: this needs a restart, a reload cannot apply it"))
    };
    let mut errors = Vec::new();
    if old.listen != new.listen {
        errors.push(restart("listen", old.listen.to_string(), new.listen.to_string()));
    }
    if old.admin_listen != new.admin_listen {
        errors.push(restart("admin_listen", old.admin_listen.to_string(), new.admin_listen.to_string()));
    }
    let (was, now) = (overrides.workers(old), overrides.workers(new));
    if was != now {
        errors.push(restart("workers", was.to_string(), now.to_string()));
    }
    errors
}

/// The reload task: waits for triggers and reloads.
pub struct Reloader {
    state: Arc<State>,
    path: PathBuf,
    overrides: Overrides,
    tx: mpsc::Sender<Trigger>,
    rx: mpsc::Receiver<Trigger>,
}

impl Reloader {
    pub fn new(state: Arc<State>, path: PathBuf, overrides: Overrides) -> Self {
        let (tx, rx) = mpsc::channel(16);
        Self { state, path, overrides, tx, rx }
    }

    pub fn handle(&self) -> ReloadHandle {
        ReloadHandle(self.tx.clone())
    }

    /// Runs until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut watch = watch::Watch::start(self.tx.clone());
        let running = self.state.gateway.load_full();
        // What was last tried, so unchanged files are not reloaded again.
        let mut tried = (running.digest.clone(), running.files.clone());
        watch.set(&self.watched(&tried.1));
        drop(running);
        loop {
            let trigger = tokio::select! {
                _ = stop.cancelled() => return,
                t = self.rx.recv() => match t { Some(t) => t, None => return },
            };
            let signalled = trigger == Trigger::Signal || self.settle().await;
            if !signalled && on_disk(&self.path, &tried.1) == tried.0 {
                // Symlinks may point elsewhere now, with the same content behind them.
                watch.set(&self.watched(&tried.1));
                continue;
            }
            let (state, path, overrides) = (self.state.clone(), self.path.clone(), self.overrides);
            let start = Instant::now();
            let outcome = tokio::task::spawn_blocking(move || reload(&state, &path, &overrides)).await;
            let elapsed = start.elapsed();
            self.state.metrics.config_reload_duration_seconds.observe(elapsed.as_secs_f64());
            tried = match outcome {
                Ok(Ok(applied)) => {
                    self.applied(&applied, elapsed);
                    (applied.gateway.digest.clone(), applied.gateway.files.clone())
                }
                Ok(Err(refused)) => {
                    self.refused(&refused);
                    (on_disk(&self.path, &refused.files), refused.files)
                }
                Err(e) => {
                    tracing::error!(error = %e, "config reload task failed");
                    self.state.metrics.config_reloads_total.with_label_values(&["failure"]).inc();
                    continue;
                }
            };
            watch.set(&self.watched(&tried.1));
        }
    }

    /// After a file event: waits until events stop for `DEBOUNCE` (at most `MAX_DEBOUNCE`).
    /// Returns whether a signal came meanwhile.
    async fn settle(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
        let mut signalled = false;
        loop {
            let wait = DEBOUNCE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(t)) => signalled |= t == Trigger::Signal,
                Ok(None) | Err(_) => return signalled,
            }
            if tokio::time::Instant::now() >= deadline {
                return signalled;
            }
        }
    }

    /// The config file and the files it reads.
    fn watched(&self, files: &[PathBuf]) -> Vec<PathBuf> {
        std::iter::once(self.path.clone()).chain(files.iter().cloned()).collect()
    }

    fn applied(&self, applied: &Applied, elapsed: Duration) {
        self.state.metrics.config_reloads_total.with_label_values(&["success"]).inc();
        let s = &applied.stores;
        let kept = |t: crate::shelf::Turnover| format!("{}/{}", t.kept, t.kept + t.fresh);
        tracing::info!(
            hash = applied.gateway.hash(),
            previous = %applied.previous_hash,
            changes = %applied.changes,
            limits_kept = %kept(s.limits),
            auth_caches_kept = %kept(s.auth_caches),
            token_caches_kept = %kept(s.token_caches),
            pools_kept = %kept(s.pools),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "config reloaded"
        );
    }

    fn refused(&self, refused: &ConfigErrors) {
        self.state.metrics.config_reloads_total.with_label_values(&["failure"]).inc();
        for e in &refused.errors {
            tracing::error!(file = %refused.origin, key = %e.path, reason = %e.reason, "config reload refused");
        }
        let running = self.state.gateway.load();
        tracing::warn!(
            errors = refused.errors.len(),
            hash = running.hash(),
            "config not reloaded: the running config keeps serving"
        );
    }
}

/// The digest of the config file and `files` as they are on disk now (compare
/// `Gateway::digest`).
fn on_disk(path: &Path, files: &[PathBuf]) -> String {
    config::digest(&std::fs::read(path).unwrap_or_default(), files)
}
