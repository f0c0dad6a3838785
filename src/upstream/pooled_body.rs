//! The body of an upstream response, streamed to the client as it arrives. Its connection goes
//! back to the pool once the body has ended, and is closed if it never does.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

use super::conn::Conn;
use super::idle::Idle;
use super::io::UpstreamIo;
use crate::wire::decode::{DecodeError, Decoded, Decoder};
use crate::wire::response::ResponseHead;

/// Why an upstream body broke off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("reading the upstream body")]
    Io(#[from] std::io::Error),
    #[error("invalid upstream body")]
    Decode(#[from] DecodeError),
}

/// An upstream response body.
pub struct PooledBody<B: Send + 'static>(Kind<B>);

enum Kind<B: Send + 'static> {
    /// Read from tokengate's own connection by whoever polls the body.
    Own { conn: Option<Conn>, decoder: Decoder, keep_alive: bool, upgrade: bool, pool: Arc<Idle<B>> },
    /// From hyper's client connection; the sender returns to the pool at the end.
    Hyper { inner: Incoming, back: Option<(SendRequest<B>, Arc<Idle<B>>)> },
}

impl<B: Send + 'static> std::fmt::Debug for PooledBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PooledBody")
    }
}

impl<B: Send + 'static> PooledBody<B> {
    /// The body of the response to `head`, read on `conn`. A 101 keeps the connection for the
    /// tunnel.
    pub fn own(conn: Conn, head: &ResponseHead, pool: Arc<Idle<B>>) -> Self {
        let upgrade = head.status == http::StatusCode::SWITCHING_PROTOCOLS;
        let kind = Kind::Own { conn: Some(conn), decoder: head.decoder, keep_alive: head.keep_alive, upgrade, pool };
        let mut body = Self(kind);
        if !upgrade {
            body.finish_if_done();
        }
        body
    }

    pub fn hyper(inner: Incoming, back: Option<(SendRequest<B>, Arc<Idle<B>>)>) -> Self {
        Self(Kind::Hyper { inner, back })
    }

    /// After a 101 from tokengate's own connection: the socket and any bytes that came after the
    /// response head, for the tunnel. None for hyper's connections (use `hyper::upgrade::on`).
    pub fn take_upgraded(&mut self) -> Option<Conn> {
        match &mut self.0 {
            Kind::Own { conn, upgrade: true, .. } => conn.take(),
            _ => None,
        }
    }

    /// For a body sent on by splice(2) (`server::splice`): the plain TCP socket it comes from and
    /// its first bytes, read with the head, when it is the body of `declared` bytes on
    /// tokengate's own connection, none of it taken yet, and at least `min` of it still in the
    /// socket. The body then stands for the rest only; `spliced` says that went too.
    pub fn splice_from(&mut self, declared: u64, min: u64) -> Option<(&TcpStream, Bytes)> {
        let Kind::Own { conn: Some(conn), decoder, upgrade: false, .. } = &mut self.0 else { return None };
        let UpstreamIo::Plain(socket) = &conn.io else { return None };
        let early = (conn.read.len() as u64).min(declared);
        if *decoder != Decoder::Length(declared) || declared - early < min {
            return None;
        }
        let early_bytes = conn.read.split_to(early as usize).freeze();
        *decoder = Decoder::Length(declared - early);
        Some((socket, early_bytes))
    }

    /// The rest of the body left by splice: the connection goes back to the pool as after any
    /// body read to its end (when the body is dropped). Not called when splicing failed: a
    /// connection left in the middle of a body is closed.
    pub fn spliced(&mut self) {
        if let Kind::Own { decoder, .. } = &mut self.0 {
            *decoder = Decoder::Length(0);
        }
    }

    /// Returns the connection to the pool once the body has ended (closes it if it cannot be
    /// reused).
    fn finish_if_done(&mut self) {
        match &mut self.0 {
            Kind::Own { conn, decoder, keep_alive, upgrade: false, pool } if decoder.is_done() => {
                if let Some(conn) = conn.take().filter(|c| *keep_alive && c.read.is_empty()) {
                    pool.put_conn(conn);
                }
            }
            Kind::Hyper { inner, back } if inner.is_end_stream() => {
                if let Some((sender, pool)) = back.take() {
                    pool.put_sender(sender);
                }
            }
            _ => {}
        }
    }
}

/// One step of reading an own connection's body.
fn poll_own(
    conn: &mut Conn,
    decoder: &mut Decoder,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    loop {
        match decoder.decode(&mut conn.read)? {
            Decoded::Frame(frame) => return Poll::Ready(Some(Ok(frame))),
            Decoded::End => return Poll::Ready(None),
            Decoded::NeedMore => {}
        }
        if ready!(conn.poll_read_body(cx, decoder.expected()))? == 0 {
            decoder.eof()?;
            return Poll::Ready(None);
        }
    }
}

impl<B: Send + Unpin + 'static> HttpBody for PooledBody<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = match &mut self.0 {
            Kind::Own { conn: Some(conn), decoder, upgrade: false, .. } => ready!(poll_own(conn, decoder, cx)),
            Kind::Own { .. } => None,
            Kind::Hyper { inner, .. } => ready!(Pin::new(inner).poll_frame(cx)).map(|r| r.map_err(BodyError::from)),
        };
        match &polled {
            // A broken connection is never reused.
            Some(Err(_)) => {
                if let Kind::Own { conn, .. } = &mut self.0 {
                    *conn = None;
                }
            }
            _ => self.finish_if_done(),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Own { conn, decoder, .. } => conn.is_none() || decoder.is_done(),
            Kind::Hyper { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Own { decoder, .. } => decoder.remaining().map_or_else(SizeHint::default, SizeHint::with_exact),
            Kind::Hyper { inner, .. } => inner.size_hint(),
        }
    }
}

impl<B: Send + 'static> Drop for PooledBody<B> {
    fn drop(&mut self) {
        // Only a fully read body leaves the connection reusable; otherwise it closes here.
        self.finish_if_done();
    }
}
