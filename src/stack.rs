//! The public listener's request path, top-down: request id → route (`routing`) → token route,
//! forward-auth entry, JWK set or proxy → rescue → metrics and the access log line, written
//! once from the request's context (`context`). Every failure is a response by the time it
//! leaves.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use tracing::Instrument;

use crate::admission::{self, Refusal};
use crate::body::{Body, ClientFault, RequestBody};
use crate::conn_info::ConnInfo;
use crate::context::RequestCtx;
use crate::context::PROXY_ROUTE;
use crate::error::rescue;
use crate::error::Error;
use crate::gateway::Gateway;
use crate::header_view::HeaderView;
use crate::metrics::RouteMetrics;
use crate::proxy::headers;
use crate::proxy::relay::Stamp;
use crate::proxy::rules::{self, RequestId};
use crate::ratelimit::LimitInput;
use crate::routing::{self, Destination};
use crate::server::{Reply, Service};
use crate::state::State;
use crate::token::limits::check_limits;
use crate::token::request::TokenRequest;
use crate::token::Route;
use crate::trace::{Attr, Kind, RequestTrace, SpanContext};
use crate::wire::request::RequestHead;

/// The public listener's service.
#[derive(Clone)]
pub struct Public(pub Arc<State>);

impl Service for Public {
    fn call(&self, req: Request<RequestBody>, conn: ConnInfo) -> impl Future<Output = Response<Body>> + Send + use<> {
        handle(self.0.clone(), req, conn, Head::Unchecked)
    }

    fn call_checked(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + use<> {
        handle(self.0.clone(), req, conn, Head::Checked)
    }

    /// Counted and logged like any answer.
    fn refuse(&self, method: &Method, refusal: Refusal) -> Response<Body> {
        let gateway = self.0.gateway.load();
        let ctx = RequestCtx::new(rules::new_request_id(), PROXY_ROUTE, method.clone(), Instant::now());
        let mut resp = rescue(&Error::Refused(refusal));
        resp.headers_mut().insert(gateway.proxy.rules.request_id.clone(), ctx.request_id.clone());
        ctx.finish(&self.0.metrics, resp.status());
        resp
    }

    fn spliced(&self, bytes: u64) {
        self.0.metrics.upstream_spliced_bytes_total.inc_by(bytes);
    }

    type Snapshot = Arc<Gateway>;

    fn snapshot(&self) -> Arc<Gateway> {
        self.0.gateway.load_full()
    }

    /// A body-less request `routing` sends to the upstream without proxy limits is relayed
    /// from the head, and a token route's request is served from it (no `http::Request`);
    /// everything else takes `call`.
    fn fast<'a>(
        &'a self,
        gateway: &'a Arc<Gateway>,
        head: &'a RequestHead,
        body: &'a Bytes,
        conn: &'a ConnInfo,
    ) -> Option<impl Future<Output = Reply> + Send + 'a> {
        match routing::route(gateway, head.path()) {
            Destination::Proxy { limited: false } if body.is_empty() && head.is_origin_form() => {}
            // Boxed: a token request's state is several times a relayed one's, and the box of
            // the fast path's answer holds the larger of the two.
            Destination::Token(route, captures) if head.is_origin_form() => {
                let serving = token_from_head(&self.0, gateway, route, captures, head, body.clone(), conn);
                return Some(Either::Right(Box::pin(serving)));
            }
            _ => return None,
        }
        // Sampled requests take `call`, where the spans are; an unsampled one is relayed with a
        // `traceparent` of its own (the trace id propagated, nothing recorded).
        let traceparent = match &gateway.tracer {
            None => None,
            Some(tracer) => {
                let sent = head.fields.iter().find(|f| f.is(&head.bytes, &TRACEPARENT));
                let parent = sent.and_then(|f| SpanContext::parse(f.value(&head.bytes)));
                let context = tracer.context(parent);
                if context.sampled {
                    return None;
                }
                Some(context.traceparent_bytes())
            }
        };
        Some(Either::Left(relay(&self.0, gateway, head, conn, traceparent)))
    }
}

