//! SPEC §9 on PostgreSQL: the migrations apply twice and on top of the original plugin's
//! schema; after a scripted session of joins, messages, typing and presence every view and
//! function of the original exists and returns sane rows.

use nself_realtime::store::Store;
use nself_realtime_tests::pg::{FreshDb, wait_count};
use nself_realtime_tests::{RoomType, TestHost, Visibility, ack_ok, ms};
use serde_json::json;
use sqlx::Row;
use sqlx::postgres::PgConnection;

const MIGRATION: &str = include_str!("../../migrations/postgres/0001_initial.sql");

/// Counts of the schema objects the product owns (tables, views, functions, triggers).
async fn schema_shape(c: &mut PgConnection) -> (i64, i64, i64, i64) {
    let row = sqlx::query(
        "SELECT \
         (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public' \
            AND table_type = 'BASE TABLE' AND table_name LIKE 'realtime_%') AS tables, \
         (SELECT COUNT(*) FROM information_schema.views WHERE table_schema = 'public' \
            AND table_name LIKE 'realtime_%') AS views, \
         (SELECT COUNT(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
            WHERE n.nspname = 'public' AND p.proname IN ('cleanup_expired_typing', \
            'update_presence_from_activity', 'disconnect_stale_connections', \
            'update_room_timestamp', 'update_presence_timestamp')) AS functions, \
         (SELECT COUNT(*) FROM pg_trigger WHERE tgname IN ('trigger_update_room_timestamp', \
            'trigger_update_presence_timestamp')) AS triggers",
    )
    .fetch_one(&mut *c)
    .await
    .expect("schema shape");
    (
        row.get("tables"),
        row.get("views"),
        row.get("functions"),
        row.get("triggers"),
    )
}

#[tokio::test]
async fn migrations_apply_twice() {
    let db = FreshDb::create().await;
    Store::connect(&db.url).await.expect("first migration run");
    Store::connect(&db.url).await.expect("second migration run");
    let mut c = db.connect().await;
    // The SQL itself is idempotent too (an operator may run it by hand).
    sqlx::raw_sql(MIGRATION)
        .execute(&mut c)
        .await
        .expect("migration SQL re-run by hand");
    // 6 tables of the original + realtime_nodes and realtime_messages; 4 views; 5 functions;
    // 2 triggers.
    assert_eq!(schema_shape(&mut c).await, (8, 4, 5, 2));
}

