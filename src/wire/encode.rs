//! The request head tokengate writes on its own upstream connections.

use bytes::{BufMut, BytesMut};
use http::header;
use http::Request;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
