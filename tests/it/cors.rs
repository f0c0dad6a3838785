//! CORS on token routes (SPEC §3 "CORS") and the RateLimit fields (SPEC §3, the IETF httpapi
//! draft's structured fields, parsed here by an independent RFC 9651 parser).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;

use crate::common::{backend, client, closed_port, spawn_app};

const APP: &str = "https://app.example.com";
const PREVIEW: &str = "https://pr-7.preview.example.com";
const EVIL: &str = "https://evil.example.net";

fn yaml(hook_url: &str, extra: &str) -> String {
    format!(
        "{extra}\nkeys: [{{ id: k, algorithm: HS256, secret: s }}]\n\
         rate_limits:\n  per_user: {{ key: user, rate: 1, per: 1m }}\n\
         auth_hooks:\n  session: {{ type: http, url: '{hook_url}/api/me', forward_headers: [cookie], identity: {{ id: body:/id }} }}\n\
         routes:\n  - name: chat\n    path: /t\n    auth: session\n    rate_limits: [per_user]\n    tokens: {{ t: {{ key: k, ttl: 1m }} }}\n    response: {{ body: {{ token: '{{{{ tokens.t }}}}' }} }}\n    \
         cors:\n      allowed_origins: ['{APP}', 'regex:^https://pr-[0-9]+\\.preview\\.example\\.com$']\n      allow_credentials: true\n"
    )
}

async fn call(addr: std::net::SocketAddr, method: Method, headers: &[(&str, &str)]) -> client::Resp {
    client::request(addr, method, "/t", headers, Bytes::new()).await.unwrap()
}

fn preflight(origin: &str) -> Vec<(&str, &str)> {
    vec![
        ("origin", origin),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "authorization, content-type"),
    ]
}

fn access_control_fields(r: &client::Resp) -> Vec<String> {
    r.headers.keys().map(|k| k.as_str().to_owned()).filter(|k| k.starts_with("access-control-")).collect()
}

fn vary_has_origin(r: &client::Resp) -> bool {
    r.headers
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().split(',').any(|t| t.trim().eq_ignore_ascii_case("origin")))
}

#[tokio::test]
async fn preflights_are_answered_before_the_hook_for_listed_and_regex_origins_only() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &yaml(&b.url(), "")).await;
    for origin in [APP, PREVIEW] {
        let r = call(app.addr, Method::OPTIONS, &preflight(origin)).await;
        assert_eq!(r.status, 204, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin), "the origin echoed, never *");
        assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
        assert_eq!(r.header("access-control-allow-headers"), Some("content-type, authorization"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert!(vary_has_origin(&r));
    }
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 0, "a preflight never reaches the auth hook");
    for origin in [EVIL, "https://pr-7.preview.example.com.evil.net", "null"] {
        let r = call(app.addr, Method::OPTIONS, &preflight(origin)).await;
        assert_eq!(r.status, 403, "{origin}");
        assert_eq!(r.json()["error"], "origin_not_allowed");
        assert!(access_control_fields(&r).is_empty(), "{origin}: {:?}", access_control_fields(&r));
        assert!(vary_has_origin(&r));
    }
    assert_eq!(b.session_calls.load(Ordering::SeqCst), 0);
    // Preflights are not counted against the user's limit: the one request it allows still passes.
    let ok = call(app.addr, Method::POST, &[("origin", APP), ("cookie", "session=ann")]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let metrics = client::get(app.admin, "/metrics", &[]).await.unwrap().text();
    assert!(metrics.contains("tokengate_cors_preflights_total{result=\"allowed\",route=\"chat\"} 2"), "{metrics}");
    assert!(metrics.contains("tokengate_cors_preflights_total{result=\"refused\",route=\"chat\"} 3"), "{metrics}");
}

