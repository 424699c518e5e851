//! The native (non-wasm) stand-in for the host, and controls for tests.
//!
//! When a module is compiled for anything but `wasm32` (that is, under `cargo test`), the
//! functions of [`crate::host`] do not call a host; they use this stand-in instead:
//!
//! - **log**: prints `[module log LEVEL] message` to stderr (shown by `cargo test` for failing
//!   tests) and records it; read the record with [`logs`] / [`take_logs`].
//! - **clock**: [`now_ms`](crate::host::now_ms) is the system clock, unless a test froze it with
//!   [`set_now_ms`] (then it moves only with [`advance_ms`]).
//! - **key/value store**: an in-memory map with the host's TTL semantics.
//!
//! All of this state belongs to the **current thread**. `cargo test` runs each test on its own
//! thread, so tests do not see each other's keys, logs or clock and need no locking; call
//! [`reset`] to start over inside one test.
//!
//! ```
//! use nself_realtime_guest::{host, testing};
//!
//! testing::set_now_ms(1_000);
//! assert_eq!(host::kv_incr("hits", 1, Some(500)), 1);
//! assert_eq!(host::kv_incr("hits", 1, Some(500)), 2);
//! testing::advance_ms(500); // the window is over
//! assert_eq!(host::kv_get("hits"), None);
//! assert_eq!(host::kv_incr("hits", 1, Some(500)), 1);
//! ```

use crate::host::Level;

pub(crate) mod native {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::{SystemTime, UNIX_EPOCH};

    use crate::host::Level;

    #[derive(Default)]
    pub(crate) struct State {
        pub(crate) clock: Option<u64>,
        pub(crate) store: HashMap<String, (String, Option<u64>)>,
        pub(crate) logs: Vec<(Level, String)>,
    }

    thread_local! {
        pub(crate) static STATE: RefCell<State> = RefCell::new(State::default());
    }

    pub fn log(level: Level, message: &str) {
        eprintln!("[module log {level}] {message}");
        STATE.with_borrow_mut(|s| s.logs.push((level, message.to_owned())));
    }

    pub fn now_ms() -> u64 {
        STATE.with_borrow(|s| s.clock).unwrap_or_else(system_ms)
    }

    pub(crate) fn system_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The live value of `key`, dropping it if it expired.
    fn live<'a>(
        state: &'a mut State,
        key: &str,
        now: u64,
    ) -> Option<&'a mut (String, Option<u64>)> {
        if let Some((_, Some(expires))) = state.store.get(key)
            && *expires <= now
        {
            state.store.remove(key);
        }
        state.store.get_mut(key)
    }

    pub fn kv_get(key: &str) -> Option<String> {
        let now = now_ms();
        STATE.with_borrow_mut(|s| live(s, key, now).map(|(v, _)| v.clone()))
    }

    pub fn kv_set(key: &str, value: &str, ttl_ms: Option<u64>) {
        let now = now_ms();
        let expires = ttl_ms.map(|ttl| now.saturating_add(ttl));
        STATE.with_borrow_mut(|s| {
            s.store.insert(key.to_owned(), (value.to_owned(), expires));
        });
    }

    pub fn kv_incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        let now = now_ms();
        STATE.with_borrow_mut(|s| match live(s, key, now) {
            Some((value, _)) => {
                // A value that is not an integer counts as 0 here.
                let next = value.parse::<i64>().unwrap_or(0).saturating_add(delta);
                *value = next.to_string();
                next
            }
            None => {
                let expires = ttl_ms.map(|ttl| now.saturating_add(ttl));
                s.store.insert(key.to_owned(), (delta.to_string(), expires));
                delta
            }
        })
    }

    pub fn kv_delete(key: &str) {
        STATE.with_borrow_mut(|s| {
            s.store.remove(key);
        });
    }
}

/// Clears this thread's store and log record and returns the clock to the system clock.
pub fn reset() {
    native::STATE.with_borrow_mut(|s| *s = native::State::default());
}

/// Freezes this thread's clock at `ms` (milliseconds since the Unix epoch).
pub fn set_now_ms(ms: u64) {
    native::STATE.with_borrow_mut(|s| s.clock = Some(ms));
}

/// Moves this thread's clock forward by `ms`, freezing it first at the current system time if a
/// test has not frozen it yet.
pub fn advance_ms(ms: u64) {
    native::STATE.with_borrow_mut(|s| {
        let now = s.clock.unwrap_or_else(native::system_ms);
        s.clock = Some(now.saturating_add(ms));
    });
}

/// Returns this thread's clock to the system clock.
pub fn use_system_clock() {
    native::STATE.with_borrow_mut(|s| s.clock = None);
}

/// The log lines written on this thread so far.
pub fn logs() -> Vec<(Level, String)> {
    native::STATE.with_borrow(|s| s.logs.clone())
}

/// The log lines written on this thread so far, clearing the record.
pub fn take_logs() -> Vec<(Level, String)> {
    native::STATE.with_borrow_mut(|s| std::mem::take(&mut s.logs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;

    #[test]
    fn kv_set_get_delete_with_ttl() {
        set_now_ms(10_000);
        host::kv_set("a", "1", Some(100));
        host::kv_set("b", "2", None);
        assert_eq!(host::kv_get("a").as_deref(), Some("1"));
        advance_ms(99);
        assert_eq!(host::kv_get("a").as_deref(), Some("1"));
        advance_ms(1);
        assert_eq!(host::kv_get("a"), None);
        assert_eq!(host::kv_get("b").as_deref(), Some("2"));
        host::kv_delete("b");
        assert_eq!(host::kv_get("b"), None);
    }

    #[test]
    fn kv_incr_ttl_applies_on_creation_only() {
        set_now_ms(0);
        assert_eq!(host::kv_incr("c", 2, Some(1_000)), 2);
        advance_ms(900);
        assert_eq!(host::kv_incr("c", 3, Some(1_000)), 5);
        advance_ms(100);
        assert_eq!(host::kv_incr("c", 1, Some(1_000)), 1);
        assert_eq!(host::kv_incr("n", -4, None), -4);
        host::kv_set("s", "text", None);
        assert_eq!(host::kv_incr("s", 1, None), 1);
    }

    #[test]
    fn state_is_per_thread_and_resettable() {
        host::kv_set("k", "v", None);
        host::log(Level::Info, "hello");
        let other = std::thread::spawn(|| (host::kv_get("k"), logs().len()))
            .join()
            .expect("thread");
        assert_eq!(other, (None, 0));
        assert_eq!(logs(), vec![(Level::Info, "hello".to_owned())]);
        assert_eq!(take_logs().len(), 1);
        assert!(logs().is_empty());
        reset();
        assert_eq!(host::kv_get("k"), None);
    }

    #[test]
    fn clock_can_be_frozen_and_released() {
        set_now_ms(5);
        assert_eq!(host::now_ms(), 5);
        advance_ms(5);
        assert_eq!(host::now_ms(), 10);
        use_system_clock();
        assert!(host::now_ms() > 1_600_000_000_000);
    }
}
