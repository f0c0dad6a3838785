//! Config files: every input is loaded or refused with errors, never a panic; what loads,
//! compiles or is refused the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::gateway::Gateway;
use tokengate::metrics::Metrics;
use tokengate::stores::Stores;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(loaded) = tokengate::config::load_str(text, "fuzz.yaml", std::path::Path::new("/nonexistent")) {
        let stores = Stores::default();
        let build = stores.begin();
        let _ = Gateway::build(loaded, &build, &Metrics::new());
    }
});
