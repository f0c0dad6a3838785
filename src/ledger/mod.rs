//! The ledger (SPEC §6): every minted token recorded in SQLite or PostgreSQL, searchable by
//! jti, user, route and the claims a route lists; every caller's identity upserted into a
//! users table.
//!
//! A token route reserves a place in a bounded queue *before* it mints (a full queue is a 503,
//! never a token nobody recorded), then hands its records to the writer task, which commits
//! them in batches and retries with back-off while the database fails. `durability: commit`
//! waits for the commit before answering. The handle lives in `Stores`: a reload that keeps the
//! same database keeps the same queue and writer.

mod db;
mod health;
mod pg_tls;
mod postgres;
mod records;
mod sql;
mod sqlite;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Durability, FieldError, LedgerConfig, LedgerType};
use crate::metrics::LedgerMetrics;
use db::Db;
pub use health::Health;
pub use records::{claim_text, sha256_hex, Row, TokenRecord, UserRecord, UserSeen};
pub use sql::{DbError, Search};

/// Checks a PostgreSQL URL without saying anything about its content (it holds a password).
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    postgres::parse(url).map(drop)
}

/// One answered request's records: the tokens it minted, and who asked.
#[derive(Debug, Default)]
pub struct Entry {
    pub rows: Vec<Row>,
    pub user: Option<UserSeen>,
}

enum Msg {
    Entry(Entry, Option<oneshot::Sender<()>>),
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// What makes two ledger configs the same ledger: the database and the queue's size.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LedgerShape(String);

impl LedgerShape {
    pub fn of(cfg: &LedgerConfig) -> Self {
        let target = match cfg.kind {
            LedgerType::Sqlite => cfg.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            LedgerType::Postgres => cfg.url.as_ref().map(|u| u.expose().to_owned()).unwrap_or_default(),
        };
        // A CA file's content, not only its path: a rotated CA is a new connection.
        let ca = crate::tls::ca_digest(cfg.ca_file.as_deref());
        Self(format!("{:?}\u{0}{target}\u{0}{ca}\u{0}{}", cfg.kind, cfg.queue_size))
    }
}

/// What the writer and the readers share.
struct Shared {
    db: Db,
    health: Health,
    /// `retention` in seconds; 0 keeps every record. Set by the config in service.
    retention: AtomicU64,
    /// The queue of the ledger that replaced this one (a reload moved the ledger): what is
    /// still queued here, or cannot be written here, goes there.
    successor: Mutex<Option<mpsc::Sender<Msg>>>,
    /// Wakes a writer waiting out a back-off when a successor is set.
    retired: tokio::sync::Notify,
}

/// A handle to one ledger: its queue, its writer and its database. Cheap to clone.
#[derive(Clone)]
pub struct Ledger(Arc<Inner>);

struct Inner {
    tx: mpsc::Sender<Msg>,
    /// The queue's receiving end until `start` hands it to the writer task.
    pending: Mutex<Option<mpsc::Receiver<Msg>>>,
    shared: Arc<Shared>,
}

/// Why a record could not be taken or committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger queue is full")]
    Full,
    #[error("the ledger did not commit within the commit timeout")]
    CommitTimeout,
    #[error("the ledger writer has stopped")]
    Stopped,
}

impl Ledger {
    /// A ledger for `cfg` (validated). Nothing is opened until `start`: `check` builds one too.
    pub fn new(cfg: &LedgerConfig) -> Result<Self, FieldError> {
        let db = match cfg.kind {
            LedgerType::Sqlite => {
                let path = cfg.path.clone().unwrap_or_default();
                sqlite::check_directory(&path).map_err(|reason| FieldError::new("ledger.path", reason))?;
                Db::Sqlite(sqlite::Sqlite::new(path))
            }
            LedgerType::Postgres => {
                let url = cfg.url.as_ref().map(|u| u.expose()).unwrap_or_default();
                check_postgres_url(url).map_err(|reason| FieldError::new("ledger.url", reason))?;
                let db = postgres::Postgres::new(url, cfg.ca_file.as_deref())?;
                Db::Postgres(Box::new(db))
            }
        };
        let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
        let successor = Mutex::new(None);
        let (health, retention, retired) = (Health::default(), AtomicU64::new(0), tokio::sync::Notify::new());
        let shared = Arc::new(Shared { db, health, retention, successor, retired });
        Ok(Self(Arc::new(Inner { tx, pending: Mutex::new(Some(rx)), shared })))
    }

    /// Applies the settings of the config being built that do not change the ledger itself.
    pub fn configure(&self, cfg: &LedgerConfig) {
        let retention = cfg.retention.map_or(0, |r| r.0.as_secs().max(1));
        self.0.shared.retention.store(retention, Ordering::Relaxed);
    }

