//! Shutdown as one listener's connections see it. The process-wide `CancellationToken` takes a
//! mutex to be read and another to be waited on, and every connection of every worker would
//! take both on each request, bouncing their cache lines between cores. Here a connection
//! reads a flag (one atomic load) on each request, and registers its wake-up once, the first
//! time it waits idle (`Idle`); the listener trips the flag and wakes the waiting ones when its
//! accept loop stops.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// A listener's shutdown signal, shared by its connections.
#[derive(Clone, Default)]
pub struct Stop(Arc<Inner>);

#[derive(Default)]
struct Inner {
    stopping: AtomicBool,
    woken: Notify,
}

impl Stop {
    /// From now on `is_stopping`; wakes every connection waiting idle.
    pub fn trip(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        self.0.woken.notify_waiters();
    }

    pub fn is_stopping(&self) -> bool {
        self.0.stopping.load(Ordering::SeqCst)
    }

    /// Resolves once the listener stops (for a `select!`, where registering on each poll is
    /// cheap enough: hyper's connections).
    pub async fn stopped(&self) {
        loop {
            let woken = self.0.woken.notified();
            if self.is_stopping() {
                return;
            }
            woken.await;
        }
    }

    /// A wait for shutdown that a connection polls each time it waits for bytes.
    pub fn idle(&self) -> Idle<'_> {
        // Made before the flag is first read: a `trip` after this resolves its first poll.
        Idle { stop: self, woken: self.0.woken.notified(), registered: false }
    }
}

pin_project_lite::pin_project! {
    /// `Stop` for a connection's idle waits: the wake-up is registered on the first poll and
    /// kept for the connection's life (its task's waker does not change), later polls read the
    /// flag.
    pub struct Idle<'a> {
        stop: &'a Stop,
        #[pin]
        woken: Notified<'a>,
        registered: bool,
    }
}

impl Idle<'_> {
    /// Ready once the listener stops; registers the task's wake-up on the first poll.
    pub fn poll_stopped(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.stop.is_stopping() {
            return Poll::Ready(());
        }
        if *this.registered {
            return Poll::Pending;
        }
        *this.registered = true;
        this.woken.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    /// A connection registers its wake-up on its first idle wait and only reads the flag after:
    /// `trip` must still wake it, and a wait after `trip` must not block.
    #[tokio::test]
    async fn an_idle_wait_registered_once_is_woken_by_trip() {
        let stop = Stop::default();
        let mut idle = std::pin::pin!(stop.idle());
        for _ in 0..2 {
            assert!(poll_fn(|cx| Poll::Ready(idle.as_mut().poll_stopped(cx).is_pending())).await);
        }
        let tripping = stop.clone();
        tokio::spawn(async move { tripping.trip() });
        let woken = tokio::time::timeout(Duration::from_secs(10), poll_fn(|cx| idle.as_mut().poll_stopped(cx))).await;
        assert!(woken.is_ok(), "a registered idle wait was not woken");
        assert!(stop.is_stopping());
        let mut late = std::pin::pin!(stop.idle());
        assert!(poll_fn(|cx| Poll::Ready(late.as_mut().poll_stopped(cx).is_ready())).await);
        tokio::time::timeout(Duration::from_secs(10), stop.stopped()).await.expect("stopped() after trip");
    }
}
