//! SPEC §5 input validation under a corpus of malformed payloads and frames: every ack carries
//! VALIDATION_ERROR, nothing changes, and afterwards the server still serves joins, messages
//! and /health.

use nself_realtime_tests::{TestHost, ack_ok, ms};
use serde_json::{Value, json};

const EVENTS: &[&str] = &[
    "room:join",
    "room:leave",
    "message:send",
    "typing:start",
    "typing:stop",
    "presence:update",
    "auth:refresh",
];

fn nested(depth: usize) -> Value {
    let mut v = json!("bottom");
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

/// Payloads invalid for every event above.
fn generic_corpus() -> Vec<Value> {
    vec![
        json!(null),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(true),
        json!("string"),
        json!(""),
        json!([]),
        json!([1, 2, 3]),
        json!([{"roomName": "general"}]),
        json!({}),
        json!({"unexpected": "field"}),
        json!("x".repeat(200_000)),
        nested(100),
        json!({"roomName": nested(100)}),
        json!({"_placeholder": true, "num": 0}),
    ]
}

/// Payloads invalid for one event in particular.
fn specific_corpus(event: &str) -> Vec<Value> {
    let names = [
        json!(null),
        json!(5),
        json!([]),
        json!({}),
        json!(true),
        json!(""),
        json!("a b"),
        json!("x".repeat(256)),
        json!("x".repeat(100_000)),
        json!("../etc/passwd"),
        json!("general\u{0000}"),
        json!({"_placeholder": true, "num": 0}),
    ];
    match event {
        "room:join" | "room:leave" => names.iter().map(|n| json!({ "roomName": n })).collect(),
        "typing:start" | "typing:stop" => {
            let mut v: Vec<Value> = names.iter().map(|n| json!({ "roomName": n })).collect();
            for t in [json!(5), json!({}), json!([]), json!(true)] {
                v.push(json!({"roomName": "general", "threadId": t}));
            }
            v
        }
        "message:send" => {
            let mut v: Vec<Value> = names
                .iter()
                .map(|n| json!({ "roomName": n, "content": "hi" }))
                .collect();
            for c in [
                json!(null),
                json!(5),
                json!([]),
                json!({}),
                json!(""),
                json!("x".repeat(5001)),
                json!("x".repeat(300_000)),
                json!({"_placeholder": true, "num": 0}),
            ] {
                v.push(json!({"roomName": "general", "content": c}));
            }
            v.push(json!({"roomName": "general"}));
            v.push(json!({"roomName": "general", "content": "hi", "metadata": "s"}));
            v.push(json!({"roomName": "general", "content": "hi", "metadata": [1]}));
            v.push(json!({"roomName": "general", "content": "hi", "metadata": 5}));
            v.push(json!({"roomName": "general", "content": "hi", "threadId": 5}));
            v.push(json!({"roomName": "general", "content": "hi", "clientMessageId": []}));
            v
        }
        "presence:update" => vec![
            json!({"status": null}),
            json!({"status": 5}),
            json!({"status": "sleeping"}),
            json!({"status": ""}),
            json!({"status": ["online"]}),
            json!({"status": "online", "customStatus": "text"}),
            json!({"status": "online", "customStatus": 5}),
            json!({"status": "online", "customStatus": {"text": 5}}),
            json!({"status": "online", "customStatus": {"text": "x".repeat(101)}}),
            json!({"status": "online", "customStatus": {"text": "ok", "emoji": []}}),
            json!({"status": "online", "customStatus": {"text": "ok", "expiresAt": {}}}),
        ],
        "auth:refresh" => vec![
            json!({"token": null}),
            json!({"token": 5}),
            json!({"token": {}}),
            json!({"token": []}),
        ],
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_payload_is_a_validation_error_and_changes_nothing() {
    let host = TestHost::start(&[
        ("REALTIME_EVENT_RATE", "100000"),
        ("REALTIME_EVENT_BURST", "100000"),
    ])
    .await;
    let mut fuzz = host.joined("fuzzer", "general").await;
    let mut obs = host.joined("observer", "general").await;
    obs.clear_events();

    // A socket that keeps sending malformed events is disconnected (see
    // `malformed_floods_are_cut_off`): a fresh fuzzing socket every 40 payloads.
    let mut sent = 0;
    let mut failures = Vec::new();
    for event in EVENTS {
        let mut corpus = generic_corpus();
        corpus.extend(specific_corpus(event));
        for payload in corpus {
            sent += 1;
            if sent % 40 == 0 {
                fuzz = host.joined("fuzzer", "general").await;
            }
            let shown = {
                let s = payload.to_string();
                if s.len() > 80 {
                    format!("{}…", &s[..80])
                } else {
                    s
                }
            };
            match fuzz.emit_args_ack(event, &[payload], ms(5000)).await {
                None => failures.push(format!("{event} {shown}: no ack")),
                Some(args) => {
                    let ack = args.first().cloned().unwrap_or(Value::Null);
                    if ack["success"] != json!(false)
                        || ack["error"]["code"] != json!("VALIDATION_ERROR")
                        || !ack["error"]["message"].is_string()
                    {
                        failures.push(format!("{event} {shown}: {ack}"));
                    }
                }
            }
        }
        // No argument at all.
        sent += 1;
        if sent % 40 == 0 {
            fuzz = host.joined("fuzzer", "general").await;
        }
        match fuzz.emit_args_ack(event, &[], ms(5000)).await {
            Some(args)
                if args
                    .first()
                    .is_some_and(|a| a["error"]["code"] == "VALIDATION_ERROR") => {}
            other => failures.push(format!("{event} without payload: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} malformed payloads were not VALIDATION_ERROR acks:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Nothing changed for the others (every fuzzing event was answered: anything broadcast
    // for it is queued for the observer before its own ping's answer).
    obs.sync().await;
    obs.expect_none("message:new", std::time::Duration::ZERO)
        .await;
    obs.expect_none("typing:event", ms(10)).await;
    obs.expect_none_where("presence:changed", ms(10), |v| v["userId"] == "fuzzer")
        .await;
    obs.expect_none("user:left", ms(10)).await;
    // And the fuzzer's own socket still works.
    ack_ok(
        &fuzz
            .emit_ack(
                "message:send",
                json!({"roomName": "general", "content": "still here"}),
                ms(5000),
            )
            .await,
    );
    let msg = obs
        .next_event("message:new", ms(3000))
        .await
        .expect("message");
    assert_eq!(msg["content"], json!("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_attachments_are_not_strings() {
    let host = TestHost::start(&[]).await;
    let mut c = host.joined("binary", "general").await;
    let ack = c
        .emit_binary_ack(
            "message:send",
            &[json!({"roomName": "general", "content": {"_placeholder": true, "num": 0}})],
            vec![vec![0xde, 0xad, 0xbe, 0xef]],
            ms(5000),
        )
        .await;
    match ack {
        Some(args) => {
            let a = args.first().cloned().unwrap_or(Value::Null);
            assert_eq!(a["error"]["code"], json!("VALIDATION_ERROR"), "{a}");
        }
        // Refusing binary packets outright (closing the socket) is acceptable too.
        None => assert!(
            c.disconnect_reason().is_some(),
            "neither ack nor disconnect"
        ),
    }
    c.expect_none("message:new", ms(200)).await;
}

/// Frames that are not valid Socket.IO at all. The server may drop the connection; it must
/// not fall over.
fn garbage_frames() -> Vec<String> {
    let deep = format!(
        "42[\"message:send\",{}{}]",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    vec![
        "4".into(),
        "42".into(),
        "42not json".into(),
        "42{}".into(),
        "42[]".into(),
        "42[5]".into(),
        "42[null,{}]".into(),
        "42[\"room:join\"".into(),
        "4299999999999999999999999[\"room:join\",{}]".into(),
        "42/other,[\"room:join\",{}]".into(),
        "40/admin,".into(),
        "43[]".into(),
        "451-[\"message:send\",{\"_placeholder\":true,\"num\":0}]".into(),
        "459999-[\"x\"]".into(),
        "49".into(),
        "9".into(),
        "".into(),
        "\u{0000}\u{0001}".into(),
        "2probe".into(),
        "5".into(),
        "6".into(),
        deep,
        format!(
            "42[\"message:send\",{{\"roomName\":\"general\",\"content\":\"{}\"}}]",
            "x".repeat(2_000_000)
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_do_not_hurt_the_server() {
    let host = TestHost::start(&[]).await;
    let mut watcher = host.joined("watcher", "general").await;
    let mut frames: Vec<Option<String>> = garbage_frames().into_iter().map(Some).collect();
    // `None`: a stray binary frame with no binary packet announced before it.
    frames.push(None);
    for frame in frames {
        let mut c = host.joined("garbage", "general").await;
        match &frame {
            Some(text) => c.send_raw(text),
            None => c.send_raw_binary(vec![0xff, 0x00, 0x13, 0x37]),
        }
        let frame = frame.unwrap_or_else(|| "<stray binary frame>".to_string());
        // Give the server the frame, then see whether this socket is still usable; either way
        // is fine as long as the server answers others.
        let alive = c
            .emit_args_ack("room:join", &[json!({"roomName": "general"})], ms(2000))
            .await
            .is_some();
        let shown: String = frame.chars().take(40).collect();
        eprintln!(
            "frame {shown:?}: socket {}",
            if alive { "kept" } else { "dropped" }
        );
        drop(c);
        watcher.emit_args("ping", &[]);
        watcher
            .next_event("pong", ms(3000))
            .await
            .unwrap_or_else(|| panic!("server stopped answering after frame {shown:?}"));
    }
    watcher
        .expect_none("message:new", std::time::Duration::ZERO)
        .await;

    // Unknown events are ignored and the socket stays usable.
    let mut c = host.joined("curious", "general").await;
    c.emit("no:such:event", json!({}));
    let ack = c
        .emit_args_ack("no:such:event", &[json!({})], ms(500))
        .await;
    if let Some(args) = ack {
        assert_eq!(
            args.first().map(|a| a["success"].clone()),
            Some(json!(false))
        );
    }
    c.emit_args("ping", &[]);
    c.next_event("pong", ms(3000))
        .await
        .expect("still usable after unknown events");

    // Afterwards: a fresh client joins, sends and receives; /health answers.
    let mut fresh = host.client("fresh").await;
    ack_ok(
        &fresh
            .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
            .await,
    );
    ack_ok(
        &fresh
            .emit_ack(
                "message:send",
                json!({"roomName": "general", "content": "after the storm"}),
                ms(5000),
            )
            .await,
    );
    let msg = watcher
        .next_event("message:new", ms(3000))
        .await
        .expect("delivery");
    assert_eq!(msg["content"], json!("after the storm"));
    let (status, body) = host.http_get("/health").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_payload_limit_are_refused() {
    let host = TestHost::start(&[("REALTIME_MAX_PAYLOAD_BYTES", "10000")]).await;
    let mut watcher = host.joined("watcher", "general").await;
    let mut c = host.joined("big", "general").await;
    // Under the limit: fine.
    ack_ok(
        &c.emit_ack(
            "message:send",
            json!({"roomName": "general", "content": "x".repeat(4000)}),
            ms(5000),
        )
        .await,
    );
    watcher
        .next_event("message:new", ms(3000))
        .await
        .expect("small message");
    // Over the limit: not delivered, and the connection is closed (as Socket.IO does for
    // maxHttpBufferSize).
    c.emit(
        "message:send",
        json!({"roomName": "general", "content": "y".repeat(20_000)}),
    );
    assert!(
        c.wait_disconnect(ms(3000)).await.is_some(),
        "a frame over REALTIME_MAX_PAYLOAD_BYTES must close the connection"
    );
    watcher.expect_none("message:new", ms(300)).await;
    watcher.emit_args("ping", &[]);
    watcher
        .next_event("pong", ms(3000))
        .await
        .expect("others unaffected");
}
