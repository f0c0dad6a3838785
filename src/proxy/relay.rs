//! Forwarded HTTP/1.1 requests without a body, relayed from the bytes of their head: the
//! bytes adapter of the SPEC §3 rules (`rules`). The request goes upstream as the client sent
//! it, each field as the rules decide, then the fields they add; the response head comes back
//! the same way. No header map is built in either direction. The other requests (HTTP/2,
//! bodies, upgrades) take the `http`-types adapter (`headers`) over the same rules.

use std::future::Future;

use bytes::{BufMut, BytesMut};
use http::header::HeaderValue;
use http::StatusCode;

use super::pool::PoolError;
use super::rules::{ForwardRules, PeerFacts, RequestFacts, RequestPlan, ResponseFacts, ResponsePlan};
use super::Proxy;
use crate::body::PooledBody;
use crate::conn_info::ConnInfo;
use crate::error::Error;
use crate::upstream::conn::ExchangeError;
use crate::wire::fields::{self, Known};
use crate::wire::request::RequestHead;
use crate::wire::response::{HeadError, ResponseHead};
use crate::wire::writer::RelayedHead;

/// An upstream's answer to a relayed request: its head less the fields for this hop only, with
/// the fields tokengate adds, and the body, still to be read from the upstream connection. The
/// head stays in the box it was parsed into (~560 bytes): it is written from there, never
/// moved with the futures the answer passes through.
pub struct Relayed {
    pub head: RelayedHead,
    pub body: PooledBody,
}

/// What tokengate sets on a relayed request besides the rules' fields: the request id, and
/// the `traceparent` of an unsampled traced request (its client's, if any, is replaced).
#[derive(Clone, Copy)]
pub struct Stamp<'a> {
    pub id: &'a HeaderValue,
    /// The id was generated here (the client sent none).
    pub generated: bool,
    pub traceparent: Option<&'a [u8]>,
}

const TRACEPARENT: &[u8] = b"traceparent";

impl Proxy {
    /// Relays `req` upstream and returns the answer, or the error to answer with instead;
    /// `response_timeout` counts from `start`, when the request came. An `async move` block: an
    /// `async fn` would keep its arguments twice.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn relay<'a>(
        &'a self,
        req: &'a RequestHead,
        conn: &'a ConnInfo,
        stamp: Stamp<'a>,
        start: std::time::Instant,
    ) -> impl Future<Output = Result<Relayed, Error>> + Send + 'a {
        async move {
            // The upstream connection's own timer keeps the deadline (`upstream::conn`).
            let deadline = tokio::time::Instant::from_std(start) + self.response_timeout;
            let exchange =
                self.pool.exchange(&req.method, Some(deadline), move |dst| self.encode(req, conn, stamp, dst));
            let (mut head, body) = match exchange.await {
                Ok(answer) => answer,
                Err(PoolError::Exchange(ExchangeError::TimedOut)) => {
                    return Err(Error::UpstreamTimeout(self.response_timeout))
                }
                Err(e) => return Err(Error::from(e)),
            };
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                let unasked = ExchangeError::Head(HeadError::UnaskedUpgrade);
                return Err(Error::from(PoolError::Exchange(unasked)));
            }
            drop_hop_fields(&mut head, &self.rules);
            let added = [(self.rules.request_id.clone(), stamp.id.clone())];
            Ok(Relayed { head: RelayedHead { head, added }, body })
        }
    }

    /// Writes the upstream request: the client's request line with HTTP/1.1, then its fields
    /// in order, each as the rules decide (`rules::RequestPlan`), then the fields they add and
    /// the stamp's `traceparent`.
    pub(crate) fn encode(&self, req: &RequestHead, conn: &ConnInfo, stamp: Stamp<'_>, dst: &mut BytesMut) {
        let head = &req.bytes[..];
        let trusted = self.rules.trusts_peer(conn.peer.ip());
        let facts = RequestFacts { trusted, upgrade: false, id_generated: stamp.generated };
        let connection = req.fields.iter().filter(|f| f.known == Known::Connection).map(|f| f.value(head));
        let mut plan = RequestPlan::new(&self.rules, facts, connection);
        dst.put_slice(req.method.as_str().as_bytes());
        dst.put_u8(b' ');
        dst.put_slice(req.target());
        dst.put_slice(b" HTTP/1.1\r\n");
        for f in &req.fields {
            let (name, value) = (f.name(head), f.value(head));
            let replaced = stamp.traceparent.is_some() && name.eq_ignore_ascii_case(TRACEPARENT);
            if plan.keep(f.known, name, value) && !replaced {
                fields::put(dst, name, value);
            }
        }
        let peer = PeerFacts { ip: conn.peer_ip(), tls: conn.tls };
        plan.added(self.host.as_bytes(), &peer, stamp.id, |name, pieces| put_pieces(dst, name, pieces));
        if let Some(traceparent) = stamp.traceparent {
            fields::put(dst, TRACEPARENT, traceparent);
        }
        dst.put_slice(b"\r\n");
    }
}

/// Appends one added field, its value's pieces joined with `, `.
#[inline]
fn put_pieces(dst: &mut BytesMut, name: &[u8], pieces: &[&[u8]]) {
    if let [one] = pieces {
        return fields::put(dst, name, one);
    }
    dst.put_slice(name);
    dst.put_slice(b": ");
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            dst.put_slice(b", ");
        }
        dst.put_slice(piece);
    }
    dst.put_slice(b"\r\n");
}

/// Drops what the client must not get, as the response rules decide (`rules::ResponsePlan`).
pub(crate) fn drop_hop_fields(head: &mut ResponseHead, rules: &ForwardRules) {
    // No content (RFC 9110 §8.6), or chunked framing that wins over the length.
    let no_length = head.chunked_wins() || head.status.is_informational() || head.status == StatusCode::NO_CONTENT;
    let bytes = &head.bytes[..];
    let connection = head.fields.iter().filter(|f| f.known == Known::Connection).map(|f| f.value(bytes));
    let plan = ResponsePlan::new(rules, ResponseFacts { upgrade: false, no_length }, connection);
    head.fields.retain(|f| plan.keep(f.known, f.name(bytes)));
}
