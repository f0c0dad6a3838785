//! A large relayed body moved from the upstream's socket to the client's by splice(2), through
//! a pipe, as HAProxy does: the bytes never come up into tokengate's memory, so neither the
//! read nor the write copies them. Plain TCP on both sides only; TLS needs the bytes in hand.
//!
//! Readiness is tokio's: each socket is tried through `try_io`, which clears its readiness
//! when the call would block. A splice into the pipe may also block because the pipe is full
//! (it holds a number of page slots, not of bytes), which must not be taken for the socket's
//! emptiness: the upstream side goes through `try_io` only while the pipe is empty.

use std::io::{Error, ErrorKind};
use std::os::fd::OwnedFd;

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The smallest rest of a body worth a pipe (three system calls to make and close it, and two
/// splices per step instead of a read and a write): below it the body is read and written.
pub const MIN_SPLICE: u64 = 64 * 1024;

/// Room asked for the pipe (the kernel's default is 64 KiB; refused above
/// `/proc/sys/fs/pipe-max-size` or the user's pipe quota, and then kept at the default).
const PIPE_SIZE: usize = 256 * 1024;

/// Moves `len` bytes from `upstream` to `client`. An error leaves both sockets in the middle of
/// the body: the caller closes them. An upstream that closes early is `UnexpectedEof`.
pub async fn relay(upstream: &TcpStream, client: &TcpStream, len: u64) -> std::io::Result<()> {
    let (from_pipe, to_pipe) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&to_pipe, PIPE_SIZE);
    let mut remaining = len;
    // Bytes in the pipe, not yet sent on.
    let mut held = 0usize;
    loop {
        let mut moved = false;
        if remaining > 0 {
            let want = usize::try_from(remaining).unwrap_or(usize::MAX);
            let filled = if held == 0 {
                upstream.try_io(Interest::READABLE, || fill(upstream, &to_pipe, want))
            } else {
                fill(upstream, &to_pipe, want)
            };
            match filled {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    remaining -= n as u64;
                    held += n;
                    moved = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if held > 0 {
            match client.try_io(Interest::WRITABLE, || drain(&from_pipe, client, held)) {
                Ok(n) => {
                    held -= n;
                    moved = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if remaining == 0 && held == 0 {
            return Ok(());
        }
        // `try_io` takes nothing from the task's coop budget, as tokio's own reads and writes
        // do: without this, a body that keeps flowing would hold the worker until its end.
        tokio::task::consume_budget().await;
        if !moved {
            // Nothing went either way: wait for the side that holds things up.
            if held > 0 {
                client.writable().await?;
            } else {
                upstream.readable().await?;
            }
        }
    }
}

/// Splices up to `len` bytes from the socket into the pipe.
fn fill(upstream: &TcpStream, to_pipe: &OwnedFd, len: usize) -> std::io::Result<usize> {
    splice(upstream, None, to_pipe, None, len, SpliceFlags::MOVE | SpliceFlags::NONBLOCK).map_err(Error::from)
}

/// Splices up to `len` bytes from the pipe into the socket.
fn drain(from_pipe: &OwnedFd, client: &TcpStream, len: usize) -> std::io::Result<usize> {
    splice(from_pipe, None, client, None, len, SpliceFlags::MOVE | SpliceFlags::NONBLOCK).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), connecting);
        (accepted.unwrap().0, connected.unwrap())
    }

    /// 3 MiB written in uneven pieces at one end of the upstream pair arrive whole and in order
    /// at the other end of the client pair, with a slow reader (the pipe fills and waits), and
    /// the bytes after them are left in the socket.
    #[tokio::test]
    async fn a_body_is_moved_whole_and_in_order() {
        let (mut origin, upstream) = pair().await;
        let (client, mut receiver) = pair().await;
        let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(100_003) {
                origin.write_all(piece).await.unwrap();
            }
            origin.write_all(b"NEXT").await.unwrap();
            origin
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; body.len()];
            for piece in got.chunks_mut(300_007) {
                receiver.read_exact(piece).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (got == body, receiver)
        });
        relay(&upstream, &client, 3 * 1024 * 1024).await.unwrap();
        let (same, _receiver) = reader.await.unwrap();
        assert!(same, "the body arrived changed");
        let _origin = writer.await.unwrap();
        let mut next = [0u8; 4];
        let mut upstream = upstream;
        upstream.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"NEXT", "bytes after the body were taken");
    }

    /// An upstream that closes before the declared length is an error, not a short success.
    #[tokio::test]
    async fn an_upstream_closing_early_is_an_error() {
        let (mut origin, upstream) = pair().await;
        let (client, _receiver) = pair().await;
        origin.write_all(&[7u8; 100_000]).await.unwrap();
        drop(origin);
        let err = relay(&upstream, &client, 200_000).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    }
}
