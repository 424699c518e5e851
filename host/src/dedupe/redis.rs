//! [`RedisClaims`]: `clientMessageId`s claimed across instances (a key per id with the TTL,
//! set atomically by a script: the first send anywhere wins).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Claims, Sent};
use crate::cluster::{RedisConn, lua};

/// Claims in Redis.
pub struct RedisClaims {
    redis: Arc<RedisConn>,
}

impl RedisClaims {
    /// Over the cluster's connection.
    pub fn new(redis: Arc<RedisConn>) -> RedisClaims {
        RedisClaims { redis }
    }
}

#[async_trait]
impl Claims for RedisClaims {
    async fn claim(&self, user: &str, client_id: &str, sent: &Sent, ttl: Duration) -> Option<Sent> {
        let key = self.redis.spread_key(&["dedupe", user, client_id]);
        let value = serde_json::json!({"m": sent.message_id, "t": sent.timestamp}).to_string();
        let ttl = ttl.as_millis().to_string();
        let earlier: Option<String> = self
            .redis
            .call(async |c| {
                lua::CLAIM
                    .key(&key)
                    .arg(&value)
                    .arg(&ttl)
                    .invoke_async(c)
                    .await
            })
            .await?;
        let v: serde_json::Value = serde_json::from_str(&earlier?).ok()?;
        Some(Sent {
            message_id: v["m"].as_str()?.to_string(),
            timestamp: v["t"].as_str()?.to_string(),
        })
    }
}
