//! A request's JSON body, checked once and read where asked: a template's `body.a.b` or an
//! identity's `body:/a/b` finds its value in the text when it is looked up, as JSON text, instead
//! of every field being built into a tree (a map and a string allocated per field) that the
//! request then mostly drops. `compact` writes such a text as serde_json writes its tree.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// A request body known to be one JSON value (or empty: `null`).
#[derive(Clone, Debug)]
pub struct JsonBody {
    /// Valid JSON text, so valid UTF-8.
    text: Bytes,
}

/// The body is not one JSON value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("request body is not valid JSON")]
pub struct NotJson;

/// No body: `body.*` is never there.
pub static NO_BODY: JsonBody = JsonBody { text: Bytes::from_static(b"null") };

impl JsonBody {
    /// A body as it came: empty or only whitespace is no body (`null`); anything else must be
    /// what serde_json would parse into a `Value` (the same grammar, number range and depth).
    pub fn parse(bytes: Bytes) -> Result<Self, NotJson> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(NO_BODY.clone());
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| NotJson)?;
        serde_json::from_str::<Checked>(text).map_err(|_| NotJson)?;
        Ok(Self { text: bytes })
    }

    /// A body holding `value` (`tokengate preview`, tests).
    pub fn from_value(value: &Value) -> Self {
        Self { text: Bytes::from(value.to_string()) }
    }

    fn text(&self) -> &str {
        // Checked at construction; an impossible failure reads as no body.
        std::str::from_utf8(&self.text).unwrap_or("null")
    }

    /// The JSON text of the value at `path` (object keys, as `Value::get` follows them: never
    /// into an array).
    pub fn get(&self, path: &[String]) -> Option<&str> {
        self.walk(path.iter().map(|key| Step { key: key.as_str().into(), index: None }))
    }

    /// The JSON text of the value at a JSON pointer (RFC 6901, as `Value::pointer` reads one:
    /// `~1` is `/`, `~0` is `~`, and a segment that is an index without a sign or leading zero
    /// steps into arrays).
    pub fn pointer(&self, pointer: &str) -> Option<&str> {
        if pointer.is_empty() {
            return self.walk(std::iter::empty());
        }
        let steps = pointer.strip_prefix('/')?.split('/').map(|segment| {
            let key: Cow<'_, str> = if segment.contains('~') {
                segment.replace("~1", "/").replace("~0", "~").into()
            } else {
                segment.into()
            };
            let index = (!key.starts_with('+') && (!key.starts_with('0') || key.len() == 1))
                .then(|| key.parse::<usize>().ok())
                .flatten();
            Step { key, index }
        });
        self.walk(steps)
    }

    /// The value at a JSON pointer, as a tree (an identity field).
    pub fn pointer_value(&self, pointer: &str) -> Option<Value> {
        serde_json::from_str(self.pointer(pointer)?).ok()
    }

    /// Each step looks in the text the one before found (the body's text first); no steps is
    /// the whole body.
    fn walk<'p>(&self, mut steps: impl Iterator<Item = Step<'p>>) -> Option<&str> {
        steps.try_fold(self.text().trim_ascii(), |at, step| find(at, &step))
    }
}

/// One step into a value: a member by key, or (when the step is an index) an array's element.
struct Step<'p> {
    key: Cow<'p, str>,
    index: Option<usize>,
}

