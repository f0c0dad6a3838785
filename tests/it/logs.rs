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
