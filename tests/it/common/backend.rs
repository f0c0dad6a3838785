//! A fake app backend with one endpoint per behaviour the proxy must pass through.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type BoxBody = UnsyncBoxBody<Bytes, Infallible>;

/// The running fake backend and what it observed.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Requests to `/api/me` (session endpoint) so far.
    pub session_calls: Arc<AtomicUsize>,
    /// The `traceparent` of the last request to `/api/me` or `/jwks-probe`.
    pub session_traceparent: Arc<std::sync::Mutex<Option<String>>>,
    /// Lets a held response (`/held`, `/sse`) send its next part.
    pub release: Arc<Notify>,
    /// Signalled when `/upload` has received its first body chunk.
    pub got_first_chunk: Arc<Notify>,
}

impl Backend {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub async fn spawn() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = Backend {
        addr: listener.local_addr().unwrap(),
        connections: Arc::default(),
        session_calls: Arc::default(),
        session_traceparent: Arc::default(),
        release: Arc::default(),
        got_first_chunk: Arc::default(),
    };
    let b = backend.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            b.connections.fetch_add(1, Ordering::SeqCst);
            let b = b.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let b = b.clone();
                    async move { Ok::<_, Infallible>(route(b, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    backend
}

fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed_unsync()
}

fn reply(status: u16, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

/// A body whose parts are sent one by one; before each part after the first, waits for `release`.
fn held_body(parts: Vec<&'static str>, release: Arc<Notify>, trailers: Option<HeaderMap>) -> BoxBody {
    let stream =
        futures_util::stream::unfold((0usize, parts, release, trailers), |(i, parts, release, trailers)| async move {
            if i < parts.len() {
                if i > 0 {
                    release.notified().await;
                }
                let frame = Frame::data(Bytes::from_static(parts[i].as_bytes()));
                Some((Ok::<_, Infallible>(frame), (i + 1, parts, release, trailers)))
            } else {
                let t = trailers?;
                Some((Ok(Frame::trailers(t)), (i, parts, release, None)))
            }
        });
    StreamBody::new(stream).boxed_unsync()
}

async fn route(b: Backend, req: Request<Incoming>) -> Response<BoxBody> {
    let path = req.uri().path().to_owned();
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        return if code == 204 || code == 304 { reply(code, "") } else { reply(code, format!("status {code}")) };
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return Response::new(full(numbered_bytes(n.parse().unwrap_or(0))));
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return reply(200, "slept");
    }
    match path.as_str() {
        "/jwks-probe" => {
            // A JWKS endpoint that records who asked (its `traceparent`) and serves no keys.
            *b.session_traceparent.lock().unwrap() =
                req.headers().get("traceparent").map(|v| v.to_str().unwrap().to_owned());
            reply(200, "{\"keys\": []}")
        }
        "/ws" => websocket(req),
        "/held" => Response::new(held_body(vec!["first\n", "last\n"], b.release.clone(), None)),
        "/sse" => {
            let mut r =
                Response::new(held_body(vec!["data: 1\n\n", "data: 2\n\n", "data: 3\n\n"], b.release.clone(), None));
            r.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream"));
            r
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            let mut first = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return reply(400, "broken body");
                };
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                    if first && !data.is_empty() {
                        first = false;
                        b.got_first_chunk.notify_one();
                    }
                }
            }
            reply(200, format!("{{\"bytes\":{total}}}"))
        }
        "/trailers" => {
            let collected = req.into_body().collect().await.unwrap();
            let req_trailers: Vec<(String, String)> = collected
                .trailers()
                .map(|t| t.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned())).collect())
                .unwrap_or_default();
            let mut t = HeaderMap::new();
            t.insert("x-resp-trailer", HeaderValue::from_static("ok"));
            let leaked: &'static str = Box::leak(serde_json::to_string(&req_trailers).unwrap().into_boxed_str());
            let mut r = Response::new(held_body(vec![leaked], b.release.clone(), Some(t)));
            r.headers_mut().insert("trailer", HeaderValue::from_static("x-resp-trailer"));
            r
        }
        "/hop" => {
            let mut r = reply(200, "hop");
            let h = r.headers_mut();
            h.insert("connection", HeaderValue::from_static("x-backend-hop"));
            h.insert("x-backend-hop", HeaderValue::from_static("secret"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("x-end-to-end", HeaderValue::from_static("kept"));
            r
        }
        "/api/me" => {
            b.session_calls.fetch_add(1, Ordering::SeqCst);
            *b.session_traceparent.lock().unwrap() =
                req.headers().get("traceparent").map(|v| v.to_str().unwrap().to_owned());
            let cookie = req.headers().get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
            match cookie.strip_prefix("session=") {
                // A session store having a bad day: fail closed, and never cache it.
                Some("fail") => reply(500, "{\"error\":\"db down\"}"),
                // A session store whose ids are numbers, and one that answers with an object.
                Some("numeric-id") => reply(200, "{\"id\": 42}"),
                Some("object-id") => reply(200, "{\"id\": {\"$ne\": null}}"),
                Some(user) if !user.is_empty() => {
                    if user.starts_with("slow") {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    reply(200, serde_json::json!({"id": user, "name": format!("Name {user}"), "email": format!("{user}@example.com")}).to_string())
                }
                _ => reply(401, "{\"error\":\"no session\"}"),
            }
        }
        _ => echo(req).await,
    }
}

/// Answers with what arrived: method, raw URI, version, headers in order, body length.
async fn echo(req: Request<Incoming>) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    let mut r = reply(200, json.to_string());
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r.headers_mut().append("x-repeated", HeaderValue::from_static("one"));
    r.headers_mut().append("x-repeated", HeaderValue::from_static("two"));
    r
}

/// RFC 6455 handshake, then echo every text and binary message.
fn websocket(req: Request<Incoming>) -> Response<BoxBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return reply(400, "not a websocket");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    let mut r = reply(101, "");
    let h = r.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-accept", HeaderValue::from_str(&accept).unwrap());
    r
}

/// `n` bytes that differ from their neighbours, the same for the same `n` (`/bytes/N`).
pub fn numbered_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}
