//! Persistence: the [`Backend`] trait, the cheap-clone [`Store`] handle, and the batching
//! [`writer`]. SQLite is the embedded default; the PostgreSQL backend implements the same trait.

mod model;
mod sqlite;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

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
    /// A user's membership of a room.
    async fn member(&self, room_id: &str, user_id: &str) -> Result<Option<Member>, StoreError>;
    /// All members of a room.
    async fn members(&self, room_id: &str) -> Result<Vec<Member>, StoreError>;
    /// Upserts the membership of a joining user (role member, last_seen now) and returns the
    /// room's persistent member count.
    async fn join(&self, room_id: &str, user_id: &str) -> Result<i64, StoreError>;
    /// Deletes the membership of a leaving user.
    async fn leave(&self, room_id: &str, user_id: &str) -> Result<(), StoreError>;
    /// Persistent members of a room.
    async fn member_count(&self, room_id: &str) -> Result<i64, StoreError>;
    /// Applies a batch of write-behind operations in one transaction.
    async fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError>;
    /// Figures for `stats` and `/metrics`.
    async fn stats(&self) -> Result<Stats, StoreError>;
    /// Connected sockets, newest first.
    async fn connections(&self) -> Result<Vec<ConnectionRow>, StoreError>;
    /// The newest `limit` audit rows, newest first.
    async fn events(&self, limit: i64) -> Result<Vec<EventRow>, StoreError>;
    /// Marks every connected row disconnected and every user offline (single-node start).
    async fn reset_live_state(&self) -> Result<(), StoreError>;
    /// Deletes expired typing rows and audit rows older than `events_before`.
    async fn cleanup(&self, events_before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// A handle to the store. Cloning is cheap.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    kind: &'static str,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("kind", &self.kind).finish()
    }
}

impl Store {
    /// Opens the database named by the URL and applies the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            let backend = sqlite::SqliteBackend::connect(url).await?;
            return Ok(Store {
                backend: Arc::new(backend),
                kind: "sqlite",
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(StoreError::Unsupported(
                "postgres:// (this build has only the embedded SQLite backend)".into(),
            ));
        }
        Err(StoreError::Unsupported(url.into()))
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
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
