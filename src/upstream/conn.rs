//! tokengate's own HTTP/1.1 client connection, for requests whose body is already in hand
//! (none, or one tokengate made). It runs inside the task that serves the downstream
//! connection: the request is written, the response head read and the body streamed back from
//! the same socket by whoever polls it, with no connection task, channel or wake-up in between.
//! Requests with a streamed body go through hyper's client instead (see `pool`), which can
//! send a body while the response is already arriving.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

pub use crate::wire::encode::encode_request;

use super::io::UpstreamIo;
use crate::wire::response::{self, HeadError, ResponseHead};

/// Read buffer growth: enough for a typical head and a small body in one read.
pub const READ_CHUNK: usize = 8 * 1024;

/// The most a body read asks for at once (nginx's `proxy_buffers` default is 8 × 8 KiB).
const MAX_BODY_READ: usize = 64 * 1024;

/// The room a body read offers when `expected` more bytes are known to come.
fn body_room(expected: u64) -> usize {
    usize::try_from(expected).unwrap_or(usize::MAX).clamp(READ_CHUNK, MAX_BODY_READ)
}

/// One upstream connection and what has been read from it but not consumed.
#[derive(Debug)]
pub struct Conn {
    pub io: UpstreamIo,
    pub read: BytesMut,
    write: BytesMut,
    /// The deadline of an exchange, one timer for all the connection's exchanges: moved to the
    /// next deadline, a timer still in tokio's wheel only has its time changed, where a timer per
    /// request is put in and taken out of the wheel each time (callgrind: ~390 fewer of a
    /// forwarded request's ~14,000 instructions). Made by the first exchange with a deadline.
    timer: Option<Pin<Box<Sleep>>>,
}

/// A failed exchange, and whether any byte of an answer had arrived (if not, and the connection
/// was a reused one, the upstream most likely closed it just before the request went out).
#[derive(Debug)]
pub struct Failed {
    pub error: ExchangeError,
    pub answered: bool,
}

impl Failed {
    /// True when the request may go again on another connection: it was idempotent (RFC 9110
    /// §9.2.2), the connection a reused one that closed or failed before any answer, and the
    /// deadline not passed.
    pub fn may_retry(&self, reused: bool, method: &Method) -> bool {
        reused && !self.answered && !matches!(self.error, ExchangeError::TimedOut) && method.is_idempotent()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("upstream connection failed")]
    Io(#[source] std::io::Error),
    #[error("invalid response from upstream")]
    Head(#[source] HeadError),
    #[error("upstream closed the connection without answering")]
    Closed,
    #[error("no response head before the deadline")]
    TimedOut,
}

impl Conn {
    pub fn new(io: UpstreamIo) -> Self {
        Self { io, read: BytesMut::with_capacity(READ_CHUNK), write: BytesMut::with_capacity(512), timer: None }
    }

    /// For a tunnel: the socket and the bytes that came after the response head; the buffers go.
    pub fn into_tunnel(self) -> (UpstreamIo, Bytes) {
        let early = if self.read.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&self.read) };
        (self.io, early)
    }

    /// True when an idle connection can carry another request: nothing has arrived since its
    /// last response, neither stray bytes nor the upstream's FIN.
    pub fn is_reusable(&mut self) -> bool {
        self.read.is_empty() && self.io.is_quiet()
    }

