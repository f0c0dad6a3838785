//! Vendor profiles against the vendors' own server SDKs (feature `services`; the SDKs are
//! pip-installed, pinned in tests/conformance/requirements.txt, under target/): for the same
//! inputs, tokengate running the shipped `config/*.yaml` and the SDK must produce tokens with
//! the same header fields, every claim the SDK sets with the same JSON type and (where it is
//! deterministic) the same value, and the same lifetime.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{json, Value};

use crate::common::{backend, Binary};
use crate::seeds::{parts, verify_hs256};

/// Where the pinned SDKs are installed (once per requirements file).
fn sdks() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let requirements = root.join("tests/conformance/requirements.txt");
        let no_deps = root.join("tests/conformance/requirements-no-deps.txt");
        let dir = root.join("target/conformance-sdks");
        let stamp = dir.join(".requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).unwrap() + &std::fs::read_to_string(&no_deps).unwrap();
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
            let _ = std::fs::remove_dir_all(&dir);
            for (file, extra) in [(&requirements, None), (&no_deps, Some("--no-deps"))] {
                let ok = Command::new("python3")
                    .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "--target"])
                    .arg(&dir)
                    .args(extra)
                    .arg("-r")
                    .arg(file)
                    .status()
                    .expect("python3 -m pip")
                    .success();
                assert!(ok, "pip install -r {} failed", file.display());
            }
            std::fs::write(&stamp, wanted).unwrap();
        }
        dir
    })
}

/// Where the pinned npm SDKs are installed (once per tests/conformance/npm-packages.txt).
fn npm_sdks() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let list = std::fs::read_to_string(root.join("tests/conformance/npm-packages.txt")).unwrap();
        let dir = root.join("target/conformance-npm");
        let stamp = dir.join(".npm-packages.txt");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(list.as_str()) {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let packages: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
            let ok = Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .args(&packages)
                .status()
                .expect("npm")
                .success();
            assert!(ok, "npm install {packages:?} failed");
            std::fs::write(&stamp, list).unwrap();
        }
        dir.join("node_modules")
    })
}

