//! Policy module `rate-limiter`: at most `limit` `message:send` per user per `windowMs`
//! milliseconds (fixed windows), counted in the host key/value store (so cluster-wide when the
//! host's store is), refusing the rest with `RATE_LIMIT_EXCEEDED`.
//!
//! The sender is keyed by user id, else session id, else socket id. Each window is its own
//! counter (`msg:<sender>:<window number>`, created by `kv-incr` with a TTL of one window), and
//! a new window starts from zero. A refusal tells the client when the window ends
//! (`error.details.retryAfterMs`).
//!
//! What counts (`count`):
//! - `"attempts"` (the default): every message the module sees, refused ones included. Strict:
//!   a flood is cut at `limit` whatever else happens to it.
//! - `"accepted"`: only messages the server accepted (heard through `accepted`, interface
//!   0.2.0), so a send the server refuses (`NOT_IN_ROOM`, a validation error, a later module)
//!   costs the user nothing. The count follows the server's answers, which the module hears
//!   just after the client does: a burst faster than that can pass a few messages over
//!   `limit`. For fairness limits, not for abuse.
//!
//! Config (JSON, all optional): `{"limit": 5, "windowMs": 1000, "count": "attempts"}` (the
//! defaults). Priority 1.

use nself_realtime_guest::{
    Descriptor, Event, Policy, Verdict, codes, export_policy, host, parse_config,
};
use serde::Deserialize;
use serde_json::json;

/// The sidecar's config.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    limit: u32,
    window_ms: u64,
    count: Count,
}

/// What a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Count {
    /// Every message seen.
    #[default]
    Attempts,
    /// Messages the server accepted.
    Accepted,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limit: 5,
            window_ms: 1000,
            count: Count::Attempts,
        }
    }
}

/// The configured limiter.
pub struct RateLimiter {
    config: Config,
}

impl Policy for RateLimiter {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        if config.window_ms == 0 {
            return Err("windowMs must be at least 1".to_owned());
        }
        Ok(RateLimiter { config })
    }

    fn describe(&self) -> Descriptor {
        let d = Descriptor::new("rate-limiter", env!("CARGO_PKG_VERSION"))
            .with_events(["message:send"])
            .with_priority(1);
        match self.config.count {
            Count::Attempts => d,
            Count::Accepted => d.with_accepted(["message:send"]),
        }
    }

    fn handle(&self, event: &Event) -> Verdict {
        let window = self.config.window_ms;
        let now = host::now_ms();
        let key = key(event, now / window);
        let used = match self.config.count {
            // This message included.
            Count::Attempts => host::kv_incr(&key, 1, Some(window)),
            // Those accepted so far, plus this one.
            Count::Accepted => host::kv_get(&key).and_then(|v| v.parse().ok()).unwrap_or(0) + 1,
        };
        if used > i64::from(self.config.limit) {
            let retry_after_ms = window - now % window;
            return Verdict::reject(
                codes::RATE_LIMIT_EXCEEDED,
                format!(
                    "at most {} messages per {} ms",
                    self.config.limit, self.config.window_ms
                ),
            )
            .with_details(json!({ "retryAfterMs": retry_after_ms }));
        }
        Verdict::allow()
    }

    fn accepted(&self, event: &Event) {
        if self.config.count == Count::Accepted {
            let window = self.config.window_ms;
            host::kv_incr(&key(event, host::now_ms() / window), 1, Some(window));
        }
    }
}

/// The counter of the event's sender in window number `window`.
fn key(event: &Event, window: u64) -> String {
    let id = event.identity();
    match (id.user_id(), id.session_id()) {
        (Some(user), _) => format!("msg:u:{user}:{window}"),
        (None, Some(session)) => format!("msg:s:{session}:{window}"),
        (None, None) => format!("msg:k:{}:{window}", event.socket_id()),
    }
}

export_policy!(RateLimiter);

#[cfg(test)]
mod tests {
    use super::*;
    use nself_realtime_guest::testing;

    fn send() -> Event {
        Event::new("message:send", json!({"roomName": "r", "content": "hi"}))
    }

