//! The circuit breaker in front of Redis: after one failed call, requests stop calling Redis
//! (they go straight to the `on_error` fallback, adding no latency) until a background probe
//! gets an answer again. Only the call that failed waited, for at most `timeout`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Closed (Redis in use) or open (skipped).
#[derive(Debug, Default)]
pub struct Breaker {
    open: AtomicBool,
    /// Set once the first connection attempt is done; until then Redis counts as down.
    connected_once: AtomicBool,
}

impl Breaker {
    /// Whether requests may call Redis now.
    pub fn closed(&self) -> bool {
        self.connected_once.load(Ordering::Acquire) && !self.open.load(Ordering::Acquire)
    }

    /// A call failed: skip Redis until a probe succeeds. True when this call opened it.
    pub fn trip(&self) -> bool {
        !self.open.swap(true, Ordering::AcqRel)
    }

    /// A probe (or a call) succeeded. True when this closed it.
    pub fn reset(&self) -> bool {
        self.connected_once.store(true, Ordering::Release);
        self.open.swap(false, Ordering::AcqRel)
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_until_reset() {
        let b = Breaker::default();
        assert!(!b.closed(), "not before the first connection");
        b.reset();
        assert!(b.closed());
        assert!(b.trip());
        assert!(!b.trip(), "tripped once");
        assert!(!b.closed());
        assert!(b.reset());
        assert!(b.closed());
    }
}
