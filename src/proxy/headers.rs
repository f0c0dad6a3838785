//! The `http`-types adapter of the SPEC §3 rules (`rules`): HTTP/2, requests with a body,
//! upgrades and every response hyper reads go through here; the rules themselves are not
//! written here.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use super::rules::{self, ForwardRules, PeerFacts, RequestFacts, RequestPlan, ResponseFacts, ResponsePlan};
use crate::conn_info::ConnInfo;
use crate::header_view::HeaderView;
use crate::wire::fields::Known;

/// The request id, chosen once (`rules::choose_request_id`) and put in the request in place
/// of an unusable one.
pub fn ensure_request_id(headers: &mut HeaderMap, name: &HeaderName) -> HeaderValue {
    let id = rules::choose_request_id(headers.get(name).cloned());
    if id.generated {
        headers.insert(name.clone(), id.value.clone());
    }
    id.value
}

/// The caller's address (`ForwardRules::client_ip`) from a request's header map.
pub fn client_ip(rules: &ForwardRules, peer: std::net::IpAddr, headers: HeaderView<'_>) -> std::net::IpAddr {
    // The rule's own first step, before the look-up it makes pointless.
    if !rules.is_trusted(peer) {
        return peer;
    }
    static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    let forwarded_for = headers.get_all(&X_FORWARDED_FOR);
    rules.client_ip(peer, forwarded_for.collect::<SmallVec<[&[u8]; 2]>>().into_iter())
}

/// True when a request asks for a tunnel tokengate opens (`rules::is_tunnelled_upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let upgrade = headers.get_all(header::UPGRADE).iter().map(HeaderValue::as_bytes);
    rules::is_tunnelled_upgrade(connection_values(headers), upgrade)
}

/// As bytes, like the relay reads them: a value with obs-text still names its fields.
fn connection_values(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes)
}

/// Applies the request rules to a request about to go upstream. Its request id was chosen
/// already (`ensure_request_id`); `fallback_host` is `Host` for a request that has none.
pub fn apply_request(
    rules: &ForwardRules,
    headers: &mut HeaderMap,
    conn: &ConnInfo,
    upgrade: bool,
    fallback_host: &HeaderValue,
) {
    let facts = RequestFacts { trusted: rules.trusts_peer(conn.peer.ip()), upgrade, id_generated: false };
    let id = HeaderValue::from_static("");
    let (doomed, added) = {
        let mut plan = RequestPlan::new(rules, facts, connection_values(headers));
        let mut doomed: SmallVec<[HeaderName; 4]> = SmallVec::new();
        for (name, value) in headers.iter() {
            let keep = plan.keep(Known::of(name.as_str().as_bytes()), name.as_str().as_bytes(), value.as_bytes());
            if !keep && doomed.last() != Some(name) {
                doomed.push(name.clone());
            }
        }
        let peer = PeerFacts { ip: conn.peer_ip(), tls: conn.tls };
        (doomed, owned(|add| plan.added(fallback_host.as_bytes(), &peer, &id, add)))
    };
    replace(headers, &doomed, added);
}

/// Applies the response rules to an upstream's answer. The request id is added with every
/// other answer's, by the stack.
pub fn apply_response(rules: &ForwardRules, status: http::StatusCode, headers: &mut HeaderMap, upgrade: bool) {
    // RFC 9110 §8.6 and RFC 9112 §6.3.
    let no_content = status.is_informational() || status == http::StatusCode::NO_CONTENT;
    let facts = ResponseFacts { upgrade, no_length: no_content || headers.contains_key(header::TRANSFER_ENCODING) };
    let (doomed, added) = {
        let plan = ResponsePlan::new(rules, facts, connection_values(headers));
        let mut doomed: SmallVec<[HeaderName; 4]> = SmallVec::new();
        for name in headers.keys() {
            if !plan.keep(Known::of(name.as_str().as_bytes()), name.as_str().as_bytes()) {
                doomed.push(name.clone());
            }
        }
        (doomed, owned(|add| plan.added(None, add)))
    };
    replace(headers, &doomed, added);
}

