//! The ledger (SPEC §6) on real SQLite files: records found through the admin API, the token
//! text kept out of the files, users upserted, the queue drained on SIGTERM, commits that
//! survive SIGKILL, a locked database that fills the queue (503) and turns /readyz down, then
//! recovers losing nothing, retention, and `check`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use sha2::Digest;

use crate::common::{backend, client, Binary};
use crate::seeds::parts;

/// A route that records the `order` claim; the caller is named by headers.
pub fn orders_config(ledger: &str) -> String {
    format!(
        r#"keys:
  - {{ id: k1, algorithm: HS256, secret: ledger-test-secret }}
auth_hooks:
  hdr:
    type: none
    identity: {{ id: header:x-user-id, name: header:x-user-name }}
ledger:
{ledger}
routes:
  - name: orders
    path: /t
    methods: [POST]
    auth: hdr
    ledger: {{ record: [order] }}
    tokens:
      token:
        key: k1
        ttl: 1h
        claims: {{ sub: "{{{{ user.id }}}}", jti: "{{{{ uuid }}}}", order: "{{{{ body.order }}}}" }}
    response:
      body: {{ token: "{{{{ tokens.token }}}}" }}
"#
    )
}

/// POSTs to the orders route; the answer's status and JSON body.
pub async fn order(bin: &Binary, user: &str, order: &str) -> (u16, Value) {
    let headers = [("x-user-id", user), ("x-user-name", "Name"), ("content-type", "application/json")];
    let body = Bytes::from(json!({ "order": order }).to_string());
    let r = client::request(bin.addr, Method::POST, "/t", &headers, body).await.unwrap();
    (r.status.as_u16(), r.json())
}

/// Mints one token on the orders route, which must answer 200.
pub async fn mint(bin: &Binary, user: &str, order_id: &str) -> String {
    let (status, body) = order(bin, user, order_id).await;
    assert_eq!(status, 200, "{body}; logs:\n{}", bin.logs());
    body["token"].as_str().unwrap().to_owned()
}

pub async fn admin(bin: &Binary, path: &str) -> (u16, Value) {
    let r = client::get(bin.admin, path, &[]).await.unwrap();
    let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status.as_u16(), body)
}

/// Polls `GET path` until `done` holds of its JSON (15 s at most).
pub async fn admin_until(bin: &Binary, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = admin(bin, path).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: {status} {body}; logs:\n{}", bin.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn jti(token: &str) -> String {
    parts(token).1["jti"].as_str().unwrap().to_owned()
}

