//! SPEC §5 per-socket token bucket: REALTIME_EVENT_RATE / REALTIME_EVENT_BURST, over it
//! `RATE_LIMIT_EXCEEDED` with `details.retryAfterMs`, per socket not per user or server.

use std::time::Instant;

use nself_realtime_tests::{TestHost, ack_ok, ms};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_burst_is_rate_limit_exceeded() {
    let host =
        TestHost::start(&[("REALTIME_EVENT_RATE", "1"), ("REALTIME_EVENT_BURST", "3")]).await;
    let mut c = host.client("spammer").await;
    // All six go out back to back, so the 1/s refill cannot blur the count on a slow machine.
    let ids: Vec<u64> = (0..6).map(|_| c.next_ack_id()).collect();
    for id in &ids {
        c.send_raw(&format!(r#"42{id}["room:join",{{"roomName":"general"}}]"#));
    }
    let mut results = Vec::new();
    for id in ids {
        let ack = c
            .wait_ack(id, ms(5000))
            .await
            .expect("every event gets its ack");
        results.push(ack.into_iter().next().unwrap_or_default());
    }
    let ok = results
        .iter()
        .filter(|a| a["success"] == json!(true))
        .count();
    assert!(
        (3..=4).contains(&ok),
        "burst 3 (+1 refill at most): {results:?}"
    );
    let limited: Vec<_> = results
        .iter()
        .filter(|a| a["success"] == json!(false))
        .collect();
    assert!(!limited.is_empty(), "{results:?}");
    for a in &limited {
        assert_eq!(a["error"]["code"], json!("RATE_LIMIT_EXCEEDED"), "{a}");
        let retry = a["error"]["details"]["retryAfterMs"]
            .as_u64()
            .unwrap_or_else(|| panic!("details.retryAfterMs must be a number: {a}"));
        assert!(
            retry > 0 && retry <= 1000,
            "retryAfterMs at 1 event/s: {retry}"
        );
    }

    // Waiting as told is enough to be served again.
    let retry = limited[limited.len() - 1]["error"]["details"]["retryAfterMs"]
        .as_u64()
        .unwrap_or(1000);
    tokio::time::sleep(ms(retry + 50)).await;
    ack_ok(
        &c.emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
            .await,
    );

    // Other sockets have their own bucket.
    let mut other = host.client("spammer").await;
    ack_ok(
        &other
            .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_without_ack_get_an_error_event() {
    let host =
        TestHost::start(&[("REALTIME_EVENT_RATE", "1"), ("REALTIME_EVENT_BURST", "2")]).await;
    let mut c = host.client("pinger").await;
    for _ in 0..5 {
        c.emit_args("ping", &[]);
    }
    let err = c
        .next_event("error", ms(3000))
        .await
        .expect("error event when limited");
    assert_eq!(err["code"], json!("RATE_LIMIT_EXCEEDED"), "{err}");
    assert!(err["details"]["retryAfterMs"].is_number(), "{err}");
    let pongs = c.collect("pong", ms(300)).await;
    assert!(
        pongs.len() <= 3,
        "limited pings must not all be answered: {}",
        pongs.len()
    );
    assert!(!pongs.is_empty(), "the burst is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_allows_a_normal_burst() {
    let host = TestHost::start(&[]).await;
    let mut c = host.joined("chatty", "general").await;
    let started = Instant::now();
    for i in 0..60 {
        let ack = c
            .emit_ack(
                "message:send",
                json!({"roomName": "general", "content": format!("m{i}")}),
                ms(5000),
            )
            .await;
        ack_ok(&ack);
    }
    assert!(started.elapsed() < ms(10_000));
}
