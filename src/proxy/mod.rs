//! Forwarded traffic: everything that is not a token route goes to the upstream untouched,
//! except for the header rules of SPEC §3.

pub mod headers;
pub mod pool;
mod pump;
pub mod relay;
pub mod rules;
mod upgrade;

use std::future::Future;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use tokio_util::task::TaskTracker;

use crate::body::{Body, RequestBody, UpstreamBody};
use crate::config::{FieldError, ForwardingConfig, UpstreamConfig};
use crate::conn_info::ConnInfo;
use crate::error::Error;
use crate::shelf::Shelf;
use pool::{Pool, PoolKey};
pub use rules::ForwardRules;

/// The pooled upstream connections and the rules for one config.
pub struct Proxy {
    pool: Pool,
    /// `Host` for requests that came without one (HTTP/1.0 clients).
    host: HeaderValue,
    response_timeout: Duration,
    pub rules: ForwardRules,
    /// `rules::is_forwardable_trailer` for the bodies this proxy streams upstream.
    trailers: crate::body::TrailerFilter,
}

impl Proxy {
    /// The forwarding rules of `upstream` and `forwarding`, over the pool for that upstream
    /// from `pools` (the one in service when the address and timeouts are unchanged).
    pub fn new(
        upstream: &UpstreamConfig,
        forwarding: &ForwardingConfig,
        pools: &Shelf<PoolKey, Pool>,
    ) -> Result<Self, FieldError> {
        let tls = crate::tls::client_for(&upstream.url, upstream.ca_file.as_deref(), "upstream")?;
        let (connect, idle) = (upstream.connect_timeout.0, upstream.pool_idle_timeout.0);
        let key = PoolKey::new(&upstream.url, connect, idle, tls.as_ref());
        let rules = ForwardRules::new(forwarding);
        Ok(Self {
            pool: Pool::shared(pools, key, tls),
            host: upstream.url.host().clone(),
            response_timeout: upstream.response_timeout.0,
            trailers: {
                let rules = rules.clone();
                std::sync::Arc::new(move |t: &mut http::HeaderMap| rules.strip_trailers(t))
            },
            rules,
        })
    }

    /// Forwards `req` and returns the upstream's response (or a 101 with a tunnel behind it).
    ///
    /// The request is rewritten before the returned future exists, so that the future holds
    /// only the exchange and what the answer needs: hyper moves every request's future around
    /// at its full size, and an `async fn` would also keep the request and its rewriting.
    pub fn forward<'a>(
        &'a self,
        mut req: Request<RequestBody>,
        conn: &ConnInfo,
        tunnels: &'a TaskTracker,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send + 'a {
        let upgrade = headers::is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let sent =
            tokio::time::timeout(self.response_timeout, self.pool.send(self.upstream_request(req, conn, upgrade)));
        async move {
            let mut resp = match sent.await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => return Err(Error::from(e)),
                Err(_) => return Err(Error::UpstreamTimeout(self.response_timeout)),
            };
            let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            match client_upgrade {
                Some(client_side) if switching => {
                    let upstream_side = match resp.body_mut().take_upgraded() {
                        Some(conn) => upgrade::Upstream::Own(conn),
                        None => upgrade::Upstream::Hyper(hyper::upgrade::on(&mut resp)),
                    };
                    tunnels.spawn(upgrade::tunnel(client_side, upstream_side));
                    headers::apply_response(&self.rules, resp.status(), resp.headers_mut(), true);
                }
                _ => headers::apply_response(&self.rules, resp.status(), resp.headers_mut(), false),
            }
            Ok(resp.map(Either::Left))
        }
    }

    /// The request as it goes upstream: HTTP/1.1, hop-by-hop fields gone, `Host` and
    /// `X-Forwarded-*` set, an origin-form target.
    pub(crate) fn upstream_request(
        &self,
        req: Request<RequestBody>,
        conn: &ConnInfo,
        upgrade: bool,
    ) -> Request<UpstreamBody> {
        let (mut parts, body) = req.into_parts();

        let h2 = parts.version == Version::HTTP_2;
        if h2 {
            join_cookies(&mut parts.headers);
        }
        parts.version = Version::HTTP_11;
        // An absolute-form target's host replaces `Host` (RFC 9112 §3.2.2); an HTTP/2 client
        // names the host in :authority; a client without either (HTTP/1.0) gets the
        // upstream's own, which the rules add.
        let named = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        match (named, parts.headers.contains_key(header::HOST)) {
            (Some(named), true) if !h2 => {
                parts.headers.insert(header::HOST, named);
            }
            (Some(named), false) => {
                parts.headers.insert(header::HOST, named);
            }
            _ => {}
        }
        headers::apply_request(&self.rules, &mut parts.headers, conn, upgrade, &self.host);

        // Origin-form request-target (RFC 9112 §3.2.1), as the client sent it.
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let target = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::from(target);
        }

        let body = match body {
            Either::Left(streamed) => Either::Left(streamed.with_trailer_filter(self.trailers.clone())),
            Either::Right(whole) => Either::Right(whole),
        };
        Request::from_parts(parts, body)
    }
}

/// RFC 9113 §8.2.3: HTTP/2 may split `Cookie` into several fields; HTTP/1.1 needs one.
fn join_cookies(h: &mut http::HeaderMap) {
    if let Some(joined) = joined_cookies(h.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes)) {
        h.insert(header::COOKIE, joined);
    }
}

/// The `Cookie` crumbs an HTTP/2 client split (RFC 9113 §8.2.3) as one field, joined with
/// `; `; None when there are fewer than two.
pub fn joined_cookies<'a>(crumbs: impl Iterator<Item = &'a [u8]>) -> Option<HeaderValue> {
    let crumbs: smallvec::SmallVec<[&[u8]; 4]> = crumbs.collect();
    if crumbs.len() < 2 {
        return None;
    }
    HeaderValue::from_bytes(&crumbs.join(&b"; "[..])).ok()
}
