//! The embedded SQLite backend (the default: `sqlite://./data/realtime.db`).
//!
//! WAL mode with `synchronous=NORMAL`: one writer (the batching writer) and concurrent
//! readers. Every statement is a fixed string with bound parameters.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use tokio_util::sync::CancellationToken;

use super::{
    Backend, Change, ConnectionRow, EventRow, KeptHistory, Member, MemberOp, NewRoom, Offline,
    Position, Role, Room, RoomCount, Stats, StoreError, Watermark, WriteOp, parse_ts,
    stats_from_rows, ts,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

pub(super) struct SqliteBackend {
    pool: SqlitePool,
    /// This server's node id, written to `realtime_cache_origin` inside the writer's
    /// transactions that change memberships.
    origin: std::sync::OnceLock<String>,
}

/// How often the change table is read.
const FEED_POLL: Duration = Duration::from_millis(200);
/// Changes older than this are deleted from the change table (every server has read them).
const FEED_KEEP: Duration = Duration::from_secs(120);

fn new_id() -> String {
    Uuid::new_v4().to_string()
}

fn json_text(v: &Option<Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

fn room_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Room, StoreError> {
    let parse_json = |col: &str| -> Value {
        row.try_get::<String, _>(col)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Object(Default::default()))
    };
    let room_type: String = row.try_get("type")?;
    let visibility: String = row.try_get("visibility")?;
    Ok(Room {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        room_type: room_type.parse().map_err(StoreError::Corrupt)?,
        visibility: visibility.parse().map_err(StoreError::Corrupt)?,
        max_members: row.try_get("max_members")?,
        is_active: row.try_get::<i64, _>("is_active")? != 0,
        settings: parse_json("settings"),
        metadata: parse_json("metadata"),
        created_at: parse_ts(&row.try_get::<String, _>("created_at")?)?,
    })
}

impl SqliteBackend {
    pub(super) async fn connect(url: &str) -> Result<SqliteBackend, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = Path::new(opts.get_filename()).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteBackend {
            pool,
            origin: Default::default(),
        })
    }

    /// Opens an existing, initialized database without creating or migrating anything.
    pub(super) async fn connect_existing(url: &str) -> Result<SqliteBackend, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let file = Path::new(opts.get_filename()).to_path_buf();
        if !file.is_file() {
            return Err(StoreError::NotInitialized(format!(
                "no database at {}: check DATABASE_URL, or create it with `nself-realtime init`",
                file.display()
            )));
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        let applied: Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await;
        super::check_schema(
            applied,
            MIGRATOR.iter().count(),
            &file.display().to_string(),
        )?;
        Ok(SqliteBackend {
            pool,
            origin: Default::default(),
        })
    }
}

async fn apply_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    op: &WriteOp,
) -> Result<(), sqlx::Error> {
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
                 expires_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(room)
            .bind(epoch)
            .bind(i64::try_from(*offset).unwrap_or(i64::MAX))
            .bind(message.to_string())
            .bind(ts(*at))
            .bind(ts(*expires_at))
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
        WriteOp::Event {
            id,
            event_type,
            socket_id,
            user_id,
            room_id,
            payload,
            ip,
            metadata,
            at,
        } => {
            sqlx::query(
                "INSERT INTO realtime_events (id, event_type, socket_id, user_id, room_id, payload, \
                 ip_address, metadata, created_at) VALUES (?, ?, ?, ?, \
                 (SELECT id FROM realtime_rooms WHERE id = ?), ?, ?, ?, ?) \
                 ON CONFLICT(id) DO NOTHING",
            )
            .bind(id.to_string())
            .bind(event_type)
            .bind(socket_id)
            .bind(user_id)
            .bind(room_id)
            .bind(payload.to_string())
            .bind(ip)
            .bind(json_text(metadata))
            .bind(ts(*at))
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
    }
}

