//! A response head as an upstream sent it: parsed in place, its body's framing and keep-alive
//! worked out (RFC 9112 §6.3, §9.3), its fields left as bytes until someone needs a header map.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode, Version};

use super::decode::Decoder;
use super::fields::{self, Field, Fields, Known};

/// Most header fields accepted in a response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Largest response head accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why a response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head ({0})")]
    Malformed(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("invalid header field")]
    Field,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncoding10,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade,
    /// RFC 9110 §15: a status code is three digits, 100 to 599.
    #[error("status code {0} is outside 100-599")]
    Status(u16),
}

/// RFC 9110 §15: the status codes an HTTP message can carry.
pub fn is_valid_status(code: u16) -> bool {
    (100..=599).contains(&code)
}

/// A final response head, its body's framing, and whether the connection may carry another
/// request afterwards.
#[derive(Debug)]
pub struct ResponseHead {
    pub bytes: Bytes,
    pub status: StatusCode,
    pub version: Version,
    /// The reason phrase, when it is not the status code's canonical one.
    reason: Option<(u32, u32)>,
    pub fields: Fields,
    pub decoder: Decoder,
    pub keep_alive: bool,
}

/// Parses one response head from the front of `buf`, consuming it. `Ok(None)`: incomplete, or
/// an interim (1xx other than 101) response that was skipped; call again when more arrives.
/// Boxed where it is made (~560 bytes, its fields inline), as a request head is: it goes on
/// through the exchange into the relayed answer, and unboxed it was copied at each level.
pub fn parse(buf: &mut BytesMut, method: &Method) -> Result<Option<Box<ResponseHead>>, HeadError> {
    let mut fields = Fields::new();
    let (len, status, version, reason) = {
        let mut parsed = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut parsed)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
            Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(e)),
        };
        fields::record(buf, res.headers, &mut fields);
        let code = res.code.unwrap_or(0);
        if !is_valid_status(code) {
            return Err(HeadError::Status(code));
        }
        let status = StatusCode::from_u16(code).map_err(|_| HeadError::Status(code))?;
        let version = if res.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        let reason = res.reason.filter(|r| Some(*r) != status.canonical_reason() && !r.is_empty()).map(|r| {
            let start = r.as_ptr() as usize - buf.as_ptr() as usize;
            (start as u32, (start + r.len()) as u32)
        });
        (len, status, version, reason)
    };
    let bytes = buf.split_to(len).freeze();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(None);
    }
    let keep_alive = keep_alive(version, &bytes, &fields);
    let decoder = framing(status, version, method, &bytes, &fields)?;
    let keep_alive = keep_alive && decoder != Decoder::Close && status != StatusCode::SWITCHING_PROTOCOLS;
    Ok(Some(Box::new(ResponseHead { bytes, status, version, reason, fields, decoder, keep_alive })))
}

impl ResponseHead {
    /// The reason phrase the upstream sent, when it is not the canonical one.
    pub fn reason(&self) -> Option<&[u8]> {
        self.reason.map(|(start, end)| &self.bytes[start as usize..end as usize])
    }

    /// True when the body is framed by `Transfer-Encoding`: a `Content-Length` beside it must
    /// not be forwarded (RFC 9112 §6.3).
    pub fn chunked_wins(&self) -> bool {
        self.fields.iter().any(|f| f.known == Known::TransferEncoding)
    }

    /// The head as an `http::Response`, its values sharing the head's bytes; `spare` header
    /// slots are left for fields the caller adds.
    pub fn to_response(&self, spare: usize) -> Result<Response<()>, HeadError> {
        let drop_length = self.chunked_wins();
        let kept: Fields =
            self.fields.iter().filter(|f| !(drop_length && f.known == Known::ContentLength)).copied().collect();
        let headers = fields::header_map(&self.bytes, &kept, spare).ok_or(HeadError::Field)?;
        let mut response = Response::new(());
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = headers;
        if let Some(reason) = self.reason().and_then(|r| hyper::ext::ReasonPhrase::try_from(r.to_vec()).ok()) {
            response.extensions_mut().insert(reason);
        }
        Ok(response)
    }
}

