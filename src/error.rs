//! Errors that become HTTP responses, and the one place that maps them (`rescue`).
//!
//! Client-facing bodies stay generic; the log line carries the cause (never a secret).

use std::borrow::Cow;
use std::time::Duration;

use crate::logging::chain;
use http::{header, HeaderValue, Response, StatusCode};

use crate::admission::Refusal;
use crate::body::{self, Body, ClientFault};

/// A cause carried without naming its module's type: the modules that raise these errors sit
/// above this one (`proxy::pool`, `ledger`) and convert into `Error` themselves.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A request that tokengate could not serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to upstream")]
    UpstreamConnect(#[source] Cause),
    #[error("upstream sent no response headers within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("upstream request failed")]
    UpstreamProtocol(#[source] Cause),
    #[error("method not allowed")]
    MethodNotAllowed { allow: HeaderValue },
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("cannot read the request body")]
    BodyRead(#[source] Cause),
    /// The client's body failed (too slow, malformed, cut short): the client's fault.
    #[error("the request body failed: {0:?}")]
    ClientBody(ClientFault),
    #[error("the auth hook refused the credentials")]
    Unauthorized,
    #[error("auth hook {hook} failed: {cause}")]
    AuthUnavailable { hook: String, cause: String },
    /// The message is shown to the client: it names a field, never a value.
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Sign(#[from] crate::keys::SignError),
    #[error("rate limit {limit} exceeded")]
    RateLimited {
        limit: String,
        quota: crate::ratelimit::Quota,
        headers: crate::config::RateLimitHeaders,
        decision: crate::ratelimit::Decision,
    },
    /// A CORS preflight from an origin the route's `cors` does not list.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// Refused before going anywhere (`admission`); the connection closes after the answer.
    #[error("request refused: {}", .0.message())]
    Refused(Refusal),
    /// The ledger cannot take or commit the record of the tokens this answer would carry.
    #[error(transparent)]
    Ledger(Cause),
    /// Redis cannot answer and `shared_state.on_error` is `deny`.
    #[error("the shared state (Redis) is unavailable")]
    SharedStateUnavailable,
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::ClientBody(ClientFault::Timeout) => StatusCode::REQUEST_TIMEOUT,
            Self::ClientBody(ClientFault::Broken) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::AuthUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Sign(crate::keys::SignError::Failed(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Sign(crate::keys::SignError::Unavailable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::Refused(Refusal::Connect) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Refused(_) => StatusCode::BAD_REQUEST,
            Self::Ledger(_) | Self::SharedStateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UpstreamConnect(_) | Self::UpstreamProtocol(_) => "bad_gateway",
            Self::UpstreamTimeout(_) => "gateway_timeout",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::BodyRead(_) | Self::InvalidRequest(_) | Self::ClientBody(ClientFault::Broken) => "invalid_request",
            Self::ClientBody(ClientFault::Timeout) => "request_timeout",
            Self::Unauthorized => "unauthorized",
            Self::AuthUnavailable { .. } => "auth_unavailable",
            Self::Sign(crate::keys::SignError::Failed(_)) => "internal_error",
            Self::Sign(crate::keys::SignError::Unavailable { .. }) => "signer_unavailable",
            Self::RateLimited { .. } => "rate_limited",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::Refused(Refusal::Connect) => "method_not_allowed",
            Self::Refused(_) => "invalid_request",
            Self::Ledger(_) => "ledger_unavailable",
            Self::SharedStateUnavailable => "shared_state_unavailable",
        }
    }

    /// The sentence shown to the client: no internal detail, no secret.
    pub fn public_message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::UpstreamConnect(_) => "the upstream service is unreachable",
            Self::UpstreamProtocol(_) => "the upstream service returned an invalid response",
            Self::UpstreamTimeout(_) => "the upstream service did not answer in time",
            Self::MethodNotAllowed { .. } => "method not allowed on this route",
            Self::PayloadTooLarge(_) => "request body too large",
            Self::BodyRead(_) => "cannot read the request body",
            Self::ClientBody(ClientFault::Timeout) => "the request body did not arrive in time",
            Self::ClientBody(ClientFault::Broken) => "the request body was malformed or cut short",
            Self::Unauthorized => "authentication required",
            Self::AuthUnavailable { .. } => "authentication is temporarily unavailable",
            Self::Sign(crate::keys::SignError::Failed(_)) => "cannot sign the token",
            Self::Sign(crate::keys::SignError::Unavailable { .. }) => "tokens cannot be signed right now, retry later",
            Self::RateLimited { .. } => "too many requests, retry later",
            Self::OriginNotAllowed => "this origin may not call this route (cors.allowed_origins)",
            Self::InvalidRequest(m) => return Cow::Owned(m.clone()),
            Self::Refused(r) => r.message(),
            Self::Ledger(_) => "tokens cannot be recorded right now, retry later",
            Self::SharedStateUnavailable => "rate limits cannot be checked right now, retry later",
        })
    }

    /// The `tokengate_upstream_errors_total{kind}` label, when the upstream is at fault.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            Self::UpstreamConnect(_) => Some("connect"),
            Self::UpstreamTimeout(_) => Some("timeout"),
            Self::UpstreamProtocol(_) => Some("protocol"),
            _ => None,
        }
    }

    /// The full cause chain, for the log line.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// Maps an error to its response: `{"error": "<code>", "message": "<sentence>"}`.
pub fn rescue(err: &Error) -> Response<Body> {
    let mut resp = json_error(err.status(), err.code(), &err.public_message());
    add_error_headers(err, &mut resp);
    resp
}

/// Headers an error response must carry whatever its body shape (`Allow` on 405).
pub fn add_error_headers(err: &Error, resp: &mut Response<Body>) {
    match err {
        Error::MethodNotAllowed { allow } => {
            resp.headers_mut().insert(header::ALLOW, allow.clone());
        }
        // RFC 9110 §10.2.3 and the RateLimit fields (legacy and/or the IETF httpapi draft).
        Error::RateLimited { limit, quota, headers, decision } => {
            let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
            let h = resp.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs(decision.retry_after).max(1)));
            crate::ratelimit::fields::insert(h, limit, quota, decision, *headers);
        }
        Error::Ledger(_) | Error::SharedStateUnavailable | Error::Sign(crate::keys::SignError::Unavailable { .. }) => {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        Error::Refused(refusal) => {
            let h = resp.headers_mut();
            if *refusal == Refusal::Connect {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"));
            }
            // A client that sent this cannot be trusted to frame the next request either.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A JSON error response with `Cache-Control: no-store`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
