//! HTTP/1.1 served without hyper, for what most traffic is: requests without a body, and small
//! bodies that came whole with their head (a token route's JSON). Head parsed in place, the
//! handler awaited in the connection's own task, the response head and its first body bytes
//! written in one call. Body-less forwarded requests are relayed from the head's bytes, and token
//! routes read their request from the head (`Service::fast`); the others become an
//! `http::Request`. Anything else — a body that is chunked, large or not all read yet,
//! `Expect`, `Upgrade`, `CONNECT`, an HTTP/2 preface, a head that does not parse or is too
//! large — hands the connection, with every byte read so far, to hyper for the rest of its
//! life, so those cases keep hyper's handling (streaming, the body timeout, 100-continue,
//! upgrades, 400 and 431).
//! The response is written by `wire::writer`; a large relayed body between two plain TCP
//! sockets goes by splice(2) (`splice`).

use std::any::Any;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{Method, Version};
use http_body::Body as _;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::splice;
use super::stop::{Idle, Stop};
use super::{ClientIo, ConnLimits, Reply, Service};
use crate::admission;
use crate::body::Body;
use crate::conn_info::ConnInfo;
use crate::proxy::relay::Relayed;
use crate::wire::fields::{self, Known};
use crate::wire::request::{Parsed, RequestHead};
use crate::wire::writer::{self, write_response, RequestInfo};

/// A connection's read buffer once bytes arrive (a typical request head fits).
const READ_BUFFER: usize = 1024;

/// A request's write buffer to begin with (a typical answer's head and small body fit).
const WRITE_BUFFER: usize = 1024;

/// The largest body the fast path takes, when all of it came with the head (nginx's
/// `client_body_buffer_size` is 8 or 16 KiB).
const SMALL_BODY: usize = 16 * 1024;

/// How a connection left the fast path.
pub enum Outcome {
    Closed,
    /// Serve the rest with hyper, these bytes (already read from the IO) first.
    Handoff(Bytes),
}

/// Serves requests on `io` until it closes, `stop` fires between requests, or a request needs
/// hyper.
///
/// While a connection idles it holds no buffer (nginx frees its header buffer on keep-alive):
/// the read buffer is allocated when bytes arrive and released once a request is answered with
/// nothing after it, and the state of answering a request (the relay, the writing) lives in a
/// box for that request's time only. An idle connection's task is the few words below: the IO
/// is borrowed (the caller keeps it for a handoff), the timer boxed once per connection, and
/// the wait for bytes, the timer and shutdown polled by one hand-written select.
///
/// An `async move` block rather than an `async fn`, which would keep its arguments twice.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<'a, I: ClientIo, S: Service>(
    io: &'a mut I,
    conn: &'a ConnInfo,
    service: &'a S,
    limits: &'a ConnLimits,
    stop: &'a Stop,
) -> impl Future<Output = Outcome> + Send + 'a {
    async move {
        let mut buf = BytesMut::new();
        let mut stopped = pin!(stop.idle());
        // The first head must come within `header_read_timeout` of the accept (nginx's
        // client_header_timeout); later, a connection may idle for `idle_timeout` (its
        // keepalive_timeout), and then a started head has `header_read_timeout` to finish.
        let mut timer = Box::pin(tokio::time::sleep(limits.header_read_timeout));
        let mut first = true;
        loop {
            let wait = if first || !buf.is_empty() { limits.header_read_timeout } else { limits.idle_timeout };
            timer.as_mut().reset(tokio::time::Instant::now() + wait);
            let mut idle = !first && buf.is_empty();
            first = false;
            let (head, info, body) = loop {
                // No step is alive across an await below: an idle connection's task would
                // carry its room while it waits. Nothing is awaited inside the match (its
                // scrutinee would stay alive across it), and the refusal's scope ends before the
                // wait for bytes.
                {
                    let refused = match step(&mut buf, limits.max_header_bytes, &mut idle) {
                        Step::Answer(head, info, body) => break (head, info, body),
                        Step::Refuse(method, refusal) => Some((method, refusal)),
                        Step::Handoff => return Outcome::Handoff(buf.freeze()),
                        Step::ReadMore { head_begun } => {
                            if head_begun {
                                // The idle wait is over and a head has begun: it has
                                // `header_read_timeout` (most heads arrive whole: then the timer
                                // is reset once per request).
                                timer.as_mut().reset(tokio::time::Instant::now() + limits.header_read_timeout);
                            }
                            None
                        }
                    };
                    if let Some((method, refusal)) = refused {
                        // Boxed: rare, and the state of writing would enlarge every connection's.
                        let refusing = Box::pin(refuse(io, service, method, refusal));
                        refusing.await;
                        return Outcome::Closed;
                    }
                }
                match next_bytes(io, &mut buf, stopped.as_mut(), timer.as_mut()).await {
                    Next::Read(0) if buf.is_empty() => return Outcome::Closed,
                    // A partial head and EOF: let hyper answer it (400).
                    Next::Read(0) => return Outcome::Handoff(buf.freeze()),
                    Next::Read(_) => {}
                    Next::Stop => return Outcome::Closed,
                }
            };
            // Boxed: the state of answering (the relay's exchange, the writing) is several times an
            // idle connection's and exists only while a request is in flight.
            // In a statement of its own: a temporary lives to the end of its statement, and the
            // unboxed future alive across the await would be in every idle connection's task.
            let answering = Box::pin(answer(io, conn, service, FastRequest { head, body }, info, &mut buf, stop));
            match answering.await {
                Answered::KeepAlive => {}
                Answered::Closed => return Outcome::Closed,
                Answered::Handoff(read) => return Outcome::Handoff(read),
            }
            if buf.is_empty() {
                // Nothing pipelined behind it: hold no buffer while idle.
                buf = BytesMut::new();
            }
        }
    }
}

