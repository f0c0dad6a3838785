//! Memory per idle connection, for `benches/connections.py`: opens N idle connections to a
//! running proxy (tokengate or nginx), each after one exchange, and prints one JSON line with
//! the RSS of the given processes before, with them open, and 10 s after they close.
//! "Before" is taken after a warm-up: `WARM_UP` connections of the same kind opened, used and
//! closed, so that what the first ones set up once (code pages read from the binary as it
//! first runs, the upstream connection, the allocator's first page of each size class) is not
//! counted as the cost of a connection. For tokengate those were ~0.2 KiB per connection of a
//! 5,000 run, most of it code pages (RssFile).
//!
//! Modes: `h1` (HTTP/1.1 keep-alive, raw sockets), `h2` (HTTP/2 h2c prior knowledge, hyper's
//! client), `ws` (an upgraded connection the proxy tunnels to the backend, one echo through it).
//! Connections come from 127.0.0.1 and on from 127.0.0.2, .3, … so that more than one source
//! address's ephemeral ports can be open at once.
//!
//! Usage: `idle_connections ADDR PID[,PID…] h1|h2|ws N`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark, example or test: a failure should stop it loudly"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connections per source address (the ephemeral range holds ~28,000, and the connections of
/// an earlier run wait in TIME_WAIT on some of them).
const PER_SOURCE: usize = 10_000;

/// Connections opened, used and closed before the first measurement.
const WARM_UP: usize = 500;

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .expect("VmRSS")
        })
        .sum()
}

async fn settle(pids: &[u32]) -> u64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss_kib(pids)
}

/// Keeps a connection open.
#[allow(dead_code)]
enum Held {
    Socket(TcpStream),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn connect(addr: SocketAddr, i: usize) -> TcpStream {
    let source = Ipv4Addr::new(127, 0, 0, 1 + u8::try_from(i / PER_SOURCE).expect("fewer sources"));
    let socket = TcpSocket::new_v4().unwrap();
    // A port still in TIME_WAIT from an earlier run may be bound again.
    socket.set_reuseaddr(true).unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).expect("bind a source address");
    socket.connect(addr).await.expect("connect")
}

/// Reads until `end` has arrived.
async fn read_until(s: &mut TcpStream, end: &[u8]) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(end.len()).any(|w| w == end) {
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
}

async fn open(addr: SocketAddr, mode: &str, i: usize) -> Held {
    let mut s = connect(addr, i).await;
    match mode {
        "h1" => {
            s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").await.unwrap();
            read_until(&mut s, b"\r\n\r\nok").await;
            Held::Socket(s)
        }
        "ws" => {
            s.write_all(
                b"GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await
            .unwrap();
            read_until(&mut s, b"\r\n\r\n").await;
            s.write_all(b"ping").await.unwrap();
            read_until(&mut s, b"ping").await;
            Held::Socket(s)
        }
        _ => {
            let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            let req = Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).unwrap();
            sender.send_request(req).await.unwrap().into_body().collect().await.unwrap();
            Held::H2(sender)
        }
    }
}

/// Opens `n` connections one after the other.
async fn open_all(addr: SocketAddr, mode: &str, n: usize) -> Vec<Held> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(open(addr, mode, i).await);
    }
    held
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().expect("ADDR").parse().expect("an address");
    let pids: Vec<u32> = args.next().expect("PIDS").split(',').map(|p| p.parse().expect("a pid")).collect();
    let mode = args.next().expect("h1|h2|ws");
    let n: usize = args.next().map(|n| n.parse().expect("N")).unwrap_or(5000);
    let warm: Vec<Held> = open_all(addr, &mode, n.min(WARM_UP)).await;
    drop(warm);
    // Past tokengate's trimmer (every 2 s) after the warm-up's connections closed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = settle(&pids).await;
    let held = open_all(addr, &mode, n).await;
    let open_rss = settle(&pids).await;
    drop(held);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib(&pids);
    println!(r#"{{"mode":"{mode}","n":{n},"before_kib":{before},"open_kib":{open_rss},"after_kib":{after}}}"#);
}
