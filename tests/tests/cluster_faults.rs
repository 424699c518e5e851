//! Issue 5 / SPEC §9-§10 failure behaviour of a scaled-out cluster, on a PRIVATE `redis-server`
//! that the tests break (the shared one is never touched):
//! - the pub/sub connections killed (`CLIENT KILL TYPE pubsub`);
//! - Redis shut down (`SHUTDOWN NOSAVE`, every key lost) and restarted on the same port;
//! - Redis paused (`CLIENT PAUSE 3000 ALL`, and `WRITE`);
//! - one of three server processes killed with SIGKILL.
//!
//! Each time: local delivery goes on, nothing panics, cross-instance delivery resumes within
//! 5 s of the recovery, `/health` says what happened, and the presence of users connected
//! through the fault stays right.
//! Recovery times are printed (`--no-capture` to see them).

use std::process::Child;
use std::time::{Duration, Instant};

use nself_realtime_tests::process::spawn_server;
use nself_realtime_tests::redis::PrivateRedis;
use nself_realtime_tests::{SioClient, TEST_SECRET, TestHost, ms, user_token};
use serde_json::{Value, json};

/// Cross-instance delivery must be back within this long after Redis is.
const RESUME_WITHIN: Duration = Duration::from_secs(5);

/// `n` in-process instances on one private Redis and one SQLite file.
struct Cluster {
    hosts: Vec<TestHost>,
    redis: PrivateRedis,
    _db: tempfile::TempDir,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        let redis = PrivateRedis::start().await;
        let url = redis.url();
        let db = tempfile::tempdir().expect("temp dir");
        let db_url = format!("sqlite://{}/cluster.db", db.path().display());
        let mut hosts = Vec::new();
        for i in 0..n {
            let node = format!("fault-{i}");
            hosts.push(
                TestHost::start(&[
                    ("REALTIME_REDIS_URL", &url),
                    ("REALTIME_REDIS_PREFIX", "faults"),
                    ("REALTIME_NODE_ID", &node),
                    ("DATABASE_URL", &db_url),
                ])
                .await,
            );
        }
        let c = Cluster {
            hosts,
            redis,
            _db: db,
        };
        for h in &c.hosts {
            wait_health(h, "healthy", "ok", ms(10_000)).await;
        }
        c
    }

    /// Every instance must still be live and stop cleanly (`server::run` neither panicked nor
    /// failed).
    async fn stop(mut self) {
        for (i, h) in self.hosts.iter_mut().enumerate() {
            let live = h.http_request("/health/live", &[]).await;
            assert_eq!(live.status, 200, "instance {i} live: {}", live.body);
            h.shutdown()
                .await
                .unwrap_or_else(|e| panic!("instance {i} did not stop cleanly: {e:#}"));
        }
    }
}

