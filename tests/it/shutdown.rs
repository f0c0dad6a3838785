//! SIGTERM against the real binary (SPEC §8): readiness off, no new connections, in-flight
//! requests and WebSockets finish within the grace, exit 0.

use std::time::{Duration, Instant};

use crate::common::{backend, client, Binary};
use crate::websocket;

async fn wait_exit(bin: &mut Binary, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = bin.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "tokengate did not exit; logs:\n{}", bin.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_websockets() {
    let b = backend::spawn().await;
    let mut bin = Binary::start("shutdown-drain", &b.url(), "limits: { shutdown_grace: 10s }", &[]).await;
    let addr = bin.addr;
    let slow = tokio::spawn(async move { client::get(addr, "/sleep/1500", &[]).await });
    let mut ws = websocket::connect(bin.addr).await;
    websocket::echo_round_trip(&mut ws, "before").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    bin.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = client::get(bin.admin, "/readyz", &[]).await.expect("admin still answers while draining");
    assert_eq!(ready.status, 503);
    assert!(tokio::net::TcpStream::connect(bin.addr).await.is_err(), "the public listener still accepts");

    // The open WebSocket keeps working during the grace.
    websocket::echo_round_trip(&mut ws, "during grace").await;
    let slow = slow.await.unwrap().expect("the in-flight request completed");
    assert_eq!(slow.status, 200);
    assert_eq!(slow.text(), "slept");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
    drop(ws);

    let status = wait_exit(&mut bin, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", bin.logs());
}

#[tokio::test]
async fn sigint_with_an_idle_websocket_exits_0_once_the_grace_expires() {
    let b = backend::spawn().await;
    let mut bin = Binary::start("shutdown-grace", &b.url(), "limits: { shutdown_grace: 1s }", &[]).await;
    let mut ws = websocket::connect(bin.addr).await;
    websocket::echo_round_trip(&mut ws, "hi").await;
    let start = Instant::now();
    bin.signal("INT");
    let status = wait_exit(&mut bin, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    assert!(start.elapsed() >= Duration::from_millis(900), "exited before the grace: {:?}", start.elapsed());
}
