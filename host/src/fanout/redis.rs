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
        let key = self.redis.key(&["node", &self.redis.node, "rooms"]);
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
        let rooms_json = serde_json::to_string(rooms).ok()?;
        let out: Names = self
            .redis
            .script(
                &lua::ROOMS_LEFT,
                &[&self.redis.node, &now, user, &rooms_json],
            )
            .await?;
        Some(out.list)
    }
}
