//! `/metrics`: the original's JSON shape with real values, or the Prometheus text exposition
//! when the client asks for it (`Accept: text/plain` or OpenMetrics, or `?format=prometheus`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::proc::{CpuMeter, rss_bytes, total_memory_bytes};
use crate::app::App;
use crate::metrics::StatusLabel;

fn cpu() -> &'static CpuMeter {
    static CPU: OnceLock<CpuMeter> = OnceLock::new();
    CPU.get_or_init(CpuMeter::default)
}

/// Which format the client wants.
fn wants_prometheus(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<bool> {
    if let Some(f) = query.get("format") {
        return Some(f == "prometheus" || f == "openmetrics");
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        return Some(true);
    }
    if accept.contains("text/plain") && !accept.contains("application/json") {
        return Some(true);
    }
    None
}

/// The metrics endpoint.
pub async fn metrics(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let presence = app.presence.state().counts();
    let sockets = app.sockets.load(Ordering::Relaxed) as i64;
    let pending = app.pending.load(Ordering::Relaxed) as i64;
    app.metrics.sockets_open.set(sockets);
    app.metrics.connections_pending.set(pending);
    app.metrics.runtime_tasks.set(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as i64,
    );
    if wants_prometheus(&headers, &query).unwrap_or(false) {
        let m = &app.metrics;
        for (status, n) in [
            ("online", presence.online),
            ("away", presence.away),
            ("busy", presence.busy),
        ] {
            m.presence_users
                .get_or_create(&StatusLabel { status })
                .set(n);
        }
        m.uptime_seconds.set(app.started.elapsed().as_secs() as i64);
        m.resident_memory_bytes.set(rss_bytes() as i64);
        let (rooms_total, rooms_active) = app.directory.room_totals();
        m.rooms.set(rooms_total as i64);
        m.rooms_active.set(rooms_active as i64);
        super::proc::sample_process(&m.process);
        let openmetrics = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/openmetrics-text"));
        let content_type = if openmetrics {
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        } else {
            "text/plain; version=0.0.4; charset=utf-8"
        };
        return (
            [(header::CONTENT_TYPE, content_type)],
            m.encode(openmetrics),
        )
            .into_response();
    }
    // Everything from memory: this endpoint may be reachable without credentials, so no
    // request may cost a database round trip (let alone a table count).
    let (rooms_total, rooms_active) = app.directory.room_totals();
    let active = app.metrics.connections_active.get();
    let authenticated = app.metrics.connections_authenticated.get();
    let used = rss_bytes();
    let total = total_memory_bytes();
    let percentage = if total > 0 {
        (used as f64 / total as f64 * 10_000.0).round() / 100.0
    } else {
        0.0
    };
    Json(json!({
        "uptime": app.started.elapsed().as_secs_f64(),
        "connections": {
            "total": active,
            "active": active,
            "authenticated": authenticated,
            "anonymous": active - authenticated,
            "sockets": sockets,
            "pending": pending,
        },
        "rooms": { "total": rooms_total, "active": rooms_active },
        "presence": {
            "online": presence.online,
            "away": presence.away,
            "busy": presence.busy,
            "offline": app.metrics.presence_offline.load(Ordering::Relaxed),
        },
        "events": {
            "total": app.metrics.events_total.load(Ordering::Relaxed),
            "lastHour": app.metrics.events_recent.last_hour(),
        },
        "memory": { "used": used, "total": total, "percentage": percentage },
        "cpu": { "usage": cpu().sample() },
        "redis": redis_json(&app),
        "plugins": plugins_json(&app),
    }))
    .into_response()
}

/// The policy modules of the JSON form: totals and each file's figures (calls and verdicts
/// since the server started, across reloads; `error` when the file failed to load).
fn plugins_json(app: &App) -> serde_json::Value {
    let Some(policies) = &app.policies else {
        return json!({ "enabled": false });
    };
    let list = policies.status();
    let sum = |f: fn(&crate::policy::PluginStatus) -> u64| list.iter().map(f).sum::<u64>();
    let modules: Vec<serde_json::Value> = list
        .iter()
        .map(|p| {
            json!({
                "file": p.file,
                "name": p.name,
                "status": p.status,
                "mode": p.mode,
                "calls": p.calls,
                "rejects": p.rejects,
                "modifies": p.modifies,
                "failures": p.failures,
                "accepted": p.accepted,
                "error": p.error,
            })
        })
        .collect();
    json!({
        "enabled": true,
        "serving": list.iter().filter(|p| p.serving).count(),
        "failed": list.iter().filter(|p| p.error.is_some()).count(),
        "blocking": list.iter().filter(|p| p.status == "blocking").count(),
        "calls": sum(|p| p.calls),
        "rejects": sum(|p| p.rejects),
        "modifies": sum(|p| p.modifies),
        "failures": sum(|p| p.failures),
        "modules": modules,
    })
}

/// `GET <metrics path>/plugins`: every policy module file with its status and call figures
/// (what `nself-realtime plugins` shows).
pub async fn plugins(State(app): State<Arc<App>>) -> Response {
    let list = app
        .policies
        .as_ref()
        .map(|e| e.status())
        .unwrap_or_default();
    Json(json!({ "enabled": app.policies.is_some(), "plugins": list })).into_response()
}

/// The scale-out figures of the JSON form (an addition to the original's shape).
fn redis_json(app: &App) -> serde_json::Value {
    let m = &app.metrics;
    let dropped = |direction| {
        m.redis_dropped
            .get_or_create(&crate::metrics::DirectionLabel { direction })
            .get()
    };
    json!({
        "enabled": app.cluster.is_some(),
        "up": app.cluster.as_ref().is_some_and(|c| c.healthy()),
        "published": m.redis_published.get(),
        "dropped": { "out": dropped("out"), "in": dropped("in") },
        "reconnects": m.redis_reconnects.get(),
    })
}
