//! Reload (SPEC §8) against the real binary: SIGHUP and file changes, what takes effect, what
//! survives, what is refused, and nothing lost under load.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::common::{backend, client, temp_dir, Binary};
use crate::seeds::verify_hs256;
use crate::websocket;

const SECRET: &str = "reload-test-secret";

/// A token route behind the session hook with a per-user limit; `claim` is the value of `v`.
fn session_route(b: &backend::Backend, claim: &str, rate: u32, extra: &str) -> String {
    format!(
        "workers: 1\nkeys: [{{ id: k, algorithm: HS256, secret: {SECRET} }}]\nauth_hooks:\n  session: {{ type: http, url: '{}/api/me', forward_headers: [cookie], identity: {{ id: body:/id }} }}\nrate_limits:\n  per_user: {{ key: user, rate: {rate}, per: 15m }}\nroutes:\n  - name: chat\n    path: /t\n    auth: session\n    rate_limits: [per_user]\n    tokens: {{ token: {{ key: k, ttl: 1h, claims: {{ sub: '{{{{ user.id }}}}', v: '{claim}' }} }} }}\n    response: {{ body: {{ token: '{{{{ tokens.token }}}}' }} }}\n{extra}",
        b.url()
    )
}

/// A token route anyone may call (`x-user-id`), signed with the key `key_yaml` describes.
fn open_route(claim: &str, key_yaml: &str) -> String {
    format!(
        "workers: 1\nkeys: [{key_yaml}]\nauth_hooks:\n  anyone: {{ type: none, identity: {{ id: header:x-user-id }} }}\nroutes:\n  - name: open\n    path: /t\n    auth: anyone\n    tokens: {{ token: {{ key: k, ttl: 1h, claims: {{ sub: '{{{{ user.id }}}}', v: '{claim}' }} }} }}\n    response: {{ body: {{ token: '{{{{ tokens.token }}}}' }} }}\n"
    )
}

fn plain_key() -> String {
    format!("{{ id: k, algorithm: HS256, secret: {SECRET} }}")
}

