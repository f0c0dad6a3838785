//! The HTTP/1.1 response writer: a response head (one tokengate made, or an upstream's relayed
//! as received) and its body, framed for the client (`Content-Length`, chunked with the
//! announced trailers, or until close), with `Date` and `Connection: close` where needed.
//! Small writes are gathered; large bodies are written through (or spliced by the caller after
//! `write_head`).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::fields::{self, Known};
use super::response::ResponseHead;

/// Response bytes gathered before a write; larger data frames are written as they come.
const GATHER: usize = 16 * 1024;

/// What the response writer needs to know about the request.
pub struct RequestInfo {
    /// A HEAD request: the answer has no content.
    pub head: bool,
    pub keep_alive: bool,
    pub http10: bool,
    /// `TE: trailers`: the client accepts trailer fields.
    pub trailers: bool,
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
pub trait WireHead {
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
pub struct RelayedHead {
    pub head: Box<ResponseHead>,
    /// What tokengate adds to the relayed head (the request id).
    pub added: [(HeaderName, HeaderValue); 1],
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
pub async fn write_response<I, B>(
    io: &mut I,
    out: &mut BytesMut,
    head: &impl WireHead,
    mut body: B,
    info: &RequestInfo,
) -> std::io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exact = body.size_hint().exact().or(body.is_end_stream().then_some(0));
    let (mut framing, keep) = put_head(out, head, exact, info);
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

/// Puts the status line and fields of `head` into `out` (cleared first), with the framing
/// fields its body needs (`exact`: the body's length when known), `Date` and `Connection:
/// close` where due; returns the framing and whether the connection can carry another request.
#[inline(always)]
fn put_head(out: &mut BytesMut, head: &impl WireHead, exact: Option<u64>, info: &RequestInfo) -> (Framing, bool) {
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
    let framing = if bodiless(head, info) {
        Framing::None
    } else if let Some(n) = head.content_length() {
        Framing::Length(n)
    } else if let Some(n) = exact {
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
    (framing, keep)
}

/// True when the answer to this request has no content (RFC 9110 §6.4.1).
fn bodiless(head: &impl WireHead, info: &RequestInfo) -> bool {
    let status = head.status();
    info.head || status.is_informational() || matches!(status.as_u16(), 204 | 304)
}

/// The length of a relayed answer's content when its `Content-Length` frames it and this
/// request gets content (not a HEAD request's answer, a 204 or a 304).
pub fn declared_length(head: &RelayedHead, info: &RequestInfo) -> Option<u64> {
    if bodiless(head, info) {
        None
    } else {
        head.content_length()
    }
}

/// Writes a relayed response's head (framed by its `Content-Length`: see `declared_length`) and
/// the first bytes of its body, `early`; the rest of the body is the caller's to send.
/// Ok(true) when the connection can carry another request after it.
pub async fn write_head<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    head: &RelayedHead,
    early: &[u8],
    info: &RequestInfo,
) -> std::io::Result<bool> {
    let (_, keep) = put_head(out, head, None, info);
    out.put_slice(early);
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
