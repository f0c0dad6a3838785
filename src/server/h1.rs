//! HTTP/1.1 served without hyper, for what most traffic is: requests without a body. Head
//! parsed in place, the handler awaited in the connection's own task, the response head and
//! its first body bytes written in one call. Anything else — a request with a body, `Expect`,
//! `Upgrade`, `CONNECT`, an HTTP/2 preface, a head that does not parse or is too large — hands
//! the connection, with every byte read so far, to hyper for the rest of its life, so those
//! cases keep hyper's handling (100-continue, upgrades, 400 and 431 answers).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Either, Empty};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::body::{Body, RequestBody};
use crate::proxy::h1::head::{header_map, record_fields, FieldSpans, MAX_HEADERS};
use crate::proxy::ConnInfo;

/// Response bytes gathered before a write; larger data frames are written as they come.
const GATHER: usize = 16 * 1024;

/// How a connection left the fast path.
pub enum Outcome<I> {
    Closed,
    /// Serve the rest with hyper: the IO, and the bytes already read from it.
    Handoff(I, Bytes),
}

/// What the response writer needs to know about the request.
struct RequestInfo {
    head: bool,
    keep_alive: bool,
    http10: bool,
    /// `TE: trailers`: the client accepts trailer fields.
    trailers: bool,
}

/// Serves requests on `io` until it closes, `stop` fires between requests, or a request needs
/// hyper.
pub async fn serve<I, H, F>(
    mut io: I,
    conn: &ConnInfo,
    handler: &H,
    max_header_bytes: usize,
    header_read_timeout: Duration,
    stop: &CancellationToken,
) -> Outcome<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RequestBody>, ConnInfo) -> F,
    F: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = BytesMut::with_capacity(8 * 1024);
    let mut stopped = pin!(stop.cancelled());
    let mut timer = pin!(tokio::time::sleep(header_read_timeout));
    loop {
        timer.as_mut().reset(tokio::time::Instant::now() + header_read_timeout);
        let (req, info) = loop {
            match parse(&mut buf) {
                Parsed::Request(req, info) => break (*req, info),
                Parsed::Partial if buf.len() < max_header_bytes => {}
                Parsed::Partial | Parsed::Hyper => return Outcome::Handoff(io, buf.freeze()),
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
            let read = tokio::select! {
                biased;
                // Between requests, shutdown closes the connection; a head under way finishes.
                _ = &mut stopped, if buf.is_empty() => return Outcome::Closed,
                _ = &mut timer => return Outcome::Closed,
                read = io.read_buf(&mut buf) => read,
            };
            match read {
                Ok(0) if buf.is_empty() => return Outcome::Closed,
                // A partial head and EOF: let hyper answer it (400).
                Ok(0) => return Outcome::Handoff(io, buf.freeze()),
                Ok(_) => {}
                Err(_) => return Outcome::Closed,
            }
        };
        let resp = handler(req, conn.clone()).await;
        match write_response(&mut io, &mut out, resp, &info).await {
            Ok(true) if !stop.is_cancelled() => {}
            _ => {
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
        }
    }
}

enum Parsed {
    Partial,
    /// Not for the fast path: hyper takes over from this request on.
    Hyper,
    Request(Box<Request<RequestBody>>, RequestInfo),
}

/// One request head from the front of `buf`, consumed only if the fast path takes it.
fn parse(buf: &mut BytesMut) -> Parsed {
    let mut fields = FieldSpans::new();
    let mut info = RequestInfo { head: false, keep_alive: true, http10: false, trailers: false };
    let (len, method, target) = {
        let mut parsed = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut parsed)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Hyper,
        };
        let Ok(method) = Method::from_bytes(req.method.unwrap_or("").as_bytes()) else { return Parsed::Hyper };
        if method == Method::CONNECT || record_fields(buf, req.headers, &mut fields).is_err() {
            return Parsed::Hyper;
        }
        info.http10 = req.version == Some(0);
        info.keep_alive = !info.http10;
        for ((name, _, _), f) in fields.iter().zip(req.headers.iter()) {
            if !fast_path_field(name, f.value, &mut info) {
                return Parsed::Hyper;
            }
        }
        let path = req.path.unwrap_or("/");
        let start = path.as_ptr() as usize - buf.as_ptr() as usize;
        (len, method, start..start + path.len())
    };
    let head = buf.split_to(len).freeze();
    let (Ok(uri), Ok(headers)) = (Uri::from_maybe_shared(head.slice(target)), header_map(&head, fields)) else {
        // Put the head back in front of what follows it: hyper answers it.
        let mut all = BytesMut::with_capacity(head.len() + buf.len());
        all.put_slice(&head);
        all.put_slice(buf);
        *buf = all;
        return Parsed::Hyper;
    };
    info.head = method == Method::HEAD;
    let mut req = Request::new(Either::Right(Empty::new()));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if info.http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    *req.headers_mut() = headers;
    Parsed::Request(Box::new(req), info)
}

