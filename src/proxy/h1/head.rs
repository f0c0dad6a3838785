//! Message heads on the wire: the request head tokengate writes, the response head it reads.

use std::mem::MaybeUninit;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use smallvec::SmallVec;

use super::decode::Decoder;

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
}

/// Appends `req`'s head and `body` to `dst`: origin-form target, fields in order, and a
/// `Content-Length` when the body is not empty and the request did not carry one.
pub fn encode_request<B>(req: &Request<B>, body: &[u8], dst: &mut BytesMut) {
    dst.put_slice(req.method().as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    dst.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    if !body.is_empty() && !req.headers().contains_key(header::CONTENT_LENGTH) {
        dst.put_slice(b"content-length: ");
        dst.put_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        dst.put_slice(b"\r\n");
    }
    dst.put_slice(b"\r\n");
    dst.put_slice(body);
}

/// A final response head, its body's framing, and whether the connection may carry another
/// request afterwards.
#[derive(Debug)]
pub struct Head {
    pub response: Response<()>,
    pub decoder: Decoder,
    pub keep_alive: bool,
}

/// Parses one response head from the front of `buf`, consuming it. `Ok(None)`: incomplete, or
/// an interim (1xx other than 101) response that was skipped; call again when more arrives.
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, HeadError> {
    let mut fields = FieldSpans::new();
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
        record_fields(buf, res.headers, &mut fields).map_err(|()| HeadError::Field)?;
        let status = StatusCode::from_u16(res.code.unwrap_or(0)).map_err(|_| HeadError::Field)?;
        let version = if res.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        let reason = res
            .reason
            .filter(|r| Some(*r) != status.canonical_reason() && !r.is_empty())
            .map(|r| r.as_bytes().to_vec());
        (len, status, version, reason)
    };
    let head = buf.split_to(len).freeze();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(None);
    }

    let mut headers = header_map(&head, fields).map_err(|()| HeadError::Field)?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    if let Some(reason) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
        response.extensions_mut().insert(reason);
    }
    let keep_alive = keep_alive(version, &headers);
    let decoder = framing(status, version, method, &headers)?;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // The chunked framing wins; a Content-Length beside it must not be forwarded (RFC 9112 §6.3).
        headers.remove(header::CONTENT_LENGTH);
    }
    *response.headers_mut() = headers;
    Ok(Some(Head { keep_alive: keep_alive && decoder != Decoder::Close && status != 101, response, decoder }))
}

/// Each field's name, and its value's position in the head, so that the values can be sliced
/// out of the frozen head without copying.
pub type FieldSpans = SmallVec<[(HeaderName, usize, usize); 32]>;

/// Records `fields`, parsed by httparse out of `buf`, as `FieldSpans`.
pub fn record_fields(buf: &[u8], fields: &[httparse::Header<'_>], out: &mut FieldSpans) -> Result<(), ()> {
    let base = buf.as_ptr() as usize;
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ())?;
        let start = f.value.as_ptr() as usize - base;
        out.push((name, start, start + f.value.len()));
    }
    Ok(())
}

/// Room left in a parsed header map for the fields tokengate adds (`X-Forwarded-*`, the
/// request id), so that adding them does not grow and rehash the map.
const ADDED_FIELDS: usize = 6;

/// The header map of a frozen `head`, its values sharing the head's bytes.
pub fn header_map(head: &bytes::Bytes, mut fields: FieldSpans) -> Result<HeaderMap, ()> {
    let mut headers = HeaderMap::with_capacity(fields.len() + ADDED_FIELDS);
    for (name, start, end) in fields.drain(..) {
        headers.append(name, HeaderValue::from_maybe_shared(head.slice(start..end)).map_err(|_| ())?);
    }
    Ok(headers)
}

/// RFC 9112 §6.3: how long the body is.
fn framing(status: StatusCode, version: Version, method: &Method, h: &HeaderMap) -> Result<Decoder, HeadError> {
    if matches!(status.as_u16(), 101 | 204 | 304) || *method == Method::HEAD {
        return Ok(Decoder::Length(0));
    }
    if let Some(te) = h.get(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(HeadError::TransferEncoding10);
        }
        let last = h.get_all(header::TRANSFER_ENCODING).iter().next_back().unwrap_or(te);
        let chunked = last
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked { Decoder::chunked() } else { Decoder::Close });
    }
    let mut length = None;
    for value in h.get_all(header::CONTENT_LENGTH) {
        for item in value.to_str().map_err(|_| HeadError::ContentLength)?.split(',') {
            let n: u64 = item.trim().parse().map_err(|_| HeadError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Decoder::Close, Decoder::Length))
}

/// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when told to keep it.
fn keep_alive(version: Version, h: &HeaderMap) -> bool {
    let mut keep = version == Version::HTTP_11;
    for value in h.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or("close").split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("close") {
                return false;
            }
            keep |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &str, method: Method) -> Result<Option<Head>, HeadError> {
        parse_response(&mut BytesMut::from(wire), &method)
    }

    #[test]
    fn encodes_the_request_as_given() {
        let req = Request::post("/a%2Fb/../c?x=1&x=2")
            .header("host", "up")
            .header("x-rep", "1")
            .header("x-rep", "2")
            .body(())
            .unwrap();
        let mut out = BytesMut::new();
        encode_request(&req, b"hi", &mut out);
        assert_eq!(
            &out[..],
            b"POST /a%2Fb/../c?x=1&x=2 HTTP/1.1\r\nhost: up\r\nx-rep: 1\r\nx-rep: 2\r\ncontent-length: 2\r\n\r\nhi"
        );
    }

    #[test]
    fn parses_fields_framing_and_keep_alive() {
        let head =
            parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!(head.decoder, Decoder::Length(3));
        assert!(head.keep_alive);
        assert_eq!(head.response.headers().get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(head.response.extensions().get::<hyper::ext::ReasonPhrase>().is_none());

        let head =
            parse("HTTP/1.1 200 Fine\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n", Method::GET)
                .unwrap()
                .unwrap();
        assert!(head.response.headers().get("content-length").is_none(), "chunked wins over Content-Length");
        assert_eq!(head.decoder, Decoder::chunked());
        assert_eq!(head.response.extensions().get::<hyper::ext::ReasonPhrase>().unwrap().as_bytes(), b"Fine");

        let head = parse("HTTP/1.0 200 OK\r\n\r\n", Method::GET).unwrap().unwrap();
        assert_eq!((head.decoder, head.keep_alive), (Decoder::Close, false));
        let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", Method::GET);
        assert!(!head.unwrap().unwrap().keep_alive);
        let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD).unwrap().unwrap();
        assert_eq!(head.decoder, Decoder::Length(0));
    }

    #[test]
    fn skips_interim_responses_and_waits_for_more() {
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert!(parse_response(&mut buf, &Method::GET).unwrap().is_none());
        let head = parse_response(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(head.response.status(), 204);
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le", Method::GET).unwrap().is_none());
    }

    #[test]
    fn refuses_ambiguous_lengths_and_garbage() {
        let err = |w| parse(w, Method::GET).unwrap_err();
        assert_eq!(err("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"), HeadError::ContentLength);
        assert_eq!(err("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), HeadError::ContentLength);
        assert_eq!(err("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), HeadError::TransferEncoding10);
        assert!(matches!(err("SMTP ready\r\n\r\n"), HeadError::Malformed(_)));
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(err(&huge), HeadError::TooLarge);
    }
}