/// Every byte of the SQLite database, journal included.
fn db_bytes(db: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        all.extend(std::fs::read(format!("{}{suffix}", db.display())).unwrap_or_default());
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn sqlite_ledger(db: &Path, more: &str) -> String {
    format!("  type: sqlite\n  path: {}\n{more}", db.display())
}

async fn start_orders(name: &str, db: &Path, more: &str) -> (Binary, backend::Backend) {
    let b = backend::spawn().await;
    let bin = Binary::start(name, &b.url(), &orders_config(&sqlite_ledger(db, more)), &[]).await;
    (bin, b)
}

fn db_in(name: &str) -> PathBuf {
    crate::common::temp_dir(name).join("ledger.db")
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(-1.0)
}

#[tokio::test]
async fn telesign_tokens_are_found_by_xid_and_phone_with_their_hash_and_never_their_text() {
    let b = backend::spawn().await;
    let key_b64 = "dGVsZXNpZ24gc2VjcmV0IGtleQ==";
    let envs = [("TELESIGN_CUSTOMER_ID", "CUST-42"), ("TELESIGN_KEY", key_b64)];
    let bin = Binary::start_file("ledger-telesign", "config/telesign.yaml", &b.url(), &envs).await;
    let get = |path: &'static str| async move { client::get(bin.addr, path, &[]).await.unwrap() };
    let first = get("/v1/token/15555550001/xid-aaa").await;
    assert_eq!(first.status, 200, "{}", bin.logs());
    let first = first.text();
    // `durability: commit`: the record is readable the moment the token is answered.
    let (status, found) = admin(&bin, "/admin/tokens?xid=xid-aaa").await;
    assert_eq!(status, 200, "{found}");
    let records = found["tokens"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{found}");
    let (_, payload) = parts(&first);
    let r = &records[0];
    assert_eq!(r["route"], "telesign-xid");
    assert_eq!(r["token_name"], "token");
    assert_eq!(r["kid"], "telesign");
    assert_eq!(r["claims"], json!({"xid": "xid-aaa", "phn": "15555550001"}));
    assert_eq!(r["iat"], payload["iat"]);
    assert_eq!(r["exp"], payload["exp"]);
    assert_eq!(r["sha256"], sha256_hex(&first));
    assert_eq!(r["user"], Value::Null, "the tutorial's service has no user");
    assert!(r.get("token").is_none(), "no token text without store_token: {r}");
    assert_eq!(found["next_cursor"], Value::Null);

    for path in ["/v1/token/15555550002/xid-bbb", "/v1/token/15555550001"] {
        tokio::time::sleep(Duration::from_millis(1100)).await; // the tutorial's 1 per second
        let r = get(path).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (_, by_phone) = admin(&bin, "/admin/tokens?phn=15555550001").await;
    let by_phone = by_phone["tokens"].as_array().unwrap().clone();
    assert_eq!(by_phone.len(), 2, "{by_phone:?}");
    assert_eq!(by_phone[1]["claims"]["xid"], "xid-aaa", "newest first");
    assert!(uuid::Uuid::parse_str(by_phone[0]["claims"]["xid"].as_str().unwrap()).is_ok(), "the generated xid");
    let (_, by_hash) = admin(&bin, &format!("/admin/tokens?sha256={}", sha256_hex(&first).to_uppercase())).await;
    assert_eq!(by_hash["tokens"][0]["claims"]["xid"], "xid-aaa", "which record a token someone holds is");
    let (_, other) = admin(&bin, "/admin/tokens?xid=xid-bbb&phn=15555550002").await;
    assert_eq!(other["tokens"].as_array().unwrap().len(), 1);
    let (_, none) = admin(&bin, "/admin/tokens?xid=xid-bbb&phn=15555550001").await;
    assert_eq!(none["tokens"], json!([]), "filters combine");
    let (status, unknown) = admin(&bin, "/admin/tokens?email=x").await;
    assert_eq!(status, 400);
    assert!(unknown["message"].as_str().unwrap().contains("phn, xid"), "{unknown}");

    let db = bin.dir.join("ledger.db");
    let bytes = db_bytes(&db);
    assert!(contains(&bytes, "xid-aaa"), "the records are in {}", db.display());
    let signature = first.rsplit('.').next().unwrap();
    assert!(!contains(&bytes, signature), "the token text is nowhere in the database files");

    // Phone numbers: the files are the owner's alone, whatever the umask (here 022's files are
    // made 0644, as the probe shows).
    use std::os::unix::fs::PermissionsExt;
    let probe = bin.dir.join("umask-probe");
    std::fs::write(&probe, b"").unwrap();
    let default_mode = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", db.display());
        let mode = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{file}: {e}")).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} is {mode:o} (files made by default here are {default_mode:o})");
    }
}

#[tokio::test]
async fn store_token_keeps_the_text_jti_lookups_paging_and_filters() {
    let db = db_in("ledger-store");
    let (bin, _b) = start_orders("ledger-store", &db, "  store_token: true\n").await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        let user = if i % 2 == 0 { "ann" } else { "bob" };
        tokens.push(mint(&bin, user, &format!("o-{i}")).await);
    }
    admin_until(&bin, "/admin/tokens?route=orders", |v| v["tokens"].as_array().unwrap().len() == 5).await;

    let (status, one) = admin(&bin, &format!("/admin/tokens/{}", jti(&tokens[3]))).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["token"], tokens[3].as_str(), "store_token keeps the text");
    assert_eq!(one["user"], "bob");
    assert_eq!(one["claims"], json!({"order": "o-3"}));
    assert_eq!(one["jti"], jti(&tokens[3]).as_str());
    let (status, missing) = admin(&bin, "/admin/tokens/no-such-jti").await;
    assert_eq!((status, missing["error"].as_str()), (404, Some("not_found")));
    assert!(contains(&db_bytes(&db), tokens[3].rsplit('.').next().unwrap()), "the text is in the file");

    // Newest first, two per page, the cursor to the next.
    let mut seen = Vec::new();
    let mut path = "/admin/tokens?limit=2".to_owned();
    loop {
        let (_, page) = admin(&bin, &path).await;
        let records = page["tokens"].as_array().unwrap();
        assert!(records.len() <= 2);
        seen.extend(records.iter().map(|r| r["claims"]["order"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/admin/tokens?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["o-4", "o-3", "o-2", "o-1", "o-0"]);
    let (_, ann) = admin(&bin, "/admin/tokens?user=ann").await;
    let orders: Vec<&str> =
        ann["tokens"].as_array().unwrap().iter().map(|r| r["claims"]["order"].as_str().unwrap()).collect();
    assert_eq!(orders, ["o-4", "o-2", "o-0"]);
    let (_, by_order) = admin(&bin, "/admin/tokens?order=o-1&user=bob").await;
    assert_eq!(by_order["tokens"].as_array().unwrap().len(), 1);
    let (_, wrong_route) = admin(&bin, "/admin/tokens?route=other").await;
    assert_eq!(wrong_route["tokens"], json!([]));
    let (status, _) = admin(&bin, "/admin/tokens?limit=0").await;
    assert_eq!(status, 400);
    let metrics = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    assert_eq!(metric(&metrics, "tokengate_ledger_writes_total"), 5.0, "{metrics}");
}

#[tokio::test]
async fn users_are_upserted_by_id_never_duplicated() {
    let b = backend::spawn().await;
    let envs = [("CHATSDK_API_KEY", "chat-api-key"), ("CHATSDK_JWT_SECRET", "chat-secret")];
    let bin = Binary::start_file("ledger-chatsdk", "config/chatsdk.yaml", &b.url(), &envs).await;
    let post = |body: Value| async move {
        let headers = [("x-api-key", "chat-api-key"), ("content-type", "application/json")];
        let r =
            client::request(bin.addr, Method::POST, "/tokens", &headers, Bytes::from(body.to_string())).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    };
    post(json!({"userId": "u-1", "name": "Ann", "image": "https://img/1", "custom": {"plan": "free"}})).await;
    let first = admin_until(&bin, "/admin/users/u-1", |u| u["tokens_issued"] == 2).await;
    assert_eq!(first["name"], "Ann");
    tokio::time::sleep(Duration::from_millis(1100)).await; // last_seen has a second's resolution
    post(json!({"userId": "u-1", "name": "Anna", "custom": {"plan": "pro"}})).await;
    let user = admin_until(&bin, "/admin/users/u-1", |u| u["tokens_issued"] == 4).await;
    assert_eq!(user["name"], "Anna", "the same id updates the name");
    assert_eq!(user["image"], "https://img/1", "a field left out keeps its value");
    assert_eq!(user["custom"], json!({"plan": "pro"}));
    assert_eq!(user["first_seen"], first["first_seen"]);
    assert!(user["last_seen"].as_i64() > first["last_seen"].as_i64(), "{first} {user}");
    let (status, _) = admin(&bin, "/admin/users/u-2").await;
    assert_eq!(status, 404);

    let conn = rusqlite::Connection::open(bin.dir.join("ledger.db")).unwrap();
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM users WHERE id = 'u-1'", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 1, "one row per user id");
    let tokens: i64 = conn.query_row("SELECT COUNT(*) FROM tokens WHERE user_id = 'u-1'", [], |r| r.get(0)).unwrap();
    assert_eq!(tokens, 4, "both tokens of both answers");
}

/// Holds SQLite's write lock on `db` until dropped.
fn lock(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

#[tokio::test]
async fn sigterm_waits_for_the_queue_and_a_restart_finds_every_record() {
    let db = db_in("ledger-sigterm");
    let (mut bin, b) = start_orders("ledger-sigterm", &db, "").await;
    // The database is held by someone else while tokens are answered: they wait in the queue.
    let held = lock(&db);
    let mut jtis = Vec::new();
    for i in 0..20 {
        jtis.push(jti(&mint(&bin, "carol", &format!("s-{i}")).await));
    }
    bin.signal("TERM");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(bin.is_running(), "still waiting for the database to take the queue");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    while bin.is_running() {
        assert!(Instant::now() < deadline, "did not exit; logs:\n{}", bin.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bin.logs().contains("every queued record is committed"), "{}", bin.logs());

    let again = Binary::start("ledger-sigterm-2", &b.url(), &orders_config(&sqlite_ledger(&db, "")), &[]).await;
    let (_, all) = admin(&again, "/admin/tokens?user=carol&limit=100").await;
    assert_eq!(all["tokens"].as_array().unwrap().len(), 20, "{all}");
    for j in &jtis {
        assert_eq!(admin(&again, &format!("/admin/tokens/{j}")).await.0, 200);
    }
}

#[tokio::test]
async fn with_commit_durability_an_answered_token_is_recorded_even_after_sigkill() {
    let db = db_in("ledger-commit");
    let (mut bin, _b) = start_orders("ledger-commit", &db, "  durability: commit\n").await;
    let mut jtis = Vec::new();
    for i in 0..25 {
        let token = mint(&bin, "dave", &format!("k-{i}")).await;
        if i % 5 == 0 {
            let (status, _) = admin(&bin, &format!("/admin/tokens/{}", jti(&token))).await;
            assert_eq!(status, 200, "readable the moment it is answered");
        }
        jtis.push(jti(&token));
    }
    bin.child.kill().unwrap(); // SIGKILL: no drain, no goodbye
    bin.child.wait().unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    for j in &jtis {
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM tokens WHERE jti = ?1", [j], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "answered token {j} is recorded");
    }
    let claims: i64 =
        conn.query_row("SELECT COUNT(*) FROM token_claims WHERE name = 'order'", [], |r| r.get(0)).unwrap();
    assert_eq!(claims, 25);
}

#[tokio::test]
async fn a_database_that_stays_locked_fills_the_queue_turns_readyz_down_and_loses_nothing() {
    let db = db_in("ledger-locked");
    let (bin, _b) = start_orders("ledger-locked", &db, "  queue_size: 3\n").await;
    mint(&bin, "erin", "before").await;
    admin_until(&bin, "/admin/tokens?user=erin", |v| v["tokens"].as_array().unwrap().len() == 1).await;
    let held = lock(&db);
    let (mut answered, mut refused) = (1, 0);
    for i in 0..12 {
        let (status, body) = order(&bin, "erin", &format!("l-{i}")).await;
        match status {
            200 => answered += 1,
            503 => {
                assert_eq!(body["error"], "ledger_unavailable", "{body}");
                refused += 1;
            }
            other => panic!("{other} {body}"),
        }
    }
    assert!(refused > 0 && answered <= 1 + 3 + 512, "a full queue refuses: {answered} answered, {refused} refused");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client::get(bin.admin, "/readyz", &[]).await.unwrap();
        if r.status == 503 {
            assert_eq!(r.text(), "ledger unavailable\n");
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed {}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = bin.logs();
    assert_eq!(logs.matches("ledger unavailable").count(), 1, "logged once per change, not per attempt:\n{logs}");
    let metrics = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metric(&metrics, "tokengate_ledger_errors_total") >= 3.0, "{metrics}");
    assert!(metric(&metrics, "tokengate_ledger_queue_depth") >= 1.0, "{metrics}");

    drop(held);
    let all =
        admin_until(&bin, "/admin/tokens?user=erin&limit=100", |v| v["tokens"].as_array().unwrap().len() == answered)
            .await;
    assert_eq!(all["tokens"].as_array().unwrap().len(), answered, "every answered token is recorded");
    let r = client::get(bin.admin, "/readyz", &[]).await.unwrap();
    assert_eq!(r.status, 200, "ready again");
    assert!(bin.logs().contains("ledger available again"));
    mint(&bin, "erin", "after").await;
}

#[tokio::test]
async fn retention_deletes_records_whose_exp_is_past() {
    let db = db_in("ledger-retention");
    let b = backend::spawn().await;
    let yaml = orders_config(&sqlite_ledger(&db, "  retention: 1s\n")).replace("ttl: 1h", "ttl: 1s");
    let bin = Binary::start("ledger-retention", &b.url(), &yaml, &[]).await;
    for i in 0..3 {
        mint(&bin, "fay", &format!("r-{i}")).await;
    }
    admin_until(&bin, "/admin/tokens?user=fay", |v| v["tokens"].as_array().unwrap().len() == 3).await;
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (_, left) = admin(&bin, "/admin/tokens?user=fay").await;
        if left["tokens"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "expired records still there: {left}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let claims: i64 = conn.query_row("SELECT COUNT(*) FROM token_claims", [], |r| r.get(0)).unwrap();
    assert_eq!(claims, 0, "their claims go with them");
}

#[test]
fn check_names_each_ledger_mistake_by_its_key_path() {
    let dir = crate::common::temp_dir("ledger-check");
    let cases = [
        ("  type: mysql\n  path: x.db\n", "ledger.type: unknown variant `mysql`"),
        ("  type: sqlite\n", "ledger.path: missing required key for type sqlite"),
        ("  type: postgres\n", "ledger.url: missing required key for type postgres"),
        ("  type: postgres\n  url: http://[::1\n", "ledger.url: not a valid PostgreSQL URL"),
        ("  type: sqlite\n  path: x.db\n  retention: 0s\n", "ledger.retention: must be above zero"),
        (
            "  type: sqlite\n  path: /nonexistent-dir/ledger.db\n",
            "ledger.path: the directory /nonexistent-dir does not exist",
        ),
    ];
    for (i, (ledger, expected)) in cases.iter().enumerate() {
        let file = dir.join(format!("c{i}.yaml"));
        let yaml = format!("upstream:\n  url: http://127.0.0.1:3000\n{}", orders_config(ledger));
        std::fs::write(&file, yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{ledger}: {err}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
    let file = dir.join("record.yaml");
    let yaml = format!(
        "upstream:\n  url: http://127.0.0.1:3000\n{}",
        orders_config("  type: sqlite\n  path: x.db\n").replace("record: [order]", "record: [order, phone]")
    );
    std::fs::write(&file, &yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0].ledger.record[1]: the route's first token \"token\" has no claim \"phone\""),
        "{err}"
    );
    assert!(!dir.join("x.db").exists(), "check opens no database");

    let file = dir.join("no-ledger.yaml");
    let without = yaml.replace("ledger:\n  type: sqlite\n  path: x.db\n", "");
    std::fs::write(&file, without).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[0].ledger: records claims, but there is no top-level `ledger`"), "{err}");
}

#[tokio::test]
async fn a_reload_keeps_the_ledger_or_moves_to_another_database() {
    let (first_db, second_db) = (db_in("ledger-reload-a"), db_in("ledger-reload-b"));
    let (bin, b) = start_orders("ledger-reload", &first_db, "").await;
    mint(&bin, "gus", "a-1").await;
    // Same database, new settings: the same queue and writer, the new setting at once.
    bin.reload_with(&bin.yaml(&b.url(), &orders_config(&sqlite_ledger(&first_db, "  store_token: true\n")))).await;
    let kept = mint(&bin, "gus", "a-2").await;
    let record = admin_until(&bin, &format!("/admin/tokens/{}", jti(&kept)), |r| r["jti"].is_string()).await;
    assert_eq!(record["token"], kept.as_str(), "store_token applies after the reload");
    // Another database: records go there from now on; the first keeps what it had.
    bin.reload_with(&bin.yaml(&b.url(), &orders_config(&sqlite_ledger(&second_db, "")))).await;
    let moved = mint(&bin, "gus", "b-1").await;
    admin_until(&bin, &format!("/admin/tokens/{}", jti(&moved)), |r| r["claims"]["order"] == "b-1").await;
    let (_, in_second) = admin(&bin, "/admin/tokens?user=gus").await;
    assert_eq!(in_second["tokens"].as_array().unwrap().len(), 1, "{in_second}");
    let conn = rusqlite::Connection::open(&first_db).unwrap();
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2, "the first database keeps the first two");
}

/// Polls `/readyz` until it answers `status` (15 s at most).
async fn readyz_until(bin: &Binary, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client::get(bin.admin, "/readyz", &[]).await.unwrap();
        if r.status == status {
            return;
        }
        assert!(Instant::now() < deadline, "readyz stayed {} ({}); logs:\n{}", r.status, r.text(), bin.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reload to a ledger that cannot be opened is refused, naming the key, and the old ledger
/// keeps recording: no token is ever answered without its record (SPEC §6).
#[tokio::test]
async fn a_reload_to_an_unusable_ledger_is_refused_and_the_old_one_keeps_recording() {
    let db = db_in("ledger-unusable-db");
    let (bin, b) = start_orders("ledger-unusable", &db, "").await;
    mint(&bin, "ivy", "before").await;
    let unusable = bin.yaml(&b.url(), &orders_config(&sqlite_ledger(Path::new("/nonexistent-dir/ledger.db"), "")));
    bin.reload_with(&unusable).await;
    assert_eq!(bin.reloads().await, (0, 1), "the reload failed");
    let logs = bin.logs();
    assert!(logs.contains("ledger.path") && logs.contains("/nonexistent-dir does not exist"), "{logs}");
    mint(&bin, "ivy", "after").await;
    // The directory exists but the path is no database (a directory): opening it fails.
    let not_a_file = db.parent().unwrap().join("a-directory");
    std::fs::create_dir_all(&not_a_file).unwrap();
    bin.reload_with(&bin.yaml(&b.url(), &orders_config(&sqlite_ledger(&not_a_file, "")))).await;
    assert_eq!(bin.reloads().await, (0, 2), "the reload failed");
    let logs = bin.logs();
    assert!(logs.matches("\"key\":\"ledger.path\"").count() == 2 && logs.contains("cannot open the ledger"), "{logs}");
    mint(&bin, "ivy", "still").await;
    admin_until(&bin, "/admin/tokens?user=ivy", |v| v["tokens"].as_array().unwrap().len() == 3).await;
    readyz_until(&bin, 200).await;
}

/// Records queued for a ledger that cannot write (its database locked) are carried to the
/// ledger a reload moves to; the old database never gets them.
#[tokio::test]
async fn records_queued_for_a_replaced_ledger_are_carried_to_the_new_one() {
    let (first, second) = (db_in("ledger-carry-a"), db_in("ledger-carry-b"));
    let (bin, b) = start_orders("ledger-carry", &first, "").await;
    mint(&bin, "jo", "a-0").await;
    admin_until(&bin, "/admin/tokens?user=jo", |v| v["tokens"].as_array().unwrap().len() == 1).await;
    let held = lock(&first);
    for i in 1..=5 {
        mint(&bin, "jo", &format!("q-{i}")).await;
    }
    bin.reload_with(&bin.yaml(&b.url(), &orders_config(&sqlite_ledger(&second, "")))).await;
    assert_eq!(bin.reloads().await, (1, 0));
    mint(&bin, "jo", "b-1").await;
    let all =
        admin_until(&bin, "/admin/tokens?user=jo&limit=100", |v| v["tokens"].as_array().unwrap().len() == 6).await;
    let mut orders: Vec<String> =
        all["tokens"].as_array().unwrap().iter().map(|t| t["claims"]["order"].as_str().unwrap().to_owned()).collect();
    orders.sort();
    assert_eq!(
        orders,
        ["b-1", "q-1", "q-2", "q-3", "q-4", "q-5"],
        "the queued five and the new one, in the new ledger"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let conn = rusqlite::Connection::open(&first).unwrap();
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "the first database keeps only what it committed");
}

/// Ledger files deleted while tokengate runs are noticed and recreated, so what is minted
/// after is recorded where a restart finds it; a directory that is gone too turns `/readyz`
/// down for as long as it lasts.
#[tokio::test]
async fn ledger_files_deleted_while_running_are_recreated_and_reported() {
    let db = db_in("ledger-deleted-db");
    let (bin, _b) = start_orders("ledger-deleted", &db, "").await;
    mint(&bin, "kim", "d-1").await;
    admin_until(&bin, "/admin/tokens?user=kim", |v| v["tokens"].as_array().unwrap().len() == 1).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !db.exists() {
        assert!(Instant::now() < deadline, "not recreated; logs:\n{}", bin.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mint(&bin, "kim", "d-2").await;
    mint(&bin, "kim", "d-3").await;
    admin_until(&bin, "/admin/tokens?user=kim", |v| v["tokens"].as_array().unwrap().len() == 2).await;
    let metrics = client::get(bin.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metric(&metrics, "tokengate_ledger_errors_total") >= 1.0, "{metrics}");
    assert!(bin.logs().contains("deleted or replaced"), "{}", bin.logs());

    let dir = db.parent().unwrap().to_owned();
    std::fs::remove_dir_all(&dir).unwrap();
    readyz_until(&bin, 503).await;
    std::fs::create_dir_all(&dir).unwrap();
    readyz_until(&bin, 200).await;
    mint(&bin, "kim", "d-4").await;
    admin_until(&bin, "/admin/tokens?user=kim", |v| v["tokens"].as_array().unwrap().len() == 1).await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM tokens WHERE user_id = 'kim'", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "d-4 is in the file a restart opens");
}
