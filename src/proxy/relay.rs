//! Forwarded HTTP/1.1 requests without a body, relayed from the bytes of their head: the
//! request goes upstream as the client sent it, less its hop-by-hop fields and with the
//! `X-Forwarded-*` and request id fields of SPEC §3; the response head comes back the same
//! way. No header map is built in either direction; the rules are those of `headers`, which
//! the other requests (HTTP/2, bodies, upgrades) go through, and the forwarding tests run
//! against both.

use std::future::Future;

use bytes::{BufMut, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use smallvec::SmallVec;

use super::h1::ExchangeError;
use super::pool::PoolError;
use super::{ConnInfo, Proxy};
use crate::body::PooledBody;
use crate::config::XForwardedMode;
use crate::error::Error;
use crate::wire::fields::{self, Known};
use crate::wire::request::RequestHead;
use crate::wire::response::{HeadError, ResponseHead};

/// The fields tokengate adds to a relayed response: the request id.
pub type Added = [(HeaderName, HeaderValue); 1];

/// An upstream's answer to a relayed request: its head less the fields for this hop only, the
/// fields tokengate adds, and the body, still to be read from the upstream connection.
pub struct Relayed {
    pub head: ResponseHead,
    pub added: Added,
    pub body: PooledBody,
}

/// The request id of a relayed request.
pub struct RequestId {
    pub value: HeaderValue,
    /// Made by tokengate: the request goes upstream with it added.
    pub generated: bool,
}

impl Proxy {
    /// Relays `req` upstream and returns the answer, or the error to answer with instead.
    pub fn relay<'a>(
        &'a self,
        req: &'a RequestHead,
        conn: &'a ConnInfo,
        id: &'a RequestId,
    ) -> impl Future<Output = Result<Box<Relayed>, Error>> + Send + 'a {
        let exchange = self.pool.exchange(&req.method, move |dst| self.encode(req, conn, id, dst));
        async move {
            let (mut head, body) = match tokio::time::timeout(self.response_timeout, exchange).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => return Err(Error::upstream(e)),
                Err(_) => return Err(Error::UpstreamTimeout(self.response_timeout)),
            };
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                let unasked = ExchangeError::Head(HeadError::UnaskedUpgrade);
                return Err(Error::upstream(PoolError::Exchange(unasked)));
            }
            drop_hop_fields(&mut head, &self.rules.request_id);
            Ok(Box::new(Relayed { head, added: [(self.rules.request_id.clone(), id.value.clone())], body }))
        }
    }

    /// Writes the upstream request: the client's request line with HTTP/1.1, its fields in
    /// order less the hop-by-hop ones (RFC 9110 §7.6.1), then `Host` when the client (HTTP/1.0)
    /// sent none, `X-Forwarded-*` per the rules, and a generated request id.
    pub(crate) fn encode(&self, req: &RequestHead, conn: &ConnInfo, id: &RequestId, dst: &mut BytesMut) {
        let head = &req.bytes[..];
        let named = fields::connection_named(head, &req.fields);
        let mode = self.rules.mode;
        // Only a trusted proxy may tell us the original scheme and host.
        let trusted = !self.rules.trusted.is_empty() && self.rules.is_trusted(conn.peer.ip());
        let mut host = None;
        let mut prior_for: SmallVec<[&[u8]; 2]> = SmallVec::new();
        let (mut kept_proto, mut kept_host, mut te_sent) = (false, false, false);

        dst.put_slice(req.method.as_str().as_bytes());
        dst.put_u8(b' ');
        dst.put_slice(req.target());
        dst.put_slice(b" HTTP/1.1\r\n");
        for f in &req.fields {
            let (name, value) = (f.name(head), f.value(head));
            if f.known == Known::Te {
                // `TE: trailers` is how a client says it accepts trailers (RFC 9110 §10.1.4).
                // Several `TE` fields are one list: it is said once.
                if !te_sent && fields::tokens(value).any(|t| t.eq_ignore_ascii_case(b"trailers")) {
                    dst.put_slice(b"te: trailers\r\n");
                    te_sent = true;
                }
                continue;
            }
            // `Connection` may not name away the fields tokengate relies on or sets.
            let protected =
                matches!(f.known, Known::Host | Known::XForwardedFor | Known::XForwardedProto | Known::XForwardedHost)
                    || f.is(head, &self.rules.request_id);
            if f.known.is_hop_by_hop() || (!protected && is_named(name, &named)) {
                continue;
            }
            // Look-alikes of fields tokengate sets, folded into the same variable by CGI-style
            // servers: never passed on (in `off` mode tokengate sets no X-Forwarded-*).
            if fields::is_underscore_spelling(name, self.rules.request_id.as_str().as_bytes())
                || (f.known == Known::XForwardedLookalike && mode != XForwardedMode::Off)
            {
                continue;
            }
            match (f.known, mode) {
                (Known::Host, _) => host = Some(value),
                (Known::XForwardedFor | Known::XForwardedProto | Known::XForwardedHost, XForwardedMode::Replace)
                | (Known::XForwardedOther, XForwardedMode::Replace) => continue,
                (Known::XForwardedFor, XForwardedMode::Append) => {
                    prior_for.push(value);
                    continue;
                }
                (Known::XForwardedProto, XForwardedMode::Append) if !trusted => continue,
                (Known::XForwardedProto, XForwardedMode::Append) => kept_proto = true,
                (Known::XForwardedHost, XForwardedMode::Append) if !trusted => continue,
                (Known::XForwardedHost, XForwardedMode::Append) => kept_host = true,
                (Known::Other, _) if id.generated && f.is(head, &self.rules.request_id) => continue,
                _ => {}
            }
            fields::put(dst, name, value);
        }
        if host.is_none() {
            fields::put(dst, b"host", self.host.as_bytes());
        }
        let proto: &[u8] = if conn.tls { b"https" } else { b"http" };
        match mode {
            XForwardedMode::Off => {}
            XForwardedMode::Replace => {
                fields::put(dst, b"x-forwarded-for", conn.peer_ip.as_bytes());
                fields::put(dst, b"x-forwarded-proto", proto);
                if let Some(host) = host {
                    fields::put(dst, b"x-forwarded-host", host);
                }
            }
            XForwardedMode::Append => {
                dst.put_slice(b"x-forwarded-for: ");
                for prior in &prior_for {
                    dst.put_slice(prior);
                    dst.put_slice(b", ");
                }
                dst.put_slice(conn.peer_ip.as_bytes());
                dst.put_slice(b"\r\n");
                if !kept_proto {
                    fields::put(dst, b"x-forwarded-proto", proto);
                }
                if let (Some(host), false) = (host, kept_host) {
                    fields::put(dst, b"x-forwarded-host", host);
                }
            }
        }
        if id.generated {
            fields::put(dst, self.rules.request_id.as_str().as_bytes(), id.value.as_bytes());
        }
        dst.put_slice(b"\r\n");
    }
}

/// Drops what the client must not get: the hop-by-hop fields (RFC 9110 §7.6.1) and those
/// `Connection` names, a `Content-Length` beside `Transfer-Encoding` (RFC 9112 §6.3), and the
/// upstream's own request id (the client gets the request's).
fn drop_hop_fields(head: &mut ResponseHead, request_id: &HeaderName) {
    let bytes = &head.bytes[..];
    let named = fields::connection_named(bytes, &head.fields);
    // No content (RFC 9110 §8.6), or chunked framing that wins over the length.
    let no_length = head.chunked_wins() || head.status.is_informational() || head.status == StatusCode::NO_CONTENT;
    head.fields.retain(|f| {
        !(f.known.is_hop_by_hop()
            || (no_length && f.known == Known::ContentLength)
            || is_named(f.name(bytes), &named)
            || f.is(bytes, request_id))
    });
}

/// True when `name` is one of the fields `Connection` listed.
fn is_named(name: &[u8], named: &[&[u8]]) -> bool {
    named.iter().any(|n| n.eq_ignore_ascii_case(name))
}
