//! `rooms [list|create|delete|info|add-member|remove-member]` and the older top-level
//! `create-room`, `add-member`, `remove-member`. Every value reaches the store as a bound
//! parameter; a room name is validated before anything is written.

use serde_json::json;

use super::print::{outln, print_json};
use super::{AddMemberArgs, CreateRoomArgs, RemoveMemberArgs, RoomHistoryArgs, RoomsCommand};
use crate::config::Config;
use crate::rooms::validate_room_name;
use crate::store::{NewRoom, Room, RoomType, Store};

const ROLES: [&str; 4] = ["admin", "moderator", "member", "guest"];

/// Runs one `rooms` action (`None`: list).
pub async fn run(
    config: &Config,
    store: &Store,
    action: Option<RoomsCommand>,
    json: bool,
) -> anyhow::Result<()> {
    match action {
        None => list(store, json).await,
        Some(RoomsCommand::List { json }) => list(store, json).await,
        Some(RoomsCommand::Create(args)) => create(store, args).await,
        Some(RoomsCommand::Delete { name, json }) => delete(store, &name, json).await,
        Some(RoomsCommand::Info { name, json }) => info(store, &name, json).await,
        Some(RoomsCommand::AddMember(args)) => add_member(store, args).await,
        Some(RoomsCommand::RemoveMember(args)) => remove_member(store, args).await,
        Some(RoomsCommand::History(args)) => history(config, store, args).await,
    }
}

/// `settings.history` from `--history-size` / `--history-ttl` (empty: none given).
fn history_settings(
    size: Option<u32>,
    ttl: Option<&str>,
    flag: &str,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut history = serde_json::Map::new();
    if let Some(size) = size {
        history.insert("size".into(), json!(size));
    }
    if let Some(ttl) = ttl {
        let secs = crate::util::parse_seconds(ttl).map_err(|e| anyhow::anyhow!("--{flag} {e}"))?;
        history.insert("ttl".into(), json!(secs));
    }
    Ok(history)
}

