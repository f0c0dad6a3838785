//! A real browser calling a token route across origins (feature `services`: needs Debian's
//! `chromium` and `chromium-driver`, which `.ci/run` installs). Headless Chromium is driven
//! through chromedriver with the W3C WebDriver protocol; a page served on one loopback origin
//! `fetch`es the token route on another with an `Authorization` header, so the browser sends a
//! real preflight and enforces the answer's CORS fields itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::common::{backend, client, closed_port};

/// The page: two fetches of the token route as the same user, what came back written to `#out`.
fn page(api: &str) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="out"></pre><script>
(async () => {{
  const out = {{}};
  const call = () => fetch("{api}/t", {{ method: "POST", headers: {{ Authorization: "Bearer ann" }} }});
  try {{
    const first = await call();
    out.first = {{ status: first.status, body: await first.json() }};
    const second = await call();
    out.second = {{
      status: second.status,
      retryAfter: second.headers.get("Retry-After"),
      policy: second.headers.get("RateLimit-Policy"),
    }};
  }} catch (e) {{
    out.error = String(e);
  }}
  document.getElementById("out").textContent = JSON.stringify(out);
}})();
</script></body></html>"#
    )
}

/// Serves `html` at every path on a loopback port of its own (one origin).
async fn serve_page(html: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let html = Bytes::from(html);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let html = html.clone();
                    async move {
                        let mut r = Response::new(Full::new(html));
                        r.headers_mut().insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

struct Driver {
    child: Child,
    addr: SocketAddr,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let addr = closed_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver)");
        let mut driver = Driver { child, addr, session: String::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}
        }}});
        let created = driver.call(Method::POST, "/session", caps).await;
        driver.session = created["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_owned();
        driver
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let body = Bytes::from(body.to_string());
        let r = client::request(self.addr, method, path, &[("content-type", "application/json")], body).await.unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("webdriver: {}", r.text()));
        assert!(r.status.is_success(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    /// Opens `url` and waits (30 s at most) for the page's script to write its result.
    async fn result_of(&self, url: &str) -> Value {
        let s = &self.session;
        self.call(Method::POST, &format!("/session/{s}/url"), json!({ "url": url })).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let script = json!({"script": "return document.getElementById('out').textContent", "args": []});
            let text = self.call(Method::POST, &format!("/session/{s}/execute/sync"), script).await;
            if let Some(text) = text.as_str().filter(|t| !t.is_empty()) {
                return serde_json::from_str(text).unwrap();
            }
            assert!(Instant::now() < deadline, "the page never wrote its result");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_page_on_a_listed_origin_gets_its_token_and_reads_a_429_and_an_unlisted_one_reads_nothing() {
    let b = backend::spawn().await;
    // Two origins serving the same page; only the first is listed. The API is a third.
    let api_port = closed_port();
    let api = format!("http://{api_port}");
    let listed = serve_page(page(&api)).await;
    let unlisted = serve_page(page(&api)).await;
    let yaml = format!(
        "keys: [{{ id: k, algorithm: HS256, secret: browser-test-secret }}]\n\
         rate_limits:\n  per_user: {{ key: user, rate: 1, per: 1m }}\n\
         auth_hooks:\n  bearer: {{ type: none, identity: {{ id: header:authorization }} }}\n\
         routes:\n  - name: chat\n    path: /t\n    auth: bearer\n    rate_limits: [per_user]\n    \
         tokens: {{ t: {{ key: k, ttl: 1m }} }}\n    response: {{ body: {{ token: '{{{{ tokens.t }}}}' }} }}\n    \
         cors: {{ allowed_origins: ['http://{listed}'], allow_credentials: true }}\n"
    );
    let yaml =
        crate::common::config_yaml(&b.url(), &yaml).replacen("listen: 127.0.0.1:0", &format!("listen: {api_port}"), 1);
    let app = crate::common::spawn_app_yaml(&yaml).await;
    assert_eq!(app.addr, api_port);

    let driver = Driver::start().await;
    let got = driver.result_of(&format!("http://{listed}/")).await;
    assert_eq!(got["first"]["status"], 200, "{got}");
    let token = got["first"]["body"]["token"].as_str().unwrap_or_else(|| panic!("{got}"));
    assert_eq!(token.split('.').count(), 3, "a JWT reached the page: {got}");
    assert_eq!(got["second"]["status"], 429, "{got}");
    let retry: u64 = got["second"]["retryAfter"].as_str().unwrap_or_else(|| panic!("{got}")).parse().unwrap();
    assert!((1..=60).contains(&retry), "the page's JS read Retry-After: {got}");
    assert_eq!(got["second"]["policy"], r#""per_user";q=1;w=60"#, "{got}");

    let blocked = driver.result_of(&format!("http://{unlisted}/")).await;
    assert!(blocked["error"].as_str().is_some_and(|e| e.contains("Failed to fetch")), "{blocked}");
    assert!(blocked.get("first").is_none(), "the unlisted page read nothing: {blocked}");

    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains(r#"tokengate_cors_preflights_total{result="allowed",route="chat"}"#), "{metrics}");
    assert!(metrics.contains(r#"tokengate_cors_preflights_total{result="refused",route="chat"}"#), "{metrics}");
    let s = driver.session.clone();
    driver.call(Method::DELETE, &format!("/session/{s}"), json!({})).await;
}
