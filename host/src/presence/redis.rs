//! Presence shared through Redis: every instance counts its own sockets per user
//! (`P:node:<id>:users`), and a user is online while any live instance counts one. The status
//! and custom status live in `P:user:<id>`. Transitions are decided by the scripts, so each
//! `presence:changed` is sent once, by the instance where it happened.
//!
//! A local [`MemoryPresence`] mirrors this instance's sockets: it answers the per-instance
//! questions (counts for `/metrics`, heartbeats) and serves every call while Redis is down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use super::{CustomStatus, MemoryPresence, PresenceManager, PresenceState, Reasserted, Status};
use crate::cluster::{RedisConn, de_list, lua, now_ms};
use crate::store::PresenceCounts;

/// A user's state as the scripts answer it.
#[derive(Debug, Clone, Deserialize)]
pub struct Wire {
    u: String,
    s: String,
    c: u32,
    #[serde(default)]
    t: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<i64>,
}

impl Wire {
    /// The state it describes.
    pub fn state(self) -> PresenceState {
        PresenceState {
            user_id: self.u,
            status: Status::parse(&self.s).unwrap_or(Status::Offline),
            custom: self.t.map(|text| CustomStatus {
                text,
                emoji: self.e,
                expires_at: self.x.and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            }),
            connections: self.c,
        }
    }
}

#[derive(Deserialize)]
struct Changed {
    #[serde(default)]
    changed: bool,
    #[serde(default)]
    state: Option<Wire>,
}

#[derive(Deserialize)]
struct States {
    #[serde(default, deserialize_with = "de_list")]
    list: Vec<Wire>,
}

/// Cluster-wide presence.
pub struct RedisPresence {
    redis: Arc<RedisConn>,
    local: MemoryPresence,
    /// When each user's activity was last written to Redis (writes are coalesced).
    touched: Mutex<HashMap<String, Instant>>,
    touch_every: Option<Duration>,
    /// Socket count changes hold it shared, a re-assertion exclusively: the snapshot it writes
    /// is then exactly what the scripts have counted.
    gate: tokio::sync::RwLock<()>,
    lease: Duration,
    /// Users whose last socket here closed while Redis did not answer: checked (and announced
    /// offline cluster-wide) at the next re-assertion, even if Redis lost its data meanwhile.
    gone_offline: Mutex<std::collections::HashSet<String>>,
}

impl RedisPresence {
    /// `away` is `REALTIME_PRESENCE_AWAY_MS` (None: activity needs no sharing); `lease` the
    /// node lease.
    pub fn new(redis: Arc<RedisConn>, away: Option<Duration>, lease: Duration) -> RedisPresence {
        RedisPresence {
            redis,
            local: MemoryPresence::default(),
            touched: Mutex::new(HashMap::new()),
            touch_every: away.map(|a| (a / 4).min(Duration::from_secs(1))),
            gate: tokio::sync::RwLock::new(()),
            lease,
            gone_offline: Mutex::new(Default::default()),
        }
    }

