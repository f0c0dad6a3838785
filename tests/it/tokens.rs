//! Token routes (SPEC §2, §3, §4): every algorithm, the JWK set, auth hooks and their cache,
//! the token cache, templates as data, error shapes. Tokens are verified with jwt-simple.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::Method;
use jwt_simple::prelude::*;
use serde_json::{json, Value};

use crate::common::{backend, client, spawn_app, temp_dir};
use crate::seeds::{parts, verify_hs256};

fn b64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn session_hook(b: &backend::Backend, extra: &str) -> String {
    format!(
        "  session:\n    type: http\n    url: {}/api/me\n    forward_headers: [cookie]\n    timeout: 1s\n    identity: {{ id: body:/id, name: body:/name }}\n{extra}",
        b.url()
    )
}

async fn post(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> client::Resp {
    client::request(addr, Method::POST, path, headers, Bytes::from(body.to_owned())).await.unwrap()
}

/// Verifies `token` against the JWK with its `kid`, using jwt-simple's own key types.
pub fn verify_with_jwk(token: &str, jwks: &Value) -> JWTClaims<Value> {
    let (header, _) = parts(token);
    let kid = header["kid"].as_str().expect("a kid");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("{kid} not in {jwks}"));
    let field = |f: &str| b64url(jwk[f].as_str().unwrap());
    let ec_point = || [vec![4u8], field("x"), field("y")].concat();
    let result = match header["alg"].as_str().unwrap() {
        "RS256" => {
            RS256PublicKey::from_components(&field("n"), &field("e")).unwrap().verify_token::<Value>(token, None)
        }
        "RS384" => {
            RS384PublicKey::from_components(&field("n"), &field("e")).unwrap().verify_token::<Value>(token, None)
        }
        "PS256" => {
            PS256PublicKey::from_components(&field("n"), &field("e")).unwrap().verify_token::<Value>(token, None)
        }
        "ES256" => ES256PublicKey::from_bytes(&ec_point()).unwrap().verify_token::<Value>(token, None),
        "ES384" => ES384PublicKey::from_bytes(&ec_point()).unwrap().verify_token::<Value>(token, None),
        "EdDSA" => Ed25519PublicKey::from_bytes(&field("x")).unwrap().verify_token::<Value>(token, None),
        other => panic!("unexpected alg {other}"),
    };
    result.unwrap_or_else(|e| panic!("{kid}: {e}"))
}

#[tokio::test]
async fn every_algorithm_verifies_independently_and_through_the_jwk_set() {
    let b = backend::spawn().await;
    let dir = temp_dir("tokens-algs");
    let asym = ["RS256", "RS384", "PS256", "ES256", "ES384", "EdDSA"];
    let mut keys = String::from("keys:\n");
    for alg in asym {
        let pem = tokengate::keys::generate_pem(serde_json::from_value(json!(alg)).unwrap()).unwrap();
        let file = dir.join(format!("{alg}.pem"));
        std::fs::write(&file, pem).unwrap();
        keys.push_str(&format!("  - {{ id: k-{alg}, algorithm: {alg}, private_key_file: {} }}\n", file.display()));
    }
    std::fs::write(dir.join("hs384.secret"), "file-secret-1234\n").unwrap();
    keys.push_str("  - { id: k-HS256, algorithm: HS256, secret: 'abcdef0123456789' }\n");
    keys.push_str(&format!(
        "  - {{ id: k-HS384, algorithm: HS384, secret_file: {} }}\n",
        dir.join("hs384.secret").display()
    ));
    keys.push_str("  - { id: k-HS512, algorithm: HS512, secret_base64: 'AAECAwQFBgcICQoLDA0O/w==' }\n");
    keys.push_str("  - { id: old, algorithm: ES256, private_key_file: ");
    keys.push_str(&format!("{}, retired: true }}\n", dir.join("ES256.pem").display()));
    let mut tokens = String::new();
    let mut response = String::new();
    for alg in asym.iter().chain(&["HS256", "HS384", "HS512"]) {
        tokens.push_str(&format!(
            "      {alg}: {{ key: k-{alg}, ttl: 10m, not_before: true, claims: {{ sub: '{{{{ user.id }}}}' }} }}\n"
        ));
        response.push_str(&format!("        {alg}: '{{{{ tokens.{alg} }}}}'\n"));
    }
    let yaml = format!(
        "jwks_path: /.well-known/jwks.json\n{keys}auth_hooks:\n  anyone: {{ type: none, identity: {{ id: header:x-user-id }} }}\nroutes:\n  - name: all\n    path: /all\n    auth: anyone\n    tokens:\n{tokens}    response:\n      body:\n{response}"
    );
    let app = spawn_app(&b.url(), &yaml).await;
    let r = post(app.addr, "/all", &[("x-user-id", "u-42")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let minted = r.json();

    let jwks = client::get(app.admin, "/.well-known/jwks.json", &[]).await.unwrap().json();
    let public_jwks = client::get(app.addr, "/.well-known/jwks.json", &[]).await.unwrap().json();
    assert_eq!(jwks, public_jwks, "jwks_path serves the same set on the public port");
    assert_eq!(jwks["keys"].as_array().unwrap().len(), asym.len() + 1, "asymmetric keys only, retired one included");
    assert!(jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == "old"));
    assert!(!jwks.to_string().contains("\"d\""), "no private material in the JWK set");

    for alg in asym {
        let token = minted[alg].as_str().unwrap();
        let (header, payload) = parts(token);
        assert_eq!(header["alg"], alg);
        assert_eq!(header["kid"], format!("k-{alg}"));
        assert_eq!(payload["nbf"], payload["iat"]);
        assert_eq!(verify_with_jwk(token, &jwks).subject.as_deref(), Some("u-42"));
    }
    assert_eq!(verify_hs256(minted["HS256"].as_str().unwrap(), b"abcdef0123456789").subject.as_deref(), Some("u-42"));
    HS384Key::from_bytes(b"file-secret-1234").verify_token::<Value>(minted["HS384"].as_str().unwrap(), None).unwrap();
    HS512Key::from_bytes(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 255])
        .verify_token::<Value>(minted["HS512"].as_str().unwrap(), None)
        .unwrap();
}

