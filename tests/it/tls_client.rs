//! tokengate as a TLS client (`https://` upstreams, session endpoints and JWKS URLs): a CA made
//! in the test signs a certificate for `localhost`, served by another tokengate; trusted through
//! `ca_file`, refused without it or under another name.

use bytes::Bytes;
use http::Method;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::common::{backend, client, spawn_app, temp_dir, TestApp};

/// A CA, and a server certificate for `localhost` it signed; returns the CA file and a `tls:`
/// section using the server certificate.
fn pki(dir: &std::path::Path) -> (String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    let tls = format!("tls: {{ cert_file: {0}/cert.pem, key_file: {0}/key.pem }}\n", dir.display());
    (dir.join("ca.pem").display().to_string(), tls)
}

/// A tokengate in front of `backend` with `tls` (maybe none): its JWK set on
/// `/.well-known/jwks.json`, an IdP login route minting ES256 tokens with `dir/idp.pem`, and
/// everything else forwarded (`/api/me` included).
async fn tls_server(backend: &str, dir: &std::path::Path, tls: &str) -> TestApp {
    if !dir.join("idp.pem").exists() {
        let pem = tokengate::keys::generate_pem(tokengate::config::Algorithm::ES256).unwrap();
        std::fs::write(dir.join("idp.pem"), pem).unwrap();
    }
    let yaml = format!(
        "{tls}jwks_path: /.well-known/jwks.json\nkeys: [{{ id: idp-1, algorithm: ES256, private_key_file: {} }}]\nauth_hooks: {{ a: {{ type: none, identity: {{ id: header:x-sub }} }} }}\nroutes: [{{ name: login, path: /login, auth: a, tokens: {{ t: {{ key: idp-1, ttl: 5m, claims: {{ sub: '{{{{ user.id }}}}' }} }} }}, response: {{ body: '{{{{ tokens.t }}}}', content_type: text/plain }} }}]\n",
        dir.join("idp.pem").display()
    );
    spawn_app(backend, &yaml).await
}

#[tokio::test]
async fn an_https_upstream_is_trusted_through_its_ca_file_only() {
    let b = backend::spawn().await;
    let dir = temp_dir("tls-client-upstream");
    let (ca, tls) = pki(&dir);
    let server = tls_server(&b.url(), &dir, &tls).await;
    let port = server.addr.port();

    let trusted = spawn_app(&format!("https://localhost:{port}"), &format!("  ca_file: {ca}\n")).await;
    let r = client::get(trusted.addr, "/echo", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // The TLS server saw a TLS connection (and said so to the backend).
    assert_eq!(client::echoed(&r.json(), "x-forwarded-proto"), ["https"]);
    // Keep-alive over TLS: a second request on the pooled connection.
    assert_eq!(client::get(trusted.addr, "/echo", &[]).await.unwrap().status, 200);

    let unknown_issuer = spawn_app(&format!("https://localhost:{port}"), "").await;
    let r = client::get(unknown_issuer.addr, "/echo", &[]).await.unwrap();
    assert_eq!(r.status, 502, "the system roots do not know the test CA");
    assert_eq!(r.json()["error"], "bad_gateway");

    let wrong_name = spawn_app(&format!("https://127.0.0.1:{port}"), &format!("  ca_file: {ca}\n")).await;
    assert_eq!(
        client::get(wrong_name.addr, "/echo", &[]).await.unwrap().status,
        502,
        "the certificate names localhost"
    );
    let metrics = client::get(wrong_name.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_upstream_errors_total{kind=\"connect\"} 1"), "{metrics}");
}

#[tokio::test]
async fn https_session_endpoints_and_jwks_urls() {
    let b = backend::spawn().await;
    let dir = temp_dir("tls-client-hooks");
    let (ca, tls) = pki(&dir);
    let server = tls_server(&b.url(), &dir, &tls).await;
    let base = format!("https://localhost:{}", server.addr.port());
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: s }}]\nauth_hooks:\n  session: {{ type: http, url: '{base}/api/me', ca_file: {ca}, forward_headers: [cookie], identity: {{ id: body:/id }} }}\n  idp: {{ type: jwt, jwks_url: '{base}/.well-known/jwks.json', ca_file: {ca}, algorithms: [ES256], identity: {{ id: claim:sub }} }}\n  untrusted: {{ type: jwt, jwks_url: '{base}/.well-known/jwks.json', algorithms: [ES256], identity: {{ id: claim:sub }} }}\nroutes:\n  - {{ name: s, path: /s, auth: session, tokens: {{ t: {{ key: k, ttl: 1m }} }}, response: {{ body: '{{{{ user.id }}}}', content_type: text/plain }} }}\n  - {{ name: j, path: /j, auth: idp, tokens: {{ t: {{ key: k, ttl: 1m }} }}, response: {{ body: '{{{{ user.id }}}}', content_type: text/plain }} }}\n  - {{ name: u, path: /u, auth: untrusted, tokens: {{ t: {{ key: k, ttl: 1m }} }} }}\n"
    );
    let app = spawn_app(&b.url(), &yaml).await;
    let post = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let addr = app.addr;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client::request(addr, Method::POST, path, &h, Bytes::new()).await.unwrap()
        }
    };
    let r = post("/s", vec![("cookie", "session=over-tls".to_owned())]).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "over-tls".to_owned()));

    // The same IdP key behind a plain listener mints the token the TLS one publishes.
    let minter = tls_server(&b.url(), &dir, "").await;
    let idp_token = client::request(minter.addr, Method::POST, "/login", &[("x-sub", "idp-user")], Bytes::new())
        .await
        .unwrap()
        .text();
    let bearer = format!("Bearer {idp_token}");
    let r = post("/j", vec![("authorization", bearer.clone())]).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "idp-user".to_owned()), "the JWK set over https");
    let r = post("/u", vec![("authorization", bearer)]).await;
    assert_eq!(r.status, 503, "an untrusted JWKS endpoint fails closed");
}
