//! Forward auth (SPEC §3 "Forward auth"): the decision endpoint's contract, as a proxy in front
//! (nginx `auth_request`, Traefik, Caddy) calls it. Assertions are verified with an independent
//! JWT implementation (jwt-simple) against the served JWK set.

use std::sync::atomic::Ordering;

use base64::Engine;
use bytes::Bytes;
use http::Method;
use jwt_simple::prelude::*;
use serde_json::Value;

use crate::common::{backend, client, closed_port, spawn_app, temp_dir};

const APP: &str = "https://app.example.com";

/// A forward-auth entry `app` at `/_auth` behind the fake backend's session endpoint, an ES256
/// assertion, a per-user limit of 2 a minute; `trusted` is `forwarding.trusted_proxies`.
fn yaml(hook_url: &str, key_file: &str, trusted: &str, compat: &str) -> String {
    format!(
        r#"forwarding: {{ trusted_proxies: [{trusted}] }}
keys: [{{ id: fa-es, algorithm: ES256, private_key_file: {key_file} }}]
rate_limits:
  per_user: {{ key: user, rate: 2, per: 1m }}
auth_hooks:
  session: {{ type: http, url: '{hook_url}/api/me', forward_headers: [cookie], identity: {{ id: body:/id, email: body:/email, team: body:/team }} }}
forward_auth:
  - name: app
    path: /_auth
    auth: session
    rate_limits: [per_user]
    original_path: /orgs/{{org}}/items
    response_headers:
      X-Auth-Request-User: "{{{{ user.id }}}}"
      X-Auth-Request-Email: "{{{{ user.email }}}}"
      X-Auth-Request-Team: "{{{{ user.team }}}}"
      X-Auth-Request-Org: "{{{{ path.org }}}}"
      X-Auth-Request-Item: "{{{{ query.id }}}}"
      X-Auth-Request-Token: "{{{{ tokens.assertion }}}}"
    tokens:
      assertion: {{ key: fa-es, ttl: 60s, claims: {{ sub: "{{{{ user.id }}}}", aud: my-app }} }}
    cors: {{ allowed_origins: ['{APP}'], allow_credentials: true }}
    compat: {compat}
"#
    )
}

fn key_file(name: &str) -> String {
    let dir = temp_dir(name);
    let path = dir.join("es256.pem");
    let alg = serde_json::from_value(serde_json::json!("ES256")).unwrap();
    std::fs::write(&path, tokengate::keys::generate_pem(alg).unwrap()).unwrap();
    path.display().to_string()
}

async fn ask(addr: std::net::SocketAddr, method: Method, headers: &[(&str, &str)]) -> client::Resp {
    client::request(addr, method, "/_auth", headers, Bytes::new()).await.unwrap()
}

/// The assertion's claims, verified against the JWK set on the admin listener.
async fn verify(admin: std::net::SocketAddr, token: &str) -> JWTClaims<Value> {
    let jwks = client::get(admin, "/.well-known/jwks.json", &[]).await.unwrap().json();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kid"], "fa-es");
    let coord = |f: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
    let point = [vec![4u8], coord("x"), coord("y")].concat();
    let options = VerificationOptions {
        allowed_audiences: Some(std::collections::HashSet::from(["my-app".to_owned()])),
        ..Default::default()
    };
    ES256PublicKey::from_bytes(&point).unwrap().verify_token::<Value>(token, Some(options)).unwrap()
}

#[tokio::test]
async fn allow_deny_limit_and_a_failing_hook_each_get_their_answer_never_forwarded() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &yaml(&b.url(), &key_file("fa-contract"), "127.0.0.1/32", "standard")).await;
    let original = [("x-forwarded-method", "GET"), ("x-forwarded-uri", "/orgs/acme/items?id=7")];
    let with = |cookie: &'static str| {
        let mut h = original.to_vec();
        h.push(("cookie", cookie));
        h
    };

    let allow = ask(app.addr, Method::GET, &with("session=ann")).await;
    assert_eq!(allow.status, 200, "{}", allow.text());
    assert!(allow.body.is_empty(), "an allow has no body: {}", allow.text());
    assert_eq!(allow.header("x-auth-request-user"), Some("ann"));
    assert_eq!(allow.header("x-auth-request-email"), Some("ann@example.com"));
    assert_eq!(allow.header("x-auth-request-team"), None, "a missing value leaves its header out");
    assert_eq!(allow.header("x-auth-request-org"), Some("acme"), "path.* from the original request");
    assert_eq!(allow.header("x-auth-request-item"), Some("7"), "query.* from the original request");
    assert_eq!(allow.header("cache-control"), Some("no-store"));
    let claims = verify(app.admin, allow.header("x-auth-request-token").unwrap()).await;
    assert_eq!(claims.subject.as_deref(), Some("ann"));
    let lifetime = claims.expires_at.unwrap().as_secs() - claims.issued_at.unwrap().as_secs();
    assert_eq!(lifetime, 60);

    let deny = ask(app.addr, Method::GET, &original).await;
    assert_eq!(deny.status, 401);
    assert_eq!(deny.json()["error"], "unauthorized");
    assert!(deny.header("x-auth-request-user").is_none());

    assert_eq!(ask(app.addr, Method::GET, &with("session=ann")).await.status, 200);
    let limited = ask(app.addr, Method::GET, &with("session=ann")).await;
    assert_eq!(limited.status, 429, "ann's third decision in a minute");
    assert_eq!(limited.json()["error"], "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(limited.header("ratelimit-policy"), Some("\"per_user\";q=2;w=60"));
    assert!(limited.header("ratelimit-limit").is_some());
    assert_eq!(ask(app.addr, Method::GET, &with("session=ben")).await.status, 200, "ben has his own bucket");

    let failed = ask(app.addr, Method::GET, &with("session=fail")).await;
    assert_eq!(failed.status, 503, "fail closed");
    assert_eq!(failed.json()["error"], "auth_unavailable");

    // The decision endpoint answers every method itself (the fake backend would echo it).
    let post = ask(app.addr, Method::POST, &with("session=cat")).await;
    assert_eq!((post.status.as_u16(), post.body.len()), (200, 0));

    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    for (outcome, n) in [("allow", 4), ("deny", 1), ("limited", 1), ("error", 1)] {
        let line = format!("tokengate_forward_auth_total{{name=\"app\",outcome=\"{outcome}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("tokengate_requests_total{route=\"app\",status=\"429\"} 1"), "{metrics}");
}