/// The original plugin's schema (its tables.sql as the reference describes it, including the
/// NULL-thread duplicates its typing UNIQUE let through), then nself-realtime's migrations.
#[tokio::test]
async fn migrations_apply_over_the_original_schema() {
    let db = FreshDb::create().await;
    let mut c = db.connect().await;
    sqlx::raw_sql(
        r#"
        CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
        CREATE TABLE realtime_connections (id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
          socket_id VARCHAR(255) UNIQUE NOT NULL, user_id VARCHAR(255), session_id VARCHAR(255),
          status VARCHAR(20) DEFAULT 'connected', transport VARCHAR(20), ip_address INET,
          user_agent TEXT, device_info JSONB, connected_at TIMESTAMPTZ DEFAULT NOW(),
          disconnected_at TIMESTAMPTZ, last_ping TIMESTAMPTZ DEFAULT NOW(),
          last_pong TIMESTAMPTZ DEFAULT NOW(), latency_ms INTEGER, metadata JSONB DEFAULT '{}');
        CREATE TABLE realtime_rooms (id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
          name VARCHAR(255) UNIQUE NOT NULL, type VARCHAR(50) DEFAULT 'channel',
          visibility VARCHAR(20) DEFAULT 'public', max_members INTEGER,
          is_active BOOLEAN DEFAULT TRUE, settings JSONB DEFAULT '{}', metadata JSONB DEFAULT '{}',
          created_at TIMESTAMPTZ DEFAULT NOW(), updated_at TIMESTAMPTZ DEFAULT NOW());
        CREATE TABLE realtime_room_members (id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
          room_id UUID REFERENCES realtime_rooms(id) ON DELETE CASCADE,
          user_id VARCHAR(255) NOT NULL, role VARCHAR(50) DEFAULT 'member',
          is_muted BOOLEAN DEFAULT FALSE, is_banned BOOLEAN DEFAULT FALSE,
          joined_at TIMESTAMPTZ DEFAULT NOW(), last_seen TIMESTAMPTZ DEFAULT NOW(), metadata JSONB,
          UNIQUE(room_id, user_id));
        CREATE TABLE realtime_presence (id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
          user_id VARCHAR(255) UNIQUE NOT NULL, status VARCHAR(20) DEFAULT 'offline',
          custom_status TEXT, custom_emoji VARCHAR(100), last_active TIMESTAMPTZ DEFAULT NOW(),
          last_heartbeat TIMESTAMPTZ DEFAULT NOW(), expires_at TIMESTAMPTZ,
          connections_count INTEGER DEFAULT 0, metadata JSONB,
          created_at TIMESTAMPTZ DEFAULT NOW(), updated_at TIMESTAMPTZ DEFAULT NOW());
        CREATE TABLE realtime_typing (id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
          room_id UUID REFERENCES realtime_rooms(id) ON DELETE CASCADE,
          user_id VARCHAR(255) NOT NULL, thread_id VARCHAR(255),
          started_at TIMESTAMPTZ DEFAULT NOW(), expires_at TIMESTAMPTZ NOT NULL,
          UNIQUE(room_id, user_id, thread_id));
        CREATE TABLE realtime_events (id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
          event_type VARCHAR(100) NOT NULL, socket_id VARCHAR(255), user_id VARCHAR(255),
          room_id UUID REFERENCES realtime_rooms(id) ON DELETE SET NULL,
          payload JSONB DEFAULT '{}', ip_address INET, metadata JSONB,
          created_at TIMESTAMPTZ DEFAULT NOW());
        CREATE FUNCTION update_room_timestamp() RETURNS TRIGGER AS $$
        BEGIN NEW.updated_at = NOW(); RETURN NEW; END; $$ LANGUAGE plpgsql;
        CREATE TRIGGER trigger_update_room_timestamp BEFORE UPDATE ON realtime_rooms
          FOR EACH ROW EXECUTE FUNCTION update_room_timestamp();
        INSERT INTO realtime_rooms (name) VALUES ('general');
        INSERT INTO realtime_typing (room_id, user_id, thread_id, started_at, expires_at)
          SELECT id, 'dup', NULL, NOW() - INTERVAL '2 seconds', NOW() + INTERVAL '1 hour' FROM realtime_rooms;
        INSERT INTO realtime_typing (room_id, user_id, thread_id, started_at, expires_at)
          SELECT id, 'dup', NULL, NOW(), NOW() + INTERVAL '1 hour' FROM realtime_rooms;
        INSERT INTO realtime_connections (socket_id, user_id) VALUES ('old-socket', 'carol');
        "#,
    )
    .execute(&mut c)
    .await
    .expect("the original schema");
    Store::connect(&db.url)
        .await
        .expect("nself-realtime migrations over the original schema");
    assert_eq!(schema_shape(&mut c).await, (8, 4, 5, 2));
    let dups: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM realtime_typing WHERE user_id = 'dup'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(dups, 1, "NULL-thread duplicates are merged");
    // The original's rows are kept.
    let kept: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM realtime_connections WHERE socket_id = 'old-socket' AND user_id = 'carol'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(kept, 1);
    // Uniqueness now holds without a thread.
    let again = sqlx::query(
        "INSERT INTO realtime_typing (room_id, user_id, thread_id, expires_at) \
         SELECT id, 'dup', NULL, NOW() FROM realtime_rooms",
    )
    .execute(&mut c)
    .await;
    assert!(again.is_err(), "a second NULL-thread row must be refused");
}

