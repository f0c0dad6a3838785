//! Templates: compiled or refused, and what compiles renders (or names what is missing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tokengate::template::{Lookup, Scope, Source, Template};

struct Ctx;

impl Lookup for Ctx {
    fn lookup(&self, source: &Source) -> Option<Value> {
        match source {
            Source::User(f) if f == "id" => Some(json!("user-1")),
            Source::User(f) if f == "n" => Some(json!(5)),
            Source::Body(_) => Some(json!({"a": [1, "x"]})),
            Source::Uuid => Some(json!("u-u-i-d")),
            Source::Now => Some(json!(1)),
            _ => None,
        }
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
        let _ = template.render(&Ctx);
        let mut sources = Vec::new();
        template.sources(&mut sources);
    }
});
