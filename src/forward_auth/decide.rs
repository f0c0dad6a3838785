//! One decision, top-down: the original request (trusted proxies only) → a CORS preflight let
//! through without authentication, or limits before the hook → auth hook → per-user limits →
//! tokens → 200 with `response_headers`. Refusals use the entry's error shape (401, 429 with
//! `Retry-After` and the RateLimit fields, 503 fail closed); `compat: nginx` folds what nginx
//! cannot read into 403. The request's body is never read.

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use serde_json::Value;

use super::{ForwardAuth, Original};
use crate::body::{self, Body, RequestBody};
use crate::config::Compat;
use crate::conn_info::ConnInfo;
use crate::context::RequestCtx;
use crate::cors::Cors;
use crate::error::Error;
use crate::header_view::HeaderView;
use crate::metrics::Metrics;
use crate::proxy::ForwardRules;
use crate::token::request::Values;
use crate::token::{Admitted, Issued, Record};
use crate::trace::Attr;

const AUTH_REQUEST_STATUS: HeaderName = HeaderName::from_static("x-auth-request-status");
const AUTH_REQUEST_RETRY_AFTER: HeaderName = HeaderName::from_static("x-auth-request-retry-after");

impl ForwardAuth {
    /// Decides about the request a proxy in front describes; counted in
    /// `tokengate_forward_auth_total{name,outcome}`.
    pub async fn serve(
        &self,
        req: Request<RequestBody>,
        conn: &ConnInfo,
        rules: &ForwardRules,
        metrics: &Metrics,
        ctx: &mut RequestCtx<'_>,
    ) -> Response<Body> {
        let (parts, _unread) = req.into_parts();
        let trusted = rules.trusts_peer(conn.peer.ip());
        let fields = trusted.then_some(self.fields());
        let own = (self.own_path(parts.uri.path()), parts.uri.query().unwrap_or(""));
        let original = Original::of(&parts.headers, &parts.method, own, fields);
        if let Some(trace) = ctx.trace.as_mut() {
            trace.span.set("tokengate.original.method", Attr::Str(original.method.as_str().to_owned()));
            trace.span.set("tokengate.original.path", Attr::Str(original.path.clone()));
        }
        let headers = HeaderView::Map(&parts.headers);
        let client_ip = crate::proxy::headers::client_ip(rules, conn.peer.ip(), headers);
        ctx.client_ip = Some(client_ip);
        let captures = self.original_path.as_ref().and_then(|p| p.matches(&original.path)).unwrap_or_default();
        let values = Values::new(&original.query, &captures, headers, client_ip);
        let cors = self.route.cors();
        let (outcome, mut resp) = match cors {
            // Only a trusted proxy can say the original request is a preflight.
            Some(cors) if trusted && Cors::is_preflight(&original.method, headers) => {
                self.preflight(cors, &values, metrics)
            }
            _ => self.decide(headers, &values, metrics, ctx).await,
        };
        if let Some(cors) = cors {
            cors.decorate(headers.get(&header::ORIGIN), &mut resp);
        }
        metrics.forward_auth_total.with_label_values(&[&self.name, outcome]).inc();
        if self.compat == Compat::Nginx {
            fold_for_nginx(&mut resp);
        }
        resp
    }

    /// A preflight from an allowed origin is let through (200 with the CORS fields, for the
    /// proxy or the app behind to answer it); from another origin, refused (403).
    fn preflight(&self, cors: &Cors, values: &Values<'_>, metrics: &Metrics) -> (&'static str, Response<Body>) {
        let (outcome, result, resp) = match cors.preflight(values.headers) {
            Some(mut resp) => {
                // 200, not 204: Envoy's ext_authz allows on 200 only.
                *resp.status_mut() = StatusCode::OK;
                ("allow", "allowed", resp)
            }
            None => ("deny", "refused", self.route.error(&Error::OriginNotAllowed, values)),
        };
        metrics.cors_preflights_total.with_label_values(&[&self.name, result]).inc();
        (outcome, resp)
    }

