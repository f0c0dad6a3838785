//! tokengate's own HTTP/1.1 client connection, for requests whose body is already in hand
//! (none, or one tokengate made). It runs inside the task that serves the downstream
//! connection: the request is written, the response head read and the body streamed back from
//! the same socket by whoever polls it, with no connection task, channel or wake-up in between.
//! Requests with a streamed body go through hyper's client instead (see `pool`), which can
//! send a body while the response is already arriving.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::wire::encode::encode_request;

use super::io::UpstreamIo;
use crate::wire::response::{self, HeadError, ResponseHead};

/// Read buffer growth: enough for a typical head and a small body in one read.
pub const READ_CHUNK: usize = 8 * 1024;

/// The most a body read asks for at once (nginx's `proxy_buffers` default is 8 × 8 KiB).
const MAX_BODY_READ: usize = 64 * 1024;

/// The room of the read after one that was offered `offered` bytes and read `n`.
fn next_body_room(room: usize, offered: usize, n: usize) -> usize {
    if n >= offered {
        (room * 2).min(MAX_BODY_READ)
    } else {
        READ_CHUNK
    }
}

/// One upstream connection and what has been read from it but not consumed.
#[derive(Debug)]
pub struct Conn {
    pub io: UpstreamIo,
    pub read: BytesMut,
    write: BytesMut,
    /// The room the next body read offers (see `poll_read_body`).
    body_room: usize,
}

/// A failed exchange, and whether any byte of an answer had arrived (if not, and the connection
/// was a reused one, the upstream most likely closed it just before the request went out).
#[derive(Debug)]
pub struct Failed {
    pub error: ExchangeError,
    pub answered: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("upstream connection failed")]
    Io(#[source] std::io::Error),
    #[error("invalid response from upstream")]
    Head(#[source] HeadError),
    #[error("upstream closed the connection without answering")]
    Closed,
}

impl Conn {
    pub fn new(io: UpstreamIo) -> Self {
        Self {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: BytesMut::with_capacity(512),
            body_room: READ_CHUNK,
        }
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
    /// response head (`method`: the request's).
    pub async fn exchange(
        &mut self,
        method: &Method,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<ResponseHead, Failed> {
        let failed = |error, answered| Failed { error, answered };
        self.write.clear();
        encode(&mut self.write);
        self.io.write_all(&self.write).await.map_err(|e| failed(ExchangeError::Io(e), false))?;
        let mut answered = false;
        loop {
            while !self.read.is_empty() {
                let before = self.read.len();
                match response::parse(&mut self.read, method) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) if self.read.len() < before => continue, // an interim 1xx went by
                    Ok(None) => break,
                    Err(e) => return Err(failed(ExchangeError::Head(e), true)),
                }
            }
            self.reserve();
            match self.io.read_buf(&mut self.read).await {
                Ok(0) => return Err(failed(ExchangeError::Closed, answered)),
                Ok(_) => answered = true,
                Err(e) => return Err(failed(ExchangeError::Io(e), answered)),
            }
        }
    }

    /// Reads more of a response body. Each read that fills all the room it was offered doubles
    /// the room of the next, up to 64 KiB, and one that does not returns it to 8 KiB: a large
    /// body streams in few reads (a 1 MiB body took 128 of them, and as many writes), while a
    /// trickle holds 8 KiB.
    pub fn poll_read_body(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let room = self.body_room;
        if self.read.capacity() - self.read.len() < room / 4 {
            self.read.reserve(room);
        }
        let offered = self.read.capacity() - self.read.len();
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read))?;
        self.body_room = next_body_room(room, offered, n);
        Poll::Ready(Ok(n))
    }

    /// Makes room for the next read.
    pub fn reserve(&mut self) {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_reads_grow_while_they_fill_and_shrink_when_they_do_not() {
        let mut room = READ_CHUNK;
        let mut rooms = Vec::new();
        for _ in 0..5 {
            room = next_body_room(room, room, room);
            rooms.push(room / 1024);
        }
        assert_eq!(rooms, [16, 32, 64, 64, 64]);
        assert_eq!(next_body_room(MAX_BODY_READ, MAX_BODY_READ, 100), READ_CHUNK, "a trickle");
    }
}
