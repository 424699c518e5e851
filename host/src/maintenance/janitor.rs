//! The janitor: periodic work on shared state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// Runs until `stop`: typing expiry (with `typing:event`), custom status expiry and idle users
/// becoming away (with `presence:changed`), presence heartbeats, the background figures of
/// `/metrics`, and hourly audit retention.
pub async fn janitor(app: Arc<App>, stop: CancellationToken) {
    let tick = (app.config.typing_timeout / 10)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heartbeat = Instant::now();
    let mut last_idle_check = Instant::now();
    let mut last_minute: Option<Instant> = None;
    let mut last_cleanup: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = Utc::now();
        for update in app.typing.expire(now).await {
            app.fanout
                .room(
                    &update.key.room,
                    Some(&update.user_id),
                    "typing:event",
                    &update.event(),
                )
                .await;
        }
        // Idle users are looked for every quarter of the away time (at most every 5 s).
        let idle_before = app
            .config
            .presence_away
            .filter(|away| last_idle_check.elapsed() >= (*away / 4).min(Duration::from_secs(5)))
            .map(|away| {
                last_idle_check = Instant::now();
                now - chrono::Duration::from_std(away).unwrap_or_default()
            });
        app.presence.tick(now, idle_before).await;
        if last_heartbeat.elapsed() >= app.config.presence_heartbeat {
            last_heartbeat = Instant::now();
            app.presence.heartbeat(now);
        }
        if last_minute.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_minute = Some(Instant::now());
            every_minute(&app).await;
        }
        if last_cleanup.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_cleanup = Some(Instant::now());
            let before = now - chrono::Duration::days(i64::from(app.config.event_retention_days));
            match app.store.cleanup(before).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "retention cleanup"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention cleanup failed"),
            }
        }
    }
}

/// Forgets expired `clientMessageId`s and reads the offline users' count for `/metrics` (so
/// that no request reads the database for it).
async fn every_minute(app: &App) {
    app.dedupe.sweep();
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), app.store.offline_users()).await
    {
        app.metrics
            .presence_offline
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
}
