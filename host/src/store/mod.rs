//! Persistence: the [`Backend`] trait, the cheap-clone [`Store`] handle, and the batching
//! [`writer`]. SQLite is the embedded default; the PostgreSQL backend implements the same trait.

pub mod cache;
#[cfg(test)]
pub(crate) mod fake;
mod model;
mod pg;
mod sqlite;
pub mod writer;

use std::sync::Arc;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

pub use model::*;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL names a backend this build does not have.
    #[error("unsupported database URL {0:?}")]
    Unsupported(String),
    /// The named room does not exist.
    #[error("room not found: {0}")]
    RoomNotFound(String),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Creating the database directory failed.
    #[error("cannot create database directory: {0}")]
    Io(#[from] std::io::Error),
    /// A read-only command found no database, or one without the current schema.
    #[error("{0}")]
    NotInitialized(String),
}

/// Everything a backend does. Implemented by SQLite (and PostgreSQL).
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Cheap liveness check.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Inserts a room, or returns the existing row of that name unchanged.
    async fn create_room(&self, room: &NewRoom) -> Result<Room, StoreError>;
    /// A room by name (active or not).
    async fn room(&self, name: &str) -> Result<Option<Room>, StoreError>;
    /// All rooms, or only active ones.
    async fn rooms(&self, active_only: bool) -> Result<Vec<Room>, StoreError>;
    /// Sets `is_active` of a room; false if no such room.
    async fn set_room_active(&self, name: &str, active: bool) -> Result<bool, StoreError>;
    /// Replaces a room's `settings`; false if no such room.
    async fn set_room_settings(
        &self,
        name: &str,
        settings: &serde_json::Value,
    ) -> Result<bool, StoreError>;
    /// Adds or updates a membership (CLI/API).
    async fn add_member(
        &self,
        room: &str,
        user_id: &str,
        role: &str,
        muted: bool,
        banned: bool,
    ) -> Result<(), StoreError>;
    /// Removes a membership; false if there was none.
    async fn remove_member(&self, room: &str, user_id: &str) -> Result<bool, StoreError>;
    /// All members of a room.
    async fn members(&self, room_id: &str) -> Result<Vec<Member>, StoreError>;
    /// Every membership of these users, as (room id, member row) (the directory loads the
    /// memberships of the users who connect, many users a query).
    async fn user_memberships(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, Member)>, StoreError>;
    /// The membership figures of every room that has members, and the watermark of the read
    /// (which announced changes it already includes).
    async fn member_counts(&self) -> Result<(Vec<RoomCount>, Watermark), StoreError>;
    /// Names this server's writer: membership changes it commits are announced with this
    /// origin, so the server's own cache can skip them (it applied them already). Set once.
    fn set_origin(&self, node_id: &str);
    /// Applies a batch of write-behind operations in one transaction.
    async fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError>;
    /// Figures for the CLI's `stats` (counts whole tables: never on an unauthenticated path).
    async fn stats(&self) -> Result<Stats, StoreError>;
    /// Users whose presence row says offline (an index count; refreshed in the background
    /// for `/metrics`).
    async fn offline_users(&self) -> Result<i64, StoreError>;
    /// Connected sockets, newest first.
    async fn connections(&self) -> Result<Vec<ConnectionRow>, StoreError>;
    /// The newest `limit` audit rows, newest first.
    async fn events(&self, limit: i64) -> Result<Vec<EventRow>, StoreError>;
    /// Marks every connected row disconnected and every user offline.
    async fn reset_live_state(&self) -> Result<(), StoreError>;
    /// A room's kept history (its newest epoch, at most `limit` unexpired messages), None
    /// when the database keeps none for it.
    async fn kept_history(&self, room: &str, limit: i64)
    -> Result<Option<KeptHistory>, StoreError>;
    /// Deletes expired typing rows and history messages, and audit rows older than
    /// `events_before`.
    async fn cleanup(&self, events_before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// A server starts: it takes its lease and starts from a clean slate for itself. SQLite
    /// serves one node, so there every live row is reset.
    async fn start_node(&self, node_id: &str, lease: Duration) -> Result<(), StoreError>;
    /// Renews this node's lease. False when the lease row was gone (another node reaped this
    /// one, e.g. after a long outage): the caller re-asserts its live state.
    async fn renew_lease(&self, node_id: &str, lease: Duration) -> Result<bool, StoreError>;
    /// A server stops cleanly: its lease row goes.
    async fn end_node(&self, node_id: &str) -> Result<(), StoreError>;
    /// Crash cleanup, on one node at a time: marks the connections of nodes whose lease expired
    /// as disconnected and recomputes their users' presence. Returns the users that went
    /// offline (no live connection left), each with the rooms they are a member of (who is
    /// told under `REALTIME_PRESENCE_SCOPE=rooms`).
    async fn reap_dead_nodes(&self) -> Result<Vec<Offline>, StoreError>;
    /// Calls `on_change` for every change of rooms and memberships the database announces,
    /// until `stop` (PostgreSQL: `LISTEN`; SQLite: the change table, polled). A feed that was
    /// interrupted reports [`Change::All`].
    async fn watch(&self, on_change: &(dyn Fn(Change) + Send + Sync), stop: CancellationToken);
}

