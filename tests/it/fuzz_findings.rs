//! What the fuzz targets (fuzz/) found, each kept as a black-box test. The relay (a body-less
//! request, relayed from its head's bytes) and the `http`-types path (hyper's reader, after a
//! request with a body) must send the upstream the same fields.

use crate::common::client::{both_readers, status};
use crate::common::{backend, client, spawn_app};

/// The upstream's view of `head` on each of tokengate's two paths.
async fn upstream_views(head: &str) -> Vec<serde_json::Value> {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let (own, hyper) = both_readers(app.addr, head).await;
    [own, hyper]
        .iter()
        .map(|raw| {
            assert_eq!(status(raw), "200", "{raw}");
            let body = raw.split("\r\n\r\n").nth(1).unwrap();
            serde_json::from_str(&body[..body.rfind('}').unwrap() + 1]).unwrap()
        })
        .collect()
}

/// relay_differential, crash-0650bd53: with several `TE` fields the relay sent one
/// `te: trailers` per field that listed it, the `http` path looked only at the first field and
/// dropped `trailers` when that one did not list it.
#[tokio::test]
async fn several_te_fields_are_one_list_on_both_paths() {
    let head = "GET /echo HTTP/1.1\r\nHost: a\r\nTE: .8\r\nTE: trailers\r\nTE: gzip, trailers\r\n\r\n";
    for echo in upstream_views(head).await {
        assert_eq!(client::echoed(&echo, "te"), ["trailers"], "{echo}");
    }
}

/// Same class, found while fixing the one above: a `Connection` value with a non-ASCII byte
/// still named its fields for the relay, while the `http` path skipped the whole value and
/// forwarded the fields it named.
#[tokio::test]
async fn connection_options_with_obs_text_are_read_the_same_on_both_paths() {
    let head = "GET /echo HTTP/1.1\r\nHost: a\r\nConnection: x-hop, caf\u{e9}\r\nX-Hop: 1\r\nX-Kept: 2\r\n\r\n";
    for echo in upstream_views(head).await {
        assert!(client::echoed(&echo, "x-hop").is_empty(), "named by Connection: {echo}");
        assert_eq!(client::echoed(&echo, "x-kept"), ["2"], "{echo}");
    }
}
