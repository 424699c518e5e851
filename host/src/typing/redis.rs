//! Typing indicators shared through Redis: one hash per (room, thread), one sorted set of
//! expiries. The expiry script removes each entry once, so one instance (whichever janitor gets
//! there first) sends its `typing:event`.
//!
//! A local [`MemoryTyping`] mirrors the entries this instance's sockets set: it knows what a
//! disconnecting socket owns and serves every call while Redis is down.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use super::{MemoryTyping, TypingKey, TypingTracker, TypingUpdate};
use crate::cluster::{RedisConn, de_list, lua, now_ms};

#[derive(Deserialize)]
struct Typer {
    u: String,
    t: i64,
}

#[derive(Deserialize)]
struct Typers {
    #[serde(default, deserialize_with = "de_list")]
    list: Vec<Typer>,
}

#[derive(Deserialize)]
struct Removed {
    r: String,
    h: String,
    u: String,
    #[serde(default, deserialize_with = "de_list")]
    list: Vec<Typer>,
}

#[derive(Deserialize)]
struct RemovedList {
    #[serde(default, deserialize_with = "de_list")]
    list: Vec<Removed>,
}

fn users(list: Vec<Typer>) -> Vec<(String, DateTime<Utc>)> {
    list.into_iter()
        .map(|t| {
            let at = Utc
                .timestamp_millis_opt(t.t)
                .single()
                .unwrap_or_else(Utc::now);
            (t.u, at)
        })
        .collect()
}

fn thread_arg(key: &TypingKey) -> &str {
    key.thread.as_deref().unwrap_or("")
}

/// The `owned` entry of `user` typing at `key`.
fn entry(key: &TypingKey, user: &str) -> Owned {
    (
        key.room.clone(),
        thread_arg(key).to_string(),
        user.to_string(),
    )
}

/// The update a script answered, or the local one when Redis did not answer.
fn answered(
    key: TypingKey,
    user_id: &str,
    answer: Option<Typers>,
    local: TypingUpdate,
) -> TypingUpdate {
    match answer {
        Some(t) => TypingUpdate {
            key,
            users: users(t.list),
            user_id: user_id.to_string(),
        },
        None => local,
    }
}

fn key_of(room: String, thread: String) -> TypingKey {
    TypingKey {
        room,
        thread: (!thread.is_empty()).then_some(thread),
    }
}

impl Removed {
    fn update(self) -> TypingUpdate {
        TypingUpdate {
            key: key_of(self.r, self.h),
            users: users(self.list),
            user_id: self.u,
        }
    }
}

/// An entry a local socket set: (room, thread or "", user).
type Owned = (String, String, String);
/// The entries of each local socket.
type OwnedBySocket = HashMap<String, HashSet<Owned>>;

/// Cluster-wide typing state.
pub struct RedisTyping {
    redis: Arc<RedisConn>,
    local: MemoryTyping,
    /// The entries each local socket set: (room, thread, user).
    owned: Mutex<OwnedBySocket>,
}

impl RedisTyping {
    /// Over the shared connection.
    pub fn new(redis: Arc<RedisConn>) -> RedisTyping {
        RedisTyping {
            redis,
            local: MemoryTyping::default(),
            owned: Mutex::new(HashMap::new()),
        }
    }