async fn post(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> client::Resp {
    client::request(addr, Method::POST, "/t", headers, Bytes::new()).await.unwrap()
}

/// The `v` claim of the token `/t` answers with, verified with `secret`.
async fn minted_claim(addr: std::net::SocketAddr, headers: &[(&str, &str)], secret: &str) -> String {
    let r = post(addr, headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let claims = verify_hs256(r.json()["token"].as_str().unwrap(), secret.as_bytes());
    claims.custom["v"].as_str().unwrap().to_owned()
}

fn check(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokengate")).args(["check", "--config"]).arg(file).output().unwrap()
}

#[tokio::test]
async fn sighup_reloads_and_does_not_kill_the_process() {
    let b = backend::spawn().await;
    let mut bin = Binary::start("reload-hup", &b.url(), &open_route("one", &plain_key()), &[]).await;
    let before = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    assert!(before.contains("tokengate_config_reloads_total{result=\"success\"} 0"), "{before}");
    assert!(before.contains("tokengate_config_last_reload_success_timestamp_seconds"));
    let hash = |m: &str| {
        m.lines().find_map(|l| l.strip_prefix("tokengate_config_info{hash=\"")?.split('"').next()).map(str::to_owned)
    };
    let first_hash = hash(&before).expect("a config hash");

    bin.signal("HUP");
    bin.wait_reloads((1, 0), Duration::from_secs(3)).await;
    assert!(bin.is_running(), "SIGHUP killed tokengate; logs:\n{}", bin.logs());
    assert_eq!(minted_claim(bin.addr, &[("x-user-id", "u")], SECRET).await, "one");
    let same = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    assert_eq!(hash(&same), Some(first_hash.clone()), "the same file, the same hash");
    assert!(bin.logs().contains("\"changes\":\"nothing\""), "{}", bin.logs());

    bin.reload_with(&bin.yaml(&b.url(), &open_route("two", &plain_key()))).await;
    bin.wait_reloads((2, 0), Duration::from_secs(1)).await;
    let after = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    assert_ne!(hash(&after), Some(first_hash), "another file, another hash");
    assert_eq!(after.matches("tokengate_config_info{").count(), 1, "one config in service: {after}");
    assert!(bin.logs().contains("\"changes\":\"routes: ~open\""), "{}", bin.logs());
}

#[tokio::test]
async fn a_changed_claim_upstream_and_rate_take_effect() {
    let (a, other) = (backend::spawn().await, backend::spawn().await);
    let bin = Binary::start("reload-effect", &a.url(), &session_route(&a, "old", 1, ""), &[]).await;
    let me = [("cookie", "session=ann")];
    assert_eq!(minted_claim(bin.addr, &me, SECRET).await, "old");
    assert_eq!(post(bin.addr, &me).await.status, 429, "rate 1 per 15 min");
    assert_eq!(client::get(bin.addr, "/echo", &[]).await.unwrap().status, 200);
    let other_before = other.connections.load(Ordering::SeqCst);

    // New claim, a new rate (its counters start afresh), another upstream.
    bin.reload_with(&bin.yaml(&other.url(), &session_route(&a, "new", 3, ""))).await;
    bin.wait_reloads((1, 0), Duration::from_secs(1)).await;
    assert_eq!(minted_claim(bin.addr, &me, SECRET).await, "new", "the next token carries the new claim");
    assert_eq!(minted_claim(bin.addr, &me, SECRET).await, "new");
    assert_eq!(minted_claim(bin.addr, &me, SECRET).await, "new");
    assert_eq!(post(bin.addr, &me).await.status, 429, "the new rate, 3, applies");
    assert_eq!(client::get(bin.addr, "/echo", &[]).await.unwrap().status, 200);
    assert!(other.connections.load(Ordering::SeqCst) > other_before, "forwarded traffic goes to the new upstream");
}

#[tokio::test]
async fn counters_caches_and_pools_survive_an_unrelated_reload() {
    let b = backend::spawn().await;
    let bin = Binary::start("reload-state", &b.url(), &session_route(&b, "x", 2, ""), &[]).await;
    let me = [("cookie", "session=bea")];
    assert_eq!(post(bin.addr, &me).await.status, 200);
    assert_eq!(post(bin.addr, &me).await.status, 200);
    assert_eq!(post(bin.addr, &me).await.status, 429, "the per-user limit is used up");
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 1, "the session was checked once, then cached");
    assert_eq!(client::get(bin.addr, "/echo", &[]).await.unwrap().status, 200);
    let upstream_conns = b.connections.load(Ordering::SeqCst);

    // Unrelated: a second route appears, the jwks path is served. Same limit, hook, upstream.
    let extra =
        "  - { name: other, path: /other, auth: session, tokens: { t: { key: k, ttl: 1m } } }\njwks_path: /jwks\n";
    let yaml = session_route(&b, "x", 2, extra);
    bin.reload_with(&bin.yaml(&b.url(), &yaml)).await;
    bin.wait_reloads((1, 0), Duration::from_secs(1)).await;

    assert_eq!(post(bin.addr, &me).await.status, 429, "the used-up limit is still used up");
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 1, "the warm auth cache is still warm");
    assert_eq!(client::get(bin.addr, "/echo", &[]).await.unwrap().status, 200);
    assert_eq!(b.connections.load(Ordering::SeqCst), upstream_conns, "the idle upstream connection was reused");
    let logs = bin.logs();
    for kept in ["\"limits_kept\":\"1/1\"", "\"auth_caches_kept\":\"1/1\"", "\"pools_kept\":\"1/1\""] {
        assert!(logs.contains(kept), "{kept} in:\n{logs}");
    }
}