#[tokio::test]
async fn a_retired_key_cannot_sign() {
    let dir = temp_dir("tokens-retired");
    let pem = tokengate::keys::generate_pem(serde_json::from_value(json!("ES256")).unwrap()).unwrap();
    std::fs::write(dir.join("k.pem"), pem).unwrap();
    let yaml = format!(
        "upstream: {{ url: 'http://127.0.0.1:1' }}\nkeys: [{{ id: old, algorithm: ES256, private_key_file: {}, retired: true }}]\nauth_hooks: {{ a: {{ type: none, identity: {{ id: header:x }} }} }}\nroutes: [{{ name: r, path: /t, auth: a, tokens: {{ t: {{ key: old, ttl: 1m }} }} }}]\n",
        dir.join("k.pem").display()
    );
    let err = tokengate::config::load_str(&yaml, "t.yaml", std::path::Path::new(".")).unwrap_err().to_string();
    assert!(err.contains("routes[0].tokens.t.key: key \"old\" is retired"), "{err}");
}

#[tokio::test]
async fn concurrent_misses_for_one_cookie_make_one_hook_call() {
    let b = backend::spawn().await;
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: s }}]\nauth_hooks:\n{}routes: [{{ name: chat, path: /t, auth: session, tokens: {{ token: {{ key: k, ttl: 1h, claims: {{ sub: '{{{{ user.id }}}}' }} }} }}, response: {{ body: {{ token: '{{{{ tokens.token }}}}' }} }} }}]\n",
        session_hook(&b, "")
    );
    let app = spawn_app(&b.url(), &yaml).await;
    let addr = app.addr;
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { post(addr, "/t", &[("cookie", "session=slow-alice")], "").await }))
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(parts(r.json()["token"].as_str().unwrap()).1["sub"], "slow-alice");
    }
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 1, "50 concurrent requests with one new cookie");
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_auth_cache_total{hook=\"session\",result=\"miss\"} 1"), "{metrics}");
    assert!(metrics.contains("tokengate_auth_cache_total{hook=\"session\",result=\"hit\"} 49"), "{metrics}");
    assert!(metrics.contains("tokengate_auth_hook_total{hook=\"session\",outcome=\"allow\"} 1"), "{metrics}");
    assert!(metrics.contains("tokengate_auth_hook_duration_seconds_count{hook=\"session\"} 1"), "{metrics}");
    assert!(
        metrics.contains("tokengate_tokens_minted_total{alg=\"HS256\",route=\"chat\",token=\"token\"} 50"),
        "{metrics}"
    );
    assert!(metrics.contains("tokengate_requests_total{route=\"chat\",status=\"200\"} 50"), "{metrics}");
}

