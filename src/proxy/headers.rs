//! Header rules for forwarded traffic: hop-by-hop removal (RFC 9110 §7.6.1), `X-Forwarded-*`,
//! the client address behind trusted proxies, and the request id.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::ConnInfo;
use crate::config::{ForwardingConfig, XForwardedMode};
use crate::wire::fields::{is_underscore_spelling, Known};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Forwarding rules compiled from `forwarding:` once per config.
#[derive(Clone, Debug)]
pub struct ForwardRules {
    pub mode: XForwardedMode,
    pub trusted: Vec<IpNet>,
    pub request_id: HeaderName,
}

impl ForwardRules {
    pub fn new(cfg: &ForwardingConfig) -> Self {
        Self {
            mode: cfg.x_forwarded,
            trusted: cfg.trusted_proxies.clone(),
            request_id: cfg.request_id_header.0.clone(),
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The caller's address: the socket peer, unless that peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` entry that is not itself trusted.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut last = peer;
        for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
            let Ok(text) = value.to_str() else {
                return last;
            };
            for item in text.rsplit(',') {
                let Ok(ip) = item.trim().parse::<IpAddr>() else {
                    return last;
                };
                if !self.is_trusted(ip) {
                    return ip;
                }
                last = ip;
            }
        }
        last
    }

    /// Applies `x_forwarded` to a request about to go upstream.
    pub fn apply_x_forwarded(&self, headers: &mut HeaderMap, conn: &ConnInfo, host: Option<&HeaderValue>) {
        let proto = HeaderValue::from_static(if conn.tls { "https" } else { "http" });
        match self.mode {
            XForwardedMode::Off => {}
            XForwardedMode::Replace => {
                remove_x_forwarded(headers);
                headers.insert(X_FORWARDED_FOR.clone(), conn.peer_ip.clone());
                headers.insert(X_FORWARDED_PROTO.clone(), proto);
                if let Some(h) = host {
                    headers.insert(X_FORWARDED_HOST.clone(), h.clone());
                }
            }
            XForwardedMode::Append => {
                match headers.entry(&X_FORWARDED_FOR) {
                    Entry::Occupied(mut prior) => {
                        let mut v = join_values(prior.iter());
                        v.extend_from_slice(b", ");
                        v.extend_from_slice(conn.peer_ip.as_bytes());
                        prior.insert(HeaderValue::from_bytes(&v).unwrap_or_else(|_| conn.peer_ip.clone()));
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(conn.peer_ip.clone());
                    }
                }
                // Only a trusted proxy may tell us the original scheme and host.
                let trusted = !self.trusted.is_empty() && self.is_trusted(conn.peer.ip());
                set(headers, &X_FORWARDED_PROTO, proto, !trusted);
                if let Some(h) = host {
                    set(headers, &X_FORWARDED_HOST, h.clone(), !trusted);
                }
            }
        }
    }
}

/// Sets `name` to `value`, or only when absent unless `overwrite`; one lookup either way.
fn set(headers: &mut HeaderMap, name: &'static HeaderName, value: HeaderValue, overwrite: bool) {
    match headers.entry(name) {
        Entry::Occupied(mut e) if overwrite => {
            e.insert(value);
        }
        Entry::Occupied(_) => {}
        Entry::Vacant(e) => {
            e.insert(value);
        }
    }
}