/// Relays one forwarded request (see `Public::fast`).
async fn relay(
    state: &State,
    gateway: &Gateway,
    head: &RequestHead,
    conn: &ConnInfo,
    traceparent: Option<[u8; 55]>,
) -> Reply {
    let RequestId { value, generated } = request_id(head, &gateway.proxy.rules.request_id);
    let ctx = RequestCtx::new(value, PROXY_ROUTE, head.method.clone(), Instant::now());
    let stamp = Stamp { id: &ctx.request_id, generated, traceparent: traceparent.as_ref().map(|t| t.as_slice()) };
    let (status, reply) = match gateway.proxy.relay(head, conn, stamp, ctx.start).await {
        Ok(relayed) => (relayed.head.head.status, Reply::Relayed(relayed)),
        Err(err) => {
            let mut resp = upstream_failure(state, &err, &ctx);
            resp.headers_mut().insert(gateway.proxy.rules.request_id.clone(), ctx.request_id.clone());
            (resp.status(), Reply::Response(resp))
        }
    };
    ctx.finish(&state.metrics, status);
    reply
}

/// The request id of a relayed request: the first one the client sent, if usable.
fn request_id(head: &RequestHead, name: &http::HeaderName) -> RequestId {
    let sent = head.fields.iter().find(|f| f.is(&head.bytes, name));
    rules::choose_request_id(sent.and_then(|f| HeaderValue::from_maybe_shared(head.bytes.slice(f.value_range())).ok()))
}

/// Whether `admission` has passed a request's head already (the fast path checks the bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Head {
    Checked,
    Unchecked,
}

/// Serves one request on the public listener.
async fn handle(state: Arc<State>, mut req: Request<RequestBody>, conn: ConnInfo, head: Head) -> Response<Body> {
    let start = Instant::now();
    // Requests in flight finish on the config they started with.
    let gateway = state.gateway.load_full();
    let request_id = headers::ensure_request_id(req.headers_mut(), &gateway.proxy.rules.request_id);
    let destination = routing::route(&gateway, req.uri().path());
    let labels = (destination.label(), destination.metrics());
    let traced = || (req.headers().get(TRACEPARENT).map(HeaderValue::as_bytes), req.uri().path());
    let mut ctx = request_ctx(&state, &gateway, labels, request_id, req.method(), start, traced);
    let refused = if head == Head::Checked { Ok(()) } else { admission::check_request(&req) };
    let resp = if let Err(refusal) = refused {
        ctx.relabel(PROXY_ROUTE, None);
        rescue(&Error::Refused(refusal))
    } else {
        match destination {
            // Boxed: each branch's future is large, and hyper moves the request future around;
            // boxed, a request pays only for its own branch's.
            Destination::Token(route, captures) => {
                let (parts, body) = req.into_parts();
                let headers = HeaderView::Map(&parts.headers);
                let req = TokenRequest { method: &parts.method, query: parts.uri.query().unwrap_or(""), headers, body };
                serve_token(&state, &gateway, route, req, captures, &conn, &mut ctx).await
            }
            Destination::ForwardAuth(entry) => {
                let log_span = ctx.log_span();
                let deciding = Box::pin(entry.serve(req, &conn, &gateway.proxy.rules, &state.metrics, &mut ctx));
                match log_span {
                    Some(span) => deciding.instrument(span).await,
                    None => deciding.await,
                }
            }
            Destination::Jwks => gateway.jwks_response(),
            Destination::Proxy { limited } => {
                match limited.then(|| proxy_limits(&gateway, &req, &conn, &state, &mut ctx)) {
                    Some(Some(refused)) => refused,
                    // Boxed too: hyper moves the request future three times as it stores
                    // it, and the forward's exchange is most of that future's size (~4.9
                    // KiB inline: ~10 k instructions of copies on every request hyper
                    // serves, a token route's among them).
                    _ => {
                        let forwarding = Box::pin(forward_traced(&state, &gateway, req, &conn, &ctx));
                        match ctx.log_span() {
                            Some(span) => forwarding.instrument(span).await,
                            None => forwarding.await,
                        }
                    }
                }
            }
        }
    };
    finish(&state, &gateway, ctx, resp)
}

