//! Body types, without boxing: what tokengate answers (`Body`) and what it sends upstream
//! (`UpstreamBody`). Each is a streamed body passed through untouched, or a small buffered one.

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;

pub use crate::proxy::pooled_body::PooledBody;

/// A response: an upstream body streamed through, or one made by tokengate.
pub type Body = Either<PooledBody, Full<Bytes>>;

/// A request's body as the handlers see it: hyper's (HTTP/2, or a request with a body), or none
/// (a body-less HTTP/1.1 request served by `server::h1`).
pub type RequestBody = Either<Incoming, Empty<Bytes>>;

/// A request to the upstream: the client's body streamed through, or one made by tokengate.
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

/// A buffered body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    Either::Right(Full::new(Bytes::new()))
}
