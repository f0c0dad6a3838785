//! The public listener's request path, top-down: request id → route → token route or proxy →
//! rescue → metrics and the access log line. Every failure is a response by the time it leaves.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::admission::{self, Refusal};
use crate::body::{Body, ClientFault, RequestBody};
use crate::error::rescue;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::proxy::relay::RequestId;
use crate::proxy::{headers, ConnInfo};
use crate::ratelimit::LimitInput;
use crate::server::{Reply, Service};
use crate::state::State;
use crate::token::limits::check_limits;
use crate::token::Outcome;
use crate::wire::request::RequestHead;

/// The `route` label for forwarded traffic.
const PROXY_ROUTE: &str = "proxy";
/// The `route` label for the public JWK set (`jwks_path`).
const JWKS_ROUTE: &str = "jwks";

/// The public listener's service.
#[derive(Clone)]
pub struct Public(pub Arc<State>);

impl Service for Public {
    fn call(&self, req: Request<RequestBody>, conn: ConnInfo) -> impl Future<Output = Response<Body>> + Send + use<> {
        handle(self.0.clone(), req, conn)
    }

    /// Counted and logged like any answer.
    fn refuse(&self, method: &Method, refusal: Refusal) -> Response<Body> {
        let gateway = self.0.gateway.load();
        let request_id = headers::new_request_id();
        let mut resp = rescue(&Error::Refused(refusal));
        resp.headers_mut().insert(gateway.proxy.rules.request_id.clone(), request_id.clone());
        finish(&self.0, PROXY_ROUTE, method, resp.status(), Duration::ZERO, &request_id, None);
        resp
    }

    /// Forwarded traffic without proxy limits is relayed from the head; token routes, the JWK
    /// set and limited traffic take `call`.
    fn relay<'a>(
        &'a self,
        head: &'a RequestHead,
        conn: &'a ConnInfo,
    ) -> Option<impl Future<Output = Reply> + Send + 'a> {
        let gateway = self.0.gateway.load_full();
        let path = head.path();
        let forwarded = gateway.proxy_limits.is_empty()
            && head.is_origin_form()
            && gateway.routes.find(path).is_none()
            && gateway.config.jwks_path.as_deref() != Some(path);
        forwarded.then(|| relay(&self.0, gateway, head, conn))
    }
}

/// Relays one forwarded request (see `Public::relay`).
async fn relay(state: &State, gateway: Arc<Gateway>, head: &RequestHead, conn: &ConnInfo) -> Reply {
    let start = Instant::now();
    let id = request_id(head, &gateway.proxy.rules.request_id);
    let (status, reply) = match gateway.proxy.relay(head, conn, &id).await {
        Ok(relayed) => (relayed.head.status, Reply::Relayed(relayed)),
        Err(err) => {
            let mut resp = upstream_failure(state, &err, &id.value);
            resp.headers_mut().insert(gateway.proxy.rules.request_id.clone(), id.value.clone());
            (resp.status(), Reply::Response(resp))
        }
    };
    finish(state, PROXY_ROUTE, &head.method, status, start.elapsed(), &id.value, None);
    reply
}

/// The request id of a relayed request: the client's when it sent a usable one, else a new one.
fn request_id(head: &RequestHead, name: &http::HeaderName) -> RequestId {
    let sent = head.fields.iter().find(|f| f.is(&head.bytes, name));
    let usable = sent.filter(|f| headers::is_usable_request_id(f.value(&head.bytes)));
    match usable.and_then(|f| HeaderValue::from_maybe_shared(head.bytes.slice(f.value_range())).ok()) {
        Some(value) => RequestId { value, generated: false },
        None => RequestId { value: headers::new_request_id(), generated: true },
    }
}

