//! The per-module key/value store with TTL that policy modules reach through the host import
//! (e.g. to count events for a rate limit). [`KvStore`] is the seam for a cluster-wide (Redis)
//! implementation; [`MemoryKv`] is the single-node one, [`RedisKv`] (`redis.rs`) the one
//! across instances. Keys are namespaced per module.

mod redis;

pub use redis::RedisKv;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest key, in bytes.
pub const MAX_KEY: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Most keys one module may hold.
pub const MAX_KEYS_PER_MODULE: usize = 100_000;

/// A module's key/value store.
pub trait KvStore: Send + Sync + 'static {
    /// Reads a live key.
    fn get(&self, module: &str, key: &str) -> Option<String>;
    /// Writes a key (refused silently past the limits; the module sees the next get fail).
    fn set(&self, module: &str, key: &str, value: String, ttl: Option<Duration>);
    /// Adds to an integer key (absent or not an integer counts as 0); the TTL applies when the
    /// key is created.
    fn incr(&self, module: &str, key: &str, delta: i64, ttl: Option<Duration>) -> i64;
    /// Deletes a key.
    fn delete(&self, module: &str, key: &str);
}

struct Entry {
    value: String,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// Single-node key/value store. A std `Mutex` guards the map: held for one map operation.
#[derive(Default)]
pub struct MemoryKv {
    modules: Mutex<HashMap<String, HashMap<String, Entry>>>,
}

impl MemoryKv {
    fn with<R>(&self, module: &str, f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> R {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let map = modules.entry(module.to_string()).or_default();
        if map.len() >= MAX_KEYS_PER_MODULE {
            let now = Instant::now();
            map.retain(|_, e| e.live(now));
        }
        f(map)
    }
}

impl KvStore for MemoryKv {
    fn get(&self, module: &str, key: &str) -> Option<String> {
        let now = Instant::now();
        self.with(module, |m| {
            m.get(key).filter(|e| e.live(now)).map(|e| e.value.clone())
        })
    }

    fn set(&self, module: &str, key: &str, value: String, ttl: Option<Duration>) {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return;
        }
        self.with(module, |m| {
            if m.len() < MAX_KEYS_PER_MODULE || m.contains_key(key) {
                m.insert(
                    key.to_string(),
                    Entry {
                        value,
                        expires: ttl.map(|t| Instant::now() + t),
                    },
                );
            }
        })
    }

    fn incr(&self, module: &str, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        if key.len() > MAX_KEY {
            return 0;
        }
        let now = Instant::now();
        self.with(module, |m| {
            let current = m
                .get(key)
                .filter(|e| e.live(now))
                .map(|e| (e.value.parse::<i64>().unwrap_or(0), e.expires));
            let (old, expires) = match current {
                Some((v, exp)) => (v, exp),
                None => (0, ttl.map(|t| now + t)),
            };
            let new = old.saturating_add(delta);
            if m.len() < MAX_KEYS_PER_MODULE || m.contains_key(key) {
                m.insert(
                    key.to_string(),
                    Entry {
                        value: new.to_string(),
                        expires,
                    },
                );
            }
            new
        })
    }

    fn delete(&self, module: &str, key: &str) {
        self.with(module, |m| {
            m.remove(key);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_counters_with_ttl() {
        let kv = MemoryKv::default();
        assert_eq!(kv.incr("a", "k", 1, Some(Duration::from_millis(30))), 1);
        assert_eq!(kv.incr("a", "k", 2, None), 3);
        assert_eq!(
            kv.get("b", "k"),
            None,
            "modules do not see each other's keys"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(kv.incr("a", "k", 1, None), 1, "expired counter restarts");
        kv.set("a", "s", "v".into(), None);
        assert_eq!(kv.get("a", "s").as_deref(), Some("v"));
        kv.delete("a", "s");
        assert_eq!(kv.get("a", "s"), None);
        kv.set("a", "big", "x".repeat(MAX_VALUE + 1), None);
        assert_eq!(kv.get("a", "big"), None);
    }
}
