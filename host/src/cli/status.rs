//! `status`: the process (from a PID file), the running server's `/health`, readiness and
//! `/metrics` figures, and the store's own figures with the newest audit rows. `healthcheck`:
//! exit 0/1 from the liveness (or readiness) endpoint, for a container HEALTHCHECK without curl.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::client::{self, Answer};
use super::print::{outln, print_json};
use crate::config::Config;
use crate::store::Store;

const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Prints the status; then exits 1 (one line on stderr) when no server answered.
pub async fn run(config: &Config, pid_file: Option<&Path>, json: bool) -> anyhow::Result<()> {
    if print_status(config, pid_file, json).await? {
        Ok(())
    } else {
        anyhow::bail!("no server answers at {}", client::base_url(config))
    }
}

/// Prints the status; true when the server answered (health or metrics).
async fn print_status(
    config: &Config,
    pid_file: Option<&Path>,
    json: bool,
) -> anyhow::Result<bool> {
    let process = pid_file.map(process_state);
    let health = ask(config, config.enable_health.then_some(&config.health_path)).await;
    let ready_path = format!("{}/ready", config.health_path);
    let ready = ask(config, config.enable_health.then_some(&ready_path)).await;
    let metrics = ask(
        config,
        config.enable_metrics.then_some(&config.metrics_path),
    )
    .await;
    let store = store_figures(config).await;
    let answered = matches!(health, Some(Ok(_))) || matches!(metrics, Some(Ok(_)));
    if json {
        print_json(&json!({
            "process": process,
            "server": client::base_url(config),
            "health": answer_json(&health),
            "ready": answer_json(&ready),
            "metrics": answer_json(&metrics),
            "store": store,
        }));
        return Ok(answered);
    }
    let line = "=".repeat(60);
    outln!("\nRealtime Server Status");
    outln!("{line}");
    if let Some(p) = &process {
        outln!("Process:          {}", p["text"].as_str().unwrap_or("-"));
    }
    outln!("Server:           {}", client::base_url(config));
    outln!("Health:           {}", health_line(&health));
    outln!("Ready:            {}", status_line(&ready));
    match &metrics {
        Some(Ok(a)) if a.ok() => print_metrics(&a.body),
        other => outln!("Metrics:          {}", status_line(other)),
    }
    outln!("\nStore ({})", store["backend"].as_str().unwrap_or("-"));
    outln!("{}", "-".repeat(60));
    if let Some(e) = store["error"].as_str() {
        outln!("  ✗ {e}");
    } else {
        let s = &store["stats"];
        outln!("Active Connections:      {}", s["activeConnections"]);
        outln!("Authenticated:           {}", s["authenticatedConnections"]);
        outln!("Active Rooms:            {}", s["activeRooms"]);
        let p = &s["presence"];
        outln!(
            "Presence:                online {}, away {}, busy {}, offline {}",
            p["online"],
            p["away"],
            p["busy"],
            p["offline"]
        );
        outln!("Events (last hour):      {}", s["eventsLastHour"]);
        outln!("\nRecent events");
        for e in store["recentEvents"].as_array().into_iter().flatten() {
            outln!(
                "  {:<25} {:<20} {}",
                e["createdAt"].as_str().unwrap_or("-"),
                e["eventType"].as_str().unwrap_or("-"),
                e["userId"].as_str().unwrap_or("-"),
            );
        }
    }
    outln!("{line}\n");
    Ok(answered)
}

/// `healthcheck`: Ok when the endpoint answered 2xx, an error (exit 1) otherwise.
pub async fn healthcheck(
    config: &Config,
    ready: bool,
    timeout_ms: u64,
    json: bool,
) -> anyhow::Result<()> {
    if !config.enable_health {
        anyhow::bail!("REALTIME_ENABLE_HEALTH is false: the server has no health endpoint");
    }
    let path = format!(
        "{}/{}",
        config.health_path,
        if ready { "ready" } else { "live" }
    );
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let answer = client::get(config, &path, timeout).await?;
    if json {
        print_json(
            &json!({"url": format!("{}{path}", client::base_url(config)),
            "status": answer.status, "body": answer.body}),
        );
    }
    if !answer.ok() {
        anyhow::bail!("{path} answered {}", answer.status);
    }
    Ok(())
}

