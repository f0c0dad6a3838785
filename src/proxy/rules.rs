//! SPEC §3, written once: what happens to each field of a forwarded message and which fields
//! tokengate adds, in a fixed order. The rule is a table from (direction, field kind,
//! `x_forwarded` mode) to an [`Action`]; a [`RequestPlan`] or [`ResponsePlan`] walks one
//! message's fields through it. The byte relay (`relay`) and the `http`-types path (`headers`)
//! are thin adapters over the same plans, so HTTP/1.1 on either engine and HTTP/2 forward alike.
//!
//! ```text
//! field kind           request                                response
//! hop-by-hop (§7.6.1)  drop (Upgrade kept for an upgrade)     drop (Upgrade kept for an upgrade)
//! TE                   fold → `te: trailers` if one asked     drop
//! named by Connection  drop, unless tokengate adds it here    drop (the request id is ours anyway)
//! X-Forwarded-*        off: keep · replace: drop, add ours    keep
//!                      append: For folded into ours, Proto/Host kept from a trusted peer only
//! look-alikes          drop (X_Forwarded_* unless off; the request id's always)   keep
//! request id           keep the client's usable one, else ours                    drop, add ours
//! ```

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use ipnet::IpNet;
use smallvec::SmallVec;

use crate::config::{ForwardingConfig, XForwardedMode};
use crate::wire::fields::{self, Known};

/// Forwarding rules compiled from `forwarding:` once per config.
#[derive(Clone, Debug)]
pub struct ForwardRules {
    pub mode: XForwardedMode,
    pub trusted: Vec<IpNet>,
    pub request_id: HeaderName,
}

/// What happens to one field of a forwarded message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Passed on as it came.
    Keep,
    /// Not passed on.
    Drop,
    /// Not passed on as it came: its value goes into a field tokengate adds in its place.
    Fold,
}

/// How the rules see a field's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// RFC 9110 §7.6.1: `Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`.
    HopByHop,
    /// Hop-by-hop too, but what a protocol switch is asked with.
    Upgrade,
    Te,
    Host,
    ContentLength,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    /// Any other `X-Forwarded-*` (`-Port`, `-Prefix`…).
    XForwardedOther,
    /// An underscore spelling of a field tokengate sets (`X_Forwarded_For`, `X_Request_Id`):
    /// CGI-style servers fold it into the same variable as the real one.
    Lookalike,
    /// A look-alike of one of the three `X-Forwarded-*` tokengate sets.
    XForwardedLookalike,
    RequestId,
    Other,
}

/// What the request rules depend on besides the field itself.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts {
    /// The peer is a trusted proxy (`forwarding.trusted_proxies`).
    pub trusted: bool,
    /// The request asks to switch protocols and the tunnel needs `Upgrade`.
    pub upgrade: bool,
    /// The client's request id was unusable: tokengate adds its own.
    pub id_generated: bool,
}

/// What the response rules depend on besides the field itself.
#[derive(Clone, Copy, Debug)]
pub struct ResponseFacts {
    /// A 101 answering an upgrade.
    pub upgrade: bool,
    /// The message has no content (1xx, 204) or chunked framing wins over a length (RFC 9112
    /// §6.3): a `Content-Length` must not reach the client, whose framing would follow it.
    pub no_length: bool,
}

/// The request id of a forwarded request, chosen once.
#[derive(Clone, Debug)]
pub struct RequestId {
    pub value: HeaderValue,
    /// Made by tokengate: the request goes upstream with it added in place of the client's.
    pub generated: bool,
}

/// The longest client request id kept (longer ones are replaced, not echoed or logged whole).
pub const MAX_REQUEST_ID: usize = 200;

/// A client's request id is kept when it is 1 to 200 visible ASCII characters.
pub fn is_usable_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The request id: the one the client sent when usable, else a new one.
pub fn choose_request_id(sent: Option<HeaderValue>) -> RequestId {
    match sent.filter(|v| is_usable_request_id(v.as_bytes())) {
        Some(value) => RequestId { value, generated: false },
        None => RequestId { value: new_request_id(), generated: true },
    }
}

