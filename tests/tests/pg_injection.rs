//! SQL injection on PostgreSQL: a corpus pushed through every string a client controls (room
//! names, message content, metadata, thread and client message ids, device info, user agent,
//! custom status, user ids in tokens). Each is stored verbatim or refused by validation; the
//! schema and the other rows are unchanged. And no SQL in the code is built with `format!`.

use std::path::Path;
use std::time::{Duration, Instant};

use nself_realtime_tests::pg::FreshDb;
use nself_realtime_tests::{ConnectOptions, SioClient, TestHost, ms, user_token};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgConnection;

const CORPUS: &[&str] = &[
    "'; DROP TABLE realtime_events; --",
    "\" OR \"1\"=\"1",
    "Robert'); DROP TABLE realtime_rooms;--",
    "1' OR '1'='1' /*",
    "$$; DELETE FROM realtime_presence; $$",
    "\\'; TRUNCATE realtime_connections; --",
    "%' UNION SELECT usename, passwd FROM pg_shadow --",
    "x'::text; SELECT pg_sleep(5); --",
    "E'\\x27'; COMMIT; DROP SCHEMA public CASCADE; --",
    "😀'; --",
];

/// Tables, views, functions, triggers and columns of the schema, as one comparable text.
async fn schema_fingerprint(c: &mut PgConnection) -> String {
    let rows = sqlx::query(
        "SELECT 'col ' || table_name || '.' || column_name || ' ' || data_type AS item \
           FROM information_schema.columns WHERE table_schema = 'public' \
         UNION ALL SELECT 'fn ' || proname FROM pg_proc p JOIN pg_namespace n \
           ON n.oid = p.pronamespace WHERE n.nspname = 'public' \
         UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal \
         ORDER BY 1",
    )
    .fetch_all(&mut *c)
    .await
    .expect("schema fingerprint");
    rows.iter()
        .map(|r| r.get::<String, _>("item"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn count(c: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&mut *c).await.unwrap()
}

async fn wait_count(c: &mut PgConnection, what: &str, sql: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = count(c, sql).await;
        if n >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {n} < {want}");
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_are_stored_verbatim_or_refused() {
    let db = FreshDb::create().await;
    let host =
        TestHost::start(&[("DATABASE_URL", &db.url), ("REALTIME_LOG_EVENT_TYPES", "*")]).await;
    let mut c = db.connect().await;
    let before = schema_fingerprint(&mut c).await;
    let rooms_before = count(&mut c, "SELECT COUNT(*) FROM realtime_rooms").await;

    let mut alice = host.joined("alice", "general").await;
    for (i, s) in CORPUS.iter().enumerate() {
        // Room names outside [A-Za-z0-9_.:@-] are refused by validation.
        let ack = alice
            .emit_ack("room:join", json!({"roomName": s}), ms(5000))
            .await;
        assert_eq!(ack["success"], json!(false), "{s}: {ack}");
        assert_eq!(
            ack["error"]["code"],
            json!("VALIDATION_ERROR"),
            "{s}: {ack}"
        );
        // Content, metadata, thread and client message ids go through.
        let cid = format!("{i}:{s}");
        let ack = alice
            .emit_ack(
                "message:send",
                json!({"roomName": "general", "content": s, "threadId": s,
                       "clientMessageId": cid, "metadata": {"k": s, "nested": [s]}}),
                ms(5000),
            )
            .await;
        assert_eq!(ack["success"], json!(true), "{s}: {ack}");
        alice.emit(
            "typing:start",
            json!({"roomName": "general", "threadId": s}),
        );
        let ack = alice
            .emit_ack(
                "presence:update",
                json!({"status": "busy", "customStatus": {"text": s, "emoji": "🙂"}}),
                ms(5000),
            )
            .await;
        assert_eq!(ack["success"], json!(true), "{s}: {ack}");
    }
    // Device info, user agent and the user id itself come from the handshake.
    let hostile_user = CORPUS[2];
    let opts = ConnectOptions {
        auth: Some(json!({"token": user_token(hostile_user), "device": {"name": CORPUS[0], "os": CORPUS[4]}})),
        ..ConnectOptions::default()
    }
    .header("User-Agent", CORPUS[5]);
    let mut mallory = SioClient::connect_with(&host.url(), opts)
        .await
        .expect("connect with hostile handshake strings");
    let ack = mallory
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");

    let n = CORPUS.len() as i64;
    wait_count(
        &mut c,
        "message:send audit rows",
        "SELECT COUNT(*) FROM realtime_events WHERE event_type = 'message:send'",
        n,
    )
    .await;
    wait_count(
        &mut c,
        "mallory's connection row",
        "SELECT COUNT(*) FROM realtime_connections WHERE device_info IS NOT NULL",
        1,
    )
    .await;
    // The last custom status is stored verbatim.
    wait_count(
        &mut c,
        "presence row",
        "SELECT COUNT(*) FROM realtime_presence WHERE user_id = 'alice' AND custom_status IS NOT NULL",
        1,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT custom_status FROM realtime_presence WHERE user_id = 'alice'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        if status.as_deref() == Some(CORPUS[n as usize - 1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "custom status stored as {status:?}"
        );
        tokio::time::sleep(ms(50)).await;
    }
    // Client message ids and thread ids are in the audit payloads, verbatim.
    let ids: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM realtime_events WHERE event_type = 'message:send' ORDER BY created_at",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for (i, s) in CORPUS.iter().enumerate() {
        let want = format!("{i}:{s}");
        assert!(
            ids.iter()
                .any(|p| p["clientMessageId"] == json!(want) && p["threadId"] == json!(s)),
            "audit payload with clientMessageId {want:?} missing"
        );
    }
    let row = sqlx::query(
        "SELECT user_id, user_agent, device_info FROM realtime_connections WHERE device_info IS NOT NULL",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("user_id"), hostile_user);
    assert_eq!(row.get::<String, _>("user_agent"), CORPUS[5]);
    assert_eq!(
        row.get::<Value, _>("device_info"),
        json!({"name": CORPUS[0], "os": CORPUS[4]})
    );
    // The membership is written by the batching writer: it may land a moment after the join.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let member: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM realtime_room_members m JOIN realtime_rooms r ON r.id = m.room_id \
             WHERE r.name = 'general' AND m.user_id = $1",
        )
        .bind(hostile_user)
        .fetch_one(&mut c)
        .await
        .unwrap();
        if member == 1 {
            break;
        }
        assert!(
            member == 0 && Instant::now() < deadline,
            "the hostile user id is a member, verbatim, once: {member}"
        );
        tokio::time::sleep(ms(50)).await;
    }

    // Nothing else changed.
    assert_eq!(schema_fingerprint(&mut c).await, before, "schema changed");
    assert_eq!(
        count(&mut c, "SELECT COUNT(*) FROM realtime_rooms").await,
        rooms_before
    );
    assert!(count(&mut c, "SELECT COUNT(*) FROM realtime_events").await >= n);
}

/// No SQL statement in the server is assembled with `format!`: every statement is a literal
/// with bound parameters. Flags a `format!` whose text starts with an SQL verb, and a query
/// call whose argument is a `format!`, anywhere under host/src.
#[test]
fn no_sql_is_built_with_format() {
    let sql_format = regex::Regex::new(
        r#"(?i)format!\(\s*r?#?"\s*(SELECT|INSERT|UPDATE|DELETE|DROP|CREATE|ALTER|TRUNCATE|WITH|GRANT|COPY)\b"#,
    )
    .unwrap();
    let query_format = regex::Regex::new(
        r"(query|query_scalar|query_as|raw_sql|execute|push)(::<[^>]*>)?\(\s*&?\s*format!",
    )
    .unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src");
    let mut offenders = Vec::new();
    let mut stack = vec![src];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read host/src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files += 1;
                let text = std::fs::read_to_string(&path).expect("read source");
                for re in [&sql_format, &query_format] {
                    for m in re.find_iter(&text) {
                        offenders.push(format!("{}: {}", path.display(), m.as_str()));
                    }
                }
            }
        }
    }
    assert!(files > 20, "host/src not found ({files} files)");
    // The patterns do match what they are meant to catch.
    assert!(sql_format.is_match(r#"format!("DROP TABLE {t}")"#));
    assert!(query_format.is_match(r#"sqlx::query(&format!("x"))"#));
    assert!(
        offenders.is_empty(),
        "SQL built from strings: {offenders:#?}"
    );
}
