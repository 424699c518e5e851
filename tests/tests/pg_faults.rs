//! SPEC §9 failure behaviour on PostgreSQL: the database stopped for 10 seconds under traffic
//! (a private server started by the test), and a node killed with SIGKILL while its users are
//! online (its users go offline within the lease time, via another node).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nself_realtime_tests::pg::{FreshDb, PrivatePg, wait_count};
use nself_realtime_tests::process::spawn_server;
use nself_realtime_tests::{
    RoomType, SioClient, TEST_SECRET, TestHost, Visibility, ack_ok, ms, user_token,
};
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

async fn health_status(host: &TestHost) -> String {
    let (_, body) = host.http_get("/health").await;
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["status"].as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn wait_health(host: &TestHost, want: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let got = health_status(host).await;
        if got == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "/health stayed {got:?}, expected {want:?} within {within:?}"
        );
        tokio::time::sleep(ms(100)).await;
    }
}

fn send_with_id<'a>(
    c: &'a mut SioClient,
    room: &'a str,
    id: &'a str,
) -> impl std::future::Future<Output = Value> + 'a {
    c.emit_ack(
        "message:send",
        json!({"roomName": room, "content": format!("body of {id}"), "clientMessageId": id}),
        ms(5000),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_keeps_serving_and_loses_no_audit_row() {
    let pg = tokio::task::spawn_blocking(PrivatePg::start).await.unwrap();
    let url = pg.url();
    let host = TestHost::start(&[
        ("DATABASE_URL", &url),
        ("REALTIME_LOG_EVENT_TYPES", "*"),
        ("REALTIME_NODE_LEASE_MS", "3000"),
    ])
    .await;
    host.create_room("ops", RoomType::Channel, Visibility::Public, None)
        .await;
    let mut alice = host.joined("alice", "ops").await;
    let mut bob = host.joined("bob", "ops").await;
    assert_eq!(health_status(&host).await, "healthy");

    let mut sent: Vec<String> = Vec::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        ack_ok(&send_with_id(&mut alice, "ops", &id).await);
        sent.push(id);
    }

    // Stop the database as a crash would (connections cut, no clean goodbye).
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop("immediate");
        pg
    })
    .await
    .unwrap();
    let outage = Instant::now();
    let mut degraded_seen = false;
    let mut i = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        let id = format!("during-{i}");
        i += 1;
        let ack = send_with_id(&mut alice, "ops", &id).await;
        assert_eq!(ack["success"], json!(true), "ack during the outage: {ack}");
        sent.push(id);
        if i % 10 == 0 {
            degraded_seen |= health_status(&host).await == "degraded";
            // Typing and presence keep working from memory.
            alice.emit("typing:start", json!({"roomName": "ops"}));
            let p = bob
                .emit_ack("presence:update", json!({"status": "away"}), ms(5000))
                .await;
            assert_eq!(p["success"], json!(true), "presence during the outage: {p}");
        }
        tokio::time::sleep(ms(100)).await;
    }
    assert!(
        degraded_seen,
        "/health never said degraded while the database was down"
    );
    eprintln!(
        "{} messages acked, {i} of them while the database was down",
        sent.len()
    );
    // A second socket joins a room the server has cached.
    let mut alice2 = host.client("alice").await;
    ack_ok(
        &alice2
            .emit_ack("room:join", json!({"roomName": "ops"}), ms(5000))
            .await,
    );
    // Every message reached bob.
    let got = bob.collect("message:new", ms(500)).await;
    let got: HashSet<String> = got
        .iter()
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect();
    for id in &sent {
        assert!(got.contains(&format!("body of {id}")), "bob missed {id}");
    }

    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    let back = wait_health(&host, "healthy", Duration::from_secs(30)).await;
    eprintln!("healthy again {back:?} after the restart");
    let mut c = PgConnection::connect(&url)
        .await
        .expect("connect after restart");
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts: HashMap<String, i64> = loop {
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT payload->>'clientMessageId', COUNT(*) FROM realtime_events \
             WHERE event_type = 'message:send' GROUP BY 1",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let counts: HashMap<String, i64> = rows
            .into_iter()
            .filter_map(|(k, n)| k.map(|k| (k, n)))
            .collect();
        if counts.len() >= sent.len() || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(ms(200)).await;
    };
    for id in &sent {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "audit row of {id} must arrive exactly once"
        );
    }
    assert_eq!(
        counts.len(),
        sent.len(),
        "no audit row for a message never sent"
    );
    let metrics = host
        .http_request("/metrics?format=prometheus", &[])
        .await
        .body;
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("realtime_store_writes_dropped_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(dropped, Some(0.0), "no write was dropped:\n{metrics}");
    drop(alice2);
    drop(pg);
}

