//! Presence: per-user connection counting across a user's sockets, status and custom status.
//!
//! [`PresenceManager`] is the seam for a cluster-wide implementation; [`MemoryPresence`] is the
//! single-node one. A std `Mutex` (not a tokio one) guards the map: it is held for a few map
//! operations and never across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;

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

#[derive(Debug)]
struct Entry {
    status: Status,
    custom: Option<CustomStatus>,
    connections: u32,
    last_active: DateTime<Utc>,
    auto_away: bool,
}

impl Entry {
    fn new(status: Status) -> Entry {
        Entry {
            status,
            custom: None,
            connections: 0,
            last_active: Utc::now(),
            auto_away: false,
        }
    }
}

/// Single-node presence.
#[derive(Default)]
pub struct MemoryPresence {
    users: Mutex<HashMap<String, Entry>>,
}

fn state(user_id: &str, e: &Entry) -> PresenceState {
    PresenceState {
        user_id: user_id.to_string(),
        status: e.status,
        custom: e.custom.clone(),
        connections: e.connections,
    }
}

fn live_custom(c: Option<CustomStatus>, now: DateTime<Utc>) -> Option<CustomStatus> {
    c.filter(|c| c.expires_at.is_none_or(|t| t > now))
}

impl MemoryPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl PresenceManager for MemoryPresence {
    async fn connect(&self, user_id: &str) -> Option<PresenceState> {
        let mut users = self.lock();
        let e = users
            .entry(user_id.to_string())
            .or_insert_with(|| Entry::new(Status::Offline));
        e.connections += 1;
        e.last_active = Utc::now();
        if e.connections == 1 {
            e.status = Status::Online;
            e.auto_away = false;
            e.custom = live_custom(e.custom.take(), Utc::now());
            return Some(state(user_id, e));
        }
        None
    }

    async fn disconnect(&self, user_id: &str) -> Option<PresenceState> {
        let mut users = self.lock();
        let e = users.get_mut(user_id)?;
        e.connections = e.connections.saturating_sub(1);
        if e.connections > 0 {
            return None;
        }
        e.status = Status::Offline;
        let gone = state(user_id, e);
        if live_custom(e.custom.clone(), Utc::now()).is_none() {
            users.remove(user_id);
        }
        Some(PresenceState {
            custom: None,
            ..gone
        })
    }

    async fn update(
        &self,
        user_id: &str,
        status: Status,
        custom: Option<CustomStatus>,
    ) -> PresenceState {
        let mut users = self.lock();
        let e = users
            .entry(user_id.to_string())
            .or_insert_with(|| Entry::new(status));
        e.status = status;
        e.auto_away = false;
        e.last_active = Utc::now();
        e.custom = live_custom(custom, Utc::now());
        state(user_id, e)
    }

    async fn expire(&self, now: DateTime<Utc>) -> Vec<PresenceState> {
        let mut users = self.lock();
        let mut changed = Vec::new();
        for (user_id, e) in users.iter_mut() {
            if e.custom
                .as_ref()
                .is_some_and(|c| c.expires_at.is_some_and(|t| t <= now))
            {
                e.custom = None;
                changed.push(state(user_id, e));
            }
        }
        users.retain(|_, e| e.connections > 0 || e.custom.is_some());
        changed
    }

    fn counts(&self) -> PresenceCounts {
        let users = self.lock();
        let mut c = PresenceCounts::default();
        for e in users.values().filter(|e| e.connections > 0) {
            match e.status {
                Status::Online => c.online += 1,
                Status::Away => c.away += 1,
                Status::Busy => c.busy += 1,
                Status::Offline => c.offline += 1,
            }
        }
        c
    }

    fn online_users(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.connections > 0)
            .map(|(u, _)| u.clone())
            .collect()
    }

    fn state(&self, user_id: &str) -> Option<PresenceState> {
        self.lock().get(user_id).map(|e| state(user_id, e))
    }

    async fn touch(&self, user_id: &str, now: DateTime<Utc>) -> Option<PresenceState> {
        let mut users = self.lock();
        let e = users.get_mut(user_id)?;
        e.last_active = now;
        if e.auto_away && e.connections > 0 {
            e.auto_away = false;
            e.status = Status::Online;
            return Some(state(user_id, e));
        }
        None
    }

    async fn idle(&self, idle_before: DateTime<Utc>) -> Vec<PresenceState> {
        let mut users = self.lock();
        let mut changed = Vec::new();
        for (user_id, e) in users.iter_mut() {
            if e.connections > 0 && e.status == Status::Online && e.last_active < idle_before {
                e.status = Status::Away;
                e.auto_away = true;
                changed.push(state(user_id, e));
            }
        }
        changed
    }

    fn last_active(&self, user_id: &str) -> Option<DateTime<Utc>> {
        self.lock().get(user_id).map(|e| e.last_active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn multi_device_counting() {
        let p = MemoryPresence::default();
        assert!(p.connect("u").await.is_some());
        assert!(p.connect("u").await.is_none());
        assert!(p.disconnect("u").await.is_none());
        let off = p.disconnect("u").await.unwrap();
        assert_eq!(off.status, Status::Offline);
        assert!(p.disconnect("u").await.is_none(), "never below zero");
    }

    #[tokio::test]
    async fn custom_status_survives_reconnect_until_it_expires() {
        let p = MemoryPresence::default();
        p.connect("u").await;
        let custom = CustomStatus {
            text: "lunch".into(),
            emoji: Some("🍔".into()),
            expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
        };
        let s = p.update("u", Status::Busy, Some(custom.clone())).await;
        assert_eq!(s.event()["customStatus"], "lunch");
        p.disconnect("u").await;
        let back = p.connect("u").await.unwrap();
        assert_eq!(back.status, Status::Online);
        assert_eq!(back.custom, Some(custom));
        let expired = p.expire(Utc::now() + chrono::Duration::hours(2)).await;
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].event()["customStatus"], Value::Null);
    }

    #[tokio::test]
    async fn idle_users_become_away_until_they_act() {
        let p = MemoryPresence::default();
        p.connect("idle").await;
        p.connect("busy").await;
        p.update("busy", Status::Busy, None).await;
        let later = Utc::now() + chrono::Duration::minutes(10);
        let away = p.idle(later).await;
        assert_eq!(away.len(), 1, "only online users go away: {away:?}");
        assert_eq!(
            (away[0].user_id.as_str(), away[0].status),
            ("idle", Status::Away)
        );
        assert!(p.idle(later).await.is_empty(), "once");
        let back = p
            .touch("idle", later)
            .await
            .expect("activity ends the automatic away");
        assert_eq!(back.status, Status::Online);
        assert!(p.touch("idle", later).await.is_none());
        // A chosen away is not ended by activity.
        p.update("idle", Status::Away, None).await;
        assert!(p.touch("idle", later).await.is_none());
        assert_eq!(p.last_active("idle"), Some(later));
    }
}
