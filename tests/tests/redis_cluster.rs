//! Scale-out on a Redis Cluster (`REALTIME_REDIS_CLUSTER`), on a private cluster of three
//! masters that each test forms on loopback:
//! - the harness itself: a hash tag keeps one room's keys on one master while rooms spread over
//!   all of them, and a killed master started again on its port takes its slots back, empty;
//! - three instances share rooms, messages, presence and typing through the cluster, report it
//!   in `/health`, `/metrics` and `init`; one user's or one room's keys share their shard's
//!   slot, the shards spread over every master, and broadcasts go over sharded pub/sub on
//!   every master;
//! - the master holding a user's presence killed mid-traffic and started again (empty): local
//!   delivery goes on, `/health` says so, and cross-instance delivery and presence come back;
//! - one of three server processes SIGKILLed: its users with no socket elsewhere go offline
//!   once, after the lease, and the survivors keep serving each other;
//! - a typing entry expires once across three instances;
//! - `init` reports the cluster; both Redis variables together stop the start;
//! - Redis 6 (no `SPUBLISH`): classic pub/sub; a room's slot moved to another master (MOVED/ASK)
//!   mid-traffic and a master failing over to its replica lose nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nself_realtime_tests::redis::{PrivateCluster, unique_prefix};
use nself_realtime_tests::{RoomType, SioClient, TestHost, Visibility, ms};
use serde_json::{Value, json};

#[tokio::test]
async fn a_private_cluster_forms_spreads_rooms_and_survives_a_master_restart() {
    let mut c = PrivateCluster::start(3).await;
    assert_eq!(c.seeds().split(',').count(), 3);

    // One room's keys (meta, log, typing) share the room's hash tag: one slot, one master.
    let room_keys = |room: &str| {
        ["hist:meta", "hist:log", "typing:main"].map(|k| format!("rt:{{room:{room}}}:{k}"))
    };
    let mut masters = BTreeSet::new();
    for i in 0..30 {
        let room = format!("room-{i}");
        let owners: BTreeSet<usize> = {
            let mut s = BTreeSet::new();
            for k in room_keys(&room) {
                s.insert(c.master_of(&k).await.expect("a master serves the slot"));
            }
            s
        };
        assert_eq!(owners.len(), 1, "the keys of {room} live on one master");
        masters.extend(owners);
    }
    assert_eq!(masters.len(), 3, "30 rooms spread over all three masters");

    // A key written through the master that owns it is read back there.
    let key = "rt:{room:room-7}:hist:meta";
    let owner = c.master_of(key).await.expect("owner");
    c.command(owner, &["SET", key, "1"])
        .await
        .expect("SET on the owner");
    let got: String = redis::from_redis_value(c.command(owner, &["GET", key]).await.expect("GET"))
        .expect("a string");
    assert_eq!(got, "1");
    // Any other master answers MOVED for it.
    let other = (owner + 1) % 3;
    let moved = c.command(other, &["GET", key]).await;
    assert!(
        moved
            .as_ref()
            .is_err_and(|e| e.to_string().to_uppercase().contains("MOVED")),
        "another master redirects: {moved:?}"
    );

    // Kill the owner: the others notice within the node timeout (2 s) plus gossip.
    c.kill(owner);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = c
            .command(other, &["CLUSTER", "INFO"])
            .await
            .expect("CLUSTER INFO");
        let info: String = redis::from_redis_value(info).expect("text");
        if info.contains("cluster_state:fail") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never noticed the dead master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back on its port with its nodes.conf: it serves its slots again, empty.
    c.restart(owner).await;
    assert_eq!(c.master_of(key).await, Some(owner));
    let after = c
        .command(owner, &["GET", key])
        .await
        .expect("GET after the restart");
    assert_eq!(
        after,
        redis::Value::Nil,
        "a restart without persistence lost the key"
    );
}

/// `n` instances on the cluster, one SQLite file, one unique prefix.
struct Instances {
    hosts: Vec<TestHost>,
    prefix: String,
    _db: tempfile::TempDir,
}

