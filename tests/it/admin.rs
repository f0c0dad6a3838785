//! The admin listener (SPEC §4, §5) and its separation from the public port.

use bytes::Bytes;
use http::Method;

use crate::common::{backend, client, spawn_app};

#[tokio::test]
async fn metrics_health_and_readiness_on_the_admin_port_only() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200);

    let m = client::get(app.admin, "/metrics", &[]).await.unwrap();
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = m.text();
    for needle in [
        "tokengate_requests_total{route=\"proxy\",status=\"200\"} 1",
        "tokengate_request_duration_seconds_count{route=\"proxy\"} 1",
        "tokengate_open_connections",
        "tokengate_build_info{version=\"",
        "# TYPE tokengate_upstream_errors_total counter",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert_eq!(client::get(app.admin, "/healthz", &[]).await.unwrap().status, 200);
    assert_eq!(client::get(app.admin, "/readyz", &[]).await.unwrap().status, 200);

    // On the public port these paths belong to the app: forwarded, never answered by tokengate.
    for path in ["/metrics", "/healthz", "/readyz", "/admin/revoke"] {
        let r = client::get(app.addr, path, &[]).await.unwrap();
        assert_eq!(r.json()["uri"], path, "{path} was not forwarded");
    }
}

#[tokio::test]
async fn admin_paths_need_the_admin_token_when_one_is_set() {
    let b = backend::spawn().await;
    let dir = crate::common::temp_dir("admin-token");
    std::fs::write(dir.join("token"), "s3cret-admin\n").unwrap();
    let app = spawn_app(&b.url(), &format!("admin_token_file: {}", dir.join("token").display())).await;
    let denied = client::request(app.admin, Method::POST, "/admin/revoke", &[], Bytes::new()).await.unwrap();
    assert_eq!(denied.status, 401);
    let wrong =
        client::request(app.admin, Method::POST, "/admin/revoke", &[("authorization", "Bearer nope")], Bytes::new())
            .await
            .unwrap();
    assert_eq!(wrong.status, 401);
    let allowed = client::request(
        app.admin,
        Method::POST,
        "/admin/nothing-here",
        &[("authorization", "Bearer s3cret-admin")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(allowed.status, 404, "authorized, then routed");
    // RFC 9110 §11.1: the scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "bEaReR  "] {
        let auth = format!("{scheme} s3cret-admin");
        let r =
            client::request(app.admin, Method::POST, "/admin/nothing-here", &[("authorization", &auth)], Bytes::new())
                .await
                .unwrap();
        assert_eq!(r.status, 404, "{scheme:?}");
    }
    // Metrics stay open for Prometheus.
    assert_eq!(client::get(app.admin, "/metrics", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn revoke_forgets_a_users_cached_identity_and_tokens() {
    use std::sync::atomic::Ordering;
    let b = backend::spawn().await;
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: s }}]\nauth_hooks:\n  session: {{ type: http, url: '{}/api/me', forward_headers: [cookie], identity: {{ id: body:/id }} }}\nroutes: [{{ name: chat, path: /t, auth: session, cache_tokens: true, tokens: {{ t: {{ key: k, ttl: 1h, claims: {{ sub: '{{{{ user.id }}}}' }} }} }}, response: {{ body: '{{{{ tokens.t }}}}', content_type: text/plain }} }}]\n",
        b.url()
    );
    let app = spawn_app(&b.url(), &yaml).await;
    let mint = |cookie: &'static str| {
        let addr = app.addr;
        async move { client::request(addr, Method::POST, "/t", &[("cookie", cookie)], Bytes::new()).await.unwrap().text() }
    };
    let first = mint("session=ann").await;
    assert_eq!(mint("session=ann").await, first, "cached");
    let ben = mint("session=ben").await;
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 2);

    let r = client::request(app.admin, Method::POST, "/admin/revoke", &[], Bytes::from_static(br#"{"user": "ann"}"#))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["revoked"], "ann");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let misses = || async {
        let m = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
        m.lines()
            .find_map(|l| l.strip_prefix("tokengate_token_cache_total{result=\"miss\",route=\"chat\"} "))
            .unwrap()
            .to_owned()
    };
    assert_eq!(misses().await, "2");
    mint("session=ann").await;
    assert_eq!(misses().await, "3", "ann's token is minted afresh after revoke");
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 3, "the hook is asked again for ann");
    assert_eq!(mint("session=ben").await, ben, "other users keep their cache");
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 3);
    let bad = client::request(app.admin, Method::POST, "/admin/revoke", &[], Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(bad.status, 400);
}
