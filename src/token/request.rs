//! One token request's template inputs: path captures, query, headers, JSON body, identity,
//! client address, and (for the response) the minted tokens.

use std::net::IpAddr;
use std::sync::Arc;

use http::Method;
use serde_json::Value;

use crate::auth::Identity;
use crate::body::RequestBody;
use crate::header_view::HeaderView;
use crate::json_body::{JsonBody, NO_BODY};
use crate::template::{Found, Lookup, Source};

/// A route path: literal segments and `{name}` captures.
#[derive(Clone, Debug)]
pub struct PathPattern {
    segments: Vec<Segment>,
}

#[derive(Clone, Debug)]
enum Segment {
    Literal(String),
    Capture(String),
}

impl PathPattern {
    pub fn parse(path: &str) -> Result<Self, String> {
        let rest = path.strip_prefix('/').ok_or_else(|| format!("must start with '/': {path:?}"))?;
        let segments = rest
            .split('/')
            .map(|s| match s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                Some(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    Ok(Segment::Capture(name.to_owned()))
                }
                Some(_) => Err(format!("invalid capture {s:?}")),
                None if s.contains('{') || s.contains('}') => Err(format!("invalid segment {s:?}")),
                None => Ok(Segment::Literal(s.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { segments })
    }

    /// True when the pattern has no captures (matched by exact string).
    pub fn is_exact(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The captures when `path` matches (percent-decoded), else None.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut captures = Vec::new();
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Capture(name) if !part.is_empty() => captures.push((name.clone(), percent_decode(part)?)),
                Segment::Capture(_) => return None,
            }
        }
        parts.next().is_none().then_some(captures)
    }
}

/// Decodes `%XX` (and `+` as space in queries when `plus` is set); None on invalid UTF-8.
fn decode(s: &str, plus: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

pub fn percent_decode(s: &str) -> Option<String> {
    decode(s, false)
}

/// Every `name=value` pair of a query, decoded, in order; None when one is not UTF-8.
pub fn query_pairs(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k, true)?, decode(v, true)?))
        })
        .collect()
}

/// The first value of query parameter `name`.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k, true)? == name).then(|| decode(v, true)).flatten()
    })
}

/// A request on a token route as the route reads it, from hyper's `http::Request` or from the
/// head the fast path parsed (`HeaderView`).
pub struct TokenRequest<'a> {
    pub method: &'a Method,
    pub query: &'a str,
    pub headers: HeaderView<'a>,
    pub body: RequestBody,
}

/// Everything a template may read for one request.
pub struct Values<'a> {
    pub identity: Option<&'a Identity>,
    pub body: &'a JsonBody,
    pub query: &'a str,
    pub captures: &'a [(String, String)],
    pub headers: HeaderView<'a>,
    pub client_ip: IpAddr,
    pub now: u64,
    /// Minted tokens by name, and the first token's (iat, exp), for the response.
    pub tokens: &'a [(&'a str, Arc<str>)],
    pub first: Option<(u64, u64)>,
    /// `error.message`, `error.code`, `error.status` for error responses.
    pub error: Option<(&'a str, &'a str, u16)>,
}

impl<'a> Values<'a> {
    /// A request's inputs before its body is read and its caller known, at the current time.
    pub fn new(query: &'a str, captures: &'a [(String, String)], headers: HeaderView<'a>, client_ip: IpAddr) -> Self {
        Self {
            identity: None,
            body: &NO_BODY,
            query,
            captures,
            headers,
            client_ip,
            now: crate::clock::unix_now(),
            tokens: &[],
            first: None,
            error: None,
        }
    }
}

impl Lookup for Values<'_> {
    fn lookup<'a>(&'a self, source: &'a Source) -> Option<Found<'a>> {
        let made = |v: Value| Some(Found::made(v));
        match source {
            Source::User(field) => self.identity?.get(field).map(Found::held),
            Source::Body(path) => self.body.get(path).map(Found::Text),
            Source::Query(name) => made(Value::String(query_param(self.query, name)?)),
            Source::Path(name) => Some(Found::Str(&self.captures.iter().find(|(n, _)| n == name)?.1)),
            Source::Header(name) => Some(Found::Str(self.headers.get_named(name)?)),
            Source::Uuid => made(Value::String(uuid::Uuid::new_v4().to_string())),
            Source::Now => made(Value::from(self.now)),
            Source::ClientIp => made(Value::String(self.client_ip.to_string())),
            Source::Token(name) => self.tokens.iter().find(|(n, _)| n == name).map(|(_, t)| Found::Str(t)),
            Source::ExpiresIn => made(Value::from(self.first?.1.saturating_sub(self.now))),
            Source::ExpiresAt => made(Value::from(self.first?.1)),
            Source::ExpiresAtIso => made(Value::String(rfc3339(self.first?.1))),
            Source::Error(field) => {
                let (message, code, status) = self.error?;
                made(match field.as_str() {
                    "message" => Value::String(message.to_owned()),
                    "code" => Value::String(code.to_owned()),
                    _ => Value::from(status),
                })
            }
            Source::Literal(l) => Some(Found::held(l)),
            // The signing key's fields: `TokenSpec::mint` answers them.
            Source::Key(_) => None,
        }
    }
}

/// Unix seconds as RFC 3339 UTC (`2026-11-22T10:59:59Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = PathPattern::parse("/v1/token/{phone}/{xid}").unwrap();
        assert_eq!(
            p.matches("/v1/token/%2B1555/abc").unwrap(),
            vec![("phone".into(), "+1555".into()), ("xid".into(), "abc".into())]
        );
        assert!(p.matches("/v1/token/1555").is_none());
        assert!(p.matches("/v1/token/1555/x/y").is_none());
        assert!(p.matches("/v1/token//x").is_none());
        assert!(PathPattern::parse("/a/{b").is_err());
        // Found by fuzz/fuzz_targets/route.rs: without the leading '/', the first segment was
        // skipped, so "+2{" parsed and matched "x%".
        assert!(PathPattern::parse("+2{").is_err());
        assert!(PathPattern::parse("token").is_err());
        assert!(PathPattern::parse("/token").unwrap().matches("token").is_none());
    }

    #[test]
    fn queries() {
        assert_eq!(query_param("a=1&nonce=x%20y+z&nonce=2", "nonce").as_deref(), Some("x y z"));
        assert_eq!(query_param("a=1", "b"), None);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