/// A request's context: its id, its destination's labels, and its server span when traced
/// (`traced`: the request's `traceparent` and path, looked up only then).
fn request_ctx<'g, 't>(
    state: &State,
    gateway: &'g Gateway,
    (label, metrics): (&'g str, Option<&'g RouteMetrics>),
    request_id: HeaderValue,
    method: &Method,
    start: Instant,
    traced: impl FnOnce() -> (Option<&'t [u8]>, &'t str),
) -> RequestCtx<'g> {
    let mut ctx = RequestCtx::new(request_id, label, method.clone(), start);
    ctx.relabel(label, metrics);
    if let Some(tracer) = &gateway.tracer {
        let (traceparent, path) = traced();
        let mut span = tracer.server_span(traceparent);
        span.set("url.path", Attr::Str(path.to_owned()));
        ctx.trace = Some(Box::new(RequestTrace { span, exporter: state.exporter.clone() }));
    }
    ctx
}

/// The answer with the request id on it, counted and logged.
fn finish(state: &State, gateway: &Gateway, ctx: RequestCtx<'_>, mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(gateway.proxy.rules.request_id.clone(), ctx.request_id.clone());
    ctx.finish(&state.metrics, resp.status());
    resp
}

/// A token route's answer, in the request's log span when traced. Boxed: each destination's
/// future is large, and hyper moves the request future around; boxed, a request pays only for
/// its own branch's.
async fn serve_token(
    state: &State,
    gateway: &Gateway,
    route: &Route,
    req: TokenRequest<'_>,
    captures: Vec<(String, String)>,
    conn: &ConnInfo,
    ctx: &mut RequestCtx<'_>,
) -> Response<Body> {
    let log_span = ctx.log_span();
    let serving = Box::pin(route.serve(req, captures, conn, &gateway.proxy.rules, &state.metrics, ctx));
    match log_span {
        Some(span) => serving.instrument(span).await,
        None => serving.await,
    }
}

/// A token route's request served from the head the fast path parsed (`Public::fast`): no
/// header map is built, and a generated request id is read through the view instead of being
/// inserted into one.
async fn token_from_head<'g>(
    state: &State,
    gateway: &'g Gateway,
    route: &'g Route,
    captures: Vec<(String, String)>,
    head: &RequestHead,
    body: Bytes,
    conn: &ConnInfo,
) -> Reply {
    let start = Instant::now();
    let name = &gateway.proxy.rules.request_id;
    let RequestId { value, generated } = request_id(head, name);
    let labels = (route.name.as_str(), Some(&route.metrics));
    let traced = || {
        let traceparent = head.fields.iter().find(|f| f.is(&head.bytes, &TRACEPARENT));
        (traceparent.map(|f| f.value(&head.bytes)), head.path())
    };
    let mut ctx = request_ctx(state, gateway, labels, value.clone(), &head.method, start, traced);
    let headers = HeaderView::Head { head, added: generated.then_some((name, &value)) };
    let req = TokenRequest {
        method: &head.method,
        query: head.query(),
        headers,
        body: http_body_util::Either::Right(Full::new(body)),
    };
    let resp = serve_token(state, gateway, route, req, captures, conn, &mut ctx).await;
    Reply::Response(finish(state, gateway, ctx, resp))
}