    fn verdicts(p: &RateLimiter, event: &Event, n: usize) -> Vec<bool> {
        (0..n).map(|_| p.handle(event).is_allow()).collect()
    }

    #[test]
    fn describes_itself() {
        let d = RateLimiter::configure("").expect("default").describe();
        assert_eq!((d.name.as_str(), d.priority), ("rate-limiter", 1));
        assert_eq!(d.events, ["message:send"]);
    }

    #[test]
    fn limits_per_user_per_window() {
        testing::set_now_ms(1_000_000);
        let p = RateLimiter::configure(r#"{"limit": 3, "windowMs": 1000}"#).expect("config");
        let alice = send().with_user("alice");
        assert_eq!(verdicts(&p, &alice, 5), [true, true, true, false, false]);
        let v = p.handle(&alice);
        assert_eq!(v.reject_code(), Some("RATE_LIMIT_EXCEEDED"));
        assert!(p.handle(&send().with_user("bob")).is_allow(), "per user");
        testing::advance_ms(999);
        assert!(p.handle(&alice).is_reject(), "same window");
        testing::advance_ms(1);
        assert_eq!(
            verdicts(&p, &alice, 4),
            [true, true, true, false],
            "new window"
        );
    }

    #[test]
    fn a_refusal_says_when_the_window_ends() {
        testing::set_now_ms(10_250);
        let p = RateLimiter::configure(r#"{"limit": 1, "windowMs": 1000}"#).expect("config");
        let e = send().with_user("u");
        assert!(p.handle(&e).is_allow());
        let v = p.handle(&e);
        assert_eq!(v.reject_details(), Some(&json!({"retryAfterMs": 750})));
    }

    #[test]
    fn counting_accepted_messages_only() {
        testing::set_now_ms(0);
        let p = RateLimiter::configure(r#"{"limit": 2, "count": "accepted"}"#).expect("config");
        assert_eq!(p.describe().accepted, ["message:send"]);
        let e = send().with_user("u");
        // Seen but never accepted (say the server answered NOT_IN_ROOM): nothing counted.
        assert_eq!(verdicts(&p, &e, 4), [true, true, true, true]);
        p.accepted(&e);
        assert!(p.handle(&e).is_allow());
        p.accepted(&e);
        assert_eq!(p.handle(&e).reject_code(), Some("RATE_LIMIT_EXCEEDED"));
        testing::advance_ms(1000);
        assert!(p.handle(&e).is_allow(), "a new window");
    }

    #[test]
    fn defaults_are_five_per_second() {
        testing::set_now_ms(0);
        let p = RateLimiter::configure("").expect("default");
        let e = send().with_user("u");
        assert_eq!(verdicts(&p, &e, 6), [true, true, true, true, true, false]);
    }

    #[test]
    fn anonymous_senders_are_keyed_by_session_then_socket() {
        testing::set_now_ms(0);
        let p = RateLimiter::configure(r#"{"limit": 1}"#).expect("config");
        assert!(p.handle(&send().with_session("s1")).is_allow());
        assert!(p.handle(&send().with_session("s1")).is_reject());
        assert!(p.handle(&send().with_socket_id("a")).is_allow());
        assert!(p.handle(&send().with_socket_id("a")).is_reject());
        assert!(p.handle(&send().with_socket_id("b")).is_allow());
    }

    #[test]
    fn counters_expire_with_the_window() {
        testing::set_now_ms(10_500);
        let p = RateLimiter::configure(r#"{"limit": 1, "windowMs": 1000}"#).expect("config");
        assert!(p.handle(&send().with_user("u")).is_allow());
        assert_eq!(host::kv_get("msg:u:u:10").as_deref(), Some("1"));
        testing::advance_ms(1000);
        assert_eq!(host::kv_get("msg:u:u:10"), None);
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(RateLimiter::configure(r#"{"windowMs": 0}"#).is_err());
        assert!(RateLimiter::configure(r#"{"limit": -1}"#).is_err());
        assert!(RateLimiter::configure(r#"{"count": "everything"}"#).is_err());
        assert!(RateLimiter::configure(r#"{"limit": 5, "window": 1}"#).is_err());
    }
}
