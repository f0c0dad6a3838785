//! The signer threads of one HSM key. PKCS#11 calls block, so they never run on a tokio
//! worker: each of a few threads owns a logged-in session and takes signatures from one bounded
//! queue, from the key's first signature on. A signature whose deadline passed while it waited is not made. A session that fails
//! is dropped and opened again (the module restarted if it must be), at most twice a second
//! per thread, also while idle, so that the key comes back without traffic; an idle session
//! is probed every 2 s, so that `/readyz` notices a token gone before a request does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::module::describe;
use super::session::{KeySession, Location, OpenError};
use crate::metrics::SignerMetrics;

/// How often an idle thread without a session tries to open one.
const REOPEN_EVERY: Duration = Duration::from_millis(500);
/// How often an idle thread with a session asks whether the token still answers.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Why a signature was not made: each is a 503 `signer_unavailable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("the signer queue is full")]
    QueueFull,
    #[error("the signature took longer than pkcs11.timeout")]
    Deadline,
    #[error("the token cannot sign (gone, or its session failed)")]
    Token,
}

impl Unavailable {
    /// The `reason` label of `tokengate_signer_unavailable_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Deadline => "timeout",
            Self::Token => "token",
        }
    }
}

struct Job {
    message: Vec<u8>,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<u8>, Unavailable>>,
}

/// What the threads and the callers share.
pub struct Shared {
    at: Location,
    /// Signatures queued and not yet taken by a thread.
    depth: AtomicUsize,
    /// False from a failed signature or open until a session works again.
    up: AtomicBool,
    metrics: OnceLock<SignerMetrics>,
}

/// The queue into a key's signer threads, started with the first signature (so that `check`
/// and `jwks` start none). Dropping it ends them (once the queue drains).
pub struct Pool {
    queue: OnceLock<SyncSender<Job>>,
    shared: Arc<Shared>,
    /// The session `load` opened, for the first thread.
    first: Mutex<Option<KeySession>>,
    threads: usize,
    capacity: usize,
}

impl Pool {
    pub fn new(at: Location, first: KeySession, threads: usize, capacity: usize) -> Self {
        let shared =
            Arc::new(Shared { at, depth: AtomicUsize::new(0), up: AtomicBool::new(true), metrics: OnceLock::new() });
        Self { queue: OnceLock::new(), shared, first: Mutex::new(Some(first)), threads, capacity }
    }

    /// Starts the signer threads; each opens its session at once.
    fn spawn(&self) -> SyncSender<Job> {
        let (queue, rx) = std::sync::mpsc::sync_channel(self.capacity);
        let rx = Arc::new(Mutex::new(rx));
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner).take();
        for i in 0..self.threads.max(1) {
            let (rx, shared, session) = (rx.clone(), self.shared.clone(), first.take());
            let spawned = std::thread::Builder::new()
                .name(format!("tokengate-signer-{i}"))
                .spawn(move || Signer { shared, session, next_open: Instant::now(), probed: Instant::now() }.run(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a signer thread");
            }
        }
        queue
    }

    /// Hands the pool its metrics (once the config is in service).
    pub fn start_metrics(&self, metrics: SignerMetrics) {
        let _ = self.shared.metrics.set(metrics);
    }

    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Signs `message` on a signer thread, waiting at most `timeout` in all.
    pub async fn sign(&self, message: &[u8], timeout: Duration) -> Result<Vec<u8>, Unavailable> {
        let deadline = Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        let job = Job { message: message.to_vec(), deadline, reply };
        self.shared.depth.fetch_add(1, Ordering::Relaxed);
        let queue = self.queue.get_or_init(|| self.spawn());
        let refused = match queue.try_send(job) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some(Unavailable::QueueFull),
            Err(TrySendError::Disconnected(_)) => Some(Unavailable::Token),
        };
        let result = match refused {
            Some(why) => {
                self.shared.depth.fetch_sub(1, Ordering::Relaxed);
                Err(why)
            }
            None => {
                self.shared.gauge();
                match tokio::time::timeout_at(deadline.into(), answer).await {
                    Ok(Ok(result)) => result,
                    // The thread dropped the job: it ended (the config was replaced mid-way).
                    Ok(Err(_)) => Err(Unavailable::Token),
                    Err(_) => Err(Unavailable::Deadline),
                }
            }
        };
        if let (Err(why), Some(m)) = (&result, self.shared.metrics.get()) {
            m.unavailable(why.reason());
        }
        result
    }
}