#[tokio::test]
async fn the_original_request_is_believed_only_from_a_trusted_proxy() {
    let b = backend::spawn().await;
    let key = key_file("fa-trust");
    let forged =
        [("cookie", "session=ann"), ("x-forwarded-method", "GET"), ("x-forwarded-uri", "/orgs/acme/items?id=7")];
    // 10.0.0.0/8 is trusted, the test's loopback peer is not: the headers describe nothing, so
    // the auth request itself (/_auth, no query) is what templates read.
    let untrusted = spawn_app(&b.url(), &yaml(&b.url(), &key, "10.0.0.0/8", "standard")).await;
    let r = ask(untrusted.addr, Method::GET, &forged).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-auth-request-user"), Some("ann"));
    assert_eq!(r.header("x-auth-request-org"), None);
    assert_eq!(r.header("x-auth-request-item"), None);

    // A forged preflight (original method OPTIONS, with Origin and Access-Control-Request-Method)
    // from an untrusted peer is not let through without a session.
    let preflight = [
        ("origin", APP),
        ("access-control-request-method", "POST"),
        ("x-forwarded-method", "OPTIONS"),
        ("x-original-method", "OPTIONS"),
    ];
    let calls = b.session_calls.load(Ordering::SeqCst);
    let r = ask(untrusted.addr, Method::GET, &preflight).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(APP), "a readable 401 for the page");
    assert_eq!(b.session_calls.load(Ordering::SeqCst), calls + 1, "the hook was asked");

    // From a trusted proxy the same preflight is allowed without the hook, and only for a listed
    // origin.
    let trusted = spawn_app(&b.url(), &yaml(&b.url(), &key, "127.0.0.1/32", "standard")).await;
    let calls = b.session_calls.load(Ordering::SeqCst);
    let r = ask(trusted.addr, Method::GET, &preflight).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let mut evil = preflight.to_vec();
    evil[0] = ("origin", "https://evil.example.net");
    let r = ask(trusted.addr, Method::GET, &evil).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "origin_not_allowed");
    assert_eq!(b.session_calls.load(Ordering::SeqCst), calls, "no preflight reached the hook");
    // Traefik and Caddy set X-Forwarded-*: nginx's family, which such a proxy passes on from the
    // client as it came, is not read.
    let nginx_style = [("cookie", "session=ann"), ("x-original-url", "https://app.example.com/orgs/ibm/items?id=9")];
    let r = ask(trusted.addr, Method::GET, &nginx_style).await;
    assert_eq!((r.header("x-auth-request-org"), r.header("x-auth-request-item")), (None, None));
}

