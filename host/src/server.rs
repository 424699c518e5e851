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
use crate::cluster::Cluster;
use crate::cluster::presence::RedisPresence;
use crate::cluster::typing::RedisTyping;
use crate::config::Config;
use crate::dedupe::Dedupe;
use crate::metrics::Metrics;
use crate::pipeline;
use crate::presence::PresenceState;
use crate::presence::{MemoryPresence, PresenceManager};
use crate::store::cache::Directory;
use crate::store::{NewRoom, Store, WriteOp, writer};
use crate::typing::{MemoryTyping, TypingTracker};
use crate::{http, transport};

/// Longest an event waits for the directory to read a room or a user's memberships.
const DIRECTORY_WAIT: Duration = Duration::from_secs(3);

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
    let (store, migrations) = Store::open_for_server(&config.database_url)
        .await
        .context("opening the database")?;
    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // The embedded database must work now; PostgreSQL may come later (served degraded).
    let strict = store.kind() == "sqlite";
    let started = async {
        store.start_node(&node_id, config.node_lease).await?;
        create_default_rooms(&store).await
    };
    match started.await {
        Ok(()) => {}
        Err(e) if !strict => {
            tracing::error!(error = %format!("{e:#}"), "database not ready at start: serving degraded")
        }
        Err(e) => return Err(e.context("preparing the database")),
    }
    let directory = Directory::new(
        store.clone(),
        &node_id,
        DIRECTORY_WAIT,
        config.cache_ttl.unwrap_or(if strict {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        }),
    );
    // Rooms and member counts in memory before the first client arrives (a herd after a
    // restart then finds them); without the database now, they are read once it answers.
    match tokio::time::timeout(Duration::from_secs(5), directory.load()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "rooms not read at start: read when the database answers")
        }
        Err(_) => {
            tracing::warn!("rooms not read within 5 s at start: read when the database answers")
        }
    }

    let metrics = Arc::new(Metrics::new());
    let writer_stop = CancellationToken::new();
    let (writer, writer_task) = writer::spawn(
        store.clone(),
        config.batch_size,
        config.write_queue,
        metrics.clone(),
        Some(directory.clone()),
        writer_stop.clone(),
    );
    let cluster_stop = CancellationToken::new();
    let cluster = match &config.redis_url {
        Some(url) => Some(Cluster::start(
            url,
            &config.redis_prefix,
            &node_id,
            config.node_lease,
            metrics.clone(),
            cluster_stop.clone(),
        )?),
        None => None,
    };
    let extensions = if config.enable_plugins {
        let settings = crate::extensions::Settings {
            dir: config.plugins_dir.clone(),
            cache_dir: config.plugin_cache_dir.clone(),
            timeout: config.plugin_timeout,
            memory_bytes: (config.plugin_memory_mb as usize) << 20,
            max_payload: config.max_payload_bytes as usize,
        };
        let kv: Arc<dyn crate::extensions::kv::KvStore> = match &cluster {
            Some(c) => Arc::new(crate::cluster::kv::RedisKv::new(c.link().clone())),
            None => Arc::new(crate::extensions::kv::MemoryKv::default()),
        };
        Some(crate::extensions::Extensions::start(settings, kv, metrics.clone()).await?)
    } else {
        None
    };
    let mut sio = transport::Sio::build(&config, cluster.as_ref());
    let (presence, typing): (Arc<dyn PresenceManager>, Arc<dyn TypingTracker>) = match &cluster {
        Some(c) => (
            Arc::new(RedisPresence::new(
                c.link().clone(),
                config.presence_away.filter(|_| config.enable_presence),
                config.node_lease,
            )),
            Arc::new(RedisTyping::new(c.link().clone())),
        ),
        None => (
            Arc::new(MemoryPresence::default()),
            Arc::new(MemoryTyping::default()),
        ),
    };
    let app = Arc::new(App {
        config: config.clone(),
        auth,
        store,
        directory: directory.clone(),
        writer,
        metrics,
        presence,
        typing,
        fanout: sio.fanout(&node_id),
        cluster: cluster.clone(),
        extensions: extensions.clone(),
        dedupe: Dedupe::new(
            crate::dedupe::PER_USER,
            crate::dedupe::TOTAL,
            crate::dedupe::DEDUPE_TTL,
        ),
        ip_limiter: App::ip_limiter(config.connection_rate_per_minute),
        handshake_limiter: App::ip_limiter(config.connection_rate_per_minute.saturating_mul(2)),
        slots: Default::default(),
        pending: Default::default(),
        sockets: Default::default(),
        draining: CancellationToken::new(),
        node_id,
        live: Default::default(),
        started: Instant::now(),
        db_check: Default::default(),
        farewells: Default::default(),
    });
    sio.register(app.clone()).await;

    let tasks_stop = CancellationToken::new();
    let janitor = tokio::spawn(janitor(app.clone(), tasks_stop.clone()));
    let leases = tokio::spawn(lease_keeper(app.clone(), tasks_stop.clone()));
    let feed = tokio::spawn(directory.clone().run(tasks_stop.clone()));
    let watcher = extensions.as_ref().map(|e| e.watch(tasks_stop.clone()));
    let cluster_task = cluster.clone().map(|c| {
        let (app, stop) = (app.clone(), tasks_stop.clone());
        tokio::spawn(async move {
            let on_up = || cluster_up(app.clone());
            c.monitor(stop, on_up).await
        })
    });
    let router = sio
        .route(http::router(app.clone()))
        .layer(transport::cors(&config))
        .layer(axum::middleware::from_fn(transport::cors_scope))
        .layer(axum::middleware::from_fn_with_state(
            config.clone(),
            transport::origin_guard,
        ))
        .layer(axum::middleware::from_fn(transport::detach_request_head))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            transport::admission,
        ));
    let addr = listener.local_addr()?;
    let http_stop = CancellationToken::new();
    let limits = transport::serve::Limits {
        max_sockets: config
            .max_sockets
            .unwrap_or_else(transport::serve::default_max_sockets),
        header_timeout: config.header_timeout,
        write_timeout: config.write_timeout,
    };
    let server_task = tokio::spawn(transport::serve::serve(
        listener,
        router,
        limits,
        app.sockets.clone(),
        app.metrics.clone(),
        http_stop.clone(),
    ));
    tracing::info!(%addr, db = app.store.kind(), max_sockets = limits.max_sockets, "nself-realtime listening");

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
    // Scaled out: the other instances' clients learn who left with this instance.
    if tokio::time::timeout(left(deadline), pipeline::farewell(&app))
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached while telling the other instances who left");
    }
    if tokio::time::timeout(left(deadline).max(Duration::from_secs(1)), sio.close())
        .await
        .is_err()
    {
        tracing::warn!("closing transports timed out");
    }
    tasks_stop.cancel();
    let _ = janitor.await;
    let _ = leases.await;
    if let Some(t) = cluster_task {
        let _ = t.await;
    }
    let _ = feed.await;
    if let Some(m) = migrations {
        m.abort();
    }
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
    // A clean stop hands this node's lease back; its rows are already closed.
    if let Ok(Err(e)) = tokio::time::timeout(
        left(deadline).max(Duration::from_millis(500)),
        app.store.end_node(&app.node_id),
    )
    .await
    {
        tracing::warn!(error = %e, "could not release the node lease");
    }
    if let Some(c) = &app.cluster {
        // Hand this instance's sockets back (its users with no socket elsewhere go offline in
        // Redis; their clients were told by the drain already).
        let _ = tokio::time::timeout(Duration::from_secs(1), c.leave()).await;
    }
    cluster_stop.cancel();
    http_stop.cancel();
    if tokio::time::timeout(left(deadline).max(Duration::from_millis(100)), server_task)
        .await
        .is_err()
    {
        tracing::warn!("http server did not stop in time");
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Periodic work: typing expiry (with `typing:event`), custom status expiry and idle users
/// becoming away (with `presence:changed`), presence heartbeats, and audit retention.
async fn janitor(app: Arc<App>, stop: CancellationToken) {
    let tick = (app.config.typing_timeout / 10)
        .clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heartbeat = Instant::now();
    let mut last_idle_check = Instant::now();
    let mut last_cleanup: Option<Instant> = None;
    let mut last_offline: Option<Instant> = None;
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
        if let Some(away) = app
            .config
            .presence_away
            .filter(|_| app.config.enable_presence)
            && last_idle_check.elapsed() >= (away / 4).min(Duration::from_secs(5))
        {
            last_idle_check = Instant::now();
            let idle_before = now - chrono::Duration::from_std(away).unwrap_or_default();
            for state in app.presence.idle(idle_before).await {
                pipeline::broadcast_presence_changed(&app, &state).await;
            }
        }
        if last_heartbeat.elapsed() >= app.config.presence_heartbeat {
            last_heartbeat = Instant::now();
            for user_id in app.presence.online_users() {
                let last_active = app.presence.last_active(&user_id);
                app.writer.write(WriteOp::Heartbeat {
                    user_id,
                    at: now,
                    last_active,
                });
            }
        }
        if last_offline.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_offline = Some(Instant::now());
            app.dedupe.sweep();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), app.store.offline_users()).await
            {
                app.metrics
                    .presence_offline
                    .store(n, std::sync::atomic::Ordering::Relaxed);
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

/// Node lease and crash cleanup: renews this node's lease every third of its length; when the
/// lease row had gone (reaped during an outage) re-writes this node's live rows; and, once the
/// database has answered for half a lease in a row (so that live nodes have had a chance to
/// renew after an outage), closes the connections of nodes whose lease expired and sends
/// `presence:changed` offline for their users who have no live connection left.
async fn lease_keeper(app: Arc<App>, stop: CancellationToken) {
    let lease = app.config.node_lease;
    let mut interval = tokio::time::interval((lease / 6).max(Duration::from_millis(50)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_renew: Option<Instant> = None;
    let mut db_ok_since: Option<Instant> = None;
    let mut redis_renew: Option<Instant> = None;
    let mut redis_ok_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Some(c) = &app.cluster {
            // The same lease in Redis, where presence lives when scaled out.
            if redis_renew.is_none_or(|t| t.elapsed() >= lease / 3) {
                match c.renew_lease().await {
                    Some(kept) => {
                        redis_renew = Some(Instant::now());
                        redis_ok_since.get_or_insert_with(Instant::now);
                        if !kept {
                            // Reaped while we could not renew, or Redis lost its data.
                            c.resync();
                        }
                    }
                    None => redis_ok_since = None,
                }
            }
            if !c.up() {
                redis_ok_since = None;
            }
            if redis_ok_since.is_some_and(|t| t.elapsed() >= lease / 2)
                && let Some(reaped) = c.reap(None).await
            {
                for (room, user) in reaped.left {
                    let event = serde_json::json!({ "roomName": room, "userId": user });
                    app.fanout.room(&room, None, "user:left", &event).await;
                }
                for g in reaped.offline {
                    let state = PresenceState::offline(g.user_id);
                    pipeline::announce_presence_in(&app, &state, g.rooms).await;
                }
            }
        }
        if last_renew.is_none_or(|t| t.elapsed() >= lease / 3) {
            let renewed =
                tokio::time::timeout(lease / 3, app.store.renew_lease(&app.node_id, lease)).await;
            match renewed {
                Ok(Ok(kept)) => {
                    last_renew = Some(Instant::now());
                    db_ok_since.get_or_insert_with(Instant::now);
                    if !kept {
                        reassert_live_state(&app);
                    }
                }
                Ok(Err(e)) => {
                    db_ok_since = None;
                    tracing::debug!(error = %e, "lease renewal failed");
                }
                Err(_) => db_ok_since = None,
            }
        }
        if db_ok_since.is_some_and(|t| t.elapsed() >= lease / 2) {
            match app.store.reap_dead_nodes().await {
                // Scaled out, presence is decided in Redis (above): the database cleanup
                // only closes the dead nodes' rows.
                Ok(_) if app.cluster.is_some() => {}
                Ok(users) => {
                    for gone in users {
                        if app
                            .presence
                            .state(&gone.user_id)
                            .is_some_and(|s| s.connections > 0)
                        {
                            // Our rows were taken for dead: put them back.
                            reassert_live_state(&app);
                            continue;
                        }
                        let state = PresenceState::offline(gone.user_id);
                        pipeline::announce_presence_in(&app, &state, gone.rooms).await;
                    }
                }
                Err(e) => {
                    db_ok_since = None;
                    tracing::debug!(error = %e, "crash cleanup failed");
                }
            }
        }
    }
}

/// Redis answers again (or for the first time): this instance's live sockets are written
/// again (they may have been reaped, or the shared state lost with a Redis restart), and the
/// users whose cluster-wide presence changed by it are announced.
async fn cluster_up(app: Arc<App>) -> bool {
    let rooms = app.fanout.local_room_sockets();
    let Some(changed) = app.presence.reassert(&rooms).await else {
        return false;
    };
    if changed.online.is_empty() && changed.offline.is_empty() {
        return true;
    }
    tracing::info!(
        online = changed.online.len(),
        offline = changed.offline.len(),
        "presence re-asserted in redis"
    );
    if !app.config.enable_presence {
        return true;
    }
    // The other instances may still be resubscribing after the same outage: announce once
    // they listen (bounded), or their clients would miss it.
    tokio::spawn(async move {
        if let Some(c) = &app.cluster {
            c.wait_peers_listening(Duration::from_secs(5)).await;
        }
        for state in changed.online {
            pipeline::broadcast_presence_changed(&app, &state).await;
        }
        for user_id in changed.offline {
            let state = PresenceState::offline(user_id);
            pipeline::broadcast_presence_changed(&app, &state).await;
        }
    });
    true
}

/// Queues this node's live connection rows and its users' presence again (upserts).
fn reassert_live_state(app: &App) {
    let rows: Vec<WriteOp> = app
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    tracing::warn!(
        connections = rows.len(),
        "this node's lease had been reaped: re-asserting its live state"
    );
    for op in rows {
        app.writer.write(op);
    }
    for user in app.presence.online_users() {
        if let Some(state) = app.presence.state(&user) {
            pipeline::persist_presence_state(app, &state);
        }
    }
}
