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

#[tokio::test]
async fn a_dry_run_limit_counts_and_reports_but_never_refuses() {
    let b = backend::spawn().await;
    let yaml = route_yaml(&b, "  per_user: { key: user, rate: 1, per: 1m, dry_run: true }", "per_user", "");
    let app = spawn_app(&b.url(), &yaml).await;
    let first = post(app.addr, "/t", &[("cookie", "session=ann")]).await;
    assert_eq!(first.status, 200);
    assert!(first.header("ratelimit-policy").is_none(), "the limit allowed it: nothing to report");
    for _ in 0..2 {
        let r = post(app.addr, "/t", &[("cookie", "session=ann")]).await;
        assert_eq!(r.status, 200, "a dry run never refuses");
        assert_eq!(r.header("ratelimit-policy"), Some(r#""per_user";q=1;w=60"#));
        assert!(r.header("ratelimit").unwrap().starts_with(r#""per_user";r=0;t="#));
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
        assert!(r.header("retry-after").is_none(), "not refused");
    }
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(
        metrics.contains(r#"tokengate_ratelimit_decisions_total{limit="per_user",outcome="would_limit"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"tokengate_ratelimit_decisions_total{limit="per_user",outcome="allow"} 1"#));
    assert!(!metrics.contains("tokengate_rate_limited_total{limit=\"per_user\"}"), "nothing was refused");
}

#[tokio::test]
async fn a_reload_that_turns_dry_run_off_enforces_at_once_with_the_counters_kept() {
    let b = backend::spawn().await;
    let limits = |dry: &str| format!("  per_user: {{ key: user, rate: 2, per: 1m{dry} }}");
    let bin = crate::common::Binary::start(
        "dry-run-reload",
        &b.url(),
        &route_yaml(&b, &limits(", dry_run: true"), "per_user", ""),
        &[],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(post(bin.addr, "/t", &[("cookie", "session=ann")]).await.status, 200);
    }
    bin.reload_with(&bin.yaml(&b.url(), &route_yaml(&b, &limits(""), "per_user", ""))).await;
    assert_eq!(post(bin.addr, "/t", &[("cookie", "session=ann")]).await.status, 429, "the two counted still count");
    assert_eq!(post(bin.addr, "/t", &[("cookie", "session=ben")]).await.status, 200);
}

#[tokio::test]
async fn a_limit_keyed_by_an_identity_field_shares_one_bucket_per_tenant() {
    let b = backend::spawn().await;
    let yaml = "keys: [{ id: k, algorithm: HS256, secret: s }]\n\
        rate_limits:\n  per_tenant: { key: user.tenant, rate: 2, per: 1m }\n\
        auth_hooks:\n  hdr: { type: none, identity: { id: header:x-user-id, tenant: header:x-tenant } }\n\
        routes: [{ name: chat, path: /t, auth: hdr, rate_limits: [per_tenant], tokens: { t: { key: k, ttl: 1m } } }]\n";
    let app = spawn_app(&b.url(), yaml).await;
    let addr = app.addr;
    let call = |user: &'static str, tenant: &'static str| async move {
        post(addr, "/t", &[("x-user-id", user), ("x-tenant", tenant)]).await
    };
    assert_eq!(call("ann", "acme").await.status, 200);
    assert_eq!(call("ben", "acme").await.status, 200);
    let r = call("cat", "acme").await;
    assert_eq!(r.status, 429, "a third user of the same tenant shares its bucket");
    assert_eq!(r.header("ratelimit-policy"), Some(r#""per_tenant";q=2;w=60"#));
    assert_eq!(call("ann", "globex").await.status, 200, "another tenant has its own");
}
