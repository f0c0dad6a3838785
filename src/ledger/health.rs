//! Whether the ledger is writing: what `/readyz` reports. A failure that persists (several
//! attempts in a row) turns it down; the first success turns it up. Each change is logged once,
//! not each failed row.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Consecutive failures before the ledger counts as down (about a second of back-off).
const DOWN_AFTER: u32 = 3;

const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

#[derive(Debug, Default)]
pub struct Health {
    state: AtomicU8,
    failures: AtomicU32,
}

impl Health {
    /// True once the database is open and migrated, while writes succeed.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    pub(super) fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        match self.state.swap(UP, Ordering::AcqRel) {
            DOWN => tracing::info!("ledger available again: queued records are being written"),
            STARTING => tracing::info!("ledger ready"),
            _ => {}
        }
    }

    /// Records one failed attempt; `cause` is logged when this one turns the ledger down.
    pub(super) fn failed(&self, what: &str, cause: &str) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < DOWN_AFTER {
            tracing::debug!(%cause, failures, "ledger {what} failed; retrying");
            return;
        }
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            tracing::error!(%cause, failures, "ledger unavailable ({what} failed): records wait in the queue, retried");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_only_after_failures_persist_and_up_on_success() {
        let h = Health::default();
        assert!(!h.is_up(), "not up before the database is open");
        h.succeeded();
        assert!(h.is_up());
        h.failed("write", "x");
        h.failed("write", "x");
        assert!(h.is_up(), "two failures are a blip");
        h.failed("write", "x");
        assert!(!h.is_up());
        h.succeeded();
        assert!(h.is_up());
    }
}
