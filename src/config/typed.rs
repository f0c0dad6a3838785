//! Values checked as the file is read, so that nothing after the load can meet a bad one:
//! `http://` URLs with a host, HTTP methods, header names.

use std::fmt;
use std::str::FromStr;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::units::text_value;

/// An `http://` or `https://` URL with a host. Its `host:port` and `Host` value are worked
/// out once.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    uri: Uri,
    /// `host:port`, port 80 (http) or 443 (https) when absent: what a connection is opened to.
    addr: String,
    /// The authority as a `Host` field value.
    host: HeaderValue,
}

impl HttpUrl {
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// `host:port` to connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `https://`: connections to it are TLS.
    pub fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }

    /// The host, as TLS checks the certificate against it.
    pub fn host_name(&self) -> &str {
        self.uri.host().unwrap_or_default()
    }

    /// The `Host` field a request to this URL carries.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Path and query, `/` when empty: the origin-form target of a request to this URL.
    pub fn target(&self) -> &str {
        self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.uri.fmt(f)
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpUrl({})", self.uri)
    }
}

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => return Err(format!("only http:// and https:// URLs are supported, got {url:?}")),
        };
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            return Err(format!("URL {url:?} has no host"));
        };
        let header =
            HeaderValue::from_str(authority.as_str()).map_err(|_| format!("URL {url:?} has an invalid host"))?;
        let addr = format!("{host}:{}", uri.port_u16().unwrap_or(default_port));
        Ok(Self { uri, addr, host: header })
    }
}

/// An HTTP method (`GET`, `POST`, …).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MethodName(pub Method);

impl FromStr for MethodName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::from_bytes(s.as_bytes()).map(Self).map_err(|_| format!("invalid method {s:?}"))
    }
}

/// A header field name, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldName(pub HeaderName);

impl FromStr for FieldName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        HeaderName::from_bytes(s.as_bytes()).map(Self).map_err(|_| format!("not a valid header name: {s:?}"))
    }
}

fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

text_value!(HttpUrl, "HttpUrl", from_str, { "type": "string", "description": "an http:// or https:// URL with a host" });
text_value!(MethodName, "Method", from_str, { "type": "string", "description": "an HTTP method such as GET or POST" });
text_value!(FieldName, "HeaderName", from_str, { "type": "string", "description": "a header field name" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_their_address_and_host() {
        let u: HttpUrl = "http://127.0.0.1:3000/api/me?x=1".parse().unwrap();
        assert_eq!(u.addr(), "127.0.0.1:3000");
        assert_eq!(u.host(), "127.0.0.1:3000");
        assert_eq!(u.target(), "/api/me?x=1");
        let bare: HttpUrl = "http://backend".parse().unwrap();
        assert_eq!((bare.addr(), bare.target()), ("backend:80", "/"));
        let tls: HttpUrl = "https://idp.example/jwks".parse().unwrap();
        assert_eq!((tls.addr(), tls.is_https(), tls.host_name()), ("idp.example:443", true, "idp.example"));
        assert!("ftp://a".parse::<HttpUrl>().unwrap_err().contains("only http:// and https://"));
        assert!("/just/a/path".parse::<HttpUrl>().is_err());
    }
}
