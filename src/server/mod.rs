//! Accept loop: connection cap, optional TLS, HTTP/1.1 and HTTP/2 (h2c prior knowledge or
//! ALPN), upgrades, and graceful shutdown. Body-less HTTP/1.1 requests are served by `h1`;
//! hyper takes over a connection for everything else.

mod h1;
mod prefixed;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::body::{Body, RequestBody};
use crate::proxy::relay::Relayed;
use crate::proxy::ConnInfo;
use crate::wire::request::RequestHead;
use prefixed::Prefixed;

/// What a listener runs for each request.
pub trait Service: Clone + Send + Sync + 'static {
    /// Answers `req`; every failure is a response by then.
    fn call(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + use<Self>;

    /// For a body-less HTTP/1.1 request still as bytes: a future that answers it from its head
    /// (forwarded traffic), or None to have it served by `call`.
    fn relay<'a>(
        &'a self,
        _head: &'a RequestHead,
        _conn: &'a ConnInfo,
    ) -> Option<impl Future<Output = Reply> + Send + 'a> {
        None::<std::future::Ready<Reply>>
    }
}

/// Any request handler function is a service that relays nothing.
impl<H, F> Service for H
where
    H: Fn(Request<RequestBody>, ConnInfo) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
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
    Relayed(Box<Relayed>),
}

/// How a listener treats new connections. Part of the compiled config: a reload swaps it, and
/// each connection reads it once, when accepted (open connections keep theirs).
pub struct ConnSettings {
    /// Larger request header blocks get 431 (HTTP/1.1) or a stream reset (HTTP/2).
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers (and to finish a TLS handshake).
    pub header_read_timeout: Duration,
    /// Open connections, all worker threads together; beyond it new ones wait (one per
    /// worker thread accepted, the rest in the kernel's accept queue).
    pub max_connections: usize,
    pub tls: Option<TlsAcceptor>,
    /// hyper's server for the connections `h1` hands over, configured from the above.
    builder: auto::Builder<TokioExecutor>,
}

impl ConnSettings {
    pub fn new(
        max_header_bytes: usize,
        header_read_timeout: Duration,
        max_connections: usize,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
        Self { max_header_bytes, header_read_timeout, max_connections, tls, builder }
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
    async fn acquire(self: &Arc<Self>, limit: impl Fn() -> usize) -> Slot {
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
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.0.gauge {
            g.dec();
        }
        self.0.freed.notify_one();
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
    let graceful = GracefulShutdown::new();
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
            slot = slots.acquire(|| settings.current().max_connections) => slot,
        };
        let _ = stream.set_nodelay(true);
        // Read once per connection: a reload applies to the connections accepted after it.
        let settings = settings.current();
        let (service, watcher, stop) = (service.clone(), graceful.watcher(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let tls = settings.tls.clone();
            let handshake_timeout = settings.header_read_timeout;
            let conn = Conn { settings, service, watcher, stop };
            match tls {
                None => conn.serve(stream, ConnInfo::new(peer, false), false).await,
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        conn.serve(tls_stream, ConnInfo::new(peer, true), h2).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// What serving one connection needs.
struct Conn<S> {
    settings: Arc<ConnSettings>,
    service: S,
    watcher: Watcher,
    stop: CancellationToken,
}

impl<S: Service> Conn<S> {
    /// HTTP/1.1 on the fast path until a request needs hyper; HTTP/2 (`h2`: ALPN said so) on
    /// hyper from the start.
    async fn serve<I>(self, io: I, info: ConnInfo, h2: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = if h2 {
            Prefixed::new(Bytes::new(), io)
        } else {
            let (max, timeout) = (self.settings.max_header_bytes, self.settings.header_read_timeout);
            match h1::serve(io, &info, &self.service, max, timeout, &self.stop).await {
                h1::Outcome::Closed => return,
                h1::Outcome::Handoff(io, read) => Prefixed::new(read, io),
            }
        };
        let inner = self.service;
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = inner.call(req.map(Either::Left), info.clone());
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = self.settings.builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        if let Err(e) = self.watcher.watch(connection).await {
            tracing::debug!(error = %e, "connection closed with error");
        }
    }
}
