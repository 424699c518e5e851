//! SPEC §4 presence counting and §5 `presence:update` / §6 `presence:changed`: online once per
//! user across sockets, offline after the last one, custom status shape, validation, anonymous
//! refusal, custom status across reconnects, expiry, and REALTIME_PRESENCE_SCOPE=rooms.

use std::time::Duration;

use nself_realtime_tests::time::{iso8601, now_ms};
use nself_realtime_tests::{TestHost, ack_err, ms};
use serde_json::{Value, json};

fn of(user: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["userId"] == user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_once_offline_after_the_last_socket() {
    let host = TestHost::start(&[]).await;
    let mut obs = host.client("observer").await;
    let u1 = host.client("ursula").await;
    let online = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("presence:changed online");
    assert_eq!(online["status"], json!("online"), "{online}");
    assert!(
        online.get("customStatus").is_some_and(Value::is_null),
        "{online}"
    );
    assert!(
        online.get("customEmoji").is_some_and(Value::is_null),
        "{online}"
    );

    // A second socket: its connect is fully handled once it answers a ping of its own.
    let mut u2 = host.client("ursula").await;
    u2.sync().await;
    obs.sync().await;
    obs.expect_none_where("presence:changed", Duration::ZERO, of("ursula"))
        .await;
    u1.close().await;
    // The first socket's disconnect is handled (it left the connection count).
    connections(&host, 2).await;
    obs.sync().await;
    obs.expect_none_where("presence:changed", Duration::ZERO, of("ursula"))
        .await;
    u2.close().await;
    let offline = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("presence:changed offline");
    assert_eq!(offline["status"], json!("offline"), "{offline}");
    obs.sync().await;
    obs.expect_none_where("presence:changed", Duration::ZERO, of("ursula"))
        .await;
}

/// Waits (5 s at most) until the server counts `n` live connections.
async fn connections(host: &TestHost, n: u64) {
    let deadline = std::time::Instant::now() + ms(5000);
    loop {
        let m = host.http_request("/metrics", &[]).await.json();
        if m["connections"]["active"].as_u64() == Some(n) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {n} connections: {m}"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_broadcasts_status_with_custom_status_text_and_emoji() {
    let host = TestHost::start(&[]).await;
    let mut obs = host.client("observer").await;
    let mut u = host.client("ursula").await;
    obs.next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("online");
    u.emit(
        "presence:update",
        json!({"status": "busy", "customStatus": {"text": "In a meeting", "emoji": "📅"}}),
    );
    let ev = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("presence:changed after update");
    assert_eq!(
        ev,
        json!({"userId": "ursula", "status": "busy", "customStatus": "In a meeting",
               "customEmoji": "📅"})
    );
    // Everyone, the user's own socket included, gets it (scope "all").
    let own = u
        .next_event_where("presence:changed", ms(3000), |v| {
            v["userId"] == "ursula" && v["status"] == "busy"
        })
        .await
        .expect("own socket gets presence:changed");
    assert_eq!(own["customStatus"], json!("In a meeting"));

    for status in ["online", "away", "offline"] {
        let ack = u
            .emit_ack("presence:update", json!({ "status": status }), ms(5000))
            .await;
        assert_eq!(ack["success"], json!(true), "{status}: {ack}");
        let ev = obs
            .next_event_where("presence:changed", ms(3000), of("ursula"))
            .await
            .expect("presence:changed");
        assert_eq!(ev["status"], json!(status));
        assert!(ev["customStatus"].is_null(), "no custom status given: {ev}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_updates_are_validation_errors() {
    let host = TestHost::start(&[]).await;
    let mut obs = host.client("observer").await;
    let mut u = host.client("ursula").await;
    obs.next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("online");
    for payload in [
        json!({"status": "sleeping"}),
        json!({"status": ""}),
        json!({"status": 1}),
        json!({}),
        json!({"status": "busy", "customStatus": "not an object"}),
        json!({"status": "busy", "customStatus": {"text": 5}}),
        json!({"status": "busy", "customStatus": {"text": "x".repeat(101)}}),
        json!({"status": "busy", "customStatus": {"text": "ok", "emoji": 5}}),
    ] {
        let ack = u
            .emit_ack("presence:update", payload.clone(), ms(5000))
            .await;
        assert_eq!(ack["success"], json!(false), "{payload}: {ack}");
        assert_eq!(
            ack["error"]["code"],
            json!("VALIDATION_ERROR"),
            "{payload}: {ack}"
        );
    }
    // Without an ack, the failure is an `error` event.
    u.emit("presence:update", json!({"status": "sleeping"}));
    let err = u.next_event("error", ms(3000)).await.expect("error event");
    assert_eq!(err["code"], json!("VALIDATION_ERROR"), "{err}");
    assert!(err["message"].is_string(), "{err}");
    // Nothing was broadcast (the refusals were answered: anything broadcast would be queued
    // for the observer before its own ping's answer).
    obs.sync().await;
    obs.expect_none_where("presence:changed", Duration::ZERO, of("ursula"))
        .await;
    // 100 characters is the limit, not over it.
    let ack = u
        .emit_ack(
            "presence:update",
            json!({"status": "away", "customStatus": {"text": "y".repeat(100)}}),
            ms(5000),
        )
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_users_cannot_update_presence() {
    let host = TestHost::start(&[("REALTIME_ALLOW_ANONYMOUS", "true")]).await;
    let mut obs = host.client("observer").await;
    let mut anon = host.anonymous_client().await;
    let ack = anon
        .emit_ack("presence:update", json!({"status": "busy"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(false), "{ack}");
    obs.sync().await;
    obs.expect_none_where("presence:changed", Duration::ZERO, |v| {
        v["status"] == "busy"
    })
    .await;
    // Anonymous connections do not make anybody online either.
    obs.expect_none_where("presence:changed", Duration::ZERO, |v| {
        v["userId"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpired_custom_status_survives_a_reconnect() {
    let host = TestHost::start(&[]).await;
    let mut obs = host.client("observer").await;
    let mut u = host.client("ursula").await;
    obs.next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("first online");
    let ack = u
        .emit_ack(
            "presence:update",
            json!({"status": "busy", "customStatus": {"text": "Focus", "emoji": "🎧",
                   "expiresAt": iso8601(now_ms() + 3_600_000)}}),
            ms(5000),
        )
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let busy = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("busy");
    assert_eq!(busy["customStatus"], json!("Focus"), "{busy}");
    u.close().await;
    let off = obs
        .next_event_where("presence:changed", ms(3000), |v| {
            v["userId"] == "ursula" && v["status"] == "offline"
        })
        .await
        .expect("offline");
    assert_eq!(off["status"], json!("offline"));
    let _u = host.client("ursula").await;
    let back = obs
        .next_event_where("presence:changed", ms(3000), |v| {
            v["userId"] == "ursula" && v["status"] == "online"
        })
        .await
        .expect("online again");
    assert_eq!(back["customStatus"], json!("Focus"), "{back}");
    assert_eq!(back["customEmoji"], json!("🎧"), "{back}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_custom_status_is_cleared_and_broadcast() {
    let host = TestHost::start(&[]).await;
    let mut obs = host.client("observer").await;
    let u = host.client("ursula").await;
    let started = std::time::Instant::now();
    u.emit(
        "presence:update",
        json!({"status": "busy", "customStatus": {"text": "Brief", "emoji": "⏱",
               "expiresAt": iso8601(now_ms() + 1500)}}),
    );
    let set = obs
        .next_event_where("presence:changed", ms(3000), |v| {
            v["userId"] == "ursula" && v["customStatus"] == "Brief"
        })
        .await
        .expect("custom status set");
    assert_eq!(set["status"], json!("busy"));
    let cleared = obs
        .next_event_where("presence:changed", ms(10_000), |v| {
            v["userId"] == "ursula" && v["status"] == "busy" && v["customStatus"].is_null()
        })
        .await
        .expect("presence:changed clearing the expired custom status");
    assert!(cleared["customEmoji"].is_null(), "{cleared}");
    assert!(
        started.elapsed() >= ms(1000),
        "cleared before it expired: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_scope_limits_presence_to_room_peers() {
    let host = TestHost::start(&[("REALTIME_PRESENCE_SCOPE", "rooms")]).await;
    let mut peer = host.joined("peer", "general").await;
    let mut stranger = host.joined("stranger", "announcements").await;
    let mut u = host.joined("ursula", "general").await;
    u.emit("presence:update", json!({"status": "away"}));
    let ev = peer
        .next_event_where("presence:changed", ms(3000), |v| {
            v["userId"] == "ursula" && v["status"] == "away"
        })
        .await
        .expect("room peer gets presence:changed");
    assert_eq!(ev["status"], json!("away"));
    stranger.sync().await;
    stranger
        .expect_none_where("presence:changed", Duration::ZERO, of("ursula"))
        .await;
    ack_err(
        &u.emit_ack("presence:update", json!({"status": "nope"}), ms(5000))
            .await,
        "VALIDATION_ERROR",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_user_becomes_away_and_back_online_on_activity() {
    let host = TestHost::start(&[("REALTIME_PRESENCE_AWAY_MS", "800")]).await;
    let mut obs = host.joined("observer", "general").await;
    let mut ida = host.joined("ida", "general").await;
    let away = obs
        .next_event_where("presence:changed", ms(5000), |v| {
            v["userId"] == "ida" && v["status"] == "away"
        })
        .await
        .expect("idle user goes away");
    assert_eq!(away["status"], json!("away"), "{away}");
    // Events skipped above (ida's connect-time online) stay buffered: drop them.
    obs.clear_events();
    ida.emit("typing:start", json!({"roomName": "general"}));
    let back = obs
        .next_event_where("presence:changed", ms(3000), |v| {
            v["userId"] == "ida" && v["status"] == "online"
        })
        .await
        .expect("activity makes the user online again");
    assert_eq!(back["status"], json!("online"), "{back}");
    // Sending keeps the user online (no away while active).
    for _ in 0..4 {
        let ack = ida.send_message("general", "still here").await;
        assert_eq!(ack["success"], json!(true), "{ack}");
        tokio::time::sleep(ms(300)).await;
    }
    obs.expect_none_where("presence:changed", ms(300), of("ida"))
        .await;
}
