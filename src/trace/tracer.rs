//! `tracing` compiled: where spans go (`Target`), which traces are sampled, and the server span
//! of each request. The standard `OTEL_*` variables fill in what the file leaves out.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Uri;

use super::context::{new_span_id, new_trace_id, SpanContext};
use super::span::{Kind, Span};
use super::target::Target;
use crate::config::{FieldError, TraceExporter, TraceSampler, TracingConfig};

/// The OTLP/gRPC method.
const GRPC_EXPORT: &str = "opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Which traces are recorded (all are propagated): a root decision, or the parent's when
/// `parent_based` and the request came with one.
#[derive(Clone, Copy, Debug)]
struct Sampler {
    parent_based: bool,
    root: Root,
}

#[derive(Clone, Copy, Debug)]
enum Root {
    On,
    Off,
    /// Sampled when the trace id's last 8 bytes, as a number, fall under this.
    Ratio(u64),
}

/// The compiled `tracing` section; `None` in a gateway when tracing is off.
#[derive(Debug)]
pub struct Tracer {
    sampler: Sampler,
    target: Arc<Target>,
}

impl Tracer {
    /// Compiles `cfg` with `env` (the process environment in service) for what it leaves out.
    pub fn build(
        cfg: Option<&TracingConfig>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, FieldError> {
        let Some(cfg) = cfg.filter(|c| c.exporter == TraceExporter::Otlp) else { return Ok(None) };
        let err = |key: &str, reason: String| FieldError::new(format!("tracing.{key}"), reason);
        let base = cfg
            .endpoint
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_else(|| "http://127.0.0.1:4318".to_owned());
        let grpc = base.starts_with("grpc://")
            || (cfg.endpoint.is_none() && env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() == Some("grpc"));
        let url = match base.strip_prefix("grpc://") {
            Some(authority) => {
                format!("http://{}/{GRPC_EXPORT}", authority.trim_end_matches('/'))
            }
            None if grpc => format!("{}/{GRPC_EXPORT}", base.trim_end_matches('/')),
            None => format!("{}/v1/traces", base.trim_end_matches('/')),
        };
        let url: Uri = url.parse().map_err(|e| err("endpoint", format!("{base:?}: {e}")))?;
        let https = url.scheme_str() == Some("https");
        if !(url.scheme_str() == Some("http") || https && !grpc) || url.authority().is_none() {
            return Err(err(
                "endpoint",
                format!("{base:?}: expected http://host:port, https://host:port or grpc://host:port"),
            ));
        }
        let ca_file = cfg.ca_file.clone().or_else(|| env("OTEL_EXPORTER_OTLP_CERTIFICATE").map(Into::into));
        let http = if grpc {
            None
        } else {
            let (config, _) = crate::tls::client_config(if https { ca_file.as_deref() } else { None })
                .map_err(|e| err("ca_file", crate::logging::chain(&e)))?;
            Some(super::target::http_client(config))
        };
        let mut headers = HeaderMap::new();
        let mut add = |key: &str, name: &str, value: &str| -> Result<(), FieldError> {
            let bad = || err(key, "invalid header".into());
            headers.insert(
                HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?,
                HeaderValue::from_str(value.trim()).map_err(|_| bad())?,
            );
            Ok(())
        };
        if cfg.headers.is_empty() {
            for (name, value) in pairs(&env("OTEL_EXPORTER_OTLP_HEADERS").unwrap_or_default()) {
                add("headers", &name, &value)?;
            }
        }
        for (name, value) in &cfg.headers {
            add(&format!("headers.{name}"), name, value)?;
        }
        let mut resource = pairs(&env("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default());
        let service =
            cfg.service_name.clone().or_else(|| env("OTEL_SERVICE_NAME")).unwrap_or_else(|| "tokengate".into());
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(0, ("service.name".into(), service));
        let sampler = match cfg.sampler {
            Some(s) => s,
            None => match env("OTEL_TRACES_SAMPLER").as_deref() {
                None => TraceSampler::ParentbasedAlwaysOn,
                Some(name) => serde_json::from_value(serde_json::Value::String(name.to_owned()))
                    .map_err(|_| err("sampler", format!("OTEL_TRACES_SAMPLER={name:?} is not a sampler")))?,
            },
        };
        let ratio = match cfg.ratio {
            Some(r) => r,
            None => match env("OTEL_TRACES_SAMPLER_ARG") {
                Some(arg) => {
                    arg.trim().parse().map_err(|_| err("ratio", format!("OTEL_TRACES_SAMPLER_ARG={arg:?}")))?
                }
                None => 1.0,
            },
        };
        if !(0.0..=1.0).contains(&ratio) {
            return Err(err("ratio", format!("{ratio} is not between 0.0 and 1.0")));
        }
        let ratio = Root::Ratio((ratio * u64::MAX as f64) as u64);
        let (parent_based, root) = match sampler {
            TraceSampler::AlwaysOn => (false, Root::On),
            TraceSampler::AlwaysOff => (false, Root::Off),
            TraceSampler::Traceidratio => (false, ratio),
            TraceSampler::ParentbasedAlwaysOn => (true, Root::On),
            TraceSampler::ParentbasedAlwaysOff => (true, Root::Off),
            TraceSampler::ParentbasedTraceidratio => (true, ratio),
        };
        let sampler = Sampler { parent_based, root };
        Ok(Some(Self { sampler, target: Arc::new(Target { url, grpc, http, headers, resource }) }))
    }

    /// The server span of a request, child of its `traceparent` when it has a valid one.
    pub fn server_span(&self, traceparent: Option<&[u8]>) -> Span {
        let parent = traceparent.and_then(SpanContext::parse);
        let context = self.context(parent);
        Span::start(context, parent.map(|p| p.span_id), "request", Kind::Server, self.target.clone())
    }

    /// The context of a request's server span: its caller's trace (or a new one), a new span
    /// id, and the sampler's decision.
    pub fn context(&self, parent: Option<SpanContext>) -> SpanContext {
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id);
        let sampled = match (parent, self.sampler.root) {
            (Some(p), _) if self.sampler.parent_based => p.sampled,
            (_, Root::On) => true,
            (_, Root::Off) => false,
            (_, Root::Ratio(threshold)) => {
                let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or([0; 8]));
                low < threshold || threshold == u64::MAX
            }
        };
        SpanContext { trace_id, span_id: new_span_id(), sampled }
    }
}

/// `k=v,k2=v2` (the OTEL_* list format; values percent-decoded).
fn pairs(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded =
            (bytes[i] == b'%').then(|| s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())).flatten();
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sampler: Option<TraceSampler>, ratio: Option<f64>) -> TracingConfig {
        TracingConfig { exporter: TraceExporter::Otlp, sampler, ratio, ..Default::default() }
    }

    #[test]
    fn env_fills_in_what_the_file_leaves_out() {
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318/".to_owned()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("authorization=Bearer%20abc, x-tenant = t1".to_owned()),
            "OTEL_SERVICE_NAME" => Some("chat-gate".to_owned()),
            "OTEL_RESOURCE_ATTRIBUTES" => Some("deployment.environment=prod,service.name=ignored".to_owned()),
            _ => None,
        };
        let t = Tracer::build(Some(&cfg(None, None)), &env).expect("valid").expect("on");
        assert_eq!(t.target.url, "http://collector:4318/v1/traces");
        assert_eq!(t.target.headers["authorization"], "Bearer abc");
        assert_eq!(t.target.headers["x-tenant"], "t1");
        assert_eq!(
            t.target.resource,
            vec![("service.name".into(), "chat-gate".into()), ("deployment.environment".into(), "prod".into())]
        );
        assert!(Tracer::build(None, &env).expect("valid").is_none(), "no tracing section: off");
    }

    #[test]
    fn samplers_decide_and_a_parent_is_followed() {
        let none = |_: &str| None;
        let traceparent = |flags: &str| format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        let off = Tracer::build(Some(&cfg(Some(TraceSampler::AlwaysOff), None)), &none).expect("ok").expect("on");
        let span = off.server_span(Some(traceparent("01").as_bytes()));
        assert!(!span.context.sampled);
        assert_eq!(hex(&span.context.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736", "propagated unsampled");
        let parent = Tracer::build(Some(&cfg(None, None)), &none).expect("ok").expect("on");
        assert!(!parent.server_span(Some(traceparent("00").as_bytes())).context.sampled);
        assert!(parent.server_span(Some(traceparent("01").as_bytes())).context.sampled);
        assert!(parent.server_span(None).context.sampled);
        let ratio = Tracer::build(Some(&cfg(Some(TraceSampler::Traceidratio), Some(0.25))), &none).expect("ok");
        let ratio = ratio.expect("on");
        let sampled = (0..4000).filter(|_| ratio.server_span(None).context.sampled).count();
        assert!((800..1200).contains(&sampled), "{sampled} of 4000 at 0.25");
    }

    #[test]
    fn endpoints_it_cannot_serve_are_load_errors() {
        let none = |_: &str| None;
        let grpc = TracingConfig { endpoint: Some("grpc://collector:4317".into()), ..cfg(None, None) };
        let t = Tracer::build(Some(&grpc), &none).expect("valid").expect("on");
        assert!(t.target.grpc);
        assert_eq!(t.target.url, "http://collector:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export");
        let https = TracingConfig { endpoint: Some("https://collector:4318".into()), ..cfg(None, None) };
        let t = Tracer::build(Some(&https), &none).expect("valid").expect("on");
        assert_eq!(t.target.url, "https://collector:4318/v1/traces");
        for endpoint in ["collector", "ftp://collector"] {
            let c = TracingConfig { endpoint: Some(endpoint.into()), ..cfg(None, None) };
            let e = Tracer::build(Some(&c), &none).expect_err(endpoint);
            assert_eq!(e.path, "tracing.endpoint");
        }
        // A CA file that holds no certificate is named by its key.
        let bad_ca = TracingConfig { ca_file: Some("/dev/null".into()), ..https };
        assert_eq!(Tracer::build(Some(&bad_ca), &none).expect_err("empty CA").path, "tracing.ca_file");
    }

    use super::super::context::hex;
}
