//! Real clients: hyper HTTP/1.1 and HTTP/2 over fresh connections, and raw TCP for byte-exact checks.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A whole response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Values of header `name` as the echo backend saw them, in order.
pub fn echoed(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0] == name)
        .map(|p| p[1].as_str().unwrap().to_owned())
        .collect()
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Resp, hyper::Error> {
    request(addr, Method::GET, path, headers, Bytes::new()).await
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, hyper::Error> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", addr.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Full::new(body)).unwrap()).await?;
    collect(resp).await
}

pub async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Resp, hyper::Error> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Resp { status: parts.status, headers: parts.headers, body: collected.to_bytes(), trailers })
}

/// One HTTP/2 request with prior knowledge (h2c).
pub async fn get_h2(addr: SocketAddr, path: &str) -> Resp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder().uri(format!("http://{addr}{path}")).body(Full::new(Bytes::new())).unwrap();
    collect(sender.send_request(req).await.expect("h2 request")).await.expect("h2 body")
}

/// The status code of a raw HTTP/1.1 answer ("" when there is none).
pub fn status(raw: &str) -> &str {
    raw.get(9..12).unwrap_or("")
}

/// `head` on a fresh connection (tokengate's own reader and its relay), and after a request
/// with a body on the same connection (hyper's reader and `http` types): the two answers.
pub async fn both_readers(addr: SocketAddr, head: &str) -> (String, String) {
    let own = raw(addr, head.as_bytes()).await;
    let after_body = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi{head}");
    let hyper = raw(addr, after_body.as_bytes()).await;
    let second = hyper.match_indices("HTTP/1.1 ").nth(1).map(|(i, _)| hyper[i..].to_owned()).unwrap_or_default();
    (own, second)
}

/// Writes `raw` bytes and reads the answer until the server closes (or 5 s pass).
pub async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