/// Which database a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The embedded SQLite file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl BackendKind {
    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

/// A handle to the store. Cloning is cheap.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    kind: BackendKind,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("kind", &self.kind).finish()
    }
}

impl Store {
    /// Opens the database named by the URL and applies the migrations; fails when the
    /// database does not answer (the CLI).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::open(url, true).await.map(|(store, _)| store)
    }

    /// Opens an existing database for a read-only command: nothing is created and no
    /// migration runs. A missing SQLite file, an unreachable PostgreSQL (named by host:port)
    /// or a database whose schema is not the current one is an error that says what to do.
    pub async fn open_existing(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let backend = sqlite::SqliteBackend::connect_existing(url).await?;
            return Ok(Store {
                backend: Arc::new(backend),
                kind: BackendKind::Sqlite,
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let backend = pg::PgBackend::connect_existing(url).await?;
            return Ok(Store {
                backend: Arc::new(backend),
                kind: BackendKind::Postgres,
            });
        }
        Err(StoreError::Unsupported(url.into()))
    }

    /// Opens the database for a server. SQLite is opened and migrated now. PostgreSQL is
    /// migrated now when it answers; when it does not, the store is returned anyway with a
    /// task that applies the migrations once it does (the server starts degraded and keeps
    /// serving; writes wait in the queue).
    pub async fn open_for_server(
        url: &str,
    ) -> Result<(Store, Option<tokio::task::JoinHandle<()>>), StoreError> {
        Store::open(url, false).await
    }

    async fn open(
        url: &str,
        strict: bool,
    ) -> Result<(Store, Option<tokio::task::JoinHandle<()>>), StoreError> {
        if url.starts_with("sqlite:") {
            let backend = sqlite::SqliteBackend::connect(url).await?;
            let store = Store {
                backend: Arc::new(backend),
                kind: BackendKind::Sqlite,
            };
            return Ok((store, None));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let backend = Arc::new(pg::PgBackend::connect(url, strict).await?);
            let mut retry = None;
            if !strict {
                match backend.migrate().await {
                    Ok(()) => {}
                    Err(StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)))
                        if is_unreachable(&e) =>
                    {
                        tracing::error!(error = %e, "PostgreSQL unreachable at start: serving degraded; migrations are applied when it answers");
                        let b = backend.clone();
                        retry = Some(tokio::spawn(async move {
                            let mut delay = Duration::from_millis(500);
                            loop {
                                tokio::time::sleep(delay).await;
                                match b.migrate().await {
                                    Ok(()) => {
                                        tracing::info!("PostgreSQL answers; migrations applied");
                                        return;
                                    }
                                    Err(e) => {
                                        tracing::debug!(error = %e, "migrations not applied yet")
                                    }
                                }
                                delay = (delay * 2).min(Duration::from_secs(5));
                            }
                        }));
                    }
                    Err(e) => return Err(e),
                }
            }
            let store = Store {
                backend,
                kind: BackendKind::Postgres,
            };
            return Ok((store, retry));
        }
        Err(StoreError::Unsupported(url.into()))
    }

    /// Which database this is.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

/// [`Stats`] from the figures row (`active`, `authed`, `active_rooms`, `total_rooms`,
/// `events_hour`, `events_total`) and the `status, n` rows of presence; either backend.
pub(crate) fn stats_from_rows<R>(row: &R, presence_rows: &[R]) -> Result<Stats, StoreError>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut presence = PresenceCounts::default();
    for r in presence_rows {
        let n: i64 = r.try_get("n")?;
        match r.try_get::<String, _>("status")?.as_str() {
            "online" => presence.online += n,
            "away" => presence.away += n,
            "busy" => presence.busy += n,
            "offline" => presence.offline += n,
            _ => {}
        }
    }
    Ok(Stats {
        active_connections: row.try_get("active")?,
        authenticated_connections: row.try_get("authed")?,
        active_rooms: row.try_get("active_rooms")?,
        total_rooms: row.try_get("total_rooms")?,
        presence,
        events_last_hour: row.try_get("events_hour")?,
        events_total: row.try_get("events_total")?,
    })
}

/// Whether a database opened by a read-only command has the schema this version migrates to
/// (`applied`: the count of its successful migrations).
fn check_schema(
    applied: Result<i64, sqlx::Error>,
    expected: usize,
    what: &str,
) -> Result<(), StoreError> {
    match applied {
        Ok(n) if n >= expected as i64 => Ok(()),
        Ok(n) => Err(StoreError::NotInitialized(format!(
            "the database at {what} has {n} of {expected} migrations: run `nself-realtime init` to bring it up to date"
        ))),
        Err(sqlx::Error::Database(_)) => Err(StoreError::NotInitialized(format!(
            "the database at {what} has no nself-realtime schema: check DATABASE_URL, or run `nself-realtime init`"
        ))),
        Err(e) => Err(StoreError::Database(e)),
    }
}

/// Whether the error means "the database did not answer" (as opposed to "it refused").
pub fn is_unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
}

/// Timestamps are stored as fixed-width RFC 3339 UTC text so they sort as text (SQLite).
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses a stored timestamp.
pub(crate) fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}
