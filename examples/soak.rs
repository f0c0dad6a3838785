//! The soak, for `benches/soak.sh`: a release tokengate in front of an in-process backend,
//! under mixed load for a while, reloaded every 30 s. Prints requests and errors by kind, and
//! tokengate's RSS and open fds after warm-up, at the middle and at the end; exits 1 on any
//! error or when RSS grew more than 10 % over its value after warm-up.
//!
//! The load, all at once: HTTP/1.1 keep-alive forwarding (GETs and POSTs with a body), HTTP/2
//! forwarding (h2c, concurrent streams), a token route behind a session hook (1,000 users, the
//! token checked), short WebSockets (open, 20 echoes, close) and long ones that live through
//! every reload.
//!
//! Usage: `soak TOKENGATE_BINARY [SECONDS]` (default 600)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark, example or test: a failure should stop it loudly"
)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const RELOAD_EVERY: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Counts by kind: requests done, errors seen.
#[derive(Default)]
struct Tally {
    requests: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn ok(&self, kind: &'static str) {
        *self.requests.lock().unwrap().entry(kind).or_default() += 1;
    }
    fn error(&self, kind: &'static str, what: impl std::fmt::Display) {
        *self.errors.lock().unwrap().entry(format!("{kind}: {what}")).or_default() += 1;
    }
}

// ---- the backend: a session endpoint, an echo for uploads, a WebSocket echo, `ok` ----