impl Shared {
    fn gauge(&self) {
        if let Some(m) = self.metrics.get() {
            m.queue_depth.set(i64::try_from(self.depth.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        }
    }
}

/// One signer thread.
struct Signer {
    shared: Arc<Shared>,
    session: Option<KeySession>,
    next_open: Instant,
    probed: Instant,
}

impl Signer {
    fn run(mut self, rx: &Mutex<Receiver<Job>>) {
        if self.session.is_none() {
            self.reopen();
        }
        loop {
            let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv_timeout(REOPEN_EVERY);
            let job = match next {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.idle();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.shared.depth.fetch_sub(1, Ordering::Relaxed);
            self.shared.gauge();
            if Instant::now() >= job.deadline {
                let _ = job.reply.send(Err(Unavailable::Deadline));
                continue;
            }
            let result = self.sign(&job.message);
            let _ = job.reply.send(result);
        }
    }

    /// Between signatures: reopen a missing session, or probe the one there is now and then.
    fn idle(&mut self) {
        match &self.session {
            None => {
                self.reopen();
            }
            Some(session) if self.probed.elapsed() >= PROBE_EVERY => {
                self.probed = Instant::now();
                if !session.probe() {
                    tracing::warn!(key_label = %self.shared.at.key_label, "the HSM token stopped answering; reopening the session");
                    self.session = None;
                    self.shared.up.store(false, Ordering::Relaxed);
                    self.reopen();
                }
            }
            Some(_) => {}
        }
    }

    /// Signs with this thread's session; a failure drops it and tries once more on a new one.
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, Unavailable> {
        for _attempt in 0..2 {
            if self.session.is_none() && !self.reopen() {
                return Err(Unavailable::Token);
            }
            let Some(session) = &self.session else { return Err(Unavailable::Token) };
            let started = Instant::now();
            match session.sign(self.shared.at.algorithm, message) {
                Ok(signature) => {
                    if let Some(m) = self.shared.metrics.get() {
                        m.duration.observe(started.elapsed().as_secs_f64());
                    }
                    self.shared.up.store(true, Ordering::Relaxed);
                    return Ok(signature);
                }
                Err(e) => {
                    tracing::warn!(key_label = %self.shared.at.key_label, error = %describe(&e), "HSM signature failed; reopening the session");
                    self.session = None;
                    self.next_open = Instant::now();
                }
            }
        }
        self.shared.up.store(false, Ordering::Relaxed);
        Err(Unavailable::Token)
    }

    /// Opens a session unless one was tried less than `REOPEN_EVERY` ago; restarts the module
    /// when the token cannot even be found (SoftHSM needs that to see it again).
    fn reopen(&mut self) -> bool {
        if Instant::now() < self.next_open {
            return false;
        }
        self.next_open = Instant::now() + REOPEN_EVERY;
        let at = &self.shared.at;
        let epoch = at.module.epoch();
        match KeySession::open(at) {
            Ok(session) => {
                self.session = Some(session);
                self.shared.up.store(true, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.shared.up.store(false, Ordering::Relaxed);
                if !matches!(e, OpenError::Pin(_)) {
                    at.module.restart(epoch);
                }
                tracing::debug!(key_label = %at.key_label, error = %e.reason(), "HSM session not reopened");
                false
            }
        }
    }
}
