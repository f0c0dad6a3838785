//! Requests refused before they go anywhere, the same whichever way they were read (a head as
//! bytes on the fast path, or hyper's `http::Request`):
//! - `CONNECT` (tokengate is no tunnel proxy): 405 with `Allow`;
//! - a request-target with a fragment (`#`), as Envoy refuses it; an authority-form target on
//!   another method, or an asterisk-form one on anything but `OPTIONS`: 400 (RFC 9112 §3.2);
//! - HTTP/1.1 without `Host`, any request with two, or with one that is not a valid
//!   `host[:port]` (userinfo included): 400 (RFC 9112 §3.2, as nginx does);
//! - HTTP/2 with userinfo in `:authority`, or a `host` field that differs from it: 400
//!   (RFC 9113 §8.3.1);
//! - `Content-Length` beside `Transfer-Encoding`: 400 and the connection closed (RFC 9112
//!   §6.3 lets a server refuse it, and Envoy does: it is how requests are smuggled).

use http::header::{self, HeaderMap};
use http::{Method, Request, Version};

use crate::wire::fields::Known;
use crate::wire::request::RequestHead;

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Connect,
    Fragment,
    TargetForm,
    MissingHost,
    /// HTTP/2 with neither `:authority` nor `host` (RFC 9113 §8.3.1): nothing names the host.
    MissingAuthority,
    SeveralHosts,
    InvalidHost,
    AuthorityMismatch,
    LengthAndChunked,
}

impl Refusal {
    /// The sentence the client gets.
    pub fn message(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT is not supported",
            Self::Fragment => "the request target has a fragment (#)",
            Self::TargetForm => "the request target is not a path",
            Self::MissingHost => "an HTTP/1.1 request needs a Host field",
            Self::MissingAuthority => "an HTTP/2 request needs :authority or a host field",
            Self::SeveralHosts => "more than one Host field",
            Self::InvalidHost => "the Host field is not a valid host[:port]",
            Self::AuthorityMismatch => "the host field differs from :authority",
            Self::LengthAndChunked => "Content-Length beside Transfer-Encoding",
        }
    }
}

/// What the checks look at, from either form of a request.
struct Facts<'a> {
    method: &'a Method,
    version: Version,
    /// The request-target as sent (HTTP/1.x); None for HTTP/2, whose `:path` hyper checked.
    target: Option<&'a [u8]>,
    /// HTTP/2's `:authority`.
    authority: Option<&'a str>,
    hosts: usize,
    host: Option<&'a [u8]>,
    content_length: bool,
    transfer_encoding: bool,
}

/// Checks a head read by the fast path (also the one that hands a connection to hyper);
/// `bytes` is the buffer its spans point into.
pub fn check_head(head: &RequestHead, bytes: &[u8]) -> Result<(), Refusal> {
    let (mut hosts, mut host, mut content_length, mut transfer_encoding) = (0, None, false, false);
    for f in &head.fields {
        match f.known {
            Known::Host => {
                hosts += 1;
                host = Some(f.value(bytes));
            }
            Known::ContentLength => content_length = true,
            Known::TransferEncoding => transfer_encoding = true,
            _ => {}
        }
    }
    check(&Facts {
        method: &head.method,
        version: head.version,
        target: Some(head.target_in(bytes)),
        authority: None,
        hosts,
        host,
        content_length,
        transfer_encoding,
    })
}

/// Checks a request as hyper read it. hyper has already cut a fragment off the target and
/// resolved `Content-Length` beside `Transfer-Encoding` (by the latter, closing the connection
/// after): those two are caught only on heads `check_head` sees.
pub fn check_request<B>(req: &Request<B>) -> Result<(), Refusal> {
    let headers: &HeaderMap = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next().map(|h| h.as_bytes());
    let h2 = req.version() == Version::HTTP_2;
    let uri = req.uri();
    let target = uri.path_and_query().map(|p| p.as_str().as_bytes());
    // A target hyper parsed as an authority alone was authority-form; HTTP/2's :path is the
    // target itself (origin-form, or `*` for OPTIONS: RFC 9113 §8.3.1).
    let target = match (h2, target, uri.authority()) {
        (false, None, Some(a)) => Some(a.as_str().as_bytes()),
        (false, t, _) | (true, t, _) => t,
    };
    check(&Facts {
        method: req.method(),
        version: req.version(),
        target: if uri.scheme().is_some() && !h2 { None } else { target },
        authority: if h2 { uri.authority().map(|a| a.as_str()) } else { None },
        hosts: usize::from(host.is_some()) + hosts.count(),
        host,
        content_length: headers.contains_key(header::CONTENT_LENGTH),
        transfer_encoding: headers.contains_key(header::TRANSFER_ENCODING),
    })
}

