//! Where a request on the public listener goes, decided once, by path: a token route, the JWK
//! set, or the upstream (with or without `proxy_rate_limits`). Both the byte relay and the
//! `http`-types path ask this one function, so a new kind of route cannot be relayed by
//! mistake: the relay takes only `Destination::Proxy { limited: false }`.

use crate::gateway::Gateway;
use crate::token::Route;

use crate::context::PROXY_ROUTE;
/// The `route` label of the public JWK set (`jwks_path`).
pub const JWKS_ROUTE: &str = "jwks";

/// Where one request goes.
#[derive(Debug)]
pub enum Destination<'g> {
    /// A token route, with the values its path pattern captured.
    Token(&'g Route, Vec<(String, String)>),
    /// The public JWK set (`jwks_path`).
    Jwks,
    /// The upstream; `limited` when `proxy_rate_limits` apply first.
    Proxy { limited: bool },
}

impl<'g> Destination<'g> {
    /// The `route` label of metrics and the access log.
    pub fn label(&self) -> &'g str {
        match self {
            Self::Token(route, _) => route.name.as_str(),
            Self::Jwks => JWKS_ROUTE,
            Self::Proxy { .. } => PROXY_ROUTE,
        }
    }
}

/// Where a request for `path` goes under `gateway`.
pub fn route<'g>(gateway: &'g Gateway, path: &str) -> Destination<'g> {
    if let Some((route, captures)) = gateway.routes.find(path) {
        Destination::Token(route, captures)
    } else if gateway.config.jwks_path.as_deref() == Some(path) {
        Destination::Jwks
    } else {
        Destination::Proxy { limited: !gateway.proxy_limits.is_empty() }
    }
}