#[tokio::test]
async fn identities_never_cross_between_concurrent_callers() {
    let b = backend::spawn().await;
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: s }}]\nauth_hooks:\n{}routes: [{{ name: chat, path: /t, auth: session, cache_tokens: true, tokens: {{ token: {{ key: k, ttl: 1h, claims: {{ sub: '{{{{ user.id }}}}', name: '{{{{ user.name }}}}' }} }} }}, response: {{ body: {{ token: '{{{{ tokens.token }}}}', id: '{{{{ user.id }}}}' }} }} }}]\n",
        session_hook(&b, "")
    );
    let app = spawn_app(&b.url(), &yaml).await;
    let addr = app.addr;
    let mut tasks = Vec::new();
    for round in 0..8 {
        for user in ["ann", "ben", "cat", "dan", "eve", "slow-fay"] {
            let cookie = format!("session={user}");
            tasks.push(tokio::spawn(async move {
                let r = post(addr, "/t", &[("cookie", &cookie)], "").await;
                (user, round, r)
            }));
        }
    }
    for t in tasks {
        let (user, _, r) = t.await.unwrap();
        assert_eq!(r.status, 200);
        let body = r.json();
        assert_eq!(body["id"], user);
        let (_, payload) = parts(body["token"].as_str().unwrap());
        assert_eq!(payload["sub"], user);
        assert_eq!(payload["name"], format!("Name {user}"));
    }
}

#[tokio::test]
async fn denials_are_cached_briefly_and_failures_never() {
    let b = backend::spawn().await;
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: s }}]\nauth_hooks:\n{}  dead:\n    type: http\n    url: http://{}/api/me\n    identity: {{ id: body:/id }}\n  slow:\n    type: http\n    url: {}/sleep/3000\n    timeout: 200ms\n    identity: {{ id: body:/id }}\nroutes:\n  - {{ name: s, path: /s, auth: session, tokens: {{ t: {{ key: k, ttl: 1m }} }} }}\n  - {{ name: d, path: /d, auth: dead, tokens: {{ t: {{ key: k, ttl: 1m }} }} }}\n  - {{ name: w, path: /w, auth: slow, tokens: {{ t: {{ key: k, ttl: 1m }} }} }}\n",
        session_hook(&b, "    cache: { ttl: 30s, negative_ttl: 300ms }\n"),
        crate::common::closed_port(),
        b.url()
    );
    let app = spawn_app(&b.url(), &yaml).await;
    // Deny (401 from the session endpoint): cached for negative_ttl.
    for _ in 0..3 {
        let r = post(app.addr, "/s", &[("cookie", "session=")], "").await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"], "unauthorized");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    post(app.addr, "/s", &[("cookie", "session=")], "").await;
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 2, "the deny expired");

    // A 5xx from the hook fails closed and is not cached.
    for _ in 0..2 {
        let r = post(app.addr, "/s", &[("cookie", "session=fail")], "").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"], "auth_unavailable");
    }
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 4, "failures are never cached");
    // Unreachable and slow hooks: 503, within the hook's timeout.
    assert_eq!(post(app.addr, "/d", &[], "").await.status, 503);
    let start = Instant::now();
    assert_eq!(post(app.addr, "/w", &[], "").await.status, 503);
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[tokio::test]
async fn template_values_are_data_and_cannot_add_claims() {
    let b = backend::spawn().await;
    let yaml = "keys: [{ id: k, algorithm: HS256, secret: s }]\nauth_hooks:\n  key: { type: api_key, header: x-api-key, keys: [k1, k2], identity: { id: body:/userId, name: body:/name } }\nroutes: [{ name: r, path: /t, auth: key, tokens: { t: { key: k, ttl: 1m, claims: { sub: '{{ user.id }}', name: '{{ user.name }}', role: user } } }, response: { body: { token: '{{ tokens.t }}' } } }]\n";
    let app = spawn_app(&b.url(), yaml).await;
    let body = json!({"userId": "u1", "name": "x\", \"role\": \"admin\", \"y\": \""}).to_string();
    let r = post(app.addr, "/t", &[("x-api-key", "k2")], &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, payload) = parts(r.json()["token"].as_str().unwrap());
    assert_eq!(payload["role"], "user");
    assert_eq!(payload["name"], "x\", \"role\": \"admin\", \"y\": \"");
    assert_eq!(payload.as_object().unwrap().len(), 5, "sub, name, role, iat, exp: {payload}");
    let r = post(app.addr, "/t", &[("x-api-key", "k3")], &body).await;
    assert_eq!(r.status, 401);
    let r = post(app.addr, "/t", &[("x-api-key", "k1")], "{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["message"], "request body is not valid JSON");
}

#[tokio::test]
async fn tokens_are_reused_while_over_half_their_life_unless_they_hold_a_nonce() {
    let b = backend::spawn().await;
    let yaml = "keys: [{ id: k, algorithm: HS256, secret: s }]\nauth_hooks: { a: { type: none, identity: { id: header:x-user } } }\nroutes:\n  - { name: cached, path: /c, auth: a, cache_tokens: true, tokens: { t: { key: k, ttl: 1h, claims: { sub: '{{ user.id }}', room: '{{ query.room | \"lobby\" }}' } } }, response: { body: '{{ tokens.t }}', content_type: text/plain } }\n  - { name: nonce, path: /n, auth: a, cache_tokens: true, tokens: { t: { key: k, ttl: 1h, claims: { sub: '{{ user.id }}', jti: '{{ uuid }}' } } }, response: { body: '{{ tokens.t }}', content_type: text/plain } }\n";
    let app = spawn_app(&b.url(), yaml).await;
    let get = |path: &'static str, user: &'static str| {
        let addr = app.addr;
        async move { post(addr, path, &[("x-user", user)], "").await.text() }
    };
    let first = get("/c", "ann").await;
    assert_eq!(get("/c", "ann").await, first, "reused");
    assert_ne!(get("/c", "ben").await, first, "never served to another identity");
    assert_ne!(get("/c?room=kitchen", "ann").await, first, "a different input is a different token");
    assert_ne!(get("/n", "ann").await, get("/n", "ann").await, "a nonce makes every token fresh");
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_token_cache_total{result=\"hit\",route=\"cached\"} 1"), "{metrics}");
}

