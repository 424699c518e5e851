//! Safe wrappers around what the host offers a module (the `host` interface of the WIT):
//! logging, the clock and a small per-module key/value store with TTL.
//!
//! Inside the host (target `wasm32`) these call the host. On any other target (your
//! `cargo test`) they fall back to an in-process stand-in, see [`crate::testing`]: the log
//! prints to stderr (and is recorded), the clock is the system clock unless a test sets it, and
//! the store is an in-memory map with TTL that belongs to the current thread, so every `#[test]`
//! starts with an empty store.

use std::fmt;

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something odd, handled.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        })
    }
}

/// Writes a log line attributed to the module (the host adds the module's name).
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// [`log`] at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// [`log`] at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// [`log`] at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// [`log`] at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// Reads a key of this module's store (`None` if absent or expired).
pub fn kv_get(key: &str) -> Option<String> {
    imp::kv_get(key)
}

/// Writes a key, expiring after `ttl_ms` milliseconds when given (else never).
pub fn kv_set(key: &str, value: &str, ttl_ms: Option<u64>) {
    imp::kv_set(key, value, ttl_ms)
}

/// Adds `delta` to an integer key (a missing key counts as 0) and returns the new value;
/// `ttl_ms` applies only when this call creates the key, so a counter created with a TTL is a
/// fixed window.
pub fn kv_incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
    imp::kv_incr(key, delta, ttl_ms)
}

/// Deletes a key.
pub fn kv_delete(key: &str) {
    imp::kv_delete(key)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::__private::bindings::nself::realtime::host as wit;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message)
    }

    pub fn now_ms() -> u64 {
        wit::now_ms()
    }

    pub fn kv_get(key: &str) -> Option<String> {
        wit::kv_get(key)
    }

    pub fn kv_set(key: &str, value: &str, ttl_ms: Option<u64>) {
        wit::kv_set(key, value, ttl_ms)
    }

    pub fn kv_incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        wit::kv_incr(key, delta, ttl_ms)
    }

    pub fn kv_delete(key: &str) {
        wit::kv_delete(key)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub use crate::testing::native::{kv_delete, kv_get, kv_incr, kv_set, log, now_ms};
}