/// `/health` → (status, checks.redis).
async fn health(h: &TestHost) -> (String, String) {
    let v = h.http_request("/health", &[]).await.json();
    (
        v["status"].as_str().unwrap_or_default().to_string(),
        v["checks"]["redis"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Polls `/health` until it says `status` with `checks.redis == redis`; the time it took.
async fn wait_health(h: &TestHost, status: &str, redis: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let got = health(h).await;
        if got.0 == status && got.1 == redis {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "/health of {} stayed {got:?}, expected ({status:?}, {redis:?}) within {within:?}",
            h.addr
        );
        tokio::time::sleep(ms(50)).await;
    }
}

/// One sample of a Prometheus text exposition (0 when absent).
fn sample(prom: &str, name: &str) -> f64 {
    prom.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

async fn metric(h: &TestHost, name: &str) -> f64 {
    let prom = h
        .http_request("/metrics", &[("accept", "text/plain")])
        .await
        .body;
    sample(&prom, name)
}

const DROPPED_OUT: &str = "realtime_redis_messages_dropped_total{direction=\"out\"} ";
const RECONNECTS: &str = "realtime_redis_reconnects_total ";

fn content_starts(prefix: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| v["content"].as_str().is_some_and(|c| c.starts_with(prefix))
}

fn presence_of(user: &'static str, status: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["userId"] == user && v["status"] == status
}

/// Sends `<prefix><i>` from `from` to "general" about every 200 ms (each ack must be a
/// success) until `to` receives one of them; (time it took, messages sent), or None when
/// nothing crossed within `limit`.
async fn until_crosses(
    from: &mut SioClient,
    to: &mut SioClient,
    prefix: &str,
    limit: Duration,
) -> Option<(Duration, usize)> {
    let t0 = Instant::now();
    let mut sent = 0;
    while t0.elapsed() < limit {
        let ack = from
            .send_message("general", &format!("{prefix}{sent}"))
            .await;
        assert_eq!(ack["success"], json!(true), "probe {prefix}{sent}: {ack}");
        sent += 1;
        if to
            .next_event_where("message:new", ms(200), content_starts(prefix))
            .await
            .is_some()
        {
            return Some((t0.elapsed(), sent));
        }
    }
    None
}

/// The clients on the private Redis by `CLIENT LIST` type: (normal, pubsub).
async fn redis_clients(redis: &PrivateRedis) -> (usize, usize, String) {
    let list = match redis.command(&["CLIENT", "LIST"]).await {
        Ok(v) => redis::from_redis_value::<String>(v).expect("CLIENT LIST is text"),
        Err(e) => panic!("CLIENT LIST: {e}"),
    };
    // Our own connection for CLIENT LIST is one of the normal ones.
    let normal = list.lines().filter(|l| l.contains(" flags=N ")).count();
    let pubsub = list.lines().filter(|l| l.contains(" flags=P ")).count();
    (normal, pubsub, list)
}

/// No reconnect loop piles up connections: each instance holds its command connection and its
/// subscriber connection, nothing more (a generous bound of 4 per instance, plus ours).
async fn assert_no_connection_leak(redis: &PrivateRedis, instances: usize) {
    let (normal, pubsub, list) = redis_clients(redis).await;
    eprintln!("redis clients: {normal} normal (ours included), {pubsub} pub/sub");
    assert_eq!(
        pubsub, instances,
        "one subscriber connection per instance:\n{list}"
    );
    assert!(
        normal + pubsub <= 4 * instances + 1,
        "too many connections for {instances} instances:\n{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connection_killed() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let mut alice = a.joined("alice", "general").await;
    let mut amy = a.joined("amy", "general").await;
    let mut bob = b.joined("bob", "general").await;
    until_crosses(&mut alice, &mut bob, "warm-", ms(10_000))
        .await
        .expect("cross-instance delivery works before the fault");
    let reconnects_before = [metric(a, RECONNECTS).await, metric(b, RECONNECTS).await];
    for cl in [&mut alice, &mut amy, &mut bob] {
        cl.clear_events();
    }

    let killed = c
        .redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .await
        .expect("CLIENT KILL");
    let killed_at = Instant::now();
    assert_eq!(
        killed,
        redis::Value::Int(2),
        "one subscriber connection per instance killed"
    );

    // A -> B and B -> A: both instances lost their subscriber connection.
    let (ab, sent_ab) = until_crosses(&mut alice, &mut bob, "ab-", RESUME_WITHIN)
        .await
        .expect("A -> B delivery resumes within 5 s of the kill");
    let (_, sent_ba) = until_crosses(&mut bob, &mut alice, "ba-", RESUME_WITHIN)
        .await
        .expect("B -> A delivery resumes within 5 s of the kill");
    let ba = killed_at.elapsed();
    eprintln!(
        "pubsub killed: A->B resumed {ab:?} after the kill ({sent_ab} probes), \
         B->A by {ba:?} ({sent_ba} probes)"
    );
    assert!(
        ba < RESUME_WITHIN,
        "both directions back within 5 s: {ba:?}"
    );

    // Local delivery went on throughout: amy (alice's instance) got every probe alice sent,
    // including those sent while the subscriber connections were down.
    let local = amy.collect("message:new", ms(1000)).await;
    let local_ab = local.iter().filter(|m| content_starts("ab-")(m)).count();
    assert_eq!(
        local_ab, sent_ab,
        "same-instance delivery lost nothing: {local:?}"
    );

    for (i, h) in c.hosts.iter().enumerate() {
        let took = wait_health(h, "healthy", "ok", ms(10_000)).await;
        eprintln!("instance {i}: /health ok again {took:?} later");
        let now = metric(h, RECONNECTS).await;
        assert!(
            now > reconnects_before[i],
            "instance {i} counted its pub/sub reconnection ({} -> {now})",
            reconnects_before[i]
        );
    }
    // Again and again: each reconnection replaces the lost connection, none piles up.
    for round in 1..=3 {
        c.redis
            .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .await
            .expect("CLIENT KILL");
        let t0 = Instant::now();
        let prefix = format!("again-{round}-");
        until_crosses(&mut alice, &mut bob, &prefix, RESUME_WITHIN)
            .await
            .unwrap_or_else(|| panic!("delivery resumes after kill #{}", round + 1));
        eprintln!(
            "pubsub killed again (#{}): A->B back in {:?}",
            round + 1,
            t0.elapsed()
        );
    }
    for h in &c.hosts {
        wait_health(h, "healthy", "ok", ms(10_000)).await;
    }
    assert_no_connection_leak(&c.redis, 2).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_shutdown_and_restart() {
    let mut c = Cluster::start(3).await;
    let mut obs = c.hosts[2].joined("observer", "general").await;
    let mut alice = c.hosts[0].joined("alice", "general").await;
    let mut amy = c.hosts[0].joined("amy", "general").await;
    let mut bob = c.hosts[1].joined("bob", "general").await;
    // Connected on A before the outage and through it.
    let ursula = c.hosts[0].client("ursula").await;
    obs.next_event_where(
        "presence:changed",
        ms(3000),
        presence_of("ursula", "online"),
    )
    .await
    .expect("ursula online before the outage");
    obs.clear_events();
    until_crosses(&mut alice, &mut bob, "warm-", ms(10_000))
        .await
        .expect("cross-instance delivery works before the fault");
    let dropped_before = metric(&c.hosts[0], DROPPED_OUT).await;

    c.redis.shutdown().await;
    let down_at = Instant::now();
    for (i, h) in c.hosts.iter().enumerate() {
        wait_health(h, "degraded", "down", ms(5000)).await;
        eprintln!(
            "instance {i}: /health degraded {:?} after SHUTDOWN",
            down_at.elapsed()
        );
    }

    // During the outage: each instance serves its own clients.
    for cl in [&mut alice, &mut amy, &mut bob] {
        cl.clear_events();
    }
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let t = Instant::now();
        let ack = alice
            .emit_ack(
                "message:send",
                json!({"roomName": "general", "content": format!("outage-{i}")}),
                ms(1500),
            )
            .await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(ack["success"], json!(true), "send during the outage: {ack}");
        let got = amy
            .next_event_where(
                "message:new",
                ms(2000),
                content_starts(&format!("outage-{i}")),
            )
            .await;
        assert!(got.is_some(), "amy (same instance) gets outage-{i}");
    }
    eprintln!("redis down: slowest ack {slowest:?}");
    // What could not be published is counted (each of the 5 messages is one broadcast).
    let deadline = Instant::now() + ms(3000);
    let dropped = loop {
        let d = metric(&c.hosts[0], DROPPED_OUT).await - dropped_before;
        if d >= 5.0 || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(ms(50)).await;
    };
    assert!(
        dropped >= 5.0,
        "the 5 unpublished messages are counted: +{dropped}"
    );

    c.redis.restart().await;
    let up_at = Instant::now();
    let (ab, sent) = until_crosses(&mut alice, &mut bob, "after-", RESUME_WITHIN)
        .await
        .expect("A -> B delivery resumes within 5 s of the restart");
    eprintln!("redis restarted: A->B resumed {ab:?} after the restart ({sent} probes)");
    for (i, h) in c.hosts.iter().enumerate() {
        let took = wait_health(h, "healthy", "ok", ms(10_000)).await;
        eprintln!(
            "instance {i}: /health ok {:?} after the restart (+{took:?} of polling)",
            up_at.elapsed()
        );
    }
    // Messages of the outage were lost (not replayed later).
    let late = bob.collect("message:new", ms(500)).await;
    assert!(
        !late.iter().any(|m| content_starts("outage-")(m)),
        "a message of the outage reached another instance: {late:?}"
    );

    // Each instance has re-asserted its sockets (health ok says so). Flush what A and B may
    // still announce about it: pub/sub keeps one publisher's order, so once a message from A
    // and one from B reach the observer, every earlier broadcast of theirs has too.
    until_crosses(&mut alice, &mut obs, "flush-a-", RESUME_WITHIN)
        .await
        .expect("A -> observer");
    until_crosses(&mut bob, &mut obs, "flush-b-", RESUME_WITHIN)
        .await
        .expect("B -> observer");
    let announced = obs.collect("presence:changed", Duration::ZERO).await;
    eprintln!("presence announced at recovery: {announced:?}");
    assert!(
        !announced.iter().any(|v| v["status"] == "offline"),
        "nobody left, nobody is offline: {announced:?}"
    );

    // ursula is still counted on A: a second socket on B is not a new "online"...
    let mut ursula2 = c.hosts[1].joined("ursula", "general").await;
    // ... B handled the connect (and would have queued its announcement) before this join's
    // ack; the message below is queued after it, so it reaches the observer after it.
    let ack = ursula2.send_message("general", "barrier-u").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    obs.next_event_where("message:new", ms(3000), content_starts("barrier-u"))
        .await
        .expect("barrier from B");
    obs.expect_none_where(
        "presence:changed",
        Duration::ZERO,
        presence_of("ursula", "online"),
    )
    .await;

    // ... and she goes offline once, when her last socket anywhere closes.
    ursula.close().await;
    // The first close must not announce: give it the time the second one takes to arrive.
    obs.expect_none_where(
        "presence:changed",
        ms(1000),
        presence_of("ursula", "offline"),
    )
    .await;
    ursula2.close().await;
    obs.next_event_where(
        "presence:changed",
        ms(3000),
        presence_of("ursula", "offline"),
    )
    .await
    .expect("ursula offline after her last socket");
    // Both instances' scripts saw the close; only one may announce it (a duplicate would
    // follow within the same few hundred milliseconds).
    obs.expect_none_where("presence:changed", ms(1000), |v: &Value| {
        v["userId"] == "ursula"
    })
    .await;

    assert_no_connection_leak(&c.redis, 3).await;
    c.stop().await;
}

/// Presence that changed while Redis was gone (and lost its data) reaches the other
/// instances' clients once it is back: a user whose last socket closed during the outage is
/// announced offline, one who came during it online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changed_during_an_outage_is_announced_after_it() {
    let mut c = Cluster::start(2).await;
    let mut obs = c.hosts[1].client("observer").await;
    let eve = c.hosts[0].client("eve").await;
    obs.next_event_where("presence:changed", ms(3000), presence_of("eve", "online"))
        .await
        .expect("eve online before the outage");

    c.redis.shutdown().await;
    for h in &c.hosts {
        wait_health(h, "degraded", "down", ms(5000)).await;
    }
    eve.close().await;
    let _fred = c.hosts[0].client("fred").await;
    // Neither change can reach instance 1 now.
    obs.expect_none_where("presence:changed", ms(500), |v: &Value| {
        v["userId"] == "eve" || v["userId"] == "fred"
    })
    .await;

    c.redis.restart().await;
    let up_at = Instant::now();
    let offline = obs
        .next_event_where(
            "presence:changed",
            ms(10_000),
            presence_of("eve", "offline"),
        )
        .await
        .expect("eve announced offline to instance 1 after the outage");
    eprintln!(
        "eve offline announced {:?} after the restart",
        up_at.elapsed()
    );
    assert_eq!(offline["customStatus"], Value::Null, "{offline}");
    let online = obs
        .next_event_where(
            "presence:changed",
            ms(10_000),
            presence_of("fred", "online"),
        )
        .await
        .expect("fred announced online to instance 1 after the outage");
    eprintln!(
        "fred online announced {:?} after the restart",
        up_at.elapsed()
    );
    assert_eq!(online["status"], "online", "{online}");
    // Once each.
    obs.expect_none_where("presence:changed", ms(1000), |v: &Value| {
        v["userId"] == "eve" || (v["userId"] == "fred" && v["status"] == "online")
    })
    .await;
    c.stop().await;
}

/// Redis is down when the instances start: they start anyway (serving their own clients,
/// health degraded), and form the cluster by themselves once Redis comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_start_while_redis_is_down() {
    let mut redis = PrivateRedis::start().await;
    redis.shutdown().await;
    let url = redis.url();
    let db = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}/cluster.db", db.path().display());
    let mut hosts = Vec::new();
    for i in 0..2 {
        let node = format!("cold-{i}");
        hosts.push(
            TestHost::start(&[
                ("REALTIME_REDIS_URL", &url),
                ("REALTIME_REDIS_PREFIX", "cold"),
                ("REALTIME_NODE_ID", &node),
                ("DATABASE_URL", &db_url),
            ])
            .await,
        );
    }
    for h in &hosts {
        wait_health(h, "degraded", "down", ms(5000)).await;
    }
    // Local service works without Redis.
    let mut a1 = hosts[0].joined("alice", "general").await;
    let mut a2 = hosts[0].joined("amy", "general").await;
    let mut b = hosts[1].joined("bob", "general").await;
    let ack = a1.send_message("general", "local-only").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    a2.next_event_where("message:new", ms(3000), content_starts("local-only"))
        .await
        .expect("same-instance delivery without Redis");

    redis.restart().await;
    let up_at = Instant::now();
    for h in &hosts {
        wait_health(h, "healthy", "ok", ms(10_000)).await;
    }
    let (took, probes) = until_crosses(&mut a1, &mut b, "joined-", RESUME_WITHIN)
        .await
        .expect("cross-instance delivery once Redis is up");
    eprintln!(
        "redis up {:?} after the restart: A->B after {took:?} ({probes} probes)",
        up_at.elapsed()
    );
    Cluster {
        hosts,
        redis,
        _db: db,
    }
    .stop()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused() {
    paused("ALL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_write_paused() {
    paused("WRITE").await;
}

/// `CLIENT PAUSE 3000 <mode>`: ALL blocks every command; WRITE blocks the scripts and
/// `PUBLISH` while `PING` and the other reads still answer.
async fn paused(mode: &str) {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let mut alice = a.joined("alice", "general").await;
    let mut amy = a.joined("amy", "general").await;
    let mut bob = b.joined("bob", "general").await;
    until_crosses(&mut alice, &mut bob, "warm-", ms(10_000))
        .await
        .expect("cross-instance delivery works before the fault");
    for cl in [&mut alice, &mut amy, &mut bob] {
        cl.clear_events();
    }

    let ok = c
        .redis
        .command(&["CLIENT", "PAUSE", "3000", mode])
        .await
        .expect("CLIENT PAUSE");
    let paused_at = Instant::now();
    assert_eq!(ok, redis::Value::Okay);

    // During the pause the scripts block (under ALL every command): the event path must not.
    // The clientMessageId makes each send claim it in Redis by a script (a bounded wait, then
    // the local de-duplication).
    let mut slowest = Duration::ZERO;
    let mut sent = 0;
    while paused_at.elapsed() < ms(2500) {
        let t = Instant::now();
        let ack = alice
            .emit_ack(
                "message:send",
                json!({
                    "roomName": "general",
                    "content": format!("paused-{sent}"),
                    "clientMessageId": format!("p-{sent}"),
                }),
                ms(1500),
            )
            .await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(ack["success"], json!(true), "send during the pause: {ack}");
        amy.next_event_where(
            "message:new",
            ms(1500),
            content_starts(&format!("paused-{sent}")),
        )
        .await
        .unwrap_or_else(|| panic!("amy (same instance) gets paused-{sent}"));
        sent += 1;
        tokio::time::sleep(ms(200)).await;
    }
    eprintln!("redis paused ({mode}): {sent} sends, slowest ack {slowest:?}");
    assert!(sent >= 2, "several sends during the pause ({sent})");

    // The pause ends 3 s after it began (known in advance: waiting for it asserts nothing).
    // Then Redis answers a new connection like ours (its handshake waits under ALL).
    let resumed_at = paused_at + ms(3000);
    tokio::time::sleep_until(resumed_at.into()).await;
    let deadline = paused_at + ms(10_000);
    while c.redis.command(&["PING"]).await.is_err() {
        assert!(Instant::now() < deadline, "redis still paused after 10 s");
        tokio::time::sleep(ms(50)).await;
    }
    let (_, n) = until_crosses(&mut alice, &mut bob, "after-", RESUME_WITHIN)
        .await
        .expect("A -> B delivery resumes within 5 s of the pause's end");
    let ab = resumed_at.elapsed();
    let (_, m) = until_crosses(&mut bob, &mut alice, "back-", RESUME_WITHIN)
        .await
        .expect("B -> A delivery resumes within 5 s of the pause's end");
    let ba = resumed_at.elapsed();
    eprintln!(
        "redis pause ({mode}) over: A->B resumed {ab:?} after its end ({n} probes), \
         B->A by {ba:?} ({m} probes)"
    );
    assert!(
        ba < RESUME_WITHIN,
        "both directions back within 5 s: {ba:?}"
    );
    // A PUBLISH that timed out during the pause is counted as dropped, yet Redis runs it when
    // the pause ends: it may arrive late, but never twice.
    let late = bob.collect("message:new", ms(500)).await;
    for i in 0..sent {
        let copies = late
            .iter()
            .filter(|m| m["content"] == format!("paused-{i}"))
            .count();
        assert!(copies <= 1, "paused-{i} delivered {copies} times to B");
    }
    let late = late.iter().filter(|m| content_starts("paused-")(m)).count();
    eprintln!("redis pause: {late} of the {sent} messages sent during it reached B afterwards");
    for (i, h) in c.hosts.iter().enumerate() {
        wait_health(h, "healthy", "ok", ms(10_000)).await;
        eprintln!(
            "instance {i}: /health ok {:?} after the pause",
            resumed_at.elapsed()
        );
    }
    assert_no_connection_leak(&c.redis, 2).await;
    c.stop().await;
}

/// A server process, SIGKILLed when dropped.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_node(
    node: &str,
    redis_url: &str,
    db_url: &str,
    lease: &str,
    dir: &std::path::Path,
    http: &reqwest::Client,
    extra: &[(&str, &str)],
) -> Proc {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let mut vars: Vec<(&str, &str)> = extra.to_vec();
    let child = spawn_server(
        &{
            vars.extend_from_slice(&[
                ("DATABASE_URL", db_url),
                ("REALTIME_HOST", "127.0.0.1"),
                ("REALTIME_PORT", &port),
                ("REALTIME_JWT_SECRET", TEST_SECRET),
                ("REALTIME_RATE_LIMIT", "0"),
                ("REALTIME_NODE_LEASE_MS", lease),
                ("REALTIME_NODE_ID", node),
                ("REALTIME_REDIS_URL", redis_url),
                ("REALTIME_REDIS_PREFIX", "faults"),
                (
                    "REALTIME_PLUGINS_DIR",
                    plugins.to_str().expect("utf-8 path"),
                ),
                ("REALTIME_PLUGIN_CACHE_DIR", "off"),
                ("LOG_LEVEL", "warn"),
            ]);
            vars
        },
        dir,
    );
    let mut p = Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = http
            .get(format!("{}/health", p.url))
            .timeout(ms(1000))
            .send()
            .await;
        if let Ok(r) = health
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
    SioClient::connect(&p.url, Some(&user_token(user)))
        .await
        .unwrap_or_else(|e| panic!("{user} connecting to {}: {e}", p.url))
}

async fn join(c: &mut SioClient) {
    let ack = c
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_one_of_three() {
    const LEASE_MS: u64 = 3000;
    let redis = PrivateRedis::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}/cluster.db", dir.path().display());
    let lease = LEASE_MS.to_string();
    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    // One at a time: the first one creates the database.
    let node_a = spawn_node(
        "kill-a",
        &redis.url(),
        &db_url,
        &lease,
        dir.path(),
        &http,
        &[],
    )
    .await;
    let node_b = spawn_node(
        "kill-b",
        &redis.url(),
        &db_url,
        &lease,
        dir.path(),
        &http,
        &[],
    )
    .await;
    let mut node_c = spawn_node(
        "kill-c",
        &redis.url(),
        &db_url,
        &lease,
        dir.path(),
        &http,
        &[],
    )
    .await;

    let mut obs = connect(&node_b, "observer").await;
    join(&mut obs).await;
    let mut on_a = connect(&node_a, "anna").await;
    join(&mut on_a).await;
    let _multi_a = connect(&node_a, "multi").await;
    let _multi_c = connect(&node_c, "multi").await;
    let _solo = connect(&node_c, "solo").await;
    for user in ["multi", "solo"] {
        obs.next_event_where("presence:changed", ms(3000), move |v| {
            v["userId"] == user && v["status"] == "online"
        })
        .await
        .unwrap_or_else(|| panic!("{user} online"));
    }
    obs.clear_events();

    node_c.child.kill().expect("SIGKILL node C");
    let _ = node_c.child.wait();
    let killed = Instant::now();
    let limit = ms(LEASE_MS + 3000);
    obs.next_event_where("presence:changed", limit, presence_of("solo", "offline"))
        .await
        .unwrap_or_else(|| panic!("solo offline within {limit:?} of the kill"));
    let took = killed.elapsed();
    eprintln!("SIGKILL: solo offline {took:?} after the kill (lease {LEASE_MS} ms)");
    // Both survivors run the reaper every lease/6 (500 ms); a second announcement would come
    // from the other one within a few of those ticks.
    let more = obs.collect("presence:changed", ms(1500)).await;
    assert!(
        !more.iter().any(|v| v["userId"] == "solo"),
        "solo announced once: {more:?}"
    );
    assert!(
        !more.iter().any(|v| v["userId"] == "multi"),
        "multi keeps her socket on A: {more:?}"
    );

    // The survivors keep serving each other.
    let (t, _) = until_crosses(&mut on_a, &mut obs, "survivors-", RESUME_WITHIN)
        .await
        .expect("A -> B after the kill");
    eprintln!("SIGKILL: A->B message in {t:?}");
    let (t, _) = until_crosses(&mut obs, &mut on_a, "survivors-back-", RESUME_WITHIN)
        .await
        .expect("B -> A after the kill");
    eprintln!("SIGKILL: B->A message in {t:?}");

    // C's clients reconnect to a survivor: solo comes back online, once; multi was never off.
    obs.clear_events();
    let mut solo = connect(&node_a, "solo").await;
    join(&mut solo).await;
    let mut multi = connect(&node_a, "multi").await;
    join(&mut multi).await;
    let ack = solo.send_message("general", "solo is back").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    obs.next_event_where("message:new", ms(3000), content_starts("solo is back"))
        .await
        .expect("a reconnected client reaches the other survivor");
    // Both connects were handled (joins acked) before that message was queued on A.
    let seen = obs.collect("presence:changed", Duration::ZERO).await;
    let solo_online = seen
        .iter()
        .filter(|v| v["userId"] == "solo" && v["status"] == "online")
        .count();
    assert_eq!(solo_online, 1, "solo online once: {seen:?}");
    assert!(
        !seen.iter().any(|v| v["userId"] == "multi"),
        "multi never changed: {seen:?}"
    );
    for (name, p) in [("A", &node_a), ("B", &node_b)] {
        let live = http
            .get(format!("{}/health/live", p.url))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(live.ok(), Some(200), "node {name} live");
    }
    drop(redis);
}

/// With `REALTIME_PRESENCE_SCOPE=rooms`, the crash cleanup tells the rooms the dead instance's
/// users were in (the reaping instance has no socket of theirs to ask).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_presence_scope_rooms() {
    const LEASE_MS: u64 = 2000;
    let redis = PrivateRedis::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}/cluster.db", dir.path().display());
    let lease = LEASE_MS.to_string();
    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    let scope = [("REALTIME_PRESENCE_SCOPE", "rooms")];
    let node_a = spawn_node(
        "room-a",
        &redis.url(),
        &db_url,
        &lease,
        dir.path(),
        &http,
        &scope,
    )
    .await;
    let mut node_b = spawn_node(
        "room-b",
        &redis.url(),
        &db_url,
        &lease,
        dir.path(),
        &http,
        &scope,
    )
    .await;
    let mut obs = connect(&node_a, "observer").await;
    join(&mut obs).await;
    let mut roomy = connect(&node_b, "roomy").await;
    join(&mut roomy).await;
    obs.next_event_where("user:joined", ms(3000), |v: &Value| v["userId"] == "roomy")
        .await
        .expect("roomy joined, seen across instances");
    obs.clear_events();

    node_b.child.kill().expect("SIGKILL node B");
    let _ = node_b.child.wait();
    let killed = Instant::now();
    let limit = ms(LEASE_MS + 3000);
    obs.next_event_where("presence:changed", limit, presence_of("roomy", "offline"))
        .await
        .unwrap_or_else(|| panic!("roomy offline (scope rooms) within {limit:?} of the kill"));
    eprintln!(
        "SIGKILL, scope rooms: roomy offline {:?} after the kill",
        killed.elapsed()
    );
    // The crash cleanup says the user left the room too (the dead instance could not).
    let left = obs
        .collect("user:left", ms(0))
        .await
        .into_iter()
        .chain(
            obs.next_event_where("user:left", ms(2000), |v: &Value| v["userId"] == "roomy")
                .await,
        )
        .find(|v| v["userId"] == "roomy")
        .unwrap_or_else(|| panic!("user:left for roomy after the kill"));
    assert_eq!(left, json!({"roomName": "general", "userId": "roomy"}));
}
