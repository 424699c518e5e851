//! SPEC §5 `message:send` and §6 `message:new`: delivery to the whole room including the
//! sender, the event and ack shapes, NOT_IN_ROOM, content and metadata validation, and
//! idempotent `clientMessageId`.

use std::collections::BTreeSet;

use nself_realtime_tests::time::{now_ms, parse_iso8601};
use nself_realtime_tests::{SioClient, TestHost, ack_err, ack_ok, ms};
use serde_json::{Value, json};

async fn send(c: &mut SioClient, payload: Value) -> Value {
    c.emit_ack("message:send", payload, ms(5000)).await
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_new_reaches_everyone_in_the_room_including_the_sender() {
    let host = TestHost::start(&[]).await;
    let mut a = host.joined("alice", "general").await;
    let mut a2 = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    let mut outside = host.joined("carol", "announcements").await;
    let before = now_ms();
    let ack = send(
        &mut a,
        json!({"roomName": "general", "content": "hi all", "threadId": "t-1",
               "metadata": {"kind": "greeting", "n": 1}}),
    )
    .await;
    let data = ack_ok(&ack);
    assert_eq!(
        keys(&data),
        keys(&json!({"messageId": 0, "timestamp": 0})),
        "{ack}"
    );
    let message_id = data["messageId"].as_str().expect("messageId is a string");
    assert!(!message_id.is_empty());

    for c in [&mut a, &mut a2, &mut b] {
        let msg = c
            .next_event("message:new", ms(3000))
            .await
            .expect("message:new");
        assert_eq!(
            keys(&msg),
            keys(
                &json!({"roomName": 0, "userId": 0, "content": 0, "threadId": 0,
                         "timestamp": 0, "metadata": 0, "messageId": 0})
            ),
            "{msg}"
        );
        assert_eq!(msg["roomName"], json!("general"));
        assert_eq!(msg["userId"], json!("alice"));
        assert_eq!(msg["content"], json!("hi all"));
        assert_eq!(msg["threadId"], json!("t-1"));
        assert_eq!(msg["metadata"], json!({"kind": "greeting", "n": 1}));
        assert_eq!(msg["messageId"], json!(message_id));
        let ts = msg["timestamp"]
            .as_str()
            .expect("timestamp is an ISO string");
        let t = parse_iso8601(ts).expect("ISO 8601 timestamp");
        assert!(t >= before - 2000 && t <= now_ms() + 2000, "{ts}");
        c.sync().await;
        c.expect_none("message:new", std::time::Duration::ZERO)
            .await;
    }
    outside.sync().await;
    outside
        .expect_none("message:new", std::time::Duration::ZERO)
        .await;

    // Without threadId/metadata the keys are still there, as null.
    let ack = send(&mut b, json!({"roomName": "general", "content": "plain"})).await;
    ack_ok(&ack);
    let msg = a
        .next_event("message:new", ms(3000))
        .await
        .expect("plain message");
    assert_eq!(msg["content"], json!("plain"));
    assert!(msg.get("threadId").is_some_and(Value::is_null), "{msg}");
    assert!(
        msg.get("metadata")
            .is_some_and(|m| m.is_null() || m == &json!({})),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_requires_having_joined() {
    let host = TestHost::start(&[]).await;
    let mut member = host.joined("member", "general").await;
    let mut stranger = host.client("stranger").await;
    ack_err(
        &send(
            &mut stranger,
            json!({"roomName": "general", "content": "hello?"}),
        )
        .await,
        "NOT_IN_ROOM",
    );
    member.sync().await;
    member
        .expect_none("message:new", std::time::Duration::ZERO)
        .await;
    // A room that does not exist cannot have been joined: either code is a correct answer.
    let ack = send(
        &mut stranger,
        json!({"roomName": "nowhere", "content": "hello?"}),
    )
    .await;
    assert_eq!(ack["success"], json!(false), "{ack}");
    assert!(
        ack["error"]["code"] == json!("ROOM_NOT_FOUND")
            || ack["error"]["code"] == json!("NOT_IN_ROOM"),
        "{ack}"
    );
    // Being a member of the room in the store is not enough: this socket must have joined.
    let mut member_other_socket = host.client("member").await;
    ack_err(
        &send(
            &mut member_other_socket,
            json!({"roomName": "general", "content": "other socket"}),
        )
        .await,
        "NOT_IN_ROOM",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_and_fields_are_validated() {
    let host = TestHost::start(&[]).await;
    let mut a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    let bad = [
        json!({"roomName": "general", "content": ""}),
        json!({"roomName": "general", "content": "x".repeat(5001)}),
        json!({"roomName": "general"}),
        json!({"roomName": "general", "content": null}),
        json!({"roomName": "general", "content": 42}),
        json!({"roomName": "general", "content": ["a"]}),
        json!({"roomName": "general", "content": {"text": "a"}}),
        json!({"roomName": "general", "content": "ok", "metadata": "string"}),
        json!({"roomName": "general", "content": "ok", "metadata": [1, 2]}),
        json!({"roomName": "general", "content": "ok", "metadata": 5}),
        json!({"roomName": "general", "content": "ok", "threadId": 5}),
        json!({"roomName": "general", "content": "ok", "threadId": {"id": 1}}),
        json!({"roomName": "general", "content": "ok", "clientMessageId": {"id": 1}}),
        json!({"roomName": 5, "content": "ok"}),
        json!({"content": "ok"}),
    ];
    for payload in bad {
        let ack = send(&mut a, payload.clone()).await;
        assert_eq!(ack["success"], json!(false), "{payload}: {ack}");
        assert_eq!(
            ack["error"]["code"],
            json!("VALIDATION_ERROR"),
            "{payload}: {ack}"
        );
    }
    b.sync().await;
    b.expect_none("message:new", std::time::Duration::ZERO)
        .await;
    // The limits themselves are fine; length counts characters, not bytes.
    ack_ok(
        &send(
            &mut a,
            json!({"roomName": "general", "content": "x".repeat(5000)}),
        )
        .await,
    );
    ack_ok(
        &send(
            &mut a,
            json!({"roomName": "general", "content": "é".repeat(5000)}),
        )
        .await,
    );
    ack_ok(
        &send(
            &mut a,
            json!({"roomName": "general", "content": "😀".repeat(5000)}),
        )
        .await,
    );
    assert_eq!(b.collect("message:new", ms(500)).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_length_is_configurable() {
    let host = TestHost::start(&[("REALTIME_MAX_MESSAGE_LENGTH", "10")]).await;
    let mut a = host.joined("alice", "general").await;
    ack_ok(
        &send(
            &mut a,
            json!({"roomName": "general", "content": "0123456789"}),
        )
        .await,
    );
    ack_err(
        &send(
            &mut a,
            json!({"roomName": "general", "content": "0123456789a"}),
        )
        .await,
        "VALIDATION_ERROR",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_message_id_is_idempotent_per_user() {
    let host = TestHost::start(&[]).await;
    let mut a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    let payload = json!({"roomName": "general", "content": "once", "clientMessageId": "c-1"});
    let first = ack_ok(&send(&mut a, payload.clone()).await);
    let second = ack_ok(&send(&mut a, payload.clone()).await);
    assert_eq!(
        first["messageId"], second["messageId"],
        "same clientMessageId, same messageId"
    );
    let got = b.collect("message:new", ms(500)).await;
    assert_eq!(got.len(), 1, "delivered exactly once: {got:?}");
    assert_eq!(got[0]["messageId"], first["messageId"]);

    // Another user's identical clientMessageId is a different message.
    let other = ack_ok(&send(&mut b, payload).await);
    assert_ne!(other["messageId"], first["messageId"]);
    // A new clientMessageId is a new message.
    let next = ack_ok(
        &send(
            &mut a,
            json!({"roomName": "general", "content": "twice", "clientMessageId": "c-2"}),
        )
        .await,
    );
    assert_ne!(next["messageId"], first["messageId"]);
    let got = b.collect("message:new", ms(500)).await;
    assert_eq!(got.len(), 2, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_are_unique() {
    let host = TestHost::start(&[]).await;
    let mut a = host.joined("alice", "general").await;
    let mut ids = BTreeSet::new();
    for i in 0..50 {
        let data = ack_ok(
            &send(
                &mut a,
                json!({"roomName": "general", "content": format!("m{i}")}),
            )
            .await,
        );
        assert!(
            ids.insert(data["messageId"].to_string()),
            "duplicate id {data}"
        );
    }
    let got = a.collect("message:new", ms(500)).await;
    assert_eq!(got.len(), 50);
    let order: Vec<String> = got
        .iter()
        .map(|m| m["content"].as_str().unwrap_or("").to_string())
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(order, expected, "one sender's messages arrive in order");
}
