//! The open connections of a listener across all its worker threads, and the wait for a free
//! place when `limits.max_connections` are open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::Notify;

/// The open connections of one listener, counted across its worker threads, so that
/// `max_connections` is one limit for the process.
#[derive(Default)]
pub struct Slots {
    open: AtomicUsize,
    freed: Notify,
    gauge: Option<IntGauge>,
}

impl Slots {
    /// Counts connections in `gauge` too (`tokengate_open_connections`).
    pub fn counted(gauge: IntGauge) -> Self {
        Self { gauge: Some(gauge), ..Self::default() }
    }

    /// Waits until fewer than `limit()` connections are open, and takes a slot.
    pub(super) async fn acquire(self: &Arc<Self>, limit: impl Fn() -> usize) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a slot freed in between still wakes us.
            freed.as_mut().enable();
            let open = self.open.load(Ordering::Acquire);
            if open < limit() {
                if self.open.compare_exchange(open, open + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    if let Some(g) = &self.gauge {
                        g.inc();
                    }
                    return Slot(self.clone());
                }
                continue;
            }
            freed.await;
        }
    }

    /// Wakes every waiting accept loop to look at the limit again (after a reload raised it).
    pub fn recheck(&self) {
        self.freed.notify_waiters();
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One open connection's place in `Slots`, given back when it closes.
pub(super) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.0.gauge {
            g.dec();
        }
        self.0.freed.notify_one();
    }
}