#[tokio::test]
async fn views_and_functions_after_a_session() {
    let db = FreshDb::create().await;
    let host = TestHost::start(&[("DATABASE_URL", &db.url)]).await;
    host.create_room("lobby", RoomType::Channel, Visibility::Public, None)
        .await;
    let mut alice = host.joined("alice", "lobby").await;
    let mut bob = host.joined("bob", "lobby").await;
    ack_ok(&alice.send_message("lobby", "hello").await);
    alice.emit("typing:start", json!({"roomName": "lobby"}));
    alice.emit("typing:start", json!({"roomName": "lobby"}));
    bob.emit(
        "typing:start",
        json!({"roomName": "lobby", "threadId": "t1"}),
    );
    ack_ok(
        &bob.emit_ack(
            "presence:update",
            json!({"status": "busy", "customStatus": {"text": "In a meeting", "emoji": "📅"}}),
            ms(5000),
        )
        .await,
    );
    // Typing events reach the other side, so both starts were handled.
    bob.next_event("typing:event", ms(3000))
        .await
        .expect("alice's typing");

    let mut c = db.connect().await;
    wait_count(
        &mut c,
        "typing rows",
        "SELECT COUNT(*) FROM realtime_typing",
        2,
    )
    .await;
    wait_count(
        &mut c,
        "busy presence",
        "SELECT COUNT(*) FROM realtime_presence WHERE status = 'busy'",
        1,
    )
    .await;

    // realtime_active_connections: both sockets, with their user's presence.
    let rows = sqlx::query(
        "SELECT user_id, user_status, custom_status, custom_emoji FROM realtime_active_connections \
         ORDER BY user_id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let got: Vec<(String, String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r.get("user_id"),
                r.get("user_status"),
                r.get("custom_status"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("alice".into(), "online".into(), None),
            ("bob".into(), "busy".into(), Some("In a meeting".into())),
        ]
    );

    // realtime_room_stats: lobby has both members and their two live sockets.
    let lobby = sqlx::query(
        "SELECT member_count, active_connections, last_activity IS NOT NULL AS seen \
         FROM realtime_room_stats WHERE name = 'lobby'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(lobby.get::<i64, _>("member_count"), 2);
    assert_eq!(lobby.get::<i64, _>("active_connections"), 2);
    assert!(lobby.get::<bool, _>("seen"));

    // realtime_current_typing: alice once (no thread, started twice), bob in t1.
    let typing: Vec<(String, Option<String>, String)> = sqlx::query(
        "SELECT user_id, thread_id, room_name FROM realtime_current_typing ORDER BY user_id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("user_id"), r.get("thread_id"), r.get("room_name")))
    .collect();
    assert_eq!(
        typing,
        vec![
            ("alice".into(), None, "lobby".into()),
            ("bob".into(), Some("t1".into()), "lobby".into()),
        ]
    );

    // realtime_presence_summary: one online, one busy, both with a recent heartbeat.
    let summary: Vec<(String, i64, i64)> = sqlx::query(
        "SELECT status, user_count, recent_activity FROM realtime_presence_summary ORDER BY status",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("status"),
            r.get("user_count"),
            r.get("recent_activity"),
        )
    })
    .collect();
    assert_eq!(
        summary,
        vec![("busy".into(), 1, 1), ("online".into(), 1, 1)]
    );

    // The functions run; on fresh rows they change nothing.
    sqlx::raw_sql(
        "SELECT cleanup_expired_typing(); SELECT update_presence_from_activity(); \
         SELECT disconnect_stale_connections();",
    )
    .execute(&mut c)
    .await
    .expect("the three maintenance functions");
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM realtime_active_connections")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(live, 2, "fresh connections are not stale");
    // The activity rule: idle 10 minutes -> away; 40 minutes -> offline.
    sqlx::raw_sql(
        "UPDATE realtime_presence SET last_active = NOW() - INTERVAL '10 minutes' WHERE user_id = 'alice'; \
         SELECT update_presence_from_activity();",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let status: String =
        sqlx::query_scalar("SELECT status FROM realtime_presence WHERE user_id = 'alice'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(status, "away");
    // The updated_at triggers fire.
    let moved: bool = sqlx::query_scalar(
        "WITH before AS (SELECT updated_at FROM realtime_rooms WHERE name = 'lobby') \
         UPDATE realtime_rooms SET metadata = '{\"x\":1}' WHERE name = 'lobby' \
         RETURNING updated_at > (SELECT updated_at FROM before)",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(moved, "trigger_update_room_timestamp moves updated_at");
    let connects: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM realtime_events WHERE event_type = 'connect'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(connects, 2, "one audit row per connect");
}

/// Audit rows of a room deleted before the writer commits them are kept, with `room_id` NULL
/// (what the foreign key's `ON DELETE SET NULL` does to older rows); the rows of live rooms in
/// the same batch keep theirs; and a batch applied twice (a retry after an ambiguous commit)
/// writes nothing twice.
#[tokio::test]
async fn audit_rows_of_a_deleted_room_are_kept_without_the_room() {
    use nself_realtime::store::{NewRoom, WriteOp};
    let db = FreshDb::create().await;
    let store = Store::connect(&db.url).await.expect("store");
    let live = store.create_room(&NewRoom::new("live")).await.unwrap();
    let gone = store.create_room(&NewRoom::new("gone")).await.unwrap();
    let mut c = db.connect().await;
    sqlx::query("DELETE FROM realtime_rooms WHERE name = 'gone'")
        .execute(&mut c)
        .await
        .unwrap();
    let event = |room_id: &str, n: u32| WriteOp::Event {
        id: uuid::Uuid::now_v7(),
        event_type: "message:send".into(),
        socket_id: Some("s1".into()),
        user_id: Some("alice".into()),
        room_id: Some(room_id.to_string()),
        payload: json!({"n": n}),
        ip: Some("127.0.0.1".into()),
        metadata: None,
        at: chrono::Utc::now(),
    };
    let batch = vec![event(&live.id, 1), event(&gone.id, 2), event(&live.id, 3)];
    store.apply(&batch).await.expect("the batch commits");
    store.apply(&batch).await.expect("the same batch again");
    let rows: Vec<(i32, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT (payload->>'n')::int, room_id FROM realtime_events \
         WHERE event_type = 'message:send' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let live_id: uuid::Uuid = live.id.parse().unwrap();
    assert_eq!(
        rows,
        vec![(1, Some(live_id)), (2, None), (3, Some(live_id))],
        "every row once, the deleted room's as NULL"
    );
}

/// The directory's bulk count reads one snapshot and reports it: a change committed before
/// the read is included, one committed after is not; the feed announces memberships with
/// their row, origin and transaction.
#[tokio::test]
async fn bulk_member_counts_carry_their_snapshot() {
    use nself_realtime::store::{Change, MemberOp, NewRoom, Position};
    let db = FreshDb::create().await;
    let store = Store::connect(&db.url).await.expect("store");
    store
        .create_room(&NewRoom::new("counted"))
        .await
        .expect("room");
    store
        .add_member("counted", "a", "member", true, false)
        .await
        .expect("a");
    let (counts, before) = store.member_counts().await.expect("counts");
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!((counts[0].members, counts[0].sanctioned), (1, 1));
    // A change after the read is announced with a transaction the snapshot does not include.
    let changes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let feed = {
        let (store, changes, stop) = (store.clone(), changes.clone(), stop.clone());
        tokio::spawn(async move {
            let on_change = move |c: Change| changes.lock().expect("lock").push(c);
            store.watch(&on_change, stop).await;
        })
    };
    tokio::time::sleep(ms(300)).await;
    store
        .add_member("counted", "b", "admin", false, false)
        .await
        .expect("b");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let change = loop {
        let found = changes
            .lock()
            .expect("lock")
            .iter()
            .find(|c| matches!(c, Change::Member { user_id, .. } if user_id == "b"))
            .cloned();
        if let Some(c) = found {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no notification for b"
        );
        tokio::time::sleep(ms(50)).await;
    };
    stop.cancel();
    let _ = feed.await;
    let Change::Member {
        op,
        member,
        origin,
        position,
        ..
    } = change
    else {
        unreachable!()
    };
    assert_eq!(op, MemberOp::Insert);
    assert_eq!(member.map(|m| m.role.to_string()).as_deref(), Some("admin"));
    assert_eq!(origin, None, "a CLI change has no origin");
    assert!(matches!(position, Position::Tx(_)), "{position:?}");
    assert!(
        !before.includes(position),
        "a later change is not in the earlier read"
    );
    let (_, after) = store.member_counts().await.expect("counts again");
    assert!(
        after.includes(position),
        "a committed change is in a later read"
    );
}