#[tokio::test]
async fn method_size_and_error_shapes() {
    let b = backend::spawn().await;
    let yaml = "limits: { token_route_body: 1KiB }\nkeys: [{ id: k, algorithm: HS256, secret: s }]\nauth_hooks: { a: { type: none, identity: { id: body:/id } } }\nroutes: [{ name: r, path: /t, methods: [POST, PUT], auth: a, tokens: { t: { key: k, ttl: 1m } }, response: { body: { ok: true } }, error_response: { body: { failed: '{{ error.code }}', status: '{{ error.status }}', why: 'Error: {{ error.message }}' } } }]\n";
    let app = spawn_app(&b.url(), yaml).await;
    let r = client::get(app.addr, "/t", &[]).await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST, PUT"));
    assert_eq!(
        r.json(),
        json!({"failed": "method_not_allowed", "status": 405, "why": "Error: method not allowed on this route"})
    );
    let big = format!("{{\"id\": \"{}\"}}", "x".repeat(2000));
    let r = post(app.addr, "/t", &[], &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["failed"], "payload_too_large");
    let r = post(app.addr, "/t", &[], "{}").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["why"], "Error: missing required field: id");
    let r = post(app.addr, "/t", &[], "{\"id\": 7}").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Other paths are still forwarded.
    assert_eq!(client::get(app.addr, "/t/other", &[]).await.unwrap().json()["uri"], "/t/other");
}

