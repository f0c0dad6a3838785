//! Bodies stream both ways without buffering (SPEC §3), trailers included.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{backend, client, spawn_app, Binary};

const STEP: Duration = Duration::from_secs(5);

/// An HTTP/1.1 client connection to `addr`, its connection driven by a task of its own.
async fn connect<B>(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(addr: std::net::SocketAddr, path: &str) -> hyper::body::Incoming {
    let mut sender = connect(addr).await;
    let req = Request::builder().uri(path).header("host", "x").body(Full::new(Bytes::new())).unwrap();
    sender.send_request(req).await.unwrap().into_body()
}

async fn next_data(body: &mut hyper::body::Incoming) -> String {
    let frame = tokio::time::timeout(STEP, body.frame()).await.expect("a chunk in time").unwrap().unwrap();
    String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn first_chunk_arrives_before_the_backend_sends_the_last() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let mut body = send(app.addr, "/held").await;
    // The backend sends "last" only after `release`: receiving "first" proves no buffering.
    assert_eq!(next_data(&mut body).await, "first\n");
    b.release.notify_one();
    assert_eq!(next_data(&mut body).await, "last\n");
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let mut body = send(app.addr, "/sse").await;
    for n in 1..=3 {
        assert_eq!(next_data(&mut body).await, format!("data: {n}\n\n"));
        b.release.notify_one();
    }
}

#[tokio::test]
async fn upload_first_chunk_reaches_the_backend_before_the_last_is_sent() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nfirst\r\n",
    )
    .await
    .unwrap();
    tokio::time::timeout(STEP, b.got_first_chunk.notified())
        .await
        .expect("the backend saw the first chunk while the upload was open");
    s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("{\"bytes\":9}"), "{out}");
}

#[tokio::test]
async fn trailers_pass_both_ways() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let mut sender = connect(app.addr).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-req-trailer", "yes".parse().unwrap());
    let frames = vec![
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"payload"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post("/trailers")
        .header("host", "x")
        .header("te", "trailers")
        .header("trailer", "x-req-trailer")
        .body(body)
        .unwrap();
    let resp = client::collect(sender.send_request(req).await.unwrap()).await.unwrap();
    assert_eq!(resp.text(), r#"[["x-req-trailer","yes"]]"#);
    let t = resp.trailers.expect("response trailers");
    assert_eq!(t["x-resp-trailer"], "ok");
}

/// 1 GiB through the real binary, whose peak RSS must stay under 64 MiB.
#[tokio::test]
async fn one_gib_upload_streams_in_bounded_memory() {
    const TOTAL: u64 = 1 << 30;
    let b = backend::spawn().await;
    let bin = Binary::start("upload-1gib", &b.url(), "", &["--workers", "2"]).await;
    let mut s = TcpStream::connect(bin.addr).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {TOTAL}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..(TOTAL >> 20) {
        s.write_all(&chunk).await.unwrap();
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_string(&mut out)).await.unwrap().unwrap();
    assert!(out.contains(&format!("{{\"bytes\":{TOTAL}}}")), "{out}");
    let peak_kib = bin.proc_status("VmHWM");
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    eprintln!("1 GiB upload: tokengate peak RSS {peak_kib} KiB");
}

/// A large answer over plain TCP goes from the upstream's socket to the client's by splice(2)
/// (counted in `tokengate_upstream_spliced_bytes_total`, all of it but what came with the head),
/// arrives whole and in order, and leaves both connections usable: a small answer and a HEAD
/// request's after it (neither spliced) on the same client connection, all over one upstream
/// connection.
#[tokio::test]
async fn a_large_answer_is_spliced_whole_and_both_connections_stay_usable() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let mut sender = connect(app.addr).await;
    let large = 3 * 1024 * 1024 + 17;
    let mut spliced_before = 0;
    for (method, n) in [("GET", large), ("GET", 100), ("HEAD", large), ("GET", 1024 * 1024)] {
        let req = Request::builder()
            .method(method)
            .uri(format!("/bytes/{n}"))
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(STEP, sender.send_request(req)).await.expect("an answer in time").unwrap();
        assert_eq!(resp.headers()["content-length"], n.to_string().as_str(), "{method} {n}");
        let body = tokio::time::timeout(STEP, resp.into_body().collect()).await.expect("a body in time");
        let body = body.unwrap().to_bytes();
        let spliced = app.state.metrics.upstream_spliced_bytes_total.get() - spliced_before;
        spliced_before += spliced;
        if method == "HEAD" {
            assert!(body.is_empty(), "a HEAD answer has no body");
            assert_eq!(spliced, 0, "nothing spliced for HEAD");
            continue;
        }
        assert!(body[..] == backend::numbered_bytes(n)[..], "{method} {n}: the body arrived changed");
        if n == 100 {
            assert_eq!(spliced, 0, "a small body is read and written");
        } else {
            // What came with the head (one read of at most 8 KiB) is written as read.
            assert!(spliced as usize > n - 8 * 1024 && spliced as usize <= n, "{n} bytes, {spliced} spliced");
        }
    }
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "one upstream connection for all four");
}

/// A client that goes away in the middle of a spliced body (its unread bytes make the kernel
/// answer the next splice with a reset or a broken pipe) costs the real binary nothing: it
/// keeps serving, and the upstream connection left mid-body is not used again.
#[tokio::test]
async fn a_client_leaving_mid_splice_leaves_the_process_serving() {
    let b = backend::spawn().await;
    let mut bin = Binary::start("splice-client-leaves", &b.url(), "", &["--workers", "1"]).await;
    // More than the client's and tokengate's socket buffers hold together.
    let n = 32 * 1024 * 1024;
    let mut s = TcpStream::connect(bin.addr).await.unwrap();
    s.write_all(format!("GET /bytes/{n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut first = vec![0u8; 64 * 1024];
    tokio::time::timeout(STEP, s.read_exact(&mut first)).await.expect("the first bytes in time").unwrap();
    drop(s);
    let mut sender = connect(bin.addr).await;
    for n in [100, 300 * 1024] {
        let req = Request::get(format!("/bytes/{n}")).header("host", "x").body(Full::new(Bytes::new())).unwrap();
        let resp = tokio::time::timeout(STEP, sender.send_request(req)).await.expect("an answer in time").unwrap();
        let body = tokio::time::timeout(STEP, resp.into_body().collect()).await.expect("a body in time");
        assert!(body.unwrap().to_bytes()[..] == backend::numbered_bytes(n)[..], "{n} bytes arrived changed");
    }
    assert!(bin.is_running(), "tokengate exited");
    let upstreams = b.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(upstreams, 2, "the connection left mid-body was used again, or the next ones were not pooled");
    let scrape = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    let spliced: usize = scrape
        .lines()
        .find_map(|l| l.strip_prefix("tokengate_upstream_spliced_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the spliced bytes counter");
    // Only the 300 KiB answer, less what came with its head: the abandoned one is not counted.
    assert!(spliced > 300 * 1024 - 8 * 1024 && spliced <= 300 * 1024, "{spliced} bytes spliced");
}