/// `forward`, in an `upstream` client span whose context the upstream gets as `traceparent`
/// when the request is traced (untraced, the client's `traceparent` goes on untouched).
async fn forward_traced(
    state: &State,
    gateway: &Gateway,
    mut req: Request<RequestBody>,
    conn: &ConnInfo,
    ctx: &RequestCtx<'_>,
) -> Response<Body> {
    let Some(mut span) = ctx.child_span("upstream", Kind::Client) else {
        return forward(state, gateway, req, conn, ctx).await;
    };
    req.headers_mut().insert(TRACEPARENT, span.context.traceparent());
    let resp = forward(state, gateway, req, conn, ctx).await;
    span.set("http.response.status_code", Attr::Int(i64::from(resp.status().as_u16())));
    span.error = resp.status().is_server_error();
    ctx.end_span(Some(span));
    resp
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Forwards a request through the `http`-types path; a failure becomes its answer.
async fn forward(
    state: &State,
    gateway: &Gateway,
    req: Request<RequestBody>,
    conn: &ConnInfo,
    ctx: &RequestCtx<'_>,
) -> Response<Body> {
    let client_fault = match req.body() {
        http_body_util::Either::Left(body) => Some(body.fault()),
        http_body_util::Either::Right(_) => None,
    };
    match gateway.proxy.forward(req, conn, &state.tunnels).await {
        Ok(resp) => resp,
        // The client's body failed first: the upstream is not to blame.
        Err(err) => match client_fault.as_ref().and_then(|f| f.get().copied()) {
            Some(fault) => client_failure(fault, &err, ctx),
            None => upstream_failure(state, &err, ctx),
        },
    }
}

/// The answer to a failed forward, counted and logged with its cause.
fn upstream_failure(state: &State, err: &Error, ctx: &RequestCtx<'_>) -> Response<Body> {
    if let Some(kind) = err.upstream_kind() {
        state.metrics.upstream_errors_total.with_label_values(&[kind]).inc();
    }
    tracing::warn!(request_id = ctx.id(), error = %err.chain(), "upstream error");
    rescue(err)
}

/// The answer to a forward that failed because the client's body did: 408 or 400, logged at
/// info (a client can neither trip upstream-error alerts nor 5xx objectives).
fn client_failure(fault: ClientFault, err: &Error, ctx: &RequestCtx<'_>) -> Response<Body> {
    tracing::info!(request_id = ctx.id(), ?fault, error = %err.chain(), "client body failed");
    rescue(&Error::ClientBody(fault))
}

/// `proxy_rate_limits`: the refusal (429) for forwarded traffic over a limit, if any.
fn proxy_limits(
    gateway: &Gateway,
    req: &Request<RequestBody>,
    conn: &ConnInfo,
    state: &State,
    ctx: &mut RequestCtx<'_>,
) -> Option<Response<Body>> {
    let client_ip = headers::client_ip(&gateway.proxy.rules, conn.peer.ip(), HeaderView::Map(req.headers()));
    ctx.client_ip = Some(client_ip);
    let input = LimitInput { client_ip, identity: None, route: PROXY_ROUTE, headers: HeaderView::Map(req.headers()) };
    let err = check_limits(&gateway.proxy_limits, &input, &state.metrics).err()?;
    if let Error::RateLimited { limit, .. } = &err {
        ctx.limited = Some(limit.clone());
    }
    Some(rescue(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, D, F: Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves a request's future several times as it stores it: each destination's state
    /// is boxed, so the future itself stays small: 1,440 bytes (the request, its context and the
    /// response), 4,888 with the forward inline.
    #[test]
    fn the_request_future_stays_small() {
        let size = returned_size(handle as fn(Arc<State>, Request<RequestBody>, ConnInfo, Head) -> _);
        assert!(size <= 2048, "stack::handle's future is {size} bytes");
    }

    type Relay<F> =
        fn(&'static State, &'static Gateway, &'static RequestHead, &'static ConnInfo, Option<[u8; 55]>) -> F;

    /// A relayed request's future is in the box made for every request the fast path answers
    /// (`server::h1`), copied into it whole: 928 bytes in release, 944 in a test build; 1,304
    /// with the exchange's future held twice (a capture of the timeout's block, and inside the
    /// timeout).
    #[test]
    fn a_relayed_requests_future_stays_small() {
        fn size<F: Future>(_: Relay<F>) -> usize {
            std::mem::size_of::<F>()
        }
        let size = size(relay as Relay<_>);
        assert!(size <= 1152, "stack::relay's future is {size} bytes");
    }
}
