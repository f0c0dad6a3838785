//! The ledger on the real PostgreSQL server (`TOKENGATE_TEST_POSTGRES_URL`, feature
//! `services`), each test in a schema of its own: records and users, two replicas migrating
//! and writing one database at once, SIGTERM and SIGKILL, an unreachable server.

use std::time::Duration;

use serde_json::json;
use tokio_postgres::NoTls;

use crate::common::{backend, closed_port, Binary};
use crate::ledger::{admin, admin_until, mint, orders_config, sha256_hex};
use crate::seeds::parts;

/// A schema of this test's own, dropped at the end.
struct Schema {
    name: String,
    url: String,
    client: tokio_postgres::Client,
}

impl Schema {
    async fn new(tag: &str) -> Schema {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let base = crate::common::test_postgres_url();
        let (client, connection) = tokio_postgres::connect(&base, NoTls).await.expect("connect to PostgreSQL");
        tokio::spawn(connection);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("tg_{tag}_{}_{n}", std::process::id());
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{name}");
        Schema { name, url, client }
    }

    fn ledger(&self, more: &str) -> String {
        format!("  type: postgres\n  url: \"{}\"\n{more}", self.url)
    }

    async fn count(&self, sql_where: &str, param: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {}.tokens t WHERE {sql_where}", self.name);
        self.client.query_one(&sql, &[&param]).await.unwrap().get(0)
    }

    async fn drop(self) {
        self.client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name)).await.unwrap();
    }
}

