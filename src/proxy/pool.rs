//! Upstream connection pool: HTTP/1.1 keep-alive connections to one authority.
//!
//! Most requests carry no body (or one tokengate made): they go out on tokengate's own client
//! connection (`h1`), driven inside the downstream connection's task. A request whose body is
//! still streaming in from the client goes through `hyper::client::conn::http1`, which sends
//! the body while the response arrives. Each thread keeps its own idle lists (no lock on the
//! hot path, and a socket stays with the runtime it is registered with); a connection goes
//! back to its list once its response body has ended.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use thread_local::ThreadLocal;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::h1::{encode_request, Conn, ExchangeError};
use super::pooled_body::PooledBody;
use crate::body::UpstreamBody;
use crate::wire::response::ResponseHead;

/// Idle connections kept per thread and kind; the oldest go first.
const MAX_IDLE_PER_THREAD: usize = 512;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {addr}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("HTTP/1.1 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("request failed")]
    Request(#[source] hyper::Error),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
}

impl PoolError {
    /// True when no connection could be made (the upstream is unreachable).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout(_))
    }
}

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

pub(super) struct Inner {
    /// `host:port`, resolved on each new connection.
    addr: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    conns: ThreadLocal<IdleList<Conn>>,
    senders: ThreadLocal<IdleList<SendRequest<UpstreamBody>>>,
}

/// A pool of connections to one upstream authority. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.inner.addr)
    }
}

impl Pool {
    /// `addr` is `host:port`.
    pub fn new(addr: String, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let (conns, senders) = (ThreadLocal::new(), ThreadLocal::new());
        Self { inner: Arc::new(Inner { addr, connect_timeout, idle_timeout, conns, senders }) }
    }

    /// Sends `req` on an idle connection, or a new one.
    ///
    /// Not an `async fn`: each layer of async state machine would store the request again, and
    /// every forwarded request's future is moved around at the size of its largest branch. The
    /// streamed branch is boxed for the same reason (hyper's client futures are large).
    pub fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<PooledBody>, PoolError>> + Send + '_ {
        let (parts, body) = req.into_parts();
        match buffered(body) {
            Ok(bytes) => Either::Left(self.send_buffered(Request::from_parts(parts, ()), bytes)),
            Err(body) => Either::Right(Box::pin(self.send_streamed(Request::from_parts(parts, body)))),
        }
    }

    /// A request whose whole body is `body`, on tokengate's own client connection.
    async fn send_buffered(&self, req: Request<()>, body: Bytes) -> Result<Response<PooledBody>, PoolError> {
        let (head, body) = self.exchange(req.method(), |dst| encode_request(&req, &body, dst)).await?;
        // One slot for the request id the response gets.
        let resp = head.to_response(1).map_err(ExchangeError::Head)?;
        Ok(resp.map(|()| body))
    }

    /// Sends the request `encode` writes on tokengate's own client connection, an idle one or
    /// a new one, and reads the response head; the body reads from the connection. A reused
    /// connection that closes before any answer is retried on another when the method is
    /// idempotent (RFC 9110 §9.2.2), so `encode` may run twice.
    pub async fn exchange(
        &self,
        method: &Method,
        encode: impl Fn(&mut BytesMut),
    ) -> Result<(ResponseHead, PooledBody), PoolError> {
        loop {
            let idle = self.inner.conns.get_or(IdleList::default).take(self.inner.idle_timeout, Conn::is_reusable);
            let reused = idle.is_some();
            let mut conn = match idle {
                Some(conn) => conn,
                // Boxed: rare, and its future (name resolution, timer) would enlarge every request's.
                None => Conn::new(Box::pin(self.inner.connect()).await?),
            };
            match conn.exchange(method, &encode).await {
                Ok(head) => {
                    let body = PooledBody::own(conn, &head, self.inner.clone());
                    return Ok((head, body));
                }
                Err(f) if reused && !f.answered && method.is_idempotent() => continue,
                Err(f) => return Err(f.error.into()),
            }
        }
    }

    /// A request whose body is still streaming in, through hyper's client connection.
    async fn send_streamed(&self, mut req: Request<UpstreamBody>) -> Result<Response<PooledBody>, PoolError> {
        loop {
            let idle = self.inner.senders.get_or(IdleList::default).take(self.inner.idle_timeout, |s| !s.is_closed());
            let reused = idle.is_some();
            let mut sender = match idle {
                Some(sender) => sender,
                None => self.inner.handshake().await?,
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(PoolError::Request(hyper_closed(&mut sender).await));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // After 101 the connection belongs to the tunnel, never to the pool.
                    let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| (sender, self.inner.clone()));
                    return Ok(resp.map(|inner| PooledBody::hyper(inner, back)));
                }
                Err(mut e) => match e.take_message() {
                    // The upstream closed an idle connection under us: the request never left.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(PoolError::Request(e.into_error())),
                },
            }
        }
    }
}

/// The body's bytes when they are all in hand: none left to read, or a body tokengate made.
fn buffered(body: UpstreamBody) -> Result<Bytes, UpstreamBody> {
    match body {
        http_body_util::Either::Left(incoming) if incoming.is_end_stream() => Ok(Bytes::new()),
        http_body_util::Either::Left(incoming) => Err(http_body_util::Either::Left(incoming)),
        http_body_util::Either::Right(mut full) => {
            // `Full` is ready at once: its only frame, then the end.
            match Pin::new(&mut full).poll_frame(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Some(Ok(frame))) => Ok(frame.into_data().unwrap_or_default()),
                _ => Ok(Bytes::new()),
            }
        }
    }
}

/// A request builder for `uri` on a pooled connection: origin-form target and `Host`, as
/// RFC 9112 §3.2 asks of a client talking to the origin.
pub fn origin_request(method: http::Method, uri: &http::Uri) -> http::request::Builder {
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let host = uri.authority().map(|a| a.as_str()).unwrap_or("localhost");
    Request::builder().method(method).uri(target).header(http::header::HOST, host)
}

/// The error of a connection that closed before its first request.
async fn hyper_closed(sender: &mut SendRequest<UpstreamBody>) -> hyper::Error {
    match sender.ready().await {
        Err(e) => e,
        Ok(()) => unreachable!("ready() failed a moment ago"),
    }
}

impl Inner {
    pub(super) fn put_conn(self: &Arc<Self>, conn: Conn) {
        let idle = self.conns.get_or(IdleList::default);
        idle.put(conn, self.idle_timeout);
        if !idle.swept.replace(true) {
            self.spawn_sweeper();
        }
    }

    pub(super) fn put_sender(&self, sender: SendRequest<UpstreamBody>) {
        // hyper's connection task closes its socket itself when the upstream does.
        if !sender.is_closed() {
            self.senders.get_or(IdleList::default).put(sender, self.idle_timeout);
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
                let Some(inner) = pool.upgrade() else { return };
                if let Some(idle) = inner.conns.get() {
                    idle.sweep(inner.idle_timeout, Conn::is_reusable);
                }
            }
        });
    }

    async fn connect(&self) -> Result<TcpStream, PoolError> {
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(PoolError::Connect { addr: self.addr.clone(), source }),
            Err(_) => return Err(PoolError::ConnectTimeout(self.addr.clone())),
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn handshake(&self) -> Result<SendRequest<UpstreamBody>, PoolError> {
        let stream = self.connect().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection closed with error");
            }
        });
        Ok(sender)
    }
}