#[tokio::test]
async fn compat_nginx_folds_429_and_503_into_403_with_the_real_status() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &yaml(&b.url(), &key_file("fa-nginx"), "127.0.0.1/32", "nginx")).await;
    for _ in 0..2 {
        assert_eq!(ask(app.addr, Method::GET, &[("cookie", "session=ann")]).await.status, 200);
    }
    let limited = ask(app.addr, Method::GET, &[("cookie", "session=ann")]).await;
    assert_eq!(limited.status, 403);
    assert_eq!(limited.header("x-auth-request-status"), Some("429"));
    let retry: u64 = limited.header("x-auth-request-retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let failed = ask(app.addr, Method::GET, &[("cookie", "session=fail")]).await;
    assert_eq!((failed.status.as_u16(), failed.header("x-auth-request-status")), (403, Some("503")));
    let denied = ask(app.addr, Method::GET, &[]).await;
    assert_eq!((denied.status.as_u16(), denied.header("x-auth-request-status")), (401, None), "nginx reads 401");
    // nginx describes the original request with X-Original-*; it passes a client's own
    // X-Forwarded-Method on untouched, so that one must not turn a GET into a preflight.
    let forged = [
        ("origin", APP),
        ("access-control-request-method", "GET"),
        ("x-forwarded-method", "OPTIONS"),
        ("x-original-method", "GET"),
        ("x-original-url", "http://app.example.com/orgs/ibm/items?id=9"),
    ];
    let r = ask(app.addr, Method::GET, &forged).await;
    assert_eq!(r.status, 401, "a GET without a session: {}", r.text());
    let mut honest = forged.to_vec();
    honest[3] = ("x-original-method", "OPTIONS");
    assert_eq!(ask(app.addr, Method::GET, &honest).await.status, 200, "a real preflight, as nginx describes it");
    let r = ask(app.addr, Method::GET, &[("cookie", "session=cat"), forged[4]]).await;
    assert_eq!((r.header("x-auth-request-org"), r.header("x-auth-request-item")), (Some("ibm"), Some("9")));
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_forward_auth_total{name=\"app\",outcome=\"limited\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_prefix_entry_reads_the_original_path_after_it_as_envoy_sends_it() {
    let b = backend::spawn().await;
    let yaml =
        yaml(&b.url(), &key_file("fa-envoy"), "127.0.0.1/32", "standard").replace("path: /_auth", "path: /_envoy/*");
    let app = spawn_app(&b.url(), &yaml).await;
    // Envoy's ext_authz: path_prefix + the original path and query, the original method, no
    // X-Forwarded-Method.
    let r = client::request(
        app.addr,
        Method::DELETE,
        "/_envoy/orgs/acme/items?id=7",
        &[("cookie", "session=ann")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.header("x-auth-request-org"), r.header("x-auth-request-item")), (Some("acme"), Some("7")));
    let r = client::get(app.addr, "/_envoy", &[("cookie", "session=ann")]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.header("x-auth-request-org")), (200, None));
    // Not under the prefix: forwarded to the app (the fake backend echoes it).
    let r = client::get(app.addr, "/_envoyx/a", &[]).await.unwrap();
    assert_eq!(r.json()["uri"], "/_envoyx/a");
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_forward_auth_total{name=\"app\",outcome=\"allow\"} 2"), "{metrics}");
}

#[tokio::test]
async fn check_names_the_keys_of_a_bad_entry() {
    let key = key_file("fa-check");
    let bad = format!(
        "keys: [{{ id: fa-es, algorithm: ES256, private_key_file: {key} }}]\n\
         auth_hooks: {{ anyone: {{ type: none }}, s: {{ type: http, url: 'http://127.0.0.1:1/me', identity: {{ id: body:/id }} }} }}\n\
         routes: [{{ name: chat, path: /t, auth: s, tokens: {{ t: {{ key: fa-es, ttl: 1m }} }} }}]\n\
         forward_auth:\n\
         \x20 - {{ name: chat, path: /t, auth: nobody, tokens: {{ a: {{ key: gone, ttl: 1m }} }} }}\n\
         \x20 - {{ name: anon, path: /_auth, auth: anyone, response_headers: {{ X-User: '{{{{ user.id }}}}' }} }}\n"
    );
    let yaml = crate::common::config_yaml(&format!("http://{}", closed_port()), &bad);
    let errors = match tokengate::config::load_str(&yaml, "t.yaml", std::path::Path::new(".")) {
        Err(e) => e.to_string(),
        Ok(loaded) => {
            let stores = tokengate::stores::Stores::default();
            let build = stores.begin();
            match tokengate::gateway::Gateway::build(loaded, &build, &tokengate::metrics::Metrics::new()) {
                Err(errors) => {
                    errors.iter().map(|e| format!("{}: {}", e.path, e.reason)).collect::<Vec<_>>().join("\n")
                }
                Ok(_) => panic!("a bad forward_auth entry was accepted"),
            }
        }
    };
    for expected in
        ["forward_auth[0].name", "forward_auth[0].path", "forward_auth[0].auth", "forward_auth[0].tokens.a.key"]
    {
        assert!(errors.contains(expected), "{expected} not named in:\n{errors}");
    }
    // Once the first entry is fixed, the anonymous hook's user.* is named at build time.
    let fixed = bad.replace(
        "name: chat, path: /t, auth: nobody, tokens: { a: { key: gone, ttl: 1m } }",
        "name: ok, path: /ok, auth: s",
    );
    let yaml = crate::common::config_yaml(&format!("http://{}", closed_port()), &fixed);
    let loaded = tokengate::config::load_str(&yaml, "t.yaml", std::path::Path::new(".")).unwrap();
    let stores = tokengate::stores::Stores::default();
    let build = stores.begin();
    let errors = tokengate::gateway::Gateway::build(loaded, &build, &tokengate::metrics::Metrics::new())
        .err()
        .expect("user.* behind type none");
    assert_eq!(errors[0].path, "forward_auth[1].response_headers.X-User", "{errors:?}");
}
