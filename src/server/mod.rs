//! Accept loop: connection cap, optional TLS, HTTP/1.1 and HTTP/2 (h2c prior knowledge or
//! ALPN), upgrades, and graceful shutdown. Body-less HTTP/1.1 requests are served by `h1`;
//! hyper takes over a connection for everything else.

mod conn;
mod h1;
mod prefixed;
mod slots;
mod splice;
mod stop;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Refusal;
use crate::body::{Body, RequestBody};
use crate::conn_info::ConnInfo;
use crate::proxy::relay::Relayed;
use crate::wire::request::RequestHead;
use conn::Conn;
pub use slots::Slots;
use stop::Stop;

/// What a listener runs for each request.
pub trait Service: Clone + Send + Sync + 'static {
    /// Answers `req`; every failure is a response by then.
    fn call(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + use<Self>;

    /// `call` for a request whose head `admission::check_head` passed as the fast path read
    /// it: the same answer, without checking the request again.
    fn call_checked(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + use<Self> {
        self.call(req, conn)
    }

    /// Counts `bytes` of a relayed body that went by splice(2) (`splice`).
    fn spliced(&self, bytes: u64) {
        let _ = bytes;
    }

    /// The answer to a request `admission` refused as the fast path read it (the connection
    /// closes after it).
    fn refuse(&self, method: &http::Method, refusal: Refusal) -> Response<Body> {
        let _ = method;
        crate::error::rescue(&crate::error::Error::Refused(refusal))
    }

    /// What `fast` reads its config from, taken once for each request the fast path reads (a
    /// reload applies to the requests after it).
    type Snapshot: Send + Sync;

    fn snapshot(&self) -> Self::Snapshot;

    /// For an HTTP/1.1 request still as bytes, with all of its `body` (often none): a future
    /// that answers it from its head, or None to have it served by `call`.
    fn fast<'a>(
        &'a self,
        _snapshot: &'a Self::Snapshot,
        _head: &'a RequestHead,
        _body: &'a Bytes,
        _conn: &'a ConnInfo,
    ) -> Option<impl Future<Output = Reply> + Send + 'a> {
        None::<std::future::Ready<Reply>>
    }
}

/// A client connection's transport: TCP, or TLS over it.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo for T {}

/// Any request handler function is a service that relays nothing.
impl<H, F> Service for H
where
    H: Fn(Request<RequestBody>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    type Snapshot = ();

    fn snapshot(&self) {}

    fn call(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + use<H, F> {
        self(req, conn)
    }
}

/// An answer to an HTTP/1.1 request on the fast path.
// The relayed head is boxed where it is made; a `Response` is moved out again at once.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Response(Response<Body>),
    /// An upstream's response relayed from its head's bytes.
    Relayed(Relayed),
}

/// How a listener treats new connections. Part of the compiled config: a reload swaps it, and
/// each connection reads it once, when accepted (open connections keep theirs).
pub struct ConnSettings {
    pub limits: ConnLimits,
    pub tls: Option<TlsAcceptor>,
    /// hyper's server for the connections `h1` hands over, configured from `limits`.
    builder: auto::Builder<TokioExecutor>,
}

/// What a connection may take.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Larger request header blocks get 431 (HTTP/1.1) or a stream reset (HTTP/2).
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers (and to finish a TLS handshake).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with nothing in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Longest wait for the next byte of a request body.
    pub request_body_timeout: Duration,
    /// Open connections, all worker threads together; beyond it new ones wait (one per
    /// worker thread accepted, the rest in the kernel's accept queue).
    pub max_connections: usize,
}

impl ConnSettings {
    pub fn new(limits: ConnLimits, tls: Option<TlsAcceptor>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Self { limits, tls, builder }
    }
}

/// Where a listener reads its current settings from.
pub trait Settings: Send + Sync + 'static {
    fn current(&self) -> Arc<ConnSettings>;
}

/// Settings that never change (the demo's backend).
impl Settings for Arc<ConnSettings> {
    fn current(&self) -> Arc<ConnSettings> {
        self.clone()
    }
}

/// Serves `listener` until `stop` fires, then stops accepting and lets open connections finish
/// their in-flight requests. Returns once every connection has closed.
pub async fn serve<S: Service>(
    listener: TcpListener,
    settings: impl Settings,
    slots: Arc<Slots>,
    service: S,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    // What the connections read: `stop` itself takes two mutexes shared by every worker.
    let conn_stop = Stop::default();
    loop {
        // Accept, then wait for a slot: a thread waiting in `accept` with a slot taken would
        // keep it from the threads that have connections to serve. Each thread holds at most
        // one accepted connection beyond the limit; the rest wait in the kernel's queue.
        let (stream, peer) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            slot = slots.acquire(|| settings.current().limits.max_connections) => slot,
        };
        let _ = stream.set_nodelay(true);
        // Read once per connection: a reload applies to the connections accepted after it.
        let settings = settings.current();
        let (service, stop) = (service.clone(), conn_stop.clone());
        let tls = settings.tls.clone();
        let handshake_timeout = settings.limits.header_read_timeout;
        // The connection's future is spawned as it is, with nothing around it: a wrapping
        // async block would keep its captures (the stream, the peer) for the connection's
        // whole life, in every idle connection's task.
        let conn = Conn { settings, service, stop, _slot: slot };
        match tls {
            None => {
                connections.spawn(conn.serve(stream, ConnInfo::new(peer, false), false));
            }
            // Boxed: a TLS connection's state is several KiB that a plain one should not
            // carry inline in its task.
            Some(acceptor) => {
                connections.spawn(Box::pin(conn.serve_tls(acceptor, stream, peer, handshake_timeout)));
            }
        }
    }
    drop(listener);
    conn_stop.trip();
    connections.close();
    connections.wait().await;
}
