//! Templates: compiled or refused, and what compiles renders (or names what is missing); written
//! as JSON text at once (`JsonText`), it is the rendered tree serialized, byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

use serde_json::{json, Value};
use tokengate::template::{Found, JsonText, Lookup, Scope, Source, Template};

struct Ctx;

impl Lookup for Ctx {
    fn lookup<'a>(&'a self, source: &'a Source) -> Option<Found<'a>> {
        let value = match source {
            Source::User(f) if f == "id" => json!("user-1"),
            Source::User(f) if f == "n" => json!(5),
            // As a request body holds it: JSON text, with blanks and an escape.
            Source::Body(p) if p.len() == 1 => return Some(Found::Text(r#"{"a": [1, "x\"\u0001"], "b" : {"c": 2}}"#)),
            Source::Body(_) => return Some(Found::Text(r#"[ 1, {"d": "e"} ]"#)),
            Source::Uuid => json!("u-u-i-d"),
            Source::Now => json!(1),
            _ => return None,
        };
        Some(Found::made(value))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&scope, rest)) = data.split_first() else { return };
    let scope = [Scope::Claims, Scope::Response, Scope::Error][usize::from(scope % 3)];
    let value = match serde_json::from_slice::<Value>(rest) {
        Ok(v) => v,
        Err(_) => Value::String(String::from_utf8_lossy(rest).into_owned()),
    };
    if let Ok(template) = Template::compile(&value, scope, "fuzz") {
        let rendered = template.render(&Ctx);
        let mut written = Vec::new();
        let wrote = JsonText::new(&template).write(&Ctx, &mut written);
        match (rendered, wrote) {
            (Ok(tree), Ok(())) => assert_eq!(serde_json::to_vec(&tree).ok(), Some(written)),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (tree, text) => panic!("render {tree:?} but JsonText {text:?}"),
        }
        let mut sources = Vec::new();
        template.sources(&mut sources);
    }
});
