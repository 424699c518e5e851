//! Policy module `room-policy`: who may join which rooms (`room:join`), refusing with
//! `ROOM_ACCESS_DENIED`.
//!
//! - Staff rooms: a room whose name starts with `staffPrefix` (default `staff-`) may only be
//!   joined by a user whose token `roles` contain `staffRole` (default `staff`).
//! - DM rooms: a room named `<dmPrefix><a>:<b>` (default prefix `dm:`, e.g. `dm:alice:bob`)
//!   may only be joined by user `a` or user `b`; a name under the prefix that is not of that
//!   form is refused.
//! - Anonymous users are refused both. Every other room is left to the server's own rules.
//!
//! Config (JSON, all optional):
//! `{"staffPrefix": "staff-", "staffRole": "staff", "dmPrefix": "dm:"}`; an empty prefix turns
//! its rule off. Priority 5.

use nself_realtime_guest::{
    Descriptor, Event, Policy, Verdict, codes, export_policy, parse_config,
};
use serde::Deserialize;

/// The sidecar's config.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    staff_prefix: String,
    staff_role: String,
    dm_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            staff_prefix: "staff-".to_owned(),
            staff_role: "staff".to_owned(),
            dm_prefix: "dm:".to_owned(),
        }
    }
}

/// The configured room policy.
pub struct RoomPolicy {
    config: Config,
}

/// Whether user `user` is one of the two users of DM room suffix `pair` (`a:b`). User ids may
/// contain `:`, so this checks both ways the name can be read.
fn dm_member(pair: &str, user: &str) -> bool {
    let first = pair
        .strip_prefix(user)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|other| !other.is_empty());
    let second = pair
        .strip_suffix(user)
        .and_then(|rest| rest.strip_suffix(':'))
        .is_some_and(|other| !other.is_empty());
    first || second
}

fn deny(message: String) -> Verdict {
    Verdict::reject(codes::ROOM_ACCESS_DENIED, message)
}

impl Policy for RoomPolicy {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = parse_config(config)?;
        if !config.staff_prefix.is_empty() && config.staff_role.is_empty() {
            return Err("staffRole must not be empty".to_owned());
        }
        Ok(RoomPolicy { config })
    }

    fn describe(&self) -> Descriptor {
        Descriptor::new("room-policy", env!("CARGO_PKG_VERSION"))
            .with_events(["room:join"])
            .with_priority(5)
    }

    fn handle(&self, event: &Event) -> Verdict {
        let Some(room) = event.room_name() else {
            return Verdict::allow(); // malformed join: the server answers VALIDATION_ERROR
        };
        let c = &self.config;
        if !c.staff_prefix.is_empty() && room.starts_with(&c.staff_prefix) {
            if event.identity().has_role(&c.staff_role) {
                return Verdict::allow();
            }
            return deny(format!(
                "room {room} is for users with role {}",
                c.staff_role
            ));
        }
        if !c.dm_prefix.is_empty()
            && let Some(pair) = room.strip_prefix(&c.dm_prefix)
        {
            return match event.user_id() {
                Some(user) if dm_member(pair, user) => Verdict::allow(),
                _ => deny(format!(
                    "room {room} is a direct conversation of other users"
                )),
            };
        }
        Verdict::allow()
    }
}

export_policy!(RoomPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use nself_realtime_guest::RoomInfo;
    use serde_json::json;

    fn join(room: &str) -> Event {
        Event::new("room:join", json!({ "roomName": room }))
    }

    fn default() -> RoomPolicy {
        RoomPolicy::configure("").expect("default config")
    }

    #[test]
    fn describes_itself() {
        let d = default().describe();
        assert_eq!((d.name.as_str(), d.priority), ("room-policy", 5));
        assert_eq!(d.events, ["room:join"]);
    }

    #[test]
    fn staff_rooms_need_the_role() {
        let p = default();
        let v = p.handle(&join("staff-lounge").with_user("u1").with_roles(["user"]));
        assert_eq!(v.reject_code(), Some("ROOM_ACCESS_DENIED"));
        assert!(p.handle(&join("staff-lounge")).is_reject(), "anonymous");
        let staff = join("staff-lounge")
            .with_user("u1")
            .with_roles(["user", "staff"]);
        assert!(p.handle(&staff).is_allow());
        assert!(p.handle(&join("general").with_user("u1")).is_allow());
        assert!(p.handle(&join("staffroom").with_user("u1")).is_allow());
    }

    #[test]
    fn room_info_name_is_used_when_present() {
        let event = join("general")
            .with_user("u1")
            .with_room(RoomInfo::new("staff-x", "channel", "private"));
        assert!(default().handle(&event).is_reject());
    }

    #[test]
    fn dm_rooms_only_for_their_two_users() {
        let p = default();
        assert!(
            p.handle(&join("dm:alice:bob").with_user("alice"))
                .is_allow()
        );
        assert!(p.handle(&join("dm:alice:bob").with_user("bob")).is_allow());
        assert!(
            p.handle(&join("dm:alice:bob").with_user("carol"))
                .is_reject()
        );
        assert!(p.handle(&join("dm:alice:bob").with_user("ali")).is_reject());
        assert!(p.handle(&join("dm:alice:bob")).is_reject(), "anonymous");
        assert!(
            p.handle(&join("dm:alice").with_user("alice")).is_reject(),
            "malformed"
        );
        assert!(
            p.handle(&join("dm:alice:").with_user("alice")).is_reject(),
            "malformed"
        );
        assert!(
            p.handle(&join("dm:a:b:c").with_user("a:b")).is_allow(),
            "ids with ':'"
        );
        let v = p.handle(&join("dm:alice:bob").with_user("eve"));
        assert_eq!(v.reject_code(), Some("ROOM_ACCESS_DENIED"));
    }

    #[test]
    fn configurable_and_switchable() {
        let p = RoomPolicy::configure(
            r#"{"staffPrefix": "ops.", "staffRole": "admin", "dmPrefix": ""}"#,
        )
        .expect("config");
        assert!(p.handle(&join("staff-lounge").with_user("u")).is_allow());
        assert!(p.handle(&join("ops.war-room").with_user("u")).is_reject());
        let admin = join("ops.war-room").with_user("u").with_roles(["admin"]);
        assert!(p.handle(&admin).is_allow());
        assert!(
            p.handle(&join("dm:a:b").with_user("c")).is_allow(),
            "DM rule off"
        );
        assert!(RoomPolicy::configure(r#"{"staffRole": ""}"#).is_err());
        assert!(RoomPolicy::configure(r#"{"prefix": "x"}"#).is_err());
    }

    #[test]
    fn odd_payloads_are_left_to_the_server() {
        let p = default();
        assert!(p.handle(&Event::new("room:join", json!({}))).is_allow());
        assert!(
            p.handle(&Event::new("room:join", json!({"roomName": 3})))
                .is_allow()
        );
        assert!(p.handle(&Event::from_json("room:join", "]")).is_allow());
    }
}