/// RFC 9112 §6.3: how long the body is.
fn framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    head: &[u8],
    fields: &[Field],
) -> Result<Decoder, HeadError> {
    if matches!(status.as_u16(), 101 | 204 | 304) || *method == Method::HEAD {
        return Ok(Decoder::Length(0));
    }
    if let Some(last) = fields.iter().rev().find(|f| f.known == Known::TransferEncoding) {
        if version == Version::HTTP_10 {
            return Err(HeadError::TransferEncoding10);
        }
        let coding = last.value(head).rsplit(|b| *b == b',').next().unwrap_or_default();
        return Ok(if coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            Decoder::chunked()
        } else {
            Decoder::Close
        });
    }
    let mut length = None;
    for f in fields.iter().filter(|f| f.known == Known::ContentLength) {
        for item in f.value(head).split(|b| *b == b',') {
            let n = fields::parse_length(item.trim_ascii()).ok_or(HeadError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Decoder::Close, Decoder::Length))
}

/// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when told to keep it.
fn keep_alive(version: Version, head: &[u8], fields: &[Field]) -> bool {
    let mut keep = version == Version::HTTP_11;
    for f in fields.iter().filter(|f| f.known == Known::Connection) {
        if !f.value(head).is_ascii() {
            return false;
        }
        for token in fields::tokens(f.value(head)) {
            if token.eq_ignore_ascii_case(b"close") {
                return false;
            }
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &str, method: Method) -> Result<Option<Box<ResponseHead>>, HeadError> {
        parse(&mut BytesMut::from(wire), &method)
    }

    fn response(wire: &str) -> Response<()> {
        head(wire, Method::GET).unwrap().unwrap().to_response(0).unwrap()
    }

    #[test]
    fn parses_fields_framing_and_keep_alive() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!(h.decoder, Decoder::Length(3));
        assert!(h.keep_alive);
        assert!(h.reason().is_none());
        let resp = h.to_response(0).unwrap();
        assert_eq!(resp.headers().get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(resp.extensions().get::<hyper::ext::ReasonPhrase>().is_none());

        let wire = "HTTP/1.1 200 Fine\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n";
        let h = head(wire, Method::GET).unwrap().unwrap();
        assert_eq!(h.decoder, Decoder::chunked());
        assert_eq!(h.reason(), Some(&b"Fine"[..]));
        let resp = response(wire);
        assert!(resp.headers().get("content-length").is_none(), "chunked wins over Content-Length");
        assert_eq!(resp.extensions().get::<hyper::ext::ReasonPhrase>().unwrap().as_bytes(), b"Fine");

        let h = head("HTTP/1.0 200 OK\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!((h.decoder, h.keep_alive), (Decoder::Close, false));
        let h = head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", Method::GET);
        assert!(h.unwrap().unwrap().keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", Method::GET);
        assert!(!h.unwrap().unwrap().keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD).unwrap().unwrap();
        assert_eq!(h.decoder, Decoder::Length(0));
    }

    #[test]
    fn skips_interim_responses_and_waits_for_more() {
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert!(parse(&mut buf, &Method::GET).unwrap().is_none());
        let h = parse(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(h.status, 204);
        assert!(head("HTTP/1.1 200 OK\r\nContent-Le", Method::GET).unwrap().is_none());
    }

    #[test]
    fn refuses_ambiguous_lengths_and_garbage() {
        let err = |w| head(w, Method::GET).unwrap_err();
        assert_eq!(err("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"), HeadError::ContentLength);
        assert_eq!(err("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), HeadError::ContentLength);
        assert_eq!(err("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n"), HeadError::ContentLength);
        assert_eq!(err("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), HeadError::TransferEncoding10);
        assert!(matches!(err("SMTP ready\r\n\r\n"), HeadError::Malformed(_)));
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(err(&huge), HeadError::TooLarge);
    }
}
