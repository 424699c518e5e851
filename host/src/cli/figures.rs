//! The subcommands that read or prepare the store: `init`, `stats`, `connections`, `events`,
//! printed in the original's table formats (or as JSON).

use chrono::{SecondsFormat, Utc};
use serde_json::json;

use super::print::{cut, outln, print_json};
use crate::config::Config;
use crate::server::create_default_rooms;
use crate::store::Store;

/// `init`: default rooms, stale data cleaned, Redis checked when configured.
pub async fn init(config: &Config, store: &Store, json: bool) -> anyhow::Result<()> {
    // Scaled out: Redis is checked too (a server starts without it, degraded, so an
    // unreachable Redis is a warning here, not a failure).
    let redis = match &config.redis {
        None => "disabled",
        Some(target) => {
            if !json {
                outln!("Checking Redis...");
            }
            let (status, line) = crate::cluster::probe(target).await;
            if status == "ok" {
                if !json {
                    outln!("{line}");
                }
            } else {
                eprintln!(
                    "Warning: {line}; servers will run degraded (local delivery only) until \
                     it answers"
                );
            }
            status
        }
    };
    if !json {
        outln!("Creating default rooms...");
    }
    create_default_rooms(store).await?;
    if !json {
        outln!("Cleaning up stale data...");
    }
    let before = Utc::now() - chrono::Duration::days(i64::from(config.event_retention_days));
    let removed = store.cleanup(before).await?;
    // Connections of servers whose lease expired (crashed) are closed; live servers
    // are left alone (PostgreSQL; SQLite has one server and resets at its start).
    let offline = store.reap_dead_nodes().await?;
    if json {
        print_json(&json!({
            "success": true,
            "defaultRooms": crate::server::DEFAULT_ROOMS,
            "removedRows": removed,
            "usersSetOffline": offline.len(),
            "redis": redis,
        }));
    } else {
        outln!("✓ Initialization complete");
    }
    Ok(())
}

/// `stats`.
pub async fn stats(store: &Store, json: bool) -> anyhow::Result<()> {
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
    Ok(())
}

/// `connections`.
pub async fn connections(store: &Store, json: bool) -> anyhow::Result<()> {
    let rows = store.connections().await?;
    if json {
        print_json(&serde_json::to_value(&rows)?);
    } else {
        outln!("{}", "=".repeat(120));
        outln!(
            "SOCKET ID            USER ID              NODE                 TRANSPORT    LATENCY    CONNECTED AT"
        );
        outln!("{}", "-".repeat(120));
        for c in rows {
            let latency = c
                .latency_ms
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into());
            outln!(
                "{:<20} {:<20} {:<20} {:<12} {:<10} {}",
                cut(&c.socket_id, 20),
                cut(c.user_id.as_deref().unwrap_or("anonymous"), 20),
                cut(c.node_id.as_deref().unwrap_or("-"), 20),
                c.transport.as_deref().unwrap_or(""),
                latency,
                c.connected_at.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        outln!("{}", "=".repeat(120));
    }
    Ok(())
}

/// `events -n N`.
pub async fn events(store: &Store, number: i64, json: bool) -> anyhow::Result<()> {
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
    Ok(())
}