    /// The prefix of a typing entry's room keys and the keys its scripts use (the entry's
    /// hash, the shard's expiry set).
    fn keys(&self, key: &TypingKey) -> (String, [String; 2]) {
        let at = self.redis.room_prefix(&key.room);
        let keys = [
            format!("{at}:typing:{}\u{1f}{}", key.room, thread_arg(key)),
            format!("{at}:typing:exp"),
        ];
        (at, keys)
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, OwnedBySocket> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl TypingTracker for RedisTyping {
    async fn start(
        &self,
        key: TypingKey,
        user_id: &str,
        socket_id: &str,
        ttl: chrono::Duration,
    ) -> TypingUpdate {
        let local = self.local.start(key.clone(), user_id, socket_id, ttl).await;
        self.owned()
            .entry(socket_id.to_string())
            .or_default()
            .insert(entry(&key, user_id));
        let now = now_ms().to_string();
        let ttl = ttl.num_milliseconds().max(1).to_string();
        let (at, keys) = self.keys(&key);
        let answer = self
            .redis
            .script_at::<Typers>(
                &at,
                &[&keys[0], &keys[1]],
                &lua::TYPING_START,
                &[&key.room, thread_arg(&key), user_id, socket_id, &now, &ttl],
            )
            .await;
        answered(key, user_id, answer, local)
    }

    async fn stop(&self, key: TypingKey, user_id: &str) -> TypingUpdate {
        let local = self.local.stop(key.clone(), user_id).await;
        let gone = entry(&key, user_id);
        for owned in self.owned().values_mut() {
            owned.remove(&gone);
        }
        let now = now_ms().to_string();
        let (at, keys) = self.keys(&key);
        let answer = self
            .redis
            .script_at::<Typers>(
                &at,
                &[&keys[0], &keys[1]],
                &lua::TYPING_STOP,
                &[&key.room, thread_arg(&key), user_id, &now],
            )
            .await;
        answered(key, user_id, answer, local)
    }

    async fn clear_socket(&self, socket_id: &str) -> Vec<TypingUpdate> {
        let local = self.local.clear_socket(socket_id).await;
        let owned: Vec<Owned> = self
            .owned()
            .remove(socket_id)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        if owned.is_empty() {
            return local;
        }
        // One call per shard of the rooms (a room's typing keys are in its shard's slot).
        let mut by_shard: HashMap<usize, Vec<Owned>> = HashMap::new();
        for o in owned {
            by_shard
                .entry(self.redis.shard_of(&o.0))
                .or_default()
                .push(o);
        }
        let now = now_ms().to_string();
        let calls = by_shard.into_iter().map(|(k, owned)| {
            let now = &now;
            async move {
                let entries = serde_json::to_string(&owned).ok()?;
                self.redis
                    .script_at::<RemovedList>(
                        &self.redis.shard_prefix(k),
                        &[&format!("{}:typing:exp", self.redis.shard_prefix(k))],
                        &lua::TYPING_CLEAR,
                        &[socket_id, now, &entries],
                    )
                    .await
            }
        });
        // A shard that did not answer keeps its entries, which expire there later.
        let answers: Vec<RemovedList> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        if answers.is_empty() {
            return local;
        }
        answers
            .into_iter()
            .flat_map(|r| r.list)
            .map(Removed::update)
            .collect()
    }

    async fn expire(&self, now: DateTime<Utc>) -> Vec<TypingUpdate> {
        let local = self.local.expire(now).await;
        let now = now.timestamp_millis().to_string();
        // Every shard's expiries (one shard on one server).
        let calls = (0..self.redis.shards()).map(|k| {
            let now = &now;
            async move {
                self.redis
                    .script_at::<RemovedList>(
                        &self.redis.shard_prefix(k),
                        &[&format!("{}:typing:exp", self.redis.shard_prefix(k))],
                        &lua::TYPING_EXPIRE,
                        &[now],
                    )
                    .await
            }
        });
        // A shard that did not answer keeps its entries for a later sweep; none answering:
        // Redis is down, the local entries expire here.
        let answers: Vec<RemovedList> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        match (!answers.is_empty()).then_some(answers) {
            Some(lists) => {
                let updates: Vec<TypingUpdate> = lists
                    .into_iter()
                    .flat_map(|r| r.list)
                    .map(Removed::update)
                    .collect();
                if !updates.is_empty() {
                    let mut owned = self.owned();
                    for u in &updates {
                        let gone = entry(&u.key, &u.user_id);
                        for set in owned.values_mut() {
                            set.remove(&gone);
                        }
                    }
                }
                updates
            }
            None => local,
        }
    }
}
