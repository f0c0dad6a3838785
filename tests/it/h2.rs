//! HTTP/2 answered and refused as HTTP/1.1 is: HEAD without content on tokengate's own
//! answers, targets and authorities refused alike, and the trailers that never go upstream.
//! hyper's client for what it can send, raw frames for what it cannot.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{backend, spawn_app};

/// One HTTP/2 request with prior knowledge; the answer's status, headers and body.
async fn h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> (u16, HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.expect("h2 request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("the stream ends cleanly").to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

fn head(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::builder().method(Method::HEAD).uri(format!("http://{addr}{path}")).body(Full::default()).unwrap()
}

const ROUTES: &str = "keys: [{ id: k, algorithm: HS256, secret: signing-secret-0123 }]\nauth_hooks:\n  anyone: { type: none, identity: { id: header:x-user } }\nroutes: [{ name: r, path: /t, methods: [GET, HEAD, POST], auth: anyone, tokens: { t: { key: k, ttl: 1m } }, response: { body: '{{ tokens.t }}', content_type: text/plain } }]\njwks_path: /jwks\n";

/// RFC 9110 §9.3.2: the answer to HEAD has no content. hyper's HTTP/1.1 server drops it by
/// itself; over HTTP/2 tokengate's own answers (token route, JWK set, admin endpoints) used to
/// send it, and clients reset the stream.
#[tokio::test]
async fn head_over_http2_gets_no_content_on_what_tokengate_answers_itself() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), ROUTES).await;
    let mut route = head(app.addr, "/t");
    route.headers_mut().insert("x-user", "u1".parse().unwrap());
    let cases = [
        ("token route", app.addr, route),
        ("JWK set", app.addr, head(app.addr, "/jwks")),
        ("metrics", app.admin, head(app.admin, "/metrics")),
        ("healthz", app.admin, head(app.admin, "/healthz")),
        ("readyz", app.admin, head(app.admin, "/readyz")),
        ("forwarded", app.addr, head(app.addr, "/echo")),
    ];
    for (what, addr, req) in cases {
        let (status, headers, body) = h2(addr, req).await;
        assert_eq!(status, 200, "{what}");
        assert!(body.is_empty(), "{what}: {body:?}");
        if what != "forwarded" {
            let length: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
            assert!(length > 0, "{what}: HEAD says how long the GET answer is");
        }
    }
}

/// A raw HTTP/2 connection: the preface and an empty SETTINGS, then one HEADERS frame (END_STREAM,
/// END_HEADERS) whose fields are HPACK literals without indexing. Returns the first byte of
/// the answer's header block on stream 1: `:status` as an index of HPACK's static table
/// (0x88 200, 0x8c 400, 0x8d 404…).
async fn raw_h2(addr: SocketAddr, fields: &[(&str, &str)]) -> u8 {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x5, 1, &block));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&out).await.unwrap();
    let read = async {
        loop {
            let mut header = [0u8; 9];
            s.read_exact(&mut header).await.expect("a frame");
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.expect("a frame's payload");
            if header[3] == 0x4 && header[4] & 0x1 == 0 {
                s.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(); // SETTINGS ack
            }
            if header[3] == 0x1 && stream == 1 {
                return payload[0];
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("an answer on stream 1")
}

/// `:path: *` is for OPTIONS only (RFC 9113 §8.3.1), and an HTTP/2 request must name its host
/// in `:authority` or `host`: both are refused (400), as HTTP/1.1's `GET *` and missing Host
/// are, and nothing reaches the upstream.
#[tokio::test]
async fn asterisk_targets_and_requests_without_authority_are_refused() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = spawn_app(&format!("http://{}", upstream.local_addr().unwrap()), "").await;
    let fields = |method, path, authority: Option<&'static str>| {
        let mut f = vec![(":method", method), (":scheme", "http"), (":path", path)];
        if let Some(a) = authority {
            f.push((":authority", a));
        }
        f
    };
    assert_eq!(raw_h2(app.addr, &fields("GET", "*", Some("app.example"))).await, 0x8c, "GET *");
    assert_eq!(raw_h2(app.addr, &fields("POST", "*", Some("app.example"))).await, 0x8c, "POST *");
    assert_eq!(raw_h2(app.addr, &fields("GET", "/x", None)).await, 0x8c, "no :authority, no host");
    let upstream_got = tokio::time::timeout(Duration::from_millis(300), upstream.accept()).await;
    assert!(upstream_got.is_err(), "nothing was forwarded");
    // With a host field instead of :authority the request is fine (RFC 9113 §8.3.1).
    let mut with_host = fields("GET", "/x", None);
    with_host.push(("host", "app.example"));
    let forwarded = tokio::spawn(async move { upstream.accept().await.is_ok() });
    raw_h2(app.addr, &with_host).await;
    assert!(forwarded.await.unwrap(), "a host field names the host");
}

/// An upstream that answers every request with the names of the trailer fields it received.
async fn trailer_names_backend() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let record = record.clone();
                async move {
                    let collected = req.into_body().collect().await.unwrap();
                    let names: Vec<String> =
                        collected.trailers().map(|t| t.keys().map(|k| k.to_string()).collect()).unwrap_or_default();
                    record.lock().unwrap().extend(names);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (url, seen)
}

/// RFC 9110 §6.5.1: fields that route, authenticate or modify a request, and the fields
/// tokengate sets, are never forwarded as trailers, even when the client announced them;
/// other trailers go on.
#[tokio::test]
async fn trailers_that_route_or_authenticate_never_go_upstream() {
    let (url, seen) = trailer_names_backend().await;
    let app = spawn_app(&url, "").await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut trailers = HeaderMap::new();
    for (name, value) in [
        ("cookie", "session=mallory"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-request-id", "forged"),
        ("expect", "100-continue"),
        ("authorization", "Bearer x"),
        ("x-checksum", "abc123"),
    ] {
        trailers.insert(name, value.parse().unwrap());
    }
    let announced = "cookie, x-forwarded-for, x-request-id, expect, authorization, x-checksum";
    let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> =
        vec![Ok(http_body::Frame::data(Bytes::from_static(b"payload"))), Ok(http_body::Frame::trailers(trailers))];
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/upload", app.addr))
        .header("trailer", announced)
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), ["x-checksum"], "only the checksum may follow the body");
}
