//! The token route's hot pieces: minting per algorithm (keys parsed once), template rendering,
//! and the auth-cache hit path.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark, example or test: a failure should stop it loudly"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};
use tokengate::auth::{AuthCache, Identity};
use tokengate::config::{Algorithm, KeyConfig, Secret, TokenConfig};
use tokengate::hsm::Modules;
use tokengate::json_body::JsonBody;
use tokengate::keys::{generate_pem, KeyRing};
use tokengate::template::{Found, JsonText, Lookup, Scope, Source, Template};
use tokengate::token::mint::TokenSpec;

/// A caller as a chat-token route sees it: the identity a hook gave, the request's JSON body.
struct Ctx(Value, JsonBody);

impl Lookup for Ctx {
    fn lookup<'a>(&'a self, source: &'a Source) -> Option<Found<'a>> {
        match source {
            Source::User(f) => self.0["user"].get(f).map(Found::held),
            Source::Body(p) => self.1.get(p).map(Found::Text),
            Source::Literal(v) => Some(Found::held(v)),
            _ => None,
        }
    }
}

fn key(alg: Algorithm) -> KeyConfig {
    let (secret, private_key) = if alg.is_hmac() {
        (Some(Secret::new("a-long-enough-hmac-secret-for-benchmarks")), None)
    } else {
        (None, Some(Secret::new(generate_pem(alg).unwrap())))
    };
    KeyConfig {
        id: alg.name().into(),
        algorithm: alg,
        secret,
        secret_base64: None,
        private_key,
        private_key_base64: None,
        service_account: None,
        pkcs11: None,
        retired: false,
    }
}

fn bench(c: &mut Criterion) {
    let ctx = Ctx(
        json!({
            "user": {"id": "user-123", "name": "Alice Johnson", "image": "https://i.example/a.png", "custom": {"dept": "eng"}},
        }),
        JsonBody::from_value(&json!({"deviceInfo": {"device_name": "iPhone 15", "os_version": "iOS 17.5"}})),
    );
    let claims = json!({"sub": "{{ user.id }}", "name": "{{ user.name }}", "channel": "user:{{ user.id }}", "custom": "{{ user.custom | {} }}"});
    let algs =
        [Algorithm::HS256, Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256, Algorithm::PS256, Algorithm::ES384];
    let ring = KeyRing::load(&algs.iter().map(|a| key(*a)).collect::<Vec<_>>(), &Modules::default()).unwrap();
    let mut group = c.benchmark_group("mint");
    for alg in algs {
        let cfg: TokenConfig =
            serde_json::from_value(json!({"key": alg.name(), "ttl": "24h", "claims": claims})).unwrap();
        let spec = TokenSpec::build("token", &cfg, &ring, "bench").unwrap();
        group.bench_function(alg.name(), |b| {
            b.iter(|| spec.mint(black_box(&ctx), 1_795_000_000).now_or_never().unwrap().unwrap())
        });
    }
    group.finish();

    let response = Template::compile(
        &json!({"token": "{{ user.id }}", "user": {"id": "{{ user.id }}", "name": "{{ user.name }}", "image": "{{ user.image }}"}, "device": "{{ body.deviceInfo }}"}),
        Scope::Response,
        "bench",
    )
    .unwrap();
    c.bench_function("template_render", |b| b.iter(|| response.render(black_box(&ctx)).unwrap()));
    // What a token route does with a JSON response (and with claims): the text at once.
    let json = JsonText::new(&response);
    c.bench_function("template_write_json", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(512);
            json.write(black_box(&ctx), &mut out).unwrap();
            out
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cache = AuthCache::new(Duration::from_secs(30), Duration::from_secs(2), 100_000, 25_000).unwrap();
    let names = [HeaderName::from_static("cookie"), HeaderName::from_static("authorization")];
    let mut headers = HeaderMap::new();
    headers.insert("cookie", HeaderValue::from_static("session=0123456789abcdef0123456789abcdef; theme=dark"));
    let identity = Arc::new(Identity(json!({"id": "user-123", "name": "Alice"}).as_object().unwrap().clone()));
    let key = cache.key(&names, tokengate::header_view::HeaderView::Map(&headers));
    runtime.block_on(cache.get_or_call(key, || async { Ok(Some(identity.clone())) })).0.unwrap();
    let limit = tokengate::ratelimit::RateLimit::build(
        "bench",
        &serde_json::from_value(json!({"key": "client_ip", "rate": 1_000_000_000u32, "per": "1s"})).unwrap(),
        tokengate::config::RateLimitHeaders::Both,
        &tokengate::shelf::Shelf::default(),
    )
    .unwrap();
    c.bench_function("ratelimit_check_hot_key", |b| b.iter(|| limit.check_key(black_box(b"203.0.113.7"))));
    let mut n = 0u32;
    c.bench_function("ratelimit_check_new_keys", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            limit.check_key(&n.to_be_bytes())
        })
    });

    // The auth cache key's MAC over a cookie header, natively (callgrind's simulated CPU has no
    // SHA extensions, so its counts overstate HMAC-SHA256 wherever the CPU has them).
    let cookie = headers.get("cookie").unwrap().as_bytes();
    let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[7; 32]);
    c.bench_function("mac_cookie_hmac_sha256", |b| b.iter(|| aws_lc_rs::hmac::sign(&hmac_key, black_box(cookie))));
    // An HS256 token's signing input (~300 bytes): aws-lc-rs's HMAC (its keyed context copied per
    // message) against RustCrypto's (`keys::HmacKey`: the keyed state cloned per message).
    let input = [b'e'; 300];
    c.bench_function("hmac_sha256_token_aws_lc", |b| b.iter(|| aws_lc_rs::hmac::sign(&hmac_key, black_box(&input))));
    let rust_crypto = <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(&[7; 32]).unwrap();
    c.bench_function("hmac_sha256_token_rustcrypto", |b| {
        b.iter(|| {
            let mut mac = rust_crypto.clone();
            hmac::Mac::update(&mut mac, black_box(&input));
            hmac::Mac::finalize(mac).into_bytes()
        })
    });
    c.bench_function("mac_cookie_blake3_keyed", |b| {
        b.iter(|| blake3::Hasher::new_keyed(&[7; 32]).update(black_box(cookie)).finalize())
    });

    c.bench_function("auth_cache_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            let key = cache.key(&names, tokengate::header_view::HeaderView::Map(black_box(&headers)));
            let (found, called) = cache.get_or_call(key, || async { Err("the hit path never calls".to_owned()) }).await;
            assert!(!called);
            found.unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
