//! A request's JSON body read where asked (`JsonBody`): accepted exactly when serde_json parses
//! it into a `Value`; every member path and pointer finds what the parsed tree has there; and
//! where `compact` writes a value's text, it writes what serializing the tree writes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokengate::json_body::{compact, JsonBody};

/// Every path of object keys and array indices in `value`, a missing key under each object,
/// at most `left` deep.
fn paths(value: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>, left: usize) {
    out.push(at.clone());
    if left == 0 {
        return;
    }
    let children: Vec<(String, &Value)> = match value {
        Value::Object(m) => {
            m.iter().map(|(k, v)| (k.clone(), v)).chain([("\u{0}missing".to_owned(), &Value::Null)]).collect()
        }
        Value::Array(a) => a.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
        _ => return,
    };
    for (key, child) in children {
        at.push(key);
        paths(child, at, out, left - 1);
        at.pop();
    }
}

fuzz_target!(|data: &[u8]| {
    let body = JsonBody::parse(Bytes::copy_from_slice(data));
    let blank = data.iter().all(u8::is_ascii_whitespace);
    let tree = if blank { Ok(Value::Null) } else { serde_json::from_slice::<Value>(data) };
    assert_eq!(body.is_ok(), tree.is_ok(), "accepted by one and not the other");
    let (Ok(body), Ok(tree)) = (body, tree) else { return };
    let mut all = Vec::new();
    paths(&tree, &mut Vec::new(), &mut all, 4);
    for path in all.iter().take(64) {
        let as_tree = path.iter().try_fold(&tree, |v, k| v.get(k.as_str()));
        let found = body.get(path);
        assert_eq!(found.map(|t| serde_json::from_str::<Value>(t).unwrap()).as_ref(), as_tree, "{path:?}");
        let pointer: String = path.iter().map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1"))).collect();
        assert_eq!(body.pointer_value(&pointer).as_ref(), tree.pointer(&pointer), "{pointer:?}");
        if let Some(text) = body.pointer(&pointer) {
            let mut out = Vec::new();
            if compact(text, &mut out) {
                let expected = serde_json::to_vec(&serde_json::from_str::<Value>(text).unwrap()).unwrap();
                assert_eq!(out, expected, "{text}");
            }
        }
    }
});
