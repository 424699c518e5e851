//! Issue 5 / SPEC §10: three instances (port 0 each) on the shared Redis under a prefix of
//! their own, one shared database, clients spread across them: the cluster behaves as one
//! server for room messages, `user:joined`/`user:left`, typing with expiry, presence of a user
//! on two instances, `clientMessageId` de-duplication and a policy rate limiter.

use nself_realtime_tests::redis::SharedRedis;
use nself_realtime_tests::{SioClient, TestHost, ms, plugin_wasm};
use serde_json::{Value, json};

/// Three (or `n`) instances of one cluster.
struct Cluster {
    hosts: Vec<TestHost>,
    redis: SharedRedis,
    _db: tempfile::TempDir,
}

impl Cluster {
    async fn start(
        tag: &str,
        n: usize,
        vars: &[(&str, &str)],
        files: &[(&str, Vec<u8>)],
    ) -> Cluster {
        let redis = SharedRedis::new(tag);
        let db = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/cluster.db", db.path().display());
        let mut hosts = Vec::new();
        for i in 0..n {
            let node = format!("{}-{i}", redis.prefix);
            let mut all: Vec<(&str, &str)> = vec![
                ("REALTIME_REDIS_URL", &redis.url),
                ("REALTIME_REDIS_PREFIX", &redis.prefix),
                ("REALTIME_NODE_ID", &node),
                ("DATABASE_URL", &url),
            ];
            all.extend_from_slice(vars);
            hosts.push(TestHost::start_with_plugins(&all, files).await);
        }
        let c = Cluster {
            hosts,
            redis,
            _db: db,
        };
        c.wait_redis_ok().await;
        c
    }

    /// Every instance reports Redis `ok` (subscriptions in place).
    async fn wait_redis_ok(&self) {
        for h in &self.hosts {
            let deadline = std::time::Instant::now() + ms(10_000);
            loop {
                let health = h.http_request("/health", &[]).await.json();
                if health["checks"]["redis"] == "ok" {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis never ok: {health}"
                );
                tokio::time::sleep(ms(50)).await;
            }
        }
    }

    async fn stop(mut self) {
        for h in &mut self.hosts {
            let _ = h.shutdown().await;
        }
        self.redis.cleanup().await;
    }
}

