//! What upstreams actually send on the wire, scripted byte by byte: interim responses, every
//! body framing, trailers, closed keep-alive connections, broken and invalid answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::client;
use crate::common::spawn_app;

/// What the scripted upstream does with one request.
#[derive(Clone)]
struct Answer {
    wire: &'static [u8],
    /// Close the connection this long after answering (None: keep it open).
    close_after: Option<Duration>,
    /// Send FIN after answering, then wait for the proxy to close its side.
    half_close: bool,
}

fn keep(wire: &'static [u8]) -> Answer {
    Answer { wire, close_after: None, half_close: false }
}

fn close(wire: &'static [u8], after_ms: u64) -> Answer {
    Answer { wire, close_after: Some(Duration::from_millis(after_ms)), half_close: false }
}

fn half_close(wire: &'static [u8]) -> Answer {
    Answer { wire, close_after: None, half_close: true }
}

/// An upstream that answers each request head with the next scripted answer, and counts the
/// connections it accepted and those the proxy closed after a half-close.
struct Scripted {
    url: String,
    accepted: Arc<AtomicUsize>,
    peer_closed: Arc<AtomicUsize>,
}

async fn scripted(answers: Vec<Answer>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let peer_closed = Arc::new(AtomicUsize::new(0));
    let queue = Arc::new(Mutex::new(answers.into_iter()));
    let (count, closed) = (accepted.clone(), peer_closed.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (queue, closed) = (queue.clone(), closed.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let Some(answer) = queue.lock().unwrap().next() else { return };
                    if stream.write_all(answer.wire).await.is_err() {
                        return;
                    }
                    if let Some(after) = answer.close_after {
                        tokio::time::sleep(after).await;
                        return;
                    }
                    if answer.half_close {
                        let _ = stream.shutdown().await;
                        if matches!(stream.read(&mut [0u8; 64]).await, Ok(0) | Err(_)) {
                            closed.fetch_add(1, Ordering::SeqCst);
                        }
                        return;
                    }
                }
            });
        }
    });
    Scripted { url, accepted, peer_closed }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test]
