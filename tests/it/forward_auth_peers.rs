//! Forward auth behind the real proxies users run, each with the file tokengate ships for it
//! (only addresses swapped for the test's): Debian's nginx with `auth_request`
//! (deploy/nginx/tokengate-forward-auth.conf and its two snippets, `compat: nginx`) and Debian's
//! Caddy with `forward_auth` (deploy/caddy/Caddyfile). The proxy talks to the fake backend
//! itself; tokengate only decides. Feature `services` (needs `nginx` and `caddy`).

use std::net::SocketAddr;
use std::path::Path;

use crate::common::caddy::Caddy;
use crate::common::{backend, client, closed_port, spawn_app, temp_dir};

/// tokengate's side: the session hook, 2 decisions a minute per user, the user's id for the app.
fn tokengate_yaml(hook_url: &str, compat: &str) -> String {
    format!(
        r#"forwarding: {{ trusted_proxies: [127.0.0.1/32] }}
rate_limits:
  per_user: {{ key: user, rate: 2, per: 1m }}
auth_hooks:
  session: {{ type: http, url: '{hook_url}/api/me', forward_headers: [cookie], identity: {{ id: body:/id, email: body:/email }} }}
forward_auth:
  - name: app
    path: /_tokengate/auth
    auth: session
    rate_limits: [per_user]
    response_headers:
      X-Auth-Request-User: "{{{{ user.id }}}}"
      X-Auth-Request-Email: "{{{{ user.email }}}}"
    cors: {{ allowed_origins: ['https://app.example.com'] }}
    compat: {compat}
"#
    )
}

fn shipped(path: &str, swaps: &[(&str, String)]) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&file).unwrap();
    swaps.iter().fold(text, |text, (from, to)| {
        assert!(text.contains(from), "{path} no longer has {from:?}");
        text.replace(from, to)
    })
}

/// The three answers a client of the proxy must get: through with the identity (a forged one
/// replaced), 401 without a session, 429 with `Retry-After` once over the limit; and 503 when
/// the session endpoint fails.
async fn the_proxy_enforces_tokengates_decisions(front: SocketAddr, proxy: &str) {
    let forged = [("cookie", "session=ann"), ("x-auth-request-user", "mallory")];
    let r = client::get(front, "/echo?q=1", &forged).await.unwrap();
    assert_eq!(r.status, 200, "{proxy}: {}", r.text());
    assert_eq!(client::echoed(&r.json(), "x-auth-request-user"), ["ann"], "{proxy}");
    assert_eq!(client::echoed(&r.json(), "x-auth-request-email"), ["ann@example.com"], "{proxy}");

    let r = client::get(front, "/echo", &[]).await.unwrap();
    assert_eq!(r.status, 401, "{proxy}: {}", r.text());
    assert_eq!(r.json()["error"], "unauthorized", "{proxy}");
    // A client describing its GET as a CORS preflight (which needs no session) in either
    // family of fields: the proxy sets its own, and tokengate reads only those.
    let forged = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "GET"),
        ("x-forwarded-method", "OPTIONS"),
        ("x-original-method", "OPTIONS"),
    ];
    let r = client::get(front, "/echo", &forged).await.unwrap();
    assert_eq!(r.status, 401, "{proxy}: a forged preflight got through: {}", r.text());

    let r = client::get(front, "/echo", &[("cookie", "session=ann")]).await.unwrap();
    assert_eq!(r.status, 200, "{proxy}: ann's second request");
    let r = client::get(front, "/echo", &[("cookie", "session=ann")]).await.unwrap();
    assert_eq!(r.status, 429, "{proxy}: ann's third request: {}", r.text());
    assert_eq!(r.json()["error"], "rate_limited", "{proxy}");
    let retry: u64 = r.header("retry-after").unwrap_or_else(|| panic!("{proxy}: no Retry-After")).parse().unwrap();
    assert!((1..=60).contains(&retry), "{proxy}: {retry}");

    let r = client::get(front, "/echo", &[("cookie", "session=fail")]).await.unwrap();
    assert_eq!(r.status, 503, "{proxy}: {}", r.text());
}

#[tokio::test]
async fn nginx_auth_request_with_the_shipped_snippets() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &tokengate_yaml(&b.url(), "nginx")).await;
    let dir = temp_dir("nginx-forward-auth");
    let port = closed_port().port();
    let snippets = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx");
    let site = shipped(
        "deploy/nginx/tokengate-forward-auth.conf",
        &[
            ("server 127.0.0.1:8080;", format!("server {};", app.addr)),
            ("server 127.0.0.1:3000;", format!("server {};", b.addr)),
            ("    listen 80;", format!("    listen 127.0.0.1:{port};")),
            ("/etc/nginx/snippets/tokengate-auth.conf", snippets.join("tokengate-auth.conf").display().to_string()),
            (
                "/etc/nginx/snippets/tokengate-auth-request.conf",
                snippets.join("tokengate-auth-request.conf").display().to_string(),
            ),
        ],
    );
    let _nginx = crate::nginx::start_nginx(&dir, &site, port);
    the_proxy_enforces_tokengates_decisions(SocketAddr::from(([127, 0, 0, 1], port)), "nginx").await;
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_forward_auth_total{name=\"app\",outcome=\"limited\"} 1"), "{metrics}");
}

#[tokio::test]
async fn caddy_forward_auth_with_the_shipped_caddyfile() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &tokengate_yaml(&b.url(), "standard")).await;
    let dir = temp_dir("caddy-forward-auth");
    let port = closed_port().port();
    let caddyfile = shipped(
        "deploy/caddy/Caddyfile",
        &[
            ("app.example.com {", format!("http://127.0.0.1:{port} {{")),
            ("forward_auth 127.0.0.1:8080 {", format!("forward_auth {} {{", app.addr)),
            ("reverse_proxy 127.0.0.1:3000", format!("reverse_proxy {}", b.addr)),
        ],
    );
    let _caddy = Caddy::start("caddy", &dir, &caddyfile, port, &[]);
    the_proxy_enforces_tokengates_decisions(SocketAddr::from(([127, 0, 0, 1], port)), "caddy").await;
    // Caddy passes tokengate's 429 on as it is: the RateLimit fields reach the client too.
    let r = client::get(SocketAddr::from(([127, 0, 0, 1], port)), "/echo", &[("cookie", "session=ann")]).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-policy"), Some("\"per_user\";q=2;w=60"));
}
