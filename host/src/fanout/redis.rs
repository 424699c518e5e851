//! [`RedisRoomSockets`]: which users have sockets in which rooms, across instances (per-instance
//! counts under the instance's lease, updated atomically by a script).

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::RoomSockets;
use crate::cluster::{RedisConn, de_list, lua, now_ms, room_field};

/// Room sockets in Redis.
pub struct RedisRoomSockets {
    redis: Arc<RedisConn>,
}

impl RedisRoomSockets {
    /// Over the cluster's connection.
    pub fn new(redis: Arc<RedisConn>) -> RedisRoomSockets {
        RedisRoomSockets { redis }
    }
}

#[derive(Deserialize)]
struct Names {
    #[serde(default, deserialize_with = "de_list")]
    list: Vec<String>,
}

#[async_trait]
impl RoomSockets for RedisRoomSockets {
    async fn joined(&self, user: &str, room: &str) {
        // In the room's shard (see the scripts' layout).
        let key = format!(
            "{}:node:{}:rooms",
            self.redis.shard_prefix(self.redis.shard_of(room)),
            self.redis.node
        );
        let field = room_field(user, room);
        self.redis
            .call(async |c| {
                redis::cmd("HINCRBY")
                    .arg(&key)
                    .arg(&field)
                    .arg(1)
                    .query_async::<i64>(c)
                    .await
            })
            .await;
    }

    async fn left(&self, user: &str, rooms: &[String]) -> Option<Vec<String>> {
        if rooms.is_empty() {
            return Some(Vec::new());
        }
        let now = now_ms().to_string();
        // One call per shard of the rooms.
        let mut by_shard: std::collections::BTreeMap<usize, Vec<&String>> = Default::default();
        for room in rooms {
            by_shard
                .entry(self.redis.shard_of(room))
                .or_default()
                .push(room);
        }
        let calls = by_shard.into_iter().map(|(k, rooms)| {
            let now = &now;
            async move {
                let rooms_json = serde_json::to_string(&rooms).ok()?;
                self.redis
                    .script_in::<Names>(
                        k,
                        &lua::ROOMS_LEFT,
                        &[&self.redis.node, now, user, &rooms_json],
                    )
                    .await
            }
        });
        let answers: Option<Vec<Names>> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect();
        Some(answers?.into_iter().flat_map(|n| n.list).collect())
    }
}
