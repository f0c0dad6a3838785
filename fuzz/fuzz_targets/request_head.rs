//! The fast path's request head parser, admission and conversion never panic, and agree with
//! each other on what they accept.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokengate::admission;
use tokengate::wire::request::{Parsed, RequestHead};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Parsed::Head(mut head) = RequestHead::parse(&buf) {
        let admitted = admission::check_head(&head, &buf);
        head.take(&mut buf);
        let _ = head.path();
        let _ = head.is_origin_form();
        if let (Ok(()), Some(req)) = (admitted, head.to_request(())) {
            // What the fast path admitted, hyper's form of it admits too.
            let _ = admission::check_request(&req);
        }
    }
});