/// The text of the member or element `step` names in `text`, the text of one JSON value (so
/// valid: it was checked); the last of repeated keys, as a parsed tree keeps. Scanned without
/// parsing: strings are skipped to their closing quote, containers to their matching bracket.
/// Anything unexpected (which checked text never has) finds nothing.
fn find<'t>(text: &'t str, step: &Step<'_>) -> Option<&'t str> {
    let mut scan = Scan { bytes: text.as_bytes(), at: 1 };
    let (object, close) = match text.as_bytes().first()? {
        b'{' => (true, b'}'),
        b'[' => (false, b']'),
        _ => return None,
    };
    let mut found = None;
    for i in 0.. {
        scan.blank();
        if scan.peek()? == close {
            break;
        }
        let wanted = if object {
            let key = scan.string()?;
            scan.blank();
            scan.expect(b':')?;
            scan.blank();
            key_is(text.get(key.0..key.1)?, &step.key)
        } else {
            step.index == Some(i)
        };
        let begin = scan.at;
        scan.value()?;
        if wanted {
            found = text.get(begin..scan.at);
        }
        scan.blank();
        match scan.peek()? {
            b',' => scan.at += 1,
            b if b == close => {}
            _ => return None,
        }
    }
    found
}

/// Whether a key's text (quotes included) is `key`: compared as it is unless it has escapes.
fn key_is(quoted: &str, key: &str) -> bool {
    if quoted.contains('\\') {
        serde_json::from_str::<String>(quoted).is_ok_and(|k| k == key)
    } else {
        quoted.get(1..quoted.len() - 1) == Some(key)
    }
}

/// A position in checked JSON text.
struct Scan<'t> {
    bytes: &'t [u8],
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn blank(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string from its opening quote: its span, quotes included.
    fn string(&mut self) -> Option<(usize, usize)> {
        let begin = self.at;
        self.expect(b'"')?;
        loop {
            self.at += memchr::memchr2(b'"', b'\\', self.bytes.get(self.at..)?)?;
            if self.peek()? == b'"' {
                self.at += 1;
                return Some((begin, self.at));
            }
            self.at += 2;
        }
    }

    /// Past one value: a string, a container to its matching bracket, or a number or literal
    /// to the byte that ends it.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                let rest = self.bytes.get(self.at..)?;
                let len = rest
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                    .unwrap_or(rest.len());
                self.at += len;
                (len > 0).then_some(())
            }
        }
    }
}

/// Any JSON value, read the way `Value` reads one (numbers in range, strings and keys
/// unescaped) and kept nowhere: the check that a body would parse.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// Writes the JSON text `text` (valid JSON) as serde_json writes the `Value` it parses to, and
/// returns true; or, for what it cannot be sure to write the same way, writes nothing and
/// returns false (the caller parses and serializes): a string or key with an escape, a number
/// that is not an integer of at most 18 digits (or is `-0`), an object with a key repeated or
/// with more than `MAX_KEYS` keys, nesting deeper than `MAX_DEPTH`. What is written is the text
/// without its whitespace: strings without escapes, small integers, literals, and the order of
/// keys are written by serde_json as they were read (with `preserve_order`).
pub fn compact(text: &str, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut reader = Compact { bytes: text.as_bytes(), at: 0, out };
    let written = reader.value(0) && reader.rest_is_blank();
    if !written {
        out.truncate(start);
    }
    written
}

const MAX_KEYS: usize = 16;
const MAX_DEPTH: usize = 32;

struct Compact<'t, 'o> {
    bytes: &'t [u8],
    at: usize,
    out: &'o mut Vec<u8>,
}

