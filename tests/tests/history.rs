//! Room history: positions on `message:new`, catch-up on
//! `room:join {since}` after a cut transport (exactly the missed messages, in order, before
//! live ones, also while messages keep coming), `recovered: false` for another epoch or a
//! position too old, paging with `message:history` and its access rules, rooms without history
//! unchanged.

use nself_realtime_tests::redis::SharedRedis;
use nself_realtime_tests::{RoomType, Visibility};
use nself_realtime_tests::{SioClient, TestHost, ms};
use serde_json::{Value, json};

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            m["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("no offset: {m}"))
        })
        .collect()
}

async fn join_since(c: &mut SioClient, room: &str, since: Value) -> Value {
    c.emit_ack(
        "room:join",
        json!({"roomName": room, "since": since}),
        ms(5000),
    )
    .await
}

/// The next `n` `message:new` (waiting at most 10 s for them), then whatever else is already
/// here after a round trip: exactly `n` are expected.
async fn take(c: &mut SioClient, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.next_event("message:new", ms(10_000)).await {
            Some(m) => got.push(m),
            None => break,
        }
    }
    c.sync().await;
    got.extend(c.collect("message:new", ms(0)).await);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_client_recovers_exactly_the_missed_messages() {
    let host = TestHost::start(&[
        ("REALTIME_HISTORY_SIZE", "200"),
        ("REALTIME_EVENT_RATE", "10000"),
    ])
    .await;
    let mut sender = host.joined("sam", "general").await;
    let mut reader = host.joined("rita", "general").await;
    for i in 0..3 {
        let ack = sender.send_message("general", &format!("before {i}")).await;
        assert!(
            ack["data"]["offset"].is_u64(),
            "the sender's ack has the offset: {ack}"
        );
    }
    let seen = take(&mut reader, 3).await;
    assert_eq!(offsets(&seen), vec![1, 2, 3]);
    let epoch = seen[2]["epoch"].as_str().expect("epoch").to_string();
    // The transport is cut (no Socket.IO disconnect packet), 50 messages go by.
    drop(reader);
    for i in 0..50 {
        sender.send_message("general", &format!("missed {i}")).await;
    }
    let mut back = host.client("rita").await;
    let ack = join_since(&mut back, "general", json!({"offset": 3, "epoch": epoch})).await;
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    assert_eq!(ack["data"]["position"]["offset"], 53, "{ack}");
    assert_eq!(ack["data"]["position"]["epoch"], epoch.as_str());
    // Then live ones.
    sender.send_message("general", "live").await;
    let got = take(&mut back, 51).await;
    assert_eq!(
        offsets(&got),
        (4..=54).collect::<Vec<u64>>(),
        "exactly the missed ones, in order, then live"
    );
    assert_eq!(got[0]["content"], "missed 0");
    assert_eq!(got[49]["content"], "missed 49");
    assert_eq!(got[50]["content"], "live");
}

