//! SPEC §5: an event without an ack that fails gets an `error {code, message, details?}` event;
//! with an ack it gets exactly one ack and no `error` event.

use nself_realtime_tests::{TestHost, ack_err, ms};
use serde_json::{Value, json};

fn assert_error_shape(err: &Value, code: &str) {
    assert_eq!(err["code"], json!(code), "{err}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{err}"
    );
    let obj = err.as_object().expect("error payload is an object");
    for k in obj.keys() {
        assert!(
            ["code", "message", "details"].contains(&k.as_str()),
            "unexpected key {k}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_without_ack_become_error_events() {
    let host = TestHost::start(&[]).await;
    let mut c = host.client("alice").await;
    c.emit(
        "message:send",
        json!({"roomName": "general", "content": "not joined"}),
    );
    let err = c
        .next_event("error", ms(3000))
        .await
        .expect("error for NOT_IN_ROOM");
    assert_error_shape(&err, "NOT_IN_ROOM");

    c.emit("room:join", json!({"roomName": "nope"}));
    let err = c
        .next_event("error", ms(3000))
        .await
        .expect("error for ROOM_NOT_FOUND");
    assert_error_shape(&err, "ROOM_NOT_FOUND");

    c.emit("room:join", json!({"roomName": "bad name"}));
    let err = c
        .next_event("error", ms(3000))
        .await
        .expect("error for VALIDATION_ERROR");
    assert_error_shape(&err, "VALIDATION_ERROR");

    c.emit("room:join", json!(null));
    let err = c
        .next_event("error", ms(3000))
        .await
        .expect("error for a null payload");
    assert_error_shape(&err, "VALIDATION_ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_with_ack_are_acked_once_and_not_also_an_error_event() {
    let host = TestHost::start(&[]).await;
    let mut c = host.client("alice").await;
    let id = c.next_ack_id();
    c.send_raw(&format!(r#"42{id}["room:join",{{"roomName":"nope"}}]"#));
    let ack = c.wait_ack(id, ms(3000)).await.expect("ack");
    assert_eq!(ack.len(), 1, "one ack argument: {ack:?}");
    ack_err(&ack[0], "ROOM_NOT_FOUND");
    c.sync().await;
    assert!(
        c.wait_ack(id, std::time::Duration::ZERO).await.is_none(),
        "a second ack for the same id"
    );
    c.expect_none("error", std::time::Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_without_ack_are_silent() {
    let host = TestHost::start(&[]).await;
    let mut c = host.client("alice").await;
    c.emit("room:join", json!({"roomName": "general"}));
    c.emit(
        "message:send",
        json!({"roomName": "general", "content": "no ack wanted"}),
    );
    let msg = c
        .next_event("message:new", ms(3000))
        .await
        .expect("message delivered");
    assert_eq!(msg["content"], json!("no ack wanted"));
    c.sync().await;
    c.expect_none("error", std::time::Duration::ZERO).await;
}