/// Shows or changes a room's history settings; the room's other settings are kept.
async fn history(config: &Config, store: &Store, args: RoomHistoryArgs) -> anyhow::Result<()> {
    let RoomHistoryArgs {
        name,
        size,
        ttl,
        defaults,
        json,
    } = args;
    let own = history_settings(size, ttl.as_deref(), "ttl")?;
    let mut room = existing(store, &name).await?;
    let changed = defaults || !own.is_empty();
    if changed {
        let mut settings = match room.settings.take() {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        if defaults {
            settings.remove("history");
        } else {
            let mut history = settings
                .get("history")
                .and_then(|h| h.as_object().cloned())
                .unwrap_or_default();
            history.extend(own);
            settings.insert("history".into(), serde_json::Value::Object(history));
        }
        room.settings = serde_json::Value::Object(settings);
        if !store.set_room_settings(&name, &room.settings).await? {
            anyhow::bail!("room not found: {name:?}");
        }
    }
    let effective = crate::history::settings(config, &room);
    let own = room.settings.get("history").cloned();
    if json {
        print_json(&json!({
            "name": name,
            "changed": changed,
            "own": own,
            "history": effective.map(|s| json!({"size": s.size, "ttl": s.ttl.as_secs()})),
        }));
        return Ok(());
    }
    let source = if own.is_some() {
        "the room's own settings"
    } else {
        "REALTIME_HISTORY_SIZE / REALTIME_HISTORY_TTL"
    };
    let verb = if changed {
        "✓ History of"
    } else {
        "History of"
    };
    match effective {
        Some(s) => outln!(
            "{verb} {name}: {} messages, kept {} s (from {source})",
            s.size,
            s.ttl.as_secs()
        ),
        None => outln!("{verb} {name}: off (from {source})"),
    }
    Ok(())
}

/// The original's `rooms` table.
async fn list(store: &Store, json: bool) -> anyhow::Result<()> {
    let rooms = store.rooms(true).await?;
    if json {
        print_json(&serde_json::to_value(&rooms)?);
        return Ok(());
    }
    outln!("\nActive Rooms");
    outln!("{}", "=".repeat(70));
    outln!("NAME                TYPE        VISIBILITY   CREATED");
    outln!("{}", "-".repeat(70));
    for r in rooms {
        outln!(
            "{:<20} {:<12} {:<12} {}",
            r.name,
            r.room_type.as_str(),
            r.visibility.as_str(),
            r.created_at.format("%Y-%m-%d")
        );
    }
    outln!("{}\n", "=".repeat(70));
    Ok(())
}

/// A room by name, or the error every action prints for an unknown one.
async fn existing(store: &Store, name: &str) -> anyhow::Result<Room> {
    store
        .room(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("room not found: {name:?}"))
}

/// Creates a room; an existing one is left as it is, except that a deleted one is reactivated.
pub async fn create(store: &Store, args: CreateRoomArgs) -> anyhow::Result<()> {
    let CreateRoomArgs {
        name,
        room_type,
        visibility,
        max_members,
        history_size,
        history_ttl,
        json,
    } = args;
    validate_room_name(&name).map_err(|e| anyhow::anyhow!("{} (got {name:?})", e.message))?;
    if max_members.is_some_and(|m| m < 1) {
        anyhow::bail!("--max-members must be at least 1");
    }
    let history = history_settings(history_size, history_ttl.as_deref(), "history-ttl")?;
    let settings = if history.is_empty() {
        json!({})
    } else {
        json!({ "history": history })
    };
    let existed = store.room(&name).await?.is_some();
    let mut room = store
        .create_room(&NewRoom {
            name,
            room_type,
            visibility,
            max_members,
            settings,
        })
        .await?;
    let reactivated = !room.is_active && store.set_room_active(&room.name, true).await?;
    if reactivated {
        room.is_active = true;
    }
    if json {
        let mut v = serde_json::to_value(&room)?;
        v["reactivated"] = json!(reactivated);
        v["existed"] = json!(existed);
        print_json(&v);
    } else {
        let verb = if reactivated {
            "reactivated"
        } else if existed {
            "exists (left unchanged)"
        } else {
            "created"
        };
        outln!(
            "✓ Room {verb}: {} ({}, {})",
            room.name,
            room.room_type,
            room.visibility
        );
    }
    Ok(())
}

/// Soft delete: `is_active = false` (joins get `ROOM_NOT_FOUND`, the row and members stay).
async fn delete(store: &Store, name: &str, json: bool) -> anyhow::Result<()> {
    let room = existing(store, name).await?;
    if !room.is_active {
        anyhow::bail!("room already deleted: {name:?}");
    }
    if !store.set_room_active(name, false).await? {
        anyhow::bail!("room not found: {name:?}");
    }
    if json {
        print_json(&json!({"name": name, "id": room.id, "deleted": true}));
    } else {
        outln!("✓ Room deleted: {name}");
    }
    Ok(())
}

/// A room (active or deleted) with its members.
async fn info(store: &Store, name: &str, json: bool) -> anyhow::Result<()> {
    let room = existing(store, name).await?;
    let members = store.members(&room.id).await?;
    if json {
        print_json(&json!({"room": room, "members": members, "memberCount": members.len()}));
        return Ok(());
    }
    outln!("\nRoom: {}", room.name);
    outln!("{}", "=".repeat(70));
    outln!("ID:          {}", room.id);
    outln!("Type:        {}", room.room_type);
    outln!("Visibility:  {}", room.visibility);
    outln!(
        "Max members: {}",
        room.max_members
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into())
    );
    outln!(
        "Active:      {}",
        if room.is_active {
            "yes"
        } else {
            "no (deleted)"
        }
    );
    outln!(
        "Created:     {}",
        room.created_at.format("%Y-%m-%d %H:%M:%S")
    );
    outln!("\nMembers ({})", members.len());
    outln!("{}", "-".repeat(70));
    outln!("USER ID                        ROLE        MUTED  BANNED");
    for m in &members {
        outln!(
            "{:<30} {:<11} {:<6} {}",
            m.user_id,
            m.role,
            if m.is_muted { "yes" } else { "no" },
            if m.is_banned { "yes" } else { "no" }
        );
    }
    outln!("{}\n", "=".repeat(70));
    Ok(())
}

/// Grants or updates a membership.
pub async fn add_member(store: &Store, args: AddMemberArgs) -> anyhow::Result<()> {
    let AddMemberArgs {
        room,
        user,
        role,
        muted,
        banned,
        json,
    } = args;
    if !ROLES.contains(&role.as_str()) {
        anyhow::bail!("--role must be one of {}", ROLES.join(", "));
    }
    if user.is_empty() || user.len() > 255 {
        anyhow::bail!("user id must be 1-255 bytes");
    }
    let r = existing(store, &room).await?;
    if r.room_type == RoomType::Dm {
        let members = store.members(&r.id).await?;
        if members.len() >= 2 && !members.iter().any(|m| m.user_id == user) {
            anyhow::bail!("a dm room has at most 2 members");
        }
    }
    store.add_member(&room, &user, &role, muted, banned).await?;
    if json {
        print_json(
            &json!({"room": room, "userId": user, "role": role, "muted": muted, "banned": banned}),
        );
    } else {
        outln!("✓ Member added: {user} to {room} ({role})");
    }
    Ok(())
}

/// Removes a membership.
pub async fn remove_member(store: &Store, args: RemoveMemberArgs) -> anyhow::Result<()> {
    let RemoveMemberArgs { room, user, json } = args;
    existing(store, &room).await?;
    if !store.remove_member(&room, &user).await? {
        anyhow::bail!("{user} is not a member of {room}");
    }
    if json {
        print_json(&json!({"room": room, "userId": user, "removed": true}));
    } else {
        outln!("✓ Member removed: {user} from {room}");
    }
    Ok(())
}
