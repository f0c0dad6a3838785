//! Keys in an HSM (SPEC §2 `keys[].pkcs11`): Debian's SoftHSM2 as the token, OpenSC's
//! `pkcs11-tool` making the keys inside it (a token directory per test), the real binary
//! signing through the module, and jwt-simple verifying against the served JWK set.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::Value;

use crate::common::{backend, client, temp_dir, Binary};
use crate::seeds::verify_hs256;
use crate::tokens::verify_with_jwk;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Distinctive, so that a log line carrying it would be found.
const PIN: &str = "pin-4861-tokengate";

/// A SoftHSM2 token in its own directory.
struct SoftHsm {
    conf: PathBuf,
    tokens: PathBuf,
}

impl SoftHsm {
    fn new(name: &str) -> Self {
        let dir = temp_dir(name);
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        let text =
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display());
        std::fs::write(&conf, text).unwrap();
        let hsm = Self { conf, tokens };
        let init = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &hsm.conf)
            .args(["--init-token", "--free", "--label", "tokengate", "--pin", PIN, "--so-pin", "00000000"])
            .output()
            .expect("softhsm2-util (Debian package softhsm2)");
        ok(&init, "softhsm2-util --init-token");
        hsm
    }

    /// `pkcs11-tool` logged in to the token.
    fn tool(&self, args: &[&str]) -> Output {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--module", MODULE, "--token-label", "tokengate", "--login", "--pin", PIN])
            .args(args)
            .output()
            .expect("pkcs11-tool (Debian package opensc)");
        ok(&out, &format!("pkcs11-tool {args:?}"));
        out
    }

    /// A key pair generated inside the token (`rsa:2048`, `EC:prime256v1`, `EC:edwards25519`).
    fn key_pair(&self, label: &str, key_type: &str, id: &str) {
        self.tool(&["--keypairgen", "--key-type", key_type, "--label", label, "--id", id, "--usage-sign"]);
    }

    /// An HMAC secret generated inside the token, extractable so that the test can verify.
    fn secret(&self, label: &str, id: &str) -> Vec<u8> {
        let args =
            ["--keygen", "--key-type", "GENERIC:32", "--label", label, "--id", id, "--extractable", "--usage-sign"];
        self.tool(&args);
        let out = self.conf.with_file_name(format!("{label}.bin"));
        self.tool(&["--read-object", "--type", "secrkey", "--id", id, "--output-file", out.to_str().unwrap()]);
        std::fs::read(out).unwrap()
    }

    fn env(&self) -> Vec<(&'static str, &str)> {
        vec![("SOFTHSM2_CONF", self.conf.to_str().unwrap())]
    }

    /// One `keys:` entry signing with `label` in this token.
    fn key(id: &str, algorithm: &str, label: &str, extra: &str) -> String {
        format!(
            "  - {{ id: {id}, algorithm: {algorithm}, pkcs11: {{ module: {MODULE}, token_label: tokengate, key_label: {label}, pin: {PIN}{extra} }} }}\n"
        )
    }
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A route minting one token per key in `keys`, named after the key.
fn route(keys: &[&str], cache: bool) -> String {
    let tokens: Vec<String> =
        keys.iter().map(|k| format!("{k}: {{ key: {k}, ttl: 1h, claims: {{ sub: '{{{{ user.id }}}}' }} }}")).collect();
    let body: Vec<String> = keys.iter().map(|k| format!("{k}: '{{{{ tokens.{k} }}}}'")).collect();
    format!(
        "auth_hooks:\n  anyone: {{ type: none, identity: {{ id: header:x-user-id }} }}\nroutes:\n  - name: r\n    path: /t\n    auth: anyone\n    cache_tokens: {cache}\n    tokens: {{ {} }}\n    response: {{ body: {{ {} }} }}\n",
        tokens.join(", "),
        body.join(", ")
    )
}

async fn mint(bin: &Binary, user: &str) -> client::Resp {
    client::request(bin.addr, Method::POST, "/t", &[("x-user-id", user)], Bytes::new()).await.unwrap()
}

