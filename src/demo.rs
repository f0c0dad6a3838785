//! `tokengate demo`: a small sample backend (login, session cookie, `/api/me`, a page) on
//! loopback with tokengate in front, configured by the bundled `config/quickstart.yaml`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body};
use crate::config;
use crate::server::{self, ConnLimits, ConnSettings};

/// The bundled quickstart config.
pub const QUICKSTART: &str = include_str!("../config/quickstart.yaml");

/// A demo user: what `/api/me` answers.
#[derive(Clone, Debug, serde::Serialize)]
struct User {
    id: String,
    name: String,
    email: String,
    avatar_url: String,
}

type Sessions = Arc<Mutex<HashMap<String, User>>>;

/// Runs the sample backend and tokengate until `stop` fires.
pub async fn run(stop: CancellationToken) -> Result<(), String> {
    let backend = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot bind the demo backend: {e}"))?;
    let backend_addr = backend.local_addr().map_err(|e| e.to_string())?;
    let sessions: Sessions = Arc::default();
    let backend_stop = CancellationToken::new();
    let secs = std::time::Duration::from_secs;
    let limits = ConnLimits {
        max_header_bytes: 64 * 1024,
        header_read_timeout: secs(10),
        idle_timeout: secs(60),
        request_body_timeout: secs(30),
        max_connections: 1024,
    };
    let settings = Arc::new(ConnSettings::new(limits, None));
    tokio::spawn(server::serve(
        backend,
        settings,
        Arc::default(),
        move |req, _| sample_backend(sessions.clone(), req),
        backend_stop.clone(),
    ));

    let mut loaded = config::load_str(QUICKSTART, "quickstart.yaml", Path::new(".")).map_err(|e| e.to_string())?;
    let url = |path: &str| format!("http://{backend_addr}{path}").parse::<config::HttpUrl>();
    loaded.config.upstream.url = url("")?;
    if let Some(hook) = loaded.config.auth_hooks.get_mut("session") {
        hook.url = Some(url("/api/me")?);
    }
    if let Some(ledger) = &mut loaded.config.ledger {
        ledger.path = Some(std::env::temp_dir().join(format!("tokengate-demo-{}.db", std::process::id())));
    }
    loaded.config.listen = free_or_any("127.0.0.1:8080");
    loaded.config.admin_listen = free_or_any("127.0.0.1:9901");
    let app = crate::App::bind(loaded, config::Overrides::default()).await.map_err(|e| e.to_string())?;
    let (public, admin) = (app.public_addr(), app.admin_addr());
    let tries = [
        (
            format!("curl -i -c /tmp/tg-demo.jar -X POST 'http://{public}/login?user=alice'"),
            "log in (sets a session cookie)",
        ),
        (format!("curl -i -b /tmp/tg-demo.jar http://{public}/api/me"), "the backend's session endpoint, forwarded"),
        (format!("curl -i http://{public}/"), "any page, forwarded untouched"),
        (
            format!("curl -s -b /tmp/tg-demo.jar -X POST http://{public}/api/auth/chat-token"),
            "a chat token, minted by tokengate",
        ),
        (format!("curl -s -X POST http://{public}/api/auth/chat-token"), "without a session: 401"),
        (format!("curl -s 'http://{admin}/admin/tokens?user=user-alice'"), "the ledger: what was minted for alice"),
        (format!("curl -s http://{admin}/admin/users/user-alice"), "alice, as the ledger upserted her"),
        (format!("curl -s http://{admin}/metrics | grep ^tokengate_"), "metrics (admin port only)"),
    ];
    println!("tokengate demo: sample backend on {backend_addr}, tokengate on {public}, admin on {admin}\n\nTry:");
    for (line, what) in tries {
        println!("  {line:<78} # {what}");
    }
    println!("\nCtrl-C stops.");
    let token = app.shutdown_token();
    let run = tokio::spawn(app.run());
    stop.cancelled().await;
    token.cancel();
    let _ = run.await;
    backend_stop.cancel();
    Ok(())
}

/// The preferred address if it is free, else an ephemeral port on the same host.
fn free_or_any(preferred: &str) -> SocketAddr {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    match preferred.parse::<SocketAddr>() {
        Ok(addr) if std::net::TcpListener::bind(addr).is_ok() => addr,
        _ => any,
    }
}

async fn sample_backend(sessions: Sessions, req: Request<crate::body::RequestBody>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/html",
            "<!doctype html><title>demo</title><h1>Sample app behind tokengate</h1>\n".into(),
        ),
        (&Method::POST, "/login") => {
            let user =
                req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("user="))).unwrap_or("alice");
            let user: String = user.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect();
            let session = uuid::Uuid::new_v4().simple().to_string();
            let profile = User {
                id: format!("user-{user}"),
                name: user.clone(),
                email: format!("{user}@example.com"),
                avatar_url: format!("https://avatars.example.com/{user}.png"),
            };
            sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(session.clone(), profile);
            let mut resp = reply(StatusCode::OK, "application/json", format!("{{\"logged_in\":\"{user}\"}}\n"));
            if let Ok(v) = HeaderValue::from_str(&format!("session={session}; Path=/; HttpOnly; SameSite=Lax")) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        (&Method::GET, "/api/me") => {
            let session = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| c.trim().strip_prefix("session="));
            let user = session
                .and_then(|s| sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(s).cloned());
            match user {
                Some(u) => reply(StatusCode::OK, "application/json", serde_json::to_string(&u).unwrap_or_default()),
                None => reply(StatusCode::UNAUTHORIZED, "application/json", "{\"error\":\"not logged in\"}".into()),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