fn check(f: &Facts<'_>) -> Result<(), Refusal> {
    if f.method == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    if let Some(target) = f.target {
        if target.contains(&b'#') {
            return Err(Refusal::Fragment);
        }
        let origin = target.first() == Some(&b'/');
        let asterisk = target == b"*" && f.method == Method::OPTIONS;
        let absolute = target.starts_with(b"http://") || target.starts_with(b"https://");
        if !(origin || asterisk || absolute) {
            return Err(Refusal::TargetForm);
        }
    }
    if f.content_length && f.transfer_encoding {
        return Err(Refusal::LengthAndChunked);
    }
    if f.hosts > 1 {
        return Err(Refusal::SeveralHosts);
    }
    if let Some(host) = f.host {
        if !valid_host(host) {
            return Err(Refusal::InvalidHost);
        }
    }
    match (f.version, f.authority) {
        (Version::HTTP_2, Some(authority)) => {
            if authority.contains('@') {
                return Err(Refusal::InvalidHost);
            }
            if f.host.is_some_and(|h| !h.eq_ignore_ascii_case(authority.as_bytes())) {
                return Err(Refusal::AuthorityMismatch);
            }
        }
        (Version::HTTP_11, _) if f.hosts == 0 => return Err(Refusal::MissingHost),
        (Version::HTTP_2, None) if f.hosts == 0 => return Err(Refusal::MissingAuthority),
        _ => {}
    }
    Ok(())
}

/// The bytes of a reg-name (RFC 3986 §3.2.2: unreserved, sub-delims, `%` of pct-encoded).
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        b += 1;
    }
    table
};

/// `uri-host [ ":" port ]` without userinfo (RFC 9110 §7.2, RFC 3986 §3.2.2): a reg-name or
/// IPv4 address of unreserved, sub-delims and pct-encoded characters, or an IP literal in
/// brackets; then an optional port of digits. A cheap scan: this runs on every request.
fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.first() {
        Some(b'[') => match host.iter().position(|b| *b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                let ok = !literal.is_empty() && literal.iter().all(|b| b.is_ascii_hexdigit() || b":.".contains(b));
                if !ok {
                    return false;
                }
                (&host[..=end], &host[end + 1..])
            }
            None => return false,
        },
        _ => match host.iter().rposition(|b| *b == b':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, &b""[..]),
        },
    };
    let name_ok = name.first() == Some(&b'[') || (!name.is_empty() && name.iter().all(|b| REG_NAME[usize::from(*b)]));
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::request::Parsed;

    fn head(wire: &str) -> Result<(), Refusal> {
        let buf = bytes::BytesMut::from(wire);
        match RequestHead::parse(&buf) {
            Parsed::Head(h) => check_head(&h, &buf),
            _ => panic!("not a head: {wire:?}"),
        }
    }

    #[test]
    fn heads_on_the_wire() {
        assert_eq!(head("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(()));
        assert_eq!(head("GET /a HTTP/1.0\r\n\r\n"), Ok(()), "HTTP/1.0 may leave Host out");
        assert_eq!(head("GET /a HTTP/1.1\r\n\r\n"), Err(Refusal::MissingHost));
        assert_eq!(head("GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"), Err(Refusal::SeveralHosts));
        assert_eq!(head("GET /a HTTP/1.1\r\nHost: u@x\r\n\r\n"), Err(Refusal::InvalidHost));
        assert_eq!(head("GET /a HTTP/1.1\r\nHost: a b\r\n\r\n"), Err(Refusal::InvalidHost));
        for ok in ["a.example", "a.example:8080", "127.0.0.1:1", "[::1]", "[::1]:443", "xn--bcher-kva.example", "a:"] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "a/b", "[::1", "a:80:80", "a:x", "[zz]", "a\"b", ":80", "a:123456"] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
        assert_eq!(head("GET /a#f HTTP/1.1\r\nHost: x\r\n\r\n"), Err(Refusal::Fragment));
        assert_eq!(head("GET evil.example:80 HTTP/1.1\r\nHost: x\r\n\r\n"), Err(Refusal::TargetForm));
        assert_eq!(head("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), Err(Refusal::TargetForm));
        assert_eq!(head("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(()));
        assert_eq!(head("GET http://x/a HTTP/1.1\r\nHost: y\r\n\r\n"), Ok(()));
        assert_eq!(head("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"), Err(Refusal::Connect));
        assert_eq!(
            head("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Refusal::LengthAndChunked)
        );
    }

    #[test]
    fn http2_authority() {
        let req = |authority: &str, host: Option<&str>| {
            let mut b = Request::get(format!("http://{authority}/a")).version(Version::HTTP_2);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            check_request(&b.body(()).unwrap())
        };
        assert_eq!(req("x", None), Ok(()));
        assert_eq!(req("x", Some("X")), Ok(()));
        assert_eq!(req("x", Some("y")), Err(Refusal::AuthorityMismatch));
        assert_eq!(req("u@x", None), Err(Refusal::InvalidHost));
    }
}
