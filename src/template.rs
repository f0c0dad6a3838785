//! The `{{ … }}` language of SPEC §2: parsed once at load, rendered per request.
//!
//! A string that is exactly one `{{ … }}` keeps the JSON type of its value; a mixed string is
//! text. Inside, `a | b | "literal"`: the first source present and non-empty wins. Values are
//! inserted as data (a JSON tree is built, or JSON text written with every value serialized
//! and every string escaped), never spliced into JSON text.

use std::borrow::Cow;

use serde_json::{Map, Value};

mod json;
pub use json::JsonText;

/// Where a value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// `user.<field>`: the auth hook's identity.
    User(String),
    /// `body.<a>.<b>`: the JSON request body.
    Body(Vec<String>),
    Query(String),
    Path(String),
    Header(String),
    Uuid,
    Now,
    ClientIp,
    /// `tokens.<name>` (response only).
    Token(String),
    ExpiresIn,
    ExpiresAt,
    ExpiresAtIso,
    /// `error.message|code|status` (error_response only).
    Error(String),
    /// `key.id|kid|client_email`: the signing key's own fields (token claims only).
    Key(String),
    /// A quoted string or a JSON literal (`{}`, `[]`, `0`, `true`): always present.
    Literal(Value),
}

impl Source {
    /// The name used in `missing required field: <name>`.
    pub fn field_name(&self) -> String {
        match self {
            Self::User(f)
            | Self::Query(f)
            | Self::Path(f)
            | Self::Header(f)
            | Self::Token(f)
            | Self::Error(f)
            | Self::Key(f) => f.clone(),
            Self::Body(p) => p.last().cloned().unwrap_or_default(),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    /// Sources whose value differs on every request: a token that uses one is never reused.
    pub fn is_fresh(&self) -> bool {
        matches!(self, Self::Uuid | Self::Now)
    }
}

/// Which sources a template may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Token claims and headers: request and identity only.
    Claims,
    /// `response`: also `tokens.*` and `expires_*`.
    Response,
    /// `error_response`: request sources and `error.*`.
    Error,
}

#[derive(Clone, Debug)]
pub struct Expr {
    alternatives: Vec<Source>,
}

#[derive(Clone, Debug)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

/// A compiled template over a JSON value.
#[derive(Clone, Debug)]
pub enum Template {
    Const(Value),
    /// Exactly one `{{ }}`: the value keeps its JSON type.
    Exact(Expr),
    /// Text with `{{ }}` inside: rendered as a string.
    Mixed(Vec<Part>),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
}

/// A required source was missing (400 `missing required field: <name>`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("missing required field: {0}")]
pub struct Missing(pub String);

/// Looks up a source's value for one request: borrowed where the request already holds it
/// (its body, the caller's identity, the tokens), made only where it does not.
pub trait Lookup {
    fn lookup<'a>(&'a self, source: &'a Source) -> Option<Found<'a>>;
}

/// A source's value: a JSON tree, or the JSON text of one value found in the request body as
/// it is (parsed only where a tree is needed: `render`, a cache key; written as text into
/// claims and responses).
#[derive(Debug)]
pub enum Found<'a> {
    Tree(Cow<'a, Value>),
    Text(&'a str),
    /// A string the request holds as it is (a minted token, a header, a path capture).
    Str(&'a str),
}

impl<'a> Found<'a> {
    /// A value made for this request.
    pub fn made(value: Value) -> Self {
        Found::Tree(Cow::Owned(value))
    }

    /// A value the request holds.
    pub fn held(value: &'a Value) -> Self {
        Found::Tree(Cow::Borrowed(value))
    }

    /// Null or an empty string: not there, for `a | b`.
    fn is_blank(&self) -> bool {
        match self {
            Found::Tree(v) => v.is_null() || v.as_str() == Some(""),
            Found::Text(text) => matches!(*text, "null" | "\"\""),
            Found::Str(s) => s.is_empty(),
        }
    }

    /// As a tree. (A body's text was checked to parse as one; were it not to, it reads as null.)
    pub fn into_value(self) -> Value {
        match self {
            Found::Tree(v) => v.into_owned(),
            Found::Text(text) => serde_json::from_str(text).unwrap_or(Value::Null),
            Found::Str(s) => Value::String(s.to_owned()),
        }
    }

    /// As text (inside a mixed string, or a header): a string as it is, anything else as its
    /// JSON text.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Found::Tree(v) => text_of(v),
            Found::Str(s) => Cow::Borrowed(s),
            Found::Text(text) => match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
                _ => Cow::Owned(text_of(&serde_json::from_str(text).unwrap_or(Value::Null)).into_owned()),
            },
        }
    }
}

