//! Header fields where they sit in a message head's bytes, and the few names tokengate acts on,
//! recognised once per field when the head is parsed.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// The names tokengate treats specially; everything else is `Other` and passes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    Other,
    Host,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    TransferEncoding,
    Upgrade,
    ContentLength,
    Expect,
    Trailer,
    Date,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    /// Any other `X-Forwarded-*` (`-Port`, `-Prefix`…), and underscore spellings of those.
    XForwardedOther,
    /// An underscore spelling of one of the three tokengate sets (`X_Forwarded_For`): CGI-style
    /// servers fold it into the same variable, so it never passes.
    XForwardedLookalike,
}

impl Known {
    /// The `http` crate's name of a field recognised here, where it has one: what
    /// `HeaderName::from_bytes` would give for any spelling of it, without parsing it again.
    pub fn standard_name(self) -> Option<HeaderName> {
        use http::header;
        Some(match self {
            Self::Host => header::HOST,
            Self::Connection => header::CONNECTION,
            Self::Te => header::TE,
            Self::TransferEncoding => header::TRANSFER_ENCODING,
            Self::Upgrade => header::UPGRADE,
            Self::ContentLength => header::CONTENT_LENGTH,
            Self::Expect => header::EXPECT,
            Self::Trailer => header::TRAILER,
            Self::Date => header::DATE,
            _ => return None,
        })
    }

    /// Recognises `name` (any letter case).
    pub fn of(name: &[u8]) -> Self {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            2 if is("te") => Self::Te,
            4 if is("host") => Self::Host,
            4 if is("date") => Self::Date,
            6 if is("expect") => Self::Expect,
            7 if is("upgrade") => Self::Upgrade,
            7 if is("trailer") => Self::Trailer,
            10 if is("connection") => Self::Connection,
            10 if is("keep-alive") => Self::KeepAlive,
            14 if is("content-length") => Self::ContentLength,
            16 if is("proxy-connection") => Self::ProxyConnection,
            17 if is("transfer-encoding") => Self::TransferEncoding,
            n if n > 12 && is_x_forwarded(&name[..12]) => {
                // Only the hyphenated spelling is the field itself; the others are look-alikes.
                let hyphens = name[1] == b'-' && name[11] == b'-';
                let rest = &name[12..];
                let ours = [&b"for"[..], b"proto", b"host"].iter().any(|n| rest.eq_ignore_ascii_case(n));
                match rest {
                    s if hyphens && s.eq_ignore_ascii_case(b"for") => Self::XForwardedFor,
                    s if hyphens && s.eq_ignore_ascii_case(b"proto") => Self::XForwardedProto,
                    s if hyphens && s.eq_ignore_ascii_case(b"host") => Self::XForwardedHost,
                    _ if ours => Self::XForwardedLookalike,
                    _ => Self::XForwardedOther,
                }
            }
            _ => Self::Other,
        }
    }
}

/// True when `name` is `field` spelled with an underscore where it has a hyphen, in any letter
/// case (`X_Request_Id` for `x-request-id`), but not `field` itself.
#[inline]
pub fn is_underscore_spelling(name: &[u8], field: &[u8]) -> bool {
    name.len() == field.len()
        && name.contains(&b'_')
        && name.iter().zip(field).all(|(n, f)| n.eq_ignore_ascii_case(f) || (*n == b'_' && *f == b'-'))
}

/// `x-forwarded-` or `x_forwarded_` (either separator), any letter case.
fn is_x_forwarded(prefix: &[u8]) -> bool {
    prefix.iter().map(|b| if *b == b'_' { b'-' } else { b.to_ascii_lowercase() }).eq(*b"x-forwarded-")
}

/// One field of a parsed head: where its name and value sit in the head's bytes.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    name: (u32, u32),
    value: (u32, u32),
    pub known: Known,
}

/// A head's fields, in the order they came.
pub type Fields = SmallVec<[Field; 24]>;

impl Field {
    pub fn name<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.name.0 as usize..self.name.1 as usize]
    }

    pub fn value<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.value_range()]
    }

    /// True for an `Other` field called `name` (any letter case): a name tokengate was
    /// configured with, such as the request id header.
    pub fn is(&self, head: &[u8], name: &HeaderName) -> bool {
        self.known == Known::Other && self.name(head).eq_ignore_ascii_case(name.as_str().as_bytes())
    }

    /// Where the value sits in the head, to slice it out of the head's `Bytes` without a copy.
    pub fn value_range(&self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// Records the fields httparse parsed out of `buf` (slices of it). Heads are capped far below
/// 4 GiB, so offsets fit in `u32`.
pub fn record(buf: &[u8], parsed: &[httparse::Header<'_>], out: &mut Fields) {
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start as u32, (start + s.len()) as u32)
    };
    for f in parsed {
        out.push(Field { name: span(f.name.as_bytes()), value: span(f.value), known: Known::of(f.name.as_bytes()) });
    }
}

/// Appends one `name: value` field line to a head under construction.
#[inline]
pub fn put(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_slice(name);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(b"\r\n");
}