async fn interim_responses_chunked_trailers_and_close_delimited_bodies() {
    let up = scripted(vec![
        keep(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"),
        keep(b"HTTP/1.1 203 Fine Indeed\r\nContent-Length: 4\r\n\r\nfine"),
        close(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", 0),
        keep(OK),
    ])
    .await;
    let app = spawn_app(&up.url, "").await;

    let r = client::get(app.addr, "/chunked", &[("te", "trailers")]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello world"));
    assert_eq!(r.trailers.expect("trailers")["x-sum"], "42");

    let raw = client::raw(app.addr, b"GET /reason HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 203 Fine Indeed\r\n"), "{raw}");

    let r = client::get(app.addr, "/close-delimited", &[]).await.unwrap();
    assert_eq!(r.text(), "until the end");
    // The chunked and sized answers left their connection reusable; the HTTP/1.0 one did not.
    assert_eq!(client::get(app.addr, "/", &[]).await.unwrap().text(), "ok");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connections_the_upstream_closed_while_idle_are_not_reused() {
    let up = scripted(vec![close(OK, 50), close(OK, 50), keep(OK), keep(OK)]).await;
    let app = spawn_app(&up.url, "").await;
    for _ in 0..2 {
        let r = client::get(app.addr, "/", &[]).await.unwrap();
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A POST without a body is not retried, so it must not land on the closed connection.
    let r = client::request(app.addr, Method::POST, "/", &[], Bytes::new()).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn connection_close_answers_are_not_pooled() {
    let up = scripted(vec![
        keep(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
        keep(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"),
    ])
    .await;
    let app = spawn_app(&up.url, "").await;
    for _ in 0..2 {
        assert_eq!(client::get(app.addr, "/", &[]).await.unwrap().text(), "ok");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn invalid_answers_are_502_and_the_proxy_keeps_serving() {
    let up = scripted(vec![
        keep(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        keep(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"),
        keep(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        // A switch of protocols nobody asked for: the connection is no longer HTTP.
        keep(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"),
        keep(OK),
    ])
    .await;
    let app = spawn_app(&up.url, "").await;
    for _ in 0..4 {
        let r = client::get(app.addr, "/", &[]).await.unwrap();
        assert_eq!(r.status.as_u16(), 502);
        assert_eq!(r.json()["error"], "bad_gateway");
    }
    assert_eq!(client::get(app.addr, "/", &[]).await.unwrap().text(), "ok");
}

#[tokio::test]
async fn the_upstreams_framing_and_request_id_stay_on_its_side() {
    let up = scripted(vec![keep(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nX-Request-Id: upstream-id\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )])
    .await;
    let app = spawn_app(&up.url, "").await;
    let raw =
        client::raw(app.addr, b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: client-id\r\nConnection: close\r\n\r\n")
            .await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("content-length"), "a Content-Length beside chunked framing was forwarded: {head}");
    assert!(head.contains("\r\nx-request-id: client-id") && !head.contains("upstream-id"), "{head}");
    assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n");
}

#[tokio::test]
async fn a_body_cut_short_aborts_the_client_response() {
    let up = scripted(vec![
        close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0),
        close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", 0),
        keep(OK),
    ])
    .await;
    let app = spawn_app(&up.url, "").await;
    for _ in 0..2 {
        assert!(client::get(app.addr, "/", &[]).await.is_err(), "a truncated body must not look complete");
    }
    assert_eq!(client::get(app.addr, "/", &[]).await.unwrap().text(), "ok");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn idle_connections_the_upstream_closes_are_closed_promptly() {
    let up = scripted(vec![half_close(OK)]).await;
    let app = spawn_app(&up.url, "").await;
    assert_eq!(client::get(app.addr, "/", &[]).await.unwrap().text(), "ok");
    // No further request comes: the idle sweep, not the next request, must notice the FIN.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.peer_closed.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the proxy kept a connection in CLOSE_WAIT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_length_beside_chunked_never_reaches_the_client_on_any_path() {
    let wire: &'static [u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n";
    let up =
        scripted(vec![keep(wire), keep(wire), keep(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")]).await;
    let app = spawn_app(&up.url, "").await;
    // A request with a body: hyper's client and hyper's server carry it.
    let r = client::request(app.addr, Method::POST, "/", &[("connection", "close")], Bytes::from_static(b"abc"))
        .await
        .unwrap();
    assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
    assert_eq!(r.text(), "hello world");
    // HTTP/2: a Content-Length of 5 before 11 bytes of DATA would be a malformed stream.
    let r = client::get_h2(app.addr, "/").await;
    assert_eq!(r.header("content-length"), None, "{:?}", r.headers);
    assert_eq!(r.text(), "hello world");
    // No content, no Content-Length.
    let raw = client::raw(app.addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 204"), "{raw}");
    assert!(!raw.to_ascii_lowercase().contains("content-length"), "{raw}");
}

/// RFC 9110 §7.6.1 in responses: what an upstream's `Connection` names is for its hop only, on
/// the relay, on hyper's HTTP/1.1 reader and on HTTP/2 alike, `X-Forwarded-For` included (only
/// requests carry the fields tokengate adds there); the client gets the request's id, never
/// the upstream's.
#[tokio::test]
async fn fields_an_upstream_connection_names_never_reach_the_client() {
    const NAMING: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-forwarded-for\r\n\
        Connection: x-request-id, x-hop\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: upstream-id\r\n\
        X-Hop: 1\r\nX-Kept: yes\r\n\r\nok";
    let up = scripted(vec![keep(NAMING); 3]).await;
    let app = spawn_app(&up.url, "").await;

    let relayed = client::get(app.addr, "/", &[("x-request-id", "client-id")]).await.unwrap();
    let h2 = client::get_h2(app.addr, "/").await;
    // Last: the scripted upstream does not read bodies.
    let body = Bytes::from_static(b"hi");
    let hyper = client::request(app.addr, Method::POST, "/", &[("x-request-id", "client-id-2")], body).await.unwrap();

    for (engine, r, sent_id) in
        [("relay", &relayed, Some("client-id")), ("http2", &h2, None), ("hyper", &hyper, Some("client-id-2"))]
    {
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"), "{engine}");
        assert_eq!(r.header("x-kept"), Some("yes"), "{engine}");
        for gone in ["x-forwarded-for", "x-hop", "connection"] {
            assert!(r.headers.get(gone).is_none(), "{engine} passed {gone}: {:?}", r.headers);
        }
        let ids: Vec<_> = r.headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{engine}: {ids:?}");
        assert_ne!(ids[0], "upstream-id", "{engine}");
        if let Some(sent) = sent_id {
            assert_eq!(ids[0], sent, "{engine}");
        }
    }
}

/// RFC 9110 §15: an upstream status outside 100-599 is a protocol error (502), on the relay and
/// on hyper's client alike, and the proxy's status metric is keyed by the real status after it.
#[tokio::test]
async fn status_codes_outside_100_to_599_are_a_bad_gateway() {
    let up = scripted(vec![
        close(b"HTTP/1.1 800 Odd\r\nContent-Length: 0\r\n\r\n", 0),
        keep(OK),
        keep(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"),
        close(b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n", 0),
    ])
    .await;
    let app = spawn_app(&up.url, "").await;
    let relayed = client::get(app.addr, "/odd", &[]).await.unwrap();
    assert_eq!(relayed.status.as_u16(), 502);
    assert_eq!(client::get(app.addr, "/", &[]).await.unwrap().status.as_u16(), 200);
    assert_eq!(client::get(app.addr, "/found", &[]).await.unwrap().status.as_u16(), 302);
    let body = Bytes::from_static(b"hi");
    let streamed = client::request(app.addr, Method::POST, "/odd", &[], body).await.unwrap();
    assert_eq!(streamed.status.as_u16(), 502);

    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_upstream_errors_total{kind=\"protocol\"} 2"), "{metrics}");
    for (status, n) in [("200", 1), ("302", 1), ("502", 2)] {
        let line = format!("tokengate_requests_total{{route=\"proxy\",status=\"{status}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(!metrics.contains("status=\"800\"") && !metrics.contains("status=\"999\""), "{metrics}");
}