/// Connection rows: opened, closed, ping and pong times.
async fn apply_connection(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
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
                "INSERT INTO realtime_connections (id, socket_id, user_id, session_id, status, \
                 transport, ip_address, user_agent, device_info, connected_at, last_ping, last_pong, node_id) \
                 VALUES (?, ?, ?, ?, 'connected', ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT(socket_id) DO UPDATE SET status = 'connected', disconnected_at = NULL",
            )
            .bind(new_id())
            .bind(socket_id)
            .bind(user_id)
            .bind(session_id)
            .bind(transport)
            .bind(ip)
            .bind(user_agent)
            .bind(json_text(device_info))
            .bind(ts(*at))
            .bind(ts(*at))
            .bind(ts(*at))
            .bind(node_id)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::ConnectionClosed { socket_id, at } => {
            sqlx::query(
                "UPDATE realtime_connections SET status = 'disconnected', disconnected_at = ? \
                 WHERE socket_id = ?",
            )
            .bind(ts(*at))
            .bind(socket_id)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::Ping { socket_id, at } => {
            sqlx::query("UPDATE realtime_connections SET last_ping = ? WHERE socket_id = ?")
                .bind(ts(*at))
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
                "UPDATE realtime_connections SET last_pong = ?, latency_ms = ? WHERE socket_id = ?",
            )
            .bind(ts(*at))
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
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
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
                "INSERT INTO realtime_presence (id, user_id, status, custom_status, custom_emoji, \
                 expires_at, connections_count, last_active, last_heartbeat, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT(user_id) DO UPDATE SET status = excluded.status, \
                 custom_status = excluded.custom_status, custom_emoji = excluded.custom_emoji, \
                 expires_at = excluded.expires_at, connections_count = excluded.connections_count, \
                 last_active = excluded.last_active, last_heartbeat = excluded.last_heartbeat, \
                 updated_at = excluded.updated_at",
            )
            .bind(new_id())
            .bind(user_id)
            .bind(status)
            .bind(custom_status)
            .bind(custom_emoji)
            .bind(expires_at.map(ts))
            .bind(connections_count)
            .bind(ts(*at))
            .bind(ts(*at))
            .bind(ts(*at))
            .bind(ts(*at))
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::Heartbeat {
            user_id,
            at,
            last_active,
        } => {
            sqlx::query(
                "UPDATE realtime_presence SET last_heartbeat = ?, updated_at = ?, \
                 last_active = COALESCE(?, last_active) WHERE user_id = ?",
            )
            .bind(ts(*at))
            .bind(ts(*at))
            .bind(last_active.map(ts))
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Typing rows: set (or refreshed) and cleared.
async fn apply_typing(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    op: &WriteOp,
) -> Result<(), sqlx::Error> {
    match op {
        WriteOp::TypingSet {
            room_id,
            user_id,
            thread_id,
            started_at,
            expires_at,
        } => {
            sqlx::query(
                "INSERT INTO realtime_typing (id, room_id, user_id, thread_id, started_at, expires_at) \
                 VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT(room_id, user_id, COALESCE(thread_id, '')) DO UPDATE SET \
                 started_at = excluded.started_at, expires_at = excluded.expires_at",
            )
            .bind(new_id())
            .bind(room_id)
            .bind(user_id)
            .bind(thread_id)
            .bind(ts(*started_at))
            .bind(ts(*expires_at))
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::TypingClear {
            room_id,
            user_id,
            thread_id,
        } => {
            sqlx::query(
                "DELETE FROM realtime_typing WHERE room_id = ? AND user_id = ? \
                 AND thread_id IS ?",
            )
            .bind(room_id)
            .bind(user_id)
            .bind(thread_id)
            .execute(&mut **tx)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Membership rows: a join (new row), a join again (`last_seen`), a leave.
async fn apply_membership(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    op: &WriteOp,
) -> Result<(), sqlx::Error> {
    match op {
        WriteOp::MemberJoin {
            room_id,
            user_id,
            at,
        } => {
            sqlx::query(
                "INSERT INTO realtime_room_members (id, room_id, user_id, role, joined_at, last_seen) \
                 SELECT ?, id, ?, 'member', ?, ? FROM realtime_rooms WHERE id = ? \
                 ON CONFLICT(room_id, user_id) DO UPDATE SET last_seen = excluded.last_seen",
            )
            .bind(new_id())
            .bind(user_id)
            .bind(ts(*at))
            .bind(ts(*at))
            .bind(room_id)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::MemberSeen {
            room_id,
            user_id,
            at,
        } => {
            sqlx::query(
                "UPDATE realtime_room_members SET last_seen = ? WHERE room_id = ? AND user_id = ?",
            )
            .bind(ts(*at))
            .bind(room_id)
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
        }
        WriteOp::MemberLeave { room_id, user_id } => {
            sqlx::query("DELETE FROM realtime_room_members WHERE room_id = ? AND user_id = ?")
                .bind(room_id)
                .bind(user_id)
                .execute(&mut **tx)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_room(&self, room: &NewRoom) -> Result<Room, StoreError> {
        let now = ts(Utc::now());
        let row = sqlx::query(
            "INSERT INTO realtime_rooms (id, name, type, visibility, max_members, settings, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT(name) DO UPDATE SET updated_at = excluded.updated_at RETURNING *",
        )
        .bind(new_id())
        .bind(&room.name)
        .bind(room.room_type.as_str())
        .bind(room.visibility.as_str())
        .bind(room.max_members)
        .bind(room.settings.to_string())
        .bind(&now)
        .bind(&now)
        .fetch_one(&self.pool)
        .await?;
        room_from_row(&row)
    }

    async fn room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        let row = sqlx::query("SELECT * FROM realtime_rooms WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(room_from_row).transpose()
    }

    async fn rooms(&self, active_only: bool) -> Result<Vec<Room>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM realtime_rooms WHERE is_active = 1 OR ? = 0 ORDER BY created_at, name",
        )
        .bind(active_only)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(room_from_row).collect()
    }

    async fn set_room_active(&self, name: &str, active: bool) -> Result<bool, StoreError> {
        let r =
            sqlx::query("UPDATE realtime_rooms SET is_active = ?, updated_at = ? WHERE name = ?")
                .bind(active)
                .bind(ts(Utc::now()))
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn set_room_settings(&self, name: &str, settings: &Value) -> Result<bool, StoreError> {
        let r =
            sqlx::query("UPDATE realtime_rooms SET settings = ?, updated_at = ? WHERE name = ?")
                .bind(settings.to_string())
                .bind(ts(Utc::now()))
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
        let now = ts(Utc::now());
        let r = sqlx::query(
            "INSERT INTO realtime_room_members (id, room_id, user_id, role, is_muted, is_banned, joined_at, last_seen) \
             SELECT ?, id, ?, ?, ?, ?, ?, ? FROM realtime_rooms WHERE name = ? \
             ON CONFLICT(room_id, user_id) DO UPDATE SET role = excluded.role, \
             is_muted = excluded.is_muted, is_banned = excluded.is_banned",
        )
        .bind(new_id())
        .bind(user_id)
        .bind(role)
        .bind(muted)
        .bind(banned)
        .bind(&now)
        .bind(&now)
        .bind(room)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::RoomNotFound(room.into()));
        }
        Ok(())
    }

    async fn remove_member(&self, room: &str, user_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "DELETE FROM realtime_room_members WHERE user_id = ? \
             AND room_id = (SELECT id FROM realtime_rooms WHERE name = ?)",
        )
        .bind(user_id)
        .bind(room)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn members(&self, room_id: &str) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id, role, is_muted, is_banned FROM realtime_room_members \
             WHERE room_id = ? ORDER BY joined_at, user_id",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    async fn user_memberships(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, Member)>, StoreError> {
        let ids =
            serde_json::to_string(user_ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "SELECT room_id, user_id, role, is_muted, is_banned FROM realtime_room_members \
             WHERE user_id IN (SELECT value FROM json_each(?))",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("room_id")?, member_from_row(r)?)))
            .collect()
    }

    async fn member_counts(&self) -> Result<(Vec<RoomCount>, Watermark), StoreError> {
        // One read transaction: the counts and the feed position they include.
        let mut tx = self.pool.begin().await?;
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM realtime_cache_changes")
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT room_id, COUNT(*) AS n, SUM(is_muted <> 0 OR is_banned <> 0) AS s \
             FROM realtime_room_members GROUP BY room_id",
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
        Ok((counts, Watermark::Seq(seq.unwrap_or(0))))
    }

    fn set_origin(&self, node_id: &str) {
        let _ = self.origin.set(node_id.to_string());
    }

    async fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let origin = self
            .origin
            .get()
            .filter(|_| ops.iter().any(WriteOp::is_membership));
        if let Some(origin) = origin {
            // The change rows this transaction's triggers append name this node; the marker
            // row is gone again before the commit.
            sqlx::query("INSERT OR REPLACE INTO realtime_cache_origin (id, node) VALUES (1, ?)")
                .bind(origin)
                .execute(&mut *tx)
                .await?;
        }
        for op in ops {
            apply_one(&mut tx, op).await?;
        }
        if origin.is_some() {
            sqlx::query("DELETE FROM realtime_cache_origin")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let hour_ago = ts(Utc::now() - chrono::Duration::hours(1));
        let row = sqlx::query(
            "SELECT \
             (SELECT COUNT(*) FROM realtime_connections WHERE status = 'connected') AS active, \
             (SELECT COUNT(*) FROM realtime_connections WHERE status = 'connected' AND user_id IS NOT NULL) AS authed, \
             (SELECT COUNT(*) FROM realtime_rooms WHERE is_active = 1) AS active_rooms, \
             (SELECT COUNT(*) FROM realtime_rooms) AS total_rooms, \
             (SELECT COUNT(*) FROM realtime_events WHERE created_at > ?) AS events_hour, \
             (SELECT COUNT(*) FROM realtime_events) AS events_total",
        )
        .bind(hour_ago)
        .fetch_one(&self.pool)
        .await?;
        let presence =
            sqlx::query("SELECT status, COUNT(*) AS n FROM realtime_presence GROUP BY status")
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
                    connected_at: parse_ts(&r.try_get::<String, _>("connected_at")?)?,
                })
            })
            .collect()
    }

    async fn events(&self, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_type, socket_id, user_id, room_id, payload, created_at FROM realtime_events \
             ORDER BY created_at DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let payload: String = r.try_get("payload")?;
                Ok(EventRow {
                    event_type: r.try_get("event_type")?,
                    socket_id: r.try_get("socket_id")?,
                    user_id: r.try_get("user_id")?,
                    room_id: r.try_get("room_id")?,
                    payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
                    created_at: parse_ts(&r.try_get::<String, _>("created_at")?)?,
                })
            })
            .collect()
    }

    async fn reset_live_state(&self) -> Result<(), StoreError> {
        let now = ts(Utc::now());
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE realtime_connections SET status = 'disconnected', disconnected_at = ? \
             WHERE status <> 'disconnected'",
        )
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE realtime_presence SET status = 'offline', connections_count = 0, updated_at = ? \
             WHERE status <> 'offline' OR connections_count <> 0",
        )
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM realtime_typing")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn start_node(&self, _node_id: &str, _lease: Duration) -> Result<(), StoreError> {
        // One node per SQLite file: whatever a previous run left live is stale.
        self.reset_live_state().await
    }

    async fn renew_lease(&self, _node_id: &str, _lease: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn end_node(&self, _node_id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn reap_dead_nodes(&self) -> Result<Vec<Offline>, StoreError> {
        Ok(Vec::new())
    }

    async fn watch(&self, on_change: &(dyn Fn(Change) + Send + Sync), stop: CancellationToken) {
        // Start after what is there now: the caller loads the rows themselves.
        let mut last: Option<i64> = None;
        let mut pruned = std::time::Instant::now();
        let mut interval = tokio::time::interval(FEED_POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.cancelled() => return,
            }
            let Some(seq) = last else {
                match sqlx::query_scalar::<_, Option<i64>>(
                    "SELECT MAX(seq) FROM realtime_cache_changes",
                )
                .fetch_one(&self.pool)
                .await
                {
                    Ok(max) => {
                        last = Some(max.unwrap_or(0));
                        // Whatever changed before the feed was read is re-read.
                        on_change(Change::All);
                    }
                    Err(e) => tracing::debug!(error = %e, "cache change feed unavailable"),
                }
                continue;
            };
            match self.changes_after(seq).await {
                Ok(changes) => {
                    for (seq, change) in changes {
                        last = Some(seq);
                        on_change(change);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cache change feed lost");
                    last = None;
                }
            }
            if pruned.elapsed() >= FEED_KEEP / 4 {
                pruned = std::time::Instant::now();
                let before =
                    ts(Utc::now() - chrono::Duration::from_std(FEED_KEEP).unwrap_or_default());
                if let Err(e) =
                    sqlx::query("DELETE FROM realtime_cache_changes WHERE created_at < ?")
                        .bind(before)
                        .execute(&self.pool)
                        .await
                {
                    tracing::debug!(error = %e, "cache change feed not pruned");
                }
            }
        }
    }

    async fn kept_history(
        &self,
        room: &str,
        limit: i64,
    ) -> Result<Option<KeptHistory>, StoreError> {
        let newest = sqlx::query(
            "SELECT epoch, MAX(msg_offset) AS last FROM realtime_messages WHERE room_name = ?1 \
             AND epoch = (SELECT epoch FROM realtime_messages WHERE room_name = ?1 \
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
               WHERE room_name = ? AND epoch = ? AND expires_at > ? \
               ORDER BY msg_offset DESC LIMIT ?) ORDER BY msg_offset",
        )
        .bind(room)
        .bind(&epoch)
        .bind(ts(Utc::now()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            let offset: i64 = r.try_get("msg_offset")?;
            let message: String = r.try_get("message")?;
            entries.push((
                offset.max(0) as u64,
                serde_json::from_str(&message).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                parse_ts(&r.try_get::<String, _>("created_at")?)?,
            ));
        }
        Ok(Some(KeptHistory {
            epoch,
            last: last.max(0) as u64,
            entries,
        }))
    }

    async fn cleanup(&self, events_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = ts(Utc::now());
        let typing = sqlx::query("DELETE FROM realtime_typing WHERE expires_at < ?")
            .bind(&now)
            .execute(&self.pool)
            .await?;
        let events = sqlx::query("DELETE FROM realtime_events WHERE created_at < ?")
            .bind(ts(events_before))
            .execute(&self.pool)
            .await?;
        let messages = sqlx::query("DELETE FROM realtime_messages WHERE expires_at < ?")
            .bind(&now)
            .execute(&self.pool)
            .await?;
        Ok(typing.rows_affected() + events.rows_affected() + messages.rows_affected())
    }
}

impl SqliteBackend {
    /// The changes after `seq`, oldest first (at most 1,000 a call).
    async fn changes_after(&self, seq: i64) -> Result<Vec<(i64, Change)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, room, room_id, user_id, op, role, is_muted, is_banned, origin \
             FROM realtime_cache_changes WHERE seq > ? ORDER BY seq LIMIT 1000",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: i64 = r.try_get("seq")?;
            let op: String = r.try_get("op")?;
            let room: Option<String> = r.try_get("room")?;
            let room_id: Option<String> = r.try_get("room_id")?;
            let user_id: Option<String> = r.try_get("user_id")?;
            let change = match (op.as_str(), room, room_id, user_id) {
                ("room", Some(name), _, _) => Change::Room(name),
                (op, _, Some(room_id), Some(user_id)) => {
                    let op = match op {
                        "insert" => MemberOp::Insert,
                        "update" => MemberOp::Update,
                        _ => MemberOp::Delete,
                    };
                    let member = match op {
                        MemberOp::Delete => None,
                        _ => Some(Member {
                            user_id: user_id.clone(),
                            role: Role::from_row(
                                r.try_get::<Option<String>, _>("role")?.as_deref(),
                            ),
                            is_muted: r.try_get::<Option<i64>, _>("is_muted")?.unwrap_or(0) != 0,
                            is_banned: r.try_get::<Option<i64>, _>("is_banned")?.unwrap_or(0) != 0,
                        }),
                    };
                    Change::Member {
                        room_id,
                        user_id,
                        op,
                        member,
                        origin: r.try_get("origin")?,
                        position: Position::Seq(seq),
                    }
                }
                _ => Change::All,
            };
            out.push((seq, change));
        }
        Ok(out)
    }
}

fn member_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<Member, StoreError> {
    Ok(Member {
        user_id: r.try_get("user_id")?,
        role: Role::from_row(r.try_get::<Option<String>, _>("role")?.as_deref()),
        is_muted: r.try_get::<i64, _>("is_muted")? != 0,
        is_banned: r.try_get::<i64, _>("is_banned")? != 0,
    })
}
