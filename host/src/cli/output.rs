//! Management subcommands against the store, printing the original's table formats.

use chrono::{SecondsFormat, Utc};
use serde_json::json;

use super::Command;
use crate::config::Config;
use crate::rooms::validate_room_name;
use crate::server::create_default_rooms;
use crate::store::{NewRoom, Store};

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Truncates to `n` characters (the original sliced JavaScript strings).
fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

const ROLES: [&str; 4] = ["admin", "moderator", "member", "guest"];

/// Runs a management subcommand (everything but `serve`).
pub async fn run_command(config: &Config, command: Command) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url).await?;
    match command {
        Command::Serve => unreachable_serve(),
        Command::Init { json } => {
            if !json {
                println!("Creating default rooms...");
            }
            create_default_rooms(&store).await?;
            if !json {
                println!("Cleaning up stale data...");
            }
            let before =
                Utc::now() - chrono::Duration::days(i64::from(config.event_retention_days));
            let removed = store.cleanup(before).await?;
            if json {
                print_json(&json!({"success": true, "defaultRooms": crate::server::DEFAULT_ROOMS, "removedRows": removed}));
            } else {
                println!("✓ Initialization complete");
            }
        }
        Command::Stats { json } => {
            let s = store.stats().await?;
            if json {
                print_json(&serde_json::to_value(&s)?);
            } else {
                let line = "=".repeat(50);
                println!("\nRealtime Server Statistics");
                println!("{line}");
                println!("Active Connections:      {}", s.active_connections);
                println!("Authenticated Users:     {}", s.authenticated_connections);
                println!("Active Rooms:            {}", s.active_rooms);
                println!("\nPresence:");
                println!("  Online:  {}", s.presence.online);
                println!("  Away:    {}", s.presence.away);
                println!("  Busy:    {}", s.presence.busy);
                println!("  Offline: {}", s.presence.offline);
                println!("\nEvents (last hour):      {}", s.events_last_hour);
                println!("{line}\n");
            }
        }
        Command::Rooms { json } => {
            let rooms = store.rooms(true).await?;
            if json {
                print_json(&serde_json::to_value(&rooms)?);
            } else {
                println!("\nActive Rooms");
                println!("{}", "=".repeat(70));
                println!("NAME                TYPE        VISIBILITY   CREATED");
                println!("{}", "-".repeat(70));
                for r in rooms {
                    println!(
                        "{:<20} {:<12} {:<12} {}",
                        r.name,
                        r.room_type.as_str(),
                        r.visibility.as_str(),
                        r.created_at.format("%Y-%m-%d")
                    );
                }
                println!("{}\n", "=".repeat(70));
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
                println!(
                    "✓ Room created: {} ({}, {})",
                    room.name, room.room_type, room.visibility
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
                print_json(&json!({"room": room, "userId": user, "role": role, "muted": muted, "banned": banned}));
            } else {
                println!("✓ Member added: {user} to {room} ({role})");
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
                println!("✓ Member removed: {user} from {room}");
            }
        }
        Command::Connections { json } => {
            let rows = store.connections().await?;
            if json {
                print_json(&serde_json::to_value(&rows)?);
            } else {
                println!("{}", "=".repeat(100));
                println!(
                    "SOCKET ID            USER ID              TRANSPORT    LATENCY    CONNECTED AT"
                );
                println!("{}", "-".repeat(100));
                for c in rows {
                    let latency = c
                        .latency_ms
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<20} {:<20} {:<12} {:<10} {}",
                        cut(&c.socket_id, 20),
                        cut(c.user_id.as_deref().unwrap_or("anonymous"), 20),
                        c.transport.as_deref().unwrap_or(""),
                        latency,
                        c.connected_at.to_rfc3339_opts(SecondsFormat::Millis, true)
                    );
                }
                println!("{}", "=".repeat(100));
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
                println!("{}", "=".repeat(100));
                println!("TIME                 EVENT TYPE           USER ID              ROOM ID");
                println!("{}", "-".repeat(100));
                for e in rows {
                    println!(
                        "{:<20} {:<20} {:<20} {}",
                        e.created_at.format("%H:%M:%S"),
                        e.event_type,
                        e.user_id.as_deref().unwrap_or("-"),
                        e.room_id.as_deref().unwrap_or("-")
                    );
                }
                println!("{}", "=".repeat(100));
            }
        }
    }
    Ok(())
}

fn unreachable_serve() {
    // `serve` is dispatched by main before a store is opened here.
}
