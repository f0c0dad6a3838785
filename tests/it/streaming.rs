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

async fn send(addr: std::net::SocketAddr, path: &str) -> hyper::body::Incoming {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
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
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
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
