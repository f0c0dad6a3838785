//! Identity fields and where they come from: `body:/json/pointer`, `header:name`, `claim:name`.

use http::HeaderName;
use serde_json::{Map, Value};

use crate::header_view::HeaderView;
use crate::json_body::JsonBody;

use super::AuthError;

/// The caller's identity fields (`id`, `name`, `image`, `email`, `custom`…).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity(pub Map<String, Value>);

impl Identity {
    /// The `id` field as text (numbers are rendered).
    pub fn id(&self) -> Option<&str> {
        self.get("id").and_then(Value::as_str)
    }

    /// A field, found by comparing names: an identity has the few fields its hook's `identity:`
    /// maps, where hashing the name (SipHash) costs more than the comparisons.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.iter().find_map(|(name, value)| (name == field).then_some(value))
    }
}

/// One `identity:` entry.
#[derive(Clone, Debug)]
pub enum IdentitySource {
    /// JSON pointer into a body (the hook's answer, or the request for local hooks).
    Body(String),
    Header(HeaderName),
    Claim(String),
}

impl IdentitySource {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("body:") {
            if p.is_empty() || p.starts_with('/') {
                return Ok(Self::Body(p.to_owned()));
            }
        } else if let Some(h) = s.strip_prefix("header:") {
            if let Ok(name) = HeaderName::from_bytes(h.as_bytes()) {
                return Ok(Self::Header(name));
            }
        } else if let Some(c) = s.strip_prefix("claim:") {
            if !c.is_empty() {
                return Ok(Self::Claim(c.to_owned()));
            }
        }
        Err(format!("expected body:/pointer, header:name or claim:name, got {s:?}"))
    }

    /// The name used in `missing required field: <name>`.
    fn field_name(&self) -> String {
        match self {
            Self::Body(p) => p.rsplit('/').next().unwrap_or_default().to_owned(),
            Self::Header(h) => h.as_str().to_owned(),
            Self::Claim(c) => c.clone(),
        }
    }
}

fn present(v: Option<Value>) -> Option<Value> {
    v.filter(|v| !v.is_null() && v.as_str() != Some(""))
}

/// A JSON body identity fields are read from: a session endpoint's answer (parsed), or the
/// request's own (checked JSON text, read where a pointer asks).
pub(super) trait Pointed {
    fn at(&self, pointer: &str) -> Option<Value>;
}

impl Pointed for Value {
    fn at(&self, pointer: &str) -> Option<Value> {
        self.pointer(pointer).cloned()
    }
}

impl Pointed for JsonBody {
    fn at(&self, pointer: &str) -> Option<Value> {
        self.pointer_value(pointer)
    }
}

fn lookup(src: &IdentitySource, claims: Option<&Value>, body: &dyn Pointed, headers: HeaderView<'_>) -> Option<Value> {
    present(match src {
        IdentitySource::Body(p) => body.at(p),
        IdentitySource::Header(h) => headers.get_str(h).map(|s| Value::String(s.to_owned())),
        IdentitySource::Claim(c) => claims.and_then(|c2| c2.get(c)).cloned(),
    })
}

/// A user id is a string; a number becomes its decimal string. Anything else (an object such
/// as `{"$ne": null}`, an array, a boolean) is refused: it would end up as a token's `sub`.
fn normalize_id(v: Value) -> Option<Value> {
    match v {
        Value::String(s) => Some(Value::String(s)),
        Value::Number(n) => Some(Value::String(n.to_string())),
        _ => None,
    }
}

/// Identity from the request itself (api_key, jwt, none): a missing `id` is the caller's fault (400).
pub(super) fn extract(
    fields: &[(String, IdentitySource)],
    claims: Option<&Value>,
    body: &dyn Pointed,
    headers: HeaderView<'_>,
) -> Result<Identity, AuthError> {
    let mut out = Map::new();
    for (field, src) in fields {
        match lookup(src, claims, body, headers) {
            Some(v) if field == "id" => {
                let id = normalize_id(v).ok_or_else(|| AuthError::NotAString(src.field_name()))?;
                out.insert(field.clone(), id);
            }
            Some(v) => {
                out.insert(field.clone(), v);
            }
            None if field == "id" => return Err(AuthError::Missing(src.field_name())),
            None => {}
        }
    }
    Ok(Identity(out))
}

/// Identity from a session endpoint's 2xx answer: a missing `id` is the hook's fault (fail closed).
pub(super) fn extract_from_answer(
    fields: &[(String, IdentitySource)],
    body: &Value,
    headers: &http::HeaderMap,
) -> Result<Identity, String> {
    extract(fields, None, body, HeaderView::Map(headers))
        .map_err(|e| match e {
            AuthError::NotAString(_) => "the session endpoint's answer has an id that is neither a string nor a number",
            _ => "the session endpoint's answer has no id",
        })
        .map_err(str::to_owned)
}
