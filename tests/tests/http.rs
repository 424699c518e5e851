//! SPEC §11 HTTP endpoints: /health (+ live, ready), /metrics JSON with real counts, and the
//! Prometheus text exposition without room, user or socket id labels.

use std::time::Instant;

use nself_realtime_tests::time::parse_iso8601;
use nself_realtime_tests::{RoomType, TestHost, Visibility, ms};
use serde_json::{Value, json};

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} must be a number in {v}"))
}

/// Polls `path` as JSON until `pred` holds (writes may land behind the event path).
async fn eventually(
    host: &TestHost,
    path: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + ms(5000);
    loop {
        let r = host.http_request(path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {path} still says {v}");
        tokio::time::sleep(ms(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints() {
    let host = TestHost::start(&[]).await;
    assert_eq!(host.http_get("/health/live").await.0, 200);
    assert_eq!(host.http_get("/health/ready").await.0, 200);
    let r = host.http_request("/health", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    let h = r.json();
    assert!(
        h["status"] == json!("healthy") || h["status"] == json!("degraded"),
        "{h}"
    );
    let ts = h["timestamp"].as_str().expect("timestamp string");
    assert!(parse_iso8601(ts).is_some(), "timestamp is ISO 8601: {ts}");
    assert_eq!(h["connections"], json!(0), "{h}");
    assert!(num(&h, "uptime") >= 0.0);
    for check in ["database", "redis", "plugins"] {
        assert!(
            h["checks"].get(check).is_some(),
            "checks.{check} missing: {h}"
        );
    }

    let _a = host.client("alice").await;
    let _b = host.client("bob").await;
    eventually(&host, "/health", "two live connections", |h| {
        h["connections"] == json!(2)
    })
    .await;
    assert_eq!(host.http_get("/no-such-path").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_health_and_metrics_paths() {
    let host = TestHost::start(&[
        ("REALTIME_HEALTH_PATH", "/hc"),
        ("REALTIME_METRICS_PATH", "/stats"),
    ])
    .await;
    assert_eq!(host.http_get("/hc").await.0, 200);
    assert_eq!(host.http_get("/hc/live").await.0, 200);
    assert_eq!(host.http_get("/hc/ready").await.0, 200);
    let (status, body) = host.http_get("/stats").await;
    assert_eq!(status, 200, "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_metrics_are_not_served() {
    let host = TestHost::start(&[("REALTIME_ENABLE_METRICS", "false")]).await;
    assert_eq!(host.http_get("/metrics").await.0, 404);
    assert_eq!(host.http_get("/health").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_json_has_the_original_shape_with_real_counts() {
    let host = TestHost::start(&[("REALTIME_ALLOW_ANONYMOUS", "true")]).await;
    host.create_room("extra-room", RoomType::Channel, Visibility::Public, None)
        .await;
    let mut a = host.joined("alice", "general").await;
    let _anon = host.anonymous_client().await;
    let mut b = host.client("bob").await;
    let ack = b
        .emit_ack("presence:update", json!({"status": "busy"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    a.emit_ack(
        "message:send",
        json!({"roomName": "general", "content": "count me"}),
        ms(5000),
    )
    .await;

    // Served from memory: a room created beside the server is counted once the change feed
    // brought it (a fraction of a second).
    let m = eventually(
        &host,
        "/metrics",
        "3 connections, 2 authenticated, 3 rooms",
        |m| {
            m["connections"]["active"] == json!(3)
                && m["connections"]["authenticated"] == json!(2)
                && m["rooms"]["total"] == json!(3)
        },
    )
    .await;
    assert_eq!(m["connections"]["anonymous"], json!(1), "{m}");
    assert!(num(&m, "connections.total") >= 3.0, "{m}");
    assert!(num(&m, "uptime") >= 0.0);
    assert_eq!(
        m["rooms"]["total"],
        json!(3),
        "general, announcements, extra-room: {m}"
    );
    assert_eq!(m["rooms"]["active"], json!(3), "{m}");
    let m = eventually(
        &host,
        "/metrics",
        "presence counts and logged connects",
        |m| {
            m["presence"]["online"] == json!(1)
                && m["presence"]["busy"] == json!(1)
                && m["events"]["lastHour"].as_f64().is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    for k in ["away", "offline"] {
        assert!(m["presence"][k].is_number(), "presence.{k}: {m}");
    }
    assert!(num(&m, "events.total") >= 0.0);
    assert!(num(&m, "memory.used") > 0.0, "{m}");
    assert!(num(&m, "memory.total") >= num(&m, "memory.used"), "{m}");
    let pct = num(&m, "memory.percentage");
    assert!((0.0..=100.0).contains(&pct), "{m}");
    assert!(num(&m, "cpu.usage") >= 0.0, "{m}");
}

fn assert_prometheus(body: &str, content_type: &str) {
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "content type {content_type}"
    );
    assert!(serde_json::from_str::<Value>(body).is_err(), "not JSON");
    assert!(
        body.contains("# TYPE "),
        "exposition format has # TYPE lines:\n{body}"
    );
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    assert!(samples > 0, "at least one sample:\n{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_text_on_request_without_identifying_labels() {
    let host = TestHost::start(&[]).await;
    host.create_room("room-zx81", RoomType::Channel, Visibility::Public, None)
        .await;
    let mut c = host.joined("user-zx81", "room-zx81").await;
    c.emit_ack(
        "message:send",
        json!({"roomName": "room-zx81", "content": "hello"}),
        ms(5000),
    )
    .await;
    let sid = c.sid().to_string();

    let r = host.http_request("/metrics?format=prometheus", &[]).await;
    assert_eq!(r.status, 200);
    assert_prometheus(&r.body, &r.content_type);
    for secret in ["user-zx81", "room-zx81", sid.as_str()] {
        assert!(
            !r.body.contains(secret),
            "metrics must not carry {secret}:\n{}",
            r.body
        );
    }
    let r = host
        .http_request("/metrics", &[("Accept", "text/plain")])
        .await;
    assert_eq!(r.status, 200);
    assert_prometheus(&r.body, &r.content_type);
    let r = host
        .http_request(
            "/metrics",
            &[(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            )],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_prometheus(&r.body, &r.content_type);
    // Plain requests still get JSON.
    let r = host
        .http_request("/metrics", &[("Accept", "application/json")])
        .await;
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    r.json();
}
