//! What a connection knows about where its requests come from, filled in once when it is
//! accepted and read by everything that serves them.

use std::net::SocketAddr;

use http::header::HeaderValue;

/// What the connection knows about a request's origin.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's IP as a header value, formatted once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        // An IP address in text is always a valid field value.
        let peer_ip = HeaderValue::try_from(peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        Self { peer, tls, peer_ip }
    }
}