async fn jwks(bin: &Binary) -> Value {
    client::get(bin.admin, "/.well-known/jwks.json", &[]).await.unwrap().json()
}

#[tokio::test]
async fn every_algorithm_signs_inside_softhsm_and_verifies_against_the_served_jwk_set() {
    let hsm = SoftHsm::new("hsm-algs");
    hsm.key_pair("es256", "EC:prime256v1", "01");
    hsm.key_pair("es384", "EC:secp384r1", "02");
    hsm.key_pair("rsa", "rsa:2048", "03");
    hsm.key_pair("ed", "EC:edwards25519", "04");
    let secret = hsm.secret("hmac", "05");
    let mut keys = String::from("keys:\n");
    for (id, alg, label) in [
        ("k-es256", "ES256", "es256"),
        ("k-es384", "ES384", "es384"),
        ("k-rs256", "RS256", "rsa"),
        ("k-ps256", "PS256", "rsa"),
        ("k-eddsa", "EdDSA", "ed"),
        ("k-hs256", "HS256", "hmac"),
    ] {
        keys.push_str(&SoftHsm::key(id, alg, label, ""));
    }
    let ids = ["k-es256", "k-es384", "k-rs256", "k-ps256", "k-eddsa", "k-hs256"];
    let b = backend::spawn().await;
    let extra = format!("{keys}{}", route(&ids, false));
    let bin = Binary::start_with("hsm-algs", &b.url(), &extra, &[], &hsm.env()).await;

    let r = mint(&bin, "u-1").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), bin.logs());
    let set = jwks(&bin).await;
    let published: Vec<&str> = set["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(published, ["k-es256", "k-es384", "k-rs256", "k-ps256", "k-eddsa"], "the HMAC key is not published");
    let body = r.json();
    for id in &ids[..5] {
        let token = body[id].as_str().unwrap();
        let claims = verify_with_jwk(token, &set);
        assert_eq!(claims.subject.as_deref(), Some("u-1"), "{id}");
    }
    let claims = verify_hs256(body["k-hs256"].as_str().unwrap(), &secret);
    assert_eq!(claims.subject.as_deref(), Some("u-1"));

    // Signed in the token by the signer threads: the module's time is in the histogram.
    let metrics = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    for id in ids {
        let count = format!("tokengate_signer_duration_seconds_count{{key=\"{id}\"}} 1");
        assert!(metrics.lines().any(|l| l == count), "no {count} in\n{metrics}");
    }
    assert!(metrics.lines().any(|l| l == "tokengate_signer_queue_depth{key=\"k-es256\"} 0"), "{metrics}");
    assert!(!bin.logs().contains(PIN), "the PIN is in the logs");
}

