//! What one request learns on its way through the public listener (pingora's `CTX`): its id,
//! route, start, client address and what was decided. The request metrics and the access log
//! line are written once, from it, at `finish`.

use std::net::IpAddr;
use std::time::Instant;

use http::{HeaderValue, Method, StatusCode};

use crate::metrics::{Metrics, RouteMetrics};
use crate::trace::context::hex;
use crate::trace::{Attr, Kind, RequestTrace, Span};

/// The `route` label of forwarded traffic.
pub const PROXY_ROUTE: &str = "proxy";

/// One request's context.
#[derive(Debug)]
pub struct RequestCtx<'g> {
    pub request_id: HeaderValue,
    /// The `route` label: a token route's name, `jwks` or `proxy`.
    pub route: &'g str,
    /// The route's series, when it has its own (`routing::Destination::metrics`).
    pub route_metrics: Option<&'g RouteMetrics>,
    pub method: Method,
    pub start: Instant,
    /// The caller's address behind trusted proxies, once something needed it.
    pub client_ip: Option<IpAddr>,
    /// The auth hook's decision: `allow`, `deny` or `error`.
    pub auth: Option<&'static str>,
    /// The name of the rate limit that refused the request.
    pub limited: Option<String>,
    /// The request's server span and where spans go, when the config traces (SPEC §9).
    pub trace: Option<Box<RequestTrace>>,
}

impl<'g> RequestCtx<'g> {
    pub fn new(request_id: HeaderValue, route: &'g str, method: Method, start: Instant) -> Self {
        Self {
            request_id,
            route,
            route_metrics: None,
            method,
            start,
            client_ip: None,
            auth: None,
            limited: None,
            trace: None,
        }
    }

    /// Counts the request under `route`, in its own series if it has them (`PROXY_ROUTE` and
    /// none for one refused on arrival).
    pub fn relabel(&mut self, route: &'g str, metrics: Option<&'g RouteMetrics>) {
        (self.route, self.route_metrics) = (route, metrics);
    }

    /// The request id as text for log lines ("-" if it is not text, which a kept one always is).
    pub fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// For a traced request, a `tracing` span with its ids, so every log line written while it
    /// is served carries them (under `span`). At error level: enabled whatever `--log-level`.
    pub fn log_span(&self) -> Option<tracing::Span> {
        let t = self.trace.as_ref()?;
        let (trace_id, span_id) = (hex(&t.span.context.trace_id), hex(&t.span.context.span_id));
        Some(tracing::error_span!("request", trace_id = %trace_id, span_id = %span_id))
    }

    /// A child span of the request's, when it is traced.
    pub fn child_span(&self, name: &'static str, kind: Kind) -> Option<Span> {
        self.trace.as_ref().map(|t| t.child(name, kind))
    }

    /// Ends a span `child_span` started.
    pub fn end_span(&self, span: Option<Span>) {
        if let (Some(trace), Some(span)) = (&self.trace, span) {
            trace.record(span);
        }
    }

    /// Metrics, the server span and the access log line of the answered request.
    pub fn finish(mut self, metrics: &Metrics, status: StatusCode) {
        let (mut trace_id, mut span_id) = (String::new(), String::new());
        if let Some(trace) = self.trace.take() {
            let RequestTrace { mut span, exporter } = *trace;
            trace_id = hex(&span.context.trace_id);
            span_id = hex(&span.context.span_id);
            span.set("http.request.method", Attr::Str(self.method.as_str().to_owned()));
            span.set("http.route", Attr::Str(self.route.to_owned()));
            span.set("http.response.status_code", Attr::Int(i64::from(status.as_u16())));
            if let Some(ip) = self.client_ip {
                span.set("client.address", Attr::Str(ip.to_string()));
            }
            span.error = status.is_server_error();
            if let Some(record) = span.end() {
                exporter.send(record);
            }
        }
        let elapsed = self.start.elapsed();
        if let Some(own) = self.route_metrics {
            own.observe(status, elapsed);
        } else if self.route == PROXY_ROUTE {
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
            trace_id = if trace_id.is_empty() { "-" } else { trace_id.as_str() },
            span_id = if span_id.is_empty() { "-" } else { span_id.as_str() },
            "request"
        );
    }
}