    /// Writes the request `encode` puts in the buffer it is given, and reads the final
    /// response head (`method`: the request's) before `deadline` if there is one
    /// (`ExchangeError::TimedOut`; the connection is then in the middle of an exchange: drop it).
    pub async fn exchange(
        &mut self,
        method: &Method,
        deadline: Option<Instant>,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<Box<ResponseHead>, Failed> {
        let Self { io, read, write, timer } = self;
        let mut exchange = pin!(exchange(io, read, write, method, encode));
        let Some(deadline) = deadline else { return exchange.await };
        let timer = match timer {
            Some(timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let result = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            std::task::ready!(timer.as_mut().poll(cx));
            Poll::Ready(Err(Failed { error: ExchangeError::TimedOut, answered: false }))
        })
        .await;
        release(timer.as_mut());
        result
    }

    /// Reads more of a response body, of which `expected` more bytes are known to come (0:
    /// not known). The read offers room for what is expected, from 8 KiB up to 64 KiB: a 1 MiB
    /// body streams in 16 reads rather than 128 (and as many writes), a small one takes 8 KiB.
    pub fn poll_read_body(&mut self, cx: &mut Context<'_>, expected: u64) -> Poll<std::io::Result<usize>> {
        let room = body_room(expected);
        if self.read.capacity() - self.read.len() < room / 4 {
            self.read.reserve(room);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// `Conn::exchange` without the deadline.
async fn exchange(
    io: &mut UpstreamIo,
    read: &mut BytesMut,
    write: &mut BytesMut,
    method: &Method,
    encode: impl FnOnce(&mut BytesMut),
) -> Result<Box<ResponseHead>, Failed> {
    let failed = |error, answered| Failed { error, answered };
    write.clear();
    encode(write);
    io.write_all(write).await.map_err(|e| failed(ExchangeError::Io(e), false))?;
    let mut answered = false;
    loop {
        while !read.is_empty() {
            let before = read.len();
            match response::parse(read, method) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) if read.len() < before => continue, // an interim 1xx went by
                Ok(None) => break,
                Err(e) => return Err(failed(ExchangeError::Head(e), true)),
            }
        }
        reserve(read);
        match io.read_buf(read).await {
            Ok(0) => return Err(failed(ExchangeError::Closed, answered)),
            Ok(_) => answered = true,
            Err(e) => return Err(failed(ExchangeError::Io(e), answered)),
        }
    }
}

/// Lets go of the waker of the task that last polled `timer`: a timer left in tokio's wheel
/// while its connection waits in the pool would otherwise keep that task's memory (a client
/// connection's, perhaps long closed) until the old deadline passes. Polled unconstrained: a task
/// out of coop budget would not have its waker replaced.
fn release(timer: Pin<&mut Sleep>) {
    let mut cx = Context::from_waker(Waker::noop());
    let _ = Pin::new(&mut tokio::task::unconstrained(timer)).poll(&mut cx);
}

/// Makes room in `read` for the next read.
fn reserve(read: &mut BytesMut) {
    if read.capacity() - read.len() < READ_CHUNK / 4 {
        read.reserve(READ_CHUNK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After an exchange, the connection's timer holds no waker of the task that ran it.
    #[tokio::test]
    async fn a_finished_exchange_leaves_no_waker_in_its_timer() {
        use std::sync::Arc;
        use std::task::Wake;

        struct Counted;
        impl Wake for Counted {
            fn wake(self: Arc<Self>) {}
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
            s
        });
        let mut conn = Conn::new(UpstreamIo::Plain(tokio::net::TcpStream::connect(addr).await.unwrap()));
        let counted = Arc::new(Counted);
        let deadline = Some(Instant::now() + std::time::Duration::from_secs(30));
        let head = {
            let waker = Waker::from(counted.clone());
            let mut cx = Context::from_waker(&waker);
            let mut exchange = Box::pin(conn.exchange(&Method::GET, deadline, |dst| {
                dst.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            }));
            let polled_until = Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if let Poll::Ready(head) = exchange.as_mut().poll(&mut cx) {
                    break head;
                }
                assert!(Instant::now() < polled_until, "no answer");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        assert_eq!(head.unwrap().status, http::StatusCode::OK);
        assert_eq!(Arc::strong_count(&counted), 1, "the timer still holds the task's waker");
        drop(upstream.await.unwrap());
    }

    #[test]
    fn only_an_idempotent_request_that_got_no_answer_in_time_goes_again() {
        let failed = |error, answered| Failed { error, answered };
        let closed = || failed(ExchangeError::Closed, false);
        assert!(closed().may_retry(true, &Method::GET));
        assert!(!closed().may_retry(false, &Method::GET), "a new connection");
        assert!(!closed().may_retry(true, &Method::POST), "not idempotent");
        assert!(!failed(ExchangeError::Closed, true).may_retry(true, &Method::GET), "answered");
        assert!(!failed(ExchangeError::TimedOut, false).may_retry(true, &Method::GET), "the deadline passed");
    }

    #[test]
    fn body_reads_offer_room_for_what_is_expected_within_bounds() {
        assert_eq!(body_room(0), READ_CHUNK, "not known");
        assert_eq!(body_room(100), READ_CHUNK);
        assert_eq!(body_room(20_000), 20_000);
        assert_eq!(body_room(1 << 20), MAX_BODY_READ);
        assert_eq!(body_room(u64::MAX), MAX_BODY_READ);
    }
}