/// A new request id: a UUID v4.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // Hyphenated hex is always a valid field value.
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"))
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

    /// True when `peer` is a trusted proxy: only one may tell us the original scheme and host.
    pub fn trusts_peer(&self, peer: IpAddr) -> bool {
        !self.trusted.is_empty() && self.is_trusted(peer)
    }

    /// The caller's address: the socket peer, unless that peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` entry that is not itself trusted. `forwarded_for` holds the
    /// `X-Forwarded-For` values in the order they came.
    pub fn client_ip<'a>(&self, peer: IpAddr, forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut last = peer;
        for value in forwarded_for.rev() {
            for item in value.rsplit(|b| *b == b',') {
                let Some(ip) = std::str::from_utf8(item.trim_ascii()).ok().and_then(|s| s.parse::<IpAddr>().ok())
                else {
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

    /// How the rules see a field called `name`, recognised as `known` when its head was parsed.
    #[inline]
    pub fn kind(&self, known: Known, name: &[u8]) -> Kind {
        match known {
            Known::Connection
            | Known::KeepAlive
            | Known::ProxyConnection
            | Known::TransferEncoding
            | Known::Upgrade
            | Known::Te => hop_by_hop(known),
            Known::Host => Kind::Host,
            Known::ContentLength => Kind::ContentLength,
            Known::XForwardedFor => Kind::XForwardedFor,
            Known::XForwardedProto => Kind::XForwardedProto,
            Known::XForwardedHost => Kind::XForwardedHost,
            Known::XForwardedOther => Kind::XForwardedOther,
            Known::XForwardedLookalike => Kind::XForwardedLookalike,
            Known::Other => {
                let id = self.request_id.as_str().as_bytes();
                // Both comparisons need the request id's length: most names fail at that.
                if name.len() != id.len() {
                    Kind::Other
                } else if name.eq_ignore_ascii_case(id) {
                    Kind::RequestId
                } else if fields::is_underscore_spelling(name, id) {
                    Kind::Lookalike
                } else {
                    Kind::Other
                }
            }
            Known::Expect | Known::Trailer | Known::Date => Kind::Other,
        }
    }

    /// The request half of the table. `named`: a `Connection` field lists this one.
    pub fn request_action(&self, kind: Kind, named: bool, facts: &RequestFacts) -> Action {
        use XForwardedMode::{Append, Off, Replace};
        match (kind, self.mode) {
            // RFC 9110 §10.1.4: `TE: trailers` is how a client says it accepts trailers, and
            // the upstream sends them only when asked. Several `TE` fields are one list.
            (Kind::Te, _) => Action::Fold,
            (Kind::Upgrade, _) if facts.upgrade => Action::Keep,
            (Kind::HopByHop | Kind::Upgrade, _) => Action::Drop,
            // RFC 9110 §7.6.1: what `Connection` names is for this hop only, except what
            // tokengate adds itself: a client must not make a field it relies on disappear.
            _ if named && !self.adds_to_requests(kind) => Action::Drop,
            (Kind::Lookalike, _) => Action::Drop,
            (Kind::XForwardedLookalike, Append | Replace) => Action::Drop,
            (Kind::XForwardedFor | Kind::XForwardedProto | Kind::XForwardedHost | Kind::XForwardedOther, Replace) => {
                Action::Drop
            }
            (Kind::XForwardedFor, Append) => Action::Fold,
            (Kind::XForwardedProto | Kind::XForwardedHost, Append) if !facts.trusted => Action::Drop,
            (Kind::RequestId, _) if facts.id_generated => Action::Drop,
            (_, Off | Append | Replace) => Action::Keep,
        }
    }

    /// The response half of the table. `named`: a `Connection` field lists this one.
    pub fn response_action(&self, kind: Kind, named: bool, facts: &ResponseFacts) -> Action {
        match kind {
            Kind::Upgrade if facts.upgrade => Action::Keep,
            Kind::HopByHop | Kind::Upgrade | Kind::Te => Action::Drop,
            // The client gets the request's id, whatever the upstream answered with.
            Kind::RequestId => Action::Drop,
            Kind::ContentLength if facts.no_length => Action::Drop,
            _ if named => Action::Drop,
            _ => Action::Keep,
        }
    }

    /// RFC 9110 §6.5.1: whether a client's trailer field called `name` goes upstream. Never the
    /// fields that frame, route or authenticate a message, that modify how it is handled, or
    /// that tokengate sets itself: a trailer arrives after the decisions they feed were made.
    pub fn is_forwardable_trailer(&self, name: &HeaderName) -> bool {
        let bytes = name.as_str().as_bytes();
        match self.kind(Known::of(bytes), bytes) {
            Kind::Other => !NEVER_TRAILERS.contains(&name.as_str()),
            _ => false,
        }
    }

    /// Drops the trailer fields that may not go upstream (`is_forwardable_trailer`).
    pub fn strip_trailers(&self, trailers: &mut http::HeaderMap) {
        let doomed: SmallVec<[HeaderName; 2]> =
            trailers.keys().filter(|n| !self.is_forwardable_trailer(n)).cloned().collect();
        for name in doomed {
            trailers.remove(&name);
        }
    }

    /// The fields tokengate adds to every request it forwards, so no `Connection` may remove.
    fn adds_to_requests(&self, kind: Kind) -> bool {
        match kind {
            Kind::Host | Kind::RequestId => true,
            Kind::XForwardedFor | Kind::XForwardedProto | Kind::XForwardedHost => self.mode != XForwardedMode::Off,
            _ => false,
        }
    }
}

/// True when a request asks for a tunnel tokengate opens: `Connection: upgrade` and an `Upgrade`
/// listing `websocket` (RFC 6455 §4.1). Any other protocol (`h2c`, `TLS/1.2`…) is not
/// tunnelled, as nginx does without a map: inside such a tunnel requests would skip token
/// routes, limits and `X-Forwarded-For`. Its request goes upstream as an ordinary one, its
/// `Upgrade` dropped like any hop-by-hop field.
pub fn is_tunnelled_upgrade<'v>(
    connection: impl Iterator<Item = &'v [u8]>,
    mut upgrade: impl Iterator<Item = &'v [u8]>,
) -> bool {
    let asked = named(connection).iter().any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    asked && upgrade.any(|v| fields::tokens(v).any(|p| protocol_name(p).eq_ignore_ascii_case(b"websocket")))
}

/// A protocol of `Upgrade` without its version (`websocket/13` → `websocket`).
fn protocol_name(protocol: &[u8]) -> &[u8] {
    protocol.split(|b| *b == b'/').next().unwrap_or(protocol).trim_ascii()
}

/// Names never forwarded as trailers besides the hop-by-hop, framing and tokengate's own ones
/// (RFC 9110 §6.5.1): routing, authentication, request modifiers, content metadata.
const NEVER_TRAILERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "www-authenticate",
    "proxy-authenticate",
    "expect",
    "max-forwards",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "cache-control",
    "pragma",
    "content-type",
    "content-encoding",
    "content-range",
    "trailer",
    "forwarded",
    "via",
];

