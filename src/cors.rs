//! CORS on token routes (SPEC §3 "CORS"): browser code on another origin calls a token route.
//! A preflight is answered here, before the auth hook, limits, caches and the ledger, and never
//! forwarded; every other answer of the route gets `Vary: Origin` and, for an allowed origin,
//! the fields that let the page read it (a 429's `Retry-After` included). A disallowed origin
//! gets no `Access-Control-*` field at all.

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{self, Body};
use crate::config::{CorsConfig, FieldError, RateLimitHeaders};
use crate::header_view::{self, HeaderView};

/// Which origins may call a route.
enum Origins {
    /// `*` (only without credentials): any origin, answered `*`.
    Any,
    Listed {
        exact: Vec<String>,
        patterns: Vec<regex::Regex>,
    },
}

/// A route's compiled `cors`.
pub struct Cors {
    origins: Origins,
    credentials: bool,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: HeaderValue,
    max_age: HeaderValue,
}

impl Cors {
    /// Compiles `cfg`; `at` names the key (`routes[0].cors`), `methods` are the route's.
    pub fn build(
        cfg: &CorsConfig,
        methods: &[Method],
        headers_style: RateLimitHeaders,
        at: &str,
    ) -> Result<Self, FieldError> {
        let origins = if cfg.allowed_origins.iter().any(|o| o == "*") {
            if cfg.allow_credentials {
                return Err(FieldError::new(
                    format!("{at}.allowed_origins"),
                    "\"*\" cannot be used with allow_credentials: true (browsers refuse it); list the origins",
                ));
            }
            Origins::Any
        } else {
            let (mut exact, mut patterns) = (Vec::new(), Vec::new());
            for (j, origin) in cfg.allowed_origins.iter().enumerate() {
                let key = format!("{at}.allowed_origins[{j}]");
                match origin.strip_prefix("regex:") {
                    Some(re) => patterns.push(
                        regex::Regex::new(&format!("^(?:{re})$"))
                            .map_err(|e| FieldError::new(key, format!("invalid regex: {e}")))?,
                    ),
                    None => exact.push(origin_text(origin).map_err(|reason| FieldError::new(key, reason))?),
                }
            }
            if exact.is_empty() && patterns.is_empty() {
                return Err(FieldError::new(format!("{at}.allowed_origins"), "must list at least one origin"));
            }
            Origins::Listed { exact, patterns }
        };
        let list = |key: &str, items: &[String]| {
            for (j, name) in items.iter().enumerate() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(FieldError::new(format!("{at}.{key}[{j}]"), "not a header name"));
                }
            }
            HeaderValue::from_str(&items.join(", ")).map_err(|_| FieldError::new(format!("{at}.{key}"), "invalid"))
        };
        let expose = cfg.expose_headers.clone().unwrap_or_else(|| default_expose(headers_style));
        let methods = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        Ok(Self {
            origins,
            credentials: cfg.allow_credentials,
            allow_methods: HeaderValue::from_str(&methods)
                .map_err(|_| FieldError::new(format!("{at}.methods"), "invalid"))?,
            allow_headers: list("allowed_headers", &cfg.allowed_headers)?,
            expose_headers: list("expose_headers", &expose)?,
            max_age: HeaderValue::from(cfg.max_age.0.as_secs()),
        })
    }

    /// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    pub fn is_preflight(method: &Method, headers: HeaderView<'_>) -> bool {
        method == Method::OPTIONS
            && headers.contains(&header::ORIGIN)
            && headers.contains(&header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight from an allowed origin (204); `None`: the origin is not one.
    pub fn preflight(&self, headers: HeaderView<'_>) -> Option<Response<Body>> {
        let allow_origin = self.allowed(headers.get(&header::ORIGIN))?;
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        h.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(resp)
    }

    /// Adds `Vary: Origin` to any answer of the route and, for an allowed `origin`, the fields
    /// that let the page read it.
    pub fn decorate(&self, origin: Option<&[u8]>, resp: &mut Response<Body>) {
        let allowed = self.allowed(origin);
        let h = resp.headers_mut();
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(allow_origin) = allowed else { return };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, self.expose_headers.clone());
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if it may call the route: the
    /// origin itself (`*` only for `allowed_origins: ["*"]` without credentials).
    fn allowed(&self, origin: Option<&[u8]>) -> Option<HeaderValue> {
        let text = header_view::text(origin?)?;
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::Listed { exact, patterns } => {
                let hit = exact.iter().any(|o| o == text) || patterns.iter().any(|re| re.is_match(text));
                hit.then(|| HeaderValue::from_str(text).ok()).flatten()
            }
        }
    }
}

/// `retry-after` and the RateLimit fields the config sends.
fn default_expose(style: RateLimitHeaders) -> Vec<String> {
    let mut names = vec!["retry-after".to_owned()];
    if style.draft() {
        names.extend(["ratelimit".to_owned(), "ratelimit-policy".to_owned()]);
    }
    if style.legacy() {
        names.extend(["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"].map(str::to_owned));
    }
    names
}

/// An origin as browsers serialize it (RFC 6454): `scheme://host[:port]`, lower case, without a
/// path, query or trailing slash.
fn origin_text(origin: &str) -> Result<String, String> {
    let (scheme, rest) =
        origin.split_once("://").ok_or_else(|| format!("{origin:?} is not an origin (scheme://host[:port])"))?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return Err(format!("{origin:?}: the scheme must be http or https"));
    }
    if rest.is_empty() {
        return Err(format!("{origin:?} has no host"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "{origin:?} has a path (or a trailing slash): an origin is scheme://host[:port], as the browser sends it"
        ));
    }
    if rest.contains('@') || rest.contains(char::is_whitespace) {
        return Err(format!("{origin:?} is not an origin (scheme://host[:port])"));
    }
    Ok(origin.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Result<Cors, FieldError> {
        let cfg = CorsConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            allowed_headers: vec!["content-type".into(), "authorization".into()],
            expose_headers: None,
            max_age: crate::config::units::Duration::from_secs(600),
        };
        Cors::build(&cfg, &[Method::POST], RateLimitHeaders::Both, "routes[0].cors")
    }

    #[test]
    fn origins_with_a_path_or_a_trailing_slash_are_refused_by_key() {
        for bad in ["https://app.example.com/", "https://app.example.com/x", "app.example.com", "ftp://a"] {
            let err = cors(&[bad], false).err().expect(bad);
            assert_eq!(err.path, "routes[0].cors.allowed_origins[0]", "{bad}");
        }
        let err = cors(&["*"], true).err().expect("* with credentials");
        assert_eq!(err.path, "routes[0].cors.allowed_origins");
        assert!(cors(&["https://APP.example.com:8443", "regex:^https://[a-z]+\\.example\\.com$"], true).is_ok());
    }

    #[test]
    fn exact_and_regex_origins_are_echoed_and_others_get_nothing() {
        let c = cors(&["https://app.example.com", "regex:https://[a-z0-9-]+\\.preview\\.example\\.com"], true)
            .expect("valid");
        let check = |o: &str| c.allowed(Some(o.as_bytes()));
        assert_eq!(check("https://app.example.com").expect("listed"), "https://app.example.com");
        assert_eq!(check("https://pr-12.preview.example.com").expect("regex"), "https://pr-12.preview.example.com");
        // Anchored: a suffix or prefix does not make a match.
        assert!(check("https://pr-12.preview.example.com.evil.test").is_none());
        assert!(check("https://evil.test").is_none());
        assert!(check("http://app.example.com").is_none());
        assert!(c.allowed(None).is_none());
    }
}