#[tokio::test]
async fn jwt_hook_checks_signature_issuer_audience_and_expiry() {
    let b = backend::spawn().await;
    let yaml = "keys: [{ id: k, algorithm: HS256, secret: s }]\nauth_hooks:\n  idp: { type: jwt, secret: idp-secret-0123456789, issuer: 'https://idp.example/', audience: my-app, algorithms: [HS256], identity: { id: claim:sub, email: claim:email } }\nroutes: [{ name: r, path: /t, auth: idp, tokens: { t: { key: k, ttl: 1m, claims: { sub: '{{ user.id }}', email: '{{ user.email }}' } } }, response: { body: '{{ tokens.t }}', content_type: text/plain } }]\n";
    let app = spawn_app(&b.url(), yaml).await;
    let idp = HS256Key::from_bytes(b"idp-secret-0123456789");
    let good =
        Claims::with_custom_claims(json!({"email": "a@example.com"}), jwt_simple::prelude::Duration::from_mins(5))
            .with_subject("idp-user")
            .with_issuer("https://idp.example/")
            .with_audience("my-app");
    let token = idp.authenticate(good.clone()).unwrap();
    let r = post(app.addr, "/t", &[("authorization", &format!("Bearer {token}"))], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(parts(&r.text()).1["email"], "a@example.com");

    let wrong_iss = idp.authenticate(good.clone().with_issuer("https://evil.example/")).unwrap();
    let wrong_key = HS256Key::from_bytes(b"other-secret-0123").authenticate(good.clone()).unwrap();
    // Hand-made and correctly signed: an expired token, and one whose `exp` is a string.
    let by_hand = |claims: String| hs256_by_hand(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, b"idp-secret-0123456789");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let base = r#""sub":"x","email":"x@example.com","iss":"https://idp.example/","aud":"my-app""#;
    let expired = by_hand(format!("{{{base},\"exp\":{}}}", now - 3600));
    let string_exp = by_hand(format!("{{{base},\"exp\":\"9999999999\"}}"));
    let valid_by_hand = by_hand(format!("{{{base},\"exp\":{}}}", now + 600));
    assert_eq!(post(app.addr, "/t", &[("authorization", &format!("Bearer {valid_by_hand}"))], "").await.status, 200);
    assert_eq!(
        post(app.addr, "/t", &[("authorization", &format!("bearer {valid_by_hand}"))], "").await.status,
        200,
        "the scheme in any letter case (RFC 9110 §11.1)"
    );
    for (what, bad) in [("issuer", wrong_iss), ("signature", wrong_key), ("expired", expired), ("exp type", string_exp)]
    {
        let r = post(app.addr, "/t", &[("authorization", &format!("Bearer {bad}"))], "").await;
        assert_eq!(r.status, 401, "{what}");
    }
    assert_eq!(post(app.addr, "/t", &[], "").await.status, 401, "no bearer");
}

/// A JWS signed with HS256 by hand: `header` and `claims` as JSON text.
fn hs256_by_hand(header: &str, claims: &str, secret: &[u8]) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let mac = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret), input.as_bytes());
    format!("{input}.{}", b64(mac.as_ref()))
}

/// RFC 7515 §4.1.11: a token whose `crit` names extensions the recipient does not understand
/// is invalid; the jwt hook understands none, so any `crit` is refused.
#[tokio::test]
async fn jwt_hook_refuses_a_token_with_critical_extensions() {
    let b = backend::spawn().await;
    let yaml = "keys: [{ id: k, algorithm: HS256, secret: s }]\nauth_hooks:\n  idp: { type: jwt, secret: idp-secret-0123456789, algorithms: [HS256], identity: { id: claim:sub } }\nroutes: [{ name: r, path: /t, auth: idp, tokens: { t: { key: k, ttl: 1m } }, response: { body: '{{ user.id }}', content_type: text/plain } }]\n";
    let app = spawn_app(&b.url(), yaml).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = format!("{{\"sub\":\"u1\",\"exp\":{}}}", now + 600);
    let secret = b"idp-secret-0123456789";
    let plain = hs256_by_hand(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, secret);
    let r = post(app.addr, "/t", &[("authorization", &format!("Bearer {plain}"))], "").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "u1"));
    for header in [
        r#"{"alg":"HS256","crit":["exp-ext"],"exp-ext":true}"#,
        r#"{"alg":"HS256","crit":["b64"],"b64":true}"#,
        r#"{"alg":"HS256","crit":[]}"#,
        r#"{"alg":"HS256","crit":"nonsense"}"#,
    ] {
        let token = hs256_by_hand(header, &claims, secret);
        let r = post(app.addr, "/t", &[("authorization", &format!("Bearer {token}"))], "").await;
        assert_eq!(r.status, 401, "{header}: {}", r.text());
    }
}