async fn backend(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.headers().contains_key("sec-websocket-key") {
        return Ok(websocket(req));
    }
    let reply = |body: Bytes| Ok(Response::new(Full::new(body)));
    match req.uri().path() {
        "/api/me" => {
            let cookie = req.headers().get(header::COOKIE).and_then(|v| v.to_str().ok()).unwrap_or("");
            match cookie.strip_prefix("session=") {
                Some(user) => reply(Bytes::from(format!(r#"{{"id":"{user}","name":"Soak"}}"#))),
                None => Ok(Response::builder().status(401).body(Full::new(Bytes::new())).unwrap()),
            }
        }
        "/upload" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            reply(Bytes::from(body.len().to_string()))
        }
        _ => reply(Bytes::from_static(b"ok")),
    }
}

fn websocket(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let key = req.headers()["sec-websocket-key"].clone();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-accept", HeaderValue::from_str(&accept).unwrap());
    resp
}

async fn spawn_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(backend))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

// ---- tokengate, its config and its resources ----

fn config(listen: SocketAddr, admin: SocketAddr, backend: SocketAddr, generation: u64) -> String {
    format!(
        r#"listen: {listen}
admin_listen: {admin}
upstream: {{ url: "http://{backend}" }}
keys: [{{ id: soak, algorithm: HS256, secret: soak-secret-of-at-least-32-bytes! }}]
rate_limits:
  per_user: {{ key: user, rate: 100000, per: 1m }}
auth_hooks:
  session:
    type: http
    url: http://{backend}/api/me
    forward_headers: [cookie]
    identity: {{ id: body:/id, name: body:/name }}
    cache: {{ ttl: 20s, negative_ttl: 2s, max_entries: 10000 }}
routes:
  - name: soak
    path: /token
    methods: [GET]
    auth: session
    rate_limits: [per_user]
    tokens:
      token: {{ key: soak, ttl: 10m, claims: {{ sub: "{{{{ user.id }}}}", generation: {generation} }} }}
    response:
      body: {{ token: "{{{{ tokens.token }}}}", user: "{{{{ user.id }}}}" }}
"#
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A loopback port nothing listens on (for tokengate to take).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn wait_ready(admin: SocketAddr) {
    for _ in 0..100 {
        if admin_get(admin, "/readyz").await.is_some_and(|(status, _)| status == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tokengate did not start");
}

/// A GET on the admin port: the status and the body.
async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let stream = TcpStream::connect(admin).await.ok()?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req = Request::get(path).header("host", "admin").body(Full::new(Bytes::new())).ok()?;
    let resp = s.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn scrape(admin: SocketAddr, metric: &str) -> Option<f64> {
    let (_, text) = admin_get(admin, "/metrics").await?;
    text.lines().find(|l| l.starts_with(metric)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

// ---- the load ----

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1(addr: SocketAddr) -> Option<H1> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(s)
}

/// One request with a deadline: the status and body, or what went wrong.
async fn send<S>(sender: &mut S, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), String>
where
    S: Sender,
{
    let resp = tokio::time::timeout(TIMEOUT, sender.send(req)).await.map_err(|_| "timeout".to_owned())?;
    let resp = resp.map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| "body timeout".to_owned())?
        .map_err(|e| format!("body: {e}"))?;
    Ok((status, body.to_bytes()))
}

trait Sender {
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl std::future::Future<Output = hyper::Result<Response<Incoming>>>;
}
impl Sender for H1 {
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl std::future::Future<Output = hyper::Result<Response<Incoming>>> {
        self.send_request(req)
    }
}
impl Sender for hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl std::future::Future<Output = hyper::Result<Response<Incoming>>> {
        self.send_request(req)
    }
}

fn get(path: &str, cookie: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get(path).header("host", "soak.example");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// Keep-alive HTTP/1.1 forwarding: GETs, and every fourth a POST with a 4 KiB body.
async fn h1_forwarding(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let upload = Bytes::from(vec![b'x'; 4096]);
    let mut sender = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = sender.as_mut() else {
            sender = h1(addr).await;
            if sender.is_none() {
                tally.error("h1", "connect");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        n += 1;
        let (kind, req, want) = if n.is_multiple_of(4) {
            let req = Request::post("/upload").header("host", "soak.example").body(Full::new(upload.clone())).unwrap();
            ("h1 post", req, Bytes::from_static(b"4096"))
        } else {
            ("h1 get", get("/items", None), Bytes::from_static(b"ok"))
        };
        if s.ready().await.is_err() {
            sender = None; // tokengate closed an idle or draining connection: open another
            continue;
        }
        match send(s, req).await {
            Ok((200, body)) if body == want => tally.ok(kind),
            Ok((status, _)) => tally.error(kind, status),
            Err(e) => {
                tally.error(kind, e);
                sender = None;
            }
        }
    }
}

/// HTTP/2 forwarding: one h2c connection, `streams` requests in flight at a time.
async fn h2_forwarding(addr: SocketAddr, streams: usize, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(addr).await else {
            tally.error("h2", "connect");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok((sender, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
        else {
            tally.error("h2", "handshake");
            continue;
        };
        tokio::spawn(conn);
        let workers = (0..streams).map(|_| {
            let (mut sender, tally, stop) = (sender.clone(), tally.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) && sender.ready().await.is_ok() {
                    match send(&mut sender, get("http://soak.example/items", None)).await {
                        Ok((200, body)) if body == "ok" => tally.ok("h2 get"),
                        Ok((status, _)) => tally.error("h2 get", status),
                        Err(e) => return tally.error("h2 get", e),
                    }
                }
            })
        });
        futures_util::future::join_all(workers).await;
    }
}

/// The token route on keep-alive HTTP/1.1, users in turn; the token's `sub` is checked.
async fn tokens(addr: SocketAddr, first_user: u64, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut sender = None;
    let mut user = first_user;
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = sender.as_mut() else {
            sender = h1(addr).await;
            continue;
        };
        if s.ready().await.is_err() {
            sender = None;
            continue;
        }
        user = (user + 1) % 1000;
        let id = format!("user-{user}");
        match send(s, get("/token", Some(&format!("session={id}")))).await {
            Ok((200, body)) => match token_subject(&body) {
                Some(sub) if sub == id => tally.ok("token"),
                _ => tally.error("token", "wrong token"),
            },
            Ok((status, _)) => tally.error("token", status),
            Err(e) => {
                tally.error("token", e);
                sender = None;
            }
        }
    }
}

fn token_subject(body: &[u8]) -> Option<String> {
    use base64::Engine;
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    let payload = answer["token"].as_str()?.split('.').nth(1)?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    Some(claims["sub"].as_str()?.to_owned())
}

/// WebSockets: `messages` echoes a connection, one every `pause`, then a close; again.
async fn websockets(
    addr: SocketAddr,
    messages: u64,
    pause: Duration,
    kind: &'static str,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(addr).await else {
            tally.error(kind, "connect");
            continue;
        };
        let Ok((mut ws, _)) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await else {
            tally.error(kind, "handshake");
            continue;
        };
        for i in 0..messages {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let text = format!("message {i}");
            if ws.send(Message::text(text.clone())).await.is_err() {
                tally.error(kind, "send");
                break;
            }
            match tokio::time::timeout(TIMEOUT, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => tally.ok(kind),
                Ok(other) => {
                    tally.error(kind, format!("echo: {:?}", other.map(|m| m.map(|m| m.len()))));
                    break;
                }
                Err(_) => {
                    tally.error(kind, "timeout");
                    break;
                }
            }
            tokio::time::sleep(pause).await;
        }
        let _ = ws.close(None).await;
    }
}

struct Sample {
    at: &'static str,
    rss_kib: u64,
    fds: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args.next().expect("usage: soak TOKENGATE_BINARY [SECONDS]");
    let seconds: u64 = args.next().map(|s| s.parse().expect("SECONDS")).unwrap_or(600);
    let backend = spawn_backend().await;
    let dir = std::env::temp_dir().join(format!("tokengate-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokengate.yaml");
    let (addr, admin) = (free_port(), free_port());
    std::fs::write(&path, config(addr, admin, backend, 0)).unwrap();
    let log = std::fs::File::create(dir.join("tokengate.log")).unwrap();
    let mut child = std::process::Command::new(&binary)
        .args(["run", "--config", path.to_str().unwrap(), "--log-level", "warn", "--workers", "1"])
        .stderr(log)
        .spawn()
        .expect("tokengate starts");
    let pid = child.id();
    wait_ready(admin).await;
    println!(
        "soak: {seconds}s against tokengate pid {pid} on {addr} (admin {admin}), a reload every {}s",
        RELOAD_EVERY.as_secs()
    );

    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let mut load = Vec::new();
    for _ in 0..4 {
        load.push(tokio::spawn(h1_forwarding(addr, tally.clone(), stop.clone())));
    }
    for _ in 0..2 {
        load.push(tokio::spawn(h2_forwarding(addr, 8, tally.clone(), stop.clone())));
    }
    for i in 0..2 {
        load.push(tokio::spawn(tokens(addr, i * 500, tally.clone(), stop.clone())));
    }
    for _ in 0..2 {
        load.push(tokio::spawn(websockets(addr, 20, Duration::ZERO, "ws short", tally.clone(), stop.clone())));
        load.push(tokio::spawn(websockets(
            addr,
            u64::MAX,
            Duration::from_secs(1),
            "ws long",
            tally.clone(),
            stop.clone(),
        )));
    }

    let started = Instant::now();
    let total = Duration::from_secs(seconds);
    let warm_up = (total / 10).min(Duration::from_secs(30));
    let (mut samples, mut next_reload, mut reloads_asked) = (Vec::new(), RELOAD_EVERY, 0u64);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let elapsed = started.elapsed();
        if elapsed >= next_reload {
            reloads_asked += 1;
            std::fs::write(&path, config(addr, admin, backend, reloads_asked)).unwrap();
            let _ = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status();
            next_reload += RELOAD_EVERY;
        }
        let due = [("after warm-up", warm_up), ("middle", total / 2)];
        for (at, when) in due {
            if elapsed >= when && !samples.iter().any(|s: &Sample| s.at == at) {
                samples.push(Sample { at, rss_kib: rss_kib(pid), fds: open_fds(pid) });
            }
        }
    }
    samples.push(Sample { at: "end", rss_kib: rss_kib(pid), fds: open_fds(pid) });
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = tokio::time::timeout(TIMEOUT * 2, task).await;
    }
    // The file watcher may fold a write and its SIGHUP into one reload: count successes.
    let reloaded = scrape(admin, "tokengate_config_reloads_total{result=\"success\"}").await.unwrap_or(0.0);
    let failed = scrape(admin, "tokengate_config_reloads_total{result=\"failure\"}").await.unwrap_or(0.0);
    let _ = child.kill();
    let _ = child.wait();
    let warnings = std::fs::read_to_string(dir.join("tokengate.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);

    let requests = tally.requests.lock().unwrap();
    let errors = tally.errors.lock().unwrap();
    println!("\nrequests ({:.0}/s):", requests.values().sum::<u64>() as f64 / seconds as f64);
    for (kind, n) in requests.iter() {
        println!("  {kind:<10} {n:>10}");
    }
    println!("errors: {}", if errors.is_empty() { "none".to_owned() } else { String::new() });
    for (kind, n) in errors.iter() {
        println!("  {kind:<30} {n:>6}");
    }
    println!("tokengate's warnings and errors: {}", warnings.lines().count());
    for line in warnings.lines().take(10) {
        println!("  {line}");
    }
    println!("reloads: {reloads_asked} asked, {reloaded} succeeded, {failed} failed");
    println!("tokengate:");
    for s in &samples {
        println!("  {:<14} RSS {:>7.1} MiB   open fds {:>4}", s.at, s.rss_kib as f64 / 1024.0, s.fds);
    }
    let base = samples[0].rss_kib.max(1) as f64;
    let growth = (samples.last().unwrap().rss_kib as f64 - base) / base * 100.0;
    println!("RSS at the end vs after warm-up: {growth:+.1} % (target within 10 %)");
    let ok = errors.is_empty() && growth.abs() <= 10.0 && failed == 0.0 && reloaded >= 1.0;
    println!("{}", if ok { "PASS" } else { "FAIL" });
    std::process::exit(if ok { 0 } else { 1 });
}