/// `tokengate check` with one HSM key: its exit status and stderr.
fn check(hsm: &SoftHsm, key: &str) -> (bool, String) {
    let dir = temp_dir("hsm-check");
    let file = dir.join("tokengate.yaml");
    let yaml = format!("upstream: {{ url: 'http://127.0.0.1:1' }}\nkeys:\n{key}{}", route(&["k"], false));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["check", "--config"])
        .arg(&file)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_logs_in_and_finds_the_key_naming_the_field_at_fault_and_never_the_pin() {
    let hsm = SoftHsm::new("hsm-check");
    hsm.key_pair("es", "EC:prime256v1", "01");
    let (good, out) = check(&hsm, &SoftHsm::key("k", "ES256", "es", ""));
    assert!(good, "{out}");

    let wrong_pin = SoftHsm::key("k", "ES256", "es", "").replace(PIN, "wrong-pin-1234");
    let (good, out) = check(&hsm, &wrong_pin);
    assert!(!good);
    assert!(out.contains("keys[0].pkcs11.pin") && out.contains("refused the PIN"), "{out}");
    assert!(!out.contains("wrong-pin-1234"), "the PIN is in the error: {out}");

    let (good, out) = check(&hsm, &SoftHsm::key("k", "ES256", "nope", ""));
    assert!(!good);
    assert!(out.contains("keys[0].pkcs11.key_label") && out.contains("no private key labelled \"nope\""), "{out}");

    let (good, out) =
        check(&hsm, &SoftHsm::key("k", "ES256", "es", "").replace("token_label: tokengate", "token_label: other"));
    assert!(!good);
    assert!(out.contains("keys[0].pkcs11.token_label") && out.contains("no token labelled \"other\""), "{out}");

    let (good, out) = check(&hsm, &SoftHsm::key("k", "RS256", "es", ""));
    assert!(!good);
    assert!(out.contains("keys[0].pkcs11.key_label") && out.contains("cannot sign RS256"), "{out}");

    let (good, out) = check(&hsm, &SoftHsm::key("k", "ES384", "es", ""));
    assert!(!good);
    assert!(out.contains("keys[0].pkcs11.key_label") && out.contains("on a curve ES384 does not use"), "{out}");

    let missing_module = SoftHsm::key("k", "ES256", "es", "").replace(MODULE, "/nonexistent/libpkcs11.so");
    let (good, out) = check(&hsm, &missing_module);
    assert!(!good);
    assert!(out.contains("keys[0].pkcs11.module") && out.contains("cannot load /nonexistent/libpkcs11.so"), "{out}");
    assert!(!out.contains(PIN), "the PIN is in an error: {out}");
}

/// Polls `what` until it holds, for up to 20 s.
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !probe().await {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_token_going_away_gives_503s_and_readyz_says_so_until_it_comes_back() {
    let hsm = SoftHsm::new("hsm-gone");
    hsm.key_pair("es", "EC:prime256v1", "01");
    let b = backend::spawn().await;
    let extra = format!("keys:\n{}{}", SoftHsm::key("k", "ES256", "es", ""), route(&["k"], false));
    let bin = Binary::start_with("hsm-gone", &b.url(), &extra, &[], &hsm.env()).await;
    assert_eq!(mint(&bin, "u").await.status, 200);

    let away = hsm.tokens.with_extension("away");
    std::fs::rename(&hsm.tokens, &away).unwrap();
    // The idle signers notice by themselves, before any request needs them.
    eventually("readyz 503", || async { client::get(bin.admin, "/readyz", &[]).await.unwrap().status == 503 }).await;
    let r = mint(&bin, "u").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "signer_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    let why = client::get(bin.admin, "/readyz", &[]).await.unwrap().text();
    assert!(why.contains("signer unavailable: key k"), "{why}");
    let forwarded = client::get(bin.addr, "/anything", &[]).await.unwrap();
    assert_eq!(forwarded.status, 200, "forwarded traffic does not need the HSM");

    std::fs::rename(&away, &hsm.tokens).unwrap();
    eventually("readyz 200 again", || async { client::get(bin.admin, "/readyz", &[]).await.unwrap().status == 200 })
        .await;
    let r = mint(&bin, "u").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), bin.logs());
    verify_with_jwk(r.json()["k"].as_str().unwrap(), &jwks(&bin).await);
    let metrics = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tokengate_signer_unavailable_total{key=\"k\",reason=\"token\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(refused >= Some(1), "{metrics}");
}