/// What `cmd` prints given `inputs` as JSON on its standard input.
fn run_with_input(mut cmd: Command, inputs: &Value, what: &str) -> String {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(inputs.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A token minted by `vendor`'s SDK (tests/conformance/mint.py) for `inputs`.
fn sdk_token(vendor: &str, inputs: &Value) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/mint.py"))
        .arg(vendor)
        .env("PYTHONPATH", sdks());
    run_with_input(cmd, inputs, &format!("the {vendor} SDK"))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The lifetime a token states: `exp` minus `iat`, or minus `nbf` without one; None when it
/// states no start (then only `exp` is compared).
fn lifetime(claims: &Value) -> Option<i64> {
    let start = claims.get("iat").or_else(|| claims.get("nbf")).and_then(Value::as_i64)?;
    Some(claims["exp"].as_i64()? - start)
}

/// Requires `ours` to match `theirs` (see the module); `varying` claims (nonces, times) are
/// compared by type only, times within 5 s.
fn conforms(vendor: &str, ours: &str, theirs: &str, varying: &[&str]) {
    let (our_header, our_claims) = parts(ours);
    let (their_header, their_claims) = parts(theirs);
    assert_eq!(our_header, their_header, "{vendor}: header fields");
    for (name, value) in their_claims.as_object().unwrap() {
        let Some(ours) = our_claims.get(name) else {
            panic!("{vendor}: the SDK sets {name:?}, tokengate does not: {our_claims}");
        };
        assert_eq!(json_type(ours), json_type(value), "{vendor}: type of {name:?}");
        match name.as_str() {
            "iat" | "exp" | "nbf" => {
                let drift = ours.as_i64().unwrap() - value.as_i64().unwrap();
                assert!(drift.abs() <= 5, "{vendor}: {name} {ours} vs {value}");
            }
            n if varying.contains(&n) => {}
            _ => assert_eq!(ours, value, "{vendor}: {name:?}"),
        }
    }
    if let Some(theirs) = lifetime(&their_claims) {
        assert_eq!(lifetime(&our_claims), Some(theirs), "{vendor}: lifetime");
    }
}

async fn post(bin: &Binary, path: &str, body: Value) -> Value {
    let headers = [("cookie", "session=conf-user"), ("content-type", "application/json")];
    let r = crate::common::client::request(bin.addr, http::Method::POST, path, &headers, body.to_string().into())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn contactsmanager_matches_the_contactsmanager_sdk() {
    sdks();
    let b = backend::spawn().await;
    let envs = [("CM_API_KEY", "cm-key-1"), ("CM_API_SECRET", "cm-secret-0123456789"), ("CM_ORGANIZATION_ID", "org-7")];
    let bin = Binary::start_file("conf-cm", "config/contactsmanager.yaml", &b.url(), &envs).await;
    let device = json!({"deviceName": "Pixel", "os": "android"});
    let ours = post(&bin, "/generate-token", json!({"deviceInfo": device})).await["token"].as_str().unwrap().to_owned();
    let theirs = sdk_token(
        "contactsmanager",
        &json!({"api_key": "cm-key-1", "api_secret": "cm-secret-0123456789", "org_id": "org-7", "user_id": "conf-user", "device_info": device}),
    );
    conforms("contactsmanager", &ours, &theirs, &["jti"]);
    verify_hs256(&ours, b"cm-secret-0123456789");
}

#[tokio::test]
async fn twilio_matches_the_twilio_helper_library() {
    sdks();
    let b = backend::spawn().await;
    let envs = [
        ("TWILIO_ACCOUNT_SID", "AC0123"),
        ("TWILIO_API_KEY_SID", "SK0123"),
        ("TWILIO_API_KEY_SECRET", "twilio-secret-0123"),
        ("TWILIO_CONVERSATIONS_SERVICE_SID", "IS0123"),
    ];
    let bin = Binary::start_file("conf-twilio", "config/twilio.yaml", &b.url(), &envs).await;
    let ours = post(&bin, "/api/twilio/token", json!({})).await["token"].as_str().unwrap().to_owned();
    let theirs = sdk_token(
        "twilio",
        &json!({"account_sid": "AC0123", "api_key_sid": "SK0123", "api_key_secret": "twilio-secret-0123", "service_sid": "IS0123", "user_id": "conf-user"}),
    );
    // jti is `<key sid>-<now>`: the same but for the second it was minted in.
    conforms("twilio", &ours, &theirs, &["jti"]);
    assert!(parts(&ours).1["jti"].as_str().unwrap().starts_with("SK0123-"));
    verify_hs256(&ours, b"twilio-secret-0123");
}

#[tokio::test]
async fn stream_matches_the_stream_chat_sdk() {
    sdks();
    let b = backend::spawn().await;
    let envs = [("STREAM_API_KEY", "stream-key"), ("STREAM_API_SECRET", "stream-secret-0123")];
    let bin = Binary::start_file("conf-stream", "config/stream.yaml", &b.url(), &envs).await;
    let ours = post(&bin, "/api/stream/token", json!({})).await["token"].as_str().unwrap().to_owned();
    let theirs = sdk_token(
        "stream",
        &json!({"api_key": "stream-key", "api_secret": "stream-secret-0123", "user_id": "conf-user"}),
    );
    conforms("stream", &ours, &theirs, &[]);
    verify_hs256(&ours, b"stream-secret-0123");
}

#[tokio::test]
async fn livekit_matches_livekit_api_and_its_token_verifier_accepts_it() {
    sdks();
    let b = backend::spawn().await;
    let secret = "livekit-secret-0123456789abcdefghij";
    let envs = [("LIVEKIT_API_KEY", "APIkey1"), ("LIVEKIT_API_SECRET", secret), ("LIVEKIT_URL", "wss://lk.example")];
    let bin = Binary::start_file("conf-livekit", "config/livekit.yaml", &b.url(), &envs).await;
    let answer = post(&bin, "/api/livekit/token", json!({"room": "room-1"})).await;
    assert_eq!(answer["url"], "wss://lk.example");
    let ours = answer["token"].as_str().unwrap().to_owned();
    let inputs = json!({"api_key": "APIkey1", "api_secret": secret, "user_id": "conf-user", "name": "Name conf-user", "room": "room-1"});
    conforms("livekit", &ours, &sdk_token("livekit", &inputs), &[]);
    let read = sdk_token("livekit-verify", &json!({"api_key": "APIkey1", "api_secret": secret, "token": ours}));
    let read: Value = serde_json::from_str(&read).unwrap();
    assert_eq!(read, json!({"identity": "conf-user", "name": "Name conf-user", "room": "room-1", "room_join": true}));
    verify_hs256(&ours, secret.as_bytes());
}

#[tokio::test]
async fn firebase_matches_firebase_admin_with_the_key_file_google_issues() {
    sdks();
    let b = backend::spawn().await;
    let dir = crate::common::temp_dir("conf-firebase");
    let pem = tokengate::keys::generate_pem(tokengate::config::Algorithm::RS256).unwrap();
    let account = json!({
        "type": "service_account",
        "project_id": "conf-project",
        "private_key_id": "a1b2c3d4e5",
        "private_key": pem,
        "client_email": "tokengate@conf-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let file = dir.join("service-account.json");
    std::fs::write(&file, serde_json::to_string_pretty(&account).unwrap()).unwrap();
    let envs = [("FIREBASE_SERVICE_ACCOUNT_FILE", file.to_str().unwrap())];
    let bin = Binary::start_file("conf-firebase", "config/firebase.yaml", &b.url(), &envs).await;
    let ours = post(&bin, "/api/firebase/token", json!({})).await["token"].as_str().unwrap().to_owned();
    let inputs =
        json!({"service_account": account, "user_id": "conf-user", "developer_claims": {"name": "Name conf-user"}});
    conforms("firebase", &ours, &sdk_token("firebase", &inputs), &[]);
    let verified = sdk_token("firebase-verify", &json!({"service_account": account, "token": ours}));
    let verified: Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(verified["uid"], "conf-user");
    assert_eq!(verified["iss"], "tokengate@conf-project.iam.gserviceaccount.com");
    assert!(verified["exp"].as_i64().unwrap() - verified["iat"].as_i64().unwrap() <= 3600, "at most 1 h");
}

#[tokio::test]
async fn mux_matches_the_mux_node_sdk_for_each_playback_url() {
    sdks();
    let node_modules = npm_sdks();
    let b = backend::spawn().await;
    let pem = tokengate::keys::generate_pem(tokengate::config::Algorithm::RS256).unwrap();
    let key_base64 = base64::engine::general_purpose::STANDARD.encode(&pem);
    let envs = [("MUX_SIGNING_KEY_ID", "signing-key-1"), ("MUX_SIGNING_KEY_PRIVATE_KEY", key_base64.as_str())];
    let bin = Binary::start_file("conf-mux", "config/mux.yaml", &b.url(), &envs).await;
    let answer = post(&bin, "/api/mux/playback/pb-123", json!({})).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/mux.js");
    for (name, kind) in [("video", "video"), ("thumbnail", "thumbnail"), ("storyboard", "storyboard")] {
        let inputs =
            json!({"playback_id": "pb-123", "key_id": "signing-key-1", "key_base64": key_base64, "type": kind});
        let mut cmd = Command::new("node");
        cmd.arg(&script).env("NODE_PATH", node_modules);
        let theirs = run_with_input(cmd, &inputs, "mux-node");
        conforms(&format!("mux {name}"), answer["tokens"][name].as_str().unwrap(), &theirs, &[]);
    }
}