impl<'t> Compact<'t, '_> {
    fn skip_blank(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn rest_is_blank(&mut self) -> bool {
        self.skip_blank();
        self.at == self.bytes.len()
    }

    fn value(&mut self, depth: usize) -> bool {
        self.skip_blank();
        match self.bytes.get(self.at) {
            Some(b'{') if depth < MAX_DEPTH => self.object(depth),
            Some(b'[') if depth < MAX_DEPTH => self.array(depth),
            Some(b'"') => self.string().is_some_and(|s| {
                self.out.extend_from_slice(s);
                true
            }),
            Some(b't' | b'f' | b'n') => self.literal(),
            Some(b'-' | b'0'..=b'9') => self.integer(),
            _ => false,
        }
    }

    /// A string without escapes, quotes included.
    fn string(&mut self) -> Option<&'t [u8]> {
        let begin = self.at;
        let len = memchr::memchr2(b'"', b'\\', &self.bytes[begin + 1..])?;
        let end = begin + 1 + len;
        (self.bytes[end] == b'"').then(|| {
            self.at = end + 1;
            &self.bytes[begin..=end]
        })
    }

    fn literal(&mut self) -> bool {
        let rest = &self.bytes[self.at..];
        let Some(word) = [&b"true"[..], b"false", b"null"].into_iter().find(|w| rest.starts_with(w)) else {
            return false;
        };
        self.out.extend_from_slice(word);
        self.at += word.len();
        true
    }

    fn integer(&mut self) -> bool {
        let begin = self.at;
        let negative = self.bytes[begin] == b'-';
        let digits = self.bytes[begin + usize::from(negative)..].iter().take_while(|b| b.is_ascii_digit()).count();
        let end = begin + usize::from(negative) + digits;
        let plain = !matches!(self.bytes.get(end), Some(b'.' | b'e' | b'E'));
        if !plain || digits == 0 || digits > 18 || &self.bytes[begin..end] == b"-0" {
            return false;
        }
        self.out.extend_from_slice(&self.bytes[begin..end]);
        self.at = end;
        true
    }

    fn array(&mut self, depth: usize) -> bool {
        self.at += 1;
        self.out.push(b'[');
        self.skip_blank();
        if self.bytes.get(self.at) == Some(&b']') {
            self.at += 1;
            self.out.push(b']');
            return true;
        }
        loop {
            if !self.value(depth + 1) {
                return false;
            }
            self.skip_blank();
            match self.bytes.get(self.at) {
                Some(b',') => self.out.push(b','),
                Some(b']') => {
                    self.at += 1;
                    self.out.push(b']');
                    return true;
                }
                _ => return false,
            }
            self.at += 1;
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.at += 1;
        self.out.push(b'{');
        self.skip_blank();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            self.out.push(b'}');
            return true;
        }
        let mut keys: [&[u8]; MAX_KEYS] = [&[]; MAX_KEYS];
        let mut n = 0;
        loop {
            self.skip_blank();
            if self.bytes.get(self.at) != Some(&b'"') || n == MAX_KEYS {
                return false;
            }
            let Some(key) = self.string() else { return false };
            if keys[..n].contains(&key) {
                return false;
            }
            keys[n] = key;
            n += 1;
            self.out.extend_from_slice(key);
            self.skip_blank();
            if self.bytes.get(self.at) != Some(&b':') {
                return false;
            }
            self.at += 1;
            self.out.push(b':');
            if !self.value(depth + 1) {
                return false;
            }
            self.skip_blank();
            match self.bytes.get(self.at) {
                Some(b',') => self.out.push(b','),
                Some(b'}') => {
                    self.at += 1;
                    self.out.push(b'}');
                    return true;
                }
                _ => return false,
            }
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(text: &str) -> JsonBody {
        JsonBody::parse(Bytes::copy_from_slice(text.as_bytes())).unwrap()
    }

    fn tree(text: Option<&str>) -> Option<Value> {
        text.map(|t| serde_json::from_str(t).unwrap())
    }

    const TEXT: &str = r#" {"userId": "u-1", "n": 5, "deviceInfo": {"os": "iOS", "tags": ["a", {"b": null}]},
        "a/b": 1, "m~n": 2, "": 3, "esc\u0061ped": "x\ny", "dup": 1, "dup": {"last": true}, "list": [10, 20, 30]} "#;

    /// Every path and pointer finds what the parsed tree has there, or nothing where it has
    /// nothing.
    #[test]
    fn looks_up_what_the_tree_has() {
        let (b, v) = (body(TEXT), serde_json::from_str::<Value>(TEXT).unwrap());
        let paths: &[&[&str]] = &[
            &[],
            &["userId"],
            &["n"],
            &["deviceInfo"],
            &["deviceInfo", "os"],
            &["deviceInfo", "tags"],
            &["escaped"],
            &["dup"],
            &["dup", "last"],
            &["list"],
            &["list", "0"],
            &["missing"],
            &["userId", "x"],
            &["n", "x"],
        ];
        for path in paths {
            let owned: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
            let expected = owned.iter().try_fold(&v, |v, k| v.get(k)).cloned();
            assert_eq!(tree(b.get(&owned)), expected, "{path:?}");
        }
        for pointer in [
            "",
            "/userId",
            "/deviceInfo/os",
            "/deviceInfo/tags/1/b",
            "/deviceInfo/tags/01",
            "/deviceInfo/tags/+1",
            "/deviceInfo/tags/2",
            "/a~1b",
            "/m~0n",
            "/",
            "/escaped",
            "/dup/last",
            "/list/2",
            "/list/3",
            "userId",
            "/missing/x",
        ] {
            assert_eq!(tree(b.pointer(pointer)), v.pointer(pointer).cloned(), "{pointer:?}");
            assert_eq!(b.pointer_value(pointer), v.pointer(pointer).cloned(), "{pointer:?}");
        }
    }

    /// What is accepted is what serde_json parses into a `Value`; no body is `null`.
    #[test]
    fn accepts_what_a_value_would_parse() {
        let cases = [
            "{}",
            "[1, 2]",
            "\"s\"",
            "12",
            "-1.5e3",
            "null",
            "{\"a\": \"\\u00e9\\n\"}",
            "{\"a\": 1,}",
            "{\"a\" 1}",
            "[1 2]",
            "{\"a\": 1} x",
            "01",
            "1e400",
            "\"\\x\"",
            "\"a\u{1}\"",
            "{\"a\": tru}",
            "nul",
            "[",
            &"[".repeat(200),
            &format!("{}{}", "[".repeat(100), "]".repeat(100)),
        ];
        for text in cases {
            let parsed = serde_json::from_str::<Value>(text).is_ok();
            assert_eq!(JsonBody::parse(Bytes::copy_from_slice(text.as_bytes())).is_ok(), parsed, "{text:?}");
        }
        assert!(JsonBody::parse(Bytes::from_static(b"\"\xff\"")).is_err(), "not UTF-8");
        for blank in ["", " \n\t"] {
            assert_eq!(tree(body(blank).get(&[])), Some(Value::Null));
        }
        assert_eq!(tree(JsonBody::from_value(&json!({"a": [1]})).pointer("/a/0")), Some(json!(1)));
    }

    /// Where `compact` writes, it writes what serializing the parsed tree writes; where it
    /// would not be the same, it writes nothing and says so.
    #[test]
    fn compact_text_is_the_tree_serialized_or_nothing() {
        let same = [
            r#" { "device_name" : "iPhone 15", "os_version":"iOS 17.5" } "#,
            r#"[1, -2, 0, 123456789012345678, true, false, null, [], {}, [[]], {"a": {"b": [ ]}}]"#,
            r#""plain é ☃ text""#,
            r#"{"z": 1, "a": 2, "m": 3}"#,
        ];
        for text in same {
            let mut out = b"prefix".to_vec();
            assert!(compact(text, &mut out), "{text}");
            let expected = serde_json::to_string(&serde_json::from_str::<Value>(text).unwrap()).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), format!("prefix{expected}"), "{text}");
        }
        let keys = (0..=MAX_KEYS).map(|i| format!("\"k{i}\": {i}")).collect::<Vec<_>>().join(",");
        let deep = format!("{}1{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let not_sure = [
            r#""esc\"aped""#,
            r#"{"a\u0062": 1}"#,
            "1.5",
            "1e2",
            "-0",
            "1234567890123456789",
            r#"{"a": 1, "a": 2}"#,
            r#"[1, {"x": 2.0}]"#,
            &format!("{{{keys}}}"),
            &deep,
        ];
        for text in not_sure {
            let mut out = b"prefix".to_vec();
            assert!(!compact(text, &mut out), "{text}");
            assert_eq!(out, b"prefix", "{text}");
        }
    }
}
