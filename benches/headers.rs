//! The SPEC §3 request rules over an `http::HeaderMap` (the path of HTTP/2 and of requests
//! with a body): one plan per request, under each `x_forwarded` mode, and the request id.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark, example or test: a failure should stop it loudly"
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokengate::config::{ForwardingConfig, XForwardedMode};
use tokengate::conn_info::ConnInfo;
use tokengate::proxy::headers::{apply_request, ensure_request_id};
use tokengate::proxy::ForwardRules;

/// What a browser sends through a load balancer, give or take.
fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
        ),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "203.0.113.7"),
        ("sec-fetch-mode", "navigate"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn rules(mode: XForwardedMode) -> ForwardRules {
    ForwardRules::new(&ForwardingConfig { x_forwarded: mode, ..ForwardingConfig::default() })
}

fn bench(c: &mut Criterion) {
    let base = browser_headers();
    let peer = ConnInfo::new("10.1.2.3:5555".parse().unwrap(), false);
    let host = HeaderValue::from_static("app.example.com");
    let id = HeaderName::from_static("x-request-id");

    for (name, mode) in [
        ("request_rules_off", XForwardedMode::Off),
        ("request_rules_append", XForwardedMode::Append),
        ("request_rules_replace", XForwardedMode::Replace),
    ] {
        let r = rules(mode);
        c.bench_function(name, |b| {
            b.iter_batched_ref(
                || base.clone(),
                |h| apply_request(&r, black_box(h), &peer, false, &host),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    c.bench_function("ensure_request_id_generate", |b| {
        b.iter_batched_ref(|| base.clone(), |h| ensure_request_id(black_box(h), &id), criterion::BatchSize::SmallInput)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
