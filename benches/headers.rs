//! Header rewriting on the forwarding hot path: hop-by-hop removal, X-Forwarded-*, request id.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokengate::config::{ForwardingConfig, XForwardedMode};
use tokengate::proxy::headers::{ensure_request_id, strip_hop_by_hop, ForwardRules};
use tokengate::proxy::ConnInfo;

static RID: HeaderName = HeaderName::from_static("x-request-id");

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

    c.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| strip_hop_by_hop(black_box(h), false, true, &RID),
            criterion::BatchSize::SmallInput,
        )
    });
    for (name, mode) in
        [("x_forwarded_append", XForwardedMode::Append), ("x_forwarded_replace", XForwardedMode::Replace)]
    {
        let r = rules(mode);
        c.bench_function(name, |b| {
            b.iter_batched_ref(
                || base.clone(),
                |h| r.apply_x_forwarded(black_box(h), &peer, Some(&host)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    c.bench_function("ensure_request_id_generate", |b| {
        b.iter_batched_ref(|| base.clone(), |h| ensure_request_id(black_box(h), &id), criterion::BatchSize::SmallInput)
    });
    let r = rules(XForwardedMode::Append);
    c.bench_function("all_request_rules", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| {
                ensure_request_id(h, &id);
                strip_hop_by_hop(h, false, true, &RID);
                r.apply_x_forwarded(h, &peer, Some(&host));
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
