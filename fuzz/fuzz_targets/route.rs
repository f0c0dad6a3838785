//! Route patterns and paths: a pattern parses or is refused; an exact one matches only itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::token::request::PathPattern;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, path) = text.split_once('\n').unwrap_or((text, text));
    if let Ok(p) = PathPattern::parse(pattern) {
        let matched = p.matches(path);
        if p.is_exact() && matched.is_some() {
            assert_eq!(pattern, path, "an exact pattern matched another path");
        }
        let _ = p.matches(pattern);
    }
});
