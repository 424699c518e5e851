//! The PostgreSQL backend (`DATABASE_URL=postgres://…`): the original plugin's schema, so an
//! operator keeps their SQL, views and dashboards.
//!
//! Every statement is a fixed string with bound parameters. A batch of write-behind operations
//! is one transaction: the audit rows of a batch go in as one multi-row `INSERT … SELECT FROM
//! UNNEST(…)`, the rest row by row in queue order. Every write is idempotent (audit rows carry
//! their id, the others are upserts or updates), so a batch retried after an ambiguous failure
//! writes nothing twice.

use std::borrow::Cow;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{Acquire, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::{
    Backend, Change, ConnectionRow, EventRow, KeptHistory, Member, MemberOp, NewRoom, Offline,
    Position, Role, Room, RoomCount, Stats, StoreError, Watermark, WriteOp, stats_from_rows,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The notification channel of the cache-invalidation triggers.
const CHANNEL: &str = "realtime_cache";

/// Key of the advisory lock that makes the crash janitor run on one node at a time.
const JANITOR_LOCK: i64 = 0x6e73_656c_665f_726a; // "nself_rj"

pub(super) struct PgBackend {
    pool: PgPool,
    /// This server's node id, set in the writer's transactions (`realtime.origin`).
    origin: std::sync::OnceLock<String>,
}

impl PgBackend {
    /// Opens a pool. With `strict`, the database must answer and the migrations are applied
    /// now; otherwise the pool connects lazily and [`PgBackend::migrate`] is retried by the
    /// caller (the server starts while the database is down).
    pub(super) async fn connect(url: &str, strict: bool) -> Result<PgBackend, StoreError> {
        let opts = PgConnectOptions::from_str(url)?.application_name("nself-realtime");
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            // An event never waits long for a connection: reads fall back to the cache and
            // writes are queued.
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(opts);
        let backend = PgBackend {
            pool,
            origin: Default::default(),
        };
        if strict {
            backend.migrate().await?;
        }
        Ok(backend)
    }

    /// Opens an existing, initialized database without migrating; an unreachable server is
    /// named by host:port.
    pub(super) async fn connect_existing(url: &str) -> Result<PgBackend, StoreError> {
        let opts = PgConnectOptions::from_str(url)?.application_name("nself-realtime");
        let at = format!("{}:{}", opts.get_host(), opts.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(|e| {
                StoreError::NotInitialized(format!("PostgreSQL at {at} did not answer: {e}"))
            })?;
        let applied: Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await;
        super::check_schema(
            applied,
            MIGRATOR.iter().count(),
            &format!("PostgreSQL at {at}"),
        )?;
        Ok(PgBackend {
            pool,
            origin: Default::default(),
        })
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

/// PostgreSQL text cannot hold NUL: it becomes U+FFFD (the rest is stored verbatim).
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn opt_text(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(text)
}

/// The same for every string (and key) inside a JSON value (`jsonb` refuses `\u0000`).
fn json(v: &Value) -> Cow<'_, Value> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    fn clean(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(text(s).into_owned()),
            Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (text(k).into_owned(), clean(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    if has_nul(v) {
        Cow::Owned(clean(v))
    } else {
        Cow::Borrowed(v)
    }
}

fn opt_json(v: &Option<Value>) -> Option<Cow<'_, Value>> {
    v.as_ref().map(json)
}

/// A UUID column value from text; anything else is NULL (a bad id never fails a batch).
fn uuid_of(s: &Option<String>) -> Option<Uuid> {
    s.as_deref().and_then(|s| Uuid::parse_str(s).ok())
}

/// An INET column value; anything that is not an IP address is NULL.
fn ip_of(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .and_then(|s| s.parse::<IpAddr>().ok())
        .map(|ip| ip.to_string())
}

fn room_from_row(row: &PgRow) -> Result<Room, StoreError> {
    let room_type: Option<String> = row.try_get("type")?;
    let visibility: Option<String> = row.try_get("visibility")?;
    let json = |col: &str| -> Value {
        row.try_get::<Option<Value>, _>(col)
            .ok()
            .flatten()
            .unwrap_or(Value::Object(Default::default()))
    };
    Ok(Room {
        id: row.try_get::<Uuid, _>("id")?.to_string(),
        name: row.try_get("name")?,
        room_type: room_type
            .as_deref()
            .unwrap_or("channel")
            .parse()
            .map_err(StoreError::Corrupt)?,
        visibility: visibility
            .as_deref()
            .unwrap_or("public")
            .parse()
            .map_err(StoreError::Corrupt)?,
        max_members: row.try_get("max_members")?,
        is_active: row.try_get::<Option<bool>, _>("is_active")?.unwrap_or(true),
        settings: json("settings"),
        metadata: json("metadata"),
        created_at: row
            .try_get::<Option<DateTime<Utc>>, _>("created_at")?
            .unwrap_or_default(),
    })
}

fn member_from_row(r: &PgRow) -> Result<Member, StoreError> {
    Ok(Member {
        user_id: r.try_get("user_id")?,
        role: Role::from_row(r.try_get::<Option<String>, _>("role")?.as_deref()),
        is_muted: r.try_get::<Option<bool>, _>("is_muted")?.unwrap_or(false),
        is_banned: r.try_get::<Option<bool>, _>("is_banned")?.unwrap_or(false),
    })
}

/// The audit rows of a batch, column by column, for one `UNNEST` insert.
#[derive(Default)]
struct EventColumns {
    id: Vec<Uuid>,
    event_type: Vec<String>,
    socket_id: Vec<Option<String>>,
    user_id: Vec<Option<String>>,
    room_id: Vec<Option<Uuid>>,
    payload: Vec<Value>,
    ip: Vec<Option<String>>,
    metadata: Vec<Option<Value>>,
    at: Vec<DateTime<Utc>>,
}

impl EventColumns {
    /// Inserts the rows. The plain statement lets the foreign key check the room ids; when a
    /// room went away since its event (the key refuses the batch), the batch is inserted again
    /// with such room ids set to NULL, as `ON DELETE SET NULL` would have left them.
    async fn insert(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.id.is_empty() {
            return Ok(());
        }
        let mut attempt = tx.begin().await?;
        match self.statement(false).execute(&mut *attempt).await {
            Ok(_) => attempt.commit().await,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(FOREIGN_KEY_VIOLATION) => {
                attempt.rollback().await?;
                self.statement(true).execute(&mut **tx).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    fn statement(&self, check_rooms: bool) -> sqlx::query::Query<'_, Postgres, PgArguments> {
        // One statement, two ways to take the room id: as given (the foreign key checks it)
        // or looked up (NULL for a room that is gone). Compile-time text only.
        macro_rules! insert_events {
            ($room_id:literal) => {
                concat!(
                    "INSERT INTO realtime_events (id, event_type, socket_id, user_id, room_id, \
                     payload, ip_address, metadata, created_at) \
                     SELECT e.id, e.event_type, e.socket_id, e.user_id, ",
                    $room_id,
                    ", e.payload, e.ip::inet, e.metadata, e.created_at \
                     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], \
                     $6::jsonb[], $7::text[], $8::jsonb[], $9::timestamptz[]) \
                     AS e(id, event_type, socket_id, user_id, room_id, payload, ip, metadata, \
                     created_at) \
                     ON CONFLICT (id) DO NOTHING"
                )
            };
        }
        const PLAIN: &str = insert_events!("e.room_id");
        const CHECKED: &str =
            insert_events!("(SELECT r.id FROM realtime_rooms r WHERE r.id = e.room_id)");
        sqlx::query(if check_rooms { CHECKED } else { PLAIN })
            .bind(&self.id)
            .bind(&self.event_type)
            .bind(&self.socket_id)
            .bind(&self.user_id)
            .bind(&self.room_id)
            .bind(&self.payload)
            .bind(&self.ip)
            .bind(&self.metadata)
            .bind(&self.at)
    }
}

/// SQLSTATE of a foreign key violation.
const FOREIGN_KEY_VIOLATION: &str = "23503";

async fn apply_one(tx: &mut Transaction<'_, Postgres>, op: &WriteOp) -> Result<(), sqlx::Error> {
    match op {
        WriteOp::ConnectionOpened { .. }
        | WriteOp::ConnectionClosed { .. }
        | WriteOp::Ping { .. }
        | WriteOp::Pong { .. } => apply_connection(tx, op).await,
        WriteOp::Presence { .. } | WriteOp::Heartbeat { .. } => apply_presence(tx, op).await,
        WriteOp::TypingSet { .. } | WriteOp::TypingClear { .. } => apply_typing(tx, op).await,
        WriteOp::MemberJoin { .. } | WriteOp::MemberSeen { .. } | WriteOp::MemberLeave { .. } => {
            apply_membership(tx, op).await
        }
        WriteOp::Event { .. } => unreachable!("audit rows are inserted in bulk"),
        WriteOp::MessageKept {
            room,
            epoch,
            offset,
            message,
            at,
            expires_at,
        } => {
            sqlx::query(
                "INSERT INTO realtime_messages (room_name, epoch, msg_offset, message, created_at, \
                 expires_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(text(room).into_owned())
            .bind(text(epoch).into_owned())
            .bind(i64::try_from(*offset).unwrap_or(i64::MAX))
            .bind(json(message).into_owned())
            .bind(at)
            .bind(expires_at)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
    }
}

/// Connection rows: opened, closed, ping and pong times.
async fn apply_connection(
    tx: &mut Transaction<'_, Postgres>,
    op: &WriteOp,
) -> Result<(), sqlx::Error> {
    match op {
        WriteOp::ConnectionOpened {
            socket_id,
            user_id,
            session_id,
            transport,
            ip,
            user_agent,
            device_info,
            node_id,
            at,
        } => {
            sqlx::query(
                "INSERT INTO realtime_connections (socket_id, user_id, session_id, status, \
                 transport, ip_address, user_agent, device_info, connected_at, last_ping, \
                 last_pong, node_id) \
                 VALUES ($1, $2, $3, 'connected', $4, $5::inet, $6, $7, $8, $8, $8, $9) \
                 ON CONFLICT (socket_id) DO UPDATE SET status = 'connected', \
                 disconnected_at = NULL, node_id = EXCLUDED.node_id",
            )
            .bind(socket_id)
            .bind(opt_text(user_id))
            .bind(opt_text(session_id))
            .bind(transport)
            .bind(ip_of(ip))
            .bind(opt_text(user_agent))
            .bind(opt_json(device_info).map(|v| v.into_owned()))
            .bind(at)
            .bind(node_id)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::ConnectionClosed { socket_id, at } => {
            sqlx::query(
                "UPDATE realtime_connections SET status = 'disconnected', disconnected_at = $1 \
                 WHERE socket_id = $2",
            )
            .bind(at)
            .bind(socket_id)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::Ping { socket_id, at } => {
            sqlx::query("UPDATE realtime_connections SET last_ping = $1 WHERE socket_id = $2")
                .bind(at)
                .bind(socket_id)
                .execute(&mut **tx)
                .await?;
        }
        WriteOp::Pong {
            socket_id,
            latency_ms,
            at,
        } => {
            sqlx::query(
                "UPDATE realtime_connections SET last_pong = $1, latency_ms = $2 \
                 WHERE socket_id = $3",
            )
            .bind(at)
            .bind(latency_ms)
            .bind(socket_id)
            .execute(&mut **tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Presence rows: a user's whole row, and heartbeats.
async fn apply_presence(
    tx: &mut Transaction<'_, Postgres>,
    op: &WriteOp,
) -> Result<(), sqlx::Error> {
    match op {
        WriteOp::Presence {
            user_id,
            status,
            custom_status,
            custom_emoji,
            expires_at,
            connections_count,
            at,
        } => {
            sqlx::query(
                "INSERT INTO realtime_presence (user_id, status, custom_status, custom_emoji, \
                 expires_at, connections_count, last_active, last_heartbeat, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, $7) \
                 ON CONFLICT (user_id) DO UPDATE SET status = EXCLUDED.status, \
                 custom_status = EXCLUDED.custom_status, custom_emoji = EXCLUDED.custom_emoji, \
                 expires_at = EXCLUDED.expires_at, connections_count = EXCLUDED.connections_count, \
                 last_active = EXCLUDED.last_active, last_heartbeat = EXCLUDED.last_heartbeat",
            )
            .bind(text(user_id))
            .bind(status)
            .bind(opt_text(custom_status))
            .bind(opt_text(custom_emoji))
            .bind(expires_at)
            .bind(connections_count)
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::Heartbeat {
            user_id,
            at,
            last_active,
        } => {
            sqlx::query(
                "UPDATE realtime_presence SET last_heartbeat = $1, \
                 last_active = COALESCE($3, last_active) WHERE user_id = $2",
            )
            .bind(at)
            .bind(text(user_id))
            .bind(last_active)
            .execute(&mut **tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Typing rows: set (or refreshed) and cleared.
async fn apply_typing(tx: &mut Transaction<'_, Postgres>, op: &WriteOp) -> Result<(), sqlx::Error> {
    match op {
        WriteOp::TypingSet {
            room_id,
            user_id,
            thread_id,
            started_at,
            expires_at,
        } => {
            sqlx::query(
                "INSERT INTO realtime_typing (room_id, user_id, thread_id, started_at, expires_at) \
                 SELECT r.id, $2, $3, $4, $5 FROM realtime_rooms r WHERE r.id = $1 \
                 ON CONFLICT (room_id, user_id, (COALESCE(thread_id, ''))) DO UPDATE SET \
                 started_at = EXCLUDED.started_at, expires_at = EXCLUDED.expires_at",
            )
            .bind(uuid_of(&Some(room_id.clone())))
            .bind(text(user_id))
            .bind(opt_text(thread_id))
            .bind(started_at)
            .bind(expires_at)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::TypingClear {
            room_id,
            user_id,
            thread_id,
        } => {
            sqlx::query(
                "DELETE FROM realtime_typing WHERE room_id = $1 AND user_id = $2 \
                 AND thread_id IS NOT DISTINCT FROM $3",
            )
            .bind(uuid_of(&Some(room_id.clone())))
            .bind(text(user_id))
            .bind(opt_text(thread_id))
            .execute(&mut **tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Membership rows: a join (new row), a join again (`last_seen`), a leave.
async fn apply_membership(
    tx: &mut Transaction<'_, Postgres>,
    op: &WriteOp,
) -> Result<(), sqlx::Error> {
    match op {
        WriteOp::MemberJoin {
            room_id,
            user_id,
            at,
        } => {
            sqlx::query(
                "INSERT INTO realtime_room_members (room_id, user_id, role, joined_at, last_seen) \
                 SELECT r.id, $2, 'member', $3, $3 FROM realtime_rooms r WHERE r.id = $1 \
                 ON CONFLICT (room_id, user_id) DO UPDATE SET last_seen = EXCLUDED.last_seen",
            )
            .bind(uuid_of(&Some(room_id.clone())))
            .bind(text(user_id))
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::MemberSeen {
            room_id,
            user_id,
            at,
        } => {
            sqlx::query(
                "UPDATE realtime_room_members SET last_seen = $3 WHERE room_id = $1 AND user_id = $2",
            )
            .bind(uuid_of(&Some(room_id.clone())))
            .bind(text(user_id))
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::MemberLeave { room_id, user_id } => {
            sqlx::query("DELETE FROM realtime_room_members WHERE room_id = $1 AND user_id = $2")
                .bind(uuid_of(&Some(room_id.clone())))
                .bind(text(user_id))
                .execute(&mut **tx)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

#[async_trait]
impl Backend for PgBackend {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_room(&self, room: &NewRoom) -> Result<Room, StoreError> {
        // Insert-or-read in one statement; an existing room is returned unchanged.
        let row = sqlx::query(
            "WITH ins AS ( \
               INSERT INTO realtime_rooms (name, type, visibility, max_members, settings) \
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING RETURNING * \
             ) \
             SELECT * FROM ins UNION ALL \
             SELECT * FROM realtime_rooms WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM ins)",
        )
        .bind(&room.name)
        .bind(room.room_type.as_str())
        .bind(room.visibility.as_str())
        .bind(room.max_members)
        .bind(json(&room.settings).into_owned())
        .fetch_one(&self.pool)
        .await?;
        room_from_row(&row)
    }

    async fn room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        let row = sqlx::query("SELECT * FROM realtime_rooms WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(room_from_row).transpose()
    }

    async fn rooms(&self, active_only: bool) -> Result<Vec<Room>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM realtime_rooms WHERE COALESCE(is_active, TRUE) OR NOT $1 \
             ORDER BY created_at, name",
        )
        .bind(active_only)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(room_from_row).collect()
    }

    async fn set_room_active(&self, name: &str, active: bool) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE realtime_rooms SET is_active = $1 WHERE name = $2")
            .bind(active)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn set_room_settings(&self, name: &str, settings: &Value) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE realtime_rooms SET settings = $1 WHERE name = $2")
            .bind(json(settings).into_owned())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn add_member(
        &self,
        room: &str,
        user_id: &str,
        role: &str,
        muted: bool,
        banned: bool,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "INSERT INTO realtime_room_members (room_id, user_id, role, is_muted, is_banned) \
             SELECT id, $2, $3, $4, $5 FROM realtime_rooms WHERE name = $1 \
             ON CONFLICT (room_id, user_id) DO UPDATE SET role = EXCLUDED.role, \
             is_muted = EXCLUDED.is_muted, is_banned = EXCLUDED.is_banned",
        )
        .bind(room)
        .bind(user_id)
        .bind(role)
        .bind(muted)
        .bind(banned)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::RoomNotFound(room.into()));
        }
        Ok(())
    }

    async fn remove_member(&self, room: &str, user_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "DELETE FROM realtime_room_members WHERE user_id = $2 \
             AND room_id = (SELECT id FROM realtime_rooms WHERE name = $1)",
        )
        .bind(room)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn members(&self, room_id: &str) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id, role, is_muted, is_banned FROM realtime_room_members \
             WHERE room_id = $1 ORDER BY joined_at, user_id",
        )
        .bind(uuid_of(&Some(room_id.to_string())))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    async fn user_memberships(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, Member)>, StoreError> {
        let ids: Vec<Cow<'_, str>> = user_ids.iter().map(|u| text(u)).collect();
        let rows = sqlx::query(
            "SELECT room_id::text AS room_id, user_id, role, is_muted, is_banned \
             FROM realtime_room_members WHERE user_id = ANY($1) AND room_id IS NOT NULL",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("room_id")?, member_from_row(r)?)))
            .collect()
    }

    async fn member_counts(&self) -> Result<(Vec<RoomCount>, Watermark), StoreError> {
        // One snapshot for both reads: the watermark says which notifications the counts
        // already include.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let snap = sqlx::query(
            "SELECT txid_snapshot_xmin(s)::bigint AS xmin, txid_snapshot_xmax(s)::bigint AS xmax, \
             ARRAY(SELECT txid_snapshot_xip(s))::bigint[] AS running \
             FROM (SELECT txid_current_snapshot() AS s) AS snap",
        )
        .fetch_one(&mut *tx)
        .await?;
        let watermark = Watermark::Snapshot {
            xmin: snap.try_get("xmin")?,
            xmax: snap.try_get("xmax")?,
            running: snap.try_get("running")?,
        };
        let rows = sqlx::query(
            "SELECT room_id::text AS room_id, COUNT(*) AS n, \
             COUNT(*) FILTER (WHERE is_muted OR is_banned) AS s FROM realtime_room_members \
             WHERE room_id IS NOT NULL GROUP BY room_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let counts = rows
            .iter()
            .map(|r| {
                Ok(RoomCount {
                    room_id: r.try_get("room_id")?,
                    members: r.try_get("n")?,
                    sanctioned: r.try_get::<Option<i64>, _>("s")?.unwrap_or(0),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((counts, watermark))
    }

    fn set_origin(&self, node_id: &str) {
        let _ = self.origin.set(node_id.to_string());
    }

    async fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(origin) = self.origin.get()
            && ops.iter().any(WriteOp::is_membership)
        {
            // The membership notifications of this transaction name this node.
            sqlx::query("SELECT set_config('realtime.origin', $1, true)")
                .bind(origin)
                .execute(&mut *tx)
                .await?;
        }
        let mut events = EventColumns::default();
        for op in ops {
            if let WriteOp::Event {
                id,
                event_type,
                socket_id,
                user_id,
                room_id,
                payload,
                ip,
                metadata,
                at,
            } = op
            {
                let owned = |s: &Option<String>| opt_text(s).map(Cow::into_owned);
                events.id.push(*id);
                events.event_type.push(text(event_type).into_owned());
                events.socket_id.push(owned(socket_id));
                events.user_id.push(owned(user_id));
                events.room_id.push(uuid_of(room_id));
                events.payload.push(json(payload).into_owned());
                events.ip.push(ip_of(ip));
                events
                    .metadata
                    .push(opt_json(metadata).map(Cow::into_owned));
                events.at.push(*at);
            } else {
                apply_one(&mut tx, op).await?;
            }
        }
        events.insert(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let row = sqlx::query(
            "SELECT \
             (SELECT COUNT(*) FROM realtime_connections WHERE status = 'connected') AS active, \
             (SELECT COUNT(*) FROM realtime_connections WHERE status = 'connected' \
                AND user_id IS NOT NULL) AS authed, \
             (SELECT COUNT(*) FROM realtime_rooms WHERE COALESCE(is_active, TRUE)) AS active_rooms, \
             (SELECT COUNT(*) FROM realtime_rooms) AS total_rooms, \
             (SELECT COUNT(*) FROM realtime_events \
                WHERE created_at > NOW() - INTERVAL '1 hour') AS events_hour, \
             (SELECT COUNT(*) FROM realtime_events) AS events_total",
        )
        .fetch_one(&self.pool)
        .await?;
        let presence = sqlx::query(
            "SELECT COALESCE(status, 'offline') AS status, COUNT(*) AS n \
             FROM realtime_presence GROUP BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        stats_from_rows(&row, &presence)
    }

    async fn offline_users(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM realtime_presence WHERE status = 'offline'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn connections(&self) -> Result<Vec<ConnectionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT socket_id, user_id, node_id, transport, latency_ms, connected_at \
             FROM realtime_connections WHERE status = 'connected' ORDER BY connected_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ConnectionRow {
                    socket_id: r.try_get("socket_id")?,
                    user_id: r.try_get("user_id")?,
                    node_id: r.try_get("node_id")?,
                    transport: r.try_get("transport")?,
                    latency_ms: r.try_get("latency_ms")?,
                    connected_at: r
                        .try_get::<Option<DateTime<Utc>>, _>("connected_at")?
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn events(&self, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_type, socket_id, user_id, room_id, payload, created_at \
             FROM realtime_events ORDER BY created_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    event_type: r.try_get("event_type")?,
                    socket_id: r.try_get("socket_id")?,
                    user_id: r.try_get("user_id")?,
                    room_id: r
                        .try_get::<Option<Uuid>, _>("room_id")?
                        .map(|u| u.to_string()),
                    payload: r
                        .try_get::<Option<Value>, _>("payload")?
                        .unwrap_or(Value::Null),
                    created_at: r
                        .try_get::<Option<DateTime<Utc>>, _>("created_at")?
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn start_node(&self, node_id: &str, lease: Duration) -> Result<(), StoreError> {
        // Other nodes may be live: only this node's own earlier rows are reset (a node that
        // keeps its id across restarts), and its lease is taken.
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE realtime_connections SET status = 'disconnected', disconnected_at = NOW() \
             WHERE node_id = $1 AND status = 'connected'",
        )
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
        upsert_lease(&mut tx, node_id, lease).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn renew_lease(&self, node_id: &str, lease: Duration) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE realtime_nodes SET lease_expires_at = NOW() + $2 * INTERVAL '1 millisecond' \
             WHERE node_id = $1",
        )
        .bind(node_id)
        .bind(lease.as_millis() as f64)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() > 0 {
            return Ok(true);
        }
        let mut tx = self.pool.begin().await?;
        upsert_lease(&mut tx, node_id, lease).await?;
        tx.commit().await?;
        Ok(false)
    }

    async fn end_node(&self, node_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM realtime_nodes WHERE node_id = $1")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn reap_dead_nodes(&self) -> Result<Vec<Offline>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(JANITOR_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(Vec::new());
        }
        let dead: Vec<String> = sqlx::query_scalar(
            "DELETE FROM realtime_nodes WHERE lease_expires_at < NOW() RETURNING node_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Connections of a dead node, and connections left by a node that never had a lease
        // row (or lost it) whose id is not live any more.
        let users: Vec<String> = sqlx::query_scalar::<_, Option<String>>(
            "UPDATE realtime_connections SET status = 'disconnected', disconnected_at = NOW() \
             WHERE status = 'connected' AND node_id IS NOT NULL \
               AND (node_id = ANY($1) \
                    OR NOT EXISTS (SELECT 1 FROM realtime_nodes n WHERE n.node_id = realtime_connections.node_id)) \
             RETURNING user_id",
        )
        .bind(&dead)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .flatten()
        .collect::<std::collections::BTreeSet<String>>()
        .into_iter()
        .collect();
        if users.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        // Recompute the presence of those users from the connections that are still live.
        let offline: Vec<String> = sqlx::query_scalar::<_, Option<String>>(
            "WITH live AS ( \
               SELECT u.user_id, COUNT(c.socket_id)::int AS n FROM UNNEST($1::text[]) AS u(user_id) \
               LEFT JOIN realtime_connections c ON c.user_id = u.user_id AND c.status = 'connected' \
               GROUP BY u.user_id) \
             UPDATE realtime_presence p SET connections_count = live.n, \
               status = CASE WHEN live.n = 0 THEN 'offline' ELSE p.status END \
             FROM live WHERE p.user_id = live.user_id \
             RETURNING CASE WHEN live.n = 0 THEN p.user_id END",
        )
        .bind(&users)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .flatten()
        .collect();
        // The rooms each of them is a member of: who is told under presence scope `rooms`.
        let rooms: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT m.user_id, array_agg(r.name ORDER BY r.name) \
             FROM realtime_room_members m JOIN realtime_rooms r ON r.id = m.room_id \
             WHERE m.user_id = ANY($1) GROUP BY m.user_id",
        )
        .bind(&offline)
        .fetch_all(&mut *tx)
        .await?;
        let mut rooms: std::collections::HashMap<String, Vec<String>> = rooms.into_iter().collect();
        tx.commit().await?;
        let offline: Vec<Offline> = offline
            .into_iter()
            .map(|user_id| Offline {
                rooms: rooms.remove(&user_id).unwrap_or_default(),
                user_id,
            })
            .collect();
        tracing::info!(
            nodes = dead.len(),
            users = users.len(),
            offline = offline.len(),
            "reaped connections of dead nodes"
        );
        Ok(offline)
    }

    async fn reset_live_state(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE realtime_connections SET status = 'disconnected', disconnected_at = NOW() \
             WHERE status <> 'disconnected'",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE realtime_presence SET status = 'offline', connections_count = 0 \
             WHERE status <> 'offline' OR connections_count <> 0",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM realtime_typing")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn kept_history(
        &self,
        room: &str,
        limit: i64,
    ) -> Result<Option<KeptHistory>, StoreError> {
        let newest = sqlx::query(
            "SELECT epoch, MAX(msg_offset) AS last FROM realtime_messages WHERE room_name = $1 \
             AND epoch = (SELECT epoch FROM realtime_messages WHERE room_name = $1 \
                          ORDER BY created_at DESC, msg_offset DESC LIMIT 1) GROUP BY epoch",
        )
        .bind(room)
        .fetch_optional(&self.pool)
        .await?;
        let Some(newest) = newest else {
            return Ok(None);
        };
        let epoch: String = newest.try_get("epoch")?;
        let last: i64 = newest.try_get("last")?;
        let rows = sqlx::query(
            "SELECT msg_offset, message, created_at FROM ( \
               SELECT msg_offset, message, created_at FROM realtime_messages \
               WHERE room_name = $1 AND epoch = $2 AND expires_at > NOW() \
               ORDER BY msg_offset DESC LIMIT $3) newest ORDER BY msg_offset",
        )
        .bind(room)
        .bind(&epoch)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            let offset: i64 = r.try_get("msg_offset")?;
            entries.push((
                offset.max(0) as u64,
                r.try_get::<Value, _>("message")?,
                r.try_get::<DateTime<Utc>, _>("created_at")?,
            ));
        }
        Ok(Some(KeptHistory {
            epoch,
            last: last.max(0) as u64,
            entries,
        }))
    }

    async fn cleanup(&self, events_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let typing = sqlx::query("DELETE FROM realtime_typing WHERE expires_at < NOW()")
            .execute(&self.pool)
            .await?;
        let events = sqlx::query("DELETE FROM realtime_events WHERE created_at < $1")
            .bind(events_before)
            .execute(&self.pool)
            .await?;
        let messages = sqlx::query("DELETE FROM realtime_messages WHERE expires_at < NOW()")
            .execute(&self.pool)
            .await?;
        Ok(typing.rows_affected() + events.rows_affected() + messages.rows_affected())
    }

    async fn watch(
        &self,
        on_change: &(dyn Fn(Change) + Send + Sync),
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut delay = Duration::from_millis(200);
        loop {
            let listener = async {
                let mut l = PgListener::connect_with(&self.pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                l = listener => l,
                _ = stop.cancelled() => return,
            };
            match listener.as_mut() {
                Ok(l) => {
                    // Anything may have changed while nobody listened.
                    on_change(Change::All);
                    delay = Duration::from_millis(200);
                    loop {
                        let next = tokio::select! {
                            n = l.try_recv() => n,
                            _ = stop.cancelled() => return,
                        };
                        match next {
                            Ok(Some(n)) => on_change(parse_change(n.payload())),
                            // The connection was lost; the listener reconnects on the next
                            // call, and notifications sent meanwhile are lost.
                            Ok(None) => on_change(Change::All),
                            Err(e) => {
                                tracing::warn!(error = %e, "cache invalidation feed lost");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cache invalidation feed unavailable"),
            }
            on_change(Change::All);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

async fn upsert_lease(
    tx: &mut Transaction<'_, Postgres>,
    node_id: &str,
    lease: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO realtime_nodes (node_id, hostname, pid, lease_expires_at) \
         VALUES ($1, $2, $3, NOW() + $4 * INTERVAL '1 millisecond') \
         ON CONFLICT (node_id) DO UPDATE SET lease_expires_at = EXCLUDED.lease_expires_at, \
         hostname = EXCLUDED.hostname, pid = EXCLUDED.pid",
    )
    .bind(node_id)
    .bind(crate::util::hostname())
    .bind(std::process::id() as i32)
    .bind(lease.as_millis() as f64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A notification of the invalidation triggers: `{"room": name}` or `{"roomId", "userId"}`.
fn parse_change(payload: &str) -> Change {
    let Ok(v) = serde_json::from_str::<Value>(payload) else {
        return Change::All;
    };
    if let Some(name) = v.get("room").and_then(Value::as_str) {
        return Change::Room(name.to_string());
    }
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    let (Some(room_id), Some(user_id)) = (field("roomId"), field("userId")) else {
        return Change::All;
    };
    let op = match field("op") {
        Some("insert") => MemberOp::Insert,
        Some("update") => MemberOp::Update,
        Some("delete") => MemberOp::Delete,
        // A notification of the first schema (no operation): re-read everything.
        _ => return Change::All,
    };
    let member = (op != MemberOp::Delete).then(|| Member {
        user_id: user_id.to_string(),
        role: Role::from_row(field("role")),
        is_muted: v.get("muted").and_then(Value::as_bool).unwrap_or(false),
        is_banned: v.get("banned").and_then(Value::as_bool).unwrap_or(false),
    });
    Change::Member {
        room_id: room_id.to_string(),
        user_id: user_id.to_string(),
        op,
        member,
        origin: field("origin").map(str::to_string),
        position: v
            .get("tx")
            .and_then(Value::as_i64)
            .map_or(Position::Unknown, Position::Tx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse() {
        assert!(matches!(parse_change(r#"{"room":"a"}"#), Change::Room(n) if n == "a"));
        assert_eq!(
            parse_change(
                r#"{"roomId":"r","userId":"u:1","op":"insert","role":"admin","muted":true,"banned":false,"origin":"n1","tx":42}"#
            ),
            Change::Member {
                room_id: "r".into(),
                user_id: "u:1".into(),
                op: MemberOp::Insert,
                member: Some(Member {
                    user_id: "u:1".into(),
                    role: Role::Admin,
                    is_muted: true,
                    is_banned: false,
                }),
                origin: Some("n1".into()),
                position: Position::Tx(42),
            }
        );
        assert_eq!(
            parse_change(r#"{"roomId":"r","userId":"u","op":"delete","origin":null}"#),
            Change::Member {
                room_id: "r".into(),
                user_id: "u".into(),
                op: MemberOp::Delete,
                member: None,
                origin: None,
                position: Position::Unknown,
            }
        );
        // The first schema's notification carried no operation: everything is re-read.
        assert_eq!(parse_change(r#"{"roomId":"r","userId":"u"}"#), Change::All);
        assert!(matches!(parse_change("garbage"), Change::All));
        assert_eq!(ip_of(&Some("10.0.0.1".into())).as_deref(), Some("10.0.0.1"));
        assert_eq!(ip_of(&Some("x'; DROP TABLE".into())), None);
        assert_eq!(uuid_of(&Some("general".into())), None);
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert_eq!(
            json(&serde_json::json!({"k\0": ["x\0"]})).into_owned(),
            serde_json::json!({"k\u{FFFD}": ["x\u{FFFD}"]})
        );
    }
}