impl Instances {
    async fn start(c: &PrivateCluster, tag: &str, n: usize, vars: &[(&str, &str)]) -> Instances {
        let prefix = unique_prefix(tag);
        let db = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/cluster.db", db.path().display());
        let seeds = c.seeds();
        let mut hosts = Vec::new();
        for i in 0..n {
            let node = format!("{prefix}-{i}");
            let mut all: Vec<(&str, &str)> = vec![
                ("REALTIME_REDIS_CLUSTER", &seeds),
                ("REALTIME_REDIS_PREFIX", &prefix),
                ("REALTIME_NODE_ID", &node),
                ("DATABASE_URL", &url),
            ];
            all.extend_from_slice(vars);
            hosts.push(TestHost::start(&all).await);
        }
        let me = Instances {
            hosts,
            prefix,
            _db: db,
        };
        me.wait_redis("ok", ms(15_000)).await;
        me
    }

    /// Every instance's `/health` says `checks.redis == want` within `limit`.
    async fn wait_redis(&self, want: &str, limit: Duration) {
        for h in &self.hosts {
            let deadline = Instant::now() + limit;
            loop {
                let health = h.http_request("/health", &[]).await.json();
                if health["checks"]["redis"] == want {
                    break;
                }
                assert!(Instant::now() < deadline, "redis never {want}: {health}");
                tokio::time::sleep(ms(100)).await;
            }
        }
    }

    async fn stop(mut self) {
        for h in &mut self.hosts {
            let _ = h.shutdown().await;
        }
    }
}

/// Every key of a prefix on the cluster: (master, key, slot).
struct KeysBy {
    all: Vec<(usize, String, i64)>,
}

impl KeysBy {
    async fn read(c: &PrivateCluster, prefix: &str) -> KeysBy {
        let mut all = Vec::new();
        for i in 0..3 {
            let keys = c
                .command(i, &["KEYS", &format!("*{prefix}*")])
                .await
                .expect("KEYS");
            let keys: Vec<String> = redis::from_redis_value(keys).expect("names");
            for k in keys {
                let slot: i64 = redis::from_redis_value(
                    c.command(i, &["CLUSTER", "KEYSLOT", &k])
                        .await
                        .expect("KEYSLOT"),
                )
                .expect("a number");
                all.push((i, k, slot));
            }
        }
        KeysBy { all }
    }

    /// The (master, key, slot) of the key ending with `suffix`.
    fn ending(&self, suffix: &str) -> (usize, String, i64) {
        self.all
            .iter()
            .find(|(_, k, _)| k.ends_with(suffix))
            .cloned()
            .unwrap_or_else(|| panic!("a key ending with {suffix}"))
    }
}

fn of(user: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["userId"] == user
}

