//! Issue 16: policy modules as an author and an operator meet them. A file that fails to load
//! at start fails closed; sidecars pair with `-` and `_` alike; shadow mode records and
//! enforces nothing; 0.1.0 and 0.2.0 modules load side by side; rejection details and
//! acceptance notifications (0.2.0); a refused configuration shows the module's own message;
//! call figures survive reloads; readiness and health tell a blocking file from a serving one.

use std::path::Path;
use std::time::{Duration, Instant};

use nself_realtime_tests::{SioClient, TestHost, ms, plugin_wasm, user_token};
use serde_json::{Value, json};

/// Half of a real module: what a copy cut short leaves behind.
fn truncated(name: &str) -> Vec<u8> {
    let wasm = plugin_wasm(name);
    wasm[..wasm.len() / 2].to_vec()
}

async fn plugins(host: &TestHost) -> Vec<Value> {
    host.http_request("/metrics/plugins", &[]).await.json()["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn status_of(host: &TestHost, file: &str) -> Value {
    plugins(host)
        .await
        .into_iter()
        .find(|p| p["file"] == file)
        .unwrap_or_else(|| panic!("{file} is not listed"))
}

/// Waits (10 s at most) until the status of `file` satisfies `ok`; returns it.
async fn wait_status(host: &TestHost, file: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = plugins(host).await.into_iter().find(|p| p["file"] == file);
        match s {
            Some(s) if ok(&s) => return s,
            other => assert!(Instant::now() < deadline, "{file}: still {other:?}"),
        }
        tokio::time::sleep(ms(50)).await;
    }
}

fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_broken_at_start_refuses_every_event_until_it_is_removed() {
    let host = TestHost::start_with_plugins(&[], &[("guard.wasm", truncated("room-policy"))]).await;
    // No descriptor and no sidecar to go by: every event is covered, connect included.
    let refused = SioClient::connect(&host.url(), Some(&user_token("u1")))
        .await
        .err()
        .expect("connect refused while guard.wasm blocks");
    assert!(refused.message.contains("guard.wasm"), "{refused}");
    let ready = host.http_request("/health/ready", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let ready = ready.json();
    assert_eq!(ready["status"], "blocked", "{ready}");
    assert!(
        ready["reason"]
            .as_str()
            .is_some_and(|r| r.contains("guard.wasm")),
        "{ready}"
    );
    let health = host.http_request("/health", &[]).await.json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["checks"]["plugins"], "blocking", "{health}");
    assert_eq!(health["plugins"]["serving"], 0, "{health}");
    assert_eq!(health["plugins"]["blocking"], 1, "{health}");
    let s = status_of(&host, "guard.wasm").await;
    assert_eq!(
        (s["status"].as_str(), s["serving"].as_bool()),
        (Some("blocking"), Some(false))
    );

    // Removed: nothing blocks any more.
    std::fs::remove_file(host.plugins_dir().join("guard.wasm")).expect("rm");
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.http_request("/health/ready", &[]).await.status != 200 {
        assert!(Instant::now() < deadline, "still not ready");
        tokio::time::sleep(ms(50)).await;
    }
    let mut c = host.joined("u1", "general").await;
    let ack = c.send_message("general", "hello").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_covers_its_sidecar_events_until_a_good_build_replaces_it() {
    // cargo names the build after the crate with `_`; the sidecar is named after the module.
    let files = [
        ("rate_limiter.wasm", truncated("rate-limiter")),
        (
            "rate-limiter.toml",
            br#"events = ["message:send"]
config = '{"limit": 1, "windowMs": 60000}'
"#
            .to_vec(),
        ),
    ];
    let host = TestHost::start_with_plugins(&[], &files).await;
    let mut c = host.joined("u1", "general").await;
    let ack = c.send_message("general", "hello").await;
    assert_eq!(ack["success"], json!(false), "{ack}");
    assert_eq!(ack["error"]["code"], "POLICY_UNAVAILABLE", "{ack}");
    assert_eq!(
        ack["error"]["details"]["plugin"], "rate_limiter.wasm",
        "{ack}"
    );
    assert!(
        ack["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rate_limiter.wasm")),
        "{ack}"
    );
    // Other events are not its business.
    let ack = c
        .emit_ack("typing:start", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");

    // A good build dropped over it: it loads with the `-` sidecar, and the sidecar's config.
    replace(
        &host.plugins_dir().join("rate_limiter.wasm"),
        &plugin_wasm("rate-limiter"),
    );
    let s = wait_status(&host, "rate_limiter.wasm", |s| s["status"] == "loaded").await;
    assert_eq!(s["sidecar"], "rate-limiter.toml", "{s}");
    assert_eq!(s["name"], "rate-limiter", "{s}");
    assert_eq!(host.http_request("/health/ready", &[]).await.status, 200);
    let ack = c.send_message("general", "one").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let ack = c.send_message("general", "two").await;
    assert_eq!(
        ack["error"]["code"], "RATE_LIMIT_EXCEEDED",
        "limit 1 from the sidecar: {ack}"
    );
    // 0.2.0 details reach the client beside `plugin`.
    let retry = ack["error"]["details"]["retryAfterMs"]
        .as_u64()
        .expect("retryAfterMs");
    assert!(retry > 0 && retry <= 60_000, "{ack}");
    assert_eq!(ack["error"]["details"]["plugin"], "rate-limiter", "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_sidecar_at_start_blocks_and_on_error_allow_opts_out() {
    let files = [
        ("profanity.wasm", plugin_wasm("profanity")),
        ("profanity.toml", b"priority = \"high\"\n".to_vec()),
    ];
    let host = TestHost::start_with_plugins(&[], &files).await;
    let s = status_of(&host, "profanity.wasm").await;
    assert_eq!(s["status"], "blocking", "{s}");
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("sidecar: ")),
        "{s}"
    );
    let ready = host.http_request("/health/ready", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.body);

    // The explicit opt-out: a file that does not load lets its events pass.
    let files = [
        ("guard.wasm", truncated("profanity")),
        ("guard.toml", b"on_error = \"allow\"\n".to_vec()),
    ];
    let host = TestHost::start_with_plugins(&[], &files).await;
    assert_eq!(status_of(&host, "guard.wasm").await["status"], "failed");
    assert_eq!(host.http_request("/health/ready", &[]).await.status, 200);
    let mut c = host.joined("u1", "general").await;
    let ack = c.send_message("general", "hello").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_records_verdicts_and_enforces_nothing() {
    let files = [
        ("rate-limiter.wasm", plugin_wasm("rate-limiter")),
        (
            "rate-limiter.toml",
            br#"mode = "shadow"
config = '{"limit": 1, "windowMs": 60000}'
"#
            .to_vec(),
        ),
    ];
    let host = TestHost::start_with_plugins(&[("REALTIME_LOG_EVENT_TYPES", "*")], &files).await;
    let mut c = host.joined("u1", "general").await;
    for i in 0..3 {
        let ack = c.send_message("general", &format!("m{i}")).await;
        assert_eq!(
            ack["success"],
            json!(true),
            "shadow enforces nothing: {ack}"
        );
    }
    let s = status_of(&host, "rate-limiter.wasm").await;
    assert_eq!(s["mode"], "shadow", "{s}");
    assert_eq!(s["calls"], 3, "{s}");
    assert_eq!(s["rejects"], 2, "would have refused two: {s}");
    let prom = host
        .http_request("/metrics?format=prometheus", &[])
        .await
        .body;
    assert!(
        prom.contains(
            r#"realtime_plugin_verdicts_total{module="rate-limiter",verdict="reject",mode="shadow"} 2"#
        ),
        "{prom}"
    );
    assert!(
        prom.contains(
            r#"realtime_plugin_verdicts_total{module="rate-limiter",verdict="allow",mode="shadow"} 1"#
        ),
        "{prom}"
    );
    let json_metrics = host.http_request("/metrics", &[]).await.json();
    assert_eq!(json_metrics["plugins"]["rejects"], 2, "{json_metrics}");
    assert_eq!(json_metrics["plugins"]["modules"][0]["mode"], "shadow");
    // The audit rows of the messages carry the shadow verdicts.
    let db = sqlx::SqlitePool::connect(&host.database_url)
        .await
        .expect("db");
    let deadline = Instant::now() + Duration::from_secs(5);
    let shadow_rejects = loop {
        let metas: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT metadata FROM realtime_events WHERE event_type = 'message:send'",
        )
        .fetch_all(&db)
        .await
        .expect("rows");
        let decisions: Vec<Value> = metas
            .iter()
            .flatten()
            .filter_map(|m| serde_json::from_str::<Value>(m).ok())
            .filter_map(|m| m["policy"].as_array().cloned())
            .flatten()
            .collect();
        let n = decisions
            .iter()
            .filter(|d| d["verdict"] == "reject" && d["mode"] == "shadow")
            .count();
        if n == 2 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(ms(50)).await;
    };
    assert_eq!(shadow_rejects, 2, "two shadow rejects in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_of_both_interface_versions_load_side_by_side() {
    let files = [
        ("legacy-v01.wasm", plugin_wasm("legacy-v01")),
        ("rate-limiter.wasm", plugin_wasm("rate-limiter")),
        (
            "rate-limiter.toml",
            br#"config = '{"limit": 100}'"#.to_vec(),
        ),
    ];
    let host = TestHost::start_with_plugins(&[], &files).await;
    let legacy = status_of(&host, "legacy-v01.wasm").await;
    assert_eq!(
        (legacy["status"].as_str(), legacy["interface"].as_str()),
        (Some("loaded"), Some("0.1.0")),
        "{legacy}"
    );
    let current = status_of(&host, "rate-limiter.wasm").await;
    assert_eq!(
        (current["status"].as_str(), current["interface"].as_str()),
        (Some("loaded"), Some("0.2.0")),
        "{current}"
    );

    let mut reader = host.joined("reader", "general").await;
    let mut writer = host.joined("writer", "general").await;
    let ack = writer.send_message("general", "hi").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let m = reader
        .next_event_where("message:new", ms(5000), |m| m["userId"] == "writer")
        .await
        .expect("message:new");
    assert_eq!(m["content"], "[v01] hi", "the 0.1.0 module rewrote it: {m}");
    let ack = writer.send_message("general", "legacy-no thanks").await;
    assert_eq!(ack["error"]["code"], "LEGACY_REJECTED", "{ack}");
    assert_eq!(
        ack["error"]["details"],
        json!({"plugin": "legacy-v01"}),
        "{ack}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_accepted_messages_count_when_a_module_asks_for_acceptance() {
    let files = [
        ("rate-limiter.wasm", plugin_wasm("rate-limiter")),
        (
            "rate-limiter.toml",
            br#"config = '{"limit": 2, "windowMs": 60000, "count": "accepted"}'"#.to_vec(),
        ),
    ];
    let host = TestHost::start_with_plugins(&[], &files).await;
    let mut c = host.joined("u1", "general").await;
    // Refused by the server itself (not a member of "random"): these cost nothing.
    for _ in 0..3 {
        let ack = c.send_message("random", "nope").await;
        assert_eq!(ack["error"]["code"], "NOT_IN_ROOM", "{ack}");
    }
    for i in 0..2 {
        let ack = c.send_message("general", &format!("m{i}")).await;
        assert_eq!(ack["success"], json!(true), "{ack}");
    }
    // Acceptance is heard off the event path, just after the client's answer.
    let s = wait_status(&host, "rate-limiter.wasm", |s| s["accepted"] == 2).await;
    assert_eq!(s["calls"], 5, "{s}");
    let ack = c.send_message("general", "third").await;
    assert_eq!(ack["error"]["code"], "RATE_LIMIT_EXCEEDED", "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_shows_the_modules_message_and_figures_survive_reloads() {
    let files = [
        ("rate-limiter.wasm", plugin_wasm("rate-limiter")),
        (
            "rate-limiter.toml",
            br#"config = '{"limit": 100}'"#.to_vec(),
        ),
    ];
    let host = TestHost::start_with_plugins(&[], &files).await;
    let mut c = host.joined("u1", "general").await;
    for i in 0..3 {
        let ack = c.send_message("general", &format!("m{i}")).await;
        assert_eq!(ack["success"], json!(true), "{ack}");
    }
    let sidecar = host.plugins_dir().join("rate-limiter.toml");
    // A typo in the config: the module's own words, not a trap, no build paths.
    replace(&sidecar, br#"config = '{"limitt": 100}'"#);
    let s = wait_status(&host, "rate-limiter.wasm", |s| s["status"] == "stale").await;
    let error = s["error"].as_str().unwrap_or_default();
    assert!(error.contains("unknown field `limitt`"), "{s}");
    assert!(
        !error.contains("unreachable") && !error.contains(".rs:"),
        "{s}"
    );
    assert_eq!(s["serving"], true, "the previous version serves: {s}");
    let health = host.http_request("/health", &[]).await.json();
    assert_eq!(health["plugins"]["serving"], 1, "{health}");
    assert_eq!(
        health["plugins"]["errors"][0]["error"], s["error"],
        "{health}"
    );
    // A good config again: a new version, and the figures go on from where they were.
    replace(&sidecar, br#"config = '{"limit": 50}'"#);
    wait_status(&host, "rate-limiter.wasm", |s| s["status"] == "loaded").await;
    let ack = c.send_message("general", "after").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let s = status_of(&host, "rate-limiter.wasm").await;
    assert_eq!(s["calls"], 4, "counted across the reload: {s}");
}