/// What waiting for a connection's next bytes ended with.
enum Next {
    /// Bytes read (0: the client closed).
    Read(usize),
    /// The timer ran out, shutdown came between requests, or the read failed: close.
    Stop,
}

/// Waits for bytes on `io` (see `read_more`), the timer, or shutdown while no head has begun;
/// the order of `biased` select: shutdown, then the timer, then the read. Written by hand: it
/// is what an idle connection waits in, and `select!` would keep its own copies of the borrows.
fn next_bytes<'a, 'stop: 'a, I: ClientIo>(
    io: &'a mut I,
    buf: &'a mut BytesMut,
    mut stopped: Pin<&'a mut Idle<'stop>>,
    mut timer: Pin<&'a mut tokio::time::Sleep>,
) -> impl Future<Output = Next> + use<'a, 'stop, I> {
    std::future::poll_fn(move |cx| {
        // Between requests, shutdown closes the connection; a head under way finishes.
        if buf.is_empty() && stopped.as_mut().poll_stopped(cx).is_ready() {
            return Poll::Ready(Next::Stop);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Next::Stop);
        }
        match ready!(poll_read_more(cx, io, buf)) {
            Ok(n) => Poll::Ready(Next::Read(n)),
            Err(_) => Poll::Ready(Next::Stop),
        }
    })
}

/// What to do with the bytes a connection has read so far.
// Not boxed: returned once and taken apart at once, never held across an await.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// A head the fast path answers and its body (if any), taken off the front of the buffer.
    Answer(Box<RequestHead>, RequestInfo, Bytes),
    /// A head `admission` refuses.
    Refuse(Method, admission::Refusal),
    /// For hyper, from the first byte read.
    Handoff,
    /// Not a whole head yet; `head_begun`: the first bytes after an idle wait.
    ReadMore { head_begun: bool },
}

fn step(buf: &mut BytesMut, max_header_bytes: usize, idle: &mut bool) -> Step {
    let parsed = RequestHead::parse(buf);
    let head_begun = *idle && !buf.is_empty() && !matches!(parsed, Parsed::Head(_));
    if head_begun {
        *idle = false;
    }
    match parsed {
        Parsed::Head(mut head) => {
            // Refused here even when hyper would have served it: hyper cuts fragments off and
            // resolves Content-Length beside Transfer-Encoding silently.
            if let Err(refusal) = admission::check_head(&head, buf) {
                return Step::Refuse(head.method, refusal);
            }
            match fast_path(&head, buf) {
                Some((info, body_len)) => {
                    head.take(buf);
                    Step::Answer(head, info, take_body(buf, body_len))
                }
                None => Step::Handoff,
            }
        }
        Parsed::Partial if buf.len() < max_header_bytes => Step::ReadMore { head_begun },
        Parsed::Partial | Parsed::Invalid => Step::Handoff,
    }
}

