//! WebSocket upgrades are proxied and copied both ways (SPEC §3).

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{backend, spawn_app};

pub async fn connect(addr: std::net::SocketAddr) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws
}

pub async fn echo_round_trip(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Message::text(text));
}

#[tokio::test]
async fn text_binary_and_close() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    let mut ws = connect(app.addr).await;
    echo_round_trip(&mut ws, "hello through tokengate").await;
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).await.unwrap();
    // The backend's close frame comes back through the tunnel, then the stream ends.
    let mut saw_close = false;
    while let Some(Ok(msg)) = ws.next().await {
        saw_close |= msg.is_close();
    }
    assert!(saw_close);
}

/// Only WebSocket is tunnelled (as nginx does without a map): a request asking for `h2c` or
/// any other protocol goes upstream as an ordinary request, its `Upgrade` and what
/// `Connection` names dropped, so nothing can ride a tunnel past token routes and limits.
#[tokio::test]
async fn only_websocket_upgrades_are_tunnelled() {
    let b = backend::spawn().await;
    let app = spawn_app(&b.url(), "").await;
    for upgrade in ["h2c", "TLS/1.2", "websocketx"] {
        let head = format!(
            "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: {upgrade}\r\n\
             HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        );
        let raw = crate::common::client::raw(app.addr, head.as_bytes()).await;
        assert!(raw.starts_with("HTTP/1.1 200 "), "{upgrade}: {raw}");
        let echo: serde_json::Value = serde_json::from_str(&raw[raw.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(crate::common::client::echoed(&echo, gone).is_empty(), "{upgrade}: {gone} went upstream: {echo}");
        }
    }
}
