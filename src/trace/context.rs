//! W3C trace context (`traceparent`): parsed from a request, written on the requests tokengate
//! makes, with tokengate's span as their parent.

use http::HeaderValue;

/// Where a span sits in its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanContext {
    /// A `traceparent` value (W3C Trace Context level 1). Versions above 00 are read as 00, as
    /// the specification asks, from their first four fields; an all-zero id is invalid.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?.trim();
        let mut parts = text.split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let _ = hex_byte(version)?;
        let trace_id: [u8; 16] = hex_array(trace)?;
        let span_id: [u8; 8] = hex_array(span)?;
        let flags = match flags.len() {
            2 => hex_byte(flags)?,
            _ => return None,
        };
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// This context as a `traceparent` field value, written by hand into a fixed array: it is
    /// on every traced, and every unsampled relayed, request.
    pub fn traceparent_bytes(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (pair, b) in out[3..35].chunks_exact_mut(2).zip(self.trace_id) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        for (pair, b) in out[36..52].chunks_exact_mut(2).zip(self.span_id) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        if self.sampled {
            out[54] = b'1';
        }
        out
    }

    /// `traceparent_bytes` as a header value.
    pub fn traceparent(&self) -> HeaderValue {
        // Hex digits and dashes: always a valid field value.
        HeaderValue::from_bytes(&self.traceparent_bytes())
            .unwrap_or(HeaderValue::from_static("00-00000000000000000000000000000000-0000000000000000-00"))
    }

    /// A child of this context: same trace, a new span id.
    pub fn child(&self) -> Self {
        Self { span_id: new_span_id(), ..*self }
    }
}

pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Lower-case hex, by table: ids are written several times per traced request (log span,
/// access log), and `{:02x}` per byte cost ~280 instructions a byte.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

fn hex_byte(s: &str) -> Option<u8> {
    // Lower case only, as the specification requires.
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = hex_byte(s.get(i * 2..i * 2 + 2)?)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn parses_and_writes_the_w3c_example() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = SpanContext::parse(v).expect("valid");
        assert!(c.sampled);
        assert_eq!(c.traceparent().as_bytes(), v);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(SpanContext::parse(unsampled).expect("valid").traceparent().as_bytes(), unsampled);
        let child = c.child();
        assert_eq!(child.trace_id, c.trace_id);
        assert_ne!(child.span_id, c.span_id);
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(SpanContext::parse(bad.as_bytes()).is_none(), "{bad}");
        }
        // A later version with more fields is read from its first four.
        assert!(SpanContext::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more").is_some());
    }
}
