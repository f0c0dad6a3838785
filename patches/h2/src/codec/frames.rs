//! Length-delimited HTTP/2 frames (a 9-byte head whose first 3 bytes are the payload length)
//! read from `T`, holding no buffer while the connection is idle: a connection with nothing
//! buffered waits for bytes with a small buffer on the stack of the poll, and gets a heap
//! buffer when they come; the buffer is released again once every frame in it has been taken.
//!
//! (Replaces `tokio_util`'s `FramedRead` with a `LengthDelimitedCodec`, which keeps an 8 KiB
//! buffer for the connection's whole life.)

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_core::Stream;
use tokio::io::{AsyncRead, ReadBuf};

use crate::frame::{DEFAULT_MAX_FRAME_SIZE, HEADER_LEN};

/// Bytes read on the stack when nothing is buffered.
const IDLE_READ: usize = 2 * 1024;

/// A buffer's size once bytes have come (grown when a frame is larger).
const READ_CAPACITY: usize = 8 * 1024;

/// A frame's length field was over the maximum frame size.
#[derive(Debug)]
pub struct FrameTooBig;

impl fmt::Display for FrameTooBig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("frame size too big")
    }
}

impl std::error::Error for FrameTooBig {}

#[derive(Debug)]
pub struct Frames<T> {
    io: T,
    buf: BytesMut,
    max_frame_length: usize,
    eof: bool,
}

impl<T> Frames<T> {
    pub fn new(io: T) -> Self {
        Frames {
            io,
            buf: BytesMut::new(),
            max_frame_length: DEFAULT_MAX_FRAME_SIZE as usize,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    pub fn set_max_frame_length(&mut self, val: usize) {
        self.max_frame_length = val;
    }

    /// The next whole frame in the buffer, head included.
    fn decode(&mut self) -> io::Result<Option<BytesMut>> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = (usize::from(self.buf[0]) << 16) | (usize::from(self.buf[1]) << 8) | usize::from(self.buf[2]);
        if len > self.max_frame_length {
            return Err(io::Error::new(io::ErrorKind::InvalidData, FrameTooBig));
        }
        let total = HEADER_LEN + len;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let frame = self.buf.split_to(total);
        if self.buf.is_empty() {
            // Every frame taken: release the buffer (the frames keep their own bytes).
            self.buf = BytesMut::new();
        }
        Ok(Some(frame))
    }
}

impl<T: AsyncRead + Unpin> Stream for Frames<T> {
    type Item = io::Result<BytesMut>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.decode()? {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.eof {
                if this.buf.is_empty() {
                    return Poll::Ready(None);
                }
                this.buf = BytesMut::new();
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "bytes remaining on stream",
                ))));
            }
            let read = if this.buf.capacity() == 0 {
                let mut stack = [MaybeUninit::<u8>::uninit(); IDLE_READ];
                let mut read = ReadBuf::uninit(&mut stack);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
                let filled = read.filled();
                if !filled.is_empty() {
                    this.buf.reserve(READ_CAPACITY.max(filled.len()));
                    this.buf.extend_from_slice(filled);
                }
                filled.len()
            } else {
                if this.buf.len() == this.buf.capacity() {
                    this.buf.reserve(READ_CAPACITY);
                }
                ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf))?
            };
            if read == 0 {
                this.eof = true;
            }
        }
    }
}