#[tokio::test]
async fn jwt_hook_fetches_the_idps_jwk_set() {
    let b = backend::spawn().await;
    // The IdP: another tokengate with an ES256 key, minting for whoever it is told.
    let dir = temp_dir("tokens-jwks-idp");
    std::fs::write(dir.join("idp.pem"), tokengate::keys::generate_pem(tokengate::config::Algorithm::ES256).unwrap())
        .unwrap();
    let idp_yaml = format!(
        "keys: [{{ id: idp-1, algorithm: ES256, private_key_file: {} }}]\nauth_hooks: {{ a: {{ type: none, identity: {{ id: header:x-sub }} }} }}\nroutes: [{{ name: login, path: /login, auth: a, tokens: {{ t: {{ key: idp-1, ttl: 5m, claims: {{ sub: '{{{{ user.id }}}}', iss: 'https://idp.example/', aud: my-app }} }} }}, response: {{ body: '{{{{ tokens.t }}}}', content_type: text/plain }} }}]\n",
        dir.join("idp.pem").display()
    );
    let idp = spawn_app(&b.url(), &idp_yaml).await;
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: s }}]\nauth_hooks:\n  idp: {{ type: jwt, jwks_url: 'http://{}/.well-known/jwks.json', issuer: 'https://idp.example/', audience: my-app, algorithms: [ES256], identity: {{ id: claim:sub }} }}\n  gone: {{ type: jwt, jwks_url: 'http://{}/jwks', algorithms: [ES256], identity: {{ id: claim:sub }} }}\nroutes:\n  - {{ name: r, path: /t, auth: idp, tokens: {{ t: {{ key: k, ttl: 1m, claims: {{ sub: '{{{{ user.id }}}}' }} }} }}, response: {{ body: '{{{{ user.id }}}}', content_type: text/plain }} }}\n  - {{ name: g, path: /g, auth: gone, tokens: {{ t: {{ key: k, ttl: 1m }} }} }}\n",
        idp.admin,
        crate::common::closed_port()
    );
    let app = spawn_app(&b.url(), &yaml).await;
    let idp_token = post(idp.addr, "/login", &[("x-sub", "idp-user-7")], "").await.text();
    for _ in 0..2 {
        let r = post(app.addr, "/t", &[("authorization", &format!("Bearer {idp_token}"))], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "idp-user-7");
    }
    // A token naming a kid the IdP does not publish: refused, not an outage.
    let (header, payload) = parts(&idp_token);
    let mut forged_header = header.clone();
    forged_header["kid"] = json!("unknown-kid");
    let enc = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let sig = idp_token.rsplit('.').next().unwrap();
    let forged = format!("{}.{}.{sig}", enc(&forged_header), enc(&payload));
    assert_eq!(post(app.addr, "/t", &[("authorization", &format!("Bearer {forged}"))], "").await.status, 401);
    // An unreachable JWKS endpoint fails closed with 503.
    assert_eq!(post(app.addr, "/g", &[("authorization", &format!("Bearer {idp_token}"))], "").await.status, 503);
}

#[tokio::test]
async fn a_flood_of_bad_cookies_does_not_evict_a_warm_session() {
    let b = backend::spawn().await;
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: s }}]\nauth_hooks:\n{}routes: [{{ name: chat, path: /t, auth: session, tokens: {{ token: {{ key: k, ttl: 1h }} }} }}]\n",
        session_hook(&b, "    cache: { ttl: 5m, negative_ttl: 5m, max_entries: 100 }\n")
    );
    let app = spawn_app(&b.url(), &yaml).await;
    assert_eq!(post(app.addr, "/t", &[("cookie", "session=warm")], "").await.status, 200);
    // Three times `max_entries` distinct credentials the session endpoint refuses.
    for i in 0..300 {
        let cookie = format!("bad={i}");
        assert_eq!(post(app.addr, "/t", &[("cookie", &cookie)], "").await.status, 401);
    }
    let calls = b.session_calls.load(Ordering::SeqCst);
    assert_eq!(calls, 301);
    assert_eq!(post(app.addr, "/t", &[("cookie", "session=warm")], "").await.status, 200);
    assert_eq!(b.session_calls.load(Ordering::SeqCst), calls, "the warm session was evicted by the flood");
}

