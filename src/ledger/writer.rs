//! The writer task: opens and migrates the database, then commits what the queue holds in
//! batches (everything waiting, up to `MAX_BATCH` answers per transaction), retrying a failed
//! batch with back-off until it lands, so nothing queued is lost while the process lives. It
//! also deletes expired records (`retention`) in small batches between writes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

use super::records::merge_users;
use super::{Msg, Shared};
use crate::logging::chain;
use crate::metrics::LedgerMetrics;

/// Answers committed in one transaction at most.
const MAX_BATCH: usize = 4096;
/// Expired records deleted per statement: small, so writes are never held up for long.
const PURGE_BATCH: u32 = 1000;
/// Longest wait between two looks for expired records.
const PURGE_EVERY: Duration = Duration::from_secs(60);

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
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        m.queue_depth.set(depth(&rx));
        commit(&shared, batch, &m, &rx).await;
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
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
    for ack in acks {
        let _ = ack.send(());
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
