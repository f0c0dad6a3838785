//! The client side of HTTP/1.1 on the wire: body-less requests are served by tokengate's own
//! code, everything else by hyper from that request on. Both must look the same to a client.

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
    // The body and the next request arrive together; hyper takes the connection over.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = read_for(&mut s, Duration::from_secs(3)).await;
    assert_eq!(responses(&rest), 2, "{rest}");
    assert!(rest.contains("\"body_len\":5"), "the POST body reached the backend: {rest}");
    assert!(rest.contains("HTTP/1.1 204"), "{rest}");
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
