//! SPEC §5 `ping` → `pong {timestamp}` (server epoch ms) and the client `pong` event.

use nself_realtime_tests::time::now_ms;
use nself_realtime_tests::{TestHost, ms};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gets_pong_with_epoch_ms() {
    let host = TestHost::start(&[]).await;
    let mut c = host.client("pinger").await;
    for _ in 0..3 {
        let before = now_ms();
        c.emit_args("ping", &[]);
        let pong = c.next_event("pong", ms(3000)).await.expect("pong");
        let after = now_ms();
        let ts = pong["timestamp"]
            .as_i64()
            .expect("timestamp is an integer number");
        assert!(
            ts >= before - 1000 && ts <= after + 1000,
            "{ts} not in [{before}, {after}]"
        );
    }
    // A payload on ping is tolerated.
    c.emit("ping", json!({"whatever": 1}));
    c.next_event("pong", ms(3000))
        .await
        .expect("pong with payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_ping_works_too() {
    let host = TestHost::start(&[("REALTIME_ALLOW_ANONYMOUS", "true")]).await;
    let mut c = host.anonymous_client().await;
    c.emit_args("ping", &[]);
    let pong = c.next_event("pong", ms(3000)).await.expect("pong");
    assert!(pong["timestamp"].is_number(), "{pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pong_is_accepted_silently() {
    let host = TestHost::start(&[]).await;
    let mut c = host.client("ponger").await;
    c.emit("pong", json!({"timestamp": now_ms() - 25}));
    c.sync().await;
    c.expect_none("error", std::time::Duration::ZERO).await;
    // Still alive and answering.
    c.emit_args("ping", &[]);
    c.next_event("pong", ms(3000)).await.expect("pong");
}
