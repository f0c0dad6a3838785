//! A request's JSON body, checked once and read where asked: a template's `body.a.b` or an
//! identity's `body:/a/b` finds its value in the text when it is looked up, as JSON text, instead
//! of every field being built into a tree (a map and a string allocated per field) that the
//! request then mostly drops. The check (`check`, one pass by hand, held to serde_json's verdict)
//! notes where a top-level object's members are, so `body.a` is found without a scan; deeper
//! steps scan the member's text. `compact` writes such a text as serde_json writes its tree.

use std::borrow::Cow;

use bytes::Bytes;
use bytestring::ByteString;
use serde_json::Value;

mod check;
mod compact;

use check::Members;
pub use compact::compact;

/// A request body known to be one JSON value (or empty: `null`).
#[derive(Clone, Debug)]
pub struct JsonBody {
    /// Valid JSON text, so valid UTF-8 (checked once, read as text without checking again).
    text: ByteString,
    /// Where a top-level object's members are (None for any other value).
    members: Option<Members>,
}

/// The body is not one JSON value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("request body is not valid JSON")]
pub struct NotJson;

/// No body: `body.*` is never there.
pub static NO_BODY: JsonBody = JsonBody { text: ByteString::from_static("null"), members: None };

impl JsonBody {
    /// A body as it came: empty or only whitespace is no body (`null`); anything else must be
    /// what serde_json would parse into a `Value` (the same grammar, number range and depth).
    pub fn parse(bytes: Bytes) -> Result<Self, NotJson> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(NO_BODY.clone());
        }
        let text = ByteString::try_from(bytes).map_err(|_| NotJson)?;
        let members = check::check(text.as_bytes()).ok_or(NotJson)?;
        Ok(Self { text, members })
    }

    /// A body holding `value` (`tokengate preview`, tests).
    pub fn from_value(value: &Value) -> Self {
        let text = ByteString::from(value.to_string());
        let members = check::check(text.as_bytes()).flatten();
        Self { text, members }
    }

    fn text(&self) -> &str {
        &self.text
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

    /// Each step looks in the text the one before found: a top-level member among the members
    /// the check found (the last of a repeated key, as a parsed tree keeps), then by a scan; no
    /// steps is the whole body.
    fn walk<'p>(&self, mut steps: impl Iterator<Item = Step<'p>>) -> Option<&str> {
        let text = self.text();
        let Some(first) = steps.next() else { return Some(text.trim_ascii()) };
        let at = match &self.members {
            Some(members) => {
                let span = |(a, b): (u32, u32)| text.get(a as usize..b as usize);
                let member = members.iter().rev().find(|m| span(m.key).is_some_and(|k| key_is(k, &first.key)))?;
                span(member.value)?
            }
            None => find(text.trim_ascii(), &first)?,
        };
        steps.try_fold(at, |at, step| find(at, &step))
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
        quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')) == Some(key)
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
            // serde_json's nesting limit: its 128th nested container is refused.
            &format!("{}{}", "[".repeat(127), "]".repeat(127)),
            &format!("{}{}", "[".repeat(128), "]".repeat(128)),
            &format!("{}1{}", "{\"a\":".repeat(127), "}".repeat(127)),
            &format!("{}1{}", "{\"a\":".repeat(128), "}".repeat(128)),
            // Escapes and surrogates.
            r#""\ud83d\ude00""#,
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\ud83d\u0041""#,
            r#""\ud83d\n""#,
            r#""\u00E9\/\b\f\r\t""#,
            r#""\u00g9""#,
            r#""\u+0e9""#,
            r#""\u00""#,
            "\"a\u{7f}\"",
            "\"tab\tinside\"",
            // Numbers: small integers, and what serde_json reads.
            "-0",
            "-",
            "00",
            "-01",
            "1.",
            ".5",
            "1e",
            "1e+5",
            "1E-5",
            "+1",
            "1.5e308",
            "1.8e308",
            "-1e400",
            "1e-400",
            "123456789012345678",
            "1234567890123456789012345678901234567890",
            &"9".repeat(400),
            "[1-2]",
            "[1.2.3]",
            "{\"a\":1e5,\"b\":-0.0}",
            // Blanks, literals, structure.
            "\u{c}1",
            " \r\n\t[ 1 , 2 ] ",
            "truex",
            "[true,false,null]",
            "[,1]",
            "{,}",
            "{\"a\":}",
            "{\"a\":1 \"b\":2}",
            "{1:2}",
            "[1]]",
            "\"unterminated",
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
}
