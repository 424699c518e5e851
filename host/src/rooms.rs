//! Room rules, enforced natively: name syntax, who may join, who may send (SPEC §7).
//! Pure functions over store rows; the pipeline calls them after the policy chain.

use crate::auth::Identity;
use crate::error::{EventError, code};
use crate::store::{Member, Role, Room, RoomType, Visibility};

/// Longest room name.
pub const MAX_ROOM_NAME: usize = 255;

/// Room names are 1-255 characters of `[A-Za-z0-9_.:@-]`. Server-internal rooms use other
/// characters (`#`), so a client can never name one.
pub fn validate_room_name(name: &str) -> Result<(), EventError> {
    if name.is_empty() || name.len() > MAX_ROOM_NAME {
        return Err(EventError::validation(
            "roomName",
            "must be 1-255 characters",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
    {
        return Err(EventError::validation(
            "roomName",
            "may contain only letters, digits and _ . : @ -",
        ));
    }
    Ok(())
}

/// The internal room every socket of a user is in (never joinable by name).
pub fn user_room(user_id: &str) -> String {
    format!("{USER_ROOM_PREFIX}{user_id}")
}

/// Prefix of the internal per-user rooms.
pub const USER_ROOM_PREFIX: &str = "#user:";

/// Whether `role` may send in broadcast rooms.
fn is_staff(member: Option<&Member>) -> bool {
    member.is_some_and(|m| matches!(m.role, Role::Admin | Role::Moderator))
}

/// May this identity join the room? `member_count` is the persistent member count.
pub fn check_join(
    room: &Room,
    member: Option<&Member>,
    identity: &Identity,
    member_count: i64,
) -> Result<(), EventError> {
    if !room.is_active {
        return Err(EventError::room_not_found());
    }
    if member.is_some_and(|m| m.is_banned) {
        return Err(EventError::new(
            code::ROOM_ACCESS_DENIED,
            "You are banned from this room",
        ));
    }
    let members_only = matches!(room.room_type, RoomType::Dm | RoomType::Group)
        || matches!(room.visibility, Visibility::Private | Visibility::Secret);
    if members_only && member.is_none() {
        // A secret room answers a stranger exactly like a room that does not exist.
        if room.visibility == Visibility::Secret {
            return Err(EventError::room_not_found());
        }
        return Err(EventError::new(
            code::ROOM_ACCESS_DENIED,
            "This room is for its members only",
        ));
    }
    let already_member = member.is_some() && identity.is_authenticated();
    if let Some(max) = room.max_members
        && !already_member
        && member_count >= i64::from(max)
    {
        return Err(EventError::new(code::ROOM_FULL, "Room is full"));
    }
    Ok(())
}

/// May this member post in the room?
pub fn check_send(room: &Room, member: Option<&Member>) -> Result<(), EventError> {
    if member.is_some_and(|m| m.is_banned) {
        return Err(EventError::new(
            code::ROOM_ACCESS_DENIED,
            "You are banned from this room",
        ));
    }
    if member.is_some_and(|m| m.is_muted) {
        return Err(EventError::new(code::MUTED, "You are muted in this room"));
    }
    if room.room_type == RoomType::Broadcast && !is_staff(member) {
        return Err(EventError::new(
            code::ROOM_ACCESS_DENIED,
            "Only admins and moderators may send in a broadcast room",
        ));
    }
    Ok(())
}

/// Whether leaving should delete the membership row: only a plain self-made membership of a
/// public room. Grants (private/dm/group rooms, elevated roles) and sanctions (muted, banned)
/// stay, or leaving would let a muted user shed the mute, or lock a member out of a private room.
pub fn leave_deletes_membership(room: &Room, member: Option<&Member>) -> bool {
    let open_room = room.visibility == Visibility::Public
        && matches!(room.room_type, RoomType::Channel | RoomType::Broadcast);
    open_room && member.is_some_and(|m| m.role == Role::Member && !m.is_muted && !m.is_banned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn room(t: RoomType, v: Visibility, max: Option<i32>) -> Room {
        Room {
            id: "r".into(),
            name: "r".into(),
            room_type: t,
            visibility: v,
            max_members: max,
            is_active: true,
            settings: json!({}),
            metadata: json!({}),
            created_at: Utc::now(),
        }
    }

    fn member(role: &str, muted: bool, banned: bool) -> Member {
        Member {
            user_id: "u".into(),
            role: role.parse().expect("test role"),
            is_muted: muted,
            is_banned: banned,
        }
    }

    fn user() -> Identity {
        Identity {
            user_id: Some("u".into()),
            ..Identity::anonymous()
        }
    }

    fn code_of(r: Result<(), EventError>) -> Option<String> {
        r.err().map(|e| e.code.into_owned())
    }

    #[test]
    fn names() {
        for ok in ["general", "a", "team-1.chat:x@y_z", &"x".repeat(255)] {
            assert!(validate_room_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "#user:1",
            "ü",
            "a/b",
            &"x".repeat(256),
            "a\0b",
        ] {
            assert!(validate_room_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_room_name(&user_room("u1")).is_err());
    }

    #[test]
    fn join_rules() {
        use RoomType::*;
        use Visibility::*;
        let u = user();
        let m = member("member", false, false);
        let cases: Vec<(Room, Option<Member>, i64, Option<&str>)> = vec![
            (room(Channel, Public, None), None, 0, None),
            (
                room(Channel, Private, None),
                None,
                0,
                Some(code::ROOM_ACCESS_DENIED),
            ),
            (room(Channel, Secret, None), Some(m.clone()), 0, None),
            (
                room(Channel, Secret, None),
                None,
                0,
                Some(code::ROOM_NOT_FOUND),
            ),
            (
                room(Dm, Public, None),
                None,
                0,
                Some(code::ROOM_ACCESS_DENIED),
            ),
            (room(Group, Public, None), Some(m.clone()), 1, None),
            (
                room(Channel, Public, None),
                Some(member("member", false, true)),
                0,
                Some(code::ROOM_ACCESS_DENIED),
            ),
            (
                room(Channel, Public, Some(2)),
                None,
                2,
                Some(code::ROOM_FULL),
            ),
            (room(Channel, Public, Some(2)), Some(m.clone()), 2, None),
            (room(Channel, Public, Some(2)), None, 1, None),
        ];
        for (r, mem, count, want) in cases {
            assert_eq!(
                code_of(check_join(&r, mem.as_ref(), &u, count)).as_deref(),
                want,
                "{:?}/{:?} member={mem:?} count={count}",
                r.room_type,
                r.visibility
            );
        }
        let mut inactive = room(Channel, Public, None);
        inactive.is_active = false;
        assert_eq!(
            code_of(check_join(&inactive, None, &u, 0)).as_deref(),
            Some(code::ROOM_NOT_FOUND)
        );
    }

    #[test]
    fn send_rules() {
        use RoomType::*;
        use Visibility::*;
        let ch = room(Channel, Public, None);
        let bc = room(Broadcast, Public, None);
        assert_eq!(code_of(check_send(&ch, None)), None);
        assert_eq!(
            code_of(check_send(&ch, Some(&member("member", true, false)))).as_deref(),
            Some(code::MUTED)
        );
        assert_eq!(
            code_of(check_send(&bc, Some(&member("member", false, false)))).as_deref(),
            Some(code::ROOM_ACCESS_DENIED)
        );
        assert_eq!(
            code_of(check_send(&bc, None)).as_deref(),
            Some(code::ROOM_ACCESS_DENIED)
        );
        assert_eq!(
            code_of(check_send(&bc, Some(&member("moderator", false, false)))),
            None
        );
        assert_eq!(
            code_of(check_send(&bc, Some(&member("admin", false, false)))),
            None
        );
    }

    #[test]
    fn leaving_keeps_grants_and_sanctions() {
        use RoomType::*;
        use Visibility::*;
        let plain = member("member", false, false);
        assert!(leave_deletes_membership(
            &room(Channel, Public, None),
            Some(&plain)
        ));
        assert!(!leave_deletes_membership(
            &room(Channel, Private, None),
            Some(&plain)
        ));
        assert!(!leave_deletes_membership(
            &room(Group, Public, None),
            Some(&plain)
        ));
        assert!(!leave_deletes_membership(
            &room(Channel, Public, None),
            Some(&member("member", true, false))
        ));
        assert!(!leave_deletes_membership(
            &room(Channel, Public, None),
            Some(&member("admin", false, false))
        ));
    }
}