impl Template {
    /// Compiles `value`; errors name `path` and the reason.
    pub fn compile(value: &Value, scope: Scope, path: &str) -> Result<Self, (String, String)> {
        Ok(match value {
            Value::String(s) => compile_str(s, scope).map_err(|reason| (path.to_owned(), reason))?,
            Value::Object(map) => Template::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Template::compile(v, scope, &format!("{path}.{k}"))?)))
                    .collect::<Result<_, (String, String)>>()?,
            ),
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Template::compile(v, scope, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            other => Template::Const(other.clone()),
        })
    }

    /// Renders against one request's values.
    pub fn render(&self, ctx: &dyn Lookup) -> Result<Value, Missing> {
        Ok(match self {
            Template::Const(v) => v.clone(),
            Template::Exact(e) => e.eval(ctx)?.into_value(),
            Template::Mixed(parts) => {
                let mut out = String::new();
                for p in parts {
                    match p {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => out.push_str(&e.eval(ctx)?.text()),
                    }
                }
                Value::String(out)
            }
            Template::Object(fields) => {
                let mut map = Map::with_capacity(fields.len());
                for (k, t) in fields {
                    map.insert(k.clone(), t.render(ctx)?);
                }
                Value::Object(map)
            }
            Template::Array(items) => Value::Array(items.iter().map(|t| t.render(ctx)).collect::<Result<_, _>>()?),
        })
    }

    /// An object template without the fields `drop` names (claims the minter sets itself).
    pub fn without_fields(self, drop: impl Fn(&str) -> bool) -> Self {
        match self {
            Template::Object(fields) => Template::Object(fields.into_iter().filter(|(k, _)| !drop(k)).collect()),
            other => other,
        }
    }

    /// Every source this template reads, in order (for cache keys).
    pub fn sources(&self, out: &mut Vec<Source>) {
        match self {
            Template::Const(_) => {}
            Template::Exact(e) => out.extend(e.alternatives.iter().cloned()),
            Template::Mixed(parts) => {
                for p in parts {
                    if let Part::Expr(e) = p {
                        out.extend(e.alternatives.iter().cloned());
                    }
                }
            }
            Template::Object(fields) => fields.iter().for_each(|(_, t)| t.sources(out)),
            Template::Array(items) => items.iter().for_each(|t| t.sources(out)),
        }
    }
}

/// A value as text (inside a mixed string, or a header): a string as it is, anything else as its
/// JSON text.
pub fn text_of(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

impl Expr {
    /// The first alternative that is there and neither null nor an empty string.
    fn eval<'a>(&'a self, ctx: &'a dyn Lookup) -> Result<Found<'a>, Missing> {
        for alt in &self.alternatives {
            let value = match alt {
                Source::Literal(l) => return Ok(Found::held(l)),
                other => ctx.lookup(other),
            };
            match value {
                Some(v) if !v.is_blank() => return Ok(v),
                _ => {}
            }
        }
        let first = self.alternatives.first().map(Source::field_name).unwrap_or_default();
        Err(Missing(first))
    }
}

fn compile_str(s: &str, scope: Scope) -> Result<Template, String> {
    if !s.contains("{{") {
        if s.contains("}}") {
            return Err(format!("unbalanced '}}}}' in {s:?}"));
        }
        return Ok(Template::Const(Value::String(s.to_owned())));
    }
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| format!("unterminated '{{{{' in {s:?}"))?;
        parts.push(Part::Expr(parse_expr(&after[..end], scope)?));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(match parts.as_slice() {
        [Part::Expr(e)] => Template::Exact(e.clone()),
        _ => Template::Mixed(parts),
    })
}

fn parse_expr(text: &str, scope: Scope) -> Result<Expr, String> {
    let mut alternatives = Vec::new();
    for alt in split_alternatives(text)? {
        alternatives.push(parse_source(alt.trim(), scope)?);
    }
    if alternatives.is_empty() {
        return Err("empty {{ }}".into());
    }
    Ok(Expr { alternatives })
}

/// Splits on `|` outside quotes.
fn split_alternatives(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '|') => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated string in {{{{{text}}}}}"));
    }
    out.push(&text[start..]);
    Ok(out)
}