async fn ask(config: &Config, path: Option<&String>) -> Option<anyhow::Result<Answer>> {
    match path {
        None => None,
        Some(p) => Some(client::get(config, p, ASK_TIMEOUT).await),
    }
}

fn answer_json(a: &Option<anyhow::Result<Answer>>) -> Value {
    match a {
        None => json!({"enabled": false}),
        Some(Ok(a)) => {
            json!({"enabled": true, "reachable": true, "status": a.status, "body": a.body})
        }
        Some(Err(e)) => json!({"enabled": true, "reachable": false, "error": e.to_string()}),
    }
}

fn status_line(a: &Option<anyhow::Result<Answer>>) -> String {
    match a {
        None => "- (disabled)".into(),
        Some(Ok(a)) => {
            let mark = if a.ok() { "✓" } else { "✗" };
            let status = a.body["status"].as_str().unwrap_or("");
            format!("{mark} {} {status}", a.status)
                .trim_end()
                .to_string()
        }
        Some(Err(e)) => format!("✗ {e}"),
    }
}

fn health_line(a: &Option<anyhow::Result<Answer>>) -> String {
    let Some(Ok(answer)) = a else {
        return status_line(a);
    };
    let checks = &answer.body["checks"];
    let check = |k: &str| checks[k].as_str().unwrap_or("-").to_string();
    format!(
        "{} (database {}, redis {}, plugins {}, auth {})",
        status_line(a),
        check("database"),
        check("redis"),
        check("plugins"),
        answer.body["auth"].as_str().unwrap_or("-")
    )
}

fn print_metrics(m: &Value) {
    let c = &m["connections"];
    outln!("Metrics:          ✓");
    outln!(
        "Uptime:           {:.0} s",
        m["uptime"].as_f64().unwrap_or(0.0)
    );
    outln!(
        "Connections:      {} ({} authenticated, {} anonymous)",
        c["active"],
        c["authenticated"],
        c["anonymous"]
    );
    outln!(
        "Rooms:            {} active, {} total",
        m["rooms"]["active"],
        m["rooms"]["total"]
    );
    outln!(
        "Events:           {} handled, {} audited in the last hour",
        m["events"]["total"],
        m["events"]["lastHour"]
    );
    let mb = |v: &Value| v.as_f64().unwrap_or(0.0) / 1_048_576.0;
    outln!(
        "Memory:           {:.1} MiB of {:.0} MiB ({}%)",
        mb(&m["memory"]["used"]),
        mb(&m["memory"]["total"]),
        m["memory"]["percentage"]
    );
    outln!("CPU:              {}%", m["cpu"]["usage"]);
}

/// Whether the process of a PID file runs.
fn process_state(pid_file: &Path) -> Value {
    let raw = match std::fs::read_to_string(pid_file) {
        Ok(s) => s,
        Err(_) => return json!({"running": false, "text": "stopped (no PID file)"}),
    };
    let Ok(pid) = raw.trim().parse::<u32>() else {
        return json!({"running": false, "text": format!("unknown (PID file {pid_file:?} holds no PID)")});
    };
    let proc_dir = Path::new("/proc").join(pid.to_string());
    if !Path::new("/proc/self").exists() {
        return json!({"running": null, "pid": pid, "text": format!("PID {pid} (cannot check: no /proc)")});
    }
    if proc_dir.exists() {
        json!({"running": true, "pid": pid, "text": format!("running (PID {pid})")})
    } else {
        json!({"running": false, "pid": pid, "text": format!("stopped (stale PID file: {pid} is gone)")})
    }
}

/// Store figures, without creating a database that does not exist yet.
async fn store_figures(config: &Config) -> Value {
    let backend = if config.database_url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    if let Some(path) = super::uninstall::sqlite_path(&config.database_url)
        && !path.exists()
    {
        return json!({"backend": backend,
            "error": format!("no database at {} (run init first)", path.display())});
    }
    let read = async {
        let store = Store::open_existing(&config.database_url).await?;
        let stats = store.stats().await?;
        let events = store.events(10).await?;
        anyhow::Ok(
            json!({"backend": store.kind().as_str(), "stats": stats, "recentEvents": events}),
        )
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({"backend": backend, "error": format!("{e:#}")}),
        Err(_) => json!({"backend": backend, "error": "the database did not answer within 5 s"}),
    }
}
