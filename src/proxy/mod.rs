//! Forwarded traffic: everything that is not a token route goes to the upstream untouched,
//! except for the header rules of SPEC §3.

pub mod headers;
mod upgrade;

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::task::TaskTracker;

use crate::body::Body;
use crate::config::Config;
use crate::error::Error;
pub use headers::ForwardRules;

/// The pooled upstream client and the rules for one config.
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    scheme: Scheme,
    authority: Authority,
    response_timeout: Duration,
    pub rules: ForwardRules,
}

/// What the connection knows about a request's origin.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's IP as a header value, formatted once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a valid header value");
        Self { peer, tls, peer_ip }
    }
}

impl Proxy {
    /// Builds the pool once; `validate()` has checked the upstream URL.
    pub fn new(config: &Config) -> Self {
        let up = &config.upstream;
        let uri: Uri = up.url.parse().expect("validated upstream url");
        Self {
            client: upstream_client(up.connect_timeout.0, up.pool_idle_timeout.0),
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: uri.authority().cloned().expect("validated upstream url has a host"),
            response_timeout: up.response_timeout.0,
            rules: ForwardRules::new(&config.forwarding),
        }
    }

    /// The pooled client, shared with auth hooks that call the backend.
    pub fn client(&self) -> &Client<HttpConnector, Body> {
        &self.client
    }

    /// Forwards `req` and returns the upstream's response (or a 101 with a tunnel behind it).
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        tunnels: &TaskTracker,
    ) -> Result<Response<Body>, Error> {
        let upgrade = headers::is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();

        // An HTTP/2 client names the host in :authority; HTTP/1.1 upstreams need `Host`.
        if !parts.headers.contains_key(header::HOST) {
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        if parts.version == Version::HTTP_2 {
            join_cookies(&mut parts.headers);
        }
        parts.version = Version::HTTP_11;
        headers::strip_hop_by_hop(&mut parts.headers, upgrade, true);
        let host = parts.headers.get(header::HOST).cloned();
        self.rules.apply_x_forwarded(&mut parts.headers, &conn, host.as_ref());

        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        uri.path_and_query =
            Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a valid URI");

        let upstream_req = Request::from_parts(parts, Either::Left(body));
        let mut resp = match tokio::time::timeout(self.response_timeout, self.client.request(upstream_req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(Error::upstream(e)),
            Err(_) => return Err(Error::UpstreamTimeout(self.response_timeout)),
        };

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        match client_upgrade {
            Some(client_side) if switching => {
                let upstream_side = hyper::upgrade::on(&mut resp);
                tunnels.spawn(upgrade::tunnel(client_side, upstream_side));
                headers::strip_hop_by_hop(resp.headers_mut(), true, false);
            }
            _ => headers::strip_hop_by_hop(resp.headers_mut(), false, false),
        }
        Ok(resp.map(Either::Left))
    }
}

/// One pooled HTTP/1.1 client: `TCP_NODELAY`, connect timeout, idle timeout enforced by a timer.
pub fn upstream_client(connect_timeout: Duration, idle_timeout: Duration) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).pool_idle_timeout(idle_timeout).build(connector)
}

/// RFC 9113 §8.2.3: HTTP/2 may split `Cookie` into several fields; HTTP/1.1 needs one.
fn join_cookies(h: &mut http::HeaderMap) {
    if h.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<u8> = h.get_all(header::COOKIE).iter().map(|v| v.as_bytes()).collect::<Vec<_>>().join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}
