//! Spans to the collector, off the request path: a bounded queue (a span that finds it full is
//! dropped and counted, never waited for), drained by one task on the runtime of the first
//! request traced (a tokio task, so an async HTTP client is at home there: the batch thread of
//! opentelemetry-rust has no reactor, the pitfall the issue names), in batches of up to 512
//! spans or every 500 ms, each batch one OTLP/HTTP protobuf request per target.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use prometheus::IntCounterVec;
use prost::Message;
use tokio::sync::mpsc;

use super::span::{Attr, SpanRecord};

/// Spans waiting for export at most; more are dropped.
const QUEUE: usize = 4096;
const BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's span exporter (it outlives configs: a reload changes where spans go, not it).
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    rx: Mutex<Option<mpsc::Receiver<SpanRecord>>>,
    started: AtomicBool,
    /// `tokengate_tracing_spans_total{result="exported|dropped"}`.
    spans: IntCounterVec,
}

impl Exporter {
    pub fn new(spans: IntCounterVec) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self { tx, rx: Mutex::new(Some(rx)), started: AtomicBool::new(false), spans }
    }

    /// Queues an ended span; drops it (counted) when the queue is full.
    pub fn send(&self, record: SpanRecord) {
        if !self.started.load(Ordering::Acquire) {
            self.start();
        }
        if self.tx.try_send(record).is_err() {
            self.spans.with_label_values(&["dropped"]).inc();
        }
    }

    fn start(&self) {
        let rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let (Some(rx), Ok(runtime)) = (rx, tokio::runtime::Handle::try_current()) {
            runtime.spawn(run(rx, self.spans.clone()));
        }
        self.started.store(true, Ordering::Release);
    }
}

async fn run(mut rx: mpsc::Receiver<SpanRecord>, spans: IntCounterVec) {
    // gRPC: HTTP/2 with prior knowledge (h2c), as collectors listen on 4317.
    let grpc = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    let mut last_warning: Option<tokio::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < BATCH {
            tokio::select! {
                _ = &mut deadline => break,
                next = rx.recv() => match next {
                    Some(span) => batch.push(span),
                    None => break,
                },
            }
        }
        // One request per target (a reload may have pointed later spans elsewhere).
        while !batch.is_empty() {
            let target = batch[0].target.clone();
            let (these, rest): (Vec<_>, Vec<_>) = batch.into_iter().partition(|s| Arc::ptr_eq(&s.target, &target));
            batch = rest;
            let n = these.len() as u64;
            let exported = match &target.http {
                Some(http) => export(http, &target, these).await,
                None => export(&grpc, &target, these).await,
            };
            match exported {
                Ok(()) => spans.with_label_values(&["exported"]).inc_by(n),
                Err(reason) => {
                    spans.with_label_values(&["dropped"]).inc_by(n);
                    let now = tokio::time::Instant::now();
                    if last_warning.is_none_or(|at| now - at > Duration::from_secs(30)) {
                        last_warning = Some(now);
                        tracing::warn!(collector = %target.url, %reason, spans = n, "cannot export spans (dropped)");
                    }
                }
            }
        }
    }
}

async fn export<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, Full<Bytes>>,
    target: &super::target::Target,
    records: Vec<SpanRecord>,
) -> Result<(), String> {
    let message = encode(target, records);
    let (content_type, body) = if target.grpc {
        // A gRPC message: uncompressed flag, 4-byte big-endian length, the protobuf.
        let mut framed = Vec::with_capacity(message.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(&message);
        ("application/grpc", Bytes::from(framed))
    } else {
        ("application/x-protobuf", message)
    };
    let mut req = http::Request::post(target.url.clone())
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    if target.grpc {
        req.headers_mut().insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    req.headers_mut().extend(target.headers.clone());
    let resp = tokio::time::timeout(EXPORT_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    // Read the answer whole, so the connection can be reused (and gRPC's status is in trailers).
    let collected = tokio::time::timeout(EXPORT_TIMEOUT, body.collect()).await.ok().and_then(Result::ok);
    if !parts.status.is_success() {
        return Err(format!("collector answered {}", parts.status));
    }
    if target.grpc {
        let trailers = collected.and_then(|c| c.trailers().cloned());
        let grpc_status = parts.headers.get("grpc-status").or_else(|| trailers.as_ref()?.get("grpc-status"));
        match grpc_status.and_then(|v| v.to_str().ok()) {
            Some("0") => {}
            Some(code) => return Err(format!("collector answered grpc-status {code}")),
            None => return Err("collector answered without grpc-status".into()),
        }
    }
    Ok(())
}

/// One ExportTraceServiceRequest (OTLP protobuf) for spans of one target.
fn encode(target: &super::target::Target, records: Vec<SpanRecord>) -> Bytes {
    let spans = records
        .into_iter()
        .map(|r| Span {
            trace_id: r.context.trace_id.to_vec(),
            span_id: r.context.span_id.to_vec(),
            parent_span_id: r.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 0x100 | u32::from(r.context.sampled),
            name: r.name.to_owned(),
            kind: r.kind as i32,
            start_time_unix_nano: r.start_ns,
            end_time_unix_nano: r.end_ns,
            attributes: r.attributes.into_iter().map(|(k, v)| key_value(k, v)).collect(),
            status: r.error.then(|| Status { code: status::StatusCode::Error as i32, ..Default::default() }),
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: target.resource.iter().map(|(k, v)| key_value(k, Attr::Str(v.clone()))).collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tokengate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Bytes::from(request.encode_to_vec())
}

fn key_value(key: &str, value: Attr) -> KeyValue {
    let value = match value {
        Attr::Str(s) => any_value::Value::StringValue(s),
        Attr::Int(i) => any_value::Value::IntValue(i),
        Attr::Bool(b) => any_value::Value::BoolValue(b),
    };
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }) }
}
