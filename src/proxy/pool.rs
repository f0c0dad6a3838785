//! Upstream connection pool: HTTP/1.1 keep-alive connections to one authority.
//!
//! Most requests carry no body (or one tokengate made): they go out on tokengate's own client
//! connection (`h1`), driven inside the downstream connection's task. A request whose body is
//! still streaming in from the client goes through `hyper::client::conn::http1`, which sends
//! the body while the response arrives. Each thread keeps its own idle lists (no lock on the
//! hot path, and a socket stays with the runtime it is registered with); a connection goes
//! back to its list once its response body has ended.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;

use crate::body::{PooledBody, UpstreamBody};
use crate::config::HttpUrl;
use crate::shelf::Shelf;
use crate::tls::TlsClient;
use crate::upstream::conn::{encode_request, Conn, ExchangeError};
use crate::upstream::idle::Idle;
use crate::upstream::io::UpstreamIo;
use crate::wire::response::{self, HeadError, ResponseHead};

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {addr}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    /// An unknown issuer, a name that does not match, no common protocol version…
    #[error("TLS with {addr} failed")]
    Tls { addr: String, source: std::io::Error },
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
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout(_) | Self::Tls { .. })
    }
}

/// A pool of connections to one upstream authority. Cheap to clone; kept across reloads on
/// the process's shelf under its `PoolKey`.
#[derive(Clone)]
pub struct Pool {
    /// `host:port`, resolved on each new connection.
    addr: Arc<str>,
    connect_timeout: Duration,
    /// For `https://`: the TLS client its connections are made with.
    tls: Option<Arc<TlsClient>>,
    idle: Arc<Idle<UpstreamBody>>,
}

/// What makes two pools the same: a new config with the same upstream keeps the idle
/// connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// `TlsClient::identity` for TLS connections (the host checked, the CA file's digest).
    pub tls: Option<String>,
}

impl PoolKey {
    /// The key of a pool to `url`, TLS when it is `https://` (`tls` then says how).
    pub fn new(url: &HttpUrl, connect_timeout: Duration, idle_timeout: Duration, tls: Option<&TlsClient>) -> Self {
        let tls = tls.map(|t| t.identity.clone());
        Self { addr: url.addr().to_owned(), connect_timeout, idle_timeout, tls }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.addr)
    }
}

impl Pool {
    /// A new, empty pool; `addr` is `host:port`.
    pub fn new(key: &PoolKey, tls: Option<TlsClient>) -> Self {
        Self {
            addr: key.addr.as_str().into(),
            connect_timeout: key.connect_timeout,
            tls: tls.map(Arc::new),
            idle: Arc::new(Idle::new(key.idle_timeout)),
        }
    }

    /// The pool for `key` from the shelf: the one in service, or a new one (with `tls`).
    pub fn shared(pools: &Shelf<PoolKey, Pool>, key: PoolKey, tls: Option<TlsClient>) -> Self {
        let make = || Pool::new(&key, tls);
        pools.take(key.clone(), make)
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
        // No deadline of its own: `Proxy::forward` times the whole send.
        let (head, body) = self.exchange(req.method(), None, |dst| encode_request(&req, &body, dst)).await?;
        // One slot for the request id the response gets.
        let resp = head.to_response(1).map_err(ExchangeError::Head)?;
        Ok(resp.map(|()| body))
    }

    /// Sends the request `encode` writes on tokengate's own client connection, an idle one or
    /// a new one, and reads the response head; the body reads from the connection. A reused
    /// connection that closes before any answer is retried on another when the method is
    /// idempotent (RFC 9110 §9.2.2), so `encode` may run twice. With a `deadline`, no head by
    /// then (connecting included) is `ExchangeError::TimedOut`.
    pub async fn exchange(
        &self,
        method: &Method,
        deadline: Option<Instant>,
        encode: impl Fn(&mut BytesMut),
    ) -> Result<(Box<ResponseHead>, PooledBody), PoolError> {
        loop {
            let idle = self.idle.take_conn();
            let reused = idle.is_some();
            let mut conn = match idle {
                Some(conn) => conn,
                // Boxed: rare, and its future (name resolution, timer) would enlarge every request's.
                None => Conn::new(Box::pin(self.connect_by(deadline)).await?),
            };
            match conn.exchange(method, deadline, &encode).await {
                Ok(head) => {
                    let body = PooledBody::own(conn, &head, self.idle.clone());
                    return Ok((head, body));
                }
                Err(f) if f.may_retry(reused, method) => continue,
                Err(f) => return Err(f.error.into()),
            }
        }
    }

    /// `connect`, by `deadline` if there is one.
    async fn connect_by(&self, deadline: Option<Instant>) -> Result<UpstreamIo, PoolError> {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.connect())
                .await
                .unwrap_or(Err(PoolError::Exchange(ExchangeError::TimedOut))),
            None => self.connect().await,
        }
    }

    /// A request whose body is still streaming in, through hyper's client connection.
    async fn send_streamed(&self, mut req: Request<UpstreamBody>) -> Result<Response<PooledBody>, PoolError> {
        loop {
            let idle = self.idle.take_sender();
            let reused = idle.is_some();
            let mut sender = match idle {
                Some(sender) => sender,
                None => self.handshake().await?,
            };
            if let Err(closed) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(PoolError::Request(closed));
            }
            match sender.try_send_request(req).await {
                Ok(resp) if !response::is_valid_status(resp.status().as_u16()) => {
                    // hyper reads 600-999 too; the connection is not reused.
                    let code = resp.status().as_u16();
                    return Err(PoolError::Exchange(ExchangeError::Head(HeadError::Status(code))));
                }
                Ok(resp) => {
                    // After 101 the connection belongs to the tunnel, never to the pool.
                    let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| (sender, self.idle.clone()));
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

/// A request builder for `url` on a pooled connection: origin-form target and `Host`, as
/// RFC 9112 §3.2 asks of a client talking to the origin.
pub fn origin_request(method: http::Method, url: &HttpUrl) -> http::request::Builder {
    Request::builder().method(method).uri(url.target()).header(http::header::HOST, url.host())
}

impl Pool {
    /// A new connection: TCP, and the TLS handshake for `https://`, within `connect_timeout`.
    async fn connect(&self) -> Result<UpstreamIo, PoolError> {
        let connected = async {
            let stream = TcpStream::connect(&*self.addr)
                .await
                .map_err(|source| PoolError::Connect { addr: self.addr.to_string(), source })?;
            let _ = stream.set_nodelay(true);
            let Some(tls) = &self.tls else { return Ok(UpstreamIo::Plain(stream)) };
            let secured = tls.connector.connect(tls.server_name.clone(), stream).await;
            let stream = secured.map_err(|source| PoolError::Tls { addr: self.addr.to_string(), source })?;
            Ok(UpstreamIo::Tls(Box::new(stream)))
        };
        match tokio::time::timeout(self.connect_timeout, connected).await {
            Ok(result) => result,
            Err(_) => Err(PoolError::ConnectTimeout(self.addr.to_string())),
        }
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

impl From<PoolError> for crate::error::Error {
    /// Classifies a client error from the upstream pool: connecting, or the exchange after.
    fn from(err: PoolError) -> Self {
        if err.is_connect() {
            Self::UpstreamConnect(Box::new(err))
        } else {
            Self::UpstreamProtocol(Box::new(err))
        }
    }
}