/// A TCP relay to `upstream` that can go silent: after `cut`, it forwards nothing more in
/// either direction and closes nothing (a phone that lost its network).
struct Blackhole {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Blackhole {
    async fn start(upstream: std::net::SocketAddr) -> Blackhole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(Self::pipe(dr, uw, flag.clone()));
                tokio::spawn(Self::pipe(ur, dw, flag.clone()));
            }
        });
        Blackhole { addr, cut }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cut.load(std::sync::atomic::Ordering::SeqCst) {
                // Silent: both ends stay open, nothing more is read or written.
                let _held = (from, to);
                std::future::pending::<()>().await;
                return;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_network_went_silent_recovers_on_a_new_connection() {
    let host = TestHost::start(&[
        ("REALTIME_HISTORY_SIZE", "200"),
        ("REALTIME_EVENT_RATE", "10000"),
    ])
    .await;
    let relay = Blackhole::start(host.addr).await;
    let mut sender = host.joined("sam", "general").await;
    let mut phone = SioClient::connect(
        &format!("http://{}", relay.addr),
        Some(&nself_realtime_tests::user_token("rita")),
    )
    .await
    .expect("connect through the relay");
    let ack = phone
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    for i in 0..3 {
        sender.send_message("general", &format!("before {i}")).await;
    }
    let seen = take(&mut phone, 3).await;
    assert_eq!(offsets(&seen), vec![1, 2, 3]);
    let epoch = seen[2]["epoch"].as_str().expect("epoch").to_string();
    // The network goes silent: no close, no FIN; the server still counts the socket as
    // connected and goes on writing to it (its ping timeout is far away).
    relay.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..50 {
        sender.send_message("general", &format!("missed {i}")).await;
    }
    assert!(
        phone.collect("message:new", ms(300)).await.is_empty(),
        "the relay is silent"
    );
    // The phone comes back on another network: a new connection, while the old socket is
    // still there on the server.
    let mut back = host.client("rita").await;
    let ack = join_since(&mut back, "general", json!({"offset": 3, "epoch": epoch})).await;
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    sender.send_message("general", "live").await;
    let got = take(&mut back, 51).await;
    assert_eq!(
        offsets(&got),
        (4..=54).collect::<Vec<u64>>(),
        "exactly the missed ones, in order, then live"
    );
    assert_eq!(got[50]["content"], "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_and_no_duplicate_at_the_seam_while_messages_keep_coming() {
    let host = TestHost::start(&[
        ("REALTIME_HISTORY_SIZE", "1000"),
        ("REALTIME_EVENT_RATE", "10000"),
    ])
    .await;
    let mut first = host.joined("sam", "general").await;
    let ack = first.send_message("general", "m0").await;
    let epoch = ack["data"]["epoch"].as_str().expect("epoch").to_string();
    // A second sender keeps sending while the reader catches up.
    let url = host.url();
    let sending = tokio::spawn(async move {
        let mut s = SioClient::connect(&url, Some(&nself_realtime_tests::user_token("sue")))
            .await
            .expect("sue");
        s.emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
            .await;
        for i in 0..200 {
            let ack = s.send_message("general", &format!("s{i}")).await;
            assert_eq!(ack["success"], true, "{ack}");
        }
    });
    // Join once the stream is under way.
    first
        .next_event_where("message:new", ms(5000), |m| m["offset"].as_u64() >= Some(5))
        .await
        .expect("sue is sending");
    let mut reader = host.client("rita").await;
    let ack = join_since(&mut reader, "general", json!({"offset": 1, "epoch": epoch})).await;
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    let at = ack["data"]["position"]["offset"]
        .as_u64()
        .expect("position");
    assert!(at >= 5, "joined mid-stream: {ack}");
    eprintln!("joined at offset {at} of 201");
    sending.await.expect("sender");
    let got = take(&mut reader, 200).await;
    let last = got
        .last()
        .and_then(|m| m["offset"].as_u64())
        .expect("messages");
    assert_eq!(
        offsets(&got),
        (2..=last).collect::<Vec<u64>>(),
        "contiguous from the position on: no gap, no duplicate"
    );
    assert_eq!(last, 201, "all of them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_epoch_or_a_position_too_old_is_not_recovered() {
    let host = TestHost::start(&[("REALTIME_HISTORY_SIZE", "10")]).await;
    let mut sender = host.joined("sam", "general").await;
    let mut epoch = String::new();
    for i in 0..30 {
        let ack = sender.send_message("general", &format!("m{i}")).await;
        epoch = ack["data"]["epoch"].as_str().expect("epoch").to_string();
    }
    let mut c = host.client("rita").await;
    let ack = join_since(&mut c, "general", json!({"offset": 5, "epoch": epoch})).await;
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(
        ack["data"]["recovered"], false,
        "only the last 10 are kept: {ack}"
    );
    assert_eq!(ack["data"]["position"]["offset"], 30);
    let mut c2 = host.client("rita").await;
    let ack = join_since(
        &mut c2,
        "general",
        json!({"offset": 29, "epoch": "another"}),
    )
    .await;
    assert_eq!(ack["data"]["recovered"], false, "{ack}");
    let ack = join_since(
        &mut c2,
        "announcements",
        json!({"offset": 99, "epoch": epoch}),
    )
    .await;
    assert_eq!(ack["data"]["recovered"], false, "ahead of the room: {ack}");
    c.sync().await;
    c2.sync().await;
    assert!(
        c.collect("message:new", ms(200)).await.is_empty(),
        "nothing replayed when not recovered"
    );
    // Bad positions are validation errors.
    for bad in [
        json!("x"),
        json!({"offset": -1, "epoch": "e"}),
        json!({"offset": 1}),
        json!({"offset": 1, "epoch": ""}),
    ] {
        let ack = join_since(&mut c2, "general", bad.clone()).await;
        assert_eq!(ack["error"]["code"], "VALIDATION_ERROR", "{bad}: {ack}");
        assert_eq!(ack["error"]["details"]["field"], "since", "{bad}: {ack}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_without_history_are_unchanged() {
    let host = TestHost::start(&[]).await;
    let mut a = host.joined("sam", "general").await;
    let mut b = host.joined("rita", "general").await;
    let ack = a.send_message("general", "hello").await;
    assert!(ack["data"].get("offset").is_none(), "{ack}");
    let m = b
        .next_event("message:new", ms(2000))
        .await
        .expect("message");
    assert!(m.get("offset").is_none() && m.get("epoch").is_none(), "{m}");
    let mut c = host.client("carl").await;
    let ack = join_since(&mut c, "general", json!({"offset": 1, "epoch": "e"})).await;
    assert_eq!(ack["data"]["recovered"], false, "{ack}");
    assert!(ack["data"].get("position").is_none(), "{ack}");
    let ack = c
        .emit_ack("message:history", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["data"]["messages"], json!([]), "{ack}");
    let plain = b
        .emit_ack("room:join", json!({"roomName": "announcements"}), ms(5000))
        .await;
    assert_eq!(
        plain["data"],
        json!({"roomName": "announcements", "memberCount": plain["data"]["memberCount"]}),
        "the join ack is as before: {plain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_and_its_access_rules() {
    let host = TestHost::start(&[("REALTIME_HISTORY_SIZE", "100")]).await;
    host.create_room("vault", RoomType::Channel, Visibility::Private, None)
        .await;
    host.create_room("hidden", RoomType::Channel, Visibility::Secret, None)
        .await;
    host.add_member("vault", "sam", "member", false, false)
        .await;
    host.add_member("hidden", "sam", "member", false, false)
        .await;
    let mut sam = host.joined("sam", "vault").await;
    for i in 1..=12 {
        sam.send_message("vault", &format!("v{i}")).await;
    }
    let page = |before: Option<u64>, after: Option<u64>, limit: u64| json!({"roomName": "vault", "before": before, "after": after, "limit": limit});
    let ack = sam
        .emit_ack("message:history", page(None, None, 5), ms(5000))
        .await;
    assert_eq!(
        offsets(ack["data"]["messages"].as_array().expect("messages")),
        vec![8, 9, 10, 11, 12],
        "{ack}"
    );
    assert_eq!(ack["data"]["position"]["offset"], 12);
    let ack = sam
        .emit_ack("message:history", page(Some(8), None, 3), ms(5000))
        .await;
    assert_eq!(
        offsets(ack["data"]["messages"].as_array().expect("messages")),
        vec![5, 6, 7]
    );
    let ack = sam
        .emit_ack("message:history", page(None, Some(10), 50), ms(5000))
        .await;
    assert_eq!(
        offsets(ack["data"]["messages"].as_array().expect("messages")),
        vec![11, 12]
    );
    assert_eq!(ack["data"]["messages"][1]["content"], "v12");
    // A member who has not joined may page too (the join rules apply); others may not.
    let mut sam2 = host.client("sam").await;
    let ack = sam2
        .emit_ack("message:history", page(None, None, 2), ms(5000))
        .await;
    assert_eq!(ack["success"], true, "{ack}");
    let mut eve = host.client("eve").await;
    let ack = eve
        .emit_ack("message:history", page(None, None, 5), ms(5000))
        .await;
    assert_eq!(ack["error"]["code"], "ROOM_ACCESS_DENIED", "{ack}");
    let ack = eve
        .emit_ack("message:history", json!({"roomName": "hidden"}), ms(5000))
        .await;
    assert_eq!(
        ack["error"]["code"], "ROOM_NOT_FOUND",
        "a secret room is not revealed: {ack}"
    );
    let ack = eve
        .emit_ack("message:history", json!({"roomName": "nowhere"}), ms(5000))
        .await;
    assert_eq!(ack["error"]["code"], "ROOM_NOT_FOUND");
    for (bad, field) in [
        (json!({"roomName": "vault", "limit": 0}), "limit"),
        (
            json!({"roomName": "vault", "before": 3, "after": 1}),
            "before",
        ),
        (json!({"roomName": "vault", "after": "x"}), "after"),
    ] {
        let ack = sam.emit_ack("message:history", bad.clone(), ms(5000)).await;
        assert_eq!(ack["error"]["details"]["field"], field, "{bad}: {ack}");
    }
    // The limit is capped.
    let ack = sam
        .emit_ack("message:history", page(None, None, 100_000), ms(5000))
        .await;
    assert_eq!(ack["data"]["messages"].as_array().map(Vec::len), Some(12));
}

/// Two instances over Redis: history is the cluster's.
async fn two_instances(
    tag: &str,
    vars: &[(&str, &str)],
) -> (Vec<TestHost>, SharedRedis, tempfile::TempDir) {
    let redis = SharedRedis::new(tag);
    let db = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}/cluster.db", db.path().display());
    // A DATABASE_URL among `vars` replaces the SQLite file.
    let url = vars
        .iter()
        .find(|(k, _)| *k == "DATABASE_URL")
        .map_or(sqlite, |(_, v)| v.to_string());
    let vars: Vec<(&str, &str)> = vars
        .iter()
        .filter(|(k, _)| *k != "DATABASE_URL")
        .copied()
        .collect();
    let mut hosts = Vec::new();
    for i in 0..2 {
        let node = format!("{}-{i}", redis.prefix);
        let mut all: Vec<(&str, &str)> = vec![
            ("REALTIME_REDIS_URL", &redis.url),
            ("REALTIME_REDIS_PREFIX", &redis.prefix),
            ("REALTIME_NODE_ID", &node),
            ("DATABASE_URL", &url),
            ("REALTIME_EVENT_RATE", "10000"),
        ];
        all.extend_from_slice(&vars);
        hosts.push(TestHost::start(&all).await);
    }
    for h in &hosts {
        let deadline = std::time::Instant::now() + ms(10_000);
        while h.http_request("/health", &[]).await.json()["checks"]["redis"] != "ok" {
            assert!(std::time::Instant::now() < deadline, "redis never ok");
            tokio::time::sleep(ms(100)).await;
        }
    }
    (hosts, redis, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_on_the_other_instance() {
    let (hosts, redis, _db) = two_instances("hist", &[("REALTIME_HISTORY_SIZE", "500")]).await;
    let mut sender = hosts[0].joined("sam", "general").await;
    let mut reader = hosts[0].joined("rita", "general").await;
    let mut watcher = hosts[1].joined("walt", "general").await;
    for i in 0..5 {
        let ack = sender.send_message("general", &format!("before {i}")).await;
        assert_eq!(ack["data"]["offset"], i + 1, "{ack}");
    }
    let seen = take(&mut reader, 5).await;
    assert_eq!(offsets(&seen), vec![1, 2, 3, 4, 5]);
    let epoch = seen[4]["epoch"].as_str().expect("epoch").to_string();
    // Both instances deliver the same offsets, in order.
    let other = take(&mut watcher, 5).await;
    assert_eq!(offsets(&other), vec![1, 2, 3, 4, 5]);
    drop(reader);
    for i in 0..50 {
        sender.send_message("general", &format!("missed {i}")).await;
    }
    // Back, on the other instance.
    let mut back = hosts[1].client("rita").await;
    let ack = join_since(&mut back, "general", json!({"offset": 5, "epoch": epoch})).await;
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    sender.send_message("general", "live").await;
    let got = take(&mut back, 51).await;
    assert_eq!(
        offsets(&got),
        (6..=56).collect::<Vec<u64>>(),
        "the 50 missed, in order, then live"
    );
    assert_eq!(got[50]["content"], "live");
    let all = take(&mut watcher, 51).await;
    assert_eq!(
        offsets(&all),
        (6..=56).collect::<Vec<u64>>(),
        "the other socket got each once"
    );

    // Paging on either instance sees the same history.
    let page = back
        .emit_ack(
            "message:history",
            json!({"roomName": "general", "limit": 3}),
            ms(5000),
        )
        .await;
    assert_eq!(
        offsets(page["data"]["messages"].as_array().expect("messages")),
        vec![54, 55, 56],
        "{page}"
    );

    // History lost (Redis restarted without persistence: its keys are gone): a new epoch, and
    // the old position is not recovered.
    forget_history(&redis).await;
    let ack = sender.send_message("general", "after the loss").await;
    assert_ne!(ack["data"]["epoch"], epoch.as_str(), "{ack}");
    assert_eq!(ack["data"]["offset"], 1, "{ack}");
    let m = watcher
        .next_event("message:new", ms(2000))
        .await
        .expect("delivered");
    assert_eq!(
        (m["offset"].as_u64(), m["content"].as_str()),
        (Some(1), Some("after the loss"))
    );
    let mut late = hosts[1].client("lena").await;
    let ack = join_since(&mut late, "general", json!({"offset": 56, "epoch": epoch})).await;
    assert_eq!(ack["data"]["recovered"], false, "{ack}");
    drop(hosts);
    redis.cleanup().await;
}

/// What a Redis restart without persistence does to history: its keys are gone.
async fn forget_history(redis: &SharedRedis) {
    let pattern = format!("{}:hist:*", redis.prefix);
    let keys = match nself_realtime_tests::redis::command(&redis.url, &["KEYS", &pattern]).await {
        Ok(redis::Value::Array(keys)) => keys,
        other => panic!("KEYS {pattern}: {other:?}"),
    };
    assert!(!keys.is_empty(), "no history keys under {pattern}");
    for k in keys {
        if let redis::Value::BulkString(k) = k {
            let k = String::from_utf8_lossy(&k).into_owned();
            nself_realtime_tests::redis::command(&redis.url, &["DEL", &k])
                .await
                .unwrap_or_else(|e| panic!("DEL {k}: {e}"));
        }
    }
}

/// Two instances over Redis with history persisted in PostgreSQL: Redis loses the history
/// (restart without persistence); the room is seeded from the database. Offsets continue in a
/// new epoch that continues the old one: positions up to the database's last message are
/// recovered on either instance; a position before a message the database never got (a crash
/// between delivery and the write), or past its last one, is not, since that offset goes to
/// another message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_history_is_seeded_back_after_redis_lost_it() {
    let db = nself_realtime_tests::pg::FreshDb::create().await;
    let (hosts, redis, _dir) = two_instances(
        "histseed",
        &[
            ("DATABASE_URL", &db.url),
            ("REALTIME_HISTORY_SIZE", "100"),
            ("REALTIME_HISTORY_PERSIST", "true"),
        ],
    )
    .await;
    let mut sender = hosts[0].joined("sam", "general").await;
    let mut watcher = hosts[1].joined("walt", "general").await;
    let mut epoch = String::new();
    for i in 1..=10u64 {
        let ack = sender.send_message("general", &format!("m{i}")).await;
        assert_eq!(ack["data"]["offset"], i, "{ack}");
        epoch = ack["data"]["epoch"].as_str().expect("epoch").to_string();
    }
    assert_eq!(
        offsets(&take(&mut watcher, 10).await),
        (1..=10).collect::<Vec<u64>>()
    );
    // Every acknowledged message is in the database.
    let mut c = db.connect().await;
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "SELECT msg_offset, epoch FROM realtime_messages WHERE room_name = 'general'          ORDER BY msg_offset",
    )
    .fetch_all(&mut c)
    .await
    .expect("read realtime_messages");
    assert_eq!(
        stored,
        (1..=10).map(|o| (o, epoch.clone())).collect::<Vec<_>>()
    );
    // Offsets 5 and 10 never reached the database; then Redis loses the history.
    sqlx::query("DELETE FROM realtime_messages WHERE msg_offset IN (5, 10)")
        .execute(&mut c)
        .await
        .expect("delete");
    forget_history(&redis).await;

    // From 7: 8 and 9 come back from the database, in the new epoch.
    let mut rita = hosts[1].client("rita").await;
    let ack = join_since(&mut rita, "general", json!({"offset": 7, "epoch": epoch})).await;
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    let new_epoch = ack["data"]["position"]["epoch"]
        .as_str()
        .expect("position")
        .to_string();
    assert_ne!(new_epoch, epoch);
    assert_eq!(ack["data"]["position"]["offset"], 9, "{ack}");
    let missed = take(&mut rita, 2).await;
    assert_eq!(offsets(&missed), vec![8, 9]);
    assert_eq!(
        (missed[1]["content"].as_str(), missed[1]["epoch"].as_str()),
        (Some("m9"), Some(new_epoch.as_str()))
    );
    // From 4 (5 is not in the database) or from 10 (past its last message): not recovered,
    // nothing replayed.
    for (name, from) in [("lena", 4), ("liz", 10)] {
        let mut c = hosts[0].client(name).await;
        let ack = join_since(&mut c, "general", json!({"offset": from, "epoch": epoch})).await;
        assert_eq!(ack["data"]["recovered"], false, "from {from}: {ack}");
        c.sync().await;
        assert!(c.collect("message:new", ms(0)).await.is_empty());
    }

    // Offsets continue after the database's last message, delivered once on both instances.
    let ack = sender.send_message("general", "after the loss").await;
    assert_eq!(
        (
            ack["data"]["offset"].as_u64(),
            ack["data"]["epoch"].as_str()
        ),
        (Some(10), Some(new_epoch.as_str())),
        "{ack}"
    );
    for c in [&mut rita, &mut watcher] {
        let got = take(c, 1).await;
        assert_eq!(offsets(&got), vec![10], "{got:?}");
        assert_eq!(got[0]["content"], "after the loss");
    }
    let page = sender
        .emit_ack(
            "message:history",
            json!({"roomName": "general", "limit": 100}),
            ms(5000),
        )
        .await;
    let messages = page["data"]["messages"].as_array().expect("messages");
    assert_eq!(offsets(messages), vec![6, 7, 8, 9, 10], "{page}");
    assert!(messages.iter().all(|m| m["epoch"] == new_epoch.as_str()));
    drop(hosts);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_keeps_history_by_its_own_settings() {
    let host = TestHost::start(&[]).await;
    let cli = |args: &'static [&'static str]| {
        let db = host.database_url.clone();
        tokio::task::spawn_blocking(move || {
            nself_realtime_tests::process::run_cli(&[("DATABASE_URL", &db)], args)
        })
    };
    let out = cli(&[
        "create-room",
        "ops",
        "--history-size",
        "3",
        "--history-ttl",
        "1h",
        "--json",
    ])
    .await
    .expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let room: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        room["settings"]["history"],
        json!({"size": 3, "ttl": 3600}),
        "{room}"
    );
    let out = cli(&["create-room", "ops2", "--history-ttl", "soon"])
        .await
        .expect("cli");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--history-ttl") && stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );

    let mut a = host.joined("sam", "ops").await;
    for i in 1..=5u64 {
        let ack = a.send_message("ops", &format!("m{i}")).await;
        assert_eq!(ack["data"]["offset"], i, "{ack}");
    }
    let page = a
        .emit_ack("message:history", json!({"roomName": "ops"}), ms(5000))
        .await;
    assert_eq!(
        offsets(page["data"]["messages"].as_array().expect("messages")),
        vec![3, 4, 5],
        "size 3: {page}"
    );
    let mut g = host.joined("sam", "general").await;
    let ack = g.send_message("general", "plain").await;
    assert!(
        ack["data"].get("offset").is_none(),
        "no server-wide history: {ack}"
    );

    // Settings of existing rooms change from the CLI and reach the running server.
    let run = |args: &'static [&'static str]| {
        let cli = cli(args);
        async move {
            let out = cli.await.expect("cli");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr,
            )
        }
    };
    let (code, out, err) = run(&[
        "rooms", "history", "general", "--size", "2", "--ttl", "10m", "--json",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["history"], json!({"size": 2, "ttl": 600}), "{v}");
    assert_eq!(v["changed"], true);
    let (code, out, err) = run(&["rooms", "history", "ops", "--size", "0"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("off"), "{out}");
    // Picked up through the change feed: general numbers its messages, ops no longer does.
    let deadline = std::time::Instant::now() + ms(10_000);
    loop {
        let general = g.send_message("general", "numbered?").await;
        let ops = a.send_message("ops", "numbered?").await;
        if general["data"]["offset"].is_u64() && ops["data"].get("offset").is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "settings not applied: {general} {ops}"
        );
        tokio::time::sleep(ms(200)).await;
    }
    // Only the room's own settings change: the server defaults apply again.
    let (code, out, err) = run(&["rooms", "history", "ops", "--defaults", "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (v["own"].is_null(), v["history"].is_null()),
        (true, true),
        "{v}"
    );
    let (code, out, _) = run(&["rooms", "history", "general"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("2 messages") && out.contains("600 s"), "{out}");
    for (args, needle) in [
        (
            &["rooms", "history", "nosuch", "--size", "3"][..],
            "room not found",
        ),
        (
            &["rooms", "history", "general", "--ttl", "soon"][..],
            "--ttl",
        ),
    ] {
        let args: &'static [&'static str] = args;
        let (code, _, err) = run(args).await;
        assert_eq!(code, Some(1), "{args:?}");
        assert!(
            err.contains(needle) && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

/// Keeps history in the database at `url`, restarts the server on it: positions continue in
/// the same epoch and the kept messages are still there for catch-up and paging.
async fn history_survives_a_restart(url: &str) {
    let vars = [
        ("DATABASE_URL", url),
        ("REALTIME_HISTORY_SIZE", "100"),
        ("REALTIME_HISTORY_PERSIST", "true"),
        ("REALTIME_EVENT_RATE", "10000"),
    ];
    let mut first = TestHost::start(&vars).await;
    let mut sam = first.joined("sam", "general").await;
    let mut epoch = String::new();
    for i in 1..=10u64 {
        let ack = sam.send_message("general", &format!("m{i}")).await;
        assert_eq!(ack["data"]["offset"], i, "{ack}");
        epoch = ack["data"]["epoch"].as_str().expect("epoch").to_string();
    }
    drop(sam);
    first.shutdown().await.expect("clean stop");

    let second = TestHost::start(&vars).await;
    let mut rita = second.client("rita").await;
    let ack = join_since(&mut rita, "general", json!({"offset": 7, "epoch": epoch})).await;
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    assert_eq!(
        ack["data"]["position"],
        json!({"offset": 10, "epoch": epoch}),
        "{ack}"
    );
    let missed = take(&mut rita, 3).await;
    assert_eq!(offsets(&missed), vec![8, 9, 10]);
    assert_eq!(missed[2]["content"], "m10");
    let mut sam = second.joined("sam", "general").await;
    let ack = sam.send_message("general", "after the restart").await;
    assert_eq!(
        (
            ack["data"]["offset"].as_u64(),
            ack["data"]["epoch"].as_str()
        ),
        (Some(11), Some(epoch.as_str())),
        "{ack}"
    );
    let page = sam
        .emit_ack(
            "message:history",
            json!({"roomName": "general", "limit": 100}),
            ms(5000),
        )
        .await;
    assert_eq!(
        offsets(page["data"]["messages"].as_array().expect("messages")),
        (1..=11).collect::<Vec<u64>>(),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_history_survives_a_restart_on_postgresql() {
    let db = nself_realtime_tests::pg::FreshDb::create().await;
    history_survives_a_restart(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_history_survives_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/history.db", dir.path().display());
    history_survives_a_restart(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_joins_and_messages_still_work_without_history() {
    let mut redis = nself_realtime_tests::redis::PrivateRedis::start().await;
    let url = redis.url();
    let host = TestHost::start(&[
        ("REALTIME_REDIS_URL", &url),
        ("REALTIME_HISTORY_SIZE", "100"),
    ])
    .await;
    let deadline = std::time::Instant::now() + ms(10_000);
    while host.http_request("/health", &[]).await.json()["checks"]["redis"] != "ok" {
        assert!(std::time::Instant::now() < deadline, "redis never ok");
        tokio::time::sleep(ms(100)).await;
    }
    let mut a = host.joined("sam", "general").await;
    let ack = a.send_message("general", "with history").await;
    let epoch = ack["data"]["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(take(&mut a, 1).await[0]["offset"], 1);
    redis.shutdown().await;
    let mut b = host.client("rita").await;
    // At the room's position nothing needs reading: recovered, without Redis.
    let ack = join_since(&mut b, "general", json!({"offset": 1, "epoch": epoch})).await;
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    // Behind it, the stream would have to be read: the join still works, not recovered.
    let mut b = host.client("rita").await;
    let ack = join_since(&mut b, "general", json!({"offset": 0, "epoch": epoch})).await;
    assert_eq!(
        ack["success"], true,
        "the join works without history: {ack}"
    );
    assert_eq!(ack["data"]["recovered"], false, "{ack}");
    let ack = a.send_message("general", "without history").await;
    assert_eq!(ack["success"], true, "{ack}");
    assert!(
        ack["data"].get("offset").is_none(),
        "no position without Redis: {ack}"
    );
    let m = b
        .next_event("message:new", ms(3000))
        .await
        .expect("delivered anyway");
    assert_eq!(m["content"], "without history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_persisted_offsets_are_not_handed_out_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = nself_realtime_tests::free_port().to_string();
    let db = format!("sqlite://{}/crash.db", dir.path().display());
    let plugins = dir.path().join("plugins").display().to_string();
    let vars = [
        ("REALTIME_HOST", "127.0.0.1"),
        ("REALTIME_PORT", port.as_str()),
        ("DATABASE_URL", db.as_str()),
        ("REALTIME_PLUGINS_DIR", plugins.as_str()),
        ("REALTIME_JWT_SECRET", nself_realtime_tests::TEST_SECRET),
        ("REALTIME_RATE_LIMIT", "0"),
        ("REALTIME_HISTORY_SIZE", "100"),
        ("REALTIME_HISTORY_PERSIST", "true"),
    ];
    let url = format!("http://127.0.0.1:{port}");
    let connect = |user: &'static str| {
        let url = url.clone();
        async move {
            let deadline = std::time::Instant::now() + ms(15_000);
            loop {
                match SioClient::connect(&url, Some(&nself_realtime_tests::user_token(user))).await
                {
                    Ok(c) => return c,
                    Err(e) => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "server never answered: {e}"
                        );
                        tokio::time::sleep(ms(100)).await;
                    }
                }
            }
        }
    };
    let mut server = nself_realtime_tests::process::spawn_server(&vars, dir.path());
    let mut sam = connect("sam").await;
    sam.emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    let mut epoch = String::new();
    for i in 1..=10u64 {
        let ack = sam.send_message("general", &format!("m{i}")).await;
        assert_eq!(ack["data"]["offset"], i, "{ack}");
        epoch = ack["data"]["epoch"].as_str().expect("epoch").to_string();
    }
    // SIGKILL right after the last acknowledgement: no clean stop, no writer drain.
    server.kill().expect("kill");
    let _ = server.wait();
    drop(sam);
    let mut server = nself_realtime_tests::process::spawn_server(&vars, dir.path());
    let mut rita = connect("rita").await;
    let ack = join_since(&mut rita, "general", json!({"offset": 10, "epoch": epoch})).await;
    assert_eq!(
        ack["data"]["position"],
        json!({"offset": 10, "epoch": epoch}),
        "every acknowledged message was kept: {ack}"
    );
    assert_eq!(ack["data"]["recovered"], true, "{ack}");
    let ack = rita.send_message("general", "after the crash").await;
    assert_eq!(
        ack["data"]["offset"], 11,
        "offset 10 is not handed out again: {ack}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// The first minute after a restart: a herd of clients reconnects at once and rejoins a room
/// with history, each with its last position, while the room's history is read back from the
/// database (persisted history): every client recovers exactly the messages it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_rejoining_after_a_restart_recovers_every_missed_message() {
    const HERD: usize = 300;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/herd.db", dir.path().display());
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("REALTIME_HISTORY_SIZE", "100"),
        ("REALTIME_HISTORY_PERSIST", "true"),
        ("REALTIME_EVENT_RATE", "10000"),
    ];
    let mut first = TestHost::start(&vars).await;
    let mut sam = first.joined("sam", "general").await;
    let mut epoch = String::new();
    for i in 1..=20u64 {
        let ack = sam.send_message("general", &format!("m{i}")).await;
        epoch = ack["data"]["epoch"].as_str().expect("epoch").to_string();
    }
    drop(sam);
    first.shutdown().await.expect("clean stop");

    let second = TestHost::start(&vars).await;
    let url = second.url();
    // The herd at once; the room's history has not been read back yet when it arrives.
    let started = std::time::Instant::now();
    let herd: Vec<_> = (0..HERD)
        .map(|i| {
            let (url, epoch) = (url.clone(), epoch.clone());
            tokio::spawn(async move {
                let token = nself_realtime_tests::user_token(&format!("herd-{i}"));
                let mut c = SioClient::connect(&url, Some(&token))
                    .await
                    .unwrap_or_else(|e| panic!("herd-{i} connect: {e}"));
                let ack = join_since(
                    &mut c,
                    "general",
                    json!({"offset": 20 - (i % 5) as u64, "epoch": epoch}),
                )
                .await;
                (i, c, ack)
            })
        })
        .collect();
    let mut clients = Vec::new();
    for h in herd {
        let (i, c, ack) = h.await.expect("herd task");
        assert_eq!(ack["data"]["recovered"], true, "herd-{i}: {ack}");
        assert_eq!(
            ack["data"]["position"],
            json!({"offset": 20, "epoch": epoch}),
            "herd-{i}"
        );
        clients.push((i, c));
    }
    let all_back = started.elapsed();
    let mut sam = second.joined("sam", "general").await;
    let ack = sam.send_message("general", "after the herd").await;
    assert_eq!(ack["data"]["offset"], 21, "{ack}");
    for (i, c) in &mut clients {
        let since = 20 - (*i % 5) as u64;
        let got = take(c, (21 - since) as usize).await;
        assert_eq!(
            offsets(&got),
            (since + 1..=21).collect::<Vec<u64>>(),
            "herd-{i}: the missed ones from the database, then the live one"
        );
    }
    eprintln!("{HERD} clients back in a history room after a restart in {all_back:?}");
}

/// A rolling deploy: one of two instances stops gracefully while a room with history is busy.
/// Its clients reconnect to the other instance with their last position and end up with every
/// message exactly once, in order; the survivor's sockets never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_of_one_instance_in_a_busy_history_room_loses_nothing() {
    const TOTAL: u64 = 300;
    const MOVED: usize = 10;
    let (mut hosts, redis, _db) =
        two_instances("histdeploy", &[("REALTIME_HISTORY_SIZE", "1000")]).await;
    let mut watcher = hosts[0].joined("walt", "general").await;
    let mut moved = Vec::new();
    for i in 0..MOVED {
        moved.push(hosts[1].joined(&format!("mover-{i}"), "general").await);
    }
    let mut sender = hosts[0].joined("sam", "general").await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let sending = tokio::spawn(async move {
        for i in 1..=TOTAL {
            let ack = sender.send_message("general", &format!("m{i}")).await;
            assert_eq!(ack["data"]["offset"], i, "{ack}");
            counter.store(i, std::sync::atomic::Ordering::SeqCst);
        }
    });
    while sent.load(std::sync::atomic::Ordering::SeqCst) < TOTAL / 3 {
        tokio::time::sleep(ms(5)).await;
    }
    let stopping = hosts.pop().expect("second instance");
    let stop = tokio::spawn(async move {
        let mut stopping = stopping;
        stopping.shutdown().await.expect("graceful stop");
    });
    // Each moved client: what it got before the stop, then straight back on the survivor from
    // there, while the sender goes on.
    let mut back = Vec::new();
    for (i, mut c) in moved.into_iter().enumerate() {
        assert!(
            c.wait_disconnect(ms(15_000)).await.is_some(),
            "mover-{i} not disconnected"
        );
        let before = c.collect("message:new", ms(0)).await;
        let epoch = before[0]["epoch"].as_str().expect("epoch").to_string();
        let before = offsets(&before);
        assert_eq!(
            before,
            (1..=before.len() as u64).collect::<Vec<u64>>(),
            "mover-{i} before the stop"
        );
        let last = before.last().copied().unwrap_or(0);
        let mut c = hosts[0].client(&format!("mover-{i}")).await;
        let ack = join_since(&mut c, "general", json!({"offset": last, "epoch": epoch})).await;
        assert_eq!(ack["data"]["recovered"], true, "mover-{i}: {ack}");
        back.push((i, last, c));
    }
    stop.await.expect("stop task");
    sending.await.expect("sender");
    for (i, last, mut c) in back {
        let got = take(&mut c, (TOTAL - last) as usize).await;
        assert_eq!(
            offsets(&got),
            (last + 1..=TOTAL).collect::<Vec<u64>>(),
            "mover-{i}: the rest, exactly once"
        );
    }
    let all = take(&mut watcher, TOTAL as usize).await;
    assert_eq!(
        offsets(&all),
        (1..=TOTAL).collect::<Vec<u64>>(),
        "the survivor's socket got every message once, in order"
    );
    drop(hosts);
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_timed_out_but_landed_is_delivered_once_with_its_position() {
    // Redis stalls (DEBUG SLEEP 0.5 s) just as a message is published: the call times out
    // (300 ms) but the script runs when Redis wakes. The message must then keep its position
    // and reach the other instance once, not a second time without a position.
    let redis = nself_realtime_tests::redis::PrivateRedis::start().await;
    let url = redis.url();
    let db = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}/h.db", db.path().display());
    let mut hosts = Vec::new();
    for i in 0..2 {
        let node = format!("stall-{i}");
        hosts.push(
            TestHost::start(&[
                ("REALTIME_REDIS_URL", &url),
                ("REALTIME_NODE_ID", &node),
                ("DATABASE_URL", &sqlite),
                ("REALTIME_HISTORY_SIZE", "100"),
            ])
            .await,
        );
    }
    for h in &hosts {
        let deadline = std::time::Instant::now() + ms(10_000);
        while h.http_request("/health", &[]).await.json()["checks"]["redis"] != "ok" {
            assert!(std::time::Instant::now() < deadline, "redis never ok");
            tokio::time::sleep(ms(100)).await;
        }
    }
    let mut a = hosts[0].joined("alice", "general").await;
    let mut b = hosts[1].joined("bob", "general").await;
    let first = a.send_message("general", "m1").await;
    assert_eq!(first["data"]["offset"], 1, "{first}");
    assert_eq!(offsets(&take(&mut b, 1).await), [1]);

    let stall = {
        let url = url.clone();
        tokio::spawn(async move {
            nself_realtime_tests::redis::command(&url, &["DEBUG", "SLEEP", "0.5"]).await
        })
    };
    tokio::time::sleep(ms(50)).await;
    let second = a.send_message("general", "m2").await;
    // (The helper's own timeout may answer first; the server sleeps all the same.)
    let _ = stall.await.expect("stall task");
    assert_eq!(second["success"], json!(true), "{second}");
    assert_eq!(
        second["data"]["offset"], 2,
        "the stalled message kept its position: {second}"
    );
    let third = a.send_message("general", "m3").await;
    assert_eq!(third["data"]["offset"], 3, "{third}");
    let got = take(&mut b, 2).await;
    let texts: Vec<&str> = got.iter().filter_map(|m| m["content"].as_str()).collect();
    assert_eq!(texts, ["m2", "m3"], "once each, in order: {got:?}");
    assert_eq!(offsets(&got), [2, 3]);
    for mut h in hosts {
        let _ = h.shutdown().await;
    }
}
