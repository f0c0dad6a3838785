//! Slow, idle and broken clients (SPEC §2 `limits`): idle keep-alive and HTTP/2 connections
//! are closed, bodies that stall get 408, broken bodies are the client's fault, and none of it
//! can fill `max_connections`. Raw sockets and a real HTTP/2 client.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{backend, client, spawn_app, Binary};
use crate::websocket;

fn limits(extra: &str) -> String {
    format!("limits: {{ idle_timeout: 400ms, request_body_timeout: 400ms, header_read_timeout: 2s{extra} }}\n")
}

/// Reads until the peer closes (Ok with what came) or `within` passes (Err).
async fn read_to_close(s: &mut TcpStream, within: Duration) -> Result<String, String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 16384];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    read.map(|_| text.clone()).map_err(|_| text)
}

async fn h2(
    addr: std::net::SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, driver)
}

async fn h2_get(sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>, path: &str) -> u16 {
    let req = Request::get(format!("http://x{path}")).body(Full::new(Bytes::new())).unwrap();
    let resp = sender.send_request(req).await.expect("h2 request");
    resp.status().as_u16()
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &limits("")).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let start = Instant::now();
    let closed = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection stays open");
    assert!(start.elapsed() >= Duration::from_millis(350), "closed before the idle timeout: {:?}", start.elapsed());
}

/// The idle wait between requests is `idle_timeout`, not `header_read_timeout`: with a long
/// header timeout, an idle keep-alive connection still closes after the short idle one.
#[tokio::test]
async fn idle_timeout_not_header_read_timeout_closes_a_keep_alive_connection() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "limits: { idle_timeout: 1s, header_read_timeout: 60s }\n").await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let start = Instant::now();
    let closed = read_to_close(&mut s, Duration::from_secs(30)).await;
    assert!(closed.is_ok(), "open after 30 s although idle_timeout is 1 s");
    assert!(start.elapsed() >= Duration::from_millis(900), "closed before the idle timeout: {:?}", start.elapsed());
    // A head begun after the idle wait gets `header_read_timeout`, not the idle one.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"GET /echo HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"Host: x\r\n\r\n").await.unwrap();
    let answer = read_to_close(&mut s, Duration::from_millis(500)).await.unwrap_or_else(|partial| partial);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "the slow second head was cut: {answer:?}");
}

#[tokio::test]
async fn an_idle_http2_connection_gets_a_goaway_and_is_closed() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &limits("")).await;
    let (mut sender, driver) = h2(app.addr).await;
    assert_eq!(h2_get(&mut sender, "/echo").await, 200);
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), driver).await.expect("the idle HTTP/2 connection stays open").unwrap();
    assert!(start.elapsed() >= Duration::from_millis(350), "{:?}", start.elapsed());
    // A busy connection is not idle: a request longer than the idle timeout completes.
    let (mut sender, _driver) = h2(app.addr).await;
    assert_eq!(h2_get(&mut sender, "/sleep/800").await, 200);
}

#[tokio::test]
async fn idle_connections_cannot_fill_max_connections() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &limits(", max_connections: 8")).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        let (mut sender, driver) = h2(app.addr).await;
        assert_eq!(h2_get(&mut sender, "/echo").await, 200);
        idle.push((sender, driver));
    }
    // A ninth client waits, then gets in once the idle ones are closed.
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(3), client::get(app.addr, "/echo", &[])).await;
    assert_eq!(r.expect("the cap stays full of idle connections").unwrap().status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300), "the cap did not hold: {:?}", start.elapsed());
}

#[tokio::test]
async fn a_token_route_body_that_never_arrives_is_408() {
    let b = backend::spawn().await;
    let route = "keys: [{ id: k, algorithm: HS256, secret: s }]\nauth_hooks: { anyone: { type: none, identity: { id: header:x-user-id } } }\nroutes: [{ name: t, path: /t, auth: anyone, tokens: { t: { key: k, ttl: 1m } } }]\n";
    let app = spawn_app(&b.url(), &format!("{}{route}", limits(""))).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /t HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nContent-Length: 10\r\n\r\n{\"a\"").await.unwrap();
    let start = Instant::now();
    let answer = read_to_close(&mut s, Duration::from_secs(3)).await.unwrap_or_else(|partial| partial);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[tokio::test]
async fn a_stalled_upload_is_408_and_no_upstream_error() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &limits("")).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nsome bytes").await.unwrap();
    let answer = read_to_close(&mut s, Duration::from_secs(3)).await.unwrap_or_else(|partial| partial);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    for kind in ["connect", "timeout", "protocol"] {
        let line = format!("tokengate_upstream_errors_total{{kind=\"{kind}\"}} 0");
        assert!(metrics.contains(&line), "{line}: {metrics}");
    }
}

#[tokio::test]
async fn a_broken_or_cut_body_is_400_and_no_upstream_error() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &limits("")).await;
    // A chunk size that is not hex.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut s, Duration::from_secs(3)).await.unwrap_or_else(|partial| partial);
    assert!(answer.starts_with("HTTP/1.1 400"), "bad chunk: {answer}");
    // The client stops sending mid-body (its write side closed).
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b").await.unwrap();
    s.shutdown().await.unwrap();
    let answer = read_to_close(&mut s, Duration::from_secs(3)).await.unwrap_or_else(|partial| partial);
    assert!(answer.starts_with("HTTP/1.1 400"), "cut body: {answer}");
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_upstream_errors_total{kind=\"protocol\"} 0"), "{metrics}");
    assert!(!metrics.contains("status=\"502\""), "{metrics}");
}

#[tokio::test]
async fn a_websocket_is_not_cut_by_the_idle_timeout() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &limits("")).await;
    let mut ws = websocket::connect(app.addr).await;
    websocket::echo_round_trip(&mut ws, "before").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    websocket::echo_round_trip(&mut ws, "after three idle timeouts").await;
}

#[tokio::test]
async fn draining_answers_say_connection_close_and_a_silent_http2_client_does_not_hold_the_exit() {
    let b = backend::spawn().await;
    let mut bin = Binary::start("drain-close", &b.url(), "limits: { shutdown_grace: 10s }", &[]).await;
    // A keep-alive request in flight when SIGTERM comes.
    let mut s = TcpStream::connect(bin.addr).await.unwrap();
    s.write_all(b"GET /sleep/600 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    // An HTTP/2 client that opens, then never reads nor answers anything (no SETTINGS ack, no
    // PING ack).
    let mut silent = TcpStream::connect(bin.addr).await.unwrap();
    silent.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    bin.signal("TERM");
    let answer = read_to_close(&mut s, Duration::from_secs(5)).await.unwrap_or_else(|partial| partial);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "the drained answer says so: {answer}");
    loop {
        if let Some(status) = bin.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "the silent HTTP/2 client held the shutdown; logs:\n{}",
            bin.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(silent);
}