    /// Starts the writer task (once; later calls do nothing): it opens the database, applies
    /// migrations, then writes what is queued.
    pub fn start(&self, metrics: &LedgerMetrics) {
        let rx = self.0.pending.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(rx) = rx {
            tokio::spawn(writer::run(rx, self.0.shared.clone(), metrics.clone()));
        }
    }

    pub fn health(&self) -> &Health {
        &self.0.shared.health
    }

    /// Opens the database and applies its migrations now, within `timeout`: a reload checks a
    /// new ledger this way before it swaps, so a destination that cannot be used is refused
    /// while the old ledger keeps recording.
    pub async fn open_now(&self, timeout: Duration) -> Result<(), DbError> {
        match tokio::time::timeout(timeout, self.0.shared.db.migrate()).await {
            Ok(result) => result,
            Err(_) => Err(DbError::Timeout(timeout)),
        }
    }

    /// Whether two handles are the same ledger.
    pub fn same(&self, other: &Ledger) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// After a reload that moved the ledger: what this one still holds, or cannot write, is
    /// carried to `successor`, never dropped (SPEC §6).
    pub fn retire_to(&self, successor: &Ledger) {
        *self.0.shared.successor.lock().unwrap_or_else(PoisonError::into_inner) = Some(successor.0.tx.clone());
        self.0.shared.retired.notify_one();
    }

    /// Waits until everything queued so far is committed, or `deadline` passes (SIGTERM).
    /// Returns how many answers were still waiting when it gave up.
    pub async fn drain(&self, deadline: Duration) -> Result<(), usize> {
        let (done, committed) = oneshot::channel();
        let waiting = || self.0.tx.max_capacity() - self.0.tx.capacity();
        let flushed = async {
            self.0.tx.send(Msg::Flush(done)).await.map_err(drop)?;
            committed.await.map_err(drop)
        };
        match tokio::time::timeout(deadline, flushed).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(waiting()),
        }
    }

    pub async fn token(&self, jti: &str) -> Result<Option<TokenRecord>, DbError> {
        self.0.shared.db.token(jti).await
    }

    pub async fn search(&self, search: Search) -> Result<Vec<TokenRecord>, DbError> {
        self.0.shared.db.search(search).await
    }

    pub async fn user(&self, id: &str) -> Result<Option<UserRecord>, DbError> {
        self.0.shared.db.user(id).await
    }
}

/// A route's use of the ledger: which claims it records, and how it waits.
pub struct Recorder {
    ledger: Ledger,
    pub record: Vec<String>,
    pub store_token: bool,
    durability: Durability,
    commit_timeout: Duration,
}

/// A place in the queue, taken before minting.
pub struct Reserved<'a> {
    permit: mpsc::Permit<'a, Msg>,
    recorder: &'a Recorder,
}

impl Recorder {
    pub fn new(ledger: Ledger, cfg: &LedgerConfig, record: Vec<String>) -> Self {
        Self {
            ledger,
            record,
            store_token: cfg.store_token,
            durability: cfg.durability,
            commit_timeout: cfg.commit_timeout.0,
        }
    }

    /// Takes a place in the queue, or says why there is none.
    pub fn reserve(&self) -> Result<Reserved<'_>, LedgerError> {
        match self.ledger.0.tx.try_reserve() {
            Ok(permit) => Ok(Reserved { permit, recorder: self }),
            Err(mpsc::error::TrySendError::Full(())) => Err(LedgerError::Full),
            Err(mpsc::error::TrySendError::Closed(())) => Err(LedgerError::Stopped),
        }
    }
}

impl Reserved<'_> {
    /// Queues `entry`; with `durability: commit` (and tokens to record), returns once it is
    /// committed.
    pub async fn record(self, entry: Entry) -> Result<(), LedgerError> {
        let Reserved { permit, recorder } = self;
        if recorder.durability == Durability::Queued || entry.rows.is_empty() {
            permit.send(Msg::Entry(entry, None));
            return Ok(());
        }
        let (done, committed) = oneshot::channel();
        permit.send(Msg::Entry(entry, Some(done)));
        match tokio::time::timeout(recorder.commit_timeout, committed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(LedgerError::Stopped),
            Err(_) => Err(LedgerError::CommitTimeout),
        }
    }
}

impl Shared {
    /// The queue of the ledger that replaced this one, if a reload moved it.
    fn successor(&self) -> Option<mpsc::Sender<Msg>> {
        self.successor.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl From<LedgerError> for crate::error::Error {
    /// The ledger cannot take or commit a record: 503 `ledger_unavailable`.
    fn from(err: LedgerError) -> Self {
        Self::Ledger(Box::new(err))
    }
}
