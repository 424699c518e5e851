//! Policy module `rate-limiter`: at most `limit` `message:send` per user per `windowMs`
//! milliseconds (fixed windows), counted in the host key/value store (so cluster-wide when the
//! host's store is), refusing the rest with `RATE_LIMIT_EXCEEDED`.
//!
//! The sender is keyed by user id, else session id, else socket id. Each window is its own
//! counter (`msg:<sender>:<window number>`, created by `kv-incr` with a TTL of one window), so a
//! refused message counts too and a new window starts from zero.
//!
//! Config (JSON, all optional): `{"limit": 5, "windowMs": 1000}` (the defaults). Priority 1.

use nself_realtime_guest::{
    Descriptor, Event, Policy, Verdict, codes, export_policy, host, parse_config,
};
use serde::Deserialize;

/// The sidecar's config.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    limit: u32,
    window_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limit: 5,
            window_ms: 1000,
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
        Descriptor::new("rate-limiter", env!("CARGO_PKG_VERSION"))
            .with_events(["message:send"])
            .with_priority(1)
    }

    fn handle(&self, event: &Event) -> Verdict {
        let id = event.identity();
        let sender = match (id.user_id(), id.session_id()) {
            (Some(user), _) => format!("u:{user}"),
            (None, Some(session)) => format!("s:{session}"),
            (None, None) => format!("k:{}", event.socket_id()),
        };
        let window = self.config.window_ms;
        let key = format!("msg:{sender}:{}", host::now_ms() / window);
        let count = host::kv_incr(&key, 1, Some(window));
        if count > i64::from(self.config.limit) {
            return Verdict::reject(
                codes::RATE_LIMIT_EXCEEDED,
                format!(
                    "at most {} messages per {} ms",
                    self.config.limit, self.config.window_ms
                ),
            );
        }
        Verdict::allow()
    }
}

export_policy!(RateLimiter);

#[cfg(test)]
mod tests {
    use super::*;
    use nself_realtime_guest::testing;
    use serde_json::json;

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
        assert!(RateLimiter::configure(r#"{"limit": 5, "window": 1}"#).is_err());
    }
}
