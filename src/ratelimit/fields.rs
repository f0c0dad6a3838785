//! The RateLimit response fields of the limit that decided: the legacy `RateLimit-Limit`,
//! `-Remaining`, `-Reset`, and/or the IETF httpapi draft's structured fields (RFC 9651)
//! `RateLimit-Policy: "<limit>";q=<quota>;w=<window s>` and
//! `RateLimit: "<limit>";r=<remaining>;t=<seconds to reset>`, per `rate_limit_headers`.

use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};

use super::{Decision, Quota};
use crate::config::RateLimitHeaders;

/// Adds the fields `style` asks for to `h`.
pub fn insert(h: &mut HeaderMap, limit: &str, quota: &Quota, decision: &Decision, style: RateLimitHeaders) {
    let reset = secs_up(decision.reset);
    if style.legacy() {
        h.insert("ratelimit-limit", HeaderValue::from(quota.burst));
        h.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
        h.insert("ratelimit-reset", HeaderValue::from(reset));
    }
    if style.draft() {
        let name = sf_string(limit);
        // GCRA: `burst` requests, refilled over burst emission intervals.
        let window = secs_up(quota.horizon()).max(1);
        let policy = format!("{name};q={};w={window}", quota.burst);
        let state = format!("{name};r={};t={reset}", decision.remaining);
        // Printable ASCII only (sf_string), so always a valid field value.
        if let (Ok(policy), Ok(state)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&state)) {
            h.insert("ratelimit-policy", policy);
            h.insert("ratelimit", state);
        }
    }
}

/// Whole seconds, rounded up.
fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// An RFC 9651 sf-string: quoted, `"` and `\` escaped; characters outside printable ASCII
/// (a limit name is a config key, usually plain) become `?`.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision() -> Decision {
        Decision {
            allowed: false,
            remaining: 0,
            reset: Duration::from_millis(2500),
            retry_after: Duration::from_millis(500),
        }
    }

    #[test]
    fn each_style_writes_its_fields_only() {
        let quota = Quota::new(20, Duration::from_secs(60), None);
        let mut h = HeaderMap::new();
        insert(&mut h, "per_ip", &quota, &decision(), RateLimitHeaders::Draft);
        assert_eq!(h["ratelimit-policy"], r#""per_ip";q=20;w=60"#);
        assert_eq!(h["ratelimit"], r#""per_ip";r=0;t=3"#);
        assert!(!h.contains_key("ratelimit-limit"));
        let mut h = HeaderMap::new();
        insert(&mut h, "per_ip", &quota, &decision(), RateLimitHeaders::Legacy);
        assert_eq!(h["ratelimit-limit"], "20");
        assert_eq!(h["ratelimit-reset"], "3");
        assert!(!h.contains_key("ratelimit"));
    }

    #[test]
    fn limit_names_are_escaped_as_sf_strings() {
        assert_eq!(sf_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(sf_string("tenant-é"), r#""tenant-?""#);
    }
}