#[tokio::test]
async fn a_full_queue_or_a_passed_deadline_is_a_503_not_a_wait() {
    let hsm = SoftHsm::new("hsm-queue");
    hsm.key_pair("rsa", "rsa:2048", "01");
    let b = backend::spawn().await;
    let key = SoftHsm::key("k", "RS256", "rsa", ", sessions: 1, queue: 1, timeout: 5ms");
    let extra = format!("keys:\n{key}{}", route(&["k"], false));
    let bin = Binary::start_with("hsm-queue", &b.url(), &extra, &[], &hsm.env()).await;
    let answers = futures_util::future::join_all((0..40).map(|i| {
        let addr = bin.addr;
        async move {
            let user = format!("u-{i}");
            client::request(addr, Method::POST, "/t", &[("x-user-id", user.as_str())], Bytes::new()).await.unwrap()
        }
    }))
    .await;
    let refused: Vec<_> = answers.iter().filter(|r| r.status == 503).collect();
    assert!(!refused.is_empty(), "40 RSA signatures at once through 1 session and a queue of 1 all fit");
    for r in &refused {
        assert_eq!(r.json()["error"], "signer_unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert!(answers.iter().all(|r| r.status == 200 || r.status == 503));
    let metrics = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    let count = |reason: &str| {
        let prefix = format!("tokengate_signer_unavailable_total{{key=\"k\",reason=\"{reason}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok()).unwrap_or(0)
    };
    assert_eq!(count("queue_full") + count("timeout"), refused.len() as u64, "{metrics}");
}

#[tokio::test]
async fn five_hundred_concurrent_mints_while_forwarded_traffic_keeps_flowing() {
    let hsm = SoftHsm::new("hsm-load");
    hsm.key_pair("es", "EC:prime256v1", "01");
    let b = backend::spawn().await;
    let extra = format!("keys:\n{}{}", SoftHsm::key("k", "ES256", "es", ""), route(&["k"], false));
    let bin = Binary::start_with("hsm-load", &b.url(), &extra, &[], &hsm.env()).await;
    let addr = bin.addr;
    let forwarded = tokio::spawn(async move {
        let mut took = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            let r = client::get(addr, "/ping", &[]).await.unwrap();
            assert_eq!(r.status, 200);
            took.push(started.elapsed());
        }
        took
    });
    let mints = futures_util::future::join_all((0..500).map(|i| async move {
        let user = format!("u-{i}");
        client::request(addr, Method::POST, "/t", &[("x-user-id", user.as_str())], Bytes::new()).await.unwrap()
    }))
    .await;
    let mut took = forwarded.await.unwrap();
    let set = jwks(&bin).await;
    for (i, r) in mints.iter().enumerate() {
        assert_eq!(r.status, 200, "mint {i}: {}", r.text());
        let claims = verify_with_jwk(r.json()["k"].as_str().unwrap(), &set);
        assert_eq!(claims.subject, Some(format!("u-{i}")));
    }
    took.sort();
    // Figures for the reader; the benchmark (benches/hsm.py) compares them with a file key.
    println!("forwarded during 500 HSM mints: p50 {:?}, p99 {:?}", took[took.len() / 2], took[took.len() * 99 / 100]);
}

#[tokio::test]
async fn rotation_is_a_new_label_and_the_old_key_retired_by_reload() {
    let hsm = SoftHsm::new("hsm-rotate");
    hsm.key_pair("es-1", "EC:prime256v1", "01");
    hsm.key_pair("es-2", "EC:prime256v1", "02");
    let b = backend::spawn().await;
    let one = SoftHsm::key("k1", "ES256", "es-1", "");
    let bin =
        Binary::start_with("hsm-rotate", &b.url(), &format!("keys:\n{one}{}", route(&["k1"], true)), &[], &hsm.env())
            .await;
    let old = mint(&bin, "u").await.json()["k1"].as_str().unwrap().to_owned();

    let retired = one.replacen("algorithm: ES256,", "algorithm: ES256, retired: true,", 1);
    let two = SoftHsm::key("k2", "ES256", "es-2", "");
    bin.reload_with(&bin.yaml(&b.url(), &format!("keys:\n{retired}{two}{}", route(&["k2"], true)))).await;
    let r = mint(&bin, "u").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), bin.logs());
    let new = r.json()["k2"].as_str().unwrap().to_owned();
    let set = jwks(&bin).await;
    let kids: Vec<&str> = set["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["k1", "k2"], "the retired key stays published");
    verify_with_jwk(&old, &set);
    verify_with_jwk(&new, &set);
    assert_eq!(client::get(bin.admin, "/readyz", &[]).await.unwrap().status, 200);
}