/// False for fields that mean a body, an interim answer or a protocol switch; notes
/// `Connection` and `TE` in `info`.
fn fast_path_field(name: &HeaderName, value: &[u8], info: &mut RequestInfo) -> bool {
    if name == header::CONTENT_LENGTH {
        return value == b"0";
    }
    if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
        return false;
    }
    let tokens = || std::str::from_utf8(value).unwrap_or("").split(',').map(str::trim);
    if name == header::CONNECTION {
        for token in tokens() {
            if token.eq_ignore_ascii_case("close") {
                info.keep_alive = false;
            } else if token.eq_ignore_ascii_case("keep-alive") && info.http10 {
                info.keep_alive = true;
            }
        }
    } else if name == header::TE {
        info.trailers = tokens().any(|t| t.eq_ignore_ascii_case("trailers"));
    }
    true
}

/// How the response body is delimited on the wire.
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Writes `resp`; Ok(true) when the connection can carry another request.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    resp: Response<Body>,
    info: &RequestInfo,
) -> std::io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let mut keep = info.keep_alive && !has_token(&parts.headers, header::CONNECTION, "close");
    out.clear();
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.put_slice(reason.as_bytes()),
        None => out.put_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        put_field(out, name.as_str(), value.as_bytes());
    }
    let bodiless = info.head || status.is_informational() || matches!(status.as_u16(), 204 | 304);
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut framing = if bodiless {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact().or(body.is_end_stream().then_some(0)) {
        put_field(out, "content-length", itoa::Buffer::new().format(n).as_bytes());
        Framing::Length(n)
    } else if info.http10 {
        keep = false;
        Framing::Close
    } else {
        put_field(out, "transfer-encoding", b"chunked");
        Framing::Chunked
    };
    if !parts.headers.contains_key(header::DATE) {
        DATE.with(|d| put_field(out, "date", d.borrow_mut().now()));
    }
    if !keep {
        put_field(out, "connection", b"close");
    }
    out.put_slice(b"\r\n");
    if matches!(framing, Framing::None) {
        io.write_all(out).await?;
        return Ok(keep);
    }

    let mut trailers = None;
    loop {
        // Gather what is ready; write before waiting for more.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                io.write_all(out).await?;
                out.clear();
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(std::io::Error::other)?;
        match frame.into_data() {
            Ok(data) => put_data(io, out, &mut framing, data).await?,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
        if body.is_end_stream() {
            break;
        }
    }
    match framing {
        Framing::Length(0) | Framing::Close | Framing::None => {}
        // The body ended short of its declared length: the client must not take it as whole.
        Framing::Length(_) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
        Framing::Chunked => {
            out.put_slice(b"0\r\n");
            if let (Some(fields), true) = (trailers, info.trailers) {
                put_trailers(out, &parts.headers, &fields);
            }
            out.put_slice(b"\r\n");
        }
    }
    io.write_all(out).await?;
    Ok(keep)
}

/// Frames `data` per `framing` into `out`, writing through when it is large.
async fn put_data<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    framing: &mut Framing,
    data: Bytes,
) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    match framing {
        Framing::Length(remaining) => {
            // Never more than declared: the client would read it as the next response.
            *remaining = remaining.checked_sub(data.len() as u64).ok_or(std::io::ErrorKind::InvalidData)?;
        }
        Framing::Chunked => {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        Framing::Close | Framing::None => {}
    }
    if out.len() + data.len() <= GATHER {
        out.put_slice(&data);
    } else {
        io.write_all(out).await?;
        out.clear();
        io.write_all(&data).await?;
    }
    if matches!(framing, Framing::Chunked) {
        out.put_slice(b"\r\n");
    }
    Ok(())
}

/// The trailer fields the response announced in `Trailer` (RFC 9110 §6.6.2), as hyper sends.
fn put_trailers(out: &mut BytesMut, headers: &HeaderMap, fields: &HeaderMap) {
    for (name, value) in fields {
        if has_token(headers, header::TRAILER, name.as_str()) {
            put_field(out, name.as_str(), value.as_bytes());
        }
    }
}

fn put_field(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

thread_local! {
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: 0, text: String::new() }) };
}

/// The `Date` field value, formatted once per second per thread.
struct CachedDate {
    second: u64,
    text: String,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        self.text.as_bytes()
    }
}
