//! Requests refused rather than rewritten (RFC 9112 §3.2, §6.3; RFC 9113 §8.3.1), and the
//! fields a client may not forge or make vanish. Raw sockets on both of tokengate's HTTP/1.1
//! readers (its own and hyper's, after a request with a body hands the connection over) and an
//! HTTP/2 client.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::client::{both_readers, status};
use crate::common::{backend, client, spawn_app};

#[tokio::test]
async fn bad_hosts_and_targets_are_400_on_both_readers() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    for (what, head) in [
        ("no Host", "GET /a HTTP/1.1\r\n\r\n"),
        ("two Hosts", "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("userinfo", "GET /a HTTP/1.1\r\nHost: user@a\r\n\r\n"),
        ("bad Host", "GET /a HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ("authority-form", "GET evil.example:80 HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("asterisk on GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
    ] {
        let (own, hyper) = both_readers(app.addr, head).await;
        assert_eq!(status(&own), "400", "{what}, tokengate's reader: {own}");
        assert!(own.contains("invalid_request") && own.contains("connection: close"), "{what}: {own}");
        assert_eq!(status(&hyper), "400", "{what}, hyper's reader: {hyper}");
    }
    // A fragment: refused where tokengate reads the head (hyper cuts it off silently).
    let own = client::raw(app.addr, b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status(&own), "400", "{own}");
    let echoed = b.connections.load(Ordering::SeqCst);
    assert!(echoed <= 6, "only the hyper-reader probes' POSTs reached the backend: {echoed}");
}

#[tokio::test]
async fn connect_is_405_and_options_asterisk_is_forwarded() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let raw = client::raw(app.addr, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n").await;
    assert_eq!(status(&raw), "405", "{raw}");
    assert!(raw.to_ascii_lowercase().contains("\r\nallow: get, head, post"), "{raw}");
    assert_eq!(b.connections.load(Ordering::SeqCst), 0, "CONNECT went nowhere");
    let raw = client::raw(app.addr, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&raw), "200", "{raw}");
    assert!(raw.contains("\"uri\":\"*\""), "the asterisk reached the backend as sent: {raw}");
}

#[tokio::test]
async fn an_absolute_form_target_sets_host_but_never_the_upstream() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let raw = client::raw(
        app.addr,
        b"GET http://elsewhere.example/path?q=1 HTTP/1.1\r\nHost: ignored.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&raw), "200", "{raw}");
    let echo: serde_json::Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(echo["uri"], "/path?q=1", "origin-form upstream");
    assert_eq!(client::echoed(&echo, "host"), ["elsewhere.example"], "RFC 9112 §3.2.2: the target's host");
}

async fn h2_request(addr: std::net::SocketAddr, uri: &str, host: Option<&str>, cookies: &[&str]) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::post(uri);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    for c in cookies {
        req = req.header("cookie", *c);
    }
    let resp =
        client::collect(sender.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap()).await.unwrap();
    (resp.status.as_u16(), resp.text())
}

#[tokio::test]
async fn http2_authority_rules_and_cookie_crumbs() {
    let b = backend::spawn().await;
    let route = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: s }}]\nauth_hooks:\n  session: {{ type: http, url: '{}/api/me', forward_headers: [cookie], identity: {{ id: body:/id }} }}\nroutes: [{{ name: t, path: /t, auth: session, tokens: {{ t: {{ key: k, ttl: 1m }} }}, response: {{ body: {{ id: '{{{{ user.id }}}}' }} }} }}]\n",
        b.url()
    );
    let app = spawn_app(&b.url(), &route).await;
    let (s, _) = h2_request(app.addr, "http://a.example/echo", Some("b.example"), &[]).await;
    assert_eq!(s, 400, "host differs from :authority");
    let (s, _) = h2_request(app.addr, "http://a.example/echo", Some("A.EXAMPLE"), &[]).await;
    assert_eq!(s, 200, "the same host in another case");
    // A browser splits Cookie into crumbs; the session endpoint reads one field.
    let (s, body) = h2_request(app.addr, "http://a.example/t", None, &["session=crumb", "theme=dark"]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"], "crumb; theme=dark");
    let (s, body) = h2_request(app.addr, "http://a.example/echo", None, &["a=1", "b=2"]).await;
    assert_eq!(s, 200);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(client::echoed(&echo, "cookie"), ["a=1; b=2"], "one Cookie field upstream");
}

#[tokio::test]
async fn lookalikes_and_connection_options_cannot_forge_or_hide_fields() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let head = "GET /echo HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nx-forwarded_proto: https\r\nX_Request_Id: forged\r\nX_Forwarded_Port: 99\r\nConnection: Host, X-Request-Id, X-Forwarded-For\r\nX-Request-Id: kept-id\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n";
    let mut all = Vec::new();
    // tokengate's reader, then the same head after a body (hyper's reader, http types).
    let own = client::raw(app.addr, head.as_bytes()).await;
    all.push(own);
    let (_, hyper) = both_readers(app.addr, head).await;
    all.push(hyper);
    for raw in all {
        assert_eq!(status(&raw), "200", "{raw}");
        let body = raw.split("\r\n\r\n").nth(1).unwrap();
        let body = &body[..body.rfind('}').unwrap() + 1];
        let echo: serde_json::Value = serde_json::from_str(body).unwrap();
        let names: Vec<String> =
            echo["headers"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap().to_ascii_lowercase()).collect();
        assert!(
            !names.iter().any(|n| n == "x_forwarded_for" || n == "x-forwarded_proto" || n == "x_request_id"),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n == "x_forwarded_port"), "other look-alikes pass in append mode: {names:?}");
        assert_eq!(client::echoed(&echo, "host"), ["a"], "Connection cannot name Host away");
        assert_eq!(client::echoed(&echo, "x-request-id"), ["kept-id"]);
        let xff = client::echoed(&echo, "x-forwarded-for");
        assert_eq!(xff.len(), 1);
        assert!(xff[0].starts_with("10.1.1.1, "), "the client's X-Forwarded-For was kept and appended to: {xff:?}");
    }
}

#[tokio::test]
async fn an_oversized_or_invisible_request_id_is_replaced() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let long = "x".repeat(10_000);
    for sent in [long.as_str(), "has space", "tab\there"] {
        let r = client::get(app.addr, "/echo", &[("x-request-id", sent)]).await;
        let r = r.unwrap();
        let id = r.header("x-request-id").unwrap().to_owned();
        assert_ne!(id, sent);
        assert_eq!(id.len(), 36, "a UUID in its place: {id}");
        assert_eq!(client::echoed(&r.json(), "x-request-id"), [id]);
    }
    let r = client::get(app.addr, "/echo", &[("x-request-id", &"y".repeat(200))]).await.unwrap();
    assert_eq!(r.header("x-request-id"), Some("y".repeat(200).as_str()), "200 visible characters are kept");
}
