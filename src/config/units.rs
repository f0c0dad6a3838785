//! Human units in the config file: durations (`500ms`, `30s`, `15m`, `24h`, `30d`, `1h30m`),
//! signed durations (`-10s`) and byte sizes (`64KiB`, `10MiB`, `1000`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};

/// A non-negative duration written as a string such as `30s` or `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

/// A duration that may be negative, such as `-10s` (used for `iat_offset`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignedDuration {
    /// Whole seconds, negative for the past.
    pub seconds: i64,
}

/// A size in bytes written as `64KiB`, `10MiB`, `1GiB`, `500KB` or a bare number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
}

fn parse_millis(text: &str) -> Option<u64> {
    let s = text.trim();
    if s == "0" {
        return Some(0);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(factor)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_millis(s)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("invalid duration {s:?} (expected e.g. 500ms, 30s, 15m, 24h, 30d)"))
    }
}

impl FromStr for SignedDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (sign, body) = match t.strip_prefix('-') {
            Some(b) => (-1, b),
            None => (1, t.strip_prefix('+').unwrap_or(t)),
        };
        let ms = parse_millis(body).ok_or_else(|| format!("invalid duration {s:?} (expected e.g. -10s)"))?;
        Ok(SignedDuration { seconds: sign * (ms / 1000) as i64 })
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let bad = || format!("invalid size {s:?} (expected e.g. 64KiB, 10MiB)");
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let factor: u64 = match t[digits..].trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(factor).map(ByteSize).ok_or_else(bad)
    }
}

/// Accepts a string (the documented form) or, for sizes, a bare integer.
fn from_text<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    struct Text;
    impl de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string such as \"30s\" or \"64KiB\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    let text = d.deserialize_any(Text)?;
    text.parse().map_err(de::Error::custom)
}

/// `Deserialize` through `$read` and a JSON Schema, for a value the file writes as text.
macro_rules! text_value {
    ($ty:ty, $name:literal, $read:path, $schema:tt) => {
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $read(d)
            }
        }
        impl ::schemars::JsonSchema for $ty {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed($name)
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!($schema)
            }
        }
    };
}
pub(super) use text_value;

text_value!(Duration, "Duration", from_text, { "type": ["string", "integer"], "pattern": "^([0-9]+(ms|s|m|h|d))+$|^0$" });
text_value!(SignedDuration, "SignedDuration", from_text, { "type": ["string", "integer"], "pattern": "^[-+]?([0-9]+(ms|s|m|h|d))+$|^0$" });
text_value!(ByteSize, "ByteSize", from_text, { "type": ["string", "integer"], "pattern": "^[0-9]+ *(B|KB|kB|MB|GB|KiB|MiB|GiB)?$" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("500ms".parse::<Duration>().unwrap().0.as_millis(), 500);
        assert_eq!("30s".parse::<Duration>().unwrap().0.as_secs(), 30);
        assert_eq!("15m".parse::<Duration>().unwrap().0.as_secs(), 900);
        assert_eq!("24h".parse::<Duration>().unwrap().0.as_secs(), 86_400);
        assert_eq!("30d".parse::<Duration>().unwrap().0.as_secs(), 2_592_000);
        assert_eq!("1h30m".parse::<Duration>().unwrap().0.as_secs(), 5_400);
        for bad in ["5 secs", "", "s", "10", "1.5s", "-1s", "10x"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
        assert_eq!(
            "5 secs".parse::<Duration>().unwrap_err(),
            "invalid duration \"5 secs\" (expected e.g. 500ms, 30s, 15m, 24h, 30d)"
        );
    }

    #[test]
    fn signed_durations() {
        assert_eq!("-10s".parse::<SignedDuration>().unwrap().seconds, -10);
        assert_eq!("5m".parse::<SignedDuration>().unwrap().seconds, 300);
        assert!("-x".parse::<SignedDuration>().is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65_536);
        assert_eq!("10MiB".parse::<ByteSize>().unwrap().0, 10 << 20);
        assert_eq!("1000".parse::<ByteSize>().unwrap().0, 1000);
        assert_eq!("2KB".parse::<ByteSize>().unwrap().0, 2000);
        assert!("10 parsecs".parse::<ByteSize>().is_err());
        assert!("KiB".parse::<ByteSize>().is_err());
    }
}
