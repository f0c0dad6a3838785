//! Copies bytes both ways between two connections, holding no buffer while they are quiet.
//!
//! `tokio::io::copy_bidirectional` keeps an 8 KiB buffer per direction for the tunnel's whole
//! life; a chat app's tunnels are mostly silent, so that is most of what an open WebSocket
//! costs. Here each read goes into a buffer on the stack of the poll and is written on at once;
//! only bytes the other side cannot take yet are kept, on the heap, until it can.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per poll (on the stack, never kept).
const CHUNK: usize = 16 * 1024;

/// One direction's state.
#[derive(Default)]
struct Direction {
    /// Read, not yet written: the other side was not ready.
    pending: Bytes,
    /// Written but not flushed (a TLS stream may hold them).
    unflushed: bool,
    /// The reading side ended: shut the writing side down.
    eof: bool,
    done: bool,
    copied: u64,
}

/// Copies from `a` to `b` and from `b` to `a` until both have ended (each end shuts the other
/// side's writing down, as `copy_bidirectional` does) or either fails. Returns the bytes copied
/// each way.
pub async fn both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up, mut down) = (Direction::default(), Direction::default());
    poll_fn(|cx| {
        let a_to_b = one_way(cx, &mut *a, &mut *b, &mut up)?;
        let b_to_a = one_way(cx, &mut *b, &mut *a, &mut down)?;
        match (a_to_b, b_to_a) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok((up.copied, down.copied))),
            _ => Poll::Pending,
        }
    })
    .await
}

fn one_way<R, W>(cx: &mut Context<'_>, from: &mut R, to: &mut W, d: &mut Direction) -> Poll<io::Result<()>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if d.done {
            return Poll::Ready(Ok(()));
        }
        while !d.pending.is_empty() {
            let n = ready!(Pin::new(&mut *to).poll_write(cx, &d.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            d.pending.advance(n);
        }
        // Release the allocation, not just its end.
        d.pending = Bytes::new();
        if d.eof {
            ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
            d.done = true;
            continue;
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut read = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut *from).poll_read(cx, &mut read) {
            Poll::Ready(result) => result?,
            Poll::Pending => {
                // Nothing more to read for now: what was written must not wait in a buffer.
                if d.unflushed {
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    d.unflushed = false;
                }
                return Poll::Pending;
            }
        }
        let filled = read.filled();
        if filled.is_empty() {
            d.eof = true;
            if d.unflushed {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                d.unflushed = false;
            }
            continue;
        }
        d.copied += filled.len() as u64;
        d.unflushed = true;
        let mut written = 0;
        while written < filled.len() {
            match Pin::new(&mut *to).poll_write(cx, &filled[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // The other side is full: keep the rest (and read no more) until it drains.
                    d.pending = Bytes::copy_from_slice(&filled[written..]);
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn copies_both_ways_through_a_slow_reader_and_ends_each_side() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, mut server) = tokio::io::duplex(64);
        let pump = tokio::spawn(async move { both_ways(&mut a, &mut b).await });
        // Far more than the pipes hold: the pump must keep what the reader cannot take yet.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        assert_eq!(pump.await.unwrap().unwrap(), (200_000, 3));
    }
}