/// The comma-separated tokens of a field value (RFC 9110 §5.6.1), trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

/// A `Content-Length` value: 1*DIGIT (RFC 9110 §8.6), no sign, no spaces, no overflow.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    // Folded by hand: `str::parse` after a UTF-8 check was ~60 instructions a field, twice on
    // every forwarded request.
    value.iter().try_fold(0u64, |n, b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// True when a `known` field of `head` lists `token` (any letter case).
pub fn has_token(head: &[u8], fields: &[Field], known: Known, token: &[u8]) -> bool {
    fields.iter().filter(|f| f.known == known).any(|f| tokens(f.value(head)).any(|t| t.eq_ignore_ascii_case(token)))
}

/// The field names `Connection` lists (RFC 9110 §7.6.1): they are for this hop only.
pub fn connection_named<'a>(head: &'a [u8], fields: &[Field]) -> SmallVec<[&'a [u8]; 4]> {
    fields.iter().filter(|f| f.known == Known::Connection).flat_map(|f| tokens(f.value(head))).collect()
}

/// The header map of a frozen `head`, its values sharing the head's bytes; `spare` slots are
/// left for fields the caller adds, so that adding them does not grow and rehash the map.
/// None when a name or value is one `http` refuses.
pub fn header_map(head: &Bytes, fields: &[Field], spare: usize) -> Option<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(fields.len() + spare);
    for f in fields {
        let name = match f.known.standard_name() {
            Some(name) => name,
            None => HeaderName::from_bytes(f.name(head)).ok()?,
        };
        let value = HeaderValue::from_maybe_shared(head.slice(f.value_range())).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A standard name stands for every spelling `Known::of` recognises as it.
    #[test]
    fn standard_names_are_what_parsing_any_spelling_gives() {
        let spellings: &[&[u8]] = &[
            b"Host",
            b"HOST",
            b"connection",
            b"TE",
            b"Transfer-Encoding",
            b"upgrade",
            b"Content-Length",
            b"EXPECT",
            b"Trailer",
            b"date",
            b"Keep-Alive",
            b"X-Forwarded-For",
            b"x-request-id",
        ];
        let mut standard = 0;
        for &name in spellings {
            if let Some(known) = Known::of(name).standard_name() {
                assert_eq!(Some(known), HeaderName::from_bytes(name).ok(), "{}", String::from_utf8_lossy(name));
                standard += 1;
            }
        }
        assert_eq!(standard, 10, "Keep-Alive, X-Forwarded-For and x-request-id have none");
    }

    #[test]
    fn recognises_names_in_any_case() {
        assert_eq!(Known::of(b"Content-Length"), Known::ContentLength);
        assert_eq!(Known::of(b"TE"), Known::Te);
        assert_eq!(Known::of(b"x-forwarded-for"), Known::XForwardedFor);
        assert_eq!(Known::of(b"X-Forwarded-Proto"), Known::XForwardedProto);
        assert_eq!(Known::of(b"x-forwarded-host"), Known::XForwardedHost);
        assert_eq!(Known::of(b"X_Forwarded_For"), Known::XForwardedLookalike);
        assert_eq!(Known::of(b"x_forwarded_host"), Known::XForwardedLookalike);
        assert_eq!(Known::of(b"x-forwarded_proto"), Known::XForwardedLookalike);
        assert_eq!(Known::of(b"x_forwarded_port"), Known::XForwardedOther);
        assert_eq!(Known::of(b"x-forwarded-port"), Known::XForwardedOther);
        assert_eq!(Known::of(b"x-forwarded-"), Known::Other);
        assert_eq!(Known::of(b"x-request-id"), Known::Other);
        assert_eq!(Known::of(b"hosts"), Known::Other);
    }

    #[test]
    fn lengths_are_digits_without_sign_space_or_overflow() {
        for (value, expected) in [
            ("0", Some(0)),
            ("42", Some(42)),
            ("007", Some(7)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("99999999999999999999", None),
            ("", None),
            ("+1", None),
            ("-1", None),
            (" 1", None),
            ("1 ", None),
            ("1,1", None),
            ("0x10", None),
            ("١", None),
        ] {
            assert_eq!(parse_length(value.as_bytes()), expected, "{value:?}");
            let by_std = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten();
            assert_eq!(parse_length(value.as_bytes()), by_std, "{value:?} as std parses it");
        }
    }

    #[test]
    fn tokens_are_trimmed_and_matched_in_any_case() {
        let head = b"Connection: Keep-Alive , x-hop,,close";
        let fields = [Field { name: (0, 10), value: (12, head.len() as u32), known: Known::Connection }];
        assert!(has_token(head, &fields, Known::Connection, b"close"));
        assert!(has_token(head, &fields, Known::Connection, b"X-HOP"));
        assert!(!has_token(head, &fields, Known::Upgrade, b"close"));
        let named: Vec<&[u8]> = connection_named(head, &fields).into_vec();
        assert_eq!(named, [&b"Keep-Alive"[..], b"x-hop", b"close"]);
    }
}
