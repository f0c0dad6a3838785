//! The vendor jobs (shared/seeds/): each shipped config file, run by the real binary in front of
//! the fake backend, checked against its tutorial. Tokens are verified with jwt-simple, an
//! implementation independent of the one that signed them.

use base64::Engine;
use bytes::Bytes;
use http::Method;
use jwt_simple::prelude::*;
use serde_json::Value;

use crate::common::{backend, client, Binary};

/// Decodes a JWT's header and payload without verifying (the verification is separate).
pub fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let mut next = || {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(it.next().expect("a JWT part")).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    (next(), next())
}

/// Verifies an HS256 token with jwt-simple and returns its custom claims.
pub fn verify_hs256(token: &str, secret: &[u8]) -> JWTClaims<Value> {
    HS256Key::from_bytes(secret)
        .verify_token::<Value>(token, None)
        .unwrap_or_else(|e| panic!("token does not verify: {e}"))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn post(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> client::Resp {
    client::request(addr, Method::POST, path, headers, Bytes::from(body.to_owned())).await.unwrap()
}

#[tokio::test]
async fn contactsmanager_tutorial() {
    let b = backend::spawn().await;
    let envs = [("CM_API_KEY", "cm-key-123"), ("CM_API_SECRET", "cm-secret-456"), ("CM_ORGANIZATION_ID", "org-789")];
    let bin = Binary::start_file("seed-cm", "config/contactsmanager.yaml", &b.url(), &envs).await;
    let r = post(
        bin.addr,
        "/generate-token",
        &[("cookie", "session=user-123"), ("content-type", "application/json")],
        r#"{"deviceInfo": {"device_name": "iPhone 15", "os_version": "iOS 17.5"}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Token generated for user user-123");
    let token = body["token"].as_str().unwrap();
    let claims = verify_hs256(token, b"cm-secret-456");
    let (_, payload) = parts(token);
    assert_eq!(payload["org_id"], "org-789");
    assert_eq!(payload["api_key"], "cm-key-123");
    assert_eq!(payload["user_id"], "user-123");
    assert_eq!(payload["device_info"]["device_name"], "iPhone 15");
    assert!(uuid::Uuid::parse_str(payload["jti"].as_str().unwrap()).is_ok());
    let (iat, exp) = (payload["iat"].as_u64().unwrap(), payload["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 86_400);
    assert!(iat.abs_diff(now()) <= 5);
    assert_eq!(body["expiresAt"], exp);
    assert!(claims.expires_at.is_some());

    // Errors in the tutorial's shape.
    let r = post(bin.addr, "/generate-token", &[], "{}").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), serde_json::json!({"message": "Error: authentication required", "success": false}));
    let r = client::get(bin.addr, "/generate-token", &[("cookie", "session=user-123")]).await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.json()["success"], false);
}

#[tokio::test]
async fn chatsdk_server_to_server_and_user_facing() {
    let b = backend::spawn().await;
    let envs = [("CHATSDK_API_KEY", "chatsdk_abc123"), ("CHATSDK_JWT_SECRET", "chat-signing-secret")];
    let bin = Binary::start_file("seed-chatsdk", "config/chatsdk.yaml", &b.url(), &envs).await;
    let body = r#"{"userId": "user-123", "name": "Alice Johnson", "image": "https://i/a.png", "custom": {"department": "Engineering", "role": "Senior Developer"}}"#;
    let r =
        post(bin.addr, "/tokens", &[("x-api-key", "chatsdk_abc123"), ("content-type", "application/json")], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["user"], serde_json::json!({"id": "user-123", "name": "Alice Johnson", "image": "https://i/a.png"}));
    assert_eq!(j["expiresIn"], 86_400);
    let (_, token) = parts(j["token"].as_str().unwrap());
    assert_eq!(token["sub"], "user-123");
    assert_eq!(token["custom"]["department"], "Engineering");
    let ws = verify_hs256(j["wsToken"].as_str().unwrap(), b"chat-signing-secret");
    assert_eq!(ws.subject.as_deref(), Some("user-123"));
    assert_eq!(ws.custom["channel"], "user:user-123");
    verify_hs256(j["token"].as_str().unwrap(), b"chat-signing-secret");

    let r = post(bin.addr, "/tokens", &[("x-api-key", "wrong")], body).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    let r = post(bin.addr, "/tokens", &[("x-api-key", "chatsdk_abc123")], r#"{"name": "no id"}"#).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), serde_json::json!({"error": "invalid_request", "message": "missing required field: userId"}));

    // The user-facing route: identity from the app's session, same answer shape.
    let r = post(bin.addr, "/api/auth/chat-token", &[("cookie", "session=bob")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["user"]["id"], "bob");
    assert_eq!(j["user"]["name"], "Name bob");
    assert_eq!(verify_hs256(j["token"].as_str().unwrap(), b"chat-signing-secret").subject.as_deref(), Some("bob"));
    let r = post(bin.addr, "/api/auth/chat-token", &[], "").await;
    assert_eq!(r.status, 401);
    // 10 per 15 minutes per user: bob has used 1.
    for _ in 0..9 {
        assert_eq!(post(bin.addr, "/api/auth/chat-token", &[("cookie", "session=bob")], "").await.status, 200);
    }
    let r = post(bin.addr, "/api/auth/chat-token", &[("cookie", "session=bob")], "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-limit"), Some("10"));
    assert_eq!(post(bin.addr, "/api/auth/chat-token", &[("cookie", "session=carl")], "").await.status, 200);
}

#[tokio::test]
async fn dotdigital_challenge_jwt() {
    let b = backend::spawn().await;
    let envs = [
        ("DOTDIGITAL_ISSUER", "https://api.comapi.com/defaultauth"),
        ("DOTDIGITAL_AUDIENCE", "https://api.comapi.com"),
        ("DOTDIGITAL_SHARED_SECRET", "deadbeefcafe"),
        ("DOTDIGITAL_ID_CLAIM", "profile_id"),
    ];
    let bin = Binary::start_file("seed-dotdigital", "config/dotdigital.yaml", &b.url(), &envs).await;
    let r = client::get(bin.addr, "/api/push/jwt?nonce=n-0nce%2Fx", &[("cookie", "session=carol")]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    // The shared secret is UTF-8 text, even when it looks like hex.
    let claims = verify_hs256(&token, b"deadbeefcafe");
    let (header, payload) = parts(&token);
    assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
    assert_eq!(payload["nonce"], "n-0nce/x");
    assert_eq!(payload["profile_id"], "carol", "the configurable ID claim");
    assert!(payload.get("sub").is_none());
    assert_eq!(claims.issuer.as_deref(), Some("https://api.comapi.com/defaultauth"));
    assert_eq!(payload["aud"], "https://api.comapi.com");
    assert_eq!(payload["exp"].as_u64().unwrap() - payload["iat"].as_u64().unwrap(), 30 * 86_400);

    let r = client::get(bin.addr, "/api/push/jwt", &[("cookie", "session=carol")]).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["message"], "missing required field: nonce");
}

#[tokio::test]
async fn telesign_app_verify() {
    let b = backend::spawn().await;
    let key = b"telesign secret key bytes \x00\xff";
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let envs = [("TELESIGN_CUSTOMER_ID", "CUST-42"), ("TELESIGN_KEY", key_b64.as_str())];
    let bin = Binary::start_file("seed-telesign", "config/telesign.yaml", &b.url(), &envs).await;

    let r = client::get(bin.addr, "/v1/token/15555551234/xid-777", &[("cookie", "session=dan")]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let token = r.text();
    let claims = verify_hs256(&token, key);
    let (header, payload) = parts(&token);
    assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
    assert_eq!(claims.issuer.as_deref(), Some("CUST-42"));
    assert_eq!(payload["phn"], "15555551234");
    assert_eq!(payload["xid"], "xid-777");
    let (iat, exp) = (payload["iat"].as_u64().unwrap(), payload["exp"].as_u64().unwrap());
    assert_eq!(exp, iat + 90);
    assert!((now() - 10).abs_diff(iat) <= 3, "iat is now - 10 s");

    // 1 request per second per client, as the tutorial's limiter.
    let r = client::get(bin.addr, "/v1/token/15555551234", &[("cookie", "session=dan")]).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = client::get(bin.addr, "/v1/token/15555551234", &[("cookie", "session=dan")]).await.unwrap();
    let (_, payload) = parts(&r.text());
    assert!(uuid::Uuid::parse_str(payload["xid"].as_str().unwrap()).is_ok(), "a fresh xid when absent");
    let r = client::request(bin.addr, Method::POST, "/v1/token/1555", &[("cookie", "session=dan")], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
}

#[tokio::test]
async fn stream_user_token() {
    let b = backend::spawn().await;
    let envs = [("STREAM_API_KEY", "stream-public-key"), ("STREAM_API_SECRET", "stream-api-secret-0123")];
    let bin = Binary::start_file("seed-stream", "config/stream.yaml", &b.url(), &envs).await;
    let j = post(bin.addr, "/api/stream/token", &[("cookie", "session=eve")], "").await.json();
    assert_eq!(j["apiKey"], "stream-public-key");
    let claims = verify_hs256(j["token"].as_str().unwrap(), b"stream-api-secret-0123");
    assert_eq!(claims.custom["user_id"], "eve");
}

#[tokio::test]
async fn centrifugo_connection_tokens_hs256_and_es256_through_the_jwk_set() {
    let b = backend::spawn().await;
    let envs = [("CENTRIFUGO_TOKEN_HMAC_SECRET_KEY", "centrifugo-secret-0123")];
    let bin = Binary::start_file("seed-centrifugo", "config/centrifugo.yaml", &b.url(), &envs).await;
    let j = post(bin.addr, "/api/centrifugo/token", &[("cookie", "session=fred")], "").await.json();
    let claims = verify_hs256(j["token"].as_str().unwrap(), b"centrifugo-secret-0123");
    assert_eq!(claims.subject.as_deref(), Some("fred"));
    assert_eq!(claims.custom["channels"], serde_json::json!(["personal:#fred"]));
    assert_eq!(claims.custom["info"]["name"], "Name fred");

    let dir = crate::common::temp_dir("seed-centrifugo-es");
    let key = dir.join("es256.pem");
    std::fs::write(
        &key,
        tokengate::keys::generate_pem(serde_json::from_value(serde_json::json!("ES256")).unwrap()).unwrap(),
    )
    .unwrap();
    let envs = [("CENTRIFUGO_PRIVATE_KEY_FILE", key.to_str().unwrap())];
    let bin = Binary::start_file("seed-centrifugo-es256", "config/centrifugo-es256.yaml", &b.url(), &envs).await;
    let token = post(bin.addr, "/api/centrifugo/token", &[("cookie", "session=gus")], "").await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // What Centrifugo does: fetch the JWK set, pick the key by kid, verify.
    let jwks = client::get(bin.addr, "/.well-known/jwks.json", &[]).await.unwrap().json();
    let (header, _) = parts(&token);
    assert_eq!(header["kid"], "centrifugo-es256-1");
    let jwk = &jwks["keys"][0];
    let coord = |f: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
    let point = [vec![4u8], coord("x"), coord("y")].concat();
    let claims = ES256PublicKey::from_bytes(&point).unwrap().verify_token::<Value>(&token, None).unwrap();
    assert_eq!(claims.subject.as_deref(), Some("gus"));
}

#[tokio::test]
async fn twilio_access_token() {
    let b = backend::spawn().await;
    let envs = [
        ("TWILIO_ACCOUNT_SID", "AC0123"),
        ("TWILIO_API_KEY_SID", "SK4567"),
        ("TWILIO_API_KEY_SECRET", "twilio-api-key-secret"),
        ("TWILIO_CONVERSATIONS_SERVICE_SID", "IS89"),
    ];
    let bin = Binary::start_file("seed-twilio", "config/twilio.yaml", &b.url(), &envs).await;
    let j = post(bin.addr, "/api/twilio/token", &[("cookie", "session=hal")], "").await.json();
    let token = j["token"].as_str().unwrap();
    let claims = verify_hs256(token, b"twilio-api-key-secret");
    let (header, payload) = parts(token);
    assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT", "cty": "twilio-fpa;v=1"}));
    assert_eq!(claims.issuer.as_deref(), Some("SK4567"));
    assert_eq!(claims.subject.as_deref(), Some("AC0123"));
    assert_eq!(payload["jti"], format!("SK4567-{}", payload["iat"]));
    assert_eq!(payload["grants"]["identity"], "hal");
    assert_eq!(payload["grants"]["chat"]["service_sid"], "IS89");
}

#[tokio::test]
async fn livekit_room_token() {
    let b = backend::spawn().await;
    let secret = "livekit-secret-for-the-seed-test-0123";
    let envs = [("LIVEKIT_API_KEY", "APIseed"), ("LIVEKIT_API_SECRET", secret), ("LIVEKIT_URL", "wss://lk.test")];
    let bin = Binary::start_file("seed-livekit", "config/livekit.yaml", &b.url(), &envs).await;
    let j = post(bin.addr, "/api/livekit/token", &[("cookie", "session=lena")], r#"{"room":"standup"}"#).await.json();
    let claims = verify_hs256(j["token"].as_str().unwrap(), secret.as_bytes());
    assert_eq!(claims.issuer.as_deref(), Some("APIseed"));
    assert_eq!(claims.subject.as_deref(), Some("lena"));
    assert_eq!(claims.custom["video"]["room"], "standup");
    assert_eq!(claims.custom["video"]["roomJoin"], true);
    let (_, payload) = parts(j["token"].as_str().unwrap());
    assert_eq!(payload["exp"].as_u64().unwrap() - payload["nbf"].as_u64().unwrap(), 6 * 3600);
    let r = post(bin.addr, "/api/livekit/token", &[("cookie", "session=lena")], "{}").await;
    assert_eq!(r.status, 400, "a room is required");
}

#[tokio::test]
async fn firebase_custom_token_from_the_service_account_file() {
    use jwt_simple::prelude::*;
    let b = backend::spawn().await;
    let dir = crate::common::temp_dir("seed-firebase");
    let file = crate::cli::service_account_file(&dir);
    let account: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let envs = [("FIREBASE_SERVICE_ACCOUNT_FILE", file.to_str().unwrap())];
    let bin = Binary::start_file("seed-firebase", "config/firebase.yaml", &b.url(), &envs).await;
    let j = post(bin.addr, "/api/firebase/token", &[("cookie", "session=fiona")], "").await.json();
    let token = j["token"].as_str().unwrap();
    let (header, payload) = parts(token);
    assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "key-id-1"}));
    let public = RS256KeyPair::from_pem(account["private_key"].as_str().unwrap()).unwrap().public_key();
    let options = VerificationOptions {
        allowed_audiences: Some(HashSet::from_strings(&[
            "https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit",
        ])),
        ..Default::default()
    };
    let claims = public.verify_token::<Value>(token, Some(options)).unwrap();
    assert_eq!(claims.issuer.as_deref(), Some("svc@p.iam.gserviceaccount.com"));
    assert_eq!(claims.subject.as_deref(), Some("svc@p.iam.gserviceaccount.com"));
    assert_eq!(claims.custom["uid"], "fiona");
    assert_eq!(claims.custom["claims"]["name"], "Name fiona");
    assert_eq!(payload["exp"].as_u64().unwrap() - payload["iat"].as_u64().unwrap(), 3600);
}

#[tokio::test]
async fn supabase_user_jwt() {
    let b = backend::spawn().await;
    let secret = "super-secret-jwt-token-with-at-least-32-characters";
    let envs = [("SUPABASE_URL", "https://abcd.supabase.co"), ("SUPABASE_JWT_SECRET", secret)];
    let bin = Binary::start_file("seed-supabase", "config/supabase.yaml", &b.url(), &envs).await;
    let j = post(bin.addr, "/api/supabase/token", &[("cookie", "session=sam")], "").await.json();
    assert_eq!((j["token_type"].as_str(), j["expires_in"].as_u64()), (Some("bearer"), Some(3600)));
    let token = j["access_token"].as_str().unwrap();
    let key = HS256Key::from_bytes(secret.as_bytes());
    let options = VerificationOptions {
        allowed_audiences: Some(HashSet::from_strings(&["authenticated"])),
        allowed_issuers: Some(HashSet::from_strings(&["https://abcd.supabase.co/auth/v1"])),
        ..Default::default()
    };
    let claims = key.verify_token::<Value>(token, Some(options)).unwrap();
    assert_eq!(claims.subject.as_deref(), Some("sam"));
    assert_eq!(claims.custom["role"], "authenticated");
    assert_eq!(claims.custom["email"], "sam@example.com");
    assert_eq!(parts(token).0, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
}

#[tokio::test]
async fn ably_jwt_for_an_auth_url() {
    let b = backend::spawn().await;
    let envs = [("ABLY_KEY_NAME", "appId1.keyId1"), ("ABLY_KEY_SECRET", "ably-key-secret-0123")];
    let bin = Binary::start_file("seed-ably", "config/ably.yaml", &b.url(), &envs).await;
    let r = client::get(bin.addr, "/api/ably/token", &[("cookie", "session=abe")]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/jwt"));
    let token = r.text();
    let claims = verify_hs256(&token, b"ably-key-secret-0123");
    assert_eq!(claims.custom["x-ably-clientId"], "abe");
    let capability: Value = serde_json::from_str(claims.custom["x-ably-capability"].as_str().unwrap()).unwrap();
    assert_eq!(capability, serde_json::json!({"chat:*": ["subscribe", "publish", "presence"]}));
    assert_eq!(parts(&token).0, serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "appId1.keyId1"}));
}

#[tokio::test]
async fn mux_signed_playback_tokens() {
    let b = backend::spawn().await;
    let pem = tokengate::keys::generate_pem(tokengate::config::Algorithm::RS256).unwrap();
    let key_base64 = base64::engine::general_purpose::STANDARD.encode(&pem);
    let envs = [("MUX_SIGNING_KEY_ID", "sk-1"), ("MUX_SIGNING_KEY_PRIVATE_KEY", key_base64.as_str())];
    let bin = Binary::start_file("seed-mux", "config/mux.yaml", &b.url(), &envs).await;
    let r = client::get(bin.addr, "/api/mux/playback/pb-9", &[("cookie", "session=max")]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let public = RS256KeyPair::from_pem(&pem).unwrap().public_key();
    for (name, aud) in [("video", "v"), ("thumbnail", "t"), ("storyboard", "s")] {
        let token = j["tokens"][name].as_str().unwrap();
        let options =
            VerificationOptions { allowed_audiences: Some(HashSet::from_strings(&[aud])), ..Default::default() };
        let claims = public.verify_token::<Value>(token, Some(options)).unwrap();
        assert_eq!(claims.subject.as_deref(), Some("pb-9"), "{name}");
        assert_eq!(claims.custom["kid"], "sk-1", "{name}: the signing key id, as a claim");
        assert_eq!(parts(token).0, serde_json::json!({"alg": "RS256", "typ": "JWT"}));
    }
}