/// A `none` hook without `identity` lets anyone in as nobody (Telesign's job has no user):
/// valid, and the token is made of the request alone. There is no user to key a limit or a
/// claim by, so `check` names such a mistake instead of a request failing on it.
#[tokio::test]
async fn an_anonymous_hook_mints_from_the_request_alone() {
    let b = backend::spawn().await;
    let yaml = "keys: [{ id: k, algorithm: HS256, secret: anon-secret-of-some-length }]\nauth_hooks: { anyone: { type: none } }\nroutes: [{ name: tel, path: '/v1/token/{phone}', methods: [GET], auth: anyone, tokens: { t: { key: k, ttl: 90s, claims: { phn: '{{ path.phone }}' } } }, response: { body: '{{ tokens.t }}', content_type: text/plain } }]\n";
    let app = spawn_app(&b.url(), yaml).await;
    let r = client::get(app.addr, "/v1/token/%2B15551234567", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let claims = verify_hs256(&r.text(), b"anon-secret-of-some-length");
    assert_eq!(claims.custom["phn"], "+15551234567");
    assert!(claims.subject.is_none(), "no user, no sub");
    assert_eq!(b.connections.load(Ordering::SeqCst), 0, "nothing, no session endpoint either, was asked");

    let dir = temp_dir("anonymous-check");
    for (what, route, error) in [
        (
            "a user claim",
            "tokens: { t: { key: k, ttl: 1m, claims: { sub: '{{ user.id }}' } } }",
            "routes[0].tokens.t.claims: reads user.*",
        ),
        (
            "a user in the response",
            "tokens: { t: { key: k, ttl: 1m } }, response: { body: { who: '{{ user.name | \"\" }}' } }",
            "routes[0].response.body: reads user.*",
        ),
        (
            "a per-user limit",
            "rate_limits: [u], tokens: { t: { key: k, ttl: 1m } }",
            "routes[0].rate_limits[0]: is keyed by user",
        ),
    ] {
        let file = dir.join("anon.yaml");
        std::fs::write(&file, format!("upstream: {{ url: 'http://127.0.0.1:1' }}\nkeys: [{{ id: k, algorithm: HS256, secret: s }}]\nrate_limits: {{ u: {{ key: user, rate: 1, per: 1s }} }}\nauth_hooks: {{ anyone: {{ type: none }} }}\nroutes: [{{ name: r, path: /t, auth: anyone, {route} }}]\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(error) && err.contains("has no identity"), "{what}: {err}");
    }
}

/// A user id is a string (a number becomes its decimal string): an object such as
/// `{"$ne": null}`, an array or a boolean never becomes a token's `sub`. From the request body
/// that is the caller's mistake (400); from a session endpoint, the hook's (503, fail closed).
#[tokio::test]
async fn a_user_id_is_a_string_or_the_request_is_refused() {
    let b = backend::spawn().await;
    let yaml = "keys: [{ id: k, algorithm: HS256, secret: signing-secret-0123 }]\nauth_hooks:\n  server: { type: api_key, header: x-api-key, keys: [key-0123456789], identity: { id: body:/userId } }\n  session: { type: http, url: '{URL}/api/me', forward_headers: [cookie], identity: { id: body:/id } }\nroutes:\n  - { name: s2s, path: /tokens, auth: server, tokens: { t: { key: k, ttl: 1m, claims: { sub: '{{ user.id }}' } } }, response: { body: '{{ tokens.t }}', content_type: text/plain } }\n  - { name: user, path: /t, auth: session, tokens: { t: { key: k, ttl: 1m, claims: { sub: '{{ user.id }}' } } }, response: { body: '{{ tokens.t }}', content_type: text/plain } }\n"
        .replace("{URL}", &b.url());
    let app = spawn_app(&b.url(), &yaml).await;
    let key = [("x-api-key", "key-0123456789")];
    for (user_id, sub) in [(r#""user-123""#, "user-123"), ("42", "42")] {
        let r = post(app.addr, "/tokens", &key, &format!(r#"{{"userId": {user_id}}}"#)).await;
        assert_eq!(r.status, 200, "{user_id}: {}", r.text());
        assert_eq!(verify_hs256(&r.text(), b"signing-secret-0123").subject.as_deref(), Some(sub));
    }
    for user_id in [r#"{"$ne": null}"#, r#"["a", "b"]"#, "true"] {
        let r = post(app.addr, "/tokens", &key, &format!(r#"{{"userId": {user_id}}}"#)).await;
        assert_eq!(r.status, 400, "{user_id}: {}", r.text());
        assert_eq!(r.json(), json!({"error": "invalid_request", "message": "field userId must be a string"}));
    }

    let r = post(app.addr, "/t", &[("cookie", "session=numeric-id")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(verify_hs256(&r.text(), b"signing-secret-0123").subject.as_deref(), Some("42"));
    let r = post(app.addr, "/t", &[("cookie", "session=object-id")], "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "auth_unavailable");
}

/// Token routes match the RFC 3986-normalized path: percent-encoded unreserved characters, dot
/// segments and repeated slashes cannot reach a backend's own copy of the route around
/// tokengate's auth and limits. Forwarded requests keep their bytes.
#[tokio::test]
async fn token_routes_match_the_normalized_path_and_forwarded_paths_keep_their_bytes() {
    let b = backend::spawn().await;
    let yaml = "keys: [{ id: k, algorithm: HS256, secret: s }]\nauth_hooks:\n  session: { type: http, url: '{URL}/api/me', forward_headers: [cookie], identity: { id: body:/id } }\nroutes: [{ name: chat, path: /api/auth/chat-token, auth: session, tokens: { t: { key: k, ttl: 1m } }, response: { body: '{{ user.id }}', content_type: text/plain } }]\n"
        .replace("{URL}", &b.url());
    let app = spawn_app(&b.url(), &yaml).await;
    for path in [
        "/api/auth/chat-token",
        "/api/auth/%63hat-token",
        "/api/auth/./chat-token",
        "/api/auth//chat-token",
        "/api/x/../auth/chat-token",
        "/api/auth/chat%2Dtoken",
    ] {
        let r = post(app.addr, path, &[], "").await;
        assert_eq!(r.status, 401, "{path} is the token route: {}", r.text());
        let r = post(app.addr, path, &[("cookie", "session=ann")], "").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ann"), "{path}");
    }
    let r = client::get(app.addr, "/x/%63/./y//z", &[]).await.unwrap();
    assert_eq!(r.json()["uri"], "/x/%63/./y//z", "forwarded as sent");
}

/// A token request whose body came whole with its head is read from the head itself (no
/// `http::Request`), a chunked one from hyper's: the claims read the same headers, query, path,
/// body and caller either way, and `header.<request id>` is the id the answer carries, sent or
/// generated.
#[tokio::test]
async fn a_token_request_reads_the_same_from_its_head_as_from_hyper() {
    let b = backend::spawn().await;
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: read-either-way-secret }}]\nauth_hooks:\n{}routes: [{{ name: r, path: '/t/{{who}}', methods: [POST], auth: session, tokens: {{ t: {{ key: k, ttl: 1m, claims: {{ dev: '{{{{ header.x-device }}}}', rid: '{{{{ header.x-request-id }}}}', q: '{{{{ query.v }}}}', p: '{{{{ path.who }}}}', b: '{{{{ body.a }}}}', u: '{{{{ user.id }}}}' }} }} }}, response: {{ body: '{{{{ tokens.t }}}}', content_type: text/plain }} }}]\n",
        session_hook(&b, "")
    );
    let app = spawn_app(&b.url(), &yaml).await;
    let head = "POST /t/me?v=1 HTTP/1.1\r\nHost: x\r\nX-Device: Phone 15\r\nCookie: session=alice\r\nConnection: close\r\nContent-Type: application/json\r\n";
    let body = r#"{"a": "z"}"#;
    let mut seen = Vec::new();
    for sent_id in [None, Some("client-id-1")] {
        let id_field = sent_id.map(|id| format!("X-Request-Id: {id}\r\n")).unwrap_or_default();
        let whole = format!("{head}{id_field}Content-Length: {}\r\n\r\n{body}", body.len());
        let chunked =
            format!("{head}{id_field}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
        for (path, raw) in [("head", whole), ("hyper", chunked)] {
            let answer = client::raw(app.addr, raw.as_bytes()).await;
            assert_eq!(client::status(&answer), "200", "{path}: {answer}");
            let (fields, token) = answer.split_once("\r\n\r\n").expect("a head");
            let id = fields
                .lines()
                .find_map(|l| l.strip_prefix("x-request-id: "))
                .unwrap_or_else(|| panic!("{path}: no request id in {fields}"));
            let claims = verify_hs256(token, b"read-either-way-secret").custom;
            assert_eq!(claims["rid"], id, "{path}: the claim reads the id the answer carries");
            if let Some(sent) = sent_id {
                assert_eq!(id, sent, "{path}: a usable id is kept");
            }
            seen.push((path, claims));
        }
    }
    for (path, claims) in &seen {
        for (claim, want) in [("dev", "Phone 15"), ("q", "1"), ("p", "me"), ("b", "z"), ("u", "alice")] {
            assert_eq!(claims[claim], want, "{path}: {claim}");
        }
    }
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 1, "one caller, one cache entry, whichever path read it");
}
