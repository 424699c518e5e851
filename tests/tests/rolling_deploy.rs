//! A rolling deploy of two instances over Redis and one PostgreSQL database: the instance that
//! is stopped (SIGTERM, graceful drain) tells the other instance's clients who left with it:
//! `user:left` in the rooms where the user has no socket left anywhere, and `presence:changed`
//! offline for users with no socket left anywhere. Users with a socket on the surviving
//! instance are not announced.

use std::time::Instant;

use nself_realtime_tests::pg::FreshDb;
use nself_realtime_tests::redis::SharedRedis;
use nself_realtime_tests::{TestHost, ms};
use serde_json::{Value, json};

async fn redis_ok(h: &TestHost) {
    let deadline = Instant::now() + ms(10_000);
    while h.http_request("/health", &[]).await.json()["checks"]["redis"] != "ok" {
        assert!(Instant::now() < deadline, "redis never ok");
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_announces_who_left_with_it() {
    let db = FreshDb::create().await;
    let redis = SharedRedis::new("deploy");
    let vars = [
        ("DATABASE_URL", db.url.as_str()),
        ("REALTIME_REDIS_URL", redis.url.as_str()),
        ("REALTIME_REDIS_PREFIX", redis.prefix.as_str()),
    ];
    let mut a = TestHost::start(&vars).await;
    let b = TestHost::start(&vars).await;
    redis_ok(&a).await;
    redis_ok(&b).await;
    let mut observer = b.joined("observer", "general").await;
    let _leaver = a.joined("leaver", "general").await;
    let _both_a = a.joined("both", "general").await;
    let _both_b = b.joined("both", "general").await;
    observer
        .next_event_where("user:joined", ms(3000), |v| v["userId"] == "leaver")
        .await
        .expect("leaver joined, seen across instances");
    observer.clear_events();

    let stopped = Instant::now();
    a.shutdown().await.expect("graceful stop of A");
    let left = observer
        .next_event_where("user:left", ms(5000), |v| v["userId"] == "leaver")
        .await
        .expect("user:left for the user whose only socket was on the stopped instance");
    assert_eq!(left, json!({"roomName": "general", "userId": "leaver"}));
    let off = observer
        .next_event_where("presence:changed", ms(5000), |v: &Value| {
            v["userId"] == "leaver"
        })
        .await
        .expect("presence:changed for the user whose only socket was on the stopped instance");
    assert_eq!(off["status"], "offline", "{off}");
    eprintln!(
        "rolling deploy: leaver announced {:?} after SIGTERM",
        stopped.elapsed()
    );
    // A barrier from the surviving instance: nothing about `both` came before it.
    let mut probe = b.joined("probe", "general").await;
    probe.send_message("general", "barrier").await;
    observer
        .next_event_where("message:new", ms(3000), |v| v["content"] == "barrier")
        .await
        .expect("barrier");
    let about_both: Vec<Value> = observer
        .collect("user:left", ms(0))
        .await
        .into_iter()
        .chain(observer.collect("presence:changed", ms(0)).await)
        .filter(|v| v["userId"] == "both" && v["status"] != "online")
        .collect();
    assert!(
        about_both.is_empty(),
        "both still has a socket: {about_both:?}"
    );
    redis.cleanup().await;
}
