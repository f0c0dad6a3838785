//! The nginx drop-in (deploy/nginx/): Debian's nginx, started unprivileged with its own prefix
//! from `tokengate.conf` itself (only addresses and paths swapped for the test's), terminating
//! TLS with a certificate the test makes, in front of tokengate in front of the fake backend.
//! Through the chain: a token route, a forwarded request whose client address reaches the
//! backend and keys a per-IP limit, and a WebSocket. Feature `services` (needs `nginx`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{backend, client, closed_port, temp_dir, Binary};

pub(crate) struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `deploy/nginx/tokengate.conf` with the test's addresses, certificate and snippet path.
fn site(dir: &Path, https: u16, http: u16, tokengate: SocketAddr) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx");
    let text = std::fs::read_to_string(root.join("tokengate.conf")).unwrap();
    let swaps = [
        ("server 127.0.0.1:8080;", format!("server {tokengate};")),
        ("    listen 80;\n    listen [::]:80;\n", format!("    listen 127.0.0.1:{http};\n")),
        ("    listen 443 ssl http2;", format!("    listen 127.0.0.1:{https} ssl http2;")),
        ("    listen [::]:443 ssl http2;\n", String::new()),
        ("/etc/ssl/certs/tokengate.pem", dir.join("cert.pem").display().to_string()),
        ("/etc/ssl/private/tokengate.key", dir.join("key.pem").display().to_string()),
        ("/etc/nginx/snippets/tokengate-proxy.conf", root.join("tokengate-proxy.conf").display().to_string()),
    ];
    swaps.iter().fold(text, |text, (from, to)| {
        assert!(text.contains(from), "deploy/nginx/tokengate.conf no longer has {from:?}");
        text.replace(from, to)
    })
}

pub(crate) fn start_nginx(dir: &Path, site: &str, port: u16) -> Nginx {
    std::fs::write(dir.join("site.conf"), site).unwrap();
    let d = dir.display();
    let conf = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off; master_process off;"])
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (Debian package nginx)");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "nginx did not start:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx(child)
}

/// A CA and a certificate for `localhost`; returns the client config trusting the CA.
fn pki(dir: &Path) -> Arc<rustls::ClientConfig> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr` for `localhost`, from the loopback address `from`.
async fn tls(
    addr: SocketAddr,
    from: IpAddr,
    config: &Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

async fn https(
    addr: SocketAddr,
    from: IpAddr,
    config: &Arc<rustls::ClientConfig>,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> client::Resp {
    let stream = tls(addr, from, config).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    client::collect(resp).await.unwrap()
}

#[tokio::test]
async fn nginx_with_the_shipped_file_terminates_tls_in_front_of_tokengate() {
    let b = backend::spawn().await;
    let dir = temp_dir("nginx-drop-in");
    let client_config = pki(&dir);
    let extra = r#"forwarding: { x_forwarded: append, trusted_proxies: [127.0.0.1/32] }
keys: [{ id: k, algorithm: HS256, secret: nginx-test-secret }]
auth_hooks:
  session:
    type: http
    url: ${TG_SESSION_URL}
    forward_headers: [cookie]
    identity: { id: body:/id }
rate_limits:
  per_ip: { key: client_ip, rate: 3, per: 1m }
proxy_rate_limits: [per_ip]
routes:
  - name: chat-token
    path: /api/auth/chat-token
    methods: [POST]
    auth: session
    tokens: { token: { key: k, ttl: 1h, claims: { sub: "{{ user.id }}" } } }
    response: { body: { token: "{{ tokens.token }}" } }
"#;
    let session = format!("{}/api/me", b.url());
    let config = dir.join("tokengate.yaml");
    let (addr, admin) = (closed_port(), closed_port());
    std::fs::write(&config, format!("listen: {addr}\nadmin_listen: {admin}\nupstream:\n  url: {}\n{extra}", b.url()))
        .unwrap();
    let _tokengate = Binary::spawn(&dir, &config, addr, admin, &[], &[("TG_SESSION_URL", session.as_str())]).await;
    let (https_port, http_port) = (closed_port().port(), closed_port().port());
    let _nginx = start_nginx(&dir, &site(&dir, https_port, http_port, addr), https_port);
    let front = SocketAddr::from(([127, 0, 0, 1], https_port));
    let alice: IpAddr = [127, 0, 0, 2].into();
    let bob: IpAddr = [127, 0, 0, 3].into();

    // The token route, over TLS through nginx.
    let r =
        https(front, alice, &client_config, http::Method::POST, "/api/auth/chat-token", &[("cookie", "session=ann")])
            .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let claims = crate::seeds::verify_hs256(r.json()["token"].as_str().unwrap(), b"nginx-test-secret");
    assert_eq!(claims.subject.as_deref(), Some("ann"));

    // Forwarded: the backend sees the client's address first, and https.
    let r = https(front, alice, &client_config, http::Method::GET, "/echo", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let xff = client::echoed(&r.json(), "x-forwarded-for");
    assert_eq!(xff.len(), 1, "{xff:?}");
    assert!(xff[0].starts_with("127.0.0.2"), "the client's address, not nginx's: {xff:?}");
    assert_eq!(client::echoed(&r.json(), "x-forwarded-proto"), ["https"]);

    // The per-IP limit (forwarded traffic) keys on the client: alice has used 1 of 3, bob has
    // his own.
    for _ in 0..2 {
        let r = https(front, alice, &client_config, http::Method::GET, "/echo", &[]).await;
        assert_eq!(r.status, 200);
    }
    let r = https(front, alice, &client_config, http::Method::GET, "/echo", &[]).await;
    assert_eq!(r.status, 429, "alice's fourth forwarded request");
    let r = https(front, bob, &client_config, http::Method::GET, "/echo", &[]).await;
    assert_eq!(r.status, 200, "bob is another client");

    // A WebSocket through both.
    let stream = tls(front, bob, &client_config).await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/ws", stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("through nginx and tokengate")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "through nginx and tokengate");
}
