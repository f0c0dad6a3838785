//! Rotation without a restart (SPEC §8): signing keys by the README's runbook, a cached token
//! whose key material changed, and the TLS certificate. Real binary, real files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::common::{backend, client, temp_dir, Binary};
use crate::seeds::{parts, verify_hs256};
use crate::tokens::verify_with_jwk;

fn route(key: &str, cache: bool) -> String {
    format!(
        "auth_hooks:\n  anyone: {{ type: none, identity: {{ id: header:x-user-id }} }}\nroutes:\n  - name: r\n    path: /t\n    auth: anyone\n    cache_tokens: {cache}\n    tokens: {{ token: {{ key: {key}, ttl: 1h, claims: {{ sub: '{{{{ user.id }}}}' }} }} }}\n    response: {{ body: {{ token: '{{{{ tokens.token }}}}' }} }}\n"
    )
}

async fn mint(bin: &Binary) -> String {
    let r = client::request(bin.addr, Method::POST, "/t", &[("x-user-id", "u1")], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

async fn jwks(bin: &Binary) -> Value {
    client::get(bin.admin, "/.well-known/jwks.json", &[]).await.unwrap().json()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

fn kid(token: &str) -> String {
    parts(token).0["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn key_rotation_runbook_step_by_step() {
    let b = backend::spawn().await;
    let dir = temp_dir("rotation-keys");
    for k in ["old", "new"] {
        let pem = tokengate::keys::generate_pem(tokengate::config::Algorithm::ES256).unwrap();
        std::fs::write(dir.join(format!("{k}.pem")), pem).unwrap();
    }
    let key = |id: &str, retired: bool| {
        format!(
            "  - {{ id: {id}, algorithm: ES256, private_key_file: {}, retired: {retired} }}\n",
            dir.join(format!("{id}.pem")).display()
        )
    };
    let config = |keys: &[String], signer: &str| format!("keys:\n{}{}", keys.concat(), route(signer, false));

    // 0. One key signs.
    let bin = Binary::start("rotation", &b.url(), &config(&[key("old", false)], "old"), &[]).await;
    let old_token = mint(&bin).await;
    assert_eq!((kid(&old_token), kids(&jwks(&bin).await)), ("old".to_owned(), vec!["old".to_owned()]));

    // 1. Add the new key: published in the JWK set before anything is signed with it, so
    //    verifiers that cache the set have it by the time they see a token naming it.
    bin.reload_with(&bin.yaml(&b.url(), &config(&[key("old", false), key("new", false)], "old"))).await;
    let set = jwks(&bin).await;
    assert_eq!(kids(&set), ["old", "new"]);
    assert_eq!(kid(&mint(&bin).await), "old", "still signed with the old key");

    // 2. Point the tokens at the new key.
    bin.reload_with(&bin.yaml(&b.url(), &config(&[key("old", false), key("new", false)], "new"))).await;
    let new_token = mint(&bin).await;
    assert_eq!(kid(&new_token), "new");
    let set = jwks(&bin).await;
    assert_eq!(kids(&set), ["old", "new"]);
    verify_with_jwk(&old_token, &set);
    verify_with_jwk(&new_token, &set);

    // 3. Retire the old key: it signs nothing (a route naming it is refused), stays published.
    bin.reload_with(&bin.yaml(&b.url(), &config(&[key("old", true), key("new", false)], "new"))).await;
    bin.wait_reloads((3, 0), Duration::from_secs(1)).await;
    let set = jwks(&bin).await;
    assert_eq!(kids(&set), ["old", "new"], "a retired key stays in the JWK set");
    verify_with_jwk(&old_token, &set);
    bin.reload_with(&bin.yaml(&b.url(), &config(&[key("old", true), key("new", false)], "old"))).await;
    bin.wait_reloads((3, 1), Duration::from_secs(1)).await;
    assert!(bin.logs().contains("is retired: it no longer signs"), "{}", bin.logs());
    assert_eq!(kid(&mint(&bin).await), "new", "the refused file changed nothing");

    // 4. After the longest ttl, remove it.
    bin.reload_with(&bin.yaml(&b.url(), &config(&[key("new", false)], "new"))).await;
    bin.wait_reloads((4, 1), Duration::from_secs(1)).await;
    let set = jwks(&bin).await;
    assert_eq!(kids(&set), ["new"]);
    verify_with_jwk(&mint(&bin).await, &set);
}

#[tokio::test]
async fn a_cached_token_is_never_served_once_its_key_material_changed() {
    let b = backend::spawn().await;
    let config =
        |secret: &str| format!("keys: [{{ id: k, algorithm: HS256, secret: {secret} }}]\n{}", route("k", true));
    let bin = Binary::start("rotation-cache", &b.url(), &config("first-secret"), &[]).await;
    let first = mint(&bin).await;
    assert_eq!(mint(&bin).await, first, "cache_tokens reuses the token");
    verify_hs256(&first, b"first-secret");

    // Same key id, new secret.
    bin.reload_with(&bin.yaml(&b.url(), &config("second-secret"))).await;
    bin.wait_reloads((1, 0), Duration::from_secs(1)).await;
    let second = mint(&bin).await;
    assert_ne!(second, first, "the token signed with the old secret is not served");
    verify_hs256(&second, b"second-secret");
    assert_eq!(mint(&bin).await, second, "and the new one is cached in turn");

    // An unrelated reload keeps the token cache.
    bin.reload_with(&format!("{}jwks_path: /jwks\n", bin.yaml(&b.url(), &config("second-secret")))).await;
    bin.wait_reloads((2, 0), Duration::from_secs(1)).await;
    assert_eq!(mint(&bin).await, second);
}

fn write_cert(dir: &std::path::Path) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    // Each file replaced whole, as cert-manager and editors do.
    for (name, pem) in [("cert.pem", ck.cert.pem()), ("key.pem", ck.signing_key.serialize_pem())] {
        std::fs::write(dir.join(format!("{name}.tmp")), pem).unwrap();
        std::fs::rename(dir.join(format!("{name}.tmp")), dir.join(name)).unwrap();
    }
    ck.cert.der().clone()
}

/// A TLS connection to `addr` trusting `roots`; returns it and the certificate it was shown.
async fn connect(
    addr: std::net::SocketAddr,
    roots: &[CertificateDer<'static>],
) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, CertificateDer<'static>) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let shown = stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    (stream, shown)
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_served_to_the_next_connection() {
    let b = backend::spawn().await;
    let dir = temp_dir("rotation-tls");
    let first = write_cert(&dir);
    let tls = format!("tls: {{ cert_file: {0}/cert.pem, key_file: {0}/key.pem }}\n", dir.display());
    let bin = Binary::start("rotation-tls", &b.url(), &tls, &[]).await;
    let (stream, shown) = connect(bin.addr, std::slice::from_ref(&first)).await;
    assert_eq!(shown, first);
    let (mut open, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);

    let second = write_cert(&dir);
    let roots = [first.clone(), second.clone()];
    let start = Instant::now();
    loop {
        let (_, shown) = connect(bin.addr, &roots).await;
        if shown == second {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "the new certificate is not served; logs:\n{}", bin.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("new certificate served {:?} after the swap", start.elapsed());
    assert!(bin.logs().contains("tls"), "the reload names what changed: {}", bin.logs());
    // The connection made with the old certificate goes on.
    let req = Request::get("/echo").header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    let resp = client::collect(open.send_request(req).await.unwrap()).await.unwrap();
    assert_eq!(resp.status, 200);
}