/// Values of a repeated header joined with ", " (RFC 9110 §5.3).
fn join_values<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Drops the underscore spellings of the fields tokengate sets (`X_Forwarded_For`…, and of the
/// request id): CGI-style servers fold them into the same variable as the real ones. With
/// `off`, tokengate sets no `X-Forwarded-*`, so only the request id's look-alikes go.
pub fn remove_lookalikes(headers: &mut HeaderMap, request_id: &HeaderName, mode: XForwardedMode) {
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let n = k.as_str().as_bytes();
            let forwarded = mode != XForwardedMode::Off && Known::of(n) == Known::XForwardedLookalike;
            forwarded || is_underscore_spelling(n, request_id.as_str().as_bytes())
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// Drops `X-Forwarded-*` and the `X_Forwarded_*` spellings some servers treat as the same.
fn remove_x_forwarded(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let n = k.as_str();
            n.len() > 12 && n.as_bytes()[..12].iter().map(|b| if *b == b'_' { b'-' } else { *b }).eq(*b"x-forwarded-")
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// True when a request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// As bytes, like the relay reads them: a value with obs-text still names its fields.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::CONNECTION).iter().flat_map(|v| crate::wire::fields::tokens(v.as_bytes()))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`.
///
/// `upgrade` keeps `Upgrade` and a bare `Connection: upgrade` (the tunnel needs them).
/// In requests, `TE: trailers` survives: it is how a client says it accepts trailers, and
/// the upstream only sends them when asked (RFC 9110 §10.1.4).
///
/// `Connection` cannot name away `Host`, the request id (`request_id`) or the `X-Forwarded-*`
/// fields tokengate sets: a client must not make a field it relies on disappear.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, is_request: bool, request_id: &HeaderName) {
    // Most messages carry none of them: one pass over the names instead of six lookups.
    if !upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> =
            connection_tokens(headers).filter_map(|t| HeaderName::from_bytes(t).ok()).collect();
        for name in named {
            let kept = (upgrade && name == header::UPGRADE) || name == header::TE || is_protected(&name, request_id);
            if !kept {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    // Any of the `TE` fields may carry `trailers`: they are one list (RFC 9110 §5.3).
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|te| crate::wire::fields::tokens(te.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"trailers")));
    if headers.remove(header::TE).is_some() && is_request && trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Fields a `Connection` option may not remove.
fn is_protected(name: &HeaderName, request_id: &HeaderName) -> bool {
    name == header::HOST
        || name == request_id
        || name == X_FORWARDED_FOR
        || name == X_FORWARDED_PROTO
        || name == X_FORWARDED_HOST
}

/// RFC 9112 §6.3: a `Content-Length` beside `Transfer-Encoding` does not frame the message,
/// and 1xx and 204 answers have no content (RFC 9110 §8.6): either way it must not reach the
/// client, whose framing would follow it.
pub fn drop_misframed_length(status: http::StatusCode, headers: &mut HeaderMap) {
    let no_content = status.is_informational() || status == http::StatusCode::NO_CONTENT;
    if no_content || headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// The fields `strip_hop_by_hop` removes whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// The longest client request id kept (longer ones are replaced, not echoed or logged whole).
pub const MAX_REQUEST_ID: usize = 200;

/// A client's request id is kept when it is 1 to 200 visible ASCII characters.
pub fn is_usable_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Returns the request id: the client's when usable, else a new UUID v4 in its place.
pub fn ensure_request_id(headers: &mut HeaderMap, name: &HeaderName) -> HeaderValue {
    if let Some(v) = headers.get(name) {
        if is_usable_request_id(v.as_bytes()) {
            return v.clone();
        }
    }
    let value = new_request_id();
    headers.insert(name.clone(), value.clone());
    value
}

/// A new request id: a UUID v4.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // Hyphenated hex is always a valid field value.
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    static RID: HeaderName = HeaderName::from_static("x-request-id");

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn conn(ip: &str, tls: bool) -> ConnInfo {
        ConnInfo::new(std::net::SocketAddr::new(ip.parse().unwrap(), 1234), tls)
    }

    fn rules(mode: XForwardedMode, trusted: &[&str]) -> ForwardRules {
        ForwardRules {
            mode,
            trusted: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            request_id: HeaderName::from_static("x-request-id"),
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false, true, &RID);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn keeps_te_trailers_in_requests_only() {
        let mut req = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut req, false, true, &RID);
        assert_eq!(req["te"], "trailers");
        let mut resp = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut resp, false, false, &RID);
        assert!(resp.get("te").is_none());
    }

    #[test]
    fn upgrade_keeps_upgrade_headers() {
        let mut h = map(&[("connection", "Upgrade, keep-alive"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true, true, &RID);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn append_mode() {
        let r = rules(XForwardedMode::Append, &[]);
        let mut h =
            map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2"), ("x-forwarded-proto", "https")]);
        let host = HeaderValue::from_static("app.example");
        r.apply_x_forwarded(&mut h, &conn("9.9.9.9", false), Some(&host));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 9.9.9.9");
        // The untrusted peer's claim of https is not believed.
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
    }

    #[test]
    fn append_mode_trusted_peer_keeps_proto() {
        let r = rules(XForwardedMode::Append, &["10.0.0.0/8"]);
        let mut h = map(&[("x-forwarded-proto", "https"), ("x-forwarded-host", "orig")]);
        r.apply_x_forwarded(&mut h, &conn("10.1.2.3", false), Some(&HeaderValue::from_static("inner")));
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "orig");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    }

    #[test]
    fn replace_mode_drops_underscore_spellings() {
        let r = rules(XForwardedMode::Replace, &[]);
        let mut h = map(&[("x-forwarded-for", "6.6.6.6"), ("x_forwarded_for", "7.7.7.7"), ("x-forwarded-port", "1")]);
        r.apply_x_forwarded(&mut h, &conn("9.9.9.9", true), None);
        assert_eq!(h["x-forwarded-for"], "9.9.9.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(h.get("x_forwarded_for").is_none() && h.get("x-forwarded-port").is_none());
    }

    #[test]
    fn off_mode_touches_nothing() {
        let r = rules(XForwardedMode::Off, &[]);
        let mut h = map(&[("x-forwarded-for", "6.6.6.6")]);
        r.apply_x_forwarded(&mut h, &conn("9.9.9.9", false), None);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6");
    }

    #[test]
    fn client_ip_believes_only_trusted_peers() {
        let r = rules(XForwardedMode::Append, &["10.0.0.0/8"]);
        let h = map(&[("x-forwarded-for", "1.2.3.4, 5.6.7.8, 10.0.0.7")]);
        assert_eq!(r.client_ip("10.0.0.1".parse().unwrap(), &h), "5.6.7.8".parse::<IpAddr>().unwrap());
        assert_eq!(r.client_ip("8.8.8.8".parse().unwrap(), &h), "8.8.8.8".parse::<IpAddr>().unwrap());
        let junk = map(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(r.client_ip("10.0.0.1".parse().unwrap(), &junk), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn request_id_kept_or_generated() {
        let name = HeaderName::from_static("x-request-id");
        let mut h = map(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut h, &name), "abc");
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h, &name);
        assert_eq!(id.len(), 36);
        assert_eq!(h[&name], id);
    }
}
