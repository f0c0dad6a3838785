//! Logs: one JSON object per request on stderr, without secrets (SPEC §1, §3).

use std::time::Duration;

use crate::common::{backend, client, Binary};

#[tokio::test]
async fn one_json_line_per_request_without_credentials() {
    let b = backend::spawn().await;
    let bin = Binary::start("logs-json", &b.url(), "", &[]).await;
    let r = client::get(
        bin.addr,
        "/echo?token=query-secret-123",
        &[
            ("cookie", "session=cookie-secret-456"),
            ("authorization", "Bearer bearer-secret-789"),
            ("x-request-id", "log-test-1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = bin.logs();
    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let access: Vec<_> = lines.iter().filter(|l| l["request_id"] == "log-test-1").collect();
    assert_eq!(access.len(), 1, "{logs}");
    let line = access[0];
    assert_eq!(line["method"], "GET");
    assert_eq!(line["route"], "proxy");
    assert_eq!(line["status"], 200);
    assert!(line["duration_ms"].as_f64().is_some());
    assert_eq!(line["level"], "INFO");
    for secret in ["query-secret-123", "cookie-secret-456", "bearer-secret-789"] {
        assert!(!logs.contains(secret), "{secret} leaked into the log:\n{logs}");
    }
}

#[tokio::test]
async fn token_routes_log_decisions_but_no_secret_key_cookie_or_token() {
    let b = backend::spawn().await;
    let extra = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: signing-secret-XYZ-123 }}]\nrate_limits: {{ one: {{ key: user, rate: 1, per: 1m }} }}\nauth_hooks:\n  key: {{ type: api_key, header: x-api-key, keys: [api-key-ABC-456], identity: {{ id: body:/userId }} }}\n  session: {{ type: http, url: '{}/api/me', forward_headers: [cookie], identity: {{ id: body:/id }} }}\n  down: {{ type: http, url: 'http://{}/api/me', identity: {{ id: body:/id }} }}\nroutes:\n  - {{ name: server, path: /tokens, auth: key, tokens: {{ t: {{ key: k, ttl: 1m }} }}, response: {{ body: '{{{{ tokens.t }}}}', content_type: text/plain }} }}\n  - {{ name: user, path: /me, auth: session, rate_limits: [one], tokens: {{ t: {{ key: k, ttl: 1m }} }}, response: {{ body: '{{{{ tokens.t }}}}', content_type: text/plain }} }}\n  - {{ name: broken, path: /down, auth: down, tokens: {{ t: {{ key: k, ttl: 1m }} }} }}\n",
        b.url(),
        crate::common::closed_port()
    );
    let bin = Binary::start("logs-tokens", &b.url(), &extra, &[]).await;
    let post = |path: &'static str, headers: Vec<(&'static str, &'static str)>, body: &'static str| {
        let addr = bin.addr;
        async move { client::request(addr, http::Method::POST, path, &headers, bytes::Bytes::from(body)).await.unwrap() }
    };
    let minted = post("/tokens", vec![("x-api-key", "api-key-ABC-456")], r#"{"userId": "u-1"}"#).await;
    assert_eq!(minted.status, 200);
    let wrong_key = post("/tokens", vec![("x-api-key", "api-key-WRONG-789")], r#"{"userId": "u-1"}"#).await;
    assert_eq!(wrong_key.status, 401);
    let session_token = post("/me", vec![("cookie", "session=cookie-value-QRS")], "").await;
    assert_eq!(session_token.status, 200);
    assert_eq!(post("/me", vec![("cookie", "session=cookie-value-QRS")], "").await.status, 429);
    assert_eq!(post("/down", vec![], "").await.status, 503);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let logs = bin.logs();
    for secret in [
        "signing-secret-XYZ-123",
        "api-key-ABC-456",
        "api-key-WRONG-789",
        "cookie-value-QRS",
        &minted.text(),
        &session_token.text(),
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the log:\n{logs}");
    }
    let lines: Vec<serde_json::Value> = logs.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let access =
        |route: &str, status: u64| lines.iter().find(|l| l["route"] == route && l["status"] == status).cloned();
    assert_eq!(access("server", 200).unwrap()["auth"], "allow");
    assert_eq!(access("server", 401).unwrap()["auth"], "deny");
    assert_eq!(access("user", 429).unwrap()["limited"], "one");
    assert_eq!(access("broken", 503).unwrap()["auth"], "error");
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN" && l["message"] == "auth hook failed")
        .expect("a warning for the hook failure");
    assert!(warning["cause"].as_str().unwrap().contains("Connection refused"), "{warning}");
}

#[tokio::test]
async fn text_logs_cannot_be_forged_with_a_newline() {
    let b = backend::spawn().await;
    let bin = Binary::start("logs-text", &b.url(), "", &["--log-format", "text"]).await;
    let body = serde_json::json!({"user": "mallory\n2026-12-01T00:00:00Z  INFO tokengate: forged line"}).to_string();
    let r =
        client::request(bin.admin, http::Method::POST, "/admin/revoke", &[], bytes::Bytes::from(body)).await.unwrap();
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = bin.logs();
    assert!(logs.contains("mallory\\n2026"), "the newline is escaped:\n{logs}");
    assert!(!logs.lines().any(|l| l.starts_with("2026-12-01T00:00:00Z")), "a forged line:\n{logs}");
}
