//! SPEC §8 / issue 3: the example policy modules, built from source by `scripts/build-plugins`,
//! loaded by a real server and exercised through real Socket.IO clients.

use nself_realtime_tests::{TEST_SECRET, TestHost, ms, plugin_wasm, token};
use serde_json::{Value, json};

fn file(name: &str) -> (String, Vec<u8>) {
    (format!("{name}.wasm"), plugin_wasm(name))
}

fn files(list: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    list.iter().map(|(n, b)| (n.as_str(), b.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanitized_content_arrives_sanitized() {
    let list = vec![file("sanitizer")];
    let host = TestHost::start_with_plugins(&[], &files(&list)).await;
    let mut reader = host.joined("reader", "general").await;
    let mut writer = host.joined("writer", "general").await;
    let ack = writer
        .send_message("general", "<script>alert(1)</script><b>hi</b> there")
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let m = reader
        .next_event("message:new", ms(5000))
        .await
        .expect("message:new");
    let content = m["content"].as_str().expect("content");
    assert!(!content.contains("<script"), "not sanitized: {content}");
    assert!(
        !content.contains("alert(1)</script>"),
        "not sanitized: {content}"
    );
    assert!(content.contains("hi"), "lost the text: {content}");
    let status = host.http_request("/metrics/plugins", &[]).await.json();
    let s = &status["plugins"][0];
    assert_eq!(s["name"], "sanitizer", "{status}");
    assert_eq!(s["status"], "loaded", "{status}");
    assert!(s["calls"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert!(s["modifies"].as_u64().unwrap_or(0) >= 1, "{status}");
}

/// The audit row records the event as it was handled: after a module rewrote it, the
/// rewritten request (here the sanitized content's length), never the raw payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_row_records_the_rewritten_event() {
    let list = vec![file("sanitizer")];
    let host =
        TestHost::start_with_plugins(&[("REALTIME_LOG_EVENT_TYPES", "*")], &files(&list)).await;
    let mut reader = host.joined("reader", "general").await;
    let mut writer = host.joined("writer", "general").await;
    let raw = "<script>alert(1)</script><b>hi</b>";
    ack_ok_send(&mut writer, raw).await;
    let delivered = reader
        .next_event_where("message:new", ms(5000), |m| m["userId"] == "writer")
        .await
        .expect("message:new");
    let sanitized = delivered["content"].as_str().expect("content").to_string();
    assert_ne!(sanitized, raw);
    let store = host.store().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let row = loop {
        let rows = store.events(100).await.expect("events");
        if let Some(r) = rows.into_iter().find(|r| r.event_type == "message:send") {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no message:send audit row"
        );
        tokio::time::sleep(ms(50)).await;
    };
    assert_eq!(
        row.payload["contentLength"],
        json!(sanitized.chars().count()),
        "audited {} for the sanitized {sanitized:?} (raw {} chars)",
        row.payload,
        raw.chars().count()
    );
    assert!(
        !row.payload.to_string().contains("hi"),
        "no content in the audit row: {}",
        row.payload
    );
}

async fn ack_ok_send(c: &mut nself_realtime_tests::SioClient, content: &str) {
    let ack = c.send_message("general", content).await;
    assert_eq!(ack["success"], json!(true), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_policy_rejects_a_join_without_the_role() {
    let list = vec![file("room-policy")];
    let host = TestHost::start_with_plugins(&[], &files(&list)).await;
    host.create_room(
        "staff-lounge",
        nself_realtime_tests::RoomType::Channel,
        nself_realtime_tests::Visibility::Public,
        None,
    )
    .await;
    let mut guest = host.client("guest").await;
    let ack = guest
        .emit_ack("room:join", json!({"roomName": "staff-lounge"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(false), "{ack}");
    let code = ack["error"]["code"].as_str().unwrap_or_default();
    assert!(
        code == "POLICY_REJECTED" || code == "ROOM_ACCESS_DENIED",
        "{ack}"
    );
    assert_eq!(ack["error"]["details"]["plugin"], "room-policy", "{ack}");

    let staff_token = token(json!({"userId": "boss", "roles": ["staff"]}), TEST_SECRET);
    let mut staff = nself_realtime_tests::SioClient::connect(&host.url(), Some(&staff_token))
        .await
        .expect("connect");
    let ack = staff
        .emit_ack("room:join", json!({"roomName": "staff-lounge"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    // Rooms without the prefix are not the module's business.
    let ack = guest
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_rejects_a_burst() {
    let mut list = vec![file("rate-limiter")];
    list.push((
        "rate-limiter.toml".into(),
        br#"config = '{"limit": 5, "windowMs": 60000}'"#.to_vec(),
    ));
    let host = TestHost::start_with_plugins(&[], &files(&list)).await;
    let mut sender = host.joined("chatty", "general").await;
    let mut ok = 0;
    let mut limited = Vec::new();
    for i in 0..8 {
        let ack = sender.send_message("general", &format!("m{i}")).await;
        if ack["success"] == json!(true) {
            ok += 1;
        } else {
            limited.push(ack);
        }
    }
    assert_eq!(ok, 5, "limit 5 per window: {limited:?}");
    assert_eq!(limited.len(), 3);
    for ack in &limited {
        assert_eq!(ack["error"]["code"], "RATE_LIMIT_EXCEEDED", "{ack}");
        assert_eq!(ack["error"]["details"]["plugin"], "rate-limiter", "{ack}");
    }
    // Another user has a budget of their own.
    let mut other = host.joined("quiet", "general").await;
    let ack = other.send_message("general", "hello").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_record_the_deciding_module() {
    let list = vec![file("room-policy")];
    let host =
        TestHost::start_with_plugins(&[("REALTIME_LOG_EVENT_TYPES", "*")], &files(&list)).await;
    host.create_room(
        "staff-room",
        nself_realtime_tests::RoomType::Channel,
        nself_realtime_tests::Visibility::Public,
        None,
    )
    .await;
    let mut guest = host.client("guest").await;
    let ack = guest
        .emit_ack("room:join", json!({"roomName": "staff-room"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(false), "{ack}");
    // The writer commits behind; poll the store for the audit row.
    let store = host.store().await;
    let deadline = std::time::Instant::now() + ms(5000);
    loop {
        let rows = store.events(50).await.expect("events");
        let hit = rows.iter().find(|r| r.event_type == "error");
        if let Some(r) = hit {
            assert_eq!(r.payload["event"], "room:join", "{:?}", r.payload);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit row: {rows:?}"
        );
        tokio::time::sleep(ms(50)).await;
    }
    let db = sqlx::SqlitePool::connect(&host.database_url)
        .await
        .expect("db");
    let meta: Option<String> = sqlx::query_scalar(
        "SELECT metadata FROM realtime_events WHERE event_type = 'error' LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .expect("row");
    let meta: Value = serde_json::from_str(&meta.expect("metadata")).expect("json");
    let policy = &meta["policy"][0];
    assert_eq!(policy["module"], "room-policy", "{meta}");
    assert_eq!(policy["verdict"], "reject", "{meta}");
    assert!(
        policy["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{meta}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_compiled_module_from_the_cache() {
    let cache = tempfile::tempdir().expect("cache dir");
    let cache_dir = cache.path().display().to_string();
    let vars = [("REALTIME_PLUGIN_CACHE_DIR", cache_dir.as_str())];
    let list = vec![file("profanity")];
    let mut first = TestHost::start_with_plugins(&vars, &files(&list)).await;
    first.shutdown().await.expect("shutdown");
    let artifacts: Vec<_> = std::fs::read_dir(cache.path())
        .expect("read cache")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(artifacts[0].extension().is_some_and(|x| x == "cwasm"));
    let written = std::fs::metadata(&artifacts[0])
        .and_then(|m| m.modified())
        .expect("mtime");
    tokio::time::sleep(ms(20)).await;

    let second = TestHost::start_with_plugins(&vars, &files(&list)).await;
    let status = second.http_request("/metrics/plugins", &[]).await.json();
    assert_eq!(status["plugins"][0]["status"], "loaded", "{status}");
    // Loaded from the artifact: not compiled (and rewritten) again.
    let again = std::fs::metadata(&artifacts[0])
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(written, again, "the cached artifact was rewritten");
    let mut sender = second.joined("sender", "general").await;
    let ack = sender.send_message("general", "fine words").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
}
