//! Room history and positions: every `message:new` of a room with history carries `offset`
//! (per room, +1 each message) and `epoch` (the history's generation: it changes when history
//! was lost); the last messages are kept for `room:join {since}` (catch-up after a reconnect)
//! and `message:history` (paging). Rooms without history are untouched.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Position`], per-room [`Settings`], the [`History`] trait |
//! | `memory.rs` | [`MemoryHistory`]: one instance; a room's publishes and catch-ups are ordered by one lock per room |
//! | `redis.rs` | [`RedisHistory`]: across instances; numbered, kept and published by one script, delivered by each instance in offset order |
//!
//! The seam between missed and live messages: a catch-up reads the messages after the
//! client's position and joins the socket to the room under the same per-room order that
//! publishes go through, so every message is delivered exactly once, missed ones first.

mod memory;
mod redis;

pub use memory::MemoryHistory;
pub use redis::RedisHistory;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::store::{KeptHistory, Room, Store, WriteOp};

/// Longest wait for the database (reading a room's kept history, writing a message).
const DB_WAIT: Duration = Duration::from_secs(3);

/// A room's kept history in the database (at most `settings.size` messages), within
/// [`DB_WAIT`].
pub(crate) async fn read_kept(
    store: &Store,
    room: &str,
    settings: Settings,
) -> Result<Option<KeptHistory>, Unavailable> {
    let limit = i64::try_from(settings.size).unwrap_or(i64::MAX);
    tokio::time::timeout(DB_WAIT, store.kept_history(room, limit))
        .await
        .map_err(|_| Unavailable("the database did not answer in time".into()))?
        .map_err(|e| Unavailable(e.to_string()))
}

/// Writes `message` (carrying its position) as kept at `position` until the room's TTL, in
/// its own transaction, within [`DB_WAIT`].
pub(crate) async fn write_kept(
    store: &Store,
    room: &str,
    position: &Position,
    message: Value,
    settings: Settings,
) -> Result<(), Unavailable> {
    let at = chrono::Utc::now();
    let kept = WriteOp::MessageKept {
        room: room.to_string(),
        epoch: position.epoch.clone(),
        offset: position.offset,
        message,
        at,
        expires_at: at + chrono::Duration::from_std(settings.ttl).unwrap_or_default(),
    };
    tokio::time::timeout(DB_WAIT, store.apply(std::slice::from_ref(&kept)))
        .await
        .map_err(|_| Unavailable("the database did not answer in time".into()))?
        .map_err(|e| Unavailable(e.to_string()))
}

/// Most messages one `message:history` answers.
pub const MAX_PAGE: usize = 100;
/// Messages `message:history` answers when it does not say.
pub const DEFAULT_PAGE: usize = 50;

/// A position in a room's history: the offset of the last message, in this epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The offset of a message (0: before the first).
    pub offset: u64,
    /// The history's generation.
    pub epoch: String,
}

/// A room's history settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Messages kept.
    pub size: usize,
    /// How long a message is kept.
    pub ttl: Duration,
}

/// The history settings of a room: its `settings.history` (`size`, `ttl` in seconds) over
/// `REALTIME_HISTORY_SIZE` / `REALTIME_HISTORY_TTL`; None when the room keeps no history.
pub fn settings(config: &Config, room: &Room) -> Option<Settings> {
    let own = room.settings.get("history");
    let size = own
        .and_then(|h| h.get("size"))
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .unwrap_or(config.history_size);
    let ttl = own
        .and_then(|h| h.get("ttl"))
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(config.history_ttl);
    (size > 0 && !ttl.is_zero()).then_some(Settings { size, ttl })
}

/// What a catch-up found.
#[derive(Debug, Clone, PartialEq)]
pub enum Catchup {
    /// The messages after the client's position (possibly none), in order.
    Recovered(Vec<Value>),
    /// The position is too old, from another epoch, or ahead: the client refetches.
    Lost,
    /// The client gave no position.
    NotAsked,
}

/// What a catch-up from `since` is, when the room's position alone decides it: lost (another
/// epoch, or a position ahead of the room) or nothing missed; None when the kept messages
/// must be read.
pub(crate) fn settled(current: &Position, since: &Position) -> Option<Catchup> {
    if since.epoch != current.epoch || since.offset > current.offset {
        return Some(Catchup::Lost);
    }
    (since.offset == current.offset).then(|| Catchup::Recovered(Vec::new()))
}

/// A page of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest messages.
    Newest,
    /// The newest messages before this offset.
    Before(u64),
    /// The oldest messages after this offset.
    After(u64),
}

/// Why history could not be used now.
#[derive(Debug, thiserror::Error)]
#[error("history unavailable: {0}")]
pub struct Unavailable(pub String);

/// Room histories.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Gives `message` the room's next position (its `offset` and `epoch` fields), keeps it
    /// and delivers it to the room's sockets, in offset order.
    async fn publish(
        &self,
        room: &str,
        settings: Settings,
        message: Value,
    ) -> Result<Position, Unavailable>;

    /// In the room's order: finds the messages after `since` and calls `deliver` with them,
    /// which must hand them to the socket and join it to the room: a message published
    /// after is delivered live, one published before is in the list, never both. Returns
    /// what was found and the position the socket is at.
    async fn catch_up(
        &self,
        room: &str,
        settings: Settings,
        since: Option<&Position>,
        deliver: &mut (dyn for<'c> FnMut(&'c Catchup) + Send),
    ) -> Result<(Catchup, Position), Unavailable>;

    /// At most `limit` messages of a page, oldest first, and the room's position.
    async fn page(
        &self,
        room: &str,
        settings: Settings,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<Value>, Position), Unavailable>;
}
