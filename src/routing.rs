//! Where a request on the public listener goes, decided once, by path: a token route, a
//! forward-auth entry, the JWK set, or the upstream (with or without `proxy_rate_limits`).
//! Both the byte relay and the `http`-types path ask this one function, so a new kind of route
//! cannot be relayed by mistake: the relay takes only `Destination::Proxy { limited: false }`.
//!
//! Routes match the normalized path (RFC 3986 §6.2.2, as Envoy's `normalize_path` and nginx's
//! `location` do): `/api/auth/%63hat-token`, `/api/auth/./chat-token` and
//! `/api/auth//chat-token` are the token route, never a way around it to a backend that would
//! serve them. Forwarded requests keep their bytes.

use std::borrow::Cow;

use crate::forward_auth::ForwardAuth;
use crate::gateway::Gateway;
use crate::metrics::RouteMetrics;
use crate::token::Route;

use crate::context::PROXY_ROUTE;
/// The `route` label of the public JWK set (`jwks_path`).
pub const JWKS_ROUTE: &str = "jwks";

/// Where one request goes.
#[derive(Debug)]
pub enum Destination<'g> {
    /// A token route, with the values its path pattern captured.
    Token(&'g Route, Vec<(String, String)>),
    /// A `forward_auth` entry: a decision for a proxy in front.
    ForwardAuth(&'g ForwardAuth),
    /// The public JWK set (`jwks_path`).
    Jwks,
    /// The upstream; `limited` when `proxy_rate_limits` apply first.
    Proxy { limited: bool },
}

impl<'g> Destination<'g> {
    /// The `route` label of metrics and the access log.
    pub fn label(&self) -> &'g str {
        match self {
            Self::Token(route, _) => route.name.as_str(),
            Self::ForwardAuth(entry) => entry.name.as_str(),
            Self::Jwks => JWKS_ROUTE,
            Self::Proxy { .. } => PROXY_ROUTE,
        }
    }

    /// The route's own series of `tokengate_requests_total` and its latency, resolved when the
    /// config was compiled; None where `Metrics` keeps them (`proxy`) or looks them up (`jwks`).
    pub fn metrics(&self) -> Option<&'g RouteMetrics> {
        match self {
            Self::Token(route, _) => Some(&route.metrics),
            Self::ForwardAuth(entry) => Some(entry.metrics()),
            Self::Jwks | Self::Proxy { .. } => None,
        }
    }
}

/// Where a request for `path` goes under `gateway`.
pub fn route<'g>(gateway: &'g Gateway, path: &str) -> Destination<'g> {
    let limited = !gateway.proxy_limits.is_empty();
    if gateway.routes.is_empty() && gateway.forward_auths.is_empty() && gateway.config.jwks_path.is_none() {
        // Nothing to match: a pure proxy need not look at the path at all.
        return Destination::Proxy { limited };
    }
    let path = normalize_path(path);
    if let Some((route, captures)) = gateway.routes.find(&path) {
        Destination::Token(route, captures)
    } else if let Some(entry) = gateway.forward_auths.find(&path) {
        Destination::ForwardAuth(entry)
    } else if gateway.config.jwks_path.as_deref() == Some(&*path) {
        Destination::Jwks
    } else {
        Destination::Proxy { limited }
    }
}

/// `path` as routes see it: percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2),
/// repeated slashes merged, and `.` and `..` segments removed (§5.2.4; `..` never climbs above
/// the root). A trailing slash stays. Most paths need none of it and are returned as they are.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    // Most paths have no `%`, `//` or `/.`: a vectorized search for `%`, then a look after each `/`.
    let plain = memchr::memchr(b'%', bytes).is_none()
        && memchr::memchr_iter(b'/', bytes).all(|i| !matches!(bytes.get(i + 1), Some(b'/' | b'.')));
    if plain {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(bytes);
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|b| *b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    let last = decoded.rsplit(|b| *b == b'/').next().unwrap_or_default();
    let directory = decoded.ends_with(b"/") || last == b"." || last == b"..";
    if out.is_empty() || (directory && !segments.is_empty()) {
        out.push(b'/');
    }
    // Only ASCII was decoded into the (valid UTF-8) path: it stays valid.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| path.to_owned()))
}

/// `%XX` of an unreserved character (ALPHA, DIGIT, `-`, `.`, `_`, `~`) as that character; every
/// other escape kept as it is.
fn decode_unreserved(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                out.push(c);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize_path;
    use std::borrow::Cow;

    #[test]
    fn paths_are_normalized_for_matching_only_where_needed() {
        for (path, normal) in [
            ("/api/auth/chat-token", "/api/auth/chat-token"),
            ("/api/auth/%63hat-token", "/api/auth/chat-token"),
            ("/api/auth/%2Fchat-token", "/api/auth/%2Fchat-token"),
            ("/api/auth/./chat-token", "/api/auth/chat-token"),
            ("/api/auth//chat-token", "/api/auth/chat-token"),
            ("/api/x/../auth/chat-token", "/api/auth/chat-token"),
            ("/../../api/auth/chat-token", "/api/auth/chat-token"),
            ("/api/auth/%2e/chat-token", "/api/auth/chat-token"),
            ("/a/b/", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/.well-known/jwks.json", "/.well-known/jwks.json"),
            ("/", "/"),
            ("//", "/"),
            ("/%zz%4", "/%zz%4"),
        ] {
            assert_eq!(normalize_path(path), normal, "{path}");
        }
        // Paths with nothing to normalize come back as they are, not copied.
        for plain in ["/api/auth/chat-token", "/a/b/", "/", "/a.b/c"] {
            assert!(matches!(normalize_path(plain), Cow::Borrowed(_)), "{plain}");
        }
        assert!(matches!(normalize_path("/.well-known/jwks.json"), Cow::Owned(_)));
    }
}
