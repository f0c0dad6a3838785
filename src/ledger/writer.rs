//! The writer task: opens and migrates the database, then commits what the queue holds in
//! batches (everything waiting, up to `MAX_BATCH` answers per transaction), retrying a failed
//! batch with back-off until it lands, so nothing queued is lost while the process lives. It
//! also deletes expired records (`retention`) in small batches between writes, notices a
//! database file deleted or replaced under it (each second, and before each batch) and
//! recreates it, and, once a reload moved the ledger elsewhere, carries what it still holds
//! to the new ledger's queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

use super::records::merge_users;
use super::{Entry, Msg, Shared};
use crate::logging::chain;
use crate::metrics::LedgerMetrics;

/// Answers committed in one transaction at most.
const MAX_BATCH: usize = 4096;
/// Expired records deleted per statement: small, so writes are never held up for long.
const PURGE_BATCH: u32 = 1000;
/// Longest wait between two looks for expired records.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// How often the database file is looked at while the queue is quiet.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Doubling waits between retries: 100 ms up to 5 s.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = Duration::from_millis(100) * 2u32.pow(self.0.min(6));
        self.0 += 1;
        wait.min(Duration::from_secs(5))
    }
}

pub(super) async fn run(mut rx: Receiver<Msg>, shared: Arc<Shared>, m: LedgerMetrics) {
    let mut backoff = Backoff::default();
    while let Err(e) = shared.db.migrate().await {
        m.errors.inc();
        m.queue_depth.set(depth(&rx));
        shared.health.failed("open", &chain(&e));
        tokio::time::sleep(backoff.next()).await;
    }
    shared.health.succeeded();
    let mut next_purge = Instant::now();
    let mut file_check = tokio::time::interval(FILE_CHECK_EVERY);
    file_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => msg,
                // Every handle is gone (the config dropped this ledger) and the queue is empty.
                None => break,
            },
            () = tokio::time::sleep_until(next_purge) => {
                next_purge = purge(&shared, &m).await;
                continue;
            }
            _ = file_check.tick() => {
                check_file(&shared, &m).await;
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        m.queue_depth.set(depth(&rx));
        if let Some(next) = shared.successor() {
            forward(batch, &next).await;
        } else {
            check_file(&shared, &m).await;
            commit(&shared, batch, &m, &rx).await;
        }
        m.queue_depth.set(depth(&rx));
    }
    m.queue_depth.set(0);
}

fn depth(rx: &Receiver<Msg>) -> i64 {
    i64::try_from(rx.len()).unwrap_or(i64::MAX)
}

/// Writes one batch, retrying until it is committed, then answers whoever waits on it.
async fn commit(shared: &Shared, batch: Vec<Msg>, m: &LedgerMetrics, rx: &Receiver<Msg>) {
    let (mut rows, mut seen, mut acks) = (Vec::new(), Vec::new(), Vec::new());
    for msg in batch {
        match msg {
            Msg::Entry(entry, ack) => {
                rows.extend(entry.rows);
                seen.extend(entry.user);
                acks.extend(ack);
            }
            Msg::Flush(done) => acks.push(done),
        }
    }
    let users = merge_users(seen.iter());
    let mut backoff = Backoff::default();
    while !(rows.is_empty() && users.is_empty()) {
        match shared.db.write(&rows, &users).await {
            Ok(()) => {
                m.writes.inc_by(rows.len() as u64);
                shared.health.succeeded();
                break;
            }
            Err(e) => {
                m.errors.inc();
                m.queue_depth.set(depth(rx));
                shared.health.failed("write", &chain(&e));
                if let Some(next) = shared.successor() {
                    // The ledger was moved while this one fails: the batch goes there.
                    let mut carried = vec![Msg::Entry(Entry { rows, user: None }, None)];
                    carried.extend(
                        seen.into_iter().map(|user| Msg::Entry(Entry { rows: Vec::new(), user: Some(user) }, None)),
                    );
                    carried.extend(acks.into_iter().map(Msg::Flush));
                    forward(carried, &next).await;
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff.next()) => {}
                    () = shared.retired.notified() => {}
                }
            }
        }
    }
    for ack in acks {
        let _ = ack.send(());
    }
}

/// Hands messages to the ledger that replaced this one, in order; a `Flush` there answers
/// once what was carried before it is committed. If that ledger has stopped too, they are
/// lost with the process: logged.
async fn forward(batch: Vec<Msg>, next: &tokio::sync::mpsc::Sender<Msg>) {
    let mut lost = 0usize;
    for msg in batch {
        if next.send(msg).await.is_err() {
            lost += 1;
        }
    }
    if lost > 0 {
        tracing::error!(lost, "ledger: the ledger that replaced this one has stopped; records not carried");
    }
}

/// Recreates a database file deleted or replaced under the writer; counted as an error and
/// reported by `/readyz` for as long as it cannot be recreated.
async fn check_file(shared: &Shared, m: &LedgerMetrics) {
    match shared.db.reopen_if_replaced().await {
        Ok(false) => {}
        Ok(true) => {
            m.errors.inc();
            tracing::warn!("ledger: the database file was deleted or replaced; a new one was created and migrated");
            shared.health.succeeded();
        }
        Err(e) => {
            m.errors.inc();
            shared.health.failed("reopen", &chain(&e));
        }
    }
}

/// Deletes one batch of records whose `exp` is older than the retention; returns when to look
/// again (at once while there is more).
async fn purge(shared: &Shared, m: &LedgerMetrics) -> Instant {
    let retention = shared.retention.load(Ordering::Relaxed);
    let every = Duration::from_secs(retention.clamp(1, PURGE_EVERY.as_secs()));
    if retention == 0 {
        return Instant::now() + PURGE_EVERY;
    }
    let before = i64::try_from(crate::clock::unix_now().saturating_sub(retention)).unwrap_or(0);
    match shared.db.purge(before, PURGE_BATCH).await {
        Ok(n) if n >= u64::from(PURGE_BATCH) => Instant::now(),
        Ok(n) => {
            if n > 0 {
                tracing::debug!(deleted = n, "ledger: deleted expired records");
            }
            Instant::now() + every
        }
        Err(e) => {
            m.errors.inc();
            tracing::warn!(error = %chain(&e), "ledger: cannot delete expired records; retrying later");
            Instant::now() + every
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
