//! HTTP/1.1 served without hyper, for what most traffic is: requests without a body. Head
//! parsed in place, the handler awaited in the connection's own task, the response head and
//! its first body bytes written in one call. Forwarded requests are relayed from the head's
//! bytes (`Service::relay`); the others become an `http::Request`. Anything else — a request
//! with a body, `Expect`, `Upgrade`, `CONNECT`, an HTTP/2 preface, a head that does not parse
//! or is too large — hands the connection, with every byte read so far, to hyper for the rest
//! of its life, so those cases keep hyper's handling (100-continue, upgrades, 400 and 431).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode, Version};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{ClientIo, ConnLimits, Reply, Service};
use crate::admission;
use crate::body::Body;
use crate::conn_info::ConnInfo;
use crate::proxy::relay::Relayed;
use crate::wire::fields::{self, Known};
use crate::wire::request::{Parsed, RequestHead};

/// Response bytes gathered before a write; larger data frames are written as they come.
const GATHER: usize = 16 * 1024;

/// A connection's read buffer to begin with (a typical request head fits).
const READ_BUFFER: usize = 1024;

/// A connection's write buffer to begin with (a typical answer's head and small body fit).
const WRITE_BUFFER: usize = 1024;

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
pub async fn serve<I: ClientIo, S: Service>(
    mut io: I,
    conn: &ConnInfo,
    service: &S,
    limits: &ConnLimits,
    stop: &CancellationToken,
) -> Outcome<I> {
    let max_header_bytes = limits.max_header_bytes;
    // Small, grown when a head or an answer needs more, and shrunk back after a large answer:
    // an idle keep-alive connection holds a few KiB (nginx's client_header_buffer_size is 1k).
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut out = BytesMut::with_capacity(WRITE_BUFFER);
    let mut stopped = pin!(stop.cancelled());
    // The first head must come within `header_read_timeout` of the accept (nginx's
    // client_header_timeout); later, a connection may idle for `idle_timeout` (its
    // keepalive_timeout), and then a started head has `header_read_timeout` to finish.
    let mut timer = pin!(tokio::time::sleep(limits.header_read_timeout));
    let mut first = true;
    loop {
        let wait = if first || !buf.is_empty() { limits.header_read_timeout } else { limits.idle_timeout };
        timer.as_mut().reset(tokio::time::Instant::now() + wait);
        let mut idle = !first && buf.is_empty();
        first = false;
        let (head, info) = loop {
            let parsed = RequestHead::parse(&buf);
            if idle && !matches!(parsed, Parsed::Head(_)) {
                // The idle wait is over and a head has begun: it has `header_read_timeout`.
                // (Most heads arrive whole: then the timer is reset once per request.)
                idle = false;
                timer.as_mut().reset(tokio::time::Instant::now() + limits.header_read_timeout);
            }
            match parsed {
                Parsed::Head(head) => {
                    // Refused here even when hyper would have served it: hyper cuts fragments
                    // off and resolves Content-Length beside Transfer-Encoding silently.
                    if let Err(refusal) = admission::check_head(&head, &buf) {
                        let (parts, body) = service.refuse(&head.method, refusal).into_parts();
                        let info = RequestInfo { head: false, keep_alive: false, http10: false, trailers: false };
                        // Boxed: rare, and the state of writing would enlarge every connection's.
                        let _ = Box::pin(write_response(&mut io, &mut out, &parts, body, &info)).await;
                        let _ = io.shutdown().await;
                        return Outcome::Closed;
                    }
                    match fast_path(&head, &buf) {
                        Some(info) => break (head.take(&mut buf), info),
                        None => return Outcome::Handoff(io, buf.freeze()),
                    }
                }
                Parsed::Partial if buf.len() < max_header_bytes => {}
                Parsed::Partial | Parsed::Invalid => return Outcome::Handoff(io, buf.freeze()),
            }
            let read = tokio::select! {
                biased;
                // Between requests, shutdown closes the connection; a head under way finishes.
                _ = &mut stopped, if buf.is_empty() => return Outcome::Closed,
                _ = &mut timer => return Outcome::Closed,
                read = read_more(&mut io, &mut buf) => read,
            };
            match read {
                Ok(0) if buf.is_empty() => return Outcome::Closed,
                // A partial head and EOF: let hyper answer it (400).
                Ok(0) => return Outcome::Handoff(io, buf.freeze()),
                Ok(_) => {}
                Err(_) => return Outcome::Closed,
            }
        };
        let reply = match reply_for(service, conn, head, &mut buf).await {
            Ok(reply) => reply,
            Err(read) => return Outcome::Handoff(io, read),
        };
        // Draining: this is the connection's last answer, and it says so.
        let info = RequestInfo { keep_alive: info.keep_alive && !stop.is_cancelled(), ..info };
        let written = write_reply(&mut io, &mut out, reply, &info).await;
        if out.capacity() > WRITE_BUFFER * 4 {
            // A large answer went by: do not keep its buffer for an idle connection.
            out = BytesMut::with_capacity(WRITE_BUFFER);
        }
        match written {
            Ok(true) if !stop.is_cancelled() => {}
            _ => {
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
        }
    }
}

/// The answer to one request the fast path took; Err: for hyper after all, with these bytes
/// first. Takes the head by value, so that it is gone before the answer is written.
async fn reply_for<S: Service>(
    service: &S,
    conn: &ConnInfo,
    head: RequestHead,
    buf: &mut BytesMut,
) -> Result<Reply, Bytes> {
    if let Some(relayed) = service.relay(&head, conn) {
        return Ok(relayed.await);
    }
    match head.to_request(http_body_util::Either::Right(http_body_util::Empty::new())) {
        // Boxed: not forwarded traffic (token routes, the JWK set, limited traffic), and its
        // state would double every idle connection's.
        Some(req) => Ok(Reply::Response(Box::pin(service.call(req, conn.clone())).await)),
        None => {
            // Put the head back in front of what follows it: hyper answers it (400).
            let mut all = BytesMut::with_capacity(head.bytes.len() + buf.len());
            all.put_slice(&head.bytes);
            all.put_slice(buf);
            Err(all.freeze())
        }
    }
}

/// Writes `reply`; Ok(true) when the connection can carry another request.
async fn write_reply<I: ClientIo>(
    io: &mut I,
    out: &mut BytesMut,
    reply: Reply,
    info: &RequestInfo,
) -> std::io::Result<bool> {
    match reply {
        Reply::Response(resp) => {
            let (parts, body) = resp.into_parts();
            write_response(io, out, &parts, body, info).await
        }
        Reply::Relayed(relayed) => {
            let Relayed { head, added, body } = *relayed;
            let head = RelayedHead { head, added };
            write_response(io, out, &head, http_body_util::Either::Left(body), info).await
        }
    }
}

/// Reads into `buf`, growing it when a head is larger than it.
async fn read_more<I: ClientIo>(io: &mut I, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_BUFFER / 4 {
        buf.reserve(READ_BUFFER);
    }
    io.read_buf(buf).await
}

/// What the response writer needs to know of a request the fast path takes; None when the
/// request is for hyper: a body, an interim answer or a protocol switch.
fn fast_path(head: &RequestHead, buf: &[u8]) -> Option<RequestInfo> {
    if head.method == Method::CONNECT {
        return None;
    }
    let http10 = head.version == Version::HTTP_10;
    let mut info = RequestInfo { head: head.method == Method::HEAD, keep_alive: !http10, http10, trailers: false };
    for f in &head.fields {
        let value = f.value(buf);
        match f.known {
            Known::ContentLength if value != b"0" => return None,
            Known::TransferEncoding | Known::Upgrade | Known::Expect => return None,
            Known::Connection => {
                for token in fields::tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        info.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        info.keep_alive = true;
                    }
                }
            }
            Known::Te => info.trailers |= fields::tokens(value).any(|t| t.eq_ignore_ascii_case(b"trailers")),
            _ => {}
        }
    }
    Some(info)
}

