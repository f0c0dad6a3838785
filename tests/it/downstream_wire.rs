//! The client side of HTTP/1.1 on the wire: body-less requests, and small bodies that came
//! whole with their head, are served by tokengate's own code, everything else by hyper from
//! that request on. Both must look the same to a client.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::client;
use crate::common::{backend, spawn_app};

/// Reads what the server sends within `wait`, without waiting for it to close.
async fn read_for(s: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut chunk = [0u8; 16384];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

fn responses(wire: &str) -> usize {
    wire.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let out = client::raw(
        app.addr,
        b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/203 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = out.match_indices("HTTP/1.1 ").map(|(i, _)| &out[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["201", "202", "203"], "{out}");
    assert!(out.contains("connection: close"), "the last answer says the connection closes: {out}");
}

#[tokio::test]
async fn a_request_with_a_body_after_body_less_ones_on_one_connection() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    let first = read_for(&mut s, Duration::from_millis(500)).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The body and the next request arrive together (the own code answers both).
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = read_for(&mut s, Duration::from_secs(3)).await;
    assert_eq!(responses(&rest), 2, "{rest}");
    assert!(rest.contains("\"body_len\":5"), "the POST body reached the backend: {rest}");
    assert!(rest.contains("HTTP/1.1 204"), "{rest}");
}

#[tokio::test]
async fn bodies_that_come_after_their_head_or_are_large_reach_the_upstream_whole() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    // The head first, the body later: hyper takes the connection over, and the body goes
    // through (not cut at what had arrived with the head).
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"world").await.unwrap();
    let out = read_for(&mut s, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_len\":10"), "{out}");
    // Larger than the own code takes, sent whole: hyper streams it.
    let big = vec![b'x'; 20 * 1024];
    let mut req =
        format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", big.len())
            .into_bytes();
    req.extend_from_slice(&big);
    let out = client::raw(app.addr, &req).await;
    assert!(out.contains(&format!("\"body_len\":{}", big.len())), "{out}");
}

#[tokio::test]
async fn a_token_request_with_its_json_body_and_the_next_request_in_one_write() {
    let b = backend::spawn().await;
    let yaml = "keys: [{ id: k, algorithm: HS256, secret: s }]\nauth_hooks: { a: { type: none, identity: { id: body:/userId } } }\nroutes: [{ name: r, path: /t, auth: a, tokens: { t: { key: k, ttl: 1m, claims: { sub: '{{ user.id }}', d: '{{ body.device }}' } } }, response: { body: { token: '{{ tokens.t }}', user: '{{ user.id }}' } } }]\n";
    let app = spawn_app(&b.url(), yaml).await;
    let body = r#"{"userId":"u-\"1\"","device":{"os":"iOS"}}"#;
    let wire = format!(
        "POST /t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}GET /status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let out = client::raw(app.addr, wire.as_bytes()).await;
    assert_eq!(responses(&out), 2, "{out}");
    let first = out.split("\r\n\r\n").nth(1).unwrap();
    let first = &first[..first.find("HTTP/1.1 ").unwrap()];
    let answer: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(answer["user"], "u-\"1\"");
    let payload = answer["token"].as_str().unwrap().split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["sub"], "u-\"1\"");
    assert_eq!(claims["d"], serde_json::json!({"os": "iOS"}));
    assert!(out.contains("HTTP/1.1 204"), "{out}");
}

#[tokio::test]
async fn http10_clients_get_keep_alive_only_when_they_ask() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    // No keep-alive: answered, then closed (client::raw reads until the close).
    let out = client::raw(app.addr, b"GET /status/200 HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    // No `Host`: the upstream, which speaks HTTP/1.1, gets its own.
    let out = client::raw(app.addr, b"GET /echo HTTP/1.0\r\n\r\n").await;
    let echo: serde_json::Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(crate::common::client::echoed(&echo, "host"), [b.url().trim_start_matches("http://")]);
    assert!(crate::common::client::echoed(&echo, "x-forwarded-host").is_empty());

    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /status/200 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    let first = read_for(&mut s, Duration::from_millis(500)).await;
    assert!(first.starts_with("HTTP/1.1 200") && !first.contains("connection: close"), "{first}");
    s.write_all(b"GET /status/202 HTTP/1.0\r\n\r\n").await.unwrap();
    let second = read_for(&mut s, Duration::from_secs(3)).await;
    assert!(second.starts_with("HTTP/1.1 202"), "the connection stayed open: {second}");
}

#[tokio::test]
async fn length_beside_chunked_is_refused_and_the_connection_closed() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    // Content-Length and Transfer-Encoding together (RFC 9112 §6.3): where one parser reads "no
    // body" and another a chunked one, the body's bytes become a smuggled request. Refused, as
    // Envoy does, with the connection closed; the bytes after the head are never read.
    let out = client::raw(
        app.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(responses(&out), 1, "{out}");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 0, "the backend saw nothing");
    // A chunked body alone is hyper's to read.
    let out = client::raw(
        app.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.contains("\"body_len\":5"), "the chunked body reached the backend: {out}");
}

#[tokio::test]
async fn date_and_framing_on_tokengate_s_own_answers() {
    // The upstream is down: the 502 is tokengate's own answer.
    let app = spawn_app(&format!("http://{}", crate::common::closed_port()), "").await;
    let out = client::raw(app.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
    let head = out.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("\r\ndate: "), "{head}");
    assert!(head.contains("\r\ncontent-length: "), "{head}");
    let body = out.split("\r\n\r\n").nth(1).unwrap();
    assert!(body.contains("bad_gateway"), "{body}");
}

#[tokio::test]
async fn a_target_only_hyper_can_judge_is_handed_over_whole() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    // httparse takes this target, `http::Uri` does not: hyper gets the head back and answers 400.
    let out = client::raw(app.addr, b"GET http://[::1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(responses(&out), 1, "{out}");
}
