//! What one request learns on its way through the public listener (pingora's `CTX`): its id,
//! route, start, client address and what was decided. The request metrics and the access log
//! line are written once, from it, at `finish`.

use std::net::IpAddr;
use std::time::Instant;

use http::{HeaderValue, Method, StatusCode};

use crate::metrics::Metrics;

/// The `route` label of forwarded traffic.
pub const PROXY_ROUTE: &str = "proxy";

/// One request's context.
#[derive(Debug)]
pub struct RequestCtx<'g> {
    pub request_id: HeaderValue,
    /// The `route` label: a token route's name, `jwks` or `proxy`.
    pub route: &'g str,
    pub method: Method,
    pub start: Instant,
    /// The caller's address behind trusted proxies, once something needed it.
    pub client_ip: Option<IpAddr>,
    /// The auth hook's decision: `allow`, `deny` or `error`.
    pub auth: Option<&'static str>,
    /// The name of the rate limit that refused the request.
    pub limited: Option<String>,
    /// Where the request's trace span will live (SPEC §9); nothing is traced yet.
    pub span: Option<()>,
}

impl<'g> RequestCtx<'g> {
    pub fn new(request_id: HeaderValue, route: &'g str, method: Method, start: Instant) -> Self {
        Self { request_id, route, method, start, client_ip: None, auth: None, limited: None, span: None }
    }

    /// The request id as text for log lines ("-" if it is not text, which a kept one always is).
    pub fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// Metrics and the access log line of the answered request.
    pub fn finish(&self, metrics: &Metrics, status: StatusCode) {
        let elapsed = self.start.elapsed();
        if self.route == PROXY_ROUTE {
            metrics.proxy.observe(status, elapsed);
        } else {
            metrics.requests_total.with_label_values(&[self.route, status.as_str()]).inc();
            metrics.request_duration_seconds.with_label_values(&[self.route]).observe(elapsed.as_secs_f64());
        }
        tracing::info!(
            target: "tokengate::access",
            method = self.method.as_str(),
            route = self.route,
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            request_id = self.id(),
            auth = self.auth.unwrap_or("-"),
            limited = self.limited.as_deref().unwrap_or("-"),
            "request"
        );
    }
}