fn jti(token: &str) -> String {
    parts(token).1["jti"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn records_users_and_lookups_on_postgres_without_the_token_text() {
    let schema = Schema::new("records").await;
    let b = backend::spawn().await;
    // The URL (a secret: it holds the password) from a file, as Kubernetes mounts it.
    let secrets = crate::common::temp_dir("pg-records-secret");
    std::fs::write(secrets.join("ledger-url"), format!("{}\n", schema.url)).unwrap();
    let ledger = format!("  type: postgres\n  url_file: {}\n", secrets.join("ledger-url").display());
    let bin = Binary::start("pg-records", &b.url(), &orders_config(&ledger), &[]).await;
    let ann = mint(&bin, "ann", "p-1").await;
    mint(&bin, "bob", "p-2").await;
    mint(&bin, "ann", "p-3").await;
    let page = admin_until(&bin, "/admin/tokens?user=ann", |v| v["tokens"].as_array().unwrap().len() == 2).await;
    assert_eq!(page["tokens"][1]["claims"], json!({"order": "p-1"}), "newest first");
    let (status, one) = admin(&bin, &format!("/admin/tokens/{}", jti(&ann))).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["sha256"], sha256_hex(&ann));
    assert_eq!(one["exp"], parts(&ann).1["exp"]);
    assert!(one.get("token").is_none());
    let (_, by_order) = admin(&bin, "/admin/tokens?order=p-2").await;
    assert_eq!(by_order["tokens"][0]["user"], "bob");
    let user = admin_until(&bin, "/admin/users/ann", |u| u["tokens_issued"] == 2).await;
    assert_eq!(user["name"], "Name");
    let users: i64 =
        schema.client.query_one(&format!("SELECT COUNT(*) FROM {}.users", schema.name), &[]).await.unwrap().get(0);
    assert_eq!(users, 2, "one row per user");
    let signature = ann.rsplit('.').next().unwrap();
    assert_eq!(schema.count("t::text LIKE '%' || $1 || '%'", signature).await, 0, "no token text in any column");
    let version: i32 = schema
        .client
        .query_one(&format!("SELECT MAX(version) FROM {}.tokengate_migrations", schema.name), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1);
    drop(bin);
    schema.drop().await;
}

#[tokio::test]
async fn two_replicas_migrate_and_write_one_database_at_once() {
    let schema = Schema::new("replicas").await;
    let b = backend::spawn().await;
    let (yaml, upstream) = (orders_config(&schema.ledger("")), b.url());
    let (one, two) = tokio::join!(
        Binary::start("pg-rep-1", &upstream, &yaml, &[]),
        Binary::start("pg-rep-2", &upstream, &yaml, &[])
    );
    let mut minted = Vec::new();
    for i in 0..10 {
        let bin = if i % 2 == 0 { &one } else { &two };
        minted.push(mint(bin, "cy", &format!("r-{i}")).await);
    }
    let all = admin_until(&one, "/admin/tokens?user=cy", |v| v["tokens"].as_array().unwrap().len() == 10).await;
    assert_eq!(all["tokens"].as_array().unwrap().len(), 10);
    let user = admin_until(&two, "/admin/users/cy", |u| u["tokens_issued"] == 10).await;
    assert_eq!(user["id"], "cy", "both replicas' counts in one row");
    drop((one, two));
    schema.drop().await;
}

#[tokio::test]
async fn postgres_commit_durability_survives_sigkill_and_the_queue_survives_sigterm() {
    let schema = Schema::new("durable").await;
    let b = backend::spawn().await;
    let commit = orders_config(&schema.ledger("  durability: commit\n"));
    let mut bin = Binary::start("pg-commit", &b.url(), &commit, &[]).await;
    let mut jtis = Vec::new();
    for i in 0..15 {
        jtis.push(jti(&mint(&bin, "dee", &format!("c-{i}")).await));
    }
    bin.child.kill().unwrap();
    bin.child.wait().unwrap();
    for j in &jtis {
        assert_eq!(schema.count("jti = $1", j).await, 1, "answered token {j} is committed");
    }

    let mut bin = Binary::start("pg-queued", &b.url(), &orders_config(&schema.ledger("")), &[]).await;
    let mut queued = Vec::new();
    for i in 0..30 {
        queued.push(jti(&mint(&bin, "eve", &format!("q-{i}")).await));
    }
    bin.signal("TERM");
    let status = tokio::task::spawn_blocking(move || bin.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    for j in &queued {
        assert_eq!(schema.count("jti = $1", j).await, 1, "queued before SIGTERM: {j}");
    }
    schema.drop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_reported_by_readyz_and_tokens_wait_in_the_queue() {
    let url = format!("postgres://postgres@{}/test?connect_timeout=1", closed_port());
    let bin =
        start_until_readyz("pg-down", &format!("  type: postgres\n  url: \"{url}\"\n  queue_size: 2\n"), 503).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(crate::ledger::order(&bin, "zed", &format!("d-{i}")).await.0);
    }
    assert_eq!(statuses, [200, 200, 503, 503], "two wait in the queue, then 503");
    assert!(!bin.logs().contains("postgres://"), "the URL (and its password) is never logged");
}

/// Starts tokengate on `ledger` without waiting for readiness; returns once the admin port
/// answers /readyz with `want` and, for 503, the ledger was reported down (10 s at most).
async fn start_until_readyz(name: &str, ledger: &str, want: u16) -> Binary {
    let dir = crate::common::temp_dir(name);
    let config = dir.join("tokengate.yaml");
    let (addr, admin_addr) = (closed_port(), closed_port());
    let yaml = orders_config(ledger);
    // Token routes never reach the upstream.
    let upstream = closed_port();
    std::fs::write(
        &config,
        format!("listen: {addr}\nadmin_listen: {admin_addr}\nupstream:\n  url: http://{upstream}\n{yaml}"),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let bin = Binary { child, addr, admin: admin_addr, stderr: dir.join("stderr.log"), config, dir };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(bin.admin).await.is_ok() {
            let r = crate::common::client::get(bin.admin, "/readyz", &[]).await.unwrap();
            if r.status == want && (want == 200 || bin.logs().contains("ledger unavailable")) {
                return bin;
            }
        }
        assert!(std::time::Instant::now() < deadline, "readyz never {want}; logs:\n{}", bin.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sslmode_verify_full_checks_the_server_certificate_and_its_name() {
    let schema = Schema::new("tls").await;
    let ssl: String = schema.client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let verify = format!("{}&sslmode=verify-full", schema.url);
    if ssl != "on" {
        // A server without TLS cannot satisfy verify-full: tokengate must refuse plain text.
        let bin = start_until_readyz("pg-tls-off", &format!("  type: postgres\n  url: \"{verify}\"\n"), 503).await;
        assert!(bin.logs().contains("ledger unavailable"));
        return schema.drop().await;
    }
    let cert_file: String = schema.client.query_one("SHOW ssl_cert_file", &[]).await.unwrap().get(0);
    let cert = std::fs::read(&cert_file).expect("the server's certificate is readable");
    let dir = crate::common::temp_dir("pg-tls-ca");
    let ca = dir.join("server.pem");
    std::fs::write(&ca, cert).unwrap();

    // Unknown issuer: the system roots do not vouch for the server's certificate.
    let unverified =
        start_until_readyz("pg-tls-unknown", &format!("  type: postgres\n  url: \"{verify}\"\n"), 503).await;
    assert!(unverified.logs().contains("invalid peer certificate"), "{}", unverified.logs());
    drop(unverified);
    // Trusted, and the name the certificate is for.
    let names = openssl_names(&ca);
    let by_name = verify.replacen("127.0.0.1", names.first().map_or("localhost", String::as_str), 1);
    let ledger = format!("  type: postgres\n  url: \"{by_name}\"\n  ca_file: {}\n", ca.display());
    let trusted = start_until_readyz("pg-tls-trusted", &ledger, 200).await;
    mint(&trusted, "tls", "t-1").await;
    admin_until(&trusted, "/admin/tokens?user=tls", |v| v["tokens"].as_array().unwrap().len() == 1).await;
    drop(trusted);
    schema.drop().await;
}

/// The DNS names of a PEM certificate (through openssl, which the machine has).
fn openssl_names(pem: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(pem)
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter_map(|part| part.strip_prefix("DNS:").map(str::to_owned))
        .collect()
}
