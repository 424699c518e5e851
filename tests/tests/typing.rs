//! SPEC §5 `typing:start` / `typing:stop` and §6 `typing:event`: to the others only, each user
//! listed once, per thread, expiry after REALTIME_TYPING_TIMEOUT, cleared on disconnect.

use std::time::Instant;

use nself_realtime_tests::{TestHost, ms};
use serde_json::{Value, json};

fn users(ev: &Value) -> Vec<String> {
    ev["users"]
        .as_array()
        .unwrap_or_else(|| panic!("typing:event.users must be an array: {ev}"))
        .iter()
        .map(|u| u["userId"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_reach_the_others() {
    let host = TestHost::start(&[("REALTIME_TYPING_TIMEOUT", "10000")]).await;
    let mut a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    a.emit("typing:start", json!({"roomName": "general"}));
    let ev = b
        .next_event("typing:event", ms(3000))
        .await
        .expect("typing:event on start");
    assert_eq!(ev["roomName"], json!("general"));
    assert!(ev.get("threadId").is_some_and(Value::is_null), "{ev}");
    assert_eq!(users(&ev), vec!["alice"]);
    let entry = &ev["users"][0];
    assert!(entry.get("startedAt").is_some_and(|s| !s.is_null()), "{ev}");
    a.sync().await;
    a.expect_none("typing:event", std::time::Duration::ZERO)
        .await;

    // A repeated start refreshes the one entry: alice stays listed once.
    a.emit("typing:start", json!({"roomName": "general"}));
    a.emit("typing:start", json!({"roomName": "general"}));
    for ev in b.collect("typing:event", ms(400)).await {
        assert_eq!(users(&ev), vec!["alice"], "each user at most once: {ev}");
    }

    // Another typer: both listed, each once.
    let c = host.joined("carol", "general").await;
    c.emit("typing:start", json!({"roomName": "general"}));
    let ev = b
        .next_event_where("typing:event", ms(3000), |e| users(e).len() == 2)
        .await
        .expect("two typers");
    let mut u = users(&ev);
    u.sort();
    assert_eq!(u, vec!["alice", "carol"]);

    a.emit("typing:stop", json!({"roomName": "general"}));
    let ev = b
        .next_event_where("typing:event", ms(3000), |e| {
            !users(e).contains(&"alice".to_string())
        })
        .await
        .expect("typing:event on stop");
    assert_eq!(users(&ev), vec!["carol"]);
    c.emit("typing:stop", json!({"roomName": "general"}));
    let ev = b
        .next_event_where("typing:event", ms(3000), |e| users(e).is_empty())
        .await
        .expect("empty list once everyone stopped");
    assert_eq!(ev["roomName"], json!("general"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_are_separate() {
    let host = TestHost::start(&[("REALTIME_TYPING_TIMEOUT", "10000")]).await;
    let a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    a.emit(
        "typing:start",
        json!({"roomName": "general", "threadId": "t-1"}),
    );
    let ev = b
        .next_event("typing:event", ms(3000))
        .await
        .expect("thread typing");
    assert_eq!(ev["threadId"], json!("t-1"));
    assert_eq!(users(&ev), vec!["alice"]);
    a.emit("typing:start", json!({"roomName": "general"}));
    let ev = b
        .next_event("typing:event", ms(3000))
        .await
        .expect("room typing");
    assert!(ev["threadId"].is_null(), "{ev}");
    assert_eq!(
        users(&ev),
        vec!["alice"],
        "the thread entry is not in the room list"
    );
    a.emit(
        "typing:stop",
        json!({"roomName": "general", "threadId": "t-1"}),
    );
    let ev = b
        .next_event("typing:event", ms(3000))
        .await
        .expect("thread stop");
    assert_eq!(ev["threadId"], json!("t-1"));
    assert!(users(&ev).is_empty(), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_and_the_expiry_is_announced() {
    let host = TestHost::start(&[("REALTIME_TYPING_TIMEOUT", "300")]).await;
    let a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    a.emit("typing:start", json!({"roomName": "general"}));
    b.next_event("typing:event", ms(3000))
        .await
        .expect("typing:event on start");
    let started = Instant::now();
    let ev = b
        .next_event("typing:event", ms(3000))
        .await
        .expect("typing:event on expiry (SPEC: others get typing:event on expiry)");
    let after = started.elapsed();
    assert!(users(&ev).is_empty(), "expired entry must be gone: {ev}");
    assert!(after >= ms(200), "expired too early, after {after:?}");
    assert!(after <= ms(2000), "expired too late, after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_postpones_expiry() {
    let host = TestHost::start(&[("REALTIME_TYPING_TIMEOUT", "1000")]).await;
    let a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    let started = Instant::now();
    a.emit("typing:start", json!({"roomName": "general"}));
    b.next_event("typing:event", ms(3000)).await.expect("start");
    tokio::time::sleep(ms(500)).await;
    a.emit("typing:start", json!({"roomName": "general"}));
    let ev = b
        .next_event_where("typing:event", ms(3000), |e| users(e).is_empty())
        .await
        .expect("expiry after the refresh");
    assert!(users(&ev).is_empty());
    assert!(
        started.elapsed() >= ms(1400),
        "the refresh at 500 ms must push expiry to ~1500 ms, expired at {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_clears_typing() {
    let host = TestHost::start(&[("REALTIME_TYPING_TIMEOUT", "30000")]).await;
    let a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    a.emit("typing:start", json!({"roomName": "general"}));
    let ev = b.next_event("typing:event", ms(3000)).await.expect("start");
    assert_eq!(users(&ev), vec!["alice"]);
    a.close().await;
    let ev = b
        .next_event("typing:event", ms(3000))
        .await
        .expect("typing:event when the typer disconnects (long before the 30 s expiry)");
    assert!(users(&ev).is_empty(), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_requires_having_joined() {
    let host = TestHost::start(&[("REALTIME_TYPING_TIMEOUT", "10000")]).await;
    let mut stranger = host.client("stranger").await;
    let mut b = host.joined("bob", "general").await;
    stranger.emit("typing:start", json!({"roomName": "general"}));
    let err = stranger
        .next_event("error", ms(3000))
        .await
        .expect("error event for typing in a room not joined");
    assert_eq!(err["code"], json!("NOT_IN_ROOM"), "{err}");
    b.sync().await;
    b.expect_none("typing:event", std::time::Duration::ZERO)
        .await;
}
