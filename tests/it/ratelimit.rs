//! Rate limits (SPEC §2, §3): GCRA per key, pre-auth vs user-keyed order, 429 headers,
//! trusted-proxy-only client IPs, limits on forwarded traffic.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;

use crate::common::{backend, client, spawn_app};

async fn post(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> client::Resp {
    client::request(addr, Method::POST, path, headers, Bytes::new()).await.unwrap()
}

fn route_yaml(b: &backend::Backend, limits: &str, route_limits: &str, extra: &str) -> String {
    format!(
        "{extra}\nkeys: [{{ id: k, algorithm: HS256, secret: s }}]\nrate_limits:\n{limits}\nauth_hooks:\n  session: {{ type: http, url: '{}/api/me', forward_headers: [cookie], identity: {{ id: body:/id }} }}\nroutes: [{{ name: chat, path: /t, auth: session, rate_limits: [{route_limits}], tokens: {{ t: {{ key: k, ttl: 1m }} }}, response: {{ body: {{ ok: true }} }}, error_response: {{ body: {{ message: 'Error: {{{{ error.message }}}}', success: false }} }} }}]\n",
        b.url()
    )
}

#[tokio::test]
async fn per_ip_limit_answers_429_before_the_auth_hook_is_called() {
    let b = backend::spawn().await;
    let yaml = route_yaml(&b, "  per_ip: { key: client_ip, rate: 1, per: 1m }", "per_ip", "");
    let app = spawn_app(&b.url(), &yaml).await;
    let first = post(app.addr, "/t", &[]).await;
    assert_eq!(first.status, 401);
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 1);
    let r = post(app.addr, "/t", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 1, "the hook is not called once the limit is hit");
    assert_eq!(r.json(), serde_json::json!({"message": "Error: too many requests, retry later", "success": false}));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-limit"), Some("1"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert!(r.header("ratelimit-reset").is_some());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_rate_limited_total{limit=\"per_ip\"} 1"), "{metrics}");
}

#[tokio::test]
async fn user_limits_run_after_auth_and_are_per_user() {
    let b = backend::spawn().await;
    let yaml = route_yaml(&b, "  per_user: { key: user, rate: 2, per: 15m }", "per_user", "");
    let app = spawn_app(&b.url(), &yaml).await;
    for _ in 0..2 {
        assert_eq!(post(app.addr, "/t", &[("cookie", "session=ann")]).await.status, 200);
    }
    assert_eq!(post(app.addr, "/t", &[("cookie", "session=ann")]).await.status, 429);
    assert_eq!(
        post(app.addr, "/t", &[("cookie", "session=ben")]).await.status,
        200,
        "another user has their own bucket"
    );
    // An unauthenticated caller is refused by the hook, not by a user limit.
    assert_eq!(post(app.addr, "/t", &[]).await.status, 401);
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_does_not_change_the_key() {
    let b = backend::spawn().await;
    let limits = "  per_ip: { key: client_ip, rate: 1, per: 1m }";
    let app = spawn_app(&b.url(), &route_yaml(&b, limits, "per_ip", "")).await;
    assert_eq!(post(app.addr, "/t", &[("cookie", "session=a"), ("x-forwarded-for", "1.1.1.1")]).await.status, 200);
    assert_eq!(post(app.addr, "/t", &[("cookie", "session=a"), ("x-forwarded-for", "2.2.2.2")]).await.status, 429);

    let trusted =
        spawn_app(&b.url(), &route_yaml(&b, limits, "per_ip", "forwarding: { trusted_proxies: [127.0.0.0/8] }")).await;
    assert_eq!(post(trusted.addr, "/t", &[("cookie", "session=a"), ("x-forwarded-for", "1.1.1.1")]).await.status, 200);
    assert_eq!(
        post(trusted.addr, "/t", &[("cookie", "session=a"), ("x-forwarded-for", "2.2.2.2")]).await.status,
        200,
        "behind a trusted proxy each client has its bucket"
    );
    assert_eq!(post(trusted.addr, "/t", &[("cookie", "session=a"), ("x-forwarded-for", "1.1.1.1")]).await.status, 429);
}

#[tokio::test]
async fn header_route_and_global_keys() {
    let b = backend::spawn().await;
    let limits = "  per_device: { key: 'header:x-device', rate: 1, per: 1m }";
    let app = spawn_app(&b.url(), &route_yaml(&b, limits, "per_device", "")).await;
    assert_eq!(post(app.addr, "/t", &[("cookie", "session=a"), ("x-device", "d1")]).await.status, 200);
    assert_eq!(post(app.addr, "/t", &[("cookie", "session=a"), ("x-device", "d2")]).await.status, 200);
    assert_eq!(post(app.addr, "/t", &[("cookie", "session=a"), ("x-device", "d1")]).await.status, 429);
    assert_eq!(post(app.addr, "/t", &[("cookie", "session=a")]).await.status, 200);
    assert_eq!(
        post(app.addr, "/t", &[("cookie", "session=b")]).await.status,
        429,
        "leaving the header out shares one bucket"
    );

    let global = spawn_app(&b.url(), &route_yaml(&b, "  all: { key: global, rate: 2, per: 1m }", "all", "")).await;
    assert_eq!(post(global.addr, "/t", &[("cookie", "session=a")]).await.status, 200);
    assert_eq!(post(global.addr, "/t", &[("cookie", "session=b")]).await.status, 200);
    assert_eq!(post(global.addr, "/t", &[("cookie", "session=c")]).await.status, 429);
}

#[tokio::test]
async fn proxy_rate_limits_answer_429_before_forwarding() {
    let b = backend::spawn().await;
    let app = spawn_app(
        &b.url(),
        "rate_limits: { per_ip: { key: client_ip, rate: 2, per: 1m } }\nproxy_rate_limits: [per_ip]",
    )
    .await;
    assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200);
    assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200);
    let before = b.connections.load(Ordering::SeqCst);
    let r = client::get(app.addr, "/echo", &[]).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_eq!(b.connections.load(Ordering::SeqCst), before);
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_requests_total{route=\"proxy\",status=\"429\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_user_keyed_limit_on_forwarded_traffic_is_a_load_error() {
    let yaml = "upstream: { url: 'http://127.0.0.1:1' }\nrate_limits: { u: { key: user, rate: 1, per: 1s } }\nproxy_rate_limits: [u, nope]\n";
    let err = tokengate::config::load_str(yaml, "t.yaml", std::path::Path::new(".")).unwrap_err().to_string();
    assert!(err.contains("proxy_rate_limits[0]: forwarded traffic has no user"), "{err}");
    assert!(err.contains("proxy_rate_limits[1]: no rate limit named \"nope\""), "{err}");
}
