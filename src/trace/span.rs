//! A span while it runs (`Span`) and once it ended (`SpanRecord`, what the exporter sends).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::context::{new_span_id, SpanContext};
use super::target::Target;

/// OTLP span kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A span that has started.
#[derive(Debug)]
pub struct Span {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    pub kind: Kind,
    start_ns: u64,
    pub attributes: Vec<(&'static str, Attr)>,
    pub error: bool,
    target: Arc<Target>,
}

/// A span that has ended, on its way to the collector.
#[derive(Debug)]
pub struct SpanRecord {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Attr)>,
    pub error: bool,
    pub target: Arc<Target>,
}

pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

impl Span {
    pub(super) fn start(
        context: SpanContext,
        parent: Option<[u8; 8]>,
        name: &'static str,
        kind: Kind,
        target: Arc<Target>,
    ) -> Self {
        Self { context, parent, name, kind, start_ns: unix_nanos(), attributes: Vec::new(), error: false, target }
    }

    /// A child span of this one, starting now.
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        let context = SpanContext { span_id: new_span_id(), ..self.context };
        Span::start(context, Some(self.context.span_id), name, kind, self.target.clone())
    }

    pub fn set(&mut self, key: &'static str, value: Attr) {
        self.attributes.push((key, value));
    }

    /// Ends the span: its record, if the trace is sampled.
    pub fn end(self) -> Option<SpanRecord> {
        if !self.context.sampled {
            return None;
        }
        Some(SpanRecord {
            context: self.context,
            parent: self.parent,
            name: self.name,
            kind: self.kind,
            start_ns: self.start_ns,
            end_ns: unix_nanos().max(self.start_ns),
            attributes: self.attributes,
            error: self.error,
            target: self.target,
        })
    }
}
