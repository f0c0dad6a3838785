//! Failing upstreams and bad requests get clear answers, and the proxy keeps serving (SPEC §3).

use std::time::{Duration, Instant};

use crate::common::{backend, client, closed_port, spawn_app, spawn_app_yaml};

#[tokio::test]
async fn unreachable_upstream_is_502_with_json_body() {
    let app = spawn_app(&format!("http://{}", closed_port()), "").await;
    for _ in 0..2 {
        let r = client::get(app.addr, "/anything", &[]).await.unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["error"], "bad_gateway");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_upstream_errors_total{kind=\"connect\"} 2"), "{metrics}");
    assert!(metrics.contains("tokengate_requests_total{route=\"proxy\",status=\"502\"} 2"), "{metrics}");
}

/// An app in front of `upstream` that waits `timeout` for response heads.
async fn with_response_timeout(upstream: &str, timeout: &str) -> crate::common::TestApp {
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstream:\n  url: {upstream}\n  response_timeout: {timeout}\n"
    );
    spawn_app_yaml(&yaml).await
}

#[tokio::test]
async fn slow_upstream_is_504_and_the_proxy_keeps_serving() {
    let b = backend::spawn().await;
    let app = with_response_timeout(&b.url(), "300ms").await;
    let start = Instant::now();
    let r = client::get(app.addr, "/sleep/3000", &[]).await.unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200);
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_upstream_errors_total{kind=\"timeout\"} 1"), "{metrics}");
}

/// An upstream connection times every exchange with one timer, moved from one deadline to the
/// next: a later deadline on a timer still waiting, and a new one on a timer that already ran
/// out while the connection was idle. An answer inside the new deadline is served (a timer left
/// at the old one would have cut it off), one past it is 504 in time.
#[tokio::test]
async fn a_pooled_upstream_connection_times_each_of_its_exchanges() {
    let b = backend::spawn().await;
    let app = with_response_timeout(&b.url(), "1s").await;
    for idle in [Duration::ZERO, Duration::from_millis(1500)] {
        assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200);
        tokio::time::sleep(idle).await;
        let r = client::get(app.addr, "/sleep/200", &[]).await.unwrap();
        assert_eq!(r.status, 200, "after {idle:?} idle: {}", r.text());
        let start = Instant::now();
        let r = client::get(app.addr, "/sleep/20000", &[]).await.unwrap();
        assert_eq!(r.status, 504, "after {idle:?} idle");
        assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    }
    assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200);
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_upstream_errors_total{kind=\"timeout\"} 2"), "{metrics}");
}

#[tokio::test]
async fn malformed_request_is_400_and_the_next_connection_is_served() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let out = client::raw(app.addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let out = client::raw(app.addr, b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn oversized_header_block_is_431_and_the_next_connection_is_served() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "limits: { max_header_bytes: 16KiB }").await;
    let big = "a".repeat(20 * 1024);
    let out = client::raw(app.addr, format!("GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{:?}", &out[..out.len().min(100)]);
    // Under the limit passes.
    let ok = "a".repeat(8 * 1024);
    assert_eq!(client::get(app.addr, "/echo", &[("x-big", &ok)]).await.unwrap().status, 200);
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "limits: { header_read_timeout: 300ms }").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection")
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200);
}