#[tokio::test]
async fn bad_files_are_refused_counted_and_logged_while_the_old_config_serves() {
    let b = backend::spawn().await;
    let good = |claim: &str| open_route(claim, &plain_key());
    let bin = Binary::start("reload-bad", &b.url(), &good("good"), &[]).await;
    let me = [("x-user-id", "u")];
    let missing_key =
        format!("{{ id: k, algorithm: HS256, secret_file: {} }}", temp_dir("reload-missing").join("nope").display());
    let cases: Vec<(&str, String, &str)> = vec![
        ("YAML error", "routes: [ {\n".to_owned(), "invalid YAML"),
        ("unknown key", format!("{}bogus_key: 1\n", good("good")), "\"key\":\"bogus_key\""),
        (
            "unset variable",
            format!("{}admin_token: ${{TG_RELOAD_TEST_NEVER_SET}}\n", good("good")),
            "\"key\":\"admin_token\"",
        ),
        ("missing key file", open_route("good", &missing_key), "\"key\":\"keys[0].secret_file\""),
        ("template error", good("{{ nope.field }}"), "\"key\":\"routes[0].tokens.token.claims.v\""),
    ];
    for (i, (what, yaml, logged)) in cases.iter().enumerate() {
        let text = if what == &"YAML error" { yaml.clone() } else { bin.yaml(&b.url(), yaml) };
        bin.reload_with(&text).await;
        bin.wait_reloads((0, i as u64 + 1), Duration::from_secs(1)).await;
        assert!(bin.logs().contains(logged), "{what}: {logged} not logged:\n{}", bin.logs());
        assert_eq!(minted_claim(bin.addr, &me, SECRET).await, "good", "{what}: the old config serves");
        let out = check(&bin.config);
        assert_eq!(out.status.code(), Some(1), "{what}: check refuses it too");
    }
    let refusals = bin.logs().matches("\"config reload refused\"").count();
    assert_eq!(refusals, cases.len(), "one line per error:\n{}", bin.logs());

    // Restart-only settings: refused with a message saying so (check cannot know what runs).
    let moved = bin.yaml(&b.url(), &good("good")).replace(&format!("listen: {}", bin.addr), "listen: 127.0.0.1:1");
    bin.reload_with(&moved).await;
    bin.wait_reloads((0, 6), Duration::from_secs(1)).await;
    assert!(bin.logs().contains("needs a restart"), "{}", bin.logs());
    assert_eq!(minted_claim(bin.addr, &me, SECRET).await, "good");

    bin.reload_with(&bin.yaml(&b.url(), &good("fixed"))).await;
    bin.wait_reloads((1, 6), Duration::from_secs(1)).await;
    assert_eq!(minted_claim(bin.addr, &me, SECRET).await, "fixed", "a later good file applies");
    let metrics = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_config_reloads_total{result=\"failure\"} 6"), "{metrics}");
}

