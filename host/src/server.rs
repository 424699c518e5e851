//! `run(config, listener, shutdown)`: builds the state, spawns the background tasks, serves
//! HTTP + Socket.IO until `shutdown` is cancelled, then drains in order:
//! readiness false -> refuse new connections -> close every socket (clients see a transport
//! close and reconnect) -> let each link clean up -> flush the write-behind queue -> exit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::dedupe::Dedupe;
use crate::fanout::SocketIoFanout;
use crate::metrics::Metrics;
use crate::pipeline;
use crate::presence::MemoryPresence;
use crate::store::{NewRoom, Store, WriteOp, writer};
use crate::typing::MemoryTyping;
use crate::{http, transport};

/// Rooms `init` and the first `serve` create.
pub const DEFAULT_ROOMS: [&str; 2] = ["general", "announcements"];

/// Creates the default rooms (existing ones are left as they are).
pub async fn create_default_rooms(store: &Store) -> anyhow::Result<()> {
    for name in DEFAULT_ROOMS {
        store
            .create_room(&NewRoom::new(name))
            .await
            .with_context(|| format!("creating room {name}"))?;
    }
    Ok(())
}

/// Serves until `shutdown` is cancelled, then drains within `REALTIME_SHUTDOWN_TIMEOUT`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let auth = Authenticator::from_config(&config)?;
    if auth.insecure() {
        tracing::warn!(
            "INSECURE: no REALTIME_JWT_SECRET or REALTIME_JWT_PUBLIC_KEY is set; tokens are \
             decoded WITHOUT signature verification (development mode). Never run this in production."
        );
    }
    if config.redis_url.is_some() {
        tracing::warn!("REALTIME_REDIS_URL is set but this build fans out in-process only");
    }
    let store = Store::connect(&config.database_url)
        .await
        .context("opening the database")?;
    store
        .reset_live_state()
        .await
        .context("resetting live state")?;
    create_default_rooms(&store).await?;

    let metrics = Arc::new(Metrics::new());
    let writer_stop = CancellationToken::new();
    let (writer, writer_task) = writer::spawn(
        store.clone(),
        config.batch_size,
        config.write_queue,
        metrics.clone(),
        writer_stop.clone(),
    );
    let extensions = if config.enable_plugins {
        let settings = crate::extensions::Settings {
            dir: config.plugins_dir.clone(),
            cache_dir: config.plugin_cache_dir.clone(),
            timeout: config.plugin_timeout,
            memory_bytes: (config.plugin_memory_mb as usize) << 20,
            max_payload: config.max_payload_bytes as usize,
        };
        let kv = Arc::new(crate::extensions::kv::MemoryKv::default());
        Some(crate::extensions::Extensions::start(settings, kv, metrics.clone()).await?)
    } else {
        None
    };
    let (layer, io) = transport::layer(&config);
    let app = Arc::new(App {
        config: config.clone(),
        auth,
        store,
        writer,
        metrics,
        presence: Arc::new(MemoryPresence::default()),
        typing: Arc::new(MemoryTyping::default()),
        fanout: Arc::new(SocketIoFanout::new(io.clone())),
        extensions: extensions.clone(),
        dedupe: Dedupe::new(100_000, Duration::from_secs(600)),
        ip_limiter: App::ip_limiter(config.connection_rate_per_minute),
        slots: Default::default(),
        draining: CancellationToken::new(),
        node_id: uuid::Uuid::new_v4().to_string(),
        started: Instant::now(),
    });
    transport::register(&io, app.clone());

    let tasks_stop = CancellationToken::new();
    let janitor = tokio::spawn(janitor(app.clone(), tasks_stop.clone()));
    let watcher = extensions.as_ref().map(|e| e.watch(tasks_stop.clone()));
    let router = http::router(app.clone())
        .layer(layer)
        .layer(transport::cors(&config))
        .layer(axum::middleware::from_fn_with_state(
            config.clone(),
            transport::origin_guard,
        ));
    let addr = listener.local_addr()?;
    let http_stop = CancellationToken::new();
    let listener = transport::GuardedListener::new(listener, config.write_timeout);
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<transport::PeerAddr>(),
    )
    .with_graceful_shutdown(http_stop.clone().cancelled_owned());
    let server_task = tokio::spawn(async move { server.await });
    tracing::info!(%addr, db = app.store.kind(), "nself-realtime listening");

    shutdown.cancelled().await;
    let deadline = Instant::now() + config.shutdown_timeout;
    tracing::info!("shutting down: draining connections");
    app.draining.cancel();
    let left = |d: Instant| d.saturating_duration_since(Instant::now());
    // Links see `draining` and clean up first (socketioxide's close does not run disconnect
    // handlers); then the transports are closed, which clients see as a transport close and
    // answer by reconnecting (to another instance behind the load balancer).
    while app.slots.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let remaining = app.slots.load(Ordering::Acquire);
    if remaining > 0 {
        tracing::warn!(
            remaining,
            "shutdown timeout reached with connections still open"
        );
    }
    if tokio::time::timeout(left(deadline).max(Duration::from_secs(1)), io.close())
        .await
        .is_err()
    {
        tracing::warn!("closing transports timed out");
    }
    tasks_stop.cancel();
    let _ = janitor.await;
    if let Some(w) = watcher {
        let _ = w.await;
    }
    writer_stop.cancel();
    if tokio::time::timeout(left(deadline), writer_task)
        .await
        .is_err()
    {
        tracing::warn!("write-behind flush timed out");
    }
    http_stop.cancel();
    match tokio::time::timeout(left(deadline).max(Duration::from_millis(100)), server_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server error"),
        Err(_) => tracing::warn!("http server did not stop in time"),
        _ => {}
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Periodic work: typing expiry (with `typing:event`), custom status expiry (with
/// `presence:changed`), presence heartbeats, and audit retention.
async fn janitor(app: Arc<App>, stop: CancellationToken) {
    let tick = (app.config.typing_timeout / 10)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heartbeat = Instant::now();
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
        for state in app.presence.expire(now).await {
            pipeline::broadcast_presence_changed(&app, &state).await;
        }
        if last_heartbeat.elapsed() >= app.config.presence_heartbeat {
            last_heartbeat = Instant::now();
            for user_id in app.presence.online_users() {
                app.writer.write(WriteOp::Heartbeat { user_id, at: now });
            }
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