fn of(user: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["userId"] == user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_messages_and_joins_reach_members_on_every_instance() {
    let c = Cluster::start("msg", 3, &[], &[]).await;
    let mut a = c.hosts[0].joined("alice", "general").await;
    let mut b = c.hosts[1].joined("bob", "general").await;
    let joined = a
        .next_event_where("user:joined", ms(3000), of("bob"))
        .await
        .expect("alice (instance 0) sees bob join on instance 1");
    assert_eq!(joined["roomName"], "general", "{joined}");
    let mut d = c.hosts[2].joined("dora", "general").await;
    for (who, client) in [("alice", &mut a), ("bob", &mut b)] {
        client
            .next_event_where("user:joined", ms(3000), of("dora"))
            .await
            .unwrap_or_else(|| panic!("{who} sees dora join on instance 2"));
    }

    let ack = a.send_message("general", "hello cluster").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let id = ack["data"]["messageId"].clone();
    for (who, client) in [("alice", &mut a), ("bob", &mut b), ("dora", &mut d)] {
        let m = client
            .next_event("message:new", ms(3000))
            .await
            .unwrap_or_else(|| panic!("{who} gets the message"));
        assert_eq!(m["content"], "hello cluster", "{who}: {m}");
        assert_eq!(m["messageId"], id, "{who}: {m}");
        client.expect_none("message:new", ms(300)).await;
    }

    // An outsider on another instance gets nothing.
    let mut outsider = c.hosts[1].client("olga").await;
    let ack = d.send_message("general", "second").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    outsider.expect_none("message:new", ms(500)).await;

    // An explicit leave is seen across instances.
    let ack = b
        .emit_ack("room:leave", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    a.next_event_where("user:left", ms(3000), of("bob"))
        .await
        .expect("alice sees bob leave");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_left_only_when_the_last_socket_anywhere_leaves() {
    let c = Cluster::start("left", 3, &[], &[]).await;
    let mut obs = c.hosts[2].joined("observer", "general").await;
    let u0 = c.hosts[0].joined("ursula", "general").await;
    let u1 = c.hosts[1].joined("ursula", "general").await;
    obs.next_event_where("user:joined", ms(3000), of("ursula"))
        .await
        .expect("join seen");
    obs.clear_events();
    u0.close().await;
    obs.expect_none_where("user:left", ms(800), of("ursula"))
        .await;
    u1.close().await;
    let left = obs
        .next_event_where("user:left", ms(3000), of("ursula"))
        .await
        .expect("user:left after the last socket");
    assert_eq!(left["roomName"], "general", "{left}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_a_user_on_two_instances_once() {
    let c = Cluster::start("pres", 3, &[], &[]).await;
    let mut obs = c.hosts[2].client("observer").await;
    let u0 = c.hosts[0].client("ursula").await;
    let online = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("online");
    assert_eq!(online["status"], "online", "{online}");
    let mut u1 = c.hosts[1].client("ursula").await;
    obs.expect_none_where("presence:changed", ms(500), of("ursula"))
        .await;

    // A status set on instance 1 is what instance 2's clients see, and stays after instance 0's
    // socket goes.
    let ack = u1
        .emit_ack(
            "presence:update",
            json!({"status": "busy", "customStatus": {"text": "deep work"}}),
            ms(5000),
        )
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let busy = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("busy");
    assert_eq!(busy["status"], "busy", "{busy}");
    assert_eq!(busy["customStatus"], "deep work", "{busy}");

    u0.close().await;
    obs.expect_none_where("presence:changed", ms(800), of("ursula"))
        .await;
    u1.close().await;
    let offline = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("offline after the last socket");
    assert_eq!(offline["status"], "offline", "{offline}");
    obs.expect_none_where("presence:changed", ms(500), of("ursula"))
        .await;

    // Back on another instance: online again, with the unexpired custom status.
    let _u2 = c.hosts[2].client("ursula").await;
    let back = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("online again");
    assert_eq!(back["status"], "online", "{back}");
    assert_eq!(back["customStatus"], "deep work", "{back}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_instances_and_expires_once() {
    let c = Cluster::start("typ", 3, &[("REALTIME_TYPING_TIMEOUT", "600")], &[]).await;
    let mut readers: Vec<SioClient> = Vec::new();
    for (i, h) in c.hosts.iter().enumerate() {
        readers.push(h.joined(&format!("reader{i}"), "general").await);
    }
    let typist = c.hosts[0].joined("tina", "general").await;
    for r in &mut readers {
        r.clear_events();
    }
    typist.emit("typing:start", json!({"roomName": "general"}));
    for (i, r) in readers.iter_mut().enumerate() {
        let ev = r
            .next_event("typing:event", ms(3000))
            .await
            .unwrap_or_else(|| panic!("reader{i} gets typing:event"));
        assert_eq!(ev["users"][0]["userId"], "tina", "reader{i}: {ev}");
        assert_eq!(ev["users"].as_array().map(Vec::len), Some(1), "{ev}");
    }
    // No stop: the entry expires after 600 ms; each reader gets exactly one empty update,
    // whichever instance's janitor expired it.
    for (i, r) in readers.iter_mut().enumerate() {
        let events = r.collect("typing:event", ms(2000)).await;
        assert_eq!(
            events.len(),
            1,
            "reader{i} gets one expiry update: {events:?}"
        );
        assert_eq!(events[0]["users"], json!([]), "reader{i}: {events:?}");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_message_id_is_delivered_once_across_instances() {
    let c = Cluster::start("dedupe", 3, &[], &[]).await;
    let mut reader = c.hosts[2].joined("reader", "general").await;
    let mut first = c.hosts[0].joined("sam", "general").await;
    let mut retry = c.hosts[1].joined("sam", "general").await;
    reader.clear_events();
    let payload = json!({"roomName": "general", "content": "once", "clientMessageId": "cm-1"});
    let a = first
        .emit_ack("message:send", payload.clone(), ms(5000))
        .await;
    assert_eq!(a["success"], json!(true), "{a}");
    // The client reconnected elsewhere and sends again: same answer, no second delivery.
    let b = retry.emit_ack("message:send", payload, ms(5000)).await;
    assert_eq!(b["success"], json!(true), "{b}");
    assert_eq!(a["data"]["messageId"], b["data"]["messageId"], "{a} {b}");
    assert_eq!(a["data"]["timestamp"], b["data"]["timestamp"], "{a} {b}");
    let got = reader.collect("message:new", ms(1000)).await;
    assert_eq!(got.len(), 1, "delivered once: {got:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_rate_limiter_counts_across_instances() {
    let files = vec![
        ("rate-limiter.wasm", plugin_wasm("rate-limiter")),
        (
            "rate-limiter.toml",
            br#"config = '{"limit": 6, "windowMs": 60000}'"#.to_vec(),
        ),
    ];
    let c = Cluster::start("rl", 3, &[], &files).await;
    let mut senders: Vec<SioClient> = Vec::new();
    for h in &c.hosts {
        senders.push(h.joined("chatty", "general").await);
    }
    // 9 messages, round-robin over the three instances: the 6-per-window budget is shared.
    let mut ok = 0;
    let mut limited = Vec::new();
    for i in 0..9 {
        let ack = senders[i % 3]
            .send_message("general", &format!("m{i}"))
            .await;
        if ack["success"] == json!(true) {
            ok += 1;
        } else {
            limited.push(ack);
        }
    }
    assert_eq!(ok, 6, "one budget for the cluster: {limited:?}");
    for ack in &limited {
        assert_eq!(ack["error"]["code"], "RATE_LIMIT_EXCEEDED", "{ack}");
    }
    c.stop().await;
}

/// A module's deadline is its own time: waiting for a slow Redis behind its key/value calls
/// does not count against it (a rate limiter over a busy Redis was quarantined for "deadline
/// exceeded" and then refused every message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_does_not_spend_a_modules_deadline() {
    let redis = nself_realtime_tests::redis::PrivateRedis::start().await;
    let url = redis.url();
    let files = vec![
        ("rate-limiter.wasm", plugin_wasm("rate-limiter")),
        (
            "rate-limiter.toml",
            br#"timeout_ms = 5
config = '{"limit": 1000, "windowMs": 60000}'"#
                .to_vec(),
        ),
    ];
    let host = TestHost::start_with_plugins(&[("REALTIME_REDIS_URL", &url)], &files).await;
    let deadline = std::time::Instant::now() + ms(10_000);
    while host.http_request("/health", &[]).await.json()["checks"]["redis"] != "ok" {
        assert!(std::time::Instant::now() < deadline, "redis never ok");
        tokio::time::sleep(ms(100)).await;
    }
    let mut a = host.joined("alice", "general").await;
    for i in 0..3 {
        // Redis stalls for 40 ms (8 times the module's budget) while the module counts.
        let stall = {
            let url = url.clone();
            tokio::spawn(async move {
                nself_realtime_tests::redis::command(&url, &["DEBUG", "SLEEP", "0.04"]).await
            })
        };
        tokio::time::sleep(ms(5)).await;
        let ack = a.send_message("general", &format!("m{i}")).await;
        assert_eq!(ack["success"], json!(true), "round {i}: {ack}");
        stall.await.expect("stall task").expect("DEBUG SLEEP");
    }
    let health = host.http_request("/health", &[]).await.json();
    assert_eq!(
        (
            &health["plugins"]["serving"],
            &health["plugins"]["quarantined"],
            &health["plugins"]["failed"]
        ),
        (&json!(1), &json!(0), &json!(0)),
        "the module still serves: {health}"
    );
    drop(host);
    let mut redis = redis;
    redis.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_report_redis() {
    let c = Cluster::start("health", 2, &[], &[]).await;
    let health = c.hosts[0].http_request("/health", &[]).await.json();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["checks"]["redis"], "ok", "{health}");
    let mut a = c.hosts[0].joined("alice", "general").await;
    let _b = c.hosts[1].joined("bob", "general").await;
    let ack = a.send_message("general", "counted").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    tokio::time::sleep(ms(300)).await;
    let prom = c.hosts[0]
        .http_request("/metrics", &[("accept", "text/plain")])
        .await
        .body;
    assert!(prom.contains("realtime_redis_up 1"), "{prom}");
    let published = prom
        .lines()
        .find_map(|l| l.strip_prefix("realtime_redis_published_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(published >= 1.0, "broadcasts were published: {prom}");
    let json = c.hosts[0].http_request("/metrics", &[]).await.json();
    assert_eq!(json["redis"]["enabled"], true, "{json}");
    assert_eq!(json["redis"]["up"], true, "{json}");
    assert!(
        json["redis"]["published"].as_u64().unwrap_or(0) >= 1,
        "{json}"
    );
    assert_eq!(json["redis"]["dropped"]["out"], 0, "{json}");
    c.stop().await;
}

#[test]
fn init_checks_redis_and_only_warns_when_it_is_down() {
    use nself_realtime_tests::process::cli;
    let db = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/init.db", db.path().display());
    let redis = nself_realtime_tests::redis::shared_url();
    let out = cli(
        &[("DATABASE_URL", &url), ("REALTIME_REDIS_URL", &redis)],
        &["init", "--json"],
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["redis"], "ok", "{v}");
    // Nothing listens on port 1: init still succeeds (servers start degraded) and says so.
    let out = cli(
        &[
            ("DATABASE_URL", &url),
            ("REALTIME_REDIS_URL", "redis://127.0.0.1:1"),
        ],
        &["init", "--json"],
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["redis"], "unreachable", "{v}");
    assert_eq!(v["success"], true, "{v}");
    let out = cli(&[("DATABASE_URL", &url)], &["init", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["redis"], "disabled", "{v}");
}

/// Production shape: two instances on one PostgreSQL database and one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgresql_and_redis() {
    let db = nself_realtime_tests::pg::FreshDb::create().await;
    let redis = SharedRedis::new("pg");
    let vars = |node: &'static str| {
        vec![
            ("REALTIME_REDIS_URL", redis.url.clone()),
            ("REALTIME_REDIS_PREFIX", redis.prefix.clone()),
            ("REALTIME_NODE_ID", node.to_string()),
            ("DATABASE_URL", db.url.clone()),
        ]
    };
    let mut hosts = Vec::new();
    for node in ["pg-a", "pg-b"] {
        let v = vars(node);
        let v: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
        hosts.push(TestHost::start(&v).await);
    }
    for h in &hosts {
        let deadline = std::time::Instant::now() + ms(10_000);
        while h.http_request("/health", &[]).await.json()["status"] != "healthy" {
            assert!(std::time::Instant::now() < deadline, "never healthy");
            tokio::time::sleep(ms(50)).await;
        }
    }
    // A room created through instance A's database is joinable on B.
    hosts[0]
        .create_room(
            "pg-shared",
            nself_realtime_tests::RoomType::Channel,
            nself_realtime_tests::Visibility::Public,
            None,
        )
        .await;
    let mut obs = hosts[0].joined("observer", "pg-shared").await;
    let mut writer = hosts[1].joined("writer", "pg-shared").await;
    obs.next_event_where("user:joined", ms(3000), of("writer"))
        .await
        .expect("join seen across instances");
    let ack = writer
        .send_message("pg-shared", "via postgres and redis")
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let m = obs
        .next_event("message:new", ms(3000))
        .await
        .expect("message across instances");
    assert_eq!(m["content"], "via postgres and redis", "{m}");
    // Presence is announced once (Redis decides; the database reaper only closes rows).
    obs.clear_events();
    writer.close().await;
    let off = obs
        .next_event_where("presence:changed", ms(3000), |v: &Value| {
            v["userId"] == "writer" && v["status"] == "offline"
        })
        .await
        .expect("writer offline");
    assert_eq!(off["status"], "offline");
    obs.expect_none_where("presence:changed", ms(800), of("writer"))
        .await;
    for h in &mut hosts {
        let _ = h.shutdown().await;
    }
    redis.cleanup().await;
}
