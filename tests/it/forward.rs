//! Forwarded traffic arrives as sent (SPEC §3).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;

use crate::common::client::{self, echoed};
use crate::common::{backend, spawn_app};

#[tokio::test]
async fn method_path_query_and_host_arrive_byte_for_byte() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let out = client::raw(app.addr, b"PATCH /a%2Fb/../c?x=1&x=2&y=%20 HTTP/1.1\r\nHost: app.example:8443\r\nX-Multi: 1\r\nX-Other: o\r\nX-Multi: 2\r\nX-Multi: 3\r\nConnection: close\r\n\r\n").await;
    let body = out.split("\r\n\r\n").nth(1).expect("a body");
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["method"], "PATCH");
    assert_eq!(echo["uri"], "/a%2Fb/../c?x=1&x=2&y=%20");
    assert_eq!(echoed(&echo, "host"), ["app.example:8443"]);
    assert_eq!(echoed(&echo, "x-multi"), ["1", "2", "3"]);
    assert_eq!(echoed(&echo, "x-other"), ["o"]);
}

#[tokio::test]
async fn repeated_response_headers_and_bodies_pass_through() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let r = client::request(
        app.addr,
        Method::POST,
        "/echo",
        &[("content-type", "text/plain")],
        Bytes::from_static(b"hello world"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let repeated: Vec<_> = r.headers.get_all("x-repeated").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(repeated, ["one", "two"]);
    assert_eq!(r.json()["body_len"], 11);
}

#[tokio::test]
async fn statuses_head_and_expect_continue() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    for code in [204u16, 304, 404, 418, 503] {
        let r = client::get(app.addr, &format!("/status/{code}"), &[]).await.unwrap();
        assert_eq!(r.status.as_u16(), code);
        if code == 204 || code == 304 {
            assert!(r.body.is_empty());
        }
    }
    let head = client::request(app.addr, Method::HEAD, "/echo", &[], Bytes::new()).await.unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("content-length").is_some_and(|l| l != "0"));

    // 100-continue: the interim answer comes before the body is sent.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).await.unwrap();
    assert!(rest.contains("200 OK") && rest.contains("\"body_len\":5"), "{rest}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let r = client::get(
        app.addr,
        "/echo",
        &[
            ("connection", "x-hop-named"),
            ("x-hop-named", "secret"),
            ("keep-alive", "timeout=1"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await
    .unwrap();
    let echo = r.json();
    for gone in ["connection", "x-hop-named", "keep-alive", "proxy-connection", "te", "upgrade", "transfer-encoding"] {
        assert!(echoed(&echo, gone).is_empty(), "{gone} was forwarded: {echo}");
    }
    assert_eq!(echoed(&echo, "x-end-to-end"), ["kept"]);

    let r = client::get(app.addr, "/hop", &[]).await.unwrap();
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    assert!(r.header("x-backend-hop").is_none() && r.header("keep-alive").is_none());
}

#[tokio::test]
async fn http2_clients_are_served_and_forwarded_as_http11() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let r = client::get_h2(app.addr, "/echo?h2=1").await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["uri"], "/echo?h2=1");
    assert_eq!(echoed(&echo, "host"), [app.addr.to_string()]);
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    for _ in 0..100 {
        assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200);
    }
    let opened = b.connections.load(Ordering::SeqCst);
    assert!(opened <= 2, "100 sequential requests opened {opened} upstream connections");
}

#[tokio::test]
async fn x_forwarded_append_replace_off_and_trusted_proxies() {
    let b = backend::spawn().await;
    let spoof = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x_forwarded_for", "7.7.7.7"),
        ("host", "app.example"),
    ];

    let app = spawn_app(&b.url(), "").await;
    let echo = client::get(app.addr, "/echo", &spoof).await.unwrap().json();
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["http"], "an untrusted peer cannot claim https");
    assert_eq!(echoed(&echo, "x-forwarded-host"), ["app.example"]);

    let app = spawn_app(&b.url(), "forwarding: { x_forwarded: replace }").await;
    let echo = client::get(app.addr, "/echo", &spoof).await.unwrap().json();
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert!(echoed(&echo, "x_forwarded_for").is_empty());
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["http"]);

    let app = spawn_app(&b.url(), "forwarding: { x_forwarded: 'off' }").await;
    let echo = client::get(app.addr, "/echo", &spoof).await.unwrap().json();
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["6.6.6.6"]);
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["https"]);
    assert_eq!(echoed(&echo, "x_forwarded_for"), ["7.7.7.7"]);

    let app = spawn_app(&b.url(), "forwarding: { trusted_proxies: [127.0.0.0/8] }").await;
    let echo = client::get(app.addr, "/echo", &spoof).await.unwrap().json();
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["https"], "a trusted proxy's proto is kept");
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_returned() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "forwarding: { request_id_header: x-trace }").await;
    let r = client::get(app.addr, "/echo", &[("x-trace", "abc-123")]).await.unwrap();
    assert_eq!(echoed(&r.json(), "x-trace"), ["abc-123"]);
    assert_eq!(r.header("x-trace"), Some("abc-123"));

    let r = client::get(app.addr, "/echo", &[]).await.unwrap();
    let sent = echoed(&r.json(), "x-trace");
    assert_eq!(sent.len(), 1);
    assert!(uuid::Uuid::parse_str(&sent[0]).is_ok(), "{sent:?}");
    assert_eq!(r.header("x-trace"), Some(sent[0].as_str()));
}