fn parse_source(s: &str, scope: Scope) -> Result<Source, String> {
    if let Some(lit) = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
    {
        return Ok(Source::Literal(Value::String(lit.to_owned())));
    }
    if let Ok(json @ (Value::Object(_) | Value::Array(_) | Value::Number(_) | Value::Bool(_))) =
        serde_json::from_str::<Value>(s)
    {
        return Ok(Source::Literal(json));
    }
    let valid_name = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    let field = |prefix: &str| s.strip_prefix(prefix).filter(|n| valid_name(n)).map(str::to_owned);
    let source = match s {
        "uuid" => Source::Uuid,
        "now" => Source::Now,
        "client_ip" => Source::ClientIp,
        "expires_in" => Source::ExpiresIn,
        "expires_at" => Source::ExpiresAt,
        "expires_at_iso" => Source::ExpiresAtIso,
        _ => {
            if let Some(f) = field("user.") {
                Source::User(f)
            } else if let Some(path) = s.strip_prefix("body.") {
                let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
                if !segments.iter().all(|p| valid_name(p)) {
                    return Err(format!("invalid body path {s:?}"));
                }
                Source::Body(segments)
            } else if let Some(f) = field("query.") {
                Source::Query(f)
            } else if let Some(f) = field("path.") {
                Source::Path(f)
            } else if let Some(f) = field("header.") {
                Source::Header(f.to_ascii_lowercase())
            } else if let Some(f) = field("tokens.") {
                Source::Token(f)
            } else if let Some(f) = field("error.") {
                Source::Error(f)
            } else if let Some(f) = field("key.") {
                Source::Key(f)
            } else {
                return Err(format!("unknown source {s:?}"));
            }
        }
    };
    let allowed = match (&source, scope) {
        (Source::Token(_) | Source::ExpiresIn | Source::ExpiresAt | Source::ExpiresAtIso, s) => s == Scope::Response,
        (Source::Error(f), s) => s == Scope::Error && matches!(f.as_str(), "message" | "code" | "status"),
        (Source::Key(f), s) => s == Scope::Claims && matches!(f.as_str(), "id" | "kid" | "client_email"),
        _ => true,
    };
    if !allowed {
        return Err(format!("{s:?} is not available here"));
    }
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Ctx(Value);
    impl Lookup for Ctx {
        fn lookup<'a>(&'a self, source: &'a Source) -> Option<Found<'a>> {
            match source {
                Source::User(f) => self.0["user"].get(f).map(Found::held),
                Source::Body(p) => p.iter().try_fold(&self.0["body"], |v, k| v.get(k)).map(Found::held),
                Source::Uuid => Some(Found::made(json!("u-u-i-d"))),
                _ => None,
            }
        }
    }

    fn render(t: Value, ctx: Value) -> Result<Value, Missing> {
        Template::compile(&t, Scope::Response, "t").unwrap().render(&Ctx(ctx))
    }

    #[test]
    fn exact_keeps_type_mixed_is_text() {
        let ctx = json!({"user": {"id": "u1", "n": 5, "custom": {"a": [1]}}});
        assert_eq!(render(json!("{{ user.n }}"), ctx.clone()).unwrap(), json!(5));
        assert_eq!(render(json!("{{user.custom}}"), ctx.clone()).unwrap(), json!({"a": [1]}));
        assert_eq!(render(json!("user:{{ user.id }}/{{ user.n }}"), ctx.clone()).unwrap(), json!("user:u1/5"));
        assert_eq!(render(json!({"a": ["{{ user.id }}", 1, true]}), ctx).unwrap(), json!({"a": ["u1", 1, true]}));
    }

    #[test]
    fn fallbacks_and_missing() {
        let ctx = json!({"user": {"name": ""}, "body": {}});
        assert_eq!(render(json!("{{ user.name | \"anonymous\" }}"), ctx.clone()).unwrap(), json!("anonymous"));
        assert_eq!(render(json!("{{ body.xid | uuid }}"), ctx.clone()).unwrap(), json!("u-u-i-d"));
        assert_eq!(render(json!("{{ body.device | {} }}"), ctx.clone()).unwrap(), json!({}));
        assert_eq!(render(json!("{{ body.n | 0 }}"), ctx.clone()).unwrap(), json!(0));
        assert_eq!(render(json!("{{ body.userId }}"), ctx).unwrap_err(), Missing("userId".into()));
    }

    /// `JsonText` writes what serializing `render`'s tree writes, escapes and errors included.
    #[test]
    fn written_json_is_the_rendered_tree_serialized() {
        let ctx = json!({
            "user": {"id": "u1", "n": 5, "f": 1.5, "name": "a \"q\" \\ \n\u{1} é ☃", "custom": {"a": [1, "x\ty"], "b": null}},
            "body": {"deviceInfo": {"os": "iOS"}, "empty": ""}
        });
        let templates = [
            json!({"sub": "{{ user.id }}", "n": "{{ user.n }}", "f": "{{ user.f }}", "c": "{{ user.custom }}"}),
            json!({"mixed": "id={{ user.id }}, n={{ user.n }}, c={{ user.custom }}, name={{ user.name }}"}),
            json!({"name": "{{ user.name }}", "k\"ey": "v\u{7}", "lit": [1, true, null, {"x": "{{ body.empty | 'd' }}"}]}),
            json!(["{{ body.deviceInfo }}", "{{ body.missing | {} }}", "{{ uuid }}", 2.25, -3]),
            json!("{{ user.name }}"),
            json!({}),
        ];
        for t in templates {
            let compiled = Template::compile(&t, Scope::Response, "t").unwrap();
            let mut written = Vec::new();
            JsonText::new(&compiled).write(&Ctx(ctx.clone()), &mut written).unwrap();
            let expected = serde_json::to_vec(&compiled.render(&Ctx(ctx.clone())).unwrap()).unwrap();
            assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(expected).unwrap(), "{t}");
        }
        let missing = Template::compile(&json!({"a": "x", "b": "{{ body.userId }}"}), Scope::Response, "t").unwrap();
        assert_eq!(JsonText::new(&missing).write(&Ctx(ctx), &mut Vec::new()), Err(Missing("userId".into())));
    }

    /// The request body as text (`JsonBody`): what a template writes from it, compacted or
    /// parsed and serialized, is what serializing the tree rendered from the parsed body writes,
    /// for every shape of body value, and a mixed string reads the same text.
    #[test]
    fn written_json_from_body_text_is_the_tree_serialized() {
        struct Text(crate::json_body::JsonBody);
        impl Lookup for Text {
            fn lookup<'a>(&'a self, source: &'a Source) -> Option<Found<'a>> {
                match source {
                    Source::Body(p) => self.0.get(p).map(Found::Text),
                    _ => None,
                }
            }
        }
        let body = r#" { "s": "plain", "e": "a \"q\" \u00e9\n", "n": 12, "f": 1.50, "x": 1E2, "neg": -0,
            "o": { "k" : "v", "l": [1, 2, {"d": null}] }, "dup": {"a": 1, "a": 2}, "empty": "", "null": null,
            "t": true, "big": 123456789012345678901234 } "#;
        let text = Text(crate::json_body::JsonBody::parse(bytes::Bytes::from_static(body.as_bytes())).unwrap());
        let tree = Ctx(json!({ "body": serde_json::from_str::<Value>(body).unwrap() }));
        let fields = ["s", "e", "n", "f", "x", "neg", "o", "dup", "empty", "null", "t", "big"];
        for field in fields {
            for t in [
                json!({"v": format!("{{{{ body.{field} }}}}")}),
                json!({"v": format!("{{{{ body.{field} | 'fallback' }}}}")}),
                json!({"v": format!("<{{{{ body.{field} | 'fallback' }}}}>")}),
                json!([format!("{{{{ body.o.{field} | body.{field} | 0 }}}}")]),
            ] {
                let compiled = Template::compile(&t, Scope::Response, "t").unwrap();
                let (mut from_text, mut from_tree) = (Vec::new(), Vec::new());
                let written = JsonText::new(&compiled).write(&text, &mut from_text);
                assert_eq!(written, JsonText::new(&compiled).write(&tree, &mut from_tree), "{t}");
                assert_eq!(String::from_utf8(from_text).unwrap(), String::from_utf8(from_tree).unwrap(), "{t}");
                if written.is_ok() {
                    assert_eq!(compiled.render(&text).unwrap(), compiled.render(&tree).unwrap(), "{t}");
                }
            }
        }
    }

    #[test]
    fn values_are_data_not_json_text() {
        let ctx = json!({"user": {"name": "x\", \"admin\": true"}});
        let out = render(json!({"name": "{{ user.name }}"}), ctx).unwrap();
        assert_eq!(out.as_object().unwrap().len(), 1);
        assert_eq!(out["name"], "x\", \"admin\": true");
    }

    #[test]
    fn load_errors() {
        let bad = |t: &str, scope| Template::compile(&json!(t), scope, "routes[0].x").unwrap_err();
        assert_eq!(bad("{{ nope }}", Scope::Claims), ("routes[0].x".into(), "unknown source \"nope\"".into()));
        assert!(bad("{{ user.id", Scope::Claims).1.contains("unterminated"));
        assert!(bad("{{ tokens.a }}", Scope::Claims).1.contains("not available"));
        assert!(bad("{{ error.message }}", Scope::Response).1.contains("not available"));
        assert!(bad("{{ }}", Scope::Claims).1.contains("unknown source"));
    }
}
