//! The admin listener (SPEC §4): `/metrics`, `/healthz`, `/readyz` open; `/admin/*` behind
//! `admin_token` (or loopback peers only when none is set). Never served on the public port.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::{self, Body, RequestBody};
use crate::conn_info::ConnInfo;
use crate::error::json_error;
use crate::state::State;

mod ledger;

/// Serves one request on the admin listener.
pub async fn handle(state: Arc<State>, req: Request<RequestBody>, conn: ConnInfo) -> Response<Body> {
    let path = req.uri().path();
    if path.starts_with("/admin/") {
        if let Some(denied) = deny_unauthorized(&state, &req, &conn) {
            return denied;
        }
        return match (req.method(), path) {
            (&Method::POST, "/admin/revoke") => revoke(&state, req).await,
            (&Method::GET, "/admin/tokens") => ledger::search(&state, req.uri().query().unwrap_or("")).await,
            (&Method::GET, p) if p.starts_with("/admin/tokens/") => {
                ledger::token(&state, &p["/admin/tokens/".len()..]).await
            }
            (&Method::GET, p) if p.starts_with("/admin/users/") => {
                ledger::user(&state, &p["/admin/users/".len()..]).await
            }
            _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET");
    }
    match path {
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", state.metrics.encode()),
        "/.well-known/jwks.json" => state.gateway.load().jwks_response(),
        "/healthz" => text(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        "/readyz" => readyz(&state),
        _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

/// 200 while listening with a config in service, with a ledger while it writes, and with HSM
/// keys while their tokens sign; else 503.
fn readyz(state: &State) -> Response<Body> {
    let unready = |why: &str| text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n").into_bytes());
    if !state.is_ready() {
        return unready("shutting down");
    }
    let gateway = state.gateway.load();
    if gateway.ledger.as_ref().is_some_and(|l| !l.health().is_up()) {
        return unready("ledger unavailable");
    }
    if let Some(key) = gateway.keys.unavailable() {
        return unready(&format!("signer unavailable: key {key} (its HSM token cannot sign)"));
    }
    text(StatusCode::OK, "text/plain", b"ready\n".to_vec())
}

/// `Authorization: Bearer <admin_token>` compared in constant time; without a token configured,
/// only loopback peers get in. Returns the refusal, if any.
fn deny_unauthorized(state: &State, req: &Request<RequestBody>, conn: &ConnInfo) -> Option<Response<Body>> {
    let gateway = state.gateway.load();
    match gateway.config.admin_token.as_ref().filter(|t| !t.is_empty()) {
        Some(token) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| crate::auth::bearer_token(v.as_bytes()))
                .unwrap_or_default();
            let unauthorized = || json_error(StatusCode::UNAUTHORIZED, "unauthorized", "admin token required");
            (!token.matches(presented)).then(unauthorized)
        }
        None if conn.peer.ip().is_loopback() => None,
        None => Some(json_error(StatusCode::FORBIDDEN, "forbidden", "admin endpoints answer loopback peers only")),
    }
}

/// `POST /admin/revoke {"user": "user-123"}`: forget that user's cached identities and tokens
/// at once, so the next request asks the auth hook again (call it on logout).
async fn revoke(state: &State, req: Request<RequestBody>) -> Response<Body> {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "body over 4 KiB"),
    };
    let user =
        serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["user"].as_str().map(str::to_owned));
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return json_error(StatusCode::BAD_REQUEST, "invalid_request", "expected {\"user\": \"<id>\"}");
    };
    // With shared state: first out of Redis, then every replica forgets it too (they
    // subscribe to revocations), this one included.
    let shared = state.gateway.load().shared.clone();
    let everywhere = match shared {
        Some(shared) => shared.revoke(&user).await,
        None => false,
    };
    state.stores.forget_user(&user);
    tracing::info!(user = %user, every_replica = everywhere, "revoked cached identities and tokens");
    let answer = serde_json::json!({ "revoked": user, "every_replica": everywhere });
    let mut resp = text(StatusCode::OK, "application/json", answer.to_string().into_bytes());
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(crate) fn text(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
