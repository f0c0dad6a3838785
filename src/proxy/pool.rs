//! Upstream connection pool: HTTP/1.1 keep-alive connections to one authority.
//!
//! Built on `hyper::client::conn::http1` rather than `hyper_util`'s legacy client, whose
//! pool-wide mutex, hashed pool key and one spawned task per request to re-pool the connection
//! cost more CPU than the forwarding itself. Here each thread keeps its own idle list (no lock
//! on the hot path), and a connection goes back to the list when its response body has ended.
//! A request is retried on another connection only when hyper hands it back unsent.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use thread_local::ThreadLocal;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;

/// Idle connections kept per thread; the oldest go first.
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
}

impl PoolError {
    /// True when no connection could be made (the upstream is unreachable).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout(_))
    }
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

struct Inner {
    /// `host:port`, resolved on each new connection.
    addr: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    idle: ThreadLocal<RefCell<VecDeque<Idle>>>,
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
        Self { inner: Arc::new(Inner { addr, connect_timeout, idle_timeout, idle: ThreadLocal::new() }) }
    }

    /// Sends `req` on an idle connection, or a new one.
    pub async fn send(&self, mut req: Request<UpstreamBody>) -> Result<Response<PooledBody>, PoolError> {
        loop {
            let (mut sender, reused) = match self.inner.take_idle() {
                Some(sender) => (sender, true),
                None => (self.inner.connect().await?, false),
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
                    return Ok(resp.map(|inner| PooledBody { inner, back }));
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
    fn take_idle(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut list = self.idle.get_or(RefCell::default).borrow_mut();
        while let Some(idle) = list.pop_back() {
            if !idle.sender.is_closed() && idle.since.elapsed() < self.idle_timeout {
                return Some(idle.sender);
            }
        }
        None
    }

    fn put_back(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut list = self.idle.get_or(RefCell::default).borrow_mut();
        while list.front().is_some_and(|i| now.duration_since(i.since) >= self.idle_timeout || i.sender.is_closed()) {
            list.pop_front();
        }
        if list.len() >= MAX_IDLE_PER_THREAD {
            list.pop_front();
        }
        list.push_back(Idle { sender, since: now });
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, PoolError> {
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(PoolError::Connect { addr: self.addr.clone(), source }),
            Err(_) => return Err(PoolError::ConnectTimeout(self.addr.clone())),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection closed with error");
            }
        });
        Ok(sender)
    }
}

/// An upstream response body; its connection returns to the pool once the body has ended.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(SendRequest<UpstreamBody>, Arc<Inner>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PooledBody")
    }
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.put_back(sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.give_back();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Only a fully read body leaves the connection reusable; otherwise hyper closes it.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}
