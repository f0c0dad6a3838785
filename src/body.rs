//! Body types, without boxing: what tokengate answers (`Body`), what it reads from clients
//! (`RequestBody`) and what it sends upstream (`UpstreamBody`). Each is a streamed body passed
//! through untouched, or a small buffered one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// An upstream response body: streamed from the pooled connection it arrives on.
pub type PooledBody = crate::upstream::pooled_body::PooledBody<UpstreamBody>;

/// A response: an upstream body streamed through, or one made by tokengate.
pub type Body = Either<PooledBody, Full<Bytes>>;

/// A request's body as the handlers see it: a client's streamed body (HTTP/2, or an HTTP/1.1
/// request hyper serves), or one already whole (an HTTP/1.1 request `server::h1` serves: none,
/// or a small body that came with its head).
pub type RequestBody = Either<ClientBody, Full<Bytes>>;

/// A request to the upstream: the client's body streamed through, or one made by tokengate.
pub type UpstreamBody = Either<ClientBody, Full<Bytes>>;

/// A buffered body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    Either::Right(Full::new(Bytes::new()))
}

/// How a client's body failed: the client's fault, never the upstream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// No byte for `limits.request_body_timeout`.
    Timeout,
    /// Malformed (a bad chunk size) or cut short (the client closed mid-body).
    Broken,
}

/// Why a client's body stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("no request body byte for {0:?}")]
    Timeout(Duration),
    #[error("the request body broke off")]
    Broken(#[source] hyper::Error),
}

/// Where a body records its fault, for whoever sent it on (the upstream exchange fails too,
/// and must not be blamed on the upstream).
pub type FaultRecord = Arc<OnceLock<ClientFault>>;

/// What may go on of a client's trailer fields: set by whoever forwards the body.
pub type TrailerFilter = Arc<dyn Fn(&mut http::HeaderMap) + Send + Sync>;

/// A client's request body with a time limit between its frames.
pub struct ClientBody {
    inner: Incoming,
    timeout: Duration,
    /// Armed when the body first waits; reset by each frame.
    wait: Option<Pin<Box<Sleep>>>,
    fault: FaultRecord,
    trailers: Option<TrailerFilter>,
}

impl ClientBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        Self { inner, timeout, wait: None, fault: FaultRecord::default(), trailers: None }
    }

    /// The body with its trailer fields passed through `filter`.
    pub fn with_trailer_filter(mut self, filter: TrailerFilter) -> Self {
        self.trailers = Some(filter);
        self
    }

    /// Where this body records how it failed.
    pub fn fault(&self) -> FaultRecord {
        self.fault.clone()
    }

    fn failed(&self, fault: ClientFault) {
        let _ = self.fault.set(fault);
    }
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientBody")
    }
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let timeout = self.timeout;
                if let Some(wait) = self.wait.as_mut() {
                    wait.as_mut().reset(Instant::now() + timeout);
                }
                let frame = match (&self.trailers, frame.into_trailers()) {
                    (Some(filter), Ok(mut trailers)) => {
                        filter(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    (None, Ok(trailers)) => Frame::trailers(trailers),
                    (_, Err(data)) => data,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.failed(ClientFault::Broken);
                Poll::Ready(Some(Err(ClientBodyError::Broken(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = self.timeout;
                let wait = self.wait.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.failed(ClientFault::Timeout);
                Poll::Ready(Some(Err(ClientBodyError::Timeout(timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
