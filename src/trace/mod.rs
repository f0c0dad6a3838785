//! OpenTelemetry traces (SPEC §9): W3C trace context in and out (`context`), the compiled
//! `tracing` section and its sampler (`tracer`), spans (`span`), and their export in batches
//! off the request path (`export`). Without `tracing`, nothing here runs and a forwarded
//! `traceparent` stays byte for byte.

pub mod context;
pub mod export;
pub mod span;
pub mod target;
pub mod tracer;

use std::sync::Arc;

pub use context::SpanContext;
pub use export::Exporter;
pub use span::{Attr, Kind, Span};
pub use tracer::Tracer;

/// A traced request: its server span and where ended spans go.
#[derive(Debug)]
pub struct RequestTrace {
    pub span: Span,
    pub exporter: Arc<Exporter>,
}

impl RequestTrace {
    /// A child of the request's span, starting now.
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        self.span.child(name, kind)
    }

    /// Ends `span` and queues it for export (when its trace is sampled).
    pub fn record(&self, span: Span) {
        if let Some(record) = span.end() {
            self.exporter.send(record);
        }
    }
}

/// A traced request's span that calls below it are children of.
pub type Parent<'a> = Option<(&'a RequestTrace, &'a Span)>;

/// Runs `call`, one Redis round trip, in a `redis` client span under `parent` (when traced):
/// `db.operation.name` is `operation`; the span is failed when `answered` says Redis gave no
/// answer.
pub async fn redis<T>(
    parent: Parent<'_>,
    operation: &'static str,
    call: impl std::future::Future<Output = T>,
    answered: impl FnOnce(&T) -> bool,
) -> T {
    let Some((trace, under)) = parent else { return call.await };
    let mut span = under.child("redis", Kind::Client);
    let result = call.await;
    span.set("db.system", Attr::Str("redis".to_owned()));
    span.set("db.operation.name", Attr::Str(operation.to_owned()));
    span.error = !answered(&result);
    trace.record(span);
    result
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}
