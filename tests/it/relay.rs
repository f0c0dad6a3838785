//! Body-less HTTP/1.1 requests are relayed from the bytes of their head; HTTP/2 requests and
//! requests with a body go through `http` types. Both must apply the same rules (SPEC §3):
//! the same request, sent all three ways, must reach the backend with the same fields, and the
//! same response must reach the client with the same fields.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::client::{self, Resp};
use crate::common::{backend, spawn_app};

/// Fields a client might send, hop-by-hop and spoofed ones among them.
const SENT: &[(&str, &str)] = &[
    ("connection", "x-hop-named, keep-alive"),
    ("x-hop-named", "secret"),
    ("keep-alive", "timeout=1"),
    ("proxy-connection", "keep-alive"),
    ("te", "deflate, trailers"),
    ("x-forwarded-for", "6.6.6.6"),
    ("x-multi", "1"),
    ("x-forwarded-for", "5.5.5.5"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "spoofed.example"),
    ("x_forwarded_for", "7.7.7.7"),
    ("x-forwarded-port", "99"),
    ("x-multi", "2"),
    ("x-trace", ""),
];

#[derive(Clone, Copy, Debug)]
enum Path {
    /// HTTP/1.1 without a body: relayed.
    Relayed,
    /// HTTP/1.1 with a body: hyper's server and client.
    Bodied,
    /// HTTP/2: hyper's server, tokengate's client, through `http` types.
    H2,
}

const PATHS: [Path; 3] = [Path::Relayed, Path::Bodied, Path::H2];

async fn send(addr: SocketAddr, path: Path, target: &str, fields: &[(&str, &str)]) -> Resp {
    match path {
        Path::Relayed => {
            let mut with_host = vec![("host", "app.example")];
            with_host.extend_from_slice(fields);
            client::get(addr, target, &with_host).await.unwrap()
        }
        Path::Bodied => {
            let mut with_host = vec![("host", "app.example")];
            with_host.extend_from_slice(fields);
            client::request(addr, Method::POST, target, &with_host, Bytes::from_static(b"x")).await.unwrap()
        }
        Path::H2 => {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut req = Request::get(format!("http://app.example{target}"));
            // HTTP/2 has no connection-specific fields (RFC 9113 §8.2.2); `TE: trailers` is allowed.
            for (k, v) in
                fields.iter().filter(|(k, _)| !["connection", "keep-alive", "proxy-connection", "te"].contains(k))
            {
                req = req.header(*k, *v);
            }
            let req = req.header("te", "trailers").body(Full::new(Bytes::new())).unwrap();
            client::collect(sender.send_request(req).await.unwrap()).await.unwrap()
        }
    }
}

/// The fields as the backend saw them, by name, values in order; the length of the test's
/// body and a generated request id (different each time) left out.
fn arrived(echo: &serde_json::Value, id_header: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in echo["headers"].as_array().unwrap() {
        let (name, value) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        let value = if name == id_header && uuid::Uuid::parse_str(value).is_ok() { "<uuid>" } else { value };
        if name != "content-length" {
            out.entry(name.to_owned()).or_default().push(value.to_owned());
        }
    }
    out
}

#[tokio::test]
async fn relayed_and_other_requests_reach_the_backend_alike() {
    let b = backend::spawn().await;
    for config in [
        "forwarding: { request_id_header: x-trace }",
        "forwarding: { request_id_header: x-trace, x_forwarded: replace }",
        "forwarding: { request_id_header: x-trace, x_forwarded: 'off' }",
        "forwarding: { request_id_header: x-trace, trusted_proxies: [127.0.0.0/8] }",
    ] {
        let app = spawn_app(&b.url(), config).await;
        let mut seen = Vec::new();
        for path in PATHS {
            let fields: &[(&str, &str)] = if matches!(path, Path::H2) { &SENT[4..] } else { SENT };
            let mut got = arrived(&send(app.addr, path, "/echo?q=1", fields).await.json(), "x-trace");
            if matches!(path, Path::H2) {
                // What an HTTP/2 client cannot send (see `send`) is not compared.
                got.remove("te");
            }
            seen.push((path, got));
        }
        let (_, relayed) = &seen[0];
        for name in ["connection", "x-hop-named", "keep-alive", "proxy-connection"] {
            assert!(!relayed.contains_key(name), "{config}: {name} was relayed: {relayed:?}");
        }
        assert_eq!(relayed["te"], ["trailers"], "{config}");
        assert_eq!(relayed["x-multi"], ["1", "2"], "{config}");
        assert_eq!(relayed["x-trace"], ["<uuid>"], "{config}: an empty request id is replaced");
        for (path, got) in &seen[1..] {
            let mut relayed = relayed.clone();
            if matches!(path, Path::H2) {
                relayed.remove("te");
            }
            assert_eq!(&relayed, got, "{config}: relayed vs {path:?}");
        }
    }
}

/// The response fields as the client got them, less those that differ by nature (the date,
/// the request id, HTTP/2's lack of connection fields, the framing).
fn answered(r: &Resp) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &r.headers {
        if !["date", "x-request-id", "content-length", "transfer-encoding"].contains(&name.as_str()) {
            out.entry(name.to_string()).or_default().push(value.to_str().unwrap().to_owned());
        }
    }
    out
}

#[tokio::test]
async fn relayed_and_other_responses_reach_the_client_alike() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    for target in ["/hop", "/echo", "/status/404"] {
        let mut seen = Vec::new();
        for path in PATHS {
            let r = send(app.addr, path, target, &[]).await;
            seen.push((path, r.status, answered(&r), r.header("x-request-id").map(str::to_owned)));
        }
        let (_, status, relayed, id) = &seen[0];
        assert!(id.as_deref().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()), "{target}: {id:?}");
        assert!(!relayed.contains_key("x-backend-hop") && !relayed.contains_key("keep-alive"), "{relayed:?}");
        for (path, other_status, other, _) in &seen[1..] {
            assert_eq!((status, relayed), (other_status, other), "{target}: relayed vs {path:?}");
        }
    }
}
