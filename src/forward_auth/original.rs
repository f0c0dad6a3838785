//! The request a proxy in front is asking about, as it describes it: `X-Forwarded-Method`,
//! `-Uri`, `-Host` (Traefik, Caddy) or `X-Original-Method` and `X-Original-URL` (nginx,
//! ingress-nginx). Believed only from a trusted proxy (`forwarding.trusted_proxies`); from
//! anyone else the decision is about the auth request itself, so a forged original method or
//! URI changes nothing. Only the family the proxy sets is read: a proxy overwrites its own
//! fields but passes the client's others on, so reading both would let a client describe the
//! request (say, as a CORS preflight that needs no session).

use http::{HeaderMap, Method, Uri};

/// Which fields a proxy describes the original request with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fields {
    /// `X-Forwarded-Method`, `-Uri`, `-Host`: Traefik, Caddy.
    Forwarded,
    /// `X-Original-Method`, `X-Original-URL`: nginx `auth_request`, ingress-nginx `auth-url`.
    Original,
}

/// The original request's method, path, query and host.
#[derive(Debug, PartialEq, Eq)]
pub struct Original {
    pub method: Method,
    /// As the client sent it (not normalized), without the query.
    pub path: String,
    pub query: String,
    pub host: Option<String>,
}

impl Original {
    /// The original request described by `headers` in `fields` (None: the peer is not a trusted
    /// proxy); else, or where they say nothing usable, the auth request's own `method`, `path`
    /// (past the entry's prefix, for Envoy) and `query`.
    pub fn of(headers: &HeaderMap, method: &Method, (path, query): (&str, &str), fields: Option<Fields>) -> Self {
        let own = || Self { method: method.clone(), path: path.to_owned(), query: query.to_owned(), host: None };
        let Some(fields) = fields else {
            return own();
        };
        let (method_field, uri_field) = match fields {
            Fields::Forwarded => ("x-forwarded-method", "x-forwarded-uri"),
            Fields::Original => ("x-original-method", "x-original-url"),
        };
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let described = text(uri_field).and_then(|u| u.parse::<Uri>().ok());
        let mut original = match &described {
            Some(u) if u.path().starts_with('/') => Self {
                method: method.clone(),
                path: u.path().to_owned(),
                query: u.query().unwrap_or("").to_owned(),
                host: u.authority().map(|a| a.to_string()),
            },
            _ => own(),
        };
        if let Some(m) = text(method_field).and_then(|m| Method::from_bytes(m.as_bytes()).ok()) {
            original.method = m;
        }
        if let Some(host) = text("x-forwarded-host").filter(|h| !h.is_empty() && fields == Fields::Forwarded) {
            original.host = Some(host.to_owned());
        }
        original
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn traefik_and_caddy_fields_describe_the_original_request() {
        let h = headers(&[
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/orgs/acme/items?id=7&x=%20y"),
            ("x-forwarded-host", "app.example.com"),
        ]);
        let o = Original::of(&h, &Method::GET, ("/_tokengate/auth", ""), Some(Fields::Forwarded));
        assert_eq!(o.method, Method::DELETE);
        assert_eq!(o.path, "/orgs/acme/items");
        assert_eq!(o.query, "id=7&x=%20y");
        assert_eq!(o.host.as_deref(), Some("app.example.com"));
    }

    #[test]
    fn nginx_fields_describe_the_original_request() {
        let h = headers(&[("x-original-method", "OPTIONS"), ("x-original-url", "https://app.example.com/a/b?c=d")]);
        let o = Original::of(&h, &Method::GET, ("/_tokengate/auth", ""), Some(Fields::Original));
        assert_eq!((o.method, o.path.as_str(), o.query.as_str()), (Method::OPTIONS, "/a/b", "c=d"));
        assert_eq!(o.host.as_deref(), Some("app.example.com"));
    }

    #[test]
    fn an_untrusted_peer_or_garbage_describes_nothing() {
        let h = headers(&[("x-forwarded-method", "OPTIONS"), ("x-forwarded-uri", "/admin?q=1")]);
        let own = ("/_tokengate/auth", "q=2");
        let o = Original::of(&h, &Method::GET, own, None);
        assert_eq!((o.method, o.path.as_str(), o.query.as_str()), (Method::GET, "/_tokengate/auth", "q=2"));
        // nginx sets X-Original-*: what a client added in the other family is not read.
        let o = Original::of(&h, &Method::GET, own, Some(Fields::Original));
        assert_eq!((o.method, o.path.as_str()), (Method::GET, "/_tokengate/auth"));
        let h = headers(&[("x-forwarded-method", "NOT A METHOD"), ("x-forwarded-uri", "no slash")]);
        let o = Original::of(&h, &Method::GET, own, Some(Fields::Forwarded));
        assert_eq!((o.method, o.path.as_str()), (Method::GET, "/_tokengate/auth"));
    }
}
