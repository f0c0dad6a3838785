//! A flood of distinct keys cannot grow a limiter past its bound. Its own test binary, so the
//! process RSS it reads is not shared with other tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark, example or test: a failure should stop it loudly"
)]

use std::time::{Duration, Instant};

use tokengate::config::units::Duration as ConfigDuration;
use tokengate::config::RateLimitConfig;
use tokengate::ratelimit::RateLimit;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The documented bound: 100,000 tracked keys (the default `max_keys`) in under 8 MiB.
const MAX_KEYS: u64 = 100_000;
const BOUND_KIB: u64 = 8 * 1024;

#[test]
fn a_million_distinct_keys_stay_within_the_bound() {
    let cfg = RateLimitConfig {
        key: "client_ip".into(),
        rate: 10,
        per: ConfigDuration(Duration::from_secs(60)),
        burst: None,
        max_keys: Some(MAX_KEYS),
        dry_run: false,
    };
    let limit =
        RateLimit::build("flood", &cfg, tokengate::config::RateLimitHeaders::Both, &tokengate::shelf::Shelf::default())
            .unwrap();
    let before = rss_kib();
    let start = Instant::now();
    for i in 0u32..1_000_000 {
        // Distinct IPv4 addresses, as from a flood of spoofed or botnet clients.
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        assert!(limit.check_key(&ip.octets()).allowed);
    }
    let tracked = limit.tracked_keys();
    let grown = rss_kib().saturating_sub(before);
    eprintln!("1,000,000 keys in {:?}: {tracked} tracked, RSS grew {grown} KiB", start.elapsed());
    assert!(tracked <= MAX_KEYS, "{tracked} keys tracked");
    assert!(grown < BOUND_KIB, "RSS grew {grown} KiB");
}
