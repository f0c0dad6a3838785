//! For the fuzz targets (`fuzz/`): the two ways a forwarded HTTP/1.1 request goes upstream,
//! side by side. A body-less request is relayed from its head's bytes (`proxy::relay`); every
//! other one goes through `http` types and `proxy::headers`. The rules are written twice, and
//! the differential target keeps the two equal. Not part of the product's interface.

use bytes::BytesMut;
use http::header::HeaderValue;

use crate::admission;
use crate::config::{ForwardingConfig, UpstreamConfig, XForwardedMode};
use crate::proxy::relay::RequestId;
use crate::proxy::{ConnInfo, Proxy};
use crate::shelf::Shelf;
use crate::wire::request::{Parsed, RequestHead};

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
        let Parsed::Head(head) = RequestHead::parse(&buf) else { return None };
        admission::check_head(&head, &buf).ok()?;
        let head = head.take(&mut buf);
        if !head.is_origin_form()
            || head.fields.iter().any(|f| f.known.is_hop_by_hop() && f.known != crate::wire::fields::Known::Te)
        {
            return None;
        }
        let name = &self.proxy.rules.request_id;
        let id = RequestId { value: HeaderValue::from_static("fuzz-request-id"), generated: true };
        let mut relayed = BytesMut::new();
        self.proxy.encode(&head, &self.conn, &id, &mut relayed);
        let mut req = head.to_request()?;
        req.headers_mut().remove(name);
        req.headers_mut().insert(name.clone(), id.value.clone());
        let req = self.proxy.upstream_request(req, &self.conn, false);
        let mut typed = BytesMut::new();
        crate::proxy::h1::encode_request(&req, &[], &mut typed);
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
