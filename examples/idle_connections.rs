//! Memory per idle connection, for `benches/connections.sh`: opens N idle HTTP/1.1 keep-alive
//! (`h1`) or HTTP/2 h2c (`h2`) connections to a running tokengate (each after one request),
//! and prints its RSS before, with them open, and 10 s after they close.
//!
//! Usage: `idle_connections ADDR PID h1|h2 [N]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark, example or test: a failure should stop it loudly"
)]

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

async fn settle(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(1)).await;
    rss_kib(pid)
}

/// Keeps one request's connection open: the sender (HTTP/1.1) or the driver (HTTP/2) lives.
#[allow(dead_code)]
enum Held {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn open(addr: &str, h2: bool) -> Held {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let req = || Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).unwrap();
    if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        s.send_request(req()).await.unwrap().into_body().collect().await.unwrap();
        Held::H2(s)
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut r = req();
        r.headers_mut().insert("host", addr.parse().unwrap());
        *r.uri_mut() = "/".parse().unwrap();
        s.send_request(r).await.unwrap().into_body().collect().await.unwrap();
        Held::H1(s)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().expect("ADDR");
    let pid: u32 = args.next().expect("PID").parse().expect("a pid");
    let h2 = args.next().as_deref() == Some("h2");
    let n: usize = args.next().map(|n| n.parse().expect("N")).unwrap_or(5000);
    let name = if h2 { "HTTP/2 (h2c)" } else { "HTTP/1.1 keep-alive" };
    {
        let idle = settle(pid).await;
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            held.push(open(&addr, h2).await);
        }
        let open_rss = settle(pid).await;
        drop(held);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = rss_kib(pid);
        let per = (open_rss.saturating_sub(idle)) as f64 / n as f64;
        println!(
            "{name:<20} idle {idle:>7} KiB | {n} open {open_rss:>7} KiB: {per:>5.1} KiB each | 10 s after closing {after:>7} KiB ({:+.0} % of idle)",
            (after as f64 / idle as f64 - 1.0) * 100.0
        );
    }
}