    /// The pipeline of a token route, answered with headers.
    async fn decide(
        &self,
        headers: HeaderView<'_>,
        values: &Values<'_>,
        metrics: &Metrics,
        ctx: &mut RequestCtx<'_>,
    ) -> (&'static str, Response<Body>) {
        let refuse = |e: Error| (outcome(&e), self.route.error(&e, values));
        let Admitted { identity, would } =
            match self.route.admit(headers, &crate::json_body::NO_BODY, values.client_ip, metrics, ctx).await {
                Ok(admitted) => admitted,
                Err(e) => return refuse(e),
            };
        let values = Values { identity: Some(&identity), ..*values };
        let trace = ctx.trace.as_deref();
        let Issued { named, first } = match self.route.issue(&values, &identity, metrics, Record::Ledger, trace).await {
            Ok(issued) => issued,
            Err(e) => return refuse(e),
        };
        let values = Values { tokens: &named, first, ..values };
        let mut resp = Response::new(body::empty());
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, template) in &self.headers {
            if let Some(value) = template.render(&values).ok().as_ref().and_then(header_value) {
                h.insert(name.clone(), value);
            }
        }
        if let Some(would) = would {
            would.report(h);
        }
        ("allow", resp)
    }
}

/// A rendered template as a header value: text as it is, other JSON as JSON text; nothing for
/// null, an empty string, or a value a header cannot carry (a line break).
fn header_value(value: &Value) -> Option<HeaderValue> {
    if value.is_null() {
        return None;
    }
    let text = crate::template::text_of(value);
    (!text.is_empty()).then(|| HeaderValue::from_str(&text).ok()).flatten()
}

/// The `tokengate_forward_auth_total` outcome of a refusal.
fn outcome(err: &Error) -> &'static str {
    match err {
        Error::RateLimited { .. } => "limited",
        e if e.status().is_server_error() => "error",
        _ => "deny",
    }
}

/// nginx `auth_request` reads only 2xx, 401 and 403 (anything else becomes a 500): every other
/// status becomes 403 with `X-Auth-Request-Status` and `X-Auth-Request-Retry-After`, which the
/// shipped snippet (deploy/nginx/tokengate-auth.conf) turns back into the real answer.
fn fold_for_nginx(resp: &mut Response<Body>) {
    let status = resp.status();
    if status.is_success() || status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return;
    }
    let h = resp.headers_mut();
    h.insert(AUTH_REQUEST_STATUS, HeaderValue::from(status.as_u16()));
    if let Some(retry) = h.get(header::RETRY_AFTER).cloned() {
        h.insert(AUTH_REQUEST_RETRY_AFTER, retry);
    }
    *resp.status_mut() = StatusCode::FORBIDDEN;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_gets_403_with_the_real_status_for_what_it_cannot_read() {
        for (status, folded) in [(200, 200), (401, 401), (403, 403), (429, 403), (503, 403), (400, 403)] {
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::from_u16(status).expect("status");
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
            fold_for_nginx(&mut resp);
            assert_eq!(resp.status().as_u16(), folded, "{status}");
            let told = resp.headers().get(AUTH_REQUEST_STATUS).map(|v| v.to_str().expect("text").to_owned());
            assert_eq!(told, (folded != status).then(|| status.to_string()), "{status}");
            let retry = resp.headers().get(AUTH_REQUEST_RETRY_AFTER).is_some();
            assert_eq!(retry, folded != status, "{status}");
        }
    }

    #[test]
    fn header_values_leave_out_what_is_missing_or_cannot_be_sent() {
        assert_eq!(header_value(&Value::String("u-1".into())).expect("text"), "u-1");
        assert_eq!(header_value(&serde_json::json!(42)).expect("number"), "42");
        assert_eq!(header_value(&serde_json::json!(["a"])).expect("array"), "[\"a\"]");
        assert!(header_value(&Value::Null).is_none());
        assert!(header_value(&Value::String(String::new())).is_none());
        assert!(header_value(&Value::String("a\nX-Injected: 1".into())).is_none());
    }
}
