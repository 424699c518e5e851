//! Issue 3: hostile policy modules (infinite loop, memory hog, deep recursion, panic, garbage
//! verdict, huge rewrite) fail closed with `POLICY_REJECTED` naming the module, or open with
//! `on_error = "allow"`; modules importing the filesystem or built against another interface
//! version are refused at load; other clients keep getting answers on time; the host lives on.

use std::time::{Duration, Instant};

use nself_realtime_tests::{TestHost, ms, plugin_wasm};
use serde_json::{Value, json};

const FAILING: [&str; 6] = [
    "infinite-loop",
    "memory-hog",
    "deep-recursion",
    "panics",
    "garbage-verdict",
    "huge-rewrite",
];

async fn host_with(fixture: &str, sidecar: &str) -> TestHost {
    let files = [
        (format!("{fixture}.wasm"), plugin_wasm(fixture)),
        (format!("{fixture}.toml"), sidecar.as_bytes().to_vec()),
    ];
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    TestHost::start_with_plugins(&[], &files).await
}

async fn status_of(host: &TestHost, name: &str) -> Value {
    let all = host.http_request("/metrics/plugins", &[]).await.json();
    all["plugins"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|p| p["file"] == format!("{name}.wasm"))
                .cloned()
        })
        .unwrap_or_else(|| panic!("{name} not listed: {all}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_modules_fail_closed_and_the_host_lives_on() {
    for fixture in FAILING {
        let host = host_with(fixture, "events = [\"message:send\"]\n").await;
        let mut sender = host.joined("sender", "general").await;
        let mut bystander = host.client("bystander").await;
        let started = Instant::now();
        let ack = sender.send_message("general", "hello").await;
        assert_eq!(ack["success"], json!(false), "{fixture}: {ack}");
        assert_eq!(ack["error"]["code"], "POLICY_REJECTED", "{fixture}: {ack}");
        assert_eq!(
            ack["error"]["details"]["plugin"], fixture,
            "{fixture}: {ack}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{fixture}: answered after {:?}",
            started.elapsed()
        );
        // Another client is served on time.
        let t = Instant::now();
        bystander.emit("ping", Value::Null);
        bystander
            .next_event("pong", ms(2000))
            .await
            .unwrap_or_else(|| panic!("{fixture}: bystander got no pong"));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{fixture}: pong after {:?}",
            t.elapsed()
        );
        // The module is still counted, and its failure too.
        let s = status_of(&host, fixture).await;
        assert!(s["failures"].as_u64().unwrap_or(0) >= 1, "{fixture}: {s}");
        let (code, _) = host.http_get("/health/live").await;
        assert_eq!(code, 200, "{fixture}: host not alive");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_allow_fails_open() {
    for fixture in ["infinite-loop", "panics", "garbage-verdict"] {
        let host = host_with(
            fixture,
            "events = [\"message:send\"]\non_error = \"allow\"\n",
        )
        .await;
        let mut sender = host.joined("sender", "general").await;
        let ack = sender.send_message("general", "hello").await;
        assert_eq!(ack["success"], json!(true), "{fixture}: {ack}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_keeps_failing_is_quarantined() {
    let host = host_with("infinite-loop", "events = [\"message:send\"]\n").await;
    let mut sender = host.joined("sender", "general").await;
    for _ in 0..5 {
        let ack = sender.send_message("general", "x").await;
        assert_eq!(ack["error"]["code"], "POLICY_REJECTED", "{ack}");
    }
    let s = status_of(&host, "infinite-loop").await;
    assert_eq!(s["status"], "quarantined", "{s}");
    let calls = s["calls"].as_u64().unwrap_or(0);
    // While quarantined the module is not called; the event still fails closed.
    let ack = sender.send_message("general", "x").await;
    assert_eq!(ack["error"]["code"], "POLICY_REJECTED", "{ack}");
    assert_eq!(
        status_of(&host, "infinite-loop").await["calls"].as_u64(),
        Some(calls)
    );
    let prom = host
        .http_request("/metrics?format=prometheus", &[])
        .await
        .body;
    assert!(
        prom.contains("realtime_plugin_quarantines_total{module=\"infinite-loop\"} 1"),
        "{prom}"
    );
    let health = host.http_request("/health", &[]).await.json();
    assert_eq!(health["checks"]["plugins"], "error", "{health}");
    assert_eq!(health["plugins"]["quarantined"], 1, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_imports_and_other_versions_are_refused_at_load() {
    for (fixture, needle) in [("fs-import", "wasi:filesystem"), ("other-version", "0.9.0")] {
        // Never loaded, and its sidecar says nothing: the events it covers (its sidecar's
        // `events`) are refused, naming the file.
        let host = host_with(fixture, "events = [\"message:send\"]\n").await;
        let s = status_of(&host, fixture).await;
        assert_eq!(s["status"], "blocking", "{fixture}: {s}");
        let error = s["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{fixture}: {error}");
        let mut sender = host.joined("sender", "general").await;
        let ack = sender.send_message("general", "hello").await;
        assert_eq!(
            ack["error"]["code"], "POLICY_UNAVAILABLE",
            "{fixture}: {ack}"
        );
        assert_eq!(
            ack["error"]["details"]["plugin"],
            format!("{fixture}.wasm"),
            "{fixture}: {ack}"
        );
        let health = host.http_request("/health", &[]).await.json();
        assert_eq!(health["status"], "degraded", "{fixture}: {health}");
        assert_eq!(health["plugins"]["blocking"], 1, "{fixture}: {health}");
        // With `on_error = "allow"` the operator opted out: nothing of it runs, events pass.
        let host = host_with(fixture, "on_error = \"allow\"\n").await;
        let s = status_of(&host, fixture).await;
        assert_eq!(s["status"], "failed", "{fixture}: {s}");
        let mut sender = host.joined("sender", "general").await;
        let ack = sender.send_message("general", "hello").await;
        assert_eq!(ack["success"], json!(true), "{fixture}: {ack}");
        let health = host.http_request("/health", &[]).await.json();
        assert_eq!(health["status"], "degraded", "{fixture}: {health}");
        assert_eq!(health["plugins"]["failed"], 1, "{fixture}: {health}");
    }
}