/// A message from `from` reaches `to` (and nothing is doubled).
async fn delivered(from: &mut SioClient, to: &mut SioClient, text: &str) -> bool {
    let ack = from.send_message("general", text).await;
    if ack["success"] != json!(true) {
        return false;
    }
    to.next_event_where("message:new", ms(3000), |m| m["content"] == text)
        .await
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_rooms_presence_and_typing_through_a_redis_cluster() {
    let c = PrivateCluster::start(3).await;
    let s = Instances::start(&c, "rc", 3, &[("REALTIME_HISTORY_SIZE", "20")]).await;

    // Rooms and messages across instances.
    let mut a = s.hosts[0].joined("alice", "general").await;
    let mut b = s.hosts[1].joined("bob", "general").await;
    a.next_event_where("user:joined", ms(3000), of("bob"))
        .await
        .expect("alice (instance 0) sees bob join on instance 1");
    let mut d = s.hosts[2].joined("dora", "general").await;
    for (who, client) in [("alice", &mut a), ("bob", &mut b)] {
        client
            .next_event_where("user:joined", ms(3000), of("dora"))
            .await
            .unwrap_or_else(|| panic!("{who} sees dora join on instance 2"));
    }
    let ack = a.send_message("general", "hello cluster").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    for (who, client) in [("alice", &mut a), ("bob", &mut b), ("dora", &mut d)] {
        let m = client
            .next_event("message:new", ms(3000))
            .await
            .unwrap_or_else(|| panic!("{who} gets the message"));
        assert_eq!(m["content"], "hello cluster", "{who}: {m}");
        client.expect_none("message:new", ms(300)).await;
    }

    // Typing crosses instances.
    a.emit("typing:start", json!({"roomName": "general"}));
    let t = d
        .next_event("typing:event", ms(3000))
        .await
        .expect("dora sees alice typing");
    assert_eq!(t["roomName"], "general", "{t}");

    // Presence: one user on two instances is online once, offline once.
    let mut obs = s.hosts[2].client("observer").await;
    let u0 = s.hosts[0].client("ursula").await;
    let online = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("online");
    assert_eq!(online["status"], "online", "{online}");
    let u1 = s.hosts[1].client("ursula").await;
    obs.expect_none_where("presence:changed", ms(500), of("ursula"))
        .await;
    u0.close().await;
    obs.expect_none_where("presence:changed", ms(500), of("ursula"))
        .await;
    u1.close().await;
    let offline = obs
        .next_event_where("presence:changed", ms(3000), of("ursula"))
        .await
        .expect("offline after the last socket");
    assert_eq!(offline["status"], "offline", "{offline}");

    // Sixteen rooms, one per shard (their names hash so), each with a kept message.
    let rooms: Vec<String> = (0..16).map(|i| format!("room-{i}")).collect();
    for room in &rooms {
        s.hosts[0]
            .create_room(room, RoomType::Channel, Visibility::Public, None)
            .await;
        let ack = a
            .emit_ack("room:join", json!({"roomName": room}), ms(5000))
            .await;
        assert_eq!(ack["success"], json!(true), "{ack}");
        let ack = a.send_message(room, "spread").await;
        assert_eq!(ack["success"], json!(true), "{ack}");
    }
    let keys = KeysBy::read(&c, &s.prefix).await;
    // Every key is in a shard's slot (`P:{tag}:…`: leases, presence, rooms) or carries no
    // tag (single-key state); the leases are renewed in all 16 shards, over every master.
    let shard_prefix = format!("{}:{{", s.prefix);
    for (_, k, _) in &keys.all {
        assert!(
            k.starts_with(&shard_prefix)
                || [":dedupe:", ":kv:", ":ip:"]
                    .iter()
                    .any(|p| k.starts_with(&format!("{}{p}", s.prefix))),
            "{k}"
        );
    }
    let leases: Vec<&(usize, String, i64)> = keys
        .all
        .iter()
        .filter(|(_, k, _)| k.starts_with(&shard_prefix) && k.ends_with("}:nodes"))
        .collect();
    assert_eq!(leases.len(), 16, "a lease set per shard: {leases:?}");
    let lease_masters: BTreeSet<usize> = leases.iter().map(|(m, _, _)| *m).collect();
    assert_eq!(lease_masters.len(), 3, "{leases:?}");
    // One user's presence keys live together: the status hash of each user sits in the slot
    // of the shard whose per-instance hash counts the user's sockets.
    for user in ["alice", "bob", "dora", "observer"] {
        let status = keys.ending(&format!(":user:{user}"));
        let counted: Vec<i64> = {
            let mut v = Vec::new();
            for (m, k, slot) in keys.all.iter().filter(|(_, k, _)| k.ends_with(":users")) {
                let has: i64 = redis::from_redis_value(
                    c.command(*m, &["HEXISTS", k, user]).await.expect("HEXISTS"),
                )
                .expect("0 or 1");
                if has == 1 {
                    v.push(*slot);
                }
            }
            v
        };
        assert!(!counted.is_empty(), "{user}'s sockets are counted");
        assert!(
            counted.iter().all(|s| *s == status.2),
            "{user}: status in slot {}, counts in {counted:?}",
            status.2
        );
    }
    // A room's keys share one slot; the rooms spread over every master.
    let mut masters = BTreeSet::new();
    for room in &rooms {
        let mine: Vec<&(usize, String, i64)> = keys
            .all
            .iter()
            .filter(|(_, k, _)| k.contains(&format!(":hist:{room}:")))
            .collect();
        assert_eq!(mine.len(), 2, "meta and log of {room}: {mine:?}");
        assert_eq!(mine[0].2, mine[1].2, "one slot for {room}: {mine:?}");
        masters.insert(mine[0].0);
    }
    assert_eq!(masters.len(), 3, "rooms on every master");
    // Broadcasts went over sharded channels on every master, each read by all 3 instances.
    for i in 0..3 {
        let chans = c
            .command(i, &["PUBSUB", "SHARDCHANNELS", &format!("{}:*", s.prefix)])
            .await
            .expect("PUBSUB SHARDCHANNELS");
        let chans: Vec<String> = redis::from_redis_value(chans).expect("names");
        let shards: Vec<&String> = chans
            .iter()
            .filter(|c| c.contains("-request#/#{"))
            .collect();
        assert!(
            !shards.is_empty(),
            "master {i} carries broadcast shards: {chans:?}"
        );
        let mut ask = vec!["PUBSUB", "SHARDNUMSUB"];
        ask.extend(shards.iter().map(|s| s.as_str()));
        let counts: Vec<redis::Value> =
            redis::from_redis_value(c.command(i, &ask).await.expect("SHARDNUMSUB")).expect("list");
        for pair in counts.chunks(2) {
            let n: i64 = redis::from_redis_value(pair[1].clone()).expect("count");
            assert_eq!(n, 3, "every instance reads {:?}", pair[0]);
        }
        let stats: String =
            redis::from_redis_value(c.command(i, &["INFO", "commandstats"]).await.expect("INFO"))
                .expect("text");
        assert!(
            stats.contains("cmdstat_spublish:calls="),
            "master {i} published room traffic: {stats}"
        );
        assert!(
            !stats.contains("cmdstat_publish:"),
            "no classic PUBLISH on master {i}: {stats}"
        );
    }

    // /health and /metrics report the cluster.
    let health = s.hosts[0].http_request("/health", &[]).await.json();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["redisCluster"]["state"], "ok", "{health}");
    assert_eq!(health["redisCluster"]["slotsOk"], 16384, "{health}");
    assert_eq!(health["redisCluster"]["masters"], 3, "{health}");
    let prom = s.hosts[0]
        .http_request("/metrics", &[("accept", "text/plain")])
        .await
        .body;
    assert!(prom.contains("realtime_redis_up 1"), "{prom}");
    assert!(
        prom.contains("realtime_redis_cluster_slots_ok 16384"),
        "{prom}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_of_a_users_presence_killed_and_restarted_mid_traffic() {
    let mut c = PrivateCluster::start(3).await;
    let s = Instances::start(&c, "rc-kill", 2, &[]).await;
    let mut a = s.hosts[0].joined("alice", "general").await;
    let mut a2 = s.hosts[0].joined("amy", "general").await;
    let mut b = s.hosts[1].joined("bob", "general").await;
    assert!(
        delivered(&mut a, &mut b, "before").await,
        "across instances"
    );

    // The master holding bob's presence: it comes back empty.
    let keys = KeysBy::read(&c, &s.prefix).await;
    let (owner, _, _) = keys.ending(":user:bob");
    c.kill(owner);
    s.wait_redis("down", ms(10_000)).await;
    // Local delivery goes on while the cluster is down.
    for i in 0..5 {
        let text = format!("local {i}");
        assert!(
            delivered(&mut a, &mut a2, &text).await,
            "{text} within instance 0"
        );
    }
    let health = s.hosts[0].http_request("/health", &[]).await.json();
    assert_eq!(health["status"], "degraded", "{health}");

    c.restart(owner).await;
    let back = Instant::now();
    s.wait_redis("ok", ms(15_000)).await;
    // Cross-instance delivery resumes (the first try may still race the resubscription).
    let mut ok = false;
    for i in 0..20 {
        if delivered(&mut a, &mut b, &format!("after {i}")).await {
            ok = true;
            break;
        }
    }
    assert!(ok, "cross-instance delivery after the master is back");
    println!(
        "cross-instance delivery back {:?} after the restart",
        back.elapsed()
    );
    // Presence was re-asserted into the empty master: bob's second socket does not announce
    // him again, and a newcomer is announced across instances.
    let mut obs = s.hosts[0].client("observer").await;
    let _n = s.hosts[1].client("nina").await;
    let seen = obs
        .next_event_where("presence:changed", ms(3000), of("nina"))
        .await
        .expect("nina online across instances");
    assert_eq!(seen["status"], "online", "{seen}");
    let _b2 = s.hosts[0].client("bob").await;
    obs.expect_none_where("presence:changed", ms(800), of("bob"))
        .await;
    s.stop().await;
}

/// `PUBLISH`/`SPUBLISH` calls of master `i` since it started.
async fn publish_calls(c: &PrivateCluster, i: usize) -> (u64, u64) {
    let stats: String =
        redis::from_redis_value(c.command(i, &["INFO", "commandstats"]).await.expect("INFO"))
            .expect("text");
    let calls = |name: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    (calls("publish"), calls("spublish"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_sharded_pubsub_falls_back_to_classic_pubsub() {
    // What a Redis 6 cluster answers: no SPUBLISH.
    let c = PrivateCluster::start_with(3, &["--rename-command", "SPUBLISH", ""]).await;
    let s = Instances::start(&c, "rc-classic", 2, &[("REALTIME_HISTORY_SIZE", "20")]).await;
    let mut a = s.hosts[0].joined("alice", "general").await;
    let mut b = s.hosts[1].joined("bob", "general").await;
    for i in 0..5 {
        let text = format!("classic {i}");
        assert!(
            delivered(&mut a, &mut b, &text).await,
            "{text} across instances"
        );
        assert!(delivered(&mut b, &mut a, &text).await, "{text} back");
    }
    // Room messages crossed through the history channel: numbered in one sequence.
    let ack = a.send_message("general", "numbered").await;
    let m = b
        .next_event_where("message:new", ms(3000), |m| m["content"] == "numbered")
        .await
        .expect("numbered message across instances");
    assert_eq!(m["offset"], 11, "{m}");
    assert_eq!(m["offset"], ack["data"]["offset"], "{m} {ack}");
    let published: u64 = {
        let mut n = 0;
        for i in 0..3 {
            let (classic, sharded) = publish_calls(&c, i).await;
            assert_eq!(sharded, 0, "no SPUBLISH on master {i}");
            n += classic;
        }
        n
    };
    assert!(
        published >= 10,
        "the broadcasts went by classic PUBLISH: {published}"
    );
    let health = s.hosts[0].http_request("/health", &[]).await.json();
    assert_eq!(health["status"], "healthy", "{health}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_on_a_redis_cluster_expires_once_whichever_instance_expires_it() {
    let c = PrivateCluster::start(3).await;
    let s = Instances::start(&c, "rc-typ", 3, &[("REALTIME_TYPING_TIMEOUT", "600")]).await;
    let mut readers: Vec<SioClient> = Vec::new();
    for (i, h) in s.hosts.iter().enumerate() {
        readers.push(h.joined(&format!("reader{i}"), "general").await);
    }
    let typist = s.hosts[0].joined("tina", "general").await;
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
    }
    // No stop: the entry expires after 600 ms; each reader gets exactly one empty update.
    for (i, r) in readers.iter_mut().enumerate() {
        let events = r.collect("typing:event", ms(2000)).await;
        assert_eq!(events.len(), 1, "reader{i}: one expiry update: {events:?}");
        assert_eq!(events[0]["users"], json!([]), "reader{i}: {events:?}");
    }
    s.stop().await;
}

#[test]
fn init_reports_the_cluster_and_both_variables_are_refused() {
    use nself_realtime_tests::process::{cli, run_cli};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = rt.block_on(PrivateCluster::start(3));
    let db = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/init.db", db.path().display());
    let seeds = c.seeds();
    let out = cli(
        &[("DATABASE_URL", &url), ("REALTIME_REDIS_CLUSTER", &seeds)],
        &["init", "--json"],
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["redis"], "ok", "{v}");
    let out = cli(
        &[("DATABASE_URL", &url), ("REALTIME_REDIS_CLUSTER", &seeds)],
        &["init"],
    );
    assert!(
        out.contains("3/3 seed nodes answer, state ok, 16384/16384 slots covered, 3 masters"),
        "{out}"
    );
    let both = run_cli(
        &[
            ("DATABASE_URL", &url),
            ("REALTIME_REDIS_CLUSTER", &seeds),
            ("REALTIME_REDIS_URL", "redis://127.0.0.1:6379"),
        ],
        &["init"],
    );
    assert!(!both.status.success(), "both set must stop the start");
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(
        err.contains("REALTIME_REDIS_URL") && err.contains("REALTIME_REDIS_CLUSTER"),
        "{err}"
    );
    drop(c);
    drop(rt);
}

/// A server process on the cluster, SIGKILLed when dropped.
struct Proc {
    child: std::process::Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_on_cluster(
    node: &str,
    seeds: &str,
    prefix: &str,
    db_url: &str,
    dir: &std::path::Path,
) -> Proc {
    use nself_realtime_tests::TEST_SECRET;
    let port = nself_realtime_tests::free_port().to_string();
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let child = nself_realtime_tests::process::spawn_server(
        &[
            ("DATABASE_URL", db_url),
            ("REALTIME_HOST", "127.0.0.1"),
            ("REALTIME_PORT", &port),
            ("REALTIME_JWT_SECRET", TEST_SECRET),
            ("REALTIME_RATE_LIMIT", "0"),
            ("REALTIME_NODE_LEASE_MS", "3000"),
            ("REALTIME_NODE_ID", node),
            ("REALTIME_REDIS_CLUSTER", seeds),
            ("REALTIME_REDIS_PREFIX", prefix),
            ("REALTIME_PLUGINS_DIR", plugins.to_str().expect("utf-8")),
            ("REALTIME_PLUGIN_CACHE_DIR", "off"),
            ("LOG_LEVEL", "warn"),
        ],
        dir,
    );
    let mut p = Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http
            .get(format!("{}/health", p.url))
            .timeout(ms(1000))
            .send()
            .await
            && let Ok(v) = r.json::<Value>().await
            && v["checks"]["redis"] == "ok"
        {
            return p;
        }
        assert!(
            p.child.try_wait().expect("try_wait").is_none(),
            "node {node} exited"
        );
        assert!(Instant::now() < deadline, "node {node} not ready in 30 s");
        tokio::time::sleep(ms(100)).await;
    }
}

async fn connect(p: &Proc, user: &str) -> SioClient {
    SioClient::connect(&p.url, Some(&nself_realtime_tests::user_token(user)))
        .await
        .unwrap_or_else(|e| panic!("{user} connecting to {}: {e}", p.url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_on_a_redis_cluster_is_cleaned_up_once() {
    let c = PrivateCluster::start(3).await;
    let prefix = unique_prefix("rc-crash");
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}/cluster.db", dir.path().display());
    let seeds = c.seeds();
    let a = spawn_on_cluster("crash-a", &seeds, &prefix, &db_url, dir.path()).await;
    let b = spawn_on_cluster("crash-b", &seeds, &prefix, &db_url, dir.path()).await;
    let mut k = spawn_on_cluster("crash-c", &seeds, &prefix, &db_url, dir.path()).await;

    let mut obs = connect(&b, "observer").await;
    let _multi_a = connect(&a, "multi").await;
    let _multi_k = connect(&k, "multi").await;
    let _solo = connect(&k, "solo").await;
    for user in ["multi", "solo"] {
        obs.next_event_where("presence:changed", ms(3000), move |v| {
            v["userId"] == user && v["status"] == "online"
        })
        .await
        .unwrap_or_else(|| panic!("{user} online"));
    }
    obs.clear_events();

    k.child.kill().expect("SIGKILL");
    let _ = k.child.wait();
    let killed = Instant::now();
    let off = obs
        .next_event_where("presence:changed", ms(6000), |v| {
            v["userId"] == "solo" && v["status"] == "offline"
        })
        .await
        .expect("solo offline within the lease and a reap");
    println!("solo offline {:?} after the kill: {off}", killed.elapsed());
    let more = obs.collect("presence:changed", ms(1500)).await;
    assert!(
        !more.iter().any(|v| v["userId"] == "solo"),
        "solo announced once: {more:?}"
    );
    assert!(
        !more.iter().any(|v| v["userId"] == "multi"),
        "multi keeps her socket on A: {more:?}"
    );
    // The survivors keep serving each other across instances.
    let mut on_a = connect(&a, "anna").await;
    let ack = on_a
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let ack = obs
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    assert!(
        delivered(&mut on_a, &mut obs, "after the crash").await,
        "A -> B after the kill"
    );
}

/// Moves `slot` from master `from` to master `to` as `redis-cli --cluster reshard` does: marks it
/// importing and migrating, `MIGRATE`s its keys, then gives it to `to` on every master.
async fn move_slot(c: &PrivateCluster, slot: i64, from: usize, to: usize) {
    let id = |i: usize| async move {
        redis::from_redis_value::<String>(c.command(i, &["CLUSTER", "MYID"]).await.expect("MYID"))
            .expect("an id")
    };
    let (from_id, to_id) = (id(from).await, id(to).await);
    let slot = slot.to_string();
    c.command(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id])
        .await
        .expect("IMPORTING");
    c.command(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id])
        .await
        .expect("MIGRATING");
    loop {
        let keys: Vec<String> = redis::from_redis_value(
            c.command(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])
                .await
                .expect("GETKEYSINSLOT"),
        )
        .expect("names");
        if keys.is_empty() {
            break;
        }
        let port = c.ports[to].to_string();
        let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        migrate.extend(keys.iter().map(String::as_str));
        c.command(from, &migrate).await.expect("MIGRATE");
        // Traffic goes on between the keys' moves.
        tokio::time::sleep(ms(50)).await;
    }
    for i in [to, from, 3 - to - from] {
        c.command(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])
            .await
            .expect("SETSLOT NODE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_slot_moved_to_another_master_mid_traffic_loses_nothing() {
    let c = PrivateCluster::start(3).await;
    let s = Instances::start(&c, "rc-move", 2, &[("REALTIME_HISTORY_SIZE", "1000")]).await;
    let mut a = s.hosts[0].joined("alice", "general").await;
    let mut b = s.hosts[1].joined("bob", "general").await;
    assert!(delivered(&mut a, &mut b, "m0").await, "across instances");
    let keys = KeysBy::read(&c, &s.prefix).await;
    let (from, meta, slot) = keys.ending(":hist:general:meta");
    let to = (from + 1) % 3;

    // Alice sends 150 messages, one after the other's ack, while the room's slot moves.
    const N: usize = 150;
    let sender = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 1..=N {
            acks.push(a.send_message("general", &format!("m{i}")).await);
            tokio::time::sleep(ms(10)).await;
        }
        (a, acks)
    });
    tokio::time::sleep(ms(300)).await;
    move_slot(&c, slot, from, to).await;
    let moved = Instant::now();
    assert_eq!(c.master_of(&meta).await, Some(to), "the slot moved");
    // Both instances' subscriptions to the room's shard channels followed the slot.
    let tag = &meta[meta.find('{').expect("tag")..=meta.find('}').expect("tag")];
    let shard_channels = [
        format!("{}:sio-request#/#{tag}", s.prefix),
        format!("{}:hist{tag}", s.prefix),
    ];
    for chan in &shard_channels {
        loop {
            let counts: Vec<redis::Value> = redis::from_redis_value(
                c.command(to, &["PUBSUB", "SHARDNUMSUB", chan])
                    .await
                    .expect("SHARDNUMSUB"),
            )
            .expect("list");
            let n: i64 = redis::from_redis_value(counts[1].clone()).expect("count");
            if n == 2 {
                break;
            }
            assert!(
                moved.elapsed() < Duration::from_secs(5),
                "{chan}: {n} subscribers on the new master"
            );
            tokio::time::sleep(ms(20)).await;
        }
    }
    println!(
        "subscriptions on the new master {:?} after the move",
        moved.elapsed()
    );
    let (_a, acks) = sender.await.expect("sender");
    let failed: Vec<&Value> = acks
        .iter()
        .filter(|a| a["success"] != json!(true))
        .collect();
    assert!(failed.is_empty(), "every message acknowledged: {failed:?}");
    // Bob (the other instance) gets all of them once, in order, numbered without a gap.
    let mut got = Vec::new();
    while got.len() < N {
        let Some(m) = b.next_event("message:new", ms(5000)).await else {
            break;
        };
        got.push(m);
    }
    let texts: Vec<String> = got
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect();
    let want: Vec<String> = (1..=N).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want, "every message once, in order");
    let offsets: Vec<u64> = got.iter().filter_map(|m| m["offset"].as_u64()).collect();
    let epochs: BTreeSet<&str> = got.iter().filter_map(|m| m["epoch"].as_str()).collect();
    assert_eq!(
        offsets,
        (2..=N as u64 + 1).collect::<Vec<_>>(),
        "offsets run on"
    );
    assert_eq!(
        epochs.len(),
        1,
        "one epoch: the history moved with its slot"
    );
    b.expect_none("message:new", ms(300)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_fails_over_to_its_replica_mid_traffic() {
    let mut c = PrivateCluster::start_replicated(3).await;
    let s = Instances::start(&c, "rc-failover", 2, &[("REALTIME_HISTORY_SIZE", "100")]).await;
    let mut a = s.hosts[0].joined("alice", "general").await;
    let mut a2 = s.hosts[0].joined("amy", "general").await;
    let mut b = s.hosts[1].joined("bob", "general").await;
    let mut obs = s.hosts[0].client("observer").await;
    for i in 0..3 {
        assert!(
            delivered(&mut a, &mut b, &format!("before {i}")).await,
            "across instances"
        );
    }
    let before = a.send_message("general", "last before").await;
    let (epoch, last) = (
        before["data"]["epoch"].as_str().expect("epoch").to_string(),
        before["data"]["offset"].as_u64().expect("offset"),
    );
    // Kill the master of the room's shard (its history) or, if that is the prefix's master,
    // of both; its replica has the keys.
    let keys = KeysBy::read(&c, &s.prefix).await;
    let (victim, meta, _) = keys.ending(":hist:general:meta");
    // Replication is asynchronous: a failover keeps what the replica has (what it has not
    // got yet is lost, as in any Redis failover). Wait until it has everything.
    let synced = Instant::now();
    loop {
        let info: String = redis::from_redis_value(
            c.command(victim, &["INFO", "replication"])
                .await
                .expect("INFO"),
        )
        .expect("text");
        let field = |prefix: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::trim)
                .map(str::to_string)
        };
        let master = field("master_repl_offset:");
        let replica = field("slave0:").and_then(|l| {
            l.split(',')
                .find_map(|kv| kv.strip_prefix("offset="))
                .map(str::to_string)
        });
        if master.is_some() && master == replica {
            break;
        }
        assert!(
            synced.elapsed() < Duration::from_secs(10),
            "the replica never caught up: {info}"
        );
        tokio::time::sleep(ms(100)).await;
    }
    c.kill(victim);
    let killed = Instant::now();
    // Local delivery goes on while the slot has no master.
    for i in 0..3 {
        let text = format!("during {i}");
        assert!(
            delivered(&mut a, &mut a2, &text).await,
            "{text} within instance 0"
        );
    }
    // The replica takes over (node timeout 2 s), the instances come back to `ok`.
    loop {
        if c.master_of(&meta).await.is_some_and(|m| m != victim) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no replica took over the slot"
        );
        tokio::time::sleep(ms(100)).await;
    }
    c.wait_ok().await;
    s.wait_redis("ok", ms(20_000)).await;
    let mut after = None;
    for i in 0..20 {
        let text = format!("after {i}");
        let ack = a.send_message("general", &text).await;
        if ack["success"] == json!(true)
            && let Some(m) = b
                .next_event_where("message:new", ms(2000), |m| m["content"] == text)
                .await
        {
            after = Some(m);
            break;
        }
    }
    let after = after.expect("cross-instance delivery after the failover");
    println!(
        "cross-instance delivery back {:?} after the master was killed",
        killed.elapsed()
    );
    // The history survived on the replica: the same epoch, numbering on.
    assert_eq!(after["epoch"], epoch.as_str(), "{after}");
    assert!(
        after["offset"].as_u64() > Some(last),
        "{after} after {last}"
    );
    // Presence survived too: bob's second socket does not announce him again; a newcomer is
    // announced across instances.
    let _b2 = s.hosts[0].client("bob").await;
    obs.expect_none_where("presence:changed", ms(800), of("bob"))
        .await;
    let _n = s.hosts[1].client("nina").await;
    let seen = obs
        .next_event_where("presence:changed", ms(3000), of("nina"))
        .await
        .expect("nina online across instances");
    assert_eq!(seen["status"], "online", "{seen}");
    s.stop().await;
}
