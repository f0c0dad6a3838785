//! Token routes (SPEC §3), in this order: method (405) → body size (413) → auth hook (401/503)
//! → template inputs (400) → mint (or reuse) → respond. Every answer carries
//! `Cache-Control: no-store`; errors use the route's `error_response` shape.
//!
//! One file per job: `build` (config → route), `serve` (the pipeline above), `body` (reading
//! the request), `answer` (mint, record, render), `respond` (the response and error shapes),
//! `routes` (the route table and revocation), `preview` (`tokengate mint`); `request` (path
//! patterns and template inputs), `limits`, `mint`, `reuse`, `record`.

mod answer;
mod body;
mod build;
pub mod limits;
pub mod mint;
mod preview;
mod record;
pub mod request;
mod respond;
mod reuse;
mod routes;
mod serve;

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use prometheus::IntCounter;

use crate::auth::Hook;
use crate::config::OnError;
use crate::cors::Cors;
use crate::ledger::Recorder;
use crate::metrics::{RouteMetrics, Series};
use crate::ratelimit::RateLimit;
use crate::shared::Shared;
use crate::template::{JsonText, Template};
pub(crate) use answer::Issued;
pub use build::Compiled;
use mint::{Minted, TokenSpec};
pub use preview::preview;
use request::PathPattern;
pub use routes::{forget_user, Routes};
pub(crate) use serve::Admitted;

/// Reused tokens held per route.
const TOKEN_CACHE_ENTRIES: u64 = 100_000;

/// A route's minted tokens, by cache key (see `TokenSpec::cache_key`).
pub type TokenCache = moka::sync::Cache<String, Minted>;

/// What makes a token cache reusable by a new config: the same route minting the same tokens
/// (claims, lifetimes, headers, and the signing keys' material).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenShape {
    route: String,
    tokens: String,
}

pub(crate) struct Rendered {
    status: StatusCode,
    content_type: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Template,
    /// `body` flattened, when the content type is JSON.
    json: Option<JsonText>,
}

impl Rendered {
    fn new(
        status: StatusCode,
        content_type: HeaderValue,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Template,
    ) -> Self {
        let json = content_type.as_bytes().starts_with(b"application/json").then(|| JsonText::new(&body));
        Self { status, content_type, headers, body, json }
    }
}

/// One configured token route.
pub struct Route {
    pub name: String,
    pattern: PathPattern,
    methods: Vec<Method>,
    allow: HeaderValue,
    hook: Arc<Hook>,
    tokens: Vec<TokenSpec>,
    cache: Option<TokenCache>,
    response: Rendered,
    error_response: Option<Rendered>,
    body_limit: u64,
    /// Limits checked before the auth hook (not keyed by user), then after it.
    pre_auth_limits: Vec<Arc<RateLimit>>,
    user_limits: Vec<Arc<RateLimit>>,
    /// Where minted tokens are recorded (the top-level `ledger`), with this route's claims.
    ledger: Option<Recorder>,
    /// Redis, where this route's limits are counted across replicas, and what to do without.
    shared: Option<(Shared, OnError)>,
    /// Browser pages on other origins may call the route (preflights answered here).
    cors: Option<Cors>,
    /// Its requests and their latency.
    pub metrics: RouteMetrics,
    /// `tokengate_tokens_minted_total` of each of `tokens`, in their order.
    minted: Vec<Series<IntCounter>>,
}

/// Whether an answer's tokens go to the ledger (`tokengate mint` previews record nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Ledger,
    Nothing,
}

impl Route {
    /// The route's `cors`, if browser pages on other origins may call it.
    pub(crate) fn cors(&self) -> Option<&Cors> {
        self.cors.as_ref()
    }

    /// True when the route's auth hook produces no user (type none without `identity`).
    pub(crate) fn is_anonymous(&self) -> bool {
        self.hook.is_anonymous()
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Route({})", self.name)
    }
}
