//! One connection, from the TLS handshake to its close: HTTP/1.1 on the fast path (`h1`) until a
//! request needs hyper, then hyper's HTTP/1.1 or HTTP/2 for the rest of its life. Here the
//! connection's lifetime is decided: closed after `limits.idle_timeout` without a request in
//! flight (HTTP/2: GOAWAY first), and on shutdown told to finish (HTTP/1.1: `Connection:
//! close`; HTTP/2: GOAWAY at once), then dropped once nothing is in flight, so a client that
//! never answers the GOAWAY's PING cannot hold the shutdown for the whole grace.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use super::prefixed::Prefixed;
use super::slots::Slot;
use super::stop::Stop;
use super::{h1, ClientIo, ConnSettings, Service};
use crate::body::{Body, ClientBody};
use crate::conn_info::ConnInfo;

/// After a GOAWAY (or `Connection: close`) with nothing in flight, how long a client has to
/// close before the connection is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What serving one connection needs, and its place among the open ones (given back when it
/// closes).
pub(super) struct Conn<S> {
    pub settings: Arc<ConnSettings>,
    pub service: S,
    pub stop: Stop,
    pub _slot: Slot,
}

impl<S: Service> Conn<S> {
    /// HTTP/1.1 on the fast path until a request needs hyper; HTTP/2 (`h2`: ALPN said so) on
    /// hyper from the start.
    ///
    /// An `async move` block rather than an `async fn`: an async fn's future keeps its
    /// arguments twice (as passed, and as the locals the body moves them into), and this
    /// future is most of every idle connection's task (see the test below).
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn serve<I: ClientIo>(self, mut io: I, info: ConnInfo, h2: bool) -> impl Future<Output = ()> + Send {
        async move {
            let read = if h2 {
                Bytes::new()
            } else {
                match h1::serve(&mut io, &info, &self.service, &self.settings.limits, &self.stop).await {
                    h1::Outcome::Closed => return,
                    h1::Outcome::Handoff(read) => read,
                }
            };
            // Boxed: hyper's connection state is several KiB, and every connection's task would
            // carry it inline, idle fast-path ones too; only the connections handed over need it.
            // Boxed in a statement of its own: a temporary lives to the end of its statement, and
            // one alive across the await would put the unboxed state back into the task.
            let hyper = Box::pin(self.serve_hyper(Prefixed::new(read, io), info));
            hyper.await;
        }
    }

    /// The TLS handshake (within `timeout`), then `serve`.
    pub async fn serve_tls(self, acceptor: TlsAcceptor, stream: TcpStream, peer: SocketAddr, timeout: Duration) {
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls_stream)) => {
                let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                self.serve(tls_stream, ConnInfo::new(peer, true), h2).await
            }
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// The rest of the connection's life, on hyper.
    async fn serve_hyper<I: ClientIo>(self, io: Prefixed<I>, info: ConnInfo) {
        let active = Arc::new(InFlight::default());
        let (inner, in_flight, body_timeout) =
            (self.service, active.clone(), self.settings.limits.request_body_timeout);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = in_flight.begin();
            let head_h2 = req.method() == http::Method::HEAD && req.version() == http::Version::HTTP_2;
            let req = req.map(|body| Either::Left(ClientBody::new(body, body_timeout)));
            let response = inner.call(req, info.clone());
            async move {
                let mut response = response.await;
                if head_h2 {
                    without_content(&mut response);
                }
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _guard: guard }))
            }
        });
        let connection = self.settings.builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut connection = pin!(connection.into_owned());
        let mut closing = false;
        loop {
            let quiet = if closing { CLOSE_LINGER } else { self.settings.limits.idle_timeout };
            tokio::select! {
                done = connection.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "connection closed with error");
                    }
                    return;
                }
                _ = self.stop.stopped(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = active.quiet_for(quiet) => {
                    if closing {
                        // Told to close, nothing in flight, still open: drop it.
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Requests in flight on one connection: from the call of the service until the response body
/// has been sent (or dropped).
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    changed: Notify,
}

impl InFlight {
    fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        InFlightGuard(self.clone())
    }

    /// Resolves once nothing has been in flight for `quiet`.
    async fn quiet_for(&self, quiet: Duration) {
        loop {
            let changed = self.changed.notified();
            let mut changed = pin!(changed);
            changed.as_mut().enable();
            if self.count.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(quiet) => return,
                _ = changed => {}
            }
        }
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in flight until it is done.
/// RFC 9110 §9.3.2: the answer to HEAD carries no content, but says how long it would be.
/// hyper's HTTP/1.1 server drops the body itself; its HTTP/2 server sends it, and clients reset
/// the stream. Forwarded answers to HEAD have none already; tokengate's own (token routes, the
/// JWK set, the admin endpoints) lose theirs here, keeping `Content-Length`.
fn without_content(response: &mut http::Response<Body>) {
    let Either::Right(own) = response.body() else { return };
    let length = own.size_hint().exact();
    if let (Some(n), false) = (length, response.headers().contains_key(http::header::CONTENT_LENGTH)) {
        response.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    *response.body_mut() = crate::body::empty();
}

struct Tracked {
    body: Body,
    _guard: InFlightGuard,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Future, Ready};

    use http::{Request, Response};
    use tokio::net::TcpStream;

    use super::Conn;
    use crate::body::{Body, RequestBody};
    use crate::conn_info::ConnInfo;

    type Handler = fn(Request<RequestBody>, ConnInfo) -> Ready<Response<Body>>;

    fn returned_size<A, B, C, D, F: Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle HTTP/1.1 connection is its task and little else, and tokio's task cell is
    /// aligned to 128 bytes: with the cell's header, scheduler and trailer (~112 bytes) a
    /// future up to ~400 bytes makes a 512-byte cell, which the allocator serves from its
    /// 512-byte class; more costs a 768-byte cell, served as 1 KiB. It is 360 bytes in a
    /// release build (80 of them `ConnInfo`, inline), 368 in a test build; it was 576 in
    /// release with the IO held twice, and 880 in a test build with a parsed `Step` alive
    /// across the wait for bytes.
    #[test]
    fn an_idle_connections_future_fits_a_512_byte_task() {
        let size =
            returned_size(Conn::<Handler>::serve::<TcpStream> as fn(Conn<Handler>, TcpStream, ConnInfo, bool) -> _);
        assert!(size <= 400, "a connection's future is {size} bytes");
    }
}
