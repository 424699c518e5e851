//! Presence: per-user connection counting across a user's sockets, status and custom status,
//! and its announcement.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the state ([`PresenceState`], [`Status`], [`CustomStatus`]) and the [`PresenceManager`] trait |
//! | `memory.rs` | [`MemoryPresence`]: one instance, in memory |
//! | `redis.rs` | [`RedisPresence`]: across instances (per-instance socket counts under leases, shared status), with the memory one as local mirror and fallback |
//! | `announce.rs` | [`Presence`]: what the pipeline calls: the switch (`REALTIME_ENABLE_PRESENCE`), the state, and the announcement (the row written behind, then `presence:changed` to everyone or to the user's rooms) |

mod announce;
mod memory;
mod redis;

pub use announce::Presence;
pub use memory::MemoryPresence;
pub use redis::RedisPresence;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::store::PresenceCounts;

/// A user's presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Connected and available.
    Online,
    /// Connected, away.
    Away,
    /// Connected, busy.
    Busy,
    /// Not connected (or appearing so).
    Offline,
}

impl Status {
    /// Parses a client-supplied status.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "online" => Some(Status::Online),
            "away" => Some(Status::Away),
            "busy" => Some(Status::Busy),
            "offline" => Some(Status::Offline),
            _ => None,
        }
    }

    /// The stored text.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }
}

/// A custom status set with `presence:update`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomStatus {
    /// Text (at most 100 characters).
    pub text: String,
    /// Emoji.
    pub emoji: Option<String>,
    /// When it stops applying.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A user's presence at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceState {
    /// The user.
    pub user_id: String,
    /// Status.
    pub status: Status,
    /// Custom status, if set and not expired.
    pub custom: Option<CustomStatus>,
    /// Live sockets of the user.
    pub connections: u32,
}

impl PresenceState {
    /// A user with no socket left anywhere (what disconnects and crash cleanups announce).
    pub fn offline(user_id: String) -> PresenceState {
        PresenceState {
            user_id,
            status: Status::Offline,
            custom: None,
            connections: 0,
        }
    }

    /// The `presence:changed` payload.
    pub fn event(&self) -> Value {
        json!({
            "userId": self.user_id,
            "status": self.status,
            "customStatus": self.custom.as_ref().map(|c| c.text.clone()),
            "customEmoji": self.custom.as_ref().and_then(|c| c.emoji.clone()),
        })
    }
}

/// Presence state, local or cluster-wide.
#[async_trait]
pub trait PresenceManager: Send + Sync + 'static {
    /// A socket of the user connected. Returns the new state when the user came online.
    async fn connect(&self, user_id: &str) -> Option<PresenceState>;
    /// A socket of the user disconnected. Returns the new state when the user went offline.
    async fn disconnect(&self, user_id: &str) -> Option<PresenceState>;
    /// `presence:update`: sets status and custom status (None clears it).
    async fn update(
        &self,
        user_id: &str,
        status: Status,
        custom: Option<CustomStatus>,
    ) -> PresenceState;
    /// Clears custom statuses whose expiry passed; returns the changed states.
    async fn expire(&self, now: DateTime<Utc>) -> Vec<PresenceState>;
    /// Users per status (connected users only; offline counts users with a kept custom status).
    fn counts(&self) -> PresenceCounts;
    /// Users with at least one live socket.
    fn online_users(&self) -> Vec<String>;
    /// A user's current state, if known.
    fn state(&self, user_id: &str) -> Option<PresenceState>;
    /// The user did something (sent, typed, joined, left). Returns the new state when this
    /// ends an automatic `away`.
    async fn touch(&self, user_id: &str, now: DateTime<Utc>) -> Option<PresenceState>;
    /// Connected users who are `online` and did nothing since `idle_before` become `away`
    /// (automatically: their next activity makes them `online` again). Returns those states.
    async fn idle(&self, idle_before: DateTime<Utc>) -> Vec<PresenceState>;
    /// When the user last did something (for the `last_active` column).
    fn last_active(&self, user_id: &str) -> Option<DateTime<Utc>>;
    /// Cluster-wide implementations: writes this instance's live sockets (and `rooms`, the
    /// sockets per (user, room)) again after shared state was lost or reaped. None when there
    /// is nothing to re-assert or it could not be done now.
    async fn reassert(
        &self,
        _rooms: &std::collections::BTreeMap<(String, String), u32>,
    ) -> Option<Reasserted> {
        None
    }
}

/// What a re-assertion changed cluster-wide.
#[derive(Debug, Default)]
pub struct Reasserted {
    /// Users who came online by it.
    pub online: Vec<PresenceState>,
    /// Users who went offline by it (no live socket anywhere).
    pub offline: Vec<String>,
}
