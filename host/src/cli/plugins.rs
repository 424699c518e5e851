//! `nself-realtime plugins`: the policy modules of the running server (asked over HTTP at
//! `REALTIME_HOST:REALTIME_PORT`), or, when no server answers, the modules of the plugins
//! directory as this process loads them (a check that they compile and describe themselves).

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::policy::{Policies, Settings, kv::MemoryKv};

/// Prints the module table (or JSON); an error (exit 1) when a module file failed to load or
/// a module is quarantined, after the table.
pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let (source, list) = match from_server(config).await {
        Some(list) => ("server", list),
        None => ("local", local(config).await?),
    };
    let mut out = std::io::stdout().lock();
    if json {
        let body = serde_json::json!({ "source": source, "plugins": list });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&body)?);
    } else {
        table(&mut out, config, source, &list);
    }
    let failed: Vec<String> = list
        .iter()
        .filter(|p| p.get("error").is_some_and(|e| !e.is_null()) || p["status"] == "quarantined")
        .map(|p| format!("{} ({})", s(p, "file"), s(p, "status")))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("policy module trouble: {}", failed.join(", "));
    }
    Ok(())
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("-").to_string()
}

fn n(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_u64)
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

fn table(out: &mut impl Write, config: &Config, source: &str, list: &[Value]) {
    if source == "local" {
        let _ = writeln!(
            out,
            "(no server answered on port {}: modules as loaded by this command, no call figures)",
            config.port
        );
    } else {
        let _ = writeln!(
            out,
            "(calls and verdicts since the server started, summed over reloads; a shadow module's REJECTS and MODIFIES are what it would have done)"
        );
    }
    let _ = writeln!(out, "{}", "=".repeat(128));
    let _ = writeln!(
        out,
        "{:<18} {:<9} {:<11} {:<7} {:<12} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8}  FILE",
        "NAME",
        "VERSION",
        "STATUS",
        "MODE",
        "HASH",
        "CALLS",
        "REJECTS",
        "MODIFIES",
        "TRAPS",
        "P50(us)",
        "P99(us)"
    );
    let _ = writeln!(out, "{}", "-".repeat(128));
    for p in list {
        let _ = writeln!(
            out,
            "{:<18} {:<9} {:<11} {:<7} {:<12} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8}  {}",
            s(p, "name"),
            s(p, "version"),
            s(p, "status"),
            s(p, "mode"),
            s(p, "hash"),
            n(p, "calls"),
            n(p, "rejects"),
            n(p, "modifies"),
            n(p, "failures"),
            n(p, "p50Us"),
            n(p, "p99Us"),
            s(p, "file"),
        );
        if let Some(e) = p.get("error").and_then(Value::as_str) {
            let _ = writeln!(out, "    error: {e}");
        }
    }
    let _ = writeln!(out, "{}", "=".repeat(128));
    let _ = writeln!(
        out,
        "HASH: first 12 hex digits of the SHA-256 of the .wasm file (sha256sum FILE); the sidecar's is in --json (sidecarHash)"
    );
}

/// Asks the running server; None when nothing answers.
async fn from_server(config: &Config) -> Option<Vec<Value>> {
    let path = format!("{}/plugins", config.metrics_path);
    let answer = super::client::get(config, &path, Duration::from_secs(3))
        .await
        .ok()?;
    if !answer.ok() {
        return None;
    }
    answer.body.get("plugins")?.as_array().cloned()
}

/// Loads the plugins directory here.
async fn local(config: &Config) -> anyhow::Result<Vec<Value>> {
    let settings = Settings {
        dir: config.plugins_dir.clone(),
        cache_dir: config.plugin_cache_dir.clone(),
        timeout: config.plugin_timeout,
        memory_bytes: (config.plugin_memory_mb as usize) << 20,
        max_payload: config.max_payload_bytes as usize,
    };
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let ext = Policies::start(settings, std::sync::Arc::new(MemoryKv::default()), metrics).await?;
    Ok(ext
        .status()
        .into_iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect())
}
