//! Issue 3: hot reload under traffic. A client sends continuously while the `tagger` module is
//! replaced by a new version, then by an invalid file, then deleted. Every acked message
//! reaches the reader exactly once, each change takes effect within 2 seconds without anyone
//! reconnecting, and the invalid file leaves the previous version serving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nself_realtime_tests::{TestHost, ms, plugin_wasm};
use serde_json::json;

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn sidecar(suffix: &str, version: &str) -> Vec<u8> {
    let config = json!({"suffix": suffix, "version": version}).to_string();
    format!("events = [\"message:send\"]\nconfig = '{config}'\n").into_bytes()
}

type Seen = Arc<Mutex<Vec<(String, String, Instant)>>>;

/// Waits until a message received after `since` has content ending as `want` says.
async fn wait_for(seen: &Seen, since: Instant, want: impl Fn(&str) -> bool) -> Duration {
    let deadline = since + Duration::from_secs(10);
    loop {
        let hit = seen
            .lock()
            .expect("lock")
            .iter()
            .find(|(_, c, at)| *at >= since && want(c))
            .map(|(_, _, at)| *at);
        if let Some(at) = hit {
            return at.duration_since(since);
        }
        assert!(Instant::now() < deadline, "change never took effect");
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_swap_under_traffic_without_losing_a_message() {
    let files = vec![
        ("tagger.wasm", plugin_wasm("tagger")),
        ("tagger.toml", sidecar(" [v1]", "1.0.0")),
    ];
    let host = TestHost::start_with_plugins(&[("REALTIME_EVENT_RATE", "1000")], &files).await;
    let dir = host.plugins_dir();
    let mut reader = host.joined("reader", "general").await;
    let mut writer = host.joined("writer", "general").await;

    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let seen = seen.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(m) = reader.next_event("message:new", ms(200)).await {
                    let id = m["messageId"].as_str().unwrap_or_default().to_string();
                    let content = m["content"].as_str().unwrap_or_default().to_string();
                    seen.lock()
                        .expect("lock")
                        .push((id, content, Instant::now()));
                }
            }
            // Drain what is still in flight.
            while let Some(m) = reader.next_event("message:new", ms(500)).await {
                let id = m["messageId"].as_str().unwrap_or_default().to_string();
                let content = m["content"].as_str().unwrap_or_default().to_string();
                seen.lock()
                    .expect("lock")
                    .push((id, content, Instant::now()));
            }
            reader
        })
    };
    let writing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ack = writer
                    .emit_ack(
                        "message:send",
                        json!({"roomName": "general", "content": format!("m{i}")}),
                        ms(5000),
                    )
                    .await;
                assert_eq!(ack["success"], json!(true), "message {i}: {ack}");
                acked.push(
                    ack["data"]["messageId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                i += 1;
                tokio::time::sleep(ms(5)).await;
            }
            (writer, acked)
        })
    };

    let t0 = Instant::now();
    wait_for(&seen, t0, |c| c.ends_with(" [v1]")).await;

    // A new version (the sidecar is part of what is loaded).
    let t1 = Instant::now();
    write_atomically(&dir.join("tagger.toml"), &sidecar(" [v2]", "2.0.0"));
    let took = wait_for(&seen, t1, |c| c.ends_with(" [v2]")).await;
    assert!(took <= Duration::from_secs(2), "v2 took {took:?}");

    // An invalid file: the previous version keeps serving, and the failure is reported.
    let t2 = Instant::now();
    write_atomically(&dir.join("tagger.wasm"), b"\0asm this is not a component");
    let deadline = t2 + Duration::from_secs(5);
    let status = loop {
        let s = host.http_request("/metrics/plugins", &[]).await.json();
        if s["plugins"][0]["status"] == "stale" {
            break s;
        }
        assert!(Instant::now() < deadline, "invalid file not reported: {s}");
        tokio::time::sleep(ms(50)).await;
    };
    assert!(status["plugins"][0]["error"].as_str().is_some(), "{status}");
    assert_eq!(status["plugins"][0]["serving"], true, "{status}");
    // /health tells "a version serves" from "the file failed".
    let health = host.http_request("/health", &[]).await.json();
    assert_eq!(health["plugins"]["serving"], 1, "{health}");
    assert_eq!(health["plugins"]["stale"], 1, "{health}");
    assert_eq!(health["plugins"]["blocking"], 0, "{health}");
    let after_invalid = Instant::now();
    tokio::time::sleep(ms(500)).await;
    {
        let seen = seen.lock().expect("lock");
        let later: Vec<&String> = seen
            .iter()
            .filter(|(_, _, at)| *at > after_invalid)
            .map(|(_, c, _)| c)
            .collect();
        assert!(!later.is_empty(), "traffic stopped");
        assert!(
            later.iter().all(|c| c.ends_with(" [v2]")),
            "the previous version must keep serving: {later:?}"
        );
    }

    // Deleting the file unloads the module.
    let t3 = Instant::now();
    std::fs::remove_file(dir.join("tagger.wasm")).expect("delete");
    let took = wait_for(&seen, t3, |c| !c.contains(" [")).await;
    assert!(took <= Duration::from_secs(2), "unload took {took:?}");

    stop.store(true, Ordering::Relaxed);
    let (_writer, acked) = writing.await.expect("writer");
    let _reader = reading.await.expect("reader");
    let seen = seen.lock().expect("lock");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (id, _, _) in seen.iter() {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    assert!(acked.len() > 50, "too little traffic: {}", acked.len());
    for id in &acked {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "acked message {id} not delivered exactly once"
        );
    }
    assert_eq!(
        counts.len(),
        acked.len(),
        "delivered messages that were never acked"
    );
}
