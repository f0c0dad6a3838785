//! Several replicas sharing limits and revocation through real Redis servers (feature
//! `services`): the one at `TOKENGATE_TEST_REDIS_URL` (a key prefix per test), and servers
//! of the tests' own, killed, paused and restarted on free loopback ports.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use crate::common::{backend, client, closed_port, Binary};

fn shared_redis() -> String {
    crate::common::test_redis_url()
}

fn prefix(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("tgtest-{tag}-{}-{}:", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A token route with a per-user limit of `rate` per minute, the user named by a header, and
/// one behind the backend's session endpoint (cached) for revocation.
fn config(url: &str, prefix: &str, on_error: &str, rate: u32) -> String {
    format!(
        r#"keys:
  - {{ id: k, algorithm: HS256, secret: shared-state-test-key }}
auth_hooks:
  hdr:
    type: none
    identity: {{ id: header:x-user-id }}
  session:
    type: http
    url: ${{TG_SESSION_URL}}
    forward_headers: [cookie]
    identity: {{ id: body:/id }}
    cache: {{ ttl: 5m, negative_ttl: 1s }}
rate_limits:
  per_user: {{ key: user, rate: {rate}, per: 1m }}
shared_state:
  type: redis
  url: "{url}"
  secret: shared-state-test-secret-0123
  key_prefix: "{prefix}"
  on_error: {on_error}
routes:
  - name: t
    path: /t
    methods: [POST]
    auth: hdr
    rate_limits: [per_user]
    tokens: {{ token: {{ key: k, ttl: 1h, claims: {{ sub: "{{{{ user.id }}}}" }} }} }}
    response: {{ body: {{ token: "{{{{ tokens.token }}}}" }} }}
  - name: s
    path: /s
    methods: [POST]
    auth: session
    tokens: {{ token: {{ key: k, ttl: 1h, claims: {{ sub: "{{{{ user.id }}}}" }} }} }}
    response: {{ body: {{ token: "{{{{ tokens.token }}}}" }} }}
  - name: c
    path: /c
    methods: [POST]
    auth: session
    cache_tokens: true
    tokens: {{ token: {{ key: k, ttl: 1h, claims: {{ sub: "{{{{ user.id }}}}" }} }} }}
    response: {{ body: {{ token: "{{{{ tokens.token }}}}" }} }}
"#
    )
}

async fn replica(name: &str, b: &backend::Backend, yaml: &str) -> Binary {
    let dir = crate::common::temp_dir(name);
    let config = dir.join("tokengate.yaml");
    let (addr, admin) = (closed_port(), closed_port());
    std::fs::write(&config, format!("listen: {addr}\nadmin_listen: {admin}\nupstream:\n  url: {}\n{yaml}", b.url()))
        .unwrap();
    let session = format!("{}/api/me", b.url());
    let bin = Binary::spawn(&dir, &config, addr, admin, &[], &[("TG_SESSION_URL", session.as_str())]).await;
    wait_up(&bin, 1.0).await;
    bin
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(-1.0)
}

/// Waits until `tokengate_shared_state_up` is `want` (15 s at most).
async fn wait_up(bin: &Binary, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
        if metric(&text, "tokengate_shared_state_up") == want {
            return;
        }
        assert!(Instant::now() < deadline, "shared_state_up never {want}; logs:\n{}", bin.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn mint(bin: &Binary, user: &str) -> (u16, Duration) {
    let started = Instant::now();
    let r = client::request(bin.addr, Method::POST, "/t", &[("x-user-id", user)], Bytes::new()).await.unwrap();
    (r.status.as_u16(), started.elapsed())
}

#[tokio::test]
async fn a_per_user_limit_holds_across_three_replicas() {
    let b = backend::spawn().await;
    let yaml = config(&shared_redis(), &prefix("limit"), "local", 5);
    let replicas =
        [replica("ss-a", &b, &yaml).await, replica("ss-b", &b, &yaml).await, replica("ss-c", &b, &yaml).await];
    let mut statuses = Vec::new();
    for i in 0..15 {
        statuses.push(mint(&replicas[i % 3], "alternating").await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10, "{statuses:?}");
    assert_eq!(&statuses[..5], [200; 5], "the first five, whichever replica");

    // Thirty at once, ten per replica.
    let mut all = Vec::new();
    for i in 0..30 {
        let addr = replicas[i % 3].addr;
        all.push(tokio::spawn(async move {
            client::request(addr, Method::POST, "/t", &[("x-user-id", "at-once")], Bytes::new()).await.unwrap().status
        }));
    }
    let mut ok = 0;
    for h in all {
        if h.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 5, "exactly five of thirty concurrent requests");
    let r =
        client::request(replicas[1].addr, Method::POST, "/t", &[("x-user-id", "at-once")], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some() && r.header("ratelimit-limit") == Some("5"), "the local 429 headers");
}

#[tokio::test]
async fn redis_holds_no_user_id_in_clear_and_its_keys_expire() {
    let b = backend::spawn().await;
    let p = prefix("keys");
    let bin = replica("ss-keys", &b, &config(&shared_redis(), &p, "local", 5)).await;
    assert_eq!(mint(&bin, "alice-in-clear").await.0, 200);
    let client = redis::Client::open(shared_redis()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{p}*")).query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains("alice") && !keys[0].contains("127.0.0.1"), "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 13_000, "expires once as good as new (12 s + 1 s): {ttl}");
}

async fn session_token(bin: &Binary, cookie: &str) -> serde_json::Value {
    let r = client::request(bin.addr, Method::POST, "/s", &[("cookie", cookie)], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    crate::seeds::parts(r.json()["token"].as_str().unwrap()).1
}

async fn revoke(bin: &Binary, user: &str) {
    let body = Bytes::from(serde_json::json!({ "user": user }).to_string());
    let r = client::request(bin.admin, Method::POST, "/admin/revoke", &[("content-type", "application/json")], body)
        .await
        .unwrap();
    assert_eq!(r.json()["every_replica"], true, "{}", r.text());
}

#[tokio::test]
async fn an_identity_checked_by_one_replica_serves_the_others_and_a_revoke_reaches_all() {
    let b = backend::spawn().await;
    let yaml = config(&shared_redis(), &prefix("revoke"), "local", 100);
    let replicas =
        [replica("ss-rv-a", &b, &yaml).await, replica("ss-rv-b", &b, &yaml).await, replica("ss-rv-c", &b, &yaml).await];
    let calls = || b.session_calls.load(Ordering::SeqCst);
    for bin in &replicas {
        assert_eq!(session_token(bin, "session=rita").await["sub"], "rita");
        session_token(bin, "session=rita").await;
    }
    assert_eq!(calls(), 1, "A asked the session endpoint; B and C used what A put in Redis");

    revoke(&replicas[0], "rita").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    session_token(&replicas[2], "session=rita").await;
    assert_eq!(calls(), 2, "C forgot rita (locally and in Redis) within 1 s");
    session_token(&replicas[1], "session=rita").await;
    assert_eq!(calls(), 2, "B uses what C stored again");

    revoke(&replicas[0], "rita").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    session_token(&replicas[1], "session=rita").await;
    assert_eq!(calls(), 3, "B forgot rita within 1 s");
}

#[tokio::test]
async fn an_identity_forged_into_redis_without_the_secret_is_not_accepted() {
    let b = backend::spawn().await;
    let p = prefix("forged");
    let yaml = config(&shared_redis(), &p, "local", 100);
    let (a, other) = (replica("ss-forge-a", &b, &yaml).await, replica("ss-forge-b", &b, &yaml).await);
    session_token(&a, "session=victor").await;
    let client = redis::Client::open(shared_redis()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{p}auth:*")).query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let stored: String = redis::cmd("GET").arg(&keys[0]).query_async(&mut conn).await.unwrap();
    assert!(!stored.contains("session=victor"), "the credential is not in Redis");
    // Someone with write access to Redis, without the secret: another identity, the old MAC.
    let (mac, json) = stored.split_once('.').unwrap();
    let forged = format!("{mac}.{}", json.replace("victor", "mallory"));
    let _: () = redis::cmd("SET").arg(&keys[0]).arg(forged).arg("PX").arg(60_000).query_async(&mut conn).await.unwrap();
    let before = b.session_calls.load(Ordering::SeqCst);
    assert_eq!(session_token(&other, "session=victor").await["sub"], "victor", "the forged identity is a miss");
    assert_eq!(b.session_calls.load(Ordering::SeqCst), before + 1, "so B asked the session endpoint");
    let text = client::get(other.admin, "/metrics", &[]).await.unwrap().text();
    assert_eq!(metric(&text, "tokengate_shared_state_errors_total{kind=\"bad_mac\"}"), 1.0, "{text}");
}

/// A Redis server of the test's own, on a free loopback port.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success());
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.signal_quietly();
        self.kill();
    }
}

impl OwnRedis {
    fn signal_quietly(&self) {
        let _ = Command::new("kill").arg("-CONT").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
    }
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

#[tokio::test]
async fn a_dead_or_hanging_redis_falls_back_without_latency_and_shared_limits_resume() {
    let b = backend::spawn().await;
    let port = closed_port().port();
    let mut redis = OwnRedis::start(port);
    let p = prefix("fault");
    let local = replica("ss-local", &b, &config(&redis.url(), &p, "local", 3)).await;
    let allow = replica("ss-allow", &b, &config(&redis.url(), &p, "allow", 3)).await;
    let deny = replica("ss-deny", &b, &config(&redis.url(), &p, "deny", 3)).await;

    // Hanging (SIGSTOP): the first call waits for the 50 ms timeout, the rest skip Redis.
    redis.signal("STOP");
    let mut latencies = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let (status, took) = mint(&local, "hung").await;
        statuses.push(status);
        latencies.push(took);
    }
    assert!(p99(latencies[1..].to_vec()) < Duration::from_millis(100), "{latencies:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "local limits apply: {statuses:?}");
    let text = client::get(local.admin, "/metrics", &[]).await.unwrap().text();
    let timeouts = metric(&text, "tokengate_shared_state_errors_total{kind=\"timeout\"}");
    assert_eq!(timeouts, 1.0, "only the first request waited for Redis; the breaker skipped it for the rest");
    wait_up(&local, 0.0).await;
    redis.signal("CONT");
    wait_up(&local, 1.0).await;

    // Dead (SIGKILL).
    redis.kill();
    let mut latencies = Vec::new();
    for _ in 0..40 {
        let (_, took) = mint(&local, "dead").await;
        latencies.push(took);
    }
    assert!(p99(latencies[1..].to_vec()) < Duration::from_millis(100), "{latencies:?}");
    let mut allowed = Vec::new();
    for _ in 0..10 {
        allowed.push(mint(&allow, "dead").await.0);
    }
    assert_eq!(allowed[1..], [200; 9], "on_error allow: no limit applies");
    let mut denied = Vec::new();
    for _ in 0..5 {
        let r = client::request(deny.addr, Method::POST, "/t", &[("x-user-id", "dead")], Bytes::new()).await.unwrap();
        denied.push((r.status.as_u16(), r.json()["error"].as_str().map(str::to_owned)));
    }
    assert!(
        denied[1..].iter().all(|(s, e)| *s == 503 && e.as_deref() == Some("shared_state_unavailable")),
        "on_error deny: {denied:?}"
    );
    for bin in [&local, &allow, &deny] {
        let r = client::get(bin.addr, "/", &[]).await.unwrap();
        assert_eq!(r.status, 200, "forwarded traffic never needs Redis");
    }
    let text = client::get(local.admin, "/metrics", &[]).await.unwrap().text();
    assert!(
        metric(&text, "tokengate_shared_state_fallback_total{decision=\"local\",limit=\"per_user\"}") > 0.0,
        "{text}"
    );

    // Restarted: shared limits resume without restarting tokengate.
    let _redis = OwnRedis::start(port);
    for bin in [&local, &allow, &deny] {
        wait_up(bin, 1.0).await;
    }
    let mut statuses = Vec::new();
    for bin in [&local, &allow, &deny, &local, &allow, &deny] {
        statuses.push(mint(bin, "after-restart").await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429], "one limit of 3 across the three again");
}

#[tokio::test]
async fn a_token_cached_by_one_replica_is_reused_by_the_others() {
    let b = backend::spawn().await;
    let yaml = config(&shared_redis(), &prefix("tokens"), "local", 100);
    let (a, other) = (replica("ss-tok-a", &b, &yaml).await, replica("ss-tok-b", &b, &yaml).await);
    let cached = |bin: &Binary| {
        let addr = bin.addr;
        async move {
            let r =
                client::request(addr, Method::POST, "/c", &[("cookie", "session=tess")], Bytes::new()).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["token"].as_str().unwrap().to_owned()
        }
    };
    let first = cached(&a).await;
    assert_eq!(cached(&other).await, first, "B answers with the token A minted");
    let text = client::get(other.admin, "/metrics", &[]).await.unwrap().text();
    assert_eq!(
        metric(&text, "tokengate_tokens_minted_total{alg=\"HS256\",route=\"c\",token=\"token\"}"),
        -1.0,
        "B minted none"
    );
    revoke(&a, "tess").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_ne!(cached(&other).await, first, "a revoked user's cached token is gone everywhere");
}

/// A three-node Redis Cluster of the test's own (no replicas), in its own directory.
struct OwnCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
}

impl OwnCluster {
    fn start() -> OwnCluster {
        let dir = crate::common::temp_dir("redis-cluster");
        let ports: Vec<u16> = (0..3).map(|_| closed_port().port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                let p = port.to_string();
                Command::new("redis-server")
                    .args(["--port", &p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{p}.conf")])
                    .current_dir(&dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server")
            })
            .collect();
        for port in &ports {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info =
                Command::new("redis-cli").args(["-p", &ports[0].to_string(), "cluster", "info"]).output().unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        OwnCluster { nodes, ports }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

#[tokio::test]
async fn limits_hold_across_replicas_on_a_redis_cluster() {
    let cluster = OwnCluster::start();
    let b = backend::spawn().await;
    let urls: Vec<String> = cluster.ports.iter().map(|p| format!("\"redis://127.0.0.1:{p}\"")).collect();
    let yaml = config("unused", &prefix("cluster"), "deny", 5).replace(
        "  type: redis\n  url: \"unused\"\n",
        &format!("  type: redis_cluster\n  urls: [{}]\n", urls.join(", ")),
    );
    let (a, other) = (replica("ss-cl-a", &b, &yaml).await, replica("ss-cl-b", &b, &yaml).await);
    // Users whose keys land on different shards: each gets its own five.
    for user in ["u1", "u2", "u3", "u4"] {
        let mut statuses = Vec::new();
        for i in 0..8 {
            statuses.push(mint(if i % 2 == 0 { &a } else { &other }, user).await.0);
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429], "{user}");
    }
}

#[test]
fn check_names_each_shared_state_mistake_by_its_key_path() {
    let dir = crate::common::temp_dir("ss-check");
    let cases = [
        ("  type: redis\n  secret: 0123456789abcdef\n", "shared_state.url: missing required key for type redis"),
        (
            "  type: redis_cluster\n  secret: 0123456789abcdef\n",
            "shared_state.urls: missing required key for type redis_cluster",
        ),
        ("  type: redis\n  url: \"http://x\"\n  secret: 0123456789abcdef\n", "shared_state.url: not a valid Redis URL"),
        (
            "  type: redis\n  url: redis://127.0.0.1\n  secret: short\n",
            "shared_state.secret: must be at least 16 bytes",
        ),
        (
            "  type: redis\n  url: redis://127.0.0.1\n  secret: 0123456789abcdef\n  timeout: 0s\n",
            "shared_state.timeout: must be above zero",
        ),
        (
            "  type: redis\n  url: redis://127.0.0.1\n  secret: 0123456789abcdef\n  on_error: panic\n",
            "shared_state.on_error: unknown variant `panic`",
        ),
        ("  type: memcached\n", "shared_state.type: unknown variant `memcached`"),
    ];
    for (i, (section, expected)) in cases.iter().enumerate() {
        let file = dir.join(format!("c{i}.yaml"));
        std::fs::write(&file, format!("upstream:\n  url: http://127.0.0.1:3000\nshared_state:\n{section}")).unwrap();
        let out =
            Command::new(env!("CARGO_BIN_EXE_tokengate")).args(["check", "--config"]).arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{section}: {err}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        assert!(!err.contains("0123456789abcdef"), "the secret is never printed");
    }
}

#[tokio::test]
async fn rediss_with_a_ca_file_shares_limits_and_an_unknown_issuer_falls_back() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = crate::common::temp_dir("redis-tls");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    for (name, pem) in [("ca.pem", ca.pem()), ("cert.pem", leaf.pem()), ("key.pem", key.serialize_pem())] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let port = closed_port().port();
    let file = |n: &str| dir.join(n).display().to_string();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-cert-file", &file("cert.pem"), "--tls-key-file", &file("key.pem")])
        .args(["--tls-ca-cert-file", &file("ca.pem"), "--tls-auth-clients", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server with TLS");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server (TLS) did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = backend::spawn().await;
    let url = format!("rediss://localhost:{port}");
    let trusted = config(&url, &prefix("tls"), "deny", 4)
        .replace("  on_error: deny\n", &format!("  on_error: deny\n  ca_file: {}\n", file("ca.pem")));
    let (a, other) = (replica("ss-tls-a", &b, &trusted).await, replica("ss-tls-b", &b, &trusted).await);
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(mint(if i % 2 == 0 { &a } else { &other }, "tls-user").await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "one limit of 4 over TLS");

    // Without the CA: the system roots do not know it, Redis is never used, `local` applies.
    let untrusted = config(&url, &prefix("tls-unknown"), "local", 4);
    let dir2 = crate::common::temp_dir("ss-tls-untrusted");
    let config_file = dir2.join("tokengate.yaml");
    let (addr, admin) = (closed_port(), closed_port());
    std::fs::write(
        &config_file,
        format!("listen: {addr}\nadmin_listen: {admin}\nupstream:\n  url: {}\n{untrusted}", b.url()),
    )
    .unwrap();
    let session = format!("{}/api/me", b.url());
    let alone = Binary::spawn(&dir2, &config_file, addr, admin, &[], &[("TG_SESSION_URL", session.as_str())]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let text = client::get(alone.admin, "/metrics", &[]).await.unwrap().text();
    assert_eq!(metric(&text, "tokengate_shared_state_up"), 0.0, "an unknown issuer is never trusted");
    assert_eq!(mint(&alone, "tls-user").await.0, 200, "local limits: a fresh count on this replica");
    let _ = server.kill();
    let _ = server.wait();
}

/// Someone with write access to Redis but not the secret saves a user's entry, the user is
/// revoked, and the saved entry is written back: it stays dead (its MAC covers the user's
/// revocation generation). A saved deny written back after its own deadline is dead too, and
/// a value that is not an entry at all is counted as a forgery.
#[tokio::test]
async fn an_entry_written_back_into_redis_after_a_revoke_or_its_deadline_is_dead() {
    let b = backend::spawn().await;
    let p = prefix("replay");
    let yaml = config(&shared_redis(), &p, "local", 100);
    let a = replica("ss-replay-a", &b, &yaml).await;
    let client = redis::Client::open(shared_redis()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let calls = || b.session_calls.load(Ordering::SeqCst);
    let auth_keys = async |conn: &mut redis::aio::MultiplexedConnection| -> Vec<String> {
        redis::cmd("KEYS").arg(format!("{p}auth:*")).query_async(conn).await.unwrap()
    };

    session_token(&a, "session=rhea").await;
    let keys = auth_keys(&mut conn).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let saved: String = redis::cmd("GET").arg(&keys[0]).query_async(&mut conn).await.unwrap();
    revoke(&a, "rhea").await;
    let _: () = redis::cmd("SET").arg(&keys[0]).arg(&saved).arg("PX").arg(60_000).query_async(&mut conn).await.unwrap();
    let b1 = replica("ss-replay-b1", &b, &yaml).await;
    let before = calls();
    assert_eq!(session_token(&b1, "session=rhea").await["sub"], "rhea");
    assert_eq!(calls(), before + 1, "the replayed entry was dead: B asked the session endpoint");

    // A deny (negative_ttl 1s) saved, and written back for a minute once its deadline passed.
    let denied = client::request(a.addr, Method::POST, "/s", &[("cookie", "nosession=1")], Bytes::new()).await.unwrap();
    assert_eq!(denied.status, 401);
    let deny_key = auth_keys(&mut conn).await.into_iter().find(|k| k != &keys[0]).expect("the deny entry");
    let saved: String = redis::cmd("GET").arg(&deny_key).query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _: () =
        redis::cmd("SET").arg(&deny_key).arg(&saved).arg("PX").arg(60_000).query_async(&mut conn).await.unwrap();
    let b2 = replica("ss-replay-b2", &b, &yaml).await;
    let before = calls();
    let r = client::request(b2.addr, Method::POST, "/s", &[("cookie", "nosession=1")], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(calls(), before + 1, "the entry past its deadline was a miss");

    // Not an entry at all: no separator.
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg("{\"identity\":{\"id\":\"mallory\"}}")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let b3 = replica("ss-replay-b3", &b, &yaml).await;
    assert_eq!(session_token(&b3, "session=rhea").await["sub"], "rhea");
    let text = client::get(b3.admin, "/metrics", &[]).await.unwrap().text();
    assert_eq!(metric(&text, "tokengate_shared_state_errors_total{kind=\"bad_mac\"}"), 1.0, "{text}");
}

#[tokio::test]
async fn a_dry_run_limit_in_redis_never_refuses_and_a_reload_enforces_it_with_the_counts_kept() {
    let b = backend::spawn().await;
    let enforced = config(&shared_redis(), &prefix("dry"), "deny", 2);
    let dry = enforced.replace(
        "per_user: { key: user, rate: 2, per: 1m }",
        "per_user: { key: user, rate: 2, per: 1m, dry_run: true }",
    );
    assert_ne!(dry, enforced);
    let replicas = [replica("ss-dry-a", &b, &dry).await, replica("ss-dry-b", &b, &dry).await];
    let mut reported = 0;
    for i in 0..6 {
        let r = client::request(replicas[i % 2].addr, Method::POST, "/t", &[("x-user-id", "dry")], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "a dry run never refuses");
        if let Some(policy) = r.header("ratelimit-policy") {
            assert_eq!(policy, r#""per_user";q=2;w=60"#);
            assert!(r.header("ratelimit").unwrap().starts_with(r#""per_user";r=0;t="#));
            reported += 1;
        }
    }
    assert_eq!(reported, 4, "the two the limit allows carry nothing, the four it would refuse say so");
    let mut would = 0.0;
    for bin in &replicas {
        let text = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
        would += metric(&text, r#"tokengate_ratelimit_decisions_total{limit="per_user",outcome="would_limit"}"#);
    }
    assert_eq!(would, 4.0);
    // dry_run off: enforced at once, from the counts Redis already holds.
    let yaml = std::fs::read_to_string(&replicas[0].config).unwrap().replace(", dry_run: true", "");
    replicas[0].reload_with(&yaml).await;
    let r = client::request(replicas[0].addr, Method::POST, "/t", &[("x-user-id", "dry")], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 429);
}
