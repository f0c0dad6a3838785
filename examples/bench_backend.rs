//! A fast fake backend for `benches/load.py`: one thread, HTTP/1.1 keep-alive, tiny answers.
//! `/api/me` answers a session endpoint's JSON; `/ws` with `Upgrade` switches protocols and
//! echoes what it reads (for `benches/connections.py`); everything else `ok`.
//!
//! Usage: `bench_backend 127.0.0.1:3900`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark, example or test: a failure should stop it loudly"
)]

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static ONE_MIB: [u8; 1 << 20] = [b'x'; 1 << 20];

async fn answer(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/ws" && req.headers().contains_key(header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut chunk = [0u8; 512];
            while let Ok(n @ 1..) = io.read(&mut chunk).await {
                if io.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        return Ok(resp);
    }
    let (body, ctype) = match req.uri().path() {
        "/api/me" => {
            (Bytes::from_static(br#"{"id":"user-123","name":"Alice","email":"alice@example.com"}"#), "application/json")
        }
        // The large-body case of `benches/load.py --scenarios large`.
        "/1m" => (Bytes::from_static(&ONE_MIB), "application/octet-stream"),
        _ => (Bytes::from_static(b"ok"), "text/plain"),
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(resp)
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3900".into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                    .with_upgrades()
                    .await;
            });
        }
    });
}
