//! A request's header fields as token routes, auth hooks, limits and CORS read them: the
//! `http` header map of a request hyper parsed, or the head `server::h1` parsed, read in place.
//! A token request on the fast path builds no header map (a name parsed and a hash computed per
//! field, and one more per look-up, for the three or four fields a route reads by name).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::wire::fields::Field;
use crate::wire::request::RequestHead;

/// A request's fields, read by name.
#[derive(Clone, Copy)]
pub enum HeaderView<'a> {
    Map(&'a HeaderMap),
    /// A parsed head, and the request id tokengate generated for it (what `ensure_request_id`
    /// would have put in its map, in place of an unusable one the request sent).
    Head {
        head: &'a RequestHead,
        added: Added<'a>,
    },
}

impl<'a> HeaderView<'a> {
    /// The first value of `name`.
    pub fn get(self, name: &HeaderName) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// The first value of `name` as text, where `HeaderValue::to_str` would give it: visible
    /// ASCII and tabs only.
    pub fn get_str(self, name: &HeaderName) -> Option<&'a str> {
        self.get(name).and_then(text)
    }

    pub fn contains(self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Every value of `name`, in the order the request has them.
    pub fn get_all<'n>(self, name: &'n HeaderName) -> Values<'a, 'n> {
        match self {
            Self::Map(map) => Values::Map(map.get_all(name).iter()),
            Self::Head { head, added } => in_head(head, added, name.as_str().as_bytes()),
        }
    }

    /// The first value, as text, of a field a template names (`headers.NAME`, any letter case).
    pub fn get_named(self, name: &str) -> Option<&'a str> {
        match self {
            Self::Map(map) => map.get(name).and_then(|v| v.to_str().ok()),
            Self::Head { head, added } => in_head(head, added, name.as_bytes()).next().and_then(text),
        }
    }
}

type Added<'a> = Option<(&'a HeaderName, &'a HeaderValue)>;

fn in_head<'a, 'n>(head: &'a RequestHead, added: Added<'a>, name: &'n [u8]) -> Values<'a, 'n> {
    // The added id replaces what the request sent (`HeaderMap::insert`).
    let added = added.filter(|(added, _)| added.as_str().as_bytes().eq_ignore_ascii_case(name));
    let added = added.map(|(_, value)| value.as_bytes());
    let fields = if added.is_some() { &[][..] } else { &head.fields[..] };
    Values::Head { fields: fields.iter(), bytes: &head.bytes, name, added }
}

/// The values of one field name (`HeaderView::get_all`).
pub enum Values<'a, 'n> {
    Map(http::header::ValueIter<'a, HeaderValue>),
    Head { fields: std::slice::Iter<'a, Field>, bytes: &'a [u8], name: &'n [u8], added: Option<&'a [u8]> },
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Self::Map(values) => values.next().map(HeaderValue::as_bytes),
            Self::Head { fields, bytes, name, added } => {
                let bytes: &'a [u8] = bytes;
                match fields.find(|f| f.name(bytes).eq_ignore_ascii_case(name)) {
                    Some(f) => Some(f.value(bytes)),
                    None => added.take(),
                }
            }
        }
    }
}

/// `value` as text where `HeaderValue::to_str` would give it.
pub fn text(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| b == b'\t' || (32..127).contains(&b)) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::wire::request::Parsed;

    /// Read from the head or from the map `to_request` builds of it, a request's fields are
    /// the same, in the same order, the added request id in place of the one sent.
    #[test]
    fn a_head_reads_as_its_header_map() {
        let wire: &[u8] = b"POST /t?a=1 HTTP/1.1\r\nHost: up\r\nCookie: a=1\r\nX-Other: \xe9t\xe9\r\ncookie: b=2\r\n\
                    X-Request-Id: sent\r\nContent-Length: 2\r\nAuthorization: Bearer x\r\n\r\n{}";
        let mut buf = BytesMut::from(wire);
        let Parsed::Head(mut head) = RequestHead::parse(&buf) else { panic!("not a head") };
        head.take(&mut buf);
        let mut map = head.to_request(()).expect("http takes it").into_parts().0.headers;
        let id_name = HeaderName::from_static("x-request-id");
        let id = HeaderValue::from_static("generated");
        let from_head = HeaderView::Head { head: &head, added: Some((&id_name, &id)) };
        map.insert(id_name.clone(), id.clone());
        let from_map = HeaderView::Map(&map);
        for name in ["host", "cookie", "x-other", "content-length", "authorization", "x-request-id", "origin"] {
            let name = HeaderName::from_static(name);
            for view in [from_head, from_map] {
                let all: Vec<&[u8]> = view.get_all(&name).collect();
                let expected: Vec<&[u8]> = map.get_all(&name).iter().map(HeaderValue::as_bytes).collect();
                assert_eq!(all, expected, "{name}");
                assert_eq!(view.get_str(&name), map.get(&name).and_then(|v| v.to_str().ok()), "{name}");
                assert_eq!(view.contains(&name), map.contains_key(&name), "{name}");
            }
        }
        assert_eq!(from_head.get_all(&HeaderName::from_static("cookie")).count(), 2);
        assert_eq!(from_head.get_str(&HeaderName::from_static("x-other")), None, "obs-text is not text");
    }
}
