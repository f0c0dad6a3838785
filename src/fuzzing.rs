//! For the fuzz targets (`fuzz/`): the two adapters of the SPEC §3 rules (`proxy::rules`) side
//! by side. A body-less request and its answer are relayed as bytes (`proxy::relay`); every
//! other message goes through `http` types (`proxy::headers`). The rules are written once; the
//! differential target keeps the two adapters equal, requests and responses, `Connection` and
//! every hop-by-hop field included. Not part of the product's interface.

use bytes::BytesMut;
use http::header::HeaderValue;

use crate::admission;
use crate::config::{ForwardingConfig, UpstreamConfig, XForwardedMode};
use crate::conn_info::ConnInfo;
use crate::proxy::rules::RequestId;
use crate::proxy::{headers, relay, Proxy};
use crate::shelf::Shelf;
use crate::wire::fields::Known;
use crate::wire::request::{Parsed, RequestHead};
use crate::wire::response;

/// A proxy in front of a fixed upstream, under one `x_forwarded` mode.
pub struct Forwarder {
    proxy: Proxy,
    conn: ConnInfo,
}

/// The fields one path sends upstream: (lower-cased name, value), in order.
pub type Fields = Vec<(String, Vec<u8>)>;

impl Forwarder {
    /// `mode`: 0 append, 1 replace, 2 off; `trusted`: the peer is a trusted proxy.
    pub fn new(mode: u8, trusted: bool) -> Option<Self> {
        let upstream: UpstreamConfig =
            serde_json::from_value(serde_json::json!({"url": "http://upstream.example:3000"})).ok()?;
        let modes = [XForwardedMode::Append, XForwardedMode::Replace, XForwardedMode::Off];
        let trusted_proxies = if trusted { vec!["10.0.0.0/8".parse().ok()?] } else { Vec::new() };
        let forwarding =
            ForwardingConfig { x_forwarded: modes[usize::from(mode % 3)], trusted_proxies, ..Default::default() };
        let proxy = Proxy::new(&upstream, &forwarding, &Shelf::default()).ok()?;
        Some(Self { proxy, conn: ConnInfo::new(([10, 1, 2, 3], 4321).into(), false) })
    }

    /// For a head the relay would take (parsed, admitted, origin-form, no body): the fields
    /// each path sends upstream, the request id excluded (the http path makes its own when
    /// the client's is unusable). None for any other input.
    pub fn both(&self, raw: &[u8]) -> Option<(Fields, Fields)> {
        let mut buf = BytesMut::from(raw);
        let Parsed::Head(mut head) = RequestHead::parse(&buf) else { return None };
        admission::check_head(&head, &buf).ok()?;
        head.take(&mut buf);
        // What the relay takes (server::h1's fast path): no body, no protocol switch.
        let relayed_kind = |f: &crate::wire::fields::Field| match f.known {
            Known::ContentLength => f.value(&head.bytes) == b"0",
            Known::TransferEncoding | Known::Upgrade | Known::Expect => false,
            _ => true,
        };
        if !head.is_origin_form() || !head.fields.iter().all(relayed_kind) {
            return None;
        }
        let name = &self.proxy.rules.request_id;
        let id = RequestId { value: HeaderValue::from_static("fuzz-request-id"), generated: true };
        let mut relayed = BytesMut::new();
        let stamp = crate::proxy::relay::Stamp { id: &id.value, generated: id.generated, traceparent: None };
        self.proxy.encode(&head, &self.conn, stamp, &mut relayed);
        let mut req = head.to_request(http_body_util::Either::Right(http_body_util::Full::default()))?;
        req.headers_mut().remove(name);
        req.headers_mut().insert(name.clone(), id.value.clone());
        let req = self.proxy.upstream_request(req, &self.conn, false);
        let mut typed = BytesMut::new();
        crate::wire::encode::encode_request(&req, &[], &mut typed);
        let fields = |wire: &[u8]| -> Option<Fields> {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Request::new(&mut headers);
            parsed.parse(wire).ok()?;
            Some(
                parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .filter(|(n, _)| n != name.as_str())
                    .collect(),
            )
        };
        Some((fields(&relayed)?, fields(&typed)?))
    }

    /// For a response head an upstream could send to a GET (parsed, not a 101): the fields each
    /// path gives the client, the request id included (both add the request's). None for any
    /// other input.
    pub fn responses(&self, raw: &[u8]) -> Option<(Fields, Fields)> {
        let mut buf = BytesMut::from(raw);
        let mut head = response::parse(&mut buf, &http::Method::GET).ok()??;
        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return None;
        }
        let name = &self.proxy.rules.request_id;
        let id = HeaderValue::from_static("fuzz-request-id");
        let mut typed = head.to_response(1).ok()?;
        headers::apply_response(&self.proxy.rules, typed.status(), typed.headers_mut(), false);
        typed.headers_mut().insert(name.clone(), id.clone());
        let typed =
            typed.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect::<Fields>();
        relay::drop_hop_fields(&mut head, &self.proxy.rules);
        let mut relayed: Fields = head
            .fields
            .iter()
            .map(|f| (String::from_utf8_lossy(f.name(&head.bytes)).to_ascii_lowercase(), f.value(&head.bytes).to_vec()))
            .collect();
        relayed.push((name.as_str().to_owned(), id.as_bytes().to_vec()));
        Some((relayed, typed))
    }
}

/// The fields of `fields` grouped by name, each name's values in order: how `http::HeaderMap`
/// keeps them, and what an upstream reads.
pub fn by_name(fields: &Fields) -> std::collections::BTreeMap<String, Vec<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::<String, Vec<Vec<u8>>>::new();
    for (name, value) in fields {
        out.entry(name.clone()).or_default().push(value.clone());
    }
    out
}
