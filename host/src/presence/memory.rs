//! [`MemoryPresence`]: presence of one instance, in memory. A std `Mutex` (not a tokio one)
//! guards the map: it is held for a few map operations and never across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{CustomStatus, PresenceManager, PresenceState, Status};
use crate::store::PresenceCounts;

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
    use serde_json::Value;

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
