//! SPEC §4: handlers are registered before any I/O, so an event emitted the instant the
//! connect answer arrives is never dropped. 10,000 rounds of connect → room:join with ack →
//! close, several clients at a time (`RACE_ROUNDS` / `RACE_CONCURRENCY` override).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use nself_realtime_tests::{SioClient, TestHost, ms, user_token};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_right_after_connect_is_never_dropped() {
    let rounds = env_usize("RACE_ROUNDS", 10_000);
    let workers = env_usize("RACE_CONCURRENCY", 8);
    let host = TestHost::start(&[("REALTIME_LOG_EVENTS", "false")]).await;
    let url = host.url();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let url = url.clone();
        let next = next.clone();
        // A few distinct users so presence counting and membership upserts are exercised.
        let token = user_token(&format!("racer-{w}"));
        tasks.push(tokio::spawn(async move {
            loop {
                let round = next.fetch_add(1, Ordering::Relaxed);
                if round >= rounds {
                    return;
                }
                let mut c = SioClient::connect(&url, Some(&token))
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: connect failed: {e}"));
                // Emitted the moment `40{sid}` has been read: no wait for `connected`.
                let ack = c
                    .emit_args_ack("room:join", &[json!({"roomName": "general"})], ms(5000))
                    .await
                    .unwrap_or_else(|| {
                        panic!("round {round}: room:join right after connect got no ack")
                    });
                assert_eq!(
                    ack.first().and_then(|a| a.get("success")),
                    Some(&json!(true)),
                    "round {round}: {ack:?}"
                );
                c.close().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("race worker");
    }
    let elapsed = started.elapsed();
    eprintln!("{rounds} connect+join+close rounds with {workers} clients in {elapsed:?}");
    // The server is still healthy and not leaking connections once everyone has left.
    let deadline = Instant::now() + ms(5000);
    loop {
        let health = host.http_request("/health", &[]).await;
        assert_eq!(health.status, 200, "{}", health.body);
        let connections = health.json()["connections"].clone();
        if connections == json!(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections should drop to 0 after every client closed, /health says {connections}"
        );
        tokio::time::sleep(ms(50)).await;
    }
}
