//! The upstream body decoder: fed at once or in pieces, the same bytes, trailers and verdict.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokengate::wire::decode::{Decoded, Decoder};

/// Data, trailer count and whether the body ended well, decoding `wire` `step` bytes at a time.
fn run(mut decoder: Decoder, wire: &[u8], step: usize) -> (Vec<u8>, usize, bool) {
    let (mut data, mut trailers, mut buf) = (Vec::new(), 0, BytesMut::new());
    for piece in wire.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Frame(frame)) => match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(_) => trailers += 1,
                },
                Ok(Decoded::End) => return (data, trailers, true),
                Ok(Decoded::NeedMore) => break,
                Err(_) => return (data, trailers, false),
            }
        }
    }
    let ended = decoder.eof().is_ok();
    (data, trailers, ended)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, wire)) = data.split_first() else { return };
    let whole = run(Decoder::chunked(), wire, wire.len());
    let pieces = run(Decoder::chunked(), wire, usize::from(step % 16) + 1);
    // A verdict reached on the whole input holds when it comes in pieces.
    if whole.2 {
        assert_eq!(whole, pieces, "chunked decoding depends on how the bytes arrive");
    }
});