/// A server in its own process (so that it can be killed with SIGKILL) on `db_url`: the child,
/// its URL and the directory it runs in.
async fn spawn_node(
    db_url: &str,
    lease_ms: &str,
    extra: &[(&str, &str)],
) -> (std::process::Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let mut env = vec![
        ("DATABASE_URL", db_url),
        ("REALTIME_HOST", "127.0.0.1"),
        ("REALTIME_PORT", &port),
        ("REALTIME_JWT_SECRET", TEST_SECRET),
        ("REALTIME_RATE_LIMIT", "0"),
        ("REALTIME_NODE_LEASE_MS", lease_ms),
        ("REALTIME_PLUGINS_DIR", plugins.to_str().unwrap()),
        ("REALTIME_PLUGIN_CACHE_DIR", "off"),
        ("LOG_LEVEL", "warn"),
    ];
    env.extend_from_slice(extra);
    let mut child = spawn_server(&env, dir.path());
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http
        .get(format!("{url}/health/live"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the server did not start");
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        tokio::time::sleep(ms(100)).await;
    }
    (child, url, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_users_go_offline_within_the_lease() {
    const LEASE_MS: u64 = 3000;
    let db = FreshDb::create().await;
    let lease = LEASE_MS.to_string();
    let (mut node_a, url_a, _dir) = spawn_node(&db.url, &lease, &[]).await;
    let node_b = TestHost::start(&[
        ("DATABASE_URL", &db.url),
        ("REALTIME_NODE_LEASE_MS", &lease),
    ])
    .await;
    let mut observer = node_b.client("observer").await;
    let mut on_a = Vec::new();
    for user in ["u1", "u2", "u3"] {
        on_a.push(
            SioClient::connect(&url_a, Some(&user_token(user)))
                .await
                .expect("connect to node A"),
        );
    }
    // u3 also has a socket on node B: it must stay online.
    let _u3_on_b = node_b.client("u3").await;
    let mut c = db.connect().await;
    wait_count(
        &mut c,
        "live connection rows",
        "SELECT COUNT(*) FROM realtime_connections WHERE status = 'connected'",
        5,
    )
    .await;
    observer.clear_events();

    node_a.kill().expect("SIGKILL node A");
    let _ = node_a.wait();
    let killed = Instant::now();
    let mut offline = HashSet::new();
    while offline.len() < 2 {
        let left = Duration::from_millis(LEASE_MS * 2).saturating_sub(killed.elapsed());
        let ev = observer
            .next_event_where("presence:changed", left, |v| {
                v["status"] == json!("offline")
            })
            .await
            .unwrap_or_else(|| panic!("offline events so far: {offline:?}"));
        let user = ev["userId"].as_str().unwrap().to_string();
        assert!(
            offline.insert(user.clone()),
            "{user} reported offline twice"
        );
    }
    let took = killed.elapsed();
    eprintln!("users of the killed node offline after {took:?} (lease {LEASE_MS} ms)");
    assert_eq!(offline, HashSet::from(["u1".to_string(), "u2".to_string()]));
    observer
        .expect_none_where("presence:changed", ms(1000), |v| {
            v["status"] == json!("offline") && v["userId"] == json!("u3")
        })
        .await;
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT user_id, status, connections_count FROM realtime_presence \
         WHERE user_id IN ('u1', 'u2', 'u3') ORDER BY user_id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("u1".into(), "offline".into(), 0),
            ("u2".into(), "offline".into(), 0),
            ("u3".into(), "online".into(), 1),
        ]
    );
    let live: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM realtime_connections WHERE status = 'connected'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(live, 2, "only node B's two sockets stay connected");
    drop(on_a);
}

/// With `REALTIME_PRESENCE_SCOPE=rooms` and no Redis, the node that cleans up after a crashed
/// one has no socket of the dead node's users: it tells the rooms they are members of, and
/// nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_users_are_announced_to_their_rooms_with_scope_rooms() {
    const LEASE_MS: u64 = 2000;
    let db = FreshDb::create().await;
    let lease = LEASE_MS.to_string();
    let scope = [("REALTIME_PRESENCE_SCOPE", "rooms")];
    let (mut node_a, url_a, _dir) = spawn_node(&db.url, &lease, &scope).await;
    let node_b = TestHost::start(&[
        ("DATABASE_URL", &db.url),
        ("REALTIME_NODE_LEASE_MS", &lease),
        ("REALTIME_PRESENCE_SCOPE", "rooms"),
    ])
    .await;
    for room in ["ops", "elsewhere"] {
        node_b
            .create_room(room, RoomType::Channel, Visibility::Public, None)
            .await;
    }
    let mut observer = node_b.joined("observer", "ops").await;
    let mut on_a = Vec::new();
    for (user, room) in [("roomy", "ops"), ("stranger", "elsewhere")] {
        let mut c = SioClient::connect(&url_a, Some(&user_token(user)))
            .await
            .expect("connect to node A");
        ack_ok(
            &c.emit_ack("room:join", json!({"roomName": room}), ms(5000))
                .await,
        );
        on_a.push(c);
    }
    let mut c = db.connect().await;
    wait_count(
        &mut c,
        "memberships written behind",
        "SELECT COUNT(*) FROM realtime_room_members WHERE user_id IN ('roomy', 'stranger')",
        2,
    )
    .await;
    observer.clear_events();

    node_a.kill().expect("SIGKILL node A");
    let _ = node_a.wait();
    let killed = Instant::now();
    let ev = observer
        .next_event_where("presence:changed", ms(LEASE_MS * 2), |v| {
            v["status"] == json!("offline")
        })
        .await
        .expect("an offline presence:changed in room ops");
    eprintln!(
        "scope rooms, database only: {} offline {:?} after the kill",
        ev["userId"],
        killed.elapsed()
    );
    assert_eq!(ev["userId"], json!("roomy"), "{ev}");
    observer
        .expect_none_where("presence:changed", ms(1500), |v| {
            v["userId"] == json!("stranger") || v["userId"] == json!("roomy")
        })
        .await;
    drop(on_a);
}

/// A server started while its PostgreSQL is down serves (degraded) but is not ready: it has no
/// rooms to admit joins to. Once the database answers, rooms are read and readiness follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_database_has_answered_once() {
    let pg = tokio::task::spawn_blocking(PrivatePg::start).await.unwrap();
    let url = pg.url();
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop("immediate");
        pg
    })
    .await
    .unwrap();
    let host = TestHost::start(&[("DATABASE_URL", &url)]).await;
    let r = host.http_request("/health/ready", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["status"], "starting", "{}", r.body);
    assert_eq!(host.http_get("/health/live").await.0, 200);
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.http_request("/health/ready", &[]).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready after the database came back"
        );
        tokio::time::sleep(ms(200)).await;
    }
    drop(pg);
}