/// The body at the front of `buf` (after its head was taken).
fn take_body(buf: &mut BytesMut, len: usize) -> Bytes {
    // Not `split_to(0)` when there is none: it would make the buffer shared.
    if len == 0 {
        Bytes::new()
    } else {
        buf.split_to(len).freeze()
    }
}

/// How answering one request left the connection.
enum Answered {
    KeepAlive,
    Closed,
    /// For hyper after all, with these bytes first.
    Handoff(Bytes),
}

/// A request the fast path took: its head, and its body (often empty).
struct FastRequest {
    head: Box<RequestHead>,
    body: Bytes,
}

/// Answers one request the fast path took and writes the answer. One `async move` block, the
/// `fast` future pinned where it is: an `async fn`, or a future of its own for the reply, would
/// keep the request twice, and an awaited `Option` of the `fast` future would sit beside the
/// future itself, all in what is boxed and copied for every request.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn answer<'a, I: ClientIo, S: Service>(
    io: &'a mut I,
    conn: &'a ConnInfo,
    service: &'a S,
    req: FastRequest,
    info: RequestInfo,
    buf: &'a mut BytesMut,
    stop: &'a Stop,
) -> impl Future<Output = Answered> + Send + 'a {
    async move {
        let reply = 'reply: {
            let snapshot = service.snapshot();
            let fast = std::pin::pin!(service.fast(&snapshot, &req.head, &req.body, conn));
            if let Some(fast) = fast.as_pin_mut() {
                break 'reply fast.await;
            }
            let whole = http_body_util::Either::Right(http_body_util::Full::new(req.body.clone()));
            match req.head.to_request(whole) {
                // Boxed: not forwarded traffic (token routes, the JWK set, limited traffic), and
                // its state would double every request's.
                Some(call) => Reply::Response(Box::pin(service.call_checked(call, conn.clone())).await),
                // Put the head back in front of what follows it: hyper answers it (400).
                None => return Answered::Handoff(unread(&req, buf)),
            }
        };
        drop(req);
        // Draining: this is the connection's last answer, and it says so.
        let info = RequestInfo { keep_alive: info.keep_alive && !stop.is_stopping(), ..info };
        let mut out = BytesMut::with_capacity(WRITE_BUFFER);
        // Shutdown that comes while the answer is written closes the connection before its next
        // head (`next_bytes` looks at it first).
        // Boxed: large bodies only, and its state would enlarge every answer's.
        let written = if matches!(&reply, Reply::Relayed(relayed) if may_splice(relayed)) {
            Box::pin(write_large(io, &mut out, reply, &info, service)).await
        } else {
            write_reply(io, &mut out, reply, &info).await
        };
        match written {
            Ok(true) => Answered::KeepAlive,
            _ => {
                let _ = io.shutdown().await;
                Answered::Closed
            }
        }
    }
}

/// A request the fast path cannot answer as bytes again, the head first, then what follows it.
fn unread(FastRequest { head, body }: &FastRequest, buf: &BytesMut) -> Bytes {
    let mut all = BytesMut::with_capacity(head.bytes.len() + body.len() + buf.len());
    all.put_slice(&head.bytes);
    all.put_slice(body);
    all.put_slice(buf);
    all.freeze()
}

/// Answers a head `admission` refused and closes the connection.
async fn refuse<I: ClientIo, S: Service>(io: &mut I, service: &S, method: Method, refusal: admission::Refusal) {
    let (parts, body) = service.refuse(&method, refusal).into_parts();
    let info = RequestInfo { head: false, keep_alive: false, http10: false, trailers: false };
    let mut out = BytesMut::with_capacity(WRITE_BUFFER);
    let _ = write_response(io, &mut out, &parts, body, &info).await;
    let _ = io.shutdown().await;
}

/// Writes `reply`; Ok(true) when the connection can carry another request. An `async move`
/// block: an `async fn` would keep `reply` twice.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn write_reply<'a, I: ClientIo>(
    io: &'a mut I,
    out: &'a mut BytesMut,
    reply: Reply,
    info: &'a RequestInfo,
) -> impl Future<Output = std::io::Result<bool>> + Send + 'a {
    async move {
        match reply {
            Reply::Response(resp) => {
                let (parts, body) = resp.into_parts();
                write_response(io, out, &parts, body, info).await
            }
            Reply::Relayed(Relayed { head, body }) => {
                let body: Body = http_body_util::Either::Left(body);
                write_response(io, out, &head, body, info).await
            }
        }
    }
}

