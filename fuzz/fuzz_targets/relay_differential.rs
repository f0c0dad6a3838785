//! The relay (a head as bytes) and the `http`-types path must send the upstream the same
//! fields, under every `x_forwarded` mode, trusted peer or not, and give the client the same
//! fields of an upstream's answer. The same input is tried as a request and as a response.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokengate::fuzzing::{by_name, Forwarder};

static FORWARDERS: OnceLock<Vec<Forwarder>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&pick, raw)) = data.split_first() else { return };
    let forwarders = FORWARDERS.get_or_init(|| (0..6).filter_map(|i| Forwarder::new(i % 3, i >= 3)).collect());
    let forwarder = &forwarders[usize::from(pick) % forwarders.len()];
    if let Some((relayed, typed)) = forwarder.both(raw) {
        assert_eq!(by_name(&relayed), by_name(&typed), "the two paths disagree on {:?}", String::from_utf8_lossy(raw));
    }
    if let Some((relayed, typed)) = forwarder.responses(raw) {
        let raw = String::from_utf8_lossy(raw);
        assert_eq!(by_name(&relayed), by_name(&typed), "the two paths disagree on the response {raw:?}");
    }
});
