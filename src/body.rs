//! The one body type every response and upstream request uses: a streamed hyper body or a
//! small buffered one, without boxing.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// A streamed body (passed through untouched) or a buffered one (made by tokengate).
pub type Body = Either<Incoming, Full<Bytes>>;

/// A buffered body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    Either::Right(Full::new(Bytes::new()))
}
