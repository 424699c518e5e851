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

/// Readiness: accepting new connections (false while draining).
pub async fn ready(State(app): State<Arc<App>>) -> impl IntoResponse {
    if app.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
    } else {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    }
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
    let (loaded, failed, quarantined) = (count("loaded"), count("failed"), count("quarantined"));
    let plugins_check = if app.policies.is_none() {
        "disabled"
    } else if plugins.is_empty() {
        "none"
    } else if failed + quarantined > 0 {
        "error"
    } else {
        "ok"
    };
    let redis_check = match &app.cluster {
        None => "disabled",
        Some(c) if c.healthy() => "ok",
        Some(_) => "down",
    };
    let status = if app.is_draining() {
        "unhealthy"
    } else if db_ok && plugins_check != "error" && redis_check != "down" {
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
        "plugins": { "loaded": loaded, "failed": failed, "quarantined": quarantined },
        "store": {
            "backend": app.store.kind().as_str(),
            "queued": app.metrics.store_queue_depth.get(),
            "dropped": app.metrics.store_writes_dropped.get(),
        },
    });
    (code, Json(body))
}
