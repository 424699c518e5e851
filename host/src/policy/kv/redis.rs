//! The policy modules' key/value store in Redis (`P:kv:<module>:<key>`), so that a module's
//! counters (a rate limit, say) count across instances.
//!
//! The host imports are synchronous (a module calls them mid-`handle`), so each call waits for
//! Redis with `block_in_place` (the runtime moves this worker's other tasks elsewhere) within
//! [`CALL_TIMEOUT`](super::CALL_TIMEOUT). While Redis is down, or outside a multi-thread
//! runtime, the instance's own [`MemoryKv`] answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};

use super::{KvStore, MAX_KEY, MAX_VALUE, MemoryKv};
use crate::cluster::{RedisConn, lua};

/// Cluster-wide module key/value store.
pub struct RedisKv {
    redis: Arc<RedisConn>,
    local: MemoryKv,
}

impl RedisKv {
    /// Over the shared connection.
    pub fn new(redis: Arc<RedisConn>) -> RedisKv {
        RedisKv {
            redis,
            local: MemoryKv::default(),
        }
    }

    fn key(&self, module: &str, key: &str) -> String {
        self.redis.spread_key(&["kv", module, key])
    }

    /// Runs `f` against Redis from synchronous code; None when that is not possible now.
    fn block<T: redis::FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(&mut crate::cluster::Conn) -> redis::RedisResult<T>,
    ) -> Option<T> {
        if !self.redis.up() {
            return None;
        }
        let handle = Handle::try_current().ok()?;
        if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return None;
        }
        tokio::task::block_in_place(|| handle.block_on(self.redis.call(f)))
    }
}

impl KvStore for RedisKv {
    fn get(&self, module: &str, key: &str) -> Option<String> {
        let k = self.key(module, key);
        match self.block(async |c| {
            redis::cmd("GET")
                .arg(&k)
                .query_async::<Option<String>>(c)
                .await
        }) {
            Some(v) => v,
            None => self.local.get(module, key),
        }
    }

    fn set(&self, module: &str, key: &str, value: String, ttl: Option<Duration>) {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return;
        }
        let k = self.key(module, key);
        let done = self.block(async |c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&k).arg(&value);
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
            }
            cmd.query_async::<()>(c).await
        });
        if done.is_none() {
            self.local.set(module, key, value, ttl);
        }
    }

    fn incr(&self, module: &str, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        if key.len() > MAX_KEY {
            return 0;
        }
        let k = self.key(module, key);
        let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
        match self.block(async |c| {
            lua::INCR
                .key(&k)
                .arg(delta)
                .arg(ttl_ms)
                .invoke_async::<i64>(c)
                .await
        }) {
            Some(n) => n,
            None => self.local.incr(module, key, delta, ttl),
        }
    }

    fn delete(&self, module: &str, key: &str) {
        let k = self.key(module, key);
        let done = self.block(async |c| redis::cmd("DEL").arg(&k).query_async::<i64>(c).await);
        if done.is_none() {
            self.local.delete(module, key);
        }
    }
}
