//! The check that a body is one JSON value serde_json would parse into a `Value`, in one pass
//! that keeps nothing but where a top-level object's members are (so that `body.a` finds its
//! member without a scan). Accepted is what serde_json accepts, which `json_body`'s tests and
//! fuzz target hold it to: RFC 8259's grammar on UTF-8 text (checked before), escapes with
//! their surrogate pairs, serde_json's nesting limit, and a number's range (a number that is not
//! a small integer is read by serde_json itself).

use smallvec::SmallVec;

/// One member of a top-level object: its key's span (quotes included) and its value's.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member {
    pub key: (u32, u32),
    pub value: (u32, u32),
}

pub(super) type Members = SmallVec<[Member; 4]>;

/// serde_json refuses its 128th nested array or object.
const MAX_NESTING: usize = 127;

/// None when `text` is not one JSON value; else a top-level object's members (none for any
/// other value), or None inside Some for a text too long for the spans.
pub(super) fn check(text: &[u8]) -> Option<Option<Members>> {
    let mut checker = Checker { bytes: text, at: 0, depth: 0 };
    checker.blank();
    let mut members = Members::new();
    let indexed = checker.peek() == Some(b'{') && u32::try_from(text.len()).is_ok();
    if indexed {
        checker.object(Some(&mut members))?;
    } else {
        checker.value()?;
    }
    checker.blank();
    (checker.at == text.len()).then_some(indexed.then_some(members))
}

struct Checker<'t> {
    bytes: &'t [u8],
    at: usize,
    depth: usize,
}

impl Checker<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// JSON's four blanks (not form feed, which `is_ascii_whitespace` would take).
    fn blank(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(None),
            b'[' => self.array(),
            b'"' => self.string().map(drop),
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        self.bytes.get(self.at..)?.starts_with(word).then(|| self.at += word.len())
    }

    /// Into an array or object (its opening bracket), within the nesting limit.
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        self.at += 1;
        self.blank();
        (self.depth <= MAX_NESTING).then_some(())
    }

    /// Past the closing bracket `close` if it is next (blanks skipped before).
    fn leave(&mut self, close: u8) -> bool {
        let closed = self.peek() == Some(close);
        if closed {
            self.at += 1;
            self.depth -= 1;
        }
        closed
    }

    fn array(&mut self) -> Option<()> {
        self.enter()?;
        if self.leave(b']') {
            return Some(());
        }
        loop {
            self.value()?;
            self.blank();
            if self.leave(b']') {
                return Some(());
            }
            self.expect(b',')?;
            self.blank();
        }
    }

    fn object(&mut self, mut members: Option<&mut Members>) -> Option<()> {
        self.enter()?;
        if self.leave(b'}') {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.blank();
            self.expect(b':')?;
            self.blank();
            let begin = self.at;
            self.value()?;
            if let Some(members) = members.as_deref_mut() {
                let span = |(a, b): (usize, usize)| Some((u32::try_from(a).ok()?, u32::try_from(b).ok()?));
                members.push(Member { key: span(key)?, value: span((begin, self.at))? });
            }
            self.blank();
            if self.leave(b'}') {
                return Some(());
            }
            self.expect(b',')?;
            self.blank();
        }
    }

    /// A string from its opening quote: its span, quotes included. No control character
    /// unescaped; escapes as serde_json reads them into a `String`.
    fn string(&mut self) -> Option<(usize, usize)> {
        let begin = self.at;
        self.expect(b'"')?;
        loop {
            self.at += stop(self.bytes.get(self.at..)?)?;
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some((begin, self.at));
                }
                b'\\' => {
                    self.at += 1;
                    self.escape()?;
                }
                _ => return None,
            }
        }
    }

    /// After a backslash. A `\u` escape of a UTF-16 surrogate must be a leading one followed
    /// at once by an escaped trailing one.
    fn escape(&mut self) -> Option<()> {
        let escaped = self.peek()?;
        self.at += 1;
        match escaped {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => match self.hex4()? {
                0xDC00..=0xDFFF => None,
                0xD800..=0xDBFF => {
                    self.expect(b'\\')?;
                    self.expect(b'u')?;
                    (0xDC00..=0xDFFF).contains(&self.hex4()?).then_some(())
                }
                _ => Some(()),
            },
            _ => None,
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        let mut n = 0u16;
        for &d in digits {
            n = n << 4 | u16::from(char::from(d).to_digit(16)? as u8);
        }
        self.at += 4;
        Some(n)
    }

    /// A number: an integer of at most 18 digits is plainly one; anything else that may be a
    /// number (its characters up to the next that cannot be) is read by serde_json, for its
    /// grammar and its range (one beyond `f64` is refused).
    fn number(&mut self) -> Option<()> {
        let rest = self.bytes.get(self.at..)?;
        let len = rest
            .iter()
            .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .unwrap_or(rest.len());
        let token = rest.get(..len)?;
        self.at += len;
        let digits = token.strip_prefix(b"-").unwrap_or(token);
        let small =
            matches!(digits, [b'0'] | [b'1'..=b'9', ..]) && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit);
        if small {
            return Some(());
        }
        serde_json::from_slice::<serde_json::Value>(token).ok().filter(serde_json::Value::is_number).map(drop)
    }
}

/// Where a string's plain text stops: the first quote, backslash or control character (one
/// table look-up a byte: the per-byte `match` through `peek` cost ~19 instructions a byte).
fn stop(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| STOPS[usize::from(b)])
}

const STOPS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};
