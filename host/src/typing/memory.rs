//! [`MemoryTyping`]: typing entries of one instance, in memory.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{TypingKey, TypingTracker, TypingUpdate};

#[derive(Debug, Clone)]
struct Entry {
    user_id: String,
    socket_id: String,
    started_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// Single-node typing state.
#[derive(Default)]
pub struct MemoryTyping {
    keys: Mutex<HashMap<TypingKey, Vec<Entry>>>,
}

fn update(key: &TypingKey, entries: &[Entry], user_id: &str) -> TypingUpdate {
    TypingUpdate {
        key: key.clone(),
        users: entries
            .iter()
            .map(|e| (e.user_id.clone(), e.started_at))
            .collect(),
        user_id: user_id.to_string(),
    }
}

impl MemoryTyping {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TypingKey, Vec<Entry>>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes entries matching `gone` from every key; one update per (key, user) removed.
    fn remove_where(&self, gone: impl Fn(&Entry) -> bool) -> Vec<TypingUpdate> {
        let mut keys = self.lock();
        let mut out = Vec::new();
        for (key, entries) in keys.iter_mut() {
            let removed: Vec<String> = entries
                .iter()
                .filter(|e| gone(e))
                .map(|e| e.user_id.clone())
                .collect();
            if removed.is_empty() {
                continue;
            }
            entries.retain(|e| !gone(e));
            for user in removed {
                out.push(update(key, entries, &user));
            }
        }
        keys.retain(|_, e| !e.is_empty());
        out
    }
}

#[async_trait]
impl TypingTracker for MemoryTyping {
    async fn start(
        &self,
        key: TypingKey,
        user_id: &str,
        socket_id: &str,
        ttl: chrono::Duration,
    ) -> TypingUpdate {
        let now = Utc::now();
        let mut keys = self.lock();
        let entries = keys.entry(key.clone()).or_default();
        match entries.iter_mut().find(|e| e.user_id == user_id) {
            Some(e) => {
                e.started_at = now;
                e.expires_at = now + ttl;
                e.socket_id = socket_id.to_string();
            }
            None => entries.push(Entry {
                user_id: user_id.to_string(),
                socket_id: socket_id.to_string(),
                started_at: now,
                expires_at: now + ttl,
            }),
        }
        update(&key, entries, user_id)
    }

    async fn stop(&self, key: TypingKey, user_id: &str) -> TypingUpdate {
        let mut keys = self.lock();
        let entries = keys.entry(key.clone()).or_default();
        entries.retain(|e| e.user_id != user_id);
        let out = update(&key, entries, user_id);
        if entries.is_empty() {
            keys.remove(&key);
        }
        out
    }

    async fn clear_socket(&self, socket_id: &str) -> Vec<TypingUpdate> {
        self.remove_where(|e| e.socket_id == socket_id)
    }

    async fn expire(&self, now: DateTime<Utc>) -> Vec<TypingUpdate> {
        self.remove_where(|e| e.expires_at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn key() -> TypingKey {
        TypingKey {
            room: "r".into(),
            thread: None,
        }
    }

    #[tokio::test]
    async fn one_entry_per_user_and_expiry() {
        let t = MemoryTyping::default();
        let ttl = chrono::Duration::milliseconds(100);
        t.start(key(), "a", "s1", ttl).await;
        let u = t.start(key(), "a", "s1", ttl).await;
        assert_eq!(u.users.len(), 1, "repeat start refreshes, never duplicates");
        let u = t.start(key(), "b", "s2", ttl).await;
        assert_eq!(u.users.len(), 2);
        assert!(t.expire(Utc::now()).await.is_empty());
        let gone = t.expire(Utc::now() + ttl * 2).await;
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|g| g.users.len() < 2));
    }

    #[tokio::test]
    async fn threads_are_separate_and_disconnect_clears() {
        let t = MemoryTyping::default();
        let ttl = chrono::Duration::seconds(10);
        let thread = TypingKey {
            room: "r".into(),
            thread: Some("t1".into()),
        };
        t.start(key(), "a", "s1", ttl).await;
        let u = t.start(thread.clone(), "a", "s1", ttl).await;
        assert_eq!(u.users.len(), 1);
        let cleared = t.clear_socket("s1").await;
        assert_eq!(cleared.len(), 2);
        assert!(cleared.iter().all(|c| c.users.is_empty()));
        let u = t.stop(key(), "a").await;
        assert!(u.users.is_empty());
        assert_eq!(u.event()["threadId"], Value::Null);
    }
}
