//! Upstream response heads: parsed (interim ones skipped), converted, never a panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokengate::wire::response;

fuzz_target!(|data: &[u8]| {
    let Some((&m, wire)) = data.split_first() else { return };
    let method = match m % 3 {
        0 => http::Method::GET,
        1 => http::Method::HEAD,
        _ => http::Method::POST,
    };
    let mut buf = BytesMut::from(wire);
    for _ in 0..8 {
        match response::parse(&mut buf, &method) {
            Ok(Some(head)) => {
                let _ = head.chunked_wins();
                let _ = head.to_response(1);
                return;
            }
            Ok(None) if !buf.is_empty() => continue,
            _ => return,
        }
    }
});
