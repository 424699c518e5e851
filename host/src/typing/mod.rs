//! Typing indicators: one entry per (room, thread, user), refreshed by repeated starts,
//! expiring after the typing timeout.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the [`TypingTracker`] trait and what it answers ([`TypingKey`], [`TypingUpdate`]) |
//! | `memory.rs` | [`MemoryTyping`]: one instance, in memory |
//! | `redis.rs` | [`RedisTyping`]: across instances (entries and expiries in Redis, each expiry emitted once), with the memory one as local mirror and fallback |

mod memory;
mod redis;

pub use memory::MemoryTyping;
pub use redis::RedisTyping;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::util::iso;

/// Where someone types: a room and an optional thread.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypingKey {
    /// Room name.
    pub room: String,
    /// Thread id, if any.
    pub thread: Option<String>,
}

/// The typers of one key after a change, ready to send as `typing:event`.
#[derive(Debug, Clone)]
pub struct TypingUpdate {
    /// Where.
    pub key: TypingKey,
    /// Users still typing (each at most once).
    pub users: Vec<(String, DateTime<Utc>)>,
    /// The user whose entry changed.
    pub user_id: String,
}

impl TypingUpdate {
    /// The `typing:event` payload.
    pub fn event(&self) -> Value {
        json!({
            "roomName": self.key.room,
            "threadId": self.key.thread,
            "users": self.users.iter().map(|(u, t)| json!({"userId": u, "startedAt": iso(*t)})).collect::<Vec<_>>(),
        })
    }
}

/// Typing state, local or cluster-wide.
#[async_trait]
pub trait TypingTracker: Send + Sync + 'static {
    /// Sets or refreshes the user's entry.
    async fn start(
        &self,
        key: TypingKey,
        user_id: &str,
        socket_id: &str,
        ttl: chrono::Duration,
    ) -> TypingUpdate;
    /// Removes the user's entry.
    async fn stop(&self, key: TypingKey, user_id: &str) -> TypingUpdate;
    /// Removes the entries a socket set (on disconnect).
    async fn clear_socket(&self, socket_id: &str) -> Vec<TypingUpdate>;
    /// Removes the entries whose expiry passed.
    async fn expire(&self, now: DateTime<Utc>) -> Vec<TypingUpdate>;
}
