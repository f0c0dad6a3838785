//! A template flattened for writing JSON text. What does not depend on the request (keys,
//! punctuation, constant values, the text around `{{ }}` in a string) is serialized once at
//! load and joined into runs; per request, the runs are copied and only the holes between them
//! are looked up and written. Claims and responses are written this way on every token request.

use serde_json::Value;

use super::{write_escaped, write_str, write_value, Expr, Lookup, Missing, Part, Template};

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
                Piece::Value(e) => write_value(out, &*e.eval(ctx)?),
                Piece::InString(e) => match &*e.eval(ctx)? {
                    Value::String(s) => write_escaped(out, s),
                    other => write_escaped(out, &other.to_string()),
                },
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
}