    fn touched(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.touched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gone_offline(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.gone_offline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What one shard holds of this instance (for a re-assert).
#[derive(Default)]
struct ShardState {
    users: BTreeMap<String, u32>,
    rooms: BTreeMap<String, u32>,
    gone: Vec<String>,
}

fn ms(t: DateTime<Utc>) -> String {
    t.timestamp_millis().to_string()
}

/// The states the shards answered, None when none did (Redis is down: the local ones count).
/// A shard that did not answer keeps its expiries for a later sweep.
fn states(answers: Vec<Option<States>>) -> Option<Vec<PresenceState>> {
    let answered: Vec<States> = answers.into_iter().flatten().collect();
    if answered.is_empty() {
        return None;
    }
    Some(
        answered
            .into_iter()
            .flat_map(|s| s.list)
            .map(Wire::state)
            .collect(),
    )
}

#[async_trait]
impl PresenceManager for RedisPresence {
    async fn connect(&self, user_id: &str) -> Option<PresenceState> {
        let _shared = self.gate.read().await;
        let local = self.local.connect(user_id).await;
        let now = now_ms().to_string();
        let node = self.redis.node.clone();
        match self
            .redis
            .script_in::<Changed>(
                self.redis.shard_of(user_id),
                &lua::CONNECT,
                &[&node, user_id, &now],
            )
            .await
        {
            Some(c) if c.changed => c.state.map(Wire::state),
            Some(_) => None,
            None => {
                self.gone_offline().remove(user_id);
                local
            }
        }
    }

    async fn disconnect(&self, user_id: &str) -> Option<PresenceState> {
        let _shared = self.gate.read().await;
        let local = self.local.disconnect(user_id).await;
        if self.local.state(user_id).is_none_or(|s| s.connections == 0) {
            self.touched().remove(user_id);
        }
        let now = now_ms().to_string();
        let node = self.redis.node.clone();
        match self
            .redis
            .script_in::<Changed>(
                self.redis.shard_of(user_id),
                &lua::DISCONNECT,
                &[&node, user_id, &now],
            )
            .await
        {
            Some(c) if c.changed => Some(PresenceState::offline(user_id.to_string())),
            Some(_) => None,
            None => {
                if local.is_some() {
                    self.gone_offline().insert(user_id.to_string());
                }
                local
            }
        }
    }

    async fn update(
        &self,
        user_id: &str,
        status: Status,
        custom: Option<CustomStatus>,
    ) -> PresenceState {
        let local = self.local.update(user_id, status, custom.clone()).await;
        let custom = local.custom.clone();
        let now = now_ms().to_string();
        let (text, emoji, expiry) = match &custom {
            Some(c) => (
                c.text.clone(),
                c.emoji.clone().unwrap_or_default(),
                c.expires_at.map(ms).unwrap_or_default(),
            ),
            None => Default::default(),
        };
        match self
            .redis
            .script_in::<Changed>(
                self.redis.shard_of(user_id),
                &lua::UPDATE,
                &[user_id, status.as_str(), &now, &text, &emoji, &expiry],
            )
            .await
        {
            Some(Changed { state: Some(w), .. }) => w.state(),
            _ => local,
        }
    }

    async fn expire(&self, now: DateTime<Utc>) -> Vec<PresenceState> {
        let local = self.local.expire(now).await;
        let answers = self
            .redis
            .script_each::<States>(&lua::EXPIRE_CUSTOM, &[&ms(now)])
            .await;
        states(answers).unwrap_or(local)
    }

    fn counts(&self) -> PresenceCounts {
        self.local.counts()
    }

    fn online_users(&self) -> Vec<String> {
        self.local.online_users()
    }

    fn state(&self, user_id: &str) -> Option<PresenceState> {
        self.local.state(user_id)
    }

    async fn touch(&self, user_id: &str, now: DateTime<Utc>) -> Option<PresenceState> {
        let local = self.local.touch(user_id, now).await;
        let every = self.touch_every?;
        {
            let mut touched = self.touched();
            let recent = touched.get(user_id).is_some_and(|t| t.elapsed() < every);
            if recent && local.is_none() {
                return None;
            }
            touched.insert(user_id.to_string(), Instant::now());
        }
        match self
            .redis
            .script_in::<Changed>(
                self.redis.shard_of(user_id),
                &lua::TOUCH,
                &[user_id, &ms(now)],
            )
            .await
        {
            Some(c) if c.changed => c.state.map(Wire::state),
            Some(_) => None,
            None => local,
        }
    }

    async fn idle(&self, idle_before: DateTime<Utc>) -> Vec<PresenceState> {
        let local = self.local.idle(idle_before).await;
        let answers = self
            .redis
            .script_each::<States>(&lua::IDLE, &[&ms(idle_before), &now_ms().to_string()])
            .await;
        states(answers).unwrap_or(local)
    }

    fn last_active(&self, user_id: &str) -> Option<DateTime<Utc>> {
        self.local.last_active(user_id)
    }

    async fn reassert(&self, rooms: &BTreeMap<(String, String), u32>) -> Option<Reasserted> {
        let _exclusive = self.gate.write().await;
        let users: BTreeMap<String, u32> = self
            .local
            .online_users()
            .into_iter()
            .filter_map(|u| self.local.state(&u).map(|s| (u, s.connections)))
            .collect();
        let now = now_ms();
        let until = (now + self.lease.as_millis() as i64).to_string();
        let gone: Vec<String> = self.gone_offline().iter().cloned().collect();
        // Each shard gets the users and the rooms it holds (every shard is called: it also
        // drops what it held of this instance, and renews the lease there).
        let shards = self.redis.shards();
        let mut split: Vec<ShardState> = (0..shards).map(|_| ShardState::default()).collect();
        for (u, n) in &users {
            split[self.redis.shard_of(u)].users.insert(u.clone(), *n);
        }
        for ((u, r), n) in rooms {
            split[self.redis.shard_of(r)]
                .rooms
                .insert(crate::cluster::room_field(u, r), *n);
        }
        for u in &gone {
            split[self.redis.shard_of(u)].gone.push(u.clone());
        }
        #[derive(Deserialize)]
        struct Out {
            #[serde(default, deserialize_with = "de_list")]
            online: Vec<Wire>,
            #[serde(default, deserialize_with = "de_list")]
            offline: Vec<String>,
        }
        let node = self.redis.node.clone();
        let now = now.to_string();
        let calls = split.iter().enumerate().map(|(k, s)| {
            let (node, now, until) = (&node, &now, &until);
            async move {
                let users = serde_json::to_string(&s.users).ok()?;
                let rooms = serde_json::to_string(&s.rooms).ok()?;
                let gone = serde_json::to_string(&s.gone).ok()?;
                self.redis
                    .script_in::<Out>(
                        k,
                        &lua::REASSERT,
                        &[node, now, until, &users, &rooms, &gone],
                    )
                    .await
            }
        });
        // Every shard must answer: otherwise the monitor tries again.
        let outs: Vec<Out> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect::<Option<_>>()?;
        let out = Out {
            online: outs.iter().flat_map(|o| o.online.iter().cloned()).collect(),
            offline: outs.into_iter().flat_map(|o| o.offline).collect(),
        };
        {
            let mut pending = self.gone_offline();
            for u in &gone {
                pending.remove(u);
            }
        }
        Some(Reasserted {
            online: out.online.into_iter().map(Wire::state).collect(),
            offline: out.offline,
        })
    }
}