/// Polls `/t` until its claim is `want` (verified with `secret`); returns how long it took.
async fn picked_up(bin: &Binary, want: &str, secret: &str) -> Duration {
    let start = Instant::now();
    loop {
        let r = post(bin.addr, &[("x-user-id", "u")]).await;
        let token = r.json()["token"].as_str().unwrap_or_default().to_owned();
        let ok = HS256Check::verify(&token, secret).is_some_and(|v| v == want);
        if ok {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(2), "not picked up within 2 s; logs:\n{}", bin.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verifies without panicking (the file may not have been picked up yet).
struct HS256Check;
impl HS256Check {
    fn verify(token: &str, secret: &str) -> Option<String> {
        use jwt_simple::prelude::*;
        let claims = HS256Key::from_bytes(secret.as_bytes()).verify_token::<Value>(token, None).ok()?;
        claims.custom["v"].as_str().map(str::to_owned)
    }
}

#[tokio::test]
async fn file_changes_are_picked_up_without_a_signal() {
    let b = backend::spawn().await;
    let bin = Binary::start("reload-watch", &b.url(), &open_route("start", &plain_key()), &[]).await;
    assert_eq!(minted_claim(bin.addr, &[("x-user-id", "u")], SECRET).await, "start");

    // An in-place edit: the file's own inode is rewritten.
    std::fs::write(&bin.config, bin.yaml(&b.url(), &open_route("edited", &plain_key()))).unwrap();
    let took = picked_up(&bin, "edited", SECRET).await;
    eprintln!("in-place edit picked up in {took:?}");

    // An editor's save: write a temporary file, rename it over the config.
    let temp = bin.config.with_extension("yaml.swp");
    std::fs::write(&temp, bin.yaml(&b.url(), &open_route("renamed", &plain_key()))).unwrap();
    std::fs::rename(&temp, &bin.config).unwrap();
    let took = picked_up(&bin, "renamed", SECRET).await;
    eprintln!("rename-replace picked up in {took:?}");
    assert_eq!(bin.reloads().await.1, 0, "no failed reloads on the way: {}", bin.logs());
}

#[tokio::test]
async fn a_kubernetes_style_mount_update_is_picked_up() {
    use std::os::unix::fs::symlink;
    let b = backend::spawn().await;
    // What the kubelet makes of a ConfigMap/Secret volume: a timestamped directory holding the
    // files, `..data` pointing at it, and each file a symlink through `..data`.
    let mount = temp_dir("reload-k8s");
    let (addr, admin) = (crate::common::closed_port(), crate::common::closed_port());
    let config = |claim: &str| {
        let key = "{ id: k, algorithm: HS256, secret_file: signing-secret }";
        format!("listen: {addr}\nadmin_listen: {admin}\nupstream:\n  url: {}\n{}", b.url(), open_route(claim, key))
    };
    let publish = |version: &str, claim: &str, secret: &str| {
        let dir = mount.join(format!("..2026_12_01_{version}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tokengate.yaml"), config(claim)).unwrap();
        std::fs::write(dir.join("signing-secret"), secret).unwrap();
        // The atomic swap: a new link beside the old, renamed over it.
        symlink(dir.file_name().unwrap(), mount.join("..data_tmp")).unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    };
    publish("a", "v1", "first-secret");
    symlink("..data/tokengate.yaml", mount.join("tokengate.yaml")).unwrap();
    symlink("..data/signing-secret", mount.join("signing-secret")).unwrap();
    let bin = Binary::spawn(&mount, &mount.join("tokengate.yaml"), addr, admin, &[], &[]).await;
    assert_eq!(minted_claim(bin.addr, &[("x-user-id", "u")], "first-secret").await, "v1");

    // A Secret update: the signing secret changes; the config file's path never does.
    publish("b", "v1", "second-secret");
    std::fs::remove_dir_all(mount.join("..2026_12_01_a")).unwrap();
    let took = picked_up(&bin, "v1", "second-secret").await;
    eprintln!("..data swap (secret) picked up in {took:?}");

    // A ConfigMap update of the config itself.
    publish("c", "v2", "second-secret");
    std::fs::remove_dir_all(mount.join("..2026_12_01_b")).unwrap();
    let took = picked_up(&bin, "v2", "second-secret").await;
    eprintln!("..data swap (config) picked up in {took:?}");
}

/// One keep-alive HTTP/1.1 connection to `addr`.
async fn keep_alive(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn twenty_reloads_under_load_lose_no_request_and_keep_the_websocket() {
    let b = backend::spawn().await;
    let bin = Binary::start("reload-load", &b.url(), &open_route("0", &plain_key()), &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for path in ["/echo", "/echo", "/t"] {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), bin.addr);
        tasks.push(tokio::spawn(async move {
            let mut sender = keep_alive(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let method = if path == "/t" { Method::POST } else { Method::GET };
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", "x")
                    .header("x-user-id", "loader")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let answered = match sender.send_request(req).await {
                    Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if answered { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
                if !answered {
                    // Go on with a new connection, so one failure does not hide the rest.
                    sender = keep_alive(addr).await;
                }
            }
        }));
    }
    let mut ws = websocket::connect(bin.addr).await;
    let ws_task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut echoes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                websocket::echo_round_trip(&mut ws, &format!("echo {echoes}")).await;
                echoes += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ws, echoes)
        })
    };

    for i in 1..=20 {
        bin.reload_with(&bin.yaml(&b.url(), &open_route(&i.to_string(), &plain_key()))).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bin.wait_reloads((20, 0), Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (mut ws, echoes) = ws_task.await.unwrap();
    websocket::echo_round_trip(&mut ws, "after 20 reloads").await;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests answered, {failed} failed, {echoes} WebSocket echoes across 20 reloads");
    assert_eq!(failed, 0, "requests were lost across reloads");
    assert!(ok > 100 && echoes > 20, "the load ran: {ok} requests, {echoes} echoes");
    assert_eq!(minted_claim(bin.addr, &[("x-user-id", "u")], SECRET).await, "20");
}

#[tokio::test]
async fn max_connections_is_one_limit_for_the_process_and_a_reload_can_raise_it() {
    let b = backend::spawn().await;
    let limits = |max: u32| format!("workers: 2\nlimits: {{ max_connections: {max} }}\n");
    let bin = Binary::start("reload-maxconn", &b.url(), &limits(2), &[]).await;
    let answered = Arc::new(AtomicU64::new(0));
    let release = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (answered, release, addr) = (answered.clone(), release.clone(), bin.addr);
        clients.push(tokio::spawn(async move {
            let mut sender = keep_alive(addr).await;
            let req = Request::get("/echo").header("host", "x").body(Full::new(Bytes::new())).unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            answered.fetch_add(1, Ordering::SeqCst);
            // Keep the connection open until the test is done.
            release.cancelled().await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(answered.load(Ordering::SeqCst), 2, "two connections for both worker threads together");

    bin.reload_with(&bin.yaml(&b.url(), &limits(6))).await;
    let start = Instant::now();
    while answered.load(Ordering::SeqCst) < 6 {
        assert!(start.elapsed() < Duration::from_secs(2), "the raised limit did not let the waiting clients in");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_open_connections 6"), "{metrics}");
    release.cancel();
    for c in clients {
        c.await.unwrap();
    }
}
