//! A request head as a client sent it: parsed in place, its fields left as bytes. Forwarded
//! requests are relayed from it as they are; the others become an `http::Request`.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};

use super::fields::{self, Fields};

/// Most header fields accepted in a request head (hyper's default too).
pub const MAX_HEADERS: usize = 100;

/// Header slots left free in a request's header map for the fields tokengate adds
/// (`X-Forwarded-*`, the request id): adding them then neither grows nor rehashes it.
pub const ADDED_FIELDS: usize = 6;

/// A parsed request head. Until `take`, its spans point into the buffer it was parsed from.
#[derive(Debug)]
pub struct RequestHead {
    pub bytes: Bytes,
    len: usize,
    pub method: Method,
    target: (u32, u32),
    pub version: Version,
    pub fields: Fields,
}

/// What the front of a buffer holds.
pub enum Parsed {
    Partial,
    /// Not a request head httparse accepts (or a method `http` refuses).
    Invalid,
    /// Boxed where it is made (~580 bytes, its fields inline): a head goes on into its
    /// request's future, and unboxed it was copied at each move on the way (four per request).
    Head(Box<RequestHead>),
}

impl RequestHead {
    /// Parses the request head at the front of `buf` without consuming it.
    pub fn parse(buf: &[u8]) -> Parsed {
        let mut fields = Fields::new();
        let mut parsed = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut parsed)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Invalid,
        };
        let Ok(method) = Method::from_bytes(req.method.unwrap_or("").as_bytes()) else { return Parsed::Invalid };
        fields::record(buf, req.headers, &mut fields);
        let path = req.path.unwrap_or("/");
        let start = path.as_ptr() as usize - buf.as_ptr() as usize;
        let version = if req.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        Parsed::Head(Box::new(Self {
            bytes: Bytes::new(),
            len,
            method,
            target: (start as u32, (start + path.len()) as u32),
            version,
            fields,
        }))
    }

    /// The length of the head in the buffer it was parsed from.
    pub fn head_len(&self) -> usize {
        self.len
    }

    /// Consumes the head's bytes from the front of `buf`, which it was parsed from.
    pub fn take(&mut self, buf: &mut BytesMut) {
        self.bytes = buf.split_to(self.len).freeze();
    }

    /// The request-target, as sent.
    pub fn target(&self) -> &[u8] {
        self.target_in(&self.bytes)
    }

    /// The request-target in `bytes`, the buffer the head was parsed from (before `take`) or
    /// its own bytes (after).
    pub fn target_in<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.target.0 as usize..self.target.1 as usize]
    }

    /// The target's path (without the query).
    pub fn path(&self) -> &str {
        let target = self.target();
        let end = target.iter().position(|b| *b == b'?').unwrap_or(target.len());
        // httparse accepts only visible ASCII in a target.
        std::str::from_utf8(&target[..end]).unwrap_or("")
    }

    /// The target's query (after `?`; empty without one), as `Uri::query` gives it.
    pub fn query(&self) -> &str {
        let target = self.target();
        let query = target.iter().position(|b| *b == b'?').map_or(&[][..], |i| &target[i + 1..]);
        std::str::from_utf8(query).unwrap_or("")
    }

    /// True for an origin-form target (`/path?query`) that `http` would accept too, so that
    /// relayed requests and the others refuse the same targets.
    pub fn is_origin_form(&self) -> bool {
        self.target().first() == Some(&b'/')
            && PathAndQuery::from_maybe_shared(self.bytes.slice(self.target.0 as usize..self.target.1 as usize)).is_ok()
    }

    /// The head as an `http::Request` with `body` (none: the head says there is none), its
    /// values sharing the head's bytes. None when `http` refuses the target or a field.
    pub fn to_request<B>(&self, body: B) -> Option<Request<B>> {
        let target = self.bytes.slice(self.target.0 as usize..self.target.1 as usize);
        let uri = Uri::from_maybe_shared(target).ok()?;
        let headers = fields::header_map(&self.bytes, &self.fields, ADDED_FIELDS)?;
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = headers;
        Some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fields::Known;

    fn head(wire: &str) -> Box<RequestHead> {
        let mut buf = BytesMut::from(wire);
        match RequestHead::parse(&buf) {
            Parsed::Head(mut head) => {
                head.take(&mut buf);
                head
            }
            _ => panic!("not a head: {wire:?}"),
        }
    }

    #[test]
    fn keeps_target_and_fields_as_sent() {
        let h = head("GET /a%2Fb/../c?x=1&x=2 HTTP/1.1\r\nHost: up\r\nX-Rep: 1\r\nx-rep: 2\r\n\r\nrest");
        assert_eq!(h.target(), b"/a%2Fb/../c?x=1&x=2");
        assert_eq!(h.path(), "/a%2Fb/../c");
        assert!(h.is_origin_form());
        let names: Vec<&[u8]> = h.fields.iter().map(|f| f.name(&h.bytes)).collect();
        assert_eq!(names, [&b"Host"[..], b"X-Rep", b"x-rep"]);
        assert_eq!(h.fields[0].known, Known::Host);
        let req = h.to_request(()).unwrap();
        assert_eq!(req.uri(), "/a%2Fb/../c?x=1&x=2");
        assert_eq!(req.headers().get_all("x-rep").iter().collect::<Vec<_>>(), ["1", "2"]);
    }

    #[test]
    fn other_targets_are_not_origin_form() {
        assert!(!head("GET http://up/x HTTP/1.1\r\n\r\n").is_origin_form());
        assert!(!head("OPTIONS * HTTP/1.1\r\n\r\n").is_origin_form());
        // httparse takes it, `http` does not: neither path may relay it.
        let h = head("GET /a<b HTTP/1.1\r\n\r\n");
        assert!(!h.is_origin_form() && h.to_request(()).is_none());
    }

    #[test]
    fn partial_and_invalid() {
        assert!(matches!(RequestHead::parse(b"GET / HTTP/1.1\r\nHo"), Parsed::Partial));
        assert!(matches!(RequestHead::parse(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), Parsed::Invalid));
    }
}
