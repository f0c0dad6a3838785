//! The command line (SPEC §1): check, schema, TOKENGATE_CONFIG, --workers.

use std::process::Command;
use std::time::Duration;

use crate::common::{backend, temp_dir, Binary};

fn tokengate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tokengate"))
}

#[test]
fn check_reports_every_error_with_file_and_key_path() {
    let dir = temp_dir("cli-check");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "upstream:\n  url: http://127.0.0.1:3000\n  connect_timeout: 5 secs\nlimits:\n  max_header_bytes: lots\n  shutdown_grace: 1 minute\nforwarding:\n  x_forwarded: sometimes\nadmin_token: ${TG_TEST_NEVER_SET}\nbogus_key: 1\n",
    )
    .unwrap();
    let out = tokengate().args(["check", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let f = file.display().to_string();
    for expected in [
        format!("{f}: upstream.connect_timeout: invalid duration \"5 secs\""),
        format!("{f}: limits.max_header_bytes: invalid size \"lots\""),
        format!("{f}: limits.shutdown_grace: invalid duration \"1 minute\""),
        format!("{f}: forwarding.x_forwarded: unknown variant `sometimes`"),
        format!("{f}: admin_token: environment variable TG_TEST_NEVER_SET is not set"),
        format!("{f}: bogus_key: unknown field `bogus_key`"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn check_accepts_a_good_config_from_tokengate_config() {
    let dir = temp_dir("cli-check-ok");
    let file = dir.join("good.yaml");
    std::fs::write(&file, "upstream:\n  url: ${TG_TEST_UPSTREAM:-http://127.0.0.1:3000}\n").unwrap();
    let out = tokengate().arg("check").env("TOKENGATE_CONFIG", &file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn every_shipped_config_passes_check() {
    let keys = temp_dir("cli-shipped-configs");
    let es256 = keys.join("es256.pem");
    std::fs::write(&es256, tokengate::keys::generate_pem(tokengate::config::Algorithm::ES256).unwrap()).unwrap();
    let account = service_account_file(&keys);
    let mux_key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        tokengate::keys::generate_pem(tokengate::config::Algorithm::RS256).unwrap(),
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // The variables the vendor files document.
        let out = tokengate()
            .args(["check", "--config"])
            .arg(&path)
            .envs([
                ("CM_API_KEY", "k"),
                ("CM_API_SECRET", "s"),
                ("CM_ORGANIZATION_ID", "o"),
                ("CHATSDK_API_KEY", "k"),
                ("CHATSDK_JWT_SECRET", "s"),
                ("DOTDIGITAL_ISSUER", "i"),
                ("DOTDIGITAL_AUDIENCE", "a"),
                ("DOTDIGITAL_SHARED_SECRET", "s"),
                ("TELESIGN_CUSTOMER_ID", "c"),
                ("TELESIGN_KEY", "c2VjcmV0"),
                ("TOKENGATE_SECRET", "s"),
                ("CENTRIFUGO_PRIVATE_KEY_FILE", es256.to_str().unwrap()),
                ("STREAM_API_KEY", "k"),
                ("STREAM_API_SECRET", "s"),
                ("CENTRIFUGO_TOKEN_HMAC_SECRET_KEY", "s"),
                ("TWILIO_ACCOUNT_SID", "a"),
                ("TWILIO_API_KEY_SID", "k"),
                ("TWILIO_API_KEY_SECRET", "s"),
                ("TWILIO_CONVERSATIONS_SERVICE_SID", "c"),
                ("LIVEKIT_API_KEY", "k"),
                ("LIVEKIT_API_SECRET", "s"),
                ("LIVEKIT_URL", "wss://x"),
                ("FIREBASE_SERVICE_ACCOUNT_FILE", account.to_str().unwrap()),
                ("SUPABASE_URL", "https://x.supabase.co"),
                ("SUPABASE_JWT_SECRET", "s"),
                ("ABLY_KEY_NAME", "a.k"),
                ("ABLY_KEY_SECRET", "s"),
                ("MUX_SIGNING_KEY_ID", "k"),
                ("MUX_SIGNING_KEY_PRIVATE_KEY", &mux_key),
                ("TOKENGATE_ASSERTION_KEY_FILE", es256.to_str().unwrap()),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn run_with_a_bad_config_exits_64() {
    let dir = temp_dir("cli-run-bad");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "upstream: {url: 'ftp://nope'}\n").unwrap();
    let out = tokengate().args(["run", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream.url: only http:// and https:// URLs are supported"));
}

#[test]
fn schema_is_a_json_schema_of_the_whole_file() {
    let out = tokengate().arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let props = schema["properties"].as_object().unwrap();
    for key in [
        "listen",
        "admin_listen",
        "admin_token",
        "admin_token_file",
        "upstream",
        "forwarding",
        "limits",
        "keys",
        "auth_hooks",
        "rate_limits",
        "proxy_rate_limits",
        "routes",
        "ledger",
        "shared_state",
        "tls",
        "workers",
        "jwks_path",
    ] {
        assert!(props.contains_key(key), "schema lacks {key}");
    }
    assert_eq!(schema["additionalProperties"], false, "unknown keys must be errors");
}

#[tokio::test]
async fn workers_flag_sets_the_runtime_threads() {
    let b = backend::spawn().await;
    for n in [1usize, 3] {
        let bin = Binary::start(&format!("cli-workers-{n}"), &b.url(), "", &["--workers", &n.to_string()]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let comms: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", bin.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .map(|c| c.trim().to_owned())
            .collect();
        // The main thread is worker 1; each other worker is a thread with its own runtime.
        let workers = 1 + comms.iter().filter(|c| c.starts_with("tg-worker-")).count();
        assert!(!comms.iter().any(|c| c == "tokio-rt-worker"), "{comms:?}");
        let expected = n;
        assert_eq!(workers, expected, "--workers {n}");
    }
}

#[test]
fn keygen_jwks_and_mint() {
    let dir = temp_dir("cli-keys");
    let key = dir.join("es256.pem");
    let out = tokengate().args(["keygen", "--alg", "ES256", "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&key).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    let again = tokengate().args(["keygen", "--alg", "ES256", "--out"]).arg(&key).output().unwrap();
    assert!(!again.status.success(), "keygen never overwrites a key");

    let config = dir.join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream: {{ url: 'http://127.0.0.1:3000' }}\nkeys: [{{ id: es-1, algorithm: ES256, private_key_file: {} }}]\nauth_hooks: {{ s: {{ type: none, identity: {{ id: header:x }} }} }}\nroutes: [{{ name: tel, path: '/v1/token/{{phone}}', auth: s, tokens: {{ t: {{ key: es-1, ttl: 90s, claims: {{ sub: '{{{{ user.id }}}}', phn: '{{{{ path.phone }}}}', who: '{{{{ user.name }}}}' }} }} }}, response: {{ body: {{ token: '{{{{ tokens.t }}}}', in: '{{{{ expires_in }}}}' }} }} }}]\n",
            key.display()
        ),
    )
    .unwrap();
    let out = tokengate().args(["jwks", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jwks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "es-1");
    assert_eq!(jwks["keys"][0]["crv"], "P-256");

    let out = tokengate()
        .args(["mint", "--config"])
        .arg(&config)
        .args(["--route", "tel", "--user-id", "u-9", "--set", "path.phone=1555", "--set", "user.name=Zoe"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["in"], 90);
    let (header, payload) = crate::seeds::parts(answer["token"].as_str().unwrap());
    assert_eq!(header["kid"], "es-1");
    assert_eq!(payload["sub"], "u-9");
    assert_eq!(payload["phn"], "1555");
    assert_eq!(payload["who"], "Zoe");

    let missing = tokengate()
        .args(["mint", "--config"])
        .arg(&config)
        .args(["--route", "tel", "--user-id", "u-9"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stdout).contains("missing required field: phone"));
}

#[test]
fn mint_previews_a_ledger_route_at_once_and_records_nothing() {
    let dir = temp_dir("cli-mint-ledger");
    let db = dir.join("ledger.db");
    let started = std::time::Instant::now();
    let out = tokengate()
        .args(["mint", "--config", "config/telesign.yaml", "--route", "telesign-xid", "--user-id", "-"])
        .args(["--set", "path.phone=15555550000", "--set", "path.xid=x-1"])
        .env("TELESIGN_CUSTOMER_ID", "C")
        .env("TELESIGN_KEY", "a2V5")
        .env("TOKENGATE_LEDGER", &db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(crate::seeds::parts(&String::from_utf8_lossy(&out.stdout)).1["xid"], "x-1");
    assert!(started.elapsed() < Duration::from_secs(3), "no wait for a commit that cannot come");
    assert!(!db.exists(), "a preview opens no ledger");
}

#[tokio::test]
async fn demo_logs_in_and_fetches_a_token_as_its_curl_lines_say() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("demo")
        .env("TOKENGATE_SECRET", "demo-test-secret-0123")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    let addr: std::net::SocketAddr =
        first.split("tokengate on ").nth(1).and_then(|r| r.split(',').next()).unwrap().parse().unwrap();
    let mut printed = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        printed.push_str(&line);
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert!(printed.contains(&format!("http://{addr}/api/auth/chat-token")), "{printed}");

    let login = crate::common::client::request(addr, http::Method::POST, "/login?user=alice", &[], bytes::Bytes::new())
        .await
        .unwrap();
    let cookie = login.header("set-cookie").unwrap().split(';').next().unwrap().to_owned();
    let r = crate::common::client::request(
        addr,
        http::Method::POST,
        "/api/auth/chat-token",
        &[("cookie", &cookie)],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let claims = crate::seeds::verify_hs256(r.json()["token"].as_str().unwrap(), b"demo-test-secret-0123");
    assert_eq!(claims.subject.as_deref(), Some("user-alice"));
    let anonymous =
        crate::common::client::request(addr, http::Method::POST, "/api/auth/chat-token", &[], bytes::Bytes::new())
            .await
            .unwrap();
    assert_eq!(anonymous.status, 401);

    // The ledger line: what was minted for alice.
    let admin: std::net::SocketAddr = first.split("admin on ").nth(1).unwrap().trim().parse().unwrap();
    let path = printed.split(&format!("http://{admin}")).nth(1).unwrap().split('\'').next().unwrap().to_owned();
    assert_eq!(path, "/admin/tokens?user=user-alice");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found = crate::common::client::get(admin, &path, &[]).await.unwrap().json();
        if found["tokens"].as_array().is_some_and(|t| t.len() == 1) {
            assert_eq!(found["tokens"][0]["route"], "chat-token");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{found}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn init_prints_every_shipped_profile_and_each_checks_once_its_env_is_set() {
    let dir = temp_dir("cli-init");
    let shipped: Vec<String> = std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let list = tokengate().args(["init", "--list"]).output().unwrap();
    assert!(list.status.success());
    let list = String::from_utf8(list.stdout).unwrap();
    let pem = dir.join("es256.pem");
    std::fs::write(&pem, tokengate::keys::generate_pem(tokengate::config::Algorithm::ES256).unwrap()).unwrap();
    let rsa = dir.join("rsa.pem");
    std::fs::write(&rsa, tokengate::keys::generate_pem(tokengate::config::Algorithm::RS256).unwrap()).unwrap();
    for name in shipped.iter().map(String::as_str).chain(["blank"]) {
        assert!(list.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing from:\n{list}");
        let profile = tokengate::profiles::find(name).unwrap_or_else(|| panic!("no profile for config/{name}.yaml"));
        let out = tokengate().args(["init", name]).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), profile.text, "init prints the shipped file");
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, profile.text).unwrap();
        let unset = tokengate().args(["check", "--config"]).arg(&file).env_clear().output().unwrap();
        let required = profile.required_env();
        if let Some(first) = required.first() {
            assert!(String::from_utf8_lossy(&unset.stderr).contains(first), "{name}: check names {first} when unset");
        }
        let mut check = tokengate();
        check.args(["check", "--config"]).arg(&file).env_clear();
        for var in &required {
            let value = match *var {
                "FIREBASE_SERVICE_ACCOUNT_FILE" => service_account_file(&dir).display().to_string(),
                v if v.ends_with("_FILE") => pem.display().to_string(),
                "TELESIGN_KEY" => "dGVsZXNpZ24ta2V5LWZvci10aGUtdGVzdA==".to_owned(),
                "MUX_SIGNING_KEY_PRIVATE_KEY" => {
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, std::fs::read(&rsa).unwrap())
                }
                _ => "a-value-for-the-init-test-0123456789".to_owned(),
            };
            check.env(var, value);
        }
        let out = check.output().unwrap();
        assert!(out.status.success(), "{name} with {required:?} set: {}", String::from_utf8_lossy(&out.stderr));
    }
    let unknown = tokengate().args(["init", "nope"]).output().unwrap();
    assert!(!unknown.status.success());
}

/// A Google service-account key file (the JSON Google issues) with a fresh RSA key.
pub fn service_account_file(dir: &std::path::Path) -> std::path::PathBuf {
    let pem = tokengate::keys::generate_pem(tokengate::config::Algorithm::RS256).unwrap();
    let account = serde_json::json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "key-id-1",
        "private_key": pem,
        "client_email": "svc@p.iam.gserviceaccount.com",
    });
    let file = dir.join("service-account.json");
    std::fs::write(&file, account.to_string()).unwrap();
    file
}

#[test]
fn check_names_the_key_of_a_cors_origin_with_a_path_and_of_a_star_with_credentials() {
    let dir = temp_dir("cli-check-cors");
    let route = |cors: &str| {
        format!(
            "upstream: {{ url: http://127.0.0.1:3000 }}\nkeys: [{{ id: k, algorithm: HS256, secret: s }}]\n\
             auth_hooks: {{ anyone: {{ type: none, identity: {{ id: header:x-user }} }} }}\n\
             routes: [{{ name: chat, path: /t, auth: anyone, tokens: {{ t: {{ key: k, ttl: 1m }} }}, cors: {cors} }}]\n"
        )
    };
    for (cors, expected) in [
        (
            "{ allowed_origins: [https://app.example.com, https://admin.example.com/] }",
            "routes[0].cors.allowed_origins[1]: \"https://admin.example.com/\" has a path (or a trailing slash)",
        ),
        (
            "{ allowed_origins: ['*'], allow_credentials: true }",
            "routes[0].cors.allowed_origins: \"*\" cannot be used with allow_credentials",
        ),
    ] {
        let file = dir.join("cors.yaml");
        std::fs::write(&file, route(cors)).unwrap();
        let out = tokengate().args(["check", "--config"]).arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{cors}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

/// mimalloc would put the heap on transparent huge pages (RSS in 2 MiB steps, memory of closed
/// connections kept): the process turns them off for itself, unless `MIMALLOC_ALLOW_THP` is set.
#[tokio::test]
async fn transparent_huge_pages_are_off_unless_mimalloc_allow_thp_is_set() {
    fn thp_enabled(pid: u32) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("THP_enabled:").map(|v| v.trim().to_owned()))
    }
    // Kernels before 5.0 do not say; there is nothing to check there.
    if thp_enabled(std::process::id()).is_none() {
        return;
    }
    let b = backend::spawn().await;
    let off = Binary::start("cli-thp-off", &b.url(), "", &[]).await;
    assert_eq!(thp_enabled(off.pid()).as_deref(), Some("0"));
    let asked = Binary::start_with("cli-thp-asked", &b.url(), "", &[], &[("MIMALLOC_ALLOW_THP", "1")]).await;
    assert_eq!(thp_enabled(asked.pid()).as_deref(), Some("1"));
}
