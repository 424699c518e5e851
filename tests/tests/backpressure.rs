//! SPEC §2: the per-socket send buffer is bounded; a client that stops reading is disconnected
//! and the rest of the server is unaffected.
//!
//! Packets for a socket whose buffer (`REALTIME_SEND_BUFFER`) is full are dropped for that
//! socket only, and a connection whose writes make no progress for `REALTIME_WRITE_TIMEOUT` is
//! closed. The test shortens the timeout to see it happen quickly.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use nself_realtime_tests::{TestHost, ms, user_token};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn connections(host: &TestHost) -> Value {
    host.http_request("/health", &[]).await.json()["connections"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off() {
    let host = TestHost::start(&[
        ("REALTIME_SEND_BUFFER", "64"),
        ("REALTIME_WRITE_TIMEOUT", "1000"),
        ("REALTIME_MAX_MESSAGE_LENGTH", "100000"),
        ("REALTIME_EVENT_RATE", "100000"),
        ("REALTIME_EVENT_BURST", "100000"),
    ])
    .await;
    // A raw websocket client that joins `general` and then never reads again.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", host.addr);
    // A small, fixed receive buffer (no autotuning up to tcp_rmem's max of tens of MB), so the
    // server's queue for this socket fills after a few MB.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = sock.connect(host.addr).await.expect("tcp connect");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("ws");
    let open = ws.next().await.expect("open").expect("open frame");
    assert!(open.to_text().unwrap_or("").starts_with('0'), "{open:?}");
    let auth = json!({"token": user_token("stalled")});
    ws.send(Message::text(format!("40{auth}")))
        .await
        .expect("send 40");
    loop {
        let m = ws.next().await.expect("connect answer").expect("frame");
        if m.to_text().unwrap_or("").starts_with("40") {
            break;
        }
    }
    ws.send(Message::text(r#"420["room:join",{"roomName":"general"}]"#))
        .await
        .expect("join");

    let mut healthy = host.joined("healthy", "general").await;
    let sender = host.joined("sender", "general").await;
    // Let the stalled join land before the flood.
    tokio::time::sleep(ms(200)).await;
    assert_eq!(connections(&host).await, json!(3));

    // 400 × 50 kB = 20 MB: more than loopback socket buffers absorb, so the stalled client's
    // queue on the server must fill up.
    let content = "z".repeat(50_000);
    let total = 400;
    for _ in 0..total {
        sender.emit(
            "message:send",
            json!({"roomName": "general", "content": content}),
        );
    }
    // The healthy reader gets everything, in spite of the stalled one.
    let deadline = Instant::now() + ms(30_000);
    let mut got = 0;
    while got < total {
        let left = deadline.saturating_duration_since(Instant::now());
        healthy
            .next_event("message:new", left)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "healthy reader got only {got}/{total} messages (healthy: {:?}, sender: {:?})",
                    healthy.disconnect_reason(),
                    sender.disconnect_reason()
                )
            });
        got += 1;
    }
    // The stalled socket has been dropped by the server.
    let deadline = Instant::now() + ms(10_000);
    while connections(&host).await != json!(2) {
        assert!(
            Instant::now() < deadline,
            "the non-reading client is still connected: {}",
            connections(&host).await
        );
        tokio::time::sleep(ms(100)).await;
    }
    drop(ws);
}
