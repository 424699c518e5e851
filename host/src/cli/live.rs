//! The subcommands that ask the running server's API (`REALTIME_API_KEY`): `nodes` (every
//! live instance of the cluster) and `disconnect` (a user's sockets or one socket, wherever
//! they are connected).

use reqwest::Method;
use serde_json::json;

use super::client::api;
use super::print::{cut, outln, print_json};
use crate::config::Config;

/// `nodes`.
pub async fn nodes(config: &Config, json: bool) -> anyhow::Result<()> {
    let data = api(config, Method::GET, "/api/nodes", None).await?;
    if json {
        print_json(&data);
        return Ok(());
    }
    outln!("{}", "=".repeat(110));
    outln!(
        "NODE                                  HOST                 VERSION    UP (s)     CONNECTIONS  USERS    STATE"
    );
    outln!("{}", "-".repeat(110));
    for n in data["nodes"].as_array().into_iter().flatten() {
        let id = n["nodeId"].as_str().unwrap_or("");
        let id = if n["self"] == true {
            format!("{id} *")
        } else {
            id.to_string()
        };
        outln!(
            "{:<37} {:<20} {:<10} {:<10} {:<12} {:<8} {}",
            cut(&id, 37),
            cut(n["hostname"].as_str().unwrap_or("-"), 20),
            n["version"].as_str().unwrap_or(""),
            n["uptimeSeconds"],
            n["connections"],
            n["users"],
            if n["draining"] == true {
                "draining"
            } else {
                "serving"
            }
        );
    }
    outln!("{}", "=".repeat(110));
    if data["complete"] != true {
        let missing: Vec<&str> = data["missing"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str())
            .collect();
        if missing.is_empty() {
            outln!("! Redis did not answer: only the instance asked is listed");
        } else {
            outln!("! did not answer in time: {}", missing.join(", "));
        }
    }
    Ok(())
}

/// `disconnect --user U | --socket S`.
pub async fn disconnect(
    config: &Config,
    user: Option<String>,
    socket: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let body = match (&user, &socket) {
        (Some(u), None) => json!({ "userId": u }),
        (None, Some(s)) => json!({ "socketId": s }),
        _ => anyhow::bail!("give exactly one of --user and --socket"),
    };
    let data = api(config, Method::POST, "/api/disconnect", Some(&body)).await?;
    if json {
        print_json(&data);
        return Ok(());
    }
    let n = data["disconnected"].as_u64().unwrap_or(0);
    let target = match (user, socket) {
        (Some(u), _) => format!("user {u}"),
        (_, Some(s)) => format!("socket {s}"),
        _ => String::new(),
    };
    outln!("✓ {target}: {n} socket(s) disconnected");
    Ok(())
}
