//! A value's JSON text written as serde_json writes the tree it parses to, without building
//! the tree where that is sure to give the same bytes.

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

    /// Past the opening bracket `open` (copied) and the blanks after it.
    fn open(&mut self, open: u8) {
        self.out.push(open);
        self.at += 1;
        self.skip_blank();
    }

    /// Past `close` (copied) if it is next.
    fn close(&mut self, close: u8) -> bool {
        let closed = self.bytes.get(self.at) == Some(&close);
        if closed {
            self.at += 1;
            self.out.push(close);
        }
        closed
    }

    /// After an element or member: Some(true) past a comma (copied) for another, Some(false)
    /// past the closing bracket, None for anything else.
    fn next(&mut self, close: u8) -> Option<bool> {
        self.skip_blank();
        if self.close(close) {
            return Some(false);
        }
        (self.bytes.get(self.at) == Some(&b',')).then(|| {
            self.at += 1;
            self.out.push(b',');
            true
        })
    }

    fn array(&mut self, depth: usize) -> bool {
        self.open(b'[');
        if self.close(b']') {
            return true;
        }
        loop {
            if !self.value(depth + 1) {
                return false;
            }
            match self.next(b']') {
                Some(true) => {}
                Some(false) => return true,
                None => return false,
            }
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.open(b'{');
        if self.close(b'}') {
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
            match self.next(b'}') {
                Some(true) => {}
                Some(false) => return true,
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

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
