//! Metrics (SPEC §5): every family after every kind of request, bounded labels, the Grafana
//! dashboard's queries, and (feature `services`) promtool and a real Prometheus server.

use bytes::Bytes;
use http::Method;

use crate::common::{backend, client, closed_port, spawn_app, TestApp};

/// An app with a token route behind a session hook, a limit and an upstream; after this every
/// metric family has samples.
async fn exercised_app() -> (TestApp, String) {
    let b = backend::spawn().await;
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: s }}]\nrate_limits: {{ one: {{ key: client_ip, rate: 3, per: 1m }} }}\nauth_hooks:\n  session: {{ type: http, url: '{}/api/me', forward_headers: [cookie], identity: {{ id: body:/id }} }}\nroutes: [{{ name: chat, path: /t, auth: session, cache_tokens: true, rate_limits: [one], tokens: {{ t: {{ key: k, ttl: 1h, claims: {{ sub: '{{{{ user.id }}}}' }} }} }}, response: {{ body: {{ token: '{{{{ tokens.t }}}}' }} }} }}]\nforward_auth: [{{ name: gate, path: /_auth, auth: session, response_headers: {{ X-User: '{{{{ user.id }}}}' }} }}]\n",
        b.url()
    );
    let app = spawn_app(&b.url(), &yaml).await;
    let post = |cookie: &'static str| {
        let addr = app.addr;
        async move { client::request(addr, Method::POST, "/t", &[("cookie", cookie)], Bytes::new()).await.unwrap() }
    };
    assert_eq!(post("session=ann").await.status, 200); // hook miss, mint
    assert_eq!(post("session=ann").await.status, 200); // hook hit, token cache hit
    assert_eq!(post("session=").await.status, 401); // deny
    assert_eq!(post("session=ann").await.status, 429); // limited
    assert_eq!(client::get(app.addr, "/echo", &[]).await.unwrap().status, 200); // forwarded
    assert_eq!(client::get(app.addr, "/_auth", &[("cookie", "session=ann")]).await.unwrap().status, 200); // decided
    let dead = spawn_app(&format!("http://{}", closed_port()), "").await;
    assert_eq!(client::get(dead.addr, "/x", &[]).await.unwrap().status, 502);
    let scrape = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    (app, scrape)
}

fn families(scrape: &str) -> Vec<String> {
    scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn every_spec_metric_is_exported_with_bounded_labels() {
    let (_app, scrape) = exercised_app().await;
    let names = families(&scrape);
    for family in [
        "tokengate_requests_total",
        "tokengate_request_duration_seconds",
        "tokengate_upstream_errors_total",
        "tokengate_tokens_minted_total",
        "tokengate_token_cache_total",
        "tokengate_auth_hook_total",
        "tokengate_auth_hook_duration_seconds",
        "tokengate_auth_cache_total",
        "tokengate_rate_limited_total",
        "tokengate_forward_auth_total",
        "tokengate_config_reloads_total",
        "tokengate_open_connections",
        "tokengate_build_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(names.iter().any(|n| n == family), "{family} missing:\n{scrape}");
    }
    for sample in [
        "tokengate_requests_total{route=\"chat\",status=\"429\"} 1",
        "tokengate_token_cache_total{result=\"hit\",route=\"chat\"} 1",
        "tokengate_auth_hook_total{hook=\"session\",outcome=\"deny\"} 1",
        "tokengate_rate_limited_total{limit=\"one\"} 1",
        // The series each route and hook resolves once, at its first use.
        "tokengate_requests_total{route=\"chat\",status=\"200\"} 2",
        "tokengate_requests_total{route=\"chat\",status=\"401\"} 1",
        "tokengate_request_duration_seconds_count{route=\"chat\"} 4",
        "tokengate_requests_total{route=\"gate\",status=\"200\"} 1",
        "tokengate_request_duration_seconds_count{route=\"gate\"} 1",
        "tokengate_tokens_minted_total{alg=\"HS256\",route=\"chat\",token=\"t\"} 1",
        "tokengate_auth_hook_total{hook=\"session\",outcome=\"allow\"} 1",
    ] {
        assert!(scrape.contains(sample), "{sample} missing:\n{scrape}");
    }
    // Only what happened shows: no hook error, so no series for one.
    assert!(!scrape.contains("outcome=\"error\""), "{scrape}");
    // Label values are route names and outcomes, never paths, cookies or user ids.
    for leak in ["/t", "/echo", "ann", "session="] {
        assert!(
            !scrape.lines().filter(|l| !l.starts_with('#')).any(|l| l.contains(leak)),
            "{leak} in a label:\n{scrape}"
        );
    }
}

#[tokio::test]
async fn the_grafana_dashboard_queries_existing_metrics_through_a_datasource_variable() {
    let (_app, scrape) = exercised_app().await;
    let names = families(&scrape);
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/tokengate.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["templating"]["list"].as_array().unwrap().iter().any(|v| v["type"] == "datasource"));
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("tokengate_") || word.starts_with("process_") {
                    let family = ["_bucket", "_sum", "_count"].iter().fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
                    assert!(names.iter().any(|n| n == family), "{} queries unknown metric {word}", panel["title"]);
                }
            }
        }
    }
}

/// True when `tool` is installed. `.ci/run` installs Debian's prometheus package, so under
/// CI a missing tool fails the test; elsewhere the test says it is skipped.
#[cfg(feature = "services")]
fn installed(tool: &str) -> bool {
    let found = std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing: .ci/run installs Debian's prometheus"
        );
        eprintln!("skipped: {tool} is not installed (apt-get install prometheus, or run .ci/run)");
    }
    found
}

#[cfg(feature = "services")]
#[tokio::test]
async fn promtool_accepts_a_live_scrape() {
    use std::io::Write;
    if !installed("promtool") {
        return;
    }
    let (_app, scrape) = exercised_app().await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[cfg(feature = "services")]
#[tokio::test]
async fn a_real_prometheus_scrapes_the_admin_listener() {
    if !installed("prometheus") {
        return;
    }
    let (app, _) = exercised_app().await;
    let dir = crate::common::temp_dir("prometheus");
    let port = closed_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: tokengate\n    static_configs: [{{ targets: ['{}'] }}]\n", app.admin),
    )
    .unwrap();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (Debian package prometheus; .ci/run installs it)");
    let query = "/api/v1/query?query=tokengate_requests_total%7Broute%3D%22chat%22%2Cstatus%3D%22200%22%7D";
    let mut last = String::new();
    for _ in 0..120 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let Ok(r) = client::get(port, query, &[]).await else { continue };
        last = r.text();
        let body: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
        if let Some(sample) = body["data"]["result"].as_array().and_then(|r| r.first()) {
            assert_eq!(sample["value"][1], "2", "{last}");
            assert_eq!(sample["metric"]["job"], "tokengate");
            prometheus.kill().await.ok();
            return;
        }
    }
    panic!("Prometheus never returned the sample; last answer: {last}");
}