/// How the response body is delimited on the wire.
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// A response head as the writer sees it: one tokengate made (or converted), or an upstream's
/// relayed as received.
trait WireHead {
    fn status(&self) -> StatusCode;
    /// A reason phrase other than the canonical one.
    fn reason(&self) -> Option<&[u8]>;
    fn put_fields(&self, out: &mut BytesMut);
    fn content_length(&self) -> Option<u64>;
    fn has_date(&self) -> bool;
    /// `Connection: close`.
    fn closes(&self) -> bool;
    /// Whether `Trailer` announces the field `name` (RFC 9110 §6.6.2).
    fn announces(&self, name: &str) -> bool;
}

impl WireHead for http::response::Parts {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn reason(&self) -> Option<&[u8]> {
        self.extensions.get::<hyper::ext::ReasonPhrase>().map(|r| r.as_bytes())
    }

    fn put_fields(&self, out: &mut BytesMut) {
        for (name, value) in &self.headers {
            fields::put(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }

    fn content_length(&self) -> Option<u64> {
        self.headers.get(header::CONTENT_LENGTH).and_then(|v| fields::parse_length(v.as_bytes()))
    }

    fn has_date(&self) -> bool {
        self.headers.contains_key(header::DATE)
    }

    fn closes(&self) -> bool {
        has_token(&self.headers, header::CONNECTION, "close")
    }

    fn announces(&self, name: &str) -> bool {
        has_token(&self.headers, header::TRAILER, name)
    }
}

/// An upstream's response head, its fields as received less those the relay dropped, and the
/// fields tokengate adds.
struct RelayedHead {
    head: crate::wire::response::ResponseHead,
    added: crate::proxy::relay::Added,
}

impl WireHead for RelayedHead {
    fn status(&self) -> StatusCode {
        self.head.status
    }

    fn reason(&self) -> Option<&[u8]> {
        self.head.reason()
    }

    fn put_fields(&self, out: &mut BytesMut) {
        let bytes = &self.head.bytes;
        for f in &self.head.fields {
            fields::put(out, f.name(bytes), f.value(bytes));
        }
        for (name, value) in &self.added {
            fields::put(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }

    fn content_length(&self) -> Option<u64> {
        let bytes = &self.head.bytes;
        let declared = self.head.fields.iter().find(|f| f.known == Known::ContentLength);
        declared.and_then(|f| fields::parse_length(f.value(bytes)))
    }

    fn has_date(&self) -> bool {
        self.head.fields.iter().any(|f| f.known == Known::Date)
    }

    fn closes(&self) -> bool {
        // `Connection` is hop-by-hop: the relay has dropped it.
        false
    }

    fn announces(&self, name: &str) -> bool {
        fields::has_token(&self.head.bytes, &self.head.fields, Known::Trailer, name.as_bytes())
    }
}

/// Writes a response; Ok(true) when the connection can carry another request.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    head: &impl WireHead,
    mut body: Body,
    info: &RequestInfo,
) -> std::io::Result<bool> {
    let status = head.status();
    let mut keep = info.keep_alive && !head.closes();
    out.clear();
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    match head.reason() {
        Some(reason) => out.put_slice(reason),
        None => out.put_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.put_slice(b"\r\n");
    head.put_fields(out);
    let bodiless = info.head || status.is_informational() || matches!(status.as_u16(), 204 | 304);
    let mut framing = if bodiless {
        Framing::None
    } else if let Some(n) = head.content_length() {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact().or(body.is_end_stream().then_some(0)) {
        fields::put(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
        Framing::Length(n)
    } else if info.http10 {
        keep = false;
        Framing::Close
    } else {
        fields::put(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    };
    if !head.has_date() {
        DATE.with(|d| fields::put(out, b"date", d.borrow_mut().now()));
    }
    if !keep {
        fields::put(out, b"connection", b"close");
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
                put_trailers(out, head, &fields);
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
fn put_trailers(out: &mut BytesMut, head: &impl WireHead, fields: &HeaderMap) {
    for (name, value) in fields {
        if head.announces(name.as_str()) {
            fields::put(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
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
