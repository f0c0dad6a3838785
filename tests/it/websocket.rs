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
