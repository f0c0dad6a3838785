//! Response body framing (RFC 9112 §6–7): a known length, chunked with optional trailers, or
//! everything up to the connection's close. Works on the connection's read buffer and hands out
//! data frames as slices of it, without copying.

use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

/// Longest chunk-size line (size, extensions) or trailer block accepted.
const MAX_LINE: usize = 8 * 1024;
/// Most trailer fields accepted.
const MAX_TRAILERS: usize = 64;

/// Why a body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("invalid or oversized trailers")]
    Trailers,
    #[error("the connection closed before the body ended")]
    Truncated,
}

/// What one step of decoding produced.
#[derive(Debug)]
pub enum Decoded {
    Frame(Frame<bytes::Bytes>),
    /// The body has ended; whatever follows in the buffer is not part of it.
    End,
    /// More bytes are needed.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// The framing of one response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// `remaining` bytes are left (0: the body has ended).
    Length(u64),
    Chunked(Chunked),
    /// Everything until the upstream closes; the connection cannot be reused.
    Close,
    Done,
}

impl Decoder {
    pub fn chunked() -> Self {
        Self::Chunked(Chunked::Size)
    }

    /// True once nothing more belongs to the body.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done | Self::Length(0))
    }

    /// Bytes still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match *self {
            Self::Length(n) => Some(n),
            Self::Done => Some(0),
            _ => None,
        }
    }

    /// Bytes known to come before the body (or its current chunk) ends; 0 when not known.
    pub fn expected(&self) -> u64 {
        match *self {
            Self::Length(n) | Self::Chunked(Chunked::Data(n)) => n,
            _ => 0,
        }
    }

    /// Takes what `buf` holds of the body, one frame at a time.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            match self {
                Self::Done | Self::Length(0) => {
                    *self = Self::Done;
                    return Ok(Decoded::End);
                }
                Self::Length(n) | Self::Chunked(Chunked::Data(n)) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(*n).unwrap_or(usize::MAX).min(buf.len());
                    *n -= take as u64;
                    if *self == Self::Chunked(Chunked::Data(0)) {
                        *self = Self::Chunked(Chunked::DataEnd);
                    }
                    return Ok(Decoded::Frame(Frame::data(buf.split_to(take).freeze())));
                }
                Self::Close => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Frame(Frame::data(buf.split().freeze())));
                }
                Self::Chunked(Chunked::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = Self::Chunked(if size == 0 { Chunked::Trailers } else { Chunked::Data(size) });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_LINE => return Ok(Decoded::NeedMore),
                    _ => return Err(DecodeError::ChunkSize),
                },
                Self::Chunked(Chunked::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DecodeError::ChunkEnd);
                    }
                    buf.advance(2);
                    *self = Self::Chunked(Chunked::Size);
                }
                Self::Chunked(Chunked::Trailers) => return self.trailers(buf),
            }
        }
    }

    /// The trailer section after the last chunk: empty (just CRLF) or header fields.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        let (used, map) = match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, fields))) => {
                let mut map = HeaderMap::with_capacity(fields.len());
                for f in fields {
                    let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| DecodeError::Trailers)?;
                    let value = HeaderValue::from_bytes(f.value).map_err(|_| DecodeError::Trailers)?;
                    map.append(name, value);
                }
                (used, map)
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_LINE => return Ok(Decoded::NeedMore),
            _ => return Err(DecodeError::Trailers),
        };
        buf.advance(used);
        *self = Self::Done;
        Ok(if map.is_empty() { Decoded::End } else { Decoded::Frame(Frame::trailers(map)) })
    }

    /// The upstream closed the connection: the end of a close-delimited body, an error otherwise.
    pub fn eof(&mut self) -> Result<(), DecodeError> {
        match self {
            Self::Close | Self::Done | Self::Length(0) => {
                *self = Self::Done;
                Ok(())
            }
            _ => Err(DecodeError::Truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the data, the trailers and what is left.
    fn run(mut d: Decoder, input: &[u8], step: usize) -> Result<(Vec<u8>, HeaderMap, Vec<u8>), DecodeError> {
        let (mut data, mut trailers, mut buf) = (Vec::new(), HeaderMap::new(), BytesMut::new());
        let mut pieces = input.chunks(step);
        loop {
            match d.decode(&mut buf)? {
                Decoded::Frame(f) => match f.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(f) => trailers = f.into_trailers().expect("a frame is data or trailers"),
                },
                Decoded::End => return Ok((data, trailers, buf.to_vec())),
                Decoded::NeedMore => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => {
                        d.eof()?;
                        return Ok((data, trailers, buf.to_vec()));
                    }
                },
            }
        }
    }

    #[test]
    fn length_stops_at_the_boundary() {
        for step in [1, 3, 100] {
            let (data, _, rest) = run(Decoder::Length(5), b"helloHTTP/1.1", step).unwrap();
            assert_eq!(data, b"hello");
            assert!(rest.len() <= step, "step {step}: the decoder read past the body");
        }
        assert_eq!(run(Decoder::Length(5), b"hel", 2), Err(DecodeError::Truncated));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-sum: 42\r\nx-b: 1\r\n\r\nNEXT";
        for step in [1, 2, 7, 1000] {
            let (data, trailers, rest) = run(Decoder::chunked(), wire, step).unwrap();
            assert_eq!(data, b"hello0123456789", "step {step}");
            assert_eq!(trailers["x-sum"], "42");
            assert_eq!(trailers.len(), 2);
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn chunked_without_trailers_ends_cleanly() {
        let (data, trailers, rest) = run(Decoder::chunked(), b"3\r\nabc\r\n0\r\n\r\n", 1000).unwrap();
        assert_eq!((data.as_slice(), trailers.len(), rest.len()), (&b"abc"[..], 0, 0));
    }

    #[test]
    fn chunked_rejects_garbage() {
        assert_eq!(run(Decoder::chunked(), b"zz\r\n", 100), Err(DecodeError::ChunkSize));
        assert_eq!(run(Decoder::chunked(), b"3\r\nabcXX0\r\n\r\n", 100), Err(DecodeError::ChunkEnd));
        assert_eq!(run(Decoder::chunked(), b"3\r\nab", 100), Err(DecodeError::Truncated));
        assert_eq!(run(Decoder::chunked(), &[b'1'; 20000], 100), Err(DecodeError::ChunkSize));
    }

    #[test]
    fn close_delimited_reads_to_eof() {
        let (data, _, _) = run(Decoder::Close, b"all of it", 4).unwrap();
        assert_eq!(data, b"all of it");
    }
}