/// Serves one request on the public listener.
pub async fn handle(state: Arc<State>, mut req: Request<RequestBody>, conn: ConnInfo) -> Response<Body> {
    let start = Instant::now();
    // Requests in flight finish on the config they started with.
    let gateway = state.gateway.load_full();
    let method = req.method().clone();
    let request_id = headers::ensure_request_id(req.headers_mut(), &gateway.proxy.rules.request_id);
    let path = req.uri().path();
    let (route, mut resp) = if let Err(refusal) = admission::check_request(&req) {
        (PROXY_ROUTE, rescue(&Error::Refused(refusal)))
    } else if let Some((route, captures)) = gateway.routes.find(path) {
        // Boxed: the token pipeline's future is large, and hyper moves the request future
        // around; forwarded requests should not pay for its size.
        let resp = Box::pin(route.serve(req, captures, &conn, &gateway.proxy.rules, &state.metrics)).await;
        (route.name.as_str(), resp)
    } else if gateway.config.jwks_path.as_deref() == Some(path) {
        (JWKS_ROUTE, gateway.jwks_response())
    } else {
        let resp = match proxy_limits(&gateway, &req, &conn, &state) {
            Some(refused) => refused,
            None => {
                let client_fault = match req.body() {
                    http_body_util::Either::Left(body) => Some(body.fault()),
                    http_body_util::Either::Right(_) => None,
                };
                match gateway.proxy.forward(req, &conn, &state.tunnels).await {
                    Ok(resp) => resp,
                    // The client's body failed first: the upstream is not to blame.
                    Err(err) => match client_fault.as_ref().and_then(|f| f.get().copied()) {
                        Some(fault) => client_failure(fault, &err, &request_id),
                        None => upstream_failure(&state, &err, &request_id),
                    },
                }
            }
        };
        (PROXY_ROUTE, resp)
    };
    resp.headers_mut().insert(gateway.proxy.rules.request_id.clone(), request_id.clone());
    let outcome = resp.extensions().get::<Outcome>();
    finish(&state, route, &method, resp.status(), start.elapsed(), &request_id, outcome);
    resp
}

/// The answer to a failed forward, counted and logged with its cause.
fn upstream_failure(state: &State, err: &Error, request_id: &HeaderValue) -> Response<Body> {
    if let Some(kind) = err.upstream_kind() {
        state.metrics.upstream_errors_total.with_label_values(&[kind]).inc();
    }
    tracing::warn!(request_id = request_id.to_str().unwrap_or("-"), error = %err.chain(), "upstream error");
    rescue(err)
}

/// The answer to a forward that failed because the client's body did: 408 or 400, logged at
/// info (a client can neither trip upstream-error alerts nor 5xx objectives).
fn client_failure(fault: ClientFault, err: &Error, request_id: &HeaderValue) -> Response<Body> {
    tracing::info!(request_id = request_id.to_str().unwrap_or("-"), ?fault, error = %err.chain(), "client body failed");
    rescue(&Error::ClientBody(fault))
}

/// Metrics and the access log line of an answered request.
fn finish(
    state: &State,
    route: &str,
    method: &Method,
    status: StatusCode,
    elapsed: Duration,
    request_id: &HeaderValue,
    outcome: Option<&Outcome>,
) {
    if route == PROXY_ROUTE {
        state.metrics.proxy.observe(status, elapsed);
    } else {
        state.metrics.requests_total.with_label_values(&[route, status.as_str()]).inc();
        state.metrics.request_duration_seconds.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    }
    tracing::info!(
        target: "tokengate::access",
        method = method.as_str(),
        route,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1e3,
        request_id = request_id.to_str().unwrap_or("-"),
        auth = outcome.and_then(|o| o.auth).unwrap_or("-"),
        limited = outcome.and_then(|o| o.limited.as_deref()).unwrap_or("-"),
        "request"
    );
}

/// `proxy_rate_limits`: the refusal (429) for forwarded traffic over a limit, if any.
fn proxy_limits(
    gateway: &Gateway,
    req: &Request<RequestBody>,
    conn: &ConnInfo,
    state: &State,
) -> Option<Response<Body>> {
    if gateway.proxy_limits.is_empty() {
        return None;
    }
    let client_ip = gateway.proxy.rules.client_ip(conn.peer.ip(), req.headers());
    let input = LimitInput { client_ip, user: None, route: PROXY_ROUTE, headers: req.headers() };
    let err = check_limits(&gateway.proxy_limits, &input, &state.metrics).err()?;
    let mut resp = rescue(&err);
    if let Error::RateLimited { limit, .. } = &err {
        resp.extensions_mut().insert(Outcome { auth: None, limited: Some(limit.clone()) });
    }
    Some(resp)
}