/// True for a relayed answer whose body may be large enough for splice(2): its framing says
/// so (the head's fields are not looked at here).
fn may_splice(relayed: &Relayed) -> bool {
    relayed.body.size_hint().exact().is_some_and(|n| n >= splice::MIN_SPLICE)
}

/// Writes an answer `may_splice` picked: by splice(2) when it can go that way, else as any other.
async fn write_large<I: ClientIo, S: Service>(
    io: &mut I,
    out: &mut BytesMut,
    reply: Reply,
    info: &RequestInfo,
    service: &S,
) -> std::io::Result<bool> {
    let reply = match reply {
        Reply::Relayed(relayed) => match write_spliced(io, out, relayed, info, service).await {
            Ok(written) => return written,
            Err(relayed) => Reply::Relayed(relayed),
        },
        reply => reply,
    };
    write_reply(io, out, reply, info).await
}

/// Writes a relayed answer whose large body goes by splice(2) (`splice`): plain TCP on both
/// sides, framed by `Content-Length`, at least `MIN_SPLICE` bytes still in the upstream's
/// socket. Err gives the answer back, untouched, when it cannot: write it as any other.
async fn write_spliced<I: ClientIo, S: Service>(
    io: &mut I,
    out: &mut BytesMut,
    mut relayed: Relayed,
    info: &RequestInfo,
    service: &S,
) -> Result<std::io::Result<bool>, Relayed> {
    let Some(declared) = writer::declared_length(&relayed.head, info) else { return Err(relayed) };
    let Some(client) = (io as &mut dyn Any).downcast_mut::<TcpStream>() else { return Err(relayed) };
    let Relayed { head, body } = &mut relayed;
    let Some((upstream, early)) = body.splice_from(declared, splice::MIN_SPLICE) else { return Err(relayed) };
    let rest = declared - early.len() as u64;
    let written = async {
        let keep = writer::write_head(client, out, head, &early, info).await?;
        splice::relay(upstream, client, rest).await?;
        Ok(keep)
    };
    let written = written.await;
    if written.is_ok() {
        body.spliced();
        service.spliced(rest);
    }
    Ok(written)
}

/// Reads into `buf`, growing it when a head is larger than it. An idle connection's `buf` has no
/// allocation: it waits with a buffer on the stack of the poll, and gets one when bytes come.
fn poll_read_more<I: ClientIo>(cx: &mut Context<'_>, io: &mut I, buf: &mut BytesMut) -> Poll<std::io::Result<usize>> {
    if buf.capacity() == 0 {
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_BUFFER];
        let mut read = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n > 0 {
            buf.reserve(READ_BUFFER);
            buf.put_slice(read.filled());
        }
        return Poll::Ready(Ok(n));
    }
    if buf.capacity() - buf.len() < READ_BUFFER / 4 {
        buf.reserve(READ_BUFFER);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// What the response writer needs to know of a request the fast path takes, and the length of
/// its body; None when the request is for hyper: a body that is chunked, larger than
/// `SMALL_BODY` or not all in `buf` yet, an interim answer or a protocol switch.
fn fast_path(head: &RequestHead, buf: &[u8]) -> Option<(RequestInfo, usize)> {
    if head.method == Method::CONNECT {
        return None;
    }
    let http10 = head.version == Version::HTTP_10;
    let mut info = RequestInfo { head: head.method == Method::HEAD, keep_alive: !http10, http10, trailers: false };
    let mut body_len = None;
    for f in &head.fields {
        let value = f.value(buf);
        match f.known {
            Known::ContentLength => {
                let len = fields::parse_length(value).and_then(|n| usize::try_from(n).ok())?;
                if body_len.is_some_and(|seen| seen != len) || len > SMALL_BODY {
                    return None;
                }
                body_len = Some(len);
            }
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
    let body_len = body_len.unwrap_or(0);
    (buf.len() >= head.head_len() + body_len).then_some((info, body_len))
}