/// RFC 9110 §7.6.1, the one list: the fields for one connection only, whatever `Connection`
/// names besides. `Upgrade` (kept for a tunnel) and `TE` (`trailers` passed on) have rules of
/// their own in the table.
fn hop_by_hop(known: Known) -> Kind {
    match known {
        Known::Upgrade => Kind::Upgrade,
        Known::Te => Kind::Te,
        Known::Connection | Known::KeepAlive | Known::ProxyConnection | Known::TransferEncoding => Kind::HopByHop,
        _ => Kind::Other,
    }
}

/// The field names `Connection` values list (RFC 9110 §7.6.1).
type Named<'v> = SmallVec<[&'v [u8]; 4]>;

fn named<'v>(connection: impl Iterator<Item = &'v [u8]>) -> Named<'v> {
    let mut out = Named::new();
    for value in connection {
        for token in fields::tokens(value) {
            out.push(token);
        }
    }
    out
}

fn is_named(named: &Named<'_>, name: &[u8]) -> bool {
    named.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// One request's walk through the table: each field decided in turn, then the fields
/// tokengate adds. `'v` is the lifetime of the message's names and values.
pub struct RequestPlan<'r, 'v> {
    rules: &'r ForwardRules,
    facts: RequestFacts,
    named: Named<'v>,
    host: Option<&'v [u8]>,
    prior_for: SmallVec<[&'v [u8]; 2]>,
    trailers: bool,
    kept_proto: bool,
    kept_host: bool,
}

impl<'r, 'v> RequestPlan<'r, 'v> {
    /// `connection`: the values of the request's `Connection` fields.
    pub fn new(rules: &'r ForwardRules, facts: RequestFacts, connection: impl Iterator<Item = &'v [u8]>) -> Self {
        Self {
            rules,
            facts,
            named: named(connection),
            host: None,
            prior_for: SmallVec::new(),
            trailers: false,
            kept_proto: false,
            kept_host: false,
        }
    }

    /// Decides one field, in the order the fields came; true when it goes upstream as it came.
    #[inline]
    pub fn keep(&mut self, known: Known, name: &[u8], value: &'v [u8]) -> bool {
        let kind = self.rules.kind(known, name);
        let named = !self.named.is_empty() && is_named(&self.named, name);
        match self.rules.request_action(kind, named, &self.facts) {
            Action::Keep => {
                match kind {
                    Kind::Host => self.host = Some(value),
                    Kind::XForwardedProto => self.kept_proto = true,
                    Kind::XForwardedHost => self.kept_host = true,
                    _ => {}
                }
                true
            }
            Action::Fold => {
                match kind {
                    Kind::Te => self.trailers |= fields::tokens(value).any(|t| t.eq_ignore_ascii_case(b"trailers")),
                    Kind::XForwardedFor => self.prior_for.push(value),
                    _ => {}
                }
                false
            }
            Action::Drop => false,
        }
    }

    /// The fields tokengate adds once every field was decided, in this order: `Host` when the
    /// request had none (`fallback_host`), `TE: trailers`, `X-Forwarded-For`, `-Proto`,
    /// `-Host`, the request id when tokengate made it, `Connection: upgrade` for an upgrade.
    /// `add` gets each name with its value in pieces, to be joined with `, `.
    #[inline]
    pub fn added(
        &self,
        fallback_host: &[u8],
        peer: &PeerFacts<'_>,
        id: &HeaderValue,
        mut add: impl FnMut(&[u8], &[&[u8]]),
    ) {
        if self.host.is_none() {
            add(b"host", &[fallback_host]);
        }
        if self.trailers {
            add(b"te", &[b"trailers"]);
        }
        let proto: &[u8] = if peer.tls { b"https" } else { b"http" };
        match self.rules.mode {
            XForwardedMode::Off => {}
            XForwardedMode::Replace => {
                add(b"x-forwarded-for", &[peer.ip]);
                add(b"x-forwarded-proto", &[proto]);
                if let Some(host) = self.host {
                    add(b"x-forwarded-host", &[host]);
                }
            }
            XForwardedMode::Append => {
                if self.prior_for.is_empty() {
                    add(b"x-forwarded-for", &[peer.ip]);
                } else {
                    let mut chain: SmallVec<[&[u8]; 3]> = self.prior_for.iter().copied().collect();
                    chain.push(peer.ip);
                    add(b"x-forwarded-for", &chain);
                }
                if !self.kept_proto {
                    add(b"x-forwarded-proto", &[proto]);
                }
                if let (Some(host), false) = (self.host, self.kept_host) {
                    add(b"x-forwarded-host", &[host]);
                }
            }
        }
        if self.facts.id_generated {
            add(self.rules.request_id.as_str().as_bytes(), &[id.as_bytes()]);
        }
        if self.facts.upgrade {
            add(b"connection", &[b"upgrade"]);
        }
    }
}

/// What the added fields say about the connection a request came on.
pub struct PeerFacts<'a> {
    /// The peer's address as text.
    pub ip: &'a [u8],
    pub tls: bool,
}

/// One response's walk through the table.
pub struct ResponsePlan<'r, 'v> {
    rules: &'r ForwardRules,
    facts: ResponseFacts,
    named: Named<'v>,
}

impl<'r, 'v> ResponsePlan<'r, 'v> {
    /// `connection`: the values of the response's `Connection` fields.
    pub fn new(rules: &'r ForwardRules, facts: ResponseFacts, connection: impl Iterator<Item = &'v [u8]>) -> Self {
        Self { rules, facts, named: named(connection) }
    }

    /// True when the field goes to the client as it came.
    #[inline]
    pub fn keep(&self, known: Known, name: &[u8]) -> bool {
        // The response table treats look-alikes as any other field: no need to look for them.
        let kind = match known {
            Known::Other if name.eq_ignore_ascii_case(self.rules.request_id.as_str().as_bytes()) => Kind::RequestId,
            Known::Other => Kind::Other,
            known => self.rules.kind(known, name),
        };
        let named = !self.named.is_empty() && is_named(&self.named, name);
        self.rules.response_action(kind, named, &self.facts) == Action::Keep
    }

    /// The fields tokengate adds, in this order: the request id (`id`, when the adapter adds it
    /// here), `Connection: upgrade` for an upgrade.
    pub fn added(&self, id: Option<&HeaderValue>, mut add: impl FnMut(&[u8], &[&[u8]])) {
        if let Some(id) = id {
            add(self.rules.request_id.as_str().as_bytes(), &[id.as_bytes()]);
        }
        if self.facts.upgrade {
            add(b"connection", &[b"upgrade"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(mode: XForwardedMode, trusted: &[&str]) -> ForwardRules {
        ForwardRules {
            mode,
            trusted: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            request_id: HeaderName::from_static("x-request-id"),
        }
    }

    const PLAIN: RequestFacts = RequestFacts { trusted: false, upgrade: false, id_generated: false };
    const ANSWER: ResponseFacts = ResponseFacts { upgrade: false, no_length: false };

    #[test]
    fn connection_may_name_away_only_what_tokengate_does_not_add() {
        let r = rules(XForwardedMode::Append, &[]);
        for kind in [Kind::Host, Kind::RequestId, Kind::XForwardedFor] {
            assert_ne!(r.request_action(kind, true, &PLAIN), Action::Drop, "{kind:?}");
        }
        assert_eq!(r.request_action(Kind::Other, true, &PLAIN), Action::Drop);
        // With `off`, tokengate adds no X-Forwarded-*: the client's may be named away.
        let off = rules(XForwardedMode::Off, &[]);
        assert_eq!(off.request_action(Kind::XForwardedFor, true, &PLAIN), Action::Drop);
        // Responses: tokengate adds no X-Forwarded-*, so Connection removes them there.
        assert_eq!(r.response_action(Kind::XForwardedFor, true, &ANSWER), Action::Drop);
        assert_eq!(r.response_action(Kind::Host, true, &ANSWER), Action::Drop);
        assert_eq!(r.response_action(Kind::XForwardedFor, false, &ANSWER), Action::Keep);
    }

    #[test]
    fn request_plan_adds_in_a_fixed_order() {
        let r = rules(XForwardedMode::Append, &[]);
        let facts = RequestFacts { id_generated: true, ..PLAIN };
        let mut plan = RequestPlan::new(&r, facts, [&b"x-hop"[..]].into_iter());
        let fields: [(&[u8], &[u8]); 5] = [
            (b"host", b"app.example"),
            (b"te", b"gzip, trailers"),
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"x-hop", b"1"),
            (b"x-request-id", b"\x01bad"),
        ];
        let kept: Vec<&[u8]> = fields.iter().filter(|(n, v)| plan.keep(Known::of(n), n, v)).map(|(n, _)| *n).collect();
        assert_eq!(kept, [&b"host"[..]]);
        let id = HeaderValue::from_static("new-id");
        let mut added = Vec::new();
        plan.added(b"fallback", &PeerFacts { ip: b"9.9.9.9", tls: true }, &id, |n, v| {
            added.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(&v.join(&b", "[..])).into_owned(),
            ))
        });
        let expect = [
            ("te", "trailers"),
            ("x-forwarded-for", "1.1.1.1, 9.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example"),
            ("x-request-id", "new-id"),
        ];
        assert_eq!(added, expect.map(|(n, v)| (n.to_owned(), v.to_owned())));
    }

    #[test]
    fn client_ip_believes_only_trusted_peers() {
        let r = rules(XForwardedMode::Append, &["10.0.0.0/8"]);
        let xff = [&b"1.2.3.4, 5.6.7.8"[..], b"10.0.0.7"];
        assert_eq!(r.client_ip("10.0.0.1".parse().unwrap(), xff.into_iter()), "5.6.7.8".parse::<IpAddr>().unwrap());
        assert_eq!(r.client_ip("8.8.8.8".parse().unwrap(), xff.into_iter()), "8.8.8.8".parse::<IpAddr>().unwrap());
        let junk = [&b"not-an-ip"[..]];
        assert_eq!(r.client_ip("10.0.0.1".parse().unwrap(), junk.into_iter()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn request_id_kept_or_generated() {
        let kept = choose_request_id(Some(HeaderValue::from_static("abc")));
        assert!(!kept.generated && kept.value == "abc");
        let made = choose_request_id(Some(HeaderValue::from_static("a b")));
        assert!(made.generated && made.value.len() == 36);
        assert!(choose_request_id(None).generated);
    }
}
