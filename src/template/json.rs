//! A template flattened for writing JSON text. What does not depend on the request (keys,
//! punctuation, constant values, the text around `{{ }}` in a string) is serialized once at
//! load and joined into runs; per request, the runs are copied and only the holes between them
//! are looked up and written. Claims and responses are written this way on every token request.

use serde_json::Value;

use super::{Expr, Found, Lookup, Missing, Part, Template};

/// A template as JSON text: runs of it, and holes.
#[derive(Clone, Debug)]
pub struct JsonText {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug)]
enum Piece {
    /// JSON text, written as it is.
    Text(Box<[u8]>),
    /// An exact `{{ }}`: its value, serialized with its JSON type.
    Value(Expr),
    /// A `{{ }}` inside a string: its value as escaped text (the quotes are in the runs).
    InString(Expr),
}

impl JsonText {
    pub fn new(template: &Template) -> Self {
        let mut flat = Flattener { pieces: Vec::new(), run: Vec::new() };
        flat.template(template);
        flat.finish()
    }

    /// Writes the JSON text for one request's values.
    pub fn write(&self, ctx: &dyn Lookup, out: &mut Vec<u8>) -> Result<(), Missing> {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.extend_from_slice(text),
                Piece::Value(e) => write_found(out, e.eval(ctx)?),
                Piece::InString(e) => write_escaped(out, &e.eval(ctx)?.text()),
            }
        }
        Ok(())
    }
}

/// Builds the pieces: text accumulates in `run` until a hole ends it.
struct Flattener {
    pieces: Vec<Piece>,
    run: Vec<u8>,
}

impl Flattener {
    fn template(&mut self, template: &Template) {
        match template {
            Template::Const(v) => write_value(&mut self.run, v),
            Template::Exact(e) => self.hole(Piece::Value(e.clone())),
            Template::Mixed(parts) => {
                self.run.push(b'"');
                for part in parts {
                    match part {
                        Part::Text(t) => write_escaped(&mut self.run, t),
                        Part::Expr(e) => self.hole(Piece::InString(e.clone())),
                    }
                }
                self.run.push(b'"');
            }
            Template::Object(fields) => {
                self.run.push(b'{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        self.run.push(b',');
                    }
                    write_str(&mut self.run, key);
                    self.run.push(b':');
                    self.template(value);
                }
                self.run.push(b'}');
            }
            Template::Array(items) => {
                self.run.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.run.push(b',');
                    }
                    self.template(item);
                }
                self.run.push(b']');
            }
        }
    }

    fn hole(&mut self, piece: Piece) {
        self.end_run();
        self.pieces.push(piece);
    }

    fn end_run(&mut self) {
        if !self.run.is_empty() {
            let run = std::mem::take(&mut self.run);
            self.pieces.push(Piece::Text(run.into_boxed_slice()));
        }
    }

    fn finish(mut self) -> JsonText {
        self.end_run();
        JsonText { pieces: self.pieces }
    }
}

/// A value as serde_json writes its tree: text from the body compacted as it is where that is
/// sure to be the same (`json_body::compact`), parsed and serialized where not.
fn write_found(out: &mut Vec<u8>, found: Found<'_>) {
    match found {
        Found::Tree(value) => write_value(out, &value),
        Found::Str(s) => write_str(out, s),
        Found::Text(text) => {
            if !crate::json_body::compact(text, out) {
                write_value(out, &Found::Text(text).into_value());
            }
        }
    }
}

/// A JSON value as serde_json writes it.
fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => write_str(out, s),
        // Writing a `Value` into a Vec cannot fail.
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// A JSON string: quoted and escaped.
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

/// The inside of a JSON string. Most strings (ids, tokens, timestamps) need no escape: one pass
/// finds that out, and their bytes are copied as they are; the others take serde_json's
/// escaping (`"`, `\` and control characters; nothing else).
fn write_escaped(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.extend_from_slice(s.as_bytes());
    } else if let Ok(quoted) = serde_json::to_string(s) {
        out.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
    }
}

/// Whether a JSON string needs an escape. Checked 16 bytes at a time with no early exit
/// inside a block, which the compiler turns into vector compares (a token is ~300 bytes).
fn needs_escape(bytes: &[u8]) -> bool {
    let escaped = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &b| any | escaped(b)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| escaped(b))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::template::Scope;

    fn pieces(template: Value) -> usize {
        JsonText::new(&Template::compile(&template, Scope::Response, "t").unwrap()).pieces.len()
    }

    /// Only the holes are pieces of their own: the constant text between them is one run.
    /// (`template::tests::written_json_is_the_rendered_tree_serialized` holds the text to what
    /// serializing the rendered tree gives.)
    #[test]
    fn constant_text_is_one_run() {
        assert_eq!(pieces(json!({"a": 1, "b": ["x", {"c": "d"}], "e": null})), 1);
        // `{"a":1,"b":` · id · `,"c":"at ` · id · `."}`
        assert_eq!(pieces(json!({"a": 1, "b": "{{ user.id }}", "c": "at {{ user.id }}."})), 5);
        assert_eq!(pieces(json!("{{ user.id }}")), 1);
    }

    #[test]
    fn escapes_are_found_anywhere_in_a_block() {
        assert!(!needs_escape("a".repeat(40).as_bytes()));
        for at in 0..40 {
            for bad in [b'"', b'\\', b'\n', 0x1f, 0] {
                let mut s = vec![b'a'; 40];
                s[at] = bad;
                assert!(needs_escape(&s), "{bad} at {at}");
            }
        }
    }
}
