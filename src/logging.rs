//! Logs: one JSON object per line on stderr (or human text), filtered `RUST_LOG`-style.
//! Neither format lets a field forge a line: JSON escapes control characters itself, and the
//! text format's writer escapes them (a user id with a newline stays on its line).

use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber; `level` is an `EnvFilter` directive such as `info` or
/// `tokengate=debug,hyper=warn`.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match format {
        LogFormat::Json => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // No colours: their escape bytes would be escaped too.
        LogFormat::Text => builder.with_writer(EscapedStderr).with_ansi(false).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Stderr, with every control character of an event escaped but the newline that ends it.
struct EscapedStderr;

impl<'a> MakeWriter<'a> for EscapedStderr {
    type Writer = Escaped<std::io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        Escaped(std::io::stderr())
    }
}

/// Writes each event (tracing's formatter writes one per call) with its control characters
/// as `\n`, `\r`, `\t` or `\xNN`.
pub struct Escaped<W>(pub W);

impl<W: Write> Write for Escaped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.split_last() {
            Some((b'\n', body)) => (body, &b"\n"[..]),
            _ => (buf, &b""[..]),
        };
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                _ => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// An error and its sources, `outer: inner: root`, for log lines.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_stay_on_their_line() {
        let mut out = Escaped(Vec::new());
        out.write_all(b"revoked user=alice\n2026 INFO forged\x1b[2J\n").unwrap();
        assert_eq!(out.0, b"revoked user=alice\\n2026 INFO forged\\x1b[2J\n");
    }
}