/// The added fields of a plan as owned name/value pairs, each value's pieces joined with `, `.
fn owned(plan: impl FnOnce(&mut dyn FnMut(&[u8], &[&[u8]]))) -> SmallVec<[(HeaderName, HeaderValue); 6]> {
    let mut out = SmallVec::new();
    plan(&mut |name: &[u8], pieces: &[&[u8]]| {
        let value = match pieces {
            [one] => HeaderValue::from_bytes(one),
            _ => HeaderValue::from_bytes(&pieces.join(&b", "[..])),
        };
        // Names are tokengate's own or the configured request id; values came from valid
        // fields or are tokengate's own text.
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), value) {
            out.push((name, value));
        }
    });
    out
}

/// Removes `doomed`, then sets each added field (replacing any value left under its name).
fn replace(headers: &mut HeaderMap, doomed: &[HeaderName], added: SmallVec<[(HeaderName, HeaderValue); 6]>) {
    for name in doomed {
        headers.remove(name);
    }
    for (name, value) in added {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::config::XForwardedMode;

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

    fn request(r: &ForwardRules, h: &mut HeaderMap, peer: &str, tls: bool, upgrade: bool) {
        apply_request(r, h, &conn(peer, tls), upgrade, &HeaderValue::from_static("upstream.internal"));
    }

    #[test]
    fn strips_connection_fields_and_what_they_name() {
        let r = rules(XForwardedMode::Off, &[]);
        let mut h = map(&[
            ("host", "app"),
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
        ]);
        request(&r, &mut h, "9.9.9.9", false, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn keeps_te_trailers_in_requests_only() {
        let r = rules(XForwardedMode::Off, &[]);
        let mut req = map(&[("host", "app"), ("te", "trailers")]);
        request(&r, &mut req, "9.9.9.9", false, false);
        assert_eq!(req["te"], "trailers");
        let mut resp = map(&[("te", "trailers")]);
        apply_response(&r, http::StatusCode::OK, &mut resp, false);
        assert!(resp.get("te").is_none());
    }

    #[test]
    fn upgrade_keeps_upgrade_headers() {
        let r = rules(XForwardedMode::Off, &[]);
        let mut h = map(&[
            ("host", "app"),
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade_request(&h));
        request(&r, &mut h, "9.9.9.9", false, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn responses_lose_what_connection_names() {
        let r = rules(XForwardedMode::Append, &[]);
        let mut h = map(&[
            ("connection", "x-forwarded-for, x-request-id, host"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "upstream's"),
            ("host", "h"),
            ("content-length", "3"),
        ]);
        apply_response(&r, http::StatusCode::OK, &mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["content-length"], "3");
    }

    #[test]
    fn append_mode() {
        let r = rules(XForwardedMode::Append, &[]);
        let mut h = map(&[
            ("host", "app.example"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        request(&r, &mut h, "9.9.9.9", false, false);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 9.9.9.9");
        // The untrusted peer's claim of https is not believed.
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
    }

    #[test]
    fn append_mode_trusted_peer_keeps_proto() {
        let r = rules(XForwardedMode::Append, &["10.0.0.0/8"]);
        let mut h = map(&[("host", "inner"), ("x-forwarded-proto", "https"), ("x-forwarded-host", "orig")]);
        request(&r, &mut h, "10.1.2.3", false, false);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "orig");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    }

    #[test]
    fn replace_mode_drops_underscore_spellings() {
        let r = rules(XForwardedMode::Replace, &[]);
        let mut h = map(&[("x-forwarded-for", "6.6.6.6"), ("x_forwarded_for", "7.7.7.7"), ("x-forwarded-port", "1")]);
        request(&r, &mut h, "9.9.9.9", true, false);
        assert_eq!(h["x-forwarded-for"], "9.9.9.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["host"], "upstream.internal");
        assert!(h.get("x_forwarded_for").is_none() && h.get("x-forwarded-port").is_none());
        // No Host from the client: the upstream's own is no original host to report.
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn off_mode_touches_nothing() {
        let r = rules(XForwardedMode::Off, &[]);
        let mut h = map(&[("host", "app"), ("x-forwarded-for", "6.6.6.6")]);
        request(&r, &mut h, "9.9.9.9", false, false);
        assert_eq!(h.len(), 2);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6");
    }

    #[test]
    fn client_ip_reads_the_map() {
        let r = rules(XForwardedMode::Append, &["10.0.0.0/8"]);
        let h = map(&[("x-forwarded-for", "1.2.3.4, 5.6.7.8"), ("x-forwarded-for", "10.0.0.7")]);
        assert_eq!(
            client_ip(&r, "10.0.0.1".parse().unwrap(), HeaderView::Map(&h)),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
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
