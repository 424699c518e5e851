//! `/health`, `/health/live`, `/health/ready`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::app::App;
use crate::util::iso;

/// Liveness: the process answers.
pub async fn live() -> impl IntoResponse {
    Json(json!({ "status": "alive" }))
}

/// Readiness: accepting new connections and serving every event. Not ready while draining,
/// nor while a policy module file that never loaded refuses the events it covers (fail
/// closed): the answer names the file and why, so that a deploy with a broken module stops
/// before it takes traffic.
pub async fn ready(State(app): State<Arc<App>>) -> impl IntoResponse {
    if app.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        );
    }
    let blocking = app
        .policies
        .as_ref()
        .map(|p| p.blocking())
        .unwrap_or_default();
    if let Some((file, why)) = blocking.first() {
        let files: Vec<&str> = blocking.iter().map(|(f, _)| f.as_str()).collect();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "blocked",
                "reason": format!("policy module {file} failed to load ({why}): the events it covers are refused until it loads or is removed"),
                "blocking": files,
            })),
        );
    }
    // Rooms are read in bulk once the database answers; until then every join would answer
    // SERVICE_UNAVAILABLE, so a load balancer should not send clients here yet.
    if !app.directory.is_loaded() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "starting",
                "reason": "the database has not answered since start: rooms are not loaded yet",
            })),
        );
    }
    (StatusCode::OK, Json(json!({ "status": "ready" })))
}

/// Full health: database reachability, write-behind state, connections, uptime.
pub async fn health(State(app): State<Arc<App>>) -> impl IntoResponse {
    let db_ok = app.database_answers().await && app.writer.healthy();
    let plugins = app
        .policies
        .as_ref()
        .map(|e| e.status())
        .unwrap_or_default();
    let count = |s: &str| plugins.iter().filter(|p| p.status == s).count();
    let serving = plugins.iter().filter(|p| p.serving).count();
    let shadow = plugins
        .iter()
        .filter(|p| p.serving && p.mode == crate::policy::Mode::Shadow)
        .count();
    let (stale, failed, blocking, quarantined) = (
        count("stale"),
        count("failed"),
        count("blocking"),
        count("quarantined"),
    );
    let files_failed = stale + failed + blocking;
    let plugins_check = if app.policies.is_none() {
        "disabled"
    } else if plugins.is_empty() {
        "none"
    } else if blocking > 0 {
        "blocking"
    } else if files_failed + quarantined > 0 {
        "error"
    } else {
        "ok"
    };
    let errors: Vec<serde_json::Value> = plugins
        .iter()
        .filter_map(|p| {
            let error = p.error.as_ref()?;
            Some(json!({ "file": p.file, "status": p.status, "error": error }))
        })
        .collect();
    let redis_check = match &app.cluster {
        None => "disabled",
        Some(c) if c.healthy() => "ok",
        Some(_) => "down",
    };
    let status = if app.is_draining() {
        "unhealthy"
    } else if db_ok && matches!(plugins_check, "ok" | "none" | "disabled") && redis_check != "down"
    {
        "healthy"
    } else {
        "degraded"
    };
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": status,
        "timestamp": iso(chrono::Utc::now()),
        "connections": app.metrics.connections_active.get(),
        "uptime": app.started.elapsed().as_secs_f64(),
        "auth": if app.auth.insecure() { "insecure-dev" } else { "verified" },
        "checks": {
            "database": if db_ok { "ok" } else { "error" },
            "redis": redis_check,
            "plugins": plugins_check,
        },
        // `serving`: modules answering events (a file that failed to reload keeps its previous
        // version serving: it counts here and under `stale`); `failed`: files that never
        // loaded (`blocking` of them refuse their events).
        "plugins": {
            "serving": serving,
            "loaded": serving,
            "shadow": shadow,
            "quarantined": quarantined,
            "stale": stale,
            "failed": failed + blocking,
            "blocking": blocking,
            "errors": errors,
        },
        // Redis Cluster mode: what `CLUSTER INFO` said at the last check (null otherwise).
        "redisCluster": app.cluster.as_ref().and_then(|c| c.redis().cluster_info()),
        "store": {
            "backend": app.store.kind().as_str(),
            "queued": app.metrics.store_queue_depth.get(),
            "dropped": app.metrics.store_writes_dropped.get(),
        },
    });
    (code, Json(body))
}
