//! Management subcommands against the store, printing the original's table formats.

use std::io::Write;

use chrono::{SecondsFormat, Utc};
use serde_json::json;

use super::Command;
use crate::config::Config;
use crate::rooms::validate_room_name;
use crate::server::create_default_rooms;
use crate::store::{NewRoom, Store};

/// `println!` that does not panic when stdout is closed (e.g. piped into `head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

fn print_json(v: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Truncates to `n` characters (the original sliced JavaScript strings).
fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

const ROLES: [&str; 4] = ["admin", "moderator", "member", "guest"];

/// Runs a management subcommand (everything but `serve`).
pub async fn run_command(config: &Config, command: Command) -> anyhow::Result<()> {
    if let Command::Plugins { json } = command {
        return super::plugins::run(config, json).await;
    }
    let store = Store::connect(&config.database_url).await?;
    match command {
        // `serve` is dispatched by main, `plugins` above.
        Command::Serve | Command::Plugins { .. } => {}
        Command::Init { json } => {
            if !json {
                outln!("Creating default rooms...");
            }
            create_default_rooms(&store).await?;
            if !json {
                outln!("Cleaning up stale data...");
            }
            let before =
                Utc::now() - chrono::Duration::days(i64::from(config.event_retention_days));
            let removed = store.cleanup(before).await?;
            if json {
                print_json(
                    &json!({"success": true, "defaultRooms": crate::server::DEFAULT_ROOMS, "removedRows": removed}),
                );
            } else {
                outln!("✓ Initialization complete");
            }
        }
        Command::Stats { json } => {
            let s = store.stats().await?;
            if json {
                print_json(&serde_json::to_value(&s)?);
            } else {
                let line = "=".repeat(50);
                outln!("\nRealtime Server Statistics");
                outln!("{line}");
                outln!("Active Connections:      {}", s.active_connections);
                outln!("Authenticated Users:     {}", s.authenticated_connections);
                outln!("Active Rooms:            {}", s.active_rooms);
                outln!("\nPresence:");
                outln!("  Online:  {}", s.presence.online);
                outln!("  Away:    {}", s.presence.away);
                outln!("  Busy:    {}", s.presence.busy);
                outln!("  Offline: {}", s.presence.offline);
                outln!("\nEvents (last hour):      {}", s.events_last_hour);
                outln!("{line}\n");
            }
        }
        Command::Rooms { json } => {
            let rooms = store.rooms(true).await?;
            if json {
                print_json(&serde_json::to_value(&rooms)?);
            } else {
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
            }
        }
        Command::CreateRoom {
            name,
            room_type,
            visibility,
            max_members,
            json,
        } => {
            validate_room_name(&name).map_err(|e| anyhow::anyhow!("{}", e.message))?;
            if max_members.is_some_and(|m| m < 1) {
                anyhow::bail!("--max-members must be at least 1");
            }
            let room = store
                .create_room(&NewRoom {
                    name,
                    room_type,
                    visibility,
                    max_members,
                })
                .await?;
            if json {
                print_json(&serde_json::to_value(&room)?);
            } else {
                outln!(
                    "✓ Room created: {} ({}, {})",
                    room.name,
                    room.room_type,
                    room.visibility
                );
            }
        }
        Command::AddMember {
            room,
            user,
            role,
            muted,
            banned,
            json,
        } => {
            if !ROLES.contains(&role.as_str()) {
                anyhow::bail!("--role must be one of {}", ROLES.join(", "));
            }
            if user.is_empty() || user.len() > 255 {
                anyhow::bail!("user id must be 1-255 characters");
            }
            let r = store
                .room(&room)
                .await?
                .ok_or_else(|| anyhow::anyhow!("room not found: {room}"))?;
            if r.room_type == crate::store::RoomType::Dm {
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
        }
        Command::RemoveMember { room, user, json } => {
            let removed = store.remove_member(&room, &user).await?;
            if !removed {
                anyhow::bail!("{user} is not a member of {room}");
            }
            if json {
                print_json(&json!({"room": room, "userId": user, "removed": true}));
            } else {
                outln!("✓ Member removed: {user} from {room}");
            }
        }
        Command::Connections { json } => {
            let rows = store.connections().await?;
            if json {
                print_json(&serde_json::to_value(&rows)?);
            } else {
                outln!("{}", "=".repeat(100));
                outln!(
                    "SOCKET ID            USER ID              TRANSPORT    LATENCY    CONNECTED AT"
                );
                outln!("{}", "-".repeat(100));
                for c in rows {
                    let latency = c
                        .latency_ms
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "-".into());
                    outln!(
                        "{:<20} {:<20} {:<12} {:<10} {}",
                        cut(&c.socket_id, 20),
                        cut(c.user_id.as_deref().unwrap_or("anonymous"), 20),
                        c.transport.as_deref().unwrap_or(""),
                        latency,
                        c.connected_at.to_rfc3339_opts(SecondsFormat::Millis, true)
                    );
                }
                outln!("{}", "=".repeat(100));
            }
        }
        Command::Events { number, json } => {
            if !(1..=10_000).contains(&number) {
                anyhow::bail!("-n must be between 1 and 10000");
            }
            let rows = store.events(number).await?;
            if json {
                print_json(&serde_json::to_value(&rows)?);
            } else {
                outln!("{}", "=".repeat(100));
                outln!("TIME                 EVENT TYPE           USER ID              ROOM ID");
                outln!("{}", "-".repeat(100));
                for e in rows {
                    outln!(
                        "{:<20} {:<20} {:<20} {}",
                        e.created_at.format("%H:%M:%S"),
                        e.event_type,
                        e.user_id.as_deref().unwrap_or("-"),
                        e.room_id.as_deref().unwrap_or("-")
                    );
                }
                outln!("{}", "=".repeat(100));
            }
        }
    }
    Ok(())
}
