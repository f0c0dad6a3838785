//! TLS on the public listener: TLS 1.2 and 1.3, ALPN h2 and http/1.1.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use crate::common::{backend, client, spawn_app};

struct Tls {
    app: crate::common::TestApp,
    roots: rustls::RootCertStore,
}

async fn spawn_tls() -> (Tls, backend::Backend) {
    let b = backend::spawn().await;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = crate::common::temp_dir("tls");
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let extra = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    let app = spawn_app(&b.url(), &extra).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    (Tls { app, roots }, b)
}

async fn connect(
    tls: &Tls,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(tls.roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(tls.app.addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

#[tokio::test]
async fn http11_over_tls12_and_tls13() {
    let (tls, _b) = spawn_tls().await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let stream = connect(&tls, &[version], &[b"http/1.1"]).await.expect("handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("/echo").header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
        let resp = client::collect(sender.send_request(req).await.unwrap()).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(client::echoed(&resp.json(), "x-forwarded-proto"), ["https"]);
    }
}

#[tokio::test]
async fn alpn_negotiates_h2() {
    let (tls, _b) = spawn_tls().await;
    let stream = connect(&tls, &[&rustls::version::TLS13], &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/echo").body(Full::new(Bytes::new())).unwrap();
    let resp = client::collect(sender.send_request(req).await.unwrap()).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn plaintext_on_the_tls_port_is_refused() {
    let (tls, _b) = spawn_tls().await;
    let out = client::raw(tls.app.addr, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!out.contains("200 OK"));
}
