//! One pool's idle upstream connections, a list per thread: no lock on the hot path, and a
//! socket stays with the runtime it is registered with. A connection is put back once its
//! response body has ended; a sweeper drops the ones the upstream closed meanwhile.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use thread_local::ThreadLocal;

use super::conn::Conn;

/// Idle connections kept per thread and kind; the oldest go first.
const MAX_IDLE_PER_THREAD: usize = 512;

/// How often each thread's idle connections are checked for ones the upstream has closed, so
/// that they do not linger in CLOSE_WAIT until the next request.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One thread's idle connections of one kind, most recently used last.
struct IdleList<T> {
    list: RefCell<VecDeque<(T, Instant)>>,
    /// Whether this thread's sweeper task runs.
    swept: Cell<bool>,
}

impl<T> Default for IdleList<T> {
    fn default() -> Self {
        Self { list: RefCell::default(), swept: Cell::new(false) }
    }
}

impl<T> IdleList<T> {
    /// Drops the connections that idled too long or that `usable` refuses.
    fn sweep(&self, idle_timeout: Duration, mut usable: impl FnMut(&mut T) -> bool) {
        self.list.borrow_mut().retain_mut(|(conn, since)| since.elapsed() < idle_timeout && usable(conn));
    }

    /// The most recently used connection that `usable` accepts and that has not idled too long.
    fn take(&self, idle_timeout: Duration, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        let mut list = self.list.borrow_mut();
        while let Some((mut conn, since)) = list.pop_back() {
            if since.elapsed() < idle_timeout && usable(&mut conn) {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: T, idle_timeout: Duration) {
        let now = Instant::now();
        let mut list = self.list.borrow_mut();
        while list.front().is_some_and(|(_, since)| now.duration_since(*since) >= idle_timeout) {
            list.pop_front();
        }
        if list.len() >= MAX_IDLE_PER_THREAD {
            list.pop_front();
        }
        list.push_back((conn, now));
    }
}

/// The idle connections of one pool: tokengate's own (`Conn`) and hyper's (for streamed bodies).
pub struct Idle<B: Send + 'static> {
    timeout: Duration,
    conns: ThreadLocal<IdleList<Conn>>,
    senders: ThreadLocal<IdleList<SendRequest<B>>>,
}

impl<B: Send + 'static> Idle<B> {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, conns: ThreadLocal::new(), senders: ThreadLocal::new() }
    }

    /// This thread's most recently used own connection that is still usable.
    // Inlined: the connection is moved out by value on every forwarded request.
    #[inline]
    pub fn take_conn(&self) -> Option<Conn> {
        self.conns.get_or(IdleList::default).take(self.timeout, Conn::is_reusable)
    }

    /// This thread's most recently used hyper connection that is still open.
    pub fn take_sender(&self) -> Option<SendRequest<B>> {
        self.senders.get_or(IdleList::default).take(self.timeout, |s| !s.is_closed())
    }

    #[inline]
    pub fn put_conn(self: &Arc<Self>, conn: Conn) {
        let idle = self.conns.get_or(IdleList::default);
        idle.put(conn, self.timeout);
        if !idle.swept.replace(true) {
            self.spawn_sweeper();
        }
    }

    pub fn put_sender(&self, sender: SendRequest<B>) {
        // hyper's connection task closes its socket itself when the upstream does.
        if !sender.is_closed() {
            self.senders.get_or(IdleList::default).put(sender, self.timeout);
        }
    }

    /// Sweeps this thread's idle connections every `SWEEP_EVERY` for as long as the pool lives.
    /// Worker runtimes are current-thread, so the task runs on the thread that owns the list.
    fn spawn_sweeper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(idle) = pool.upgrade() else { return };
                if let Some(list) = idle.conns.get() {
                    list.sweep(idle.timeout, Conn::is_reusable);
                }
            }
        });
    }
}