#[tokio::test]
async fn every_answer_of_the_route_carries_cors_fields_for_an_allowed_origin_and_none_for_others() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &yaml(&b.url(), "")).await;
    let allowed = |r: &client::Resp, what: &str| {
        assert_eq!(r.header("access-control-allow-origin"), Some(APP), "{what}");
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"), "{what}");
        let exposed = r.header("access-control-expose-headers").unwrap().to_owned();
        for name in ["retry-after", "ratelimit", "ratelimit-policy", "ratelimit-limit"] {
            assert!(exposed.split(", ").any(|n| n == name), "{what}: {name} not in {exposed}");
        }
        assert!(vary_has_origin(r), "{what}");
    };
    let ok = call(app.addr, Method::POST, &[("origin", APP), ("cookie", "session=ann")]).await;
    assert_eq!(ok.status, 200);
    allowed(&ok, "200");
    let limited = call(app.addr, Method::POST, &[("origin", APP), ("cookie", "session=ann")]).await;
    assert_eq!(limited.status, 429);
    allowed(&limited, "429");
    assert!(limited.header("retry-after").is_some());
    let denied = call(app.addr, Method::POST, &[("origin", APP)]).await;
    assert_eq!(denied.status, 401);
    allowed(&denied, "401");
    let wrong_method = call(app.addr, Method::GET, &[("origin", APP)]).await;
    assert_eq!(wrong_method.status, 405);
    allowed(&wrong_method, "405");
    // A disallowed origin: the same answers, no Access-Control-* field, `Vary: Origin` still.
    let other = call(app.addr, Method::POST, &[("origin", EVIL), ("cookie", "session=ben")]).await;
    assert_eq!(other.status, 200);
    assert!(access_control_fields(&other).is_empty());
    assert!(vary_has_origin(&other));
    let other = call(app.addr, Method::POST, &[("origin", EVIL)]).await;
    assert_eq!(other.status, 401);
    assert!(access_control_fields(&other).is_empty());
    // No Origin at all (curl, a server): Vary only.
    let plain = call(app.addr, Method::POST, &[("cookie", "session=cat")]).await;
    assert_eq!(plain.status, 200);
    assert!(access_control_fields(&plain).is_empty() && vary_has_origin(&plain));
}

#[tokio::test]
async fn a_failing_hook_answers_503_with_the_cors_fields() {
    let b = backend::spawn().await;
    let down = format!("http://{}", closed_port());
    let app = spawn_app(&b.url(), &yaml(&down, "")).await;
    let r = call(app.addr, Method::POST, &[("origin", APP), ("cookie", "session=ann")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert!(vary_has_origin(&r));
}

#[tokio::test]
async fn forwarded_traffic_is_untouched_preflights_included() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), &yaml(&b.url(), "")).await;
    let r = client::request(app.addr, Method::OPTIONS, "/other", &preflight(APP), Bytes::new()).await.unwrap();
    assert_eq!(r.status, 200, "forwarded to the backend");
    assert_eq!(r.json()["method"], "OPTIONS");
    assert_eq!(client::echoed(&r.json(), "origin"), vec![APP.to_owned()]);
    assert!(access_control_fields(&r).is_empty());
    assert!(!vary_has_origin(&r));
}

/// An RFC 9651 List of one string item with its parameters: (string, [(key, integer)]).
fn sf_item(field: &str) -> (String, Vec<(String, i64)>) {
    let mut p = sfparse::Parser::new(field.as_bytes());
    let value = match p.parse_list().unwrap_or_else(|e| panic!("{field}: {e:?}")) {
        Some(sfparse::Value::String { range, escape: false }) => field[range].to_owned(),
        other => panic!("{field}: not a plain string item: {other:?}"),
    };
    let mut params = Vec::new();
    while let Some((k, v)) = p.parse_param().unwrap() {
        match v {
            sfparse::Value::Integer(n) => params.push((k.to_owned(), n)),
            other => panic!("{field}: {k} is not an integer: {other:?}"),
        }
    }
    assert!(p.parse_list().unwrap().is_none(), "{field}: one member only");
    (value, params)
}

#[tokio::test]
async fn rate_limit_fields_follow_rate_limit_headers_and_parse_as_structured_fields() {
    let b = backend::spawn().await;
    for (style, legacy, draft) in [("both", true, true), ("draft", false, true), ("legacy", true, false)] {
        let app = spawn_app(&b.url(), &yaml(&b.url(), &format!("rate_limit_headers: {style}"))).await;
        let who = [("cookie", "session=dan")];
        assert_eq!(call(app.addr, Method::POST, &who).await.status, 200);
        let r = call(app.addr, Method::POST, &who).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("ratelimit-limit").is_some(), legacy, "{style}");
        assert_eq!(r.header("ratelimit-policy").is_some(), draft, "{style}");
        if draft {
            let (name, params) = sf_item(r.header("ratelimit-policy").unwrap());
            assert_eq!(name, "per_user");
            assert_eq!(params, vec![("q".to_owned(), 1), ("w".to_owned(), 60)], "{style}");
            let (name, params) = sf_item(r.header("ratelimit").unwrap());
            assert_eq!(name, "per_user");
            assert_eq!(params[0], ("r".to_owned(), 0));
            assert_eq!(params[1].0, "t");
            assert!((1..=60).contains(&params[1].1), "{params:?}");
        }
        app.stop.cancel();
    }
}
