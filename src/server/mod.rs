//! Accept loop: connection cap, optional TLS, HTTP/1.1 and HTTP/2 (h2c prior knowledge or
//! ALPN), upgrades, and graceful shutdown. Body-less HTTP/1.1 requests are served by `h1`;
//! hyper takes over a connection for everything else.

mod h1;
mod prefixed;

use std::convert::Infallible;
use std::future::Future;
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
use tokio::sync::Semaphore;
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

/// How one listener treats its connections.
pub struct ServeOptions {
    /// Larger request header blocks get 431 (HTTP/1.1) or a stream reset (HTTP/2).
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers (and to finish a TLS handshake).
    pub header_read_timeout: Duration,
    /// Connections beyond this wait in the kernel's accept queue.
    pub max_connections: usize,
    pub tls: Option<TlsAcceptor>,
    pub open_connections: Option<IntGauge>,
}

/// Serves `listener` until `stop` fires, then stops accepting and lets open connections finish
/// their in-flight requests. Returns once every connection has closed.
pub async fn serve<S: Service>(listener: TcpListener, opts: ServeOptions, service: S, stop: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(opts.max_connections));

    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
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
        let _ = stream.set_nodelay(true);
        let open = opts.open_connections.clone().map(OpenConnection::new);
        let (builder, service, watcher, tls) = (builder.clone(), service.clone(), graceful.watcher(), opts.tls.clone());
        let handshake_timeout = opts.header_read_timeout;
        let limits = Limits { max_header_bytes: opts.max_header_bytes, header_read_timeout: opts.header_read_timeout };
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = (permit, open);
            let conn = Conn { builder: &builder, service, watcher, limits, stop };
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

/// Limits that apply to each connection.
#[derive(Clone, Copy)]
struct Limits {
    max_header_bytes: usize,
    header_read_timeout: Duration,
}

/// What serving one connection needs.
struct Conn<'a, S> {
    builder: &'a auto::Builder<TokioExecutor>,
    service: S,
    watcher: Watcher,
    limits: Limits,
    stop: CancellationToken,
}

impl<S: Service> Conn<'_, S> {
    /// HTTP/1.1 on the fast path until a request needs hyper; HTTP/2 (`h2`: ALPN said so) on
    /// hyper from the start.
    async fn serve<I>(self, io: I, info: ConnInfo, h2: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = if h2 {
            Prefixed::new(Bytes::new(), io)
        } else {
            let (max, timeout) = (self.limits.max_header_bytes, self.limits.header_read_timeout);
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
        let connection = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        if let Err(e) = self.watcher.watch(connection).await {
            tracing::debug!(error = %e, "connection closed with error");
        }
    }
}

/// Counts an open connection in `tokengate_open_connections` for as long as it lives.
struct OpenConnection(IntGauge);

impl OpenConnection {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
