//! `run(config, listener, shutdown)`: what starts, in order, and in which order it stops.
//!
//! Start: the store (migrations, this node's lease, the default rooms) -> the directory (rooms
//! and counts in memory) -> the writer -> the cluster connection -> the policy modules -> the
//! shared state -> the Socket.IO namespace -> the background tasks -> HTTP.
//!
//! Stop (on `shutdown`, bounded by `REALTIME_SHUTDOWN_TIMEOUT`): `draining` (readiness false,
//! new connections refused, every link cleans up without per-socket broadcasts) -> the links
//! are waited for -> the other instances are told who left -> the transports are closed
//! (clients see a transport close and reconnect) -> the background tasks stop -> the writer
//! drains its queue -> the lease is handed back -> HTTP stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::auth::Authenticator;
use crate::cluster::Cluster;
use crate::cluster::survey::Survey;
use crate::config::Config;
use crate::dedupe::{Claims, Dedupe, LocalClaims, RedisClaims};
use crate::fanout::{LocalRoomSockets, RedisRoomSockets, RoomSockets};
use crate::metrics::Metrics;
use crate::presence::{MemoryPresence, Presence, PresenceManager, RedisPresence};
use crate::store::cache::Directory;
use crate::store::{BackendKind, NewRoom, Store, writer};
use crate::transport::rate::{ConnectionRate, LocalRate, RedisRate};
use crate::typing::{MemoryTyping, RedisTyping, TypingTracker};
use crate::{http, maintenance, pipeline, transport};

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
    let auth = authenticator(&config)?;
    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (store, migrations) = open_store(&config, &node_id).await?;
    let directory = load_directory(&store, &node_id, &config).await;
    let metrics = Arc::new(Metrics::new());
    metrics.set_build_info(&node_id);
    // Stops the background tasks (and the cluster's pub/sub driver) once the links are done.
    let background = CancellationToken::new();
    let writer_stop = CancellationToken::new();
    let (writer, writer_task) = writer::spawn(
        store.clone(),
        config.batch_size,
        config.write_queue,
        metrics.clone(),
        Some(directory.clone()),
        writer_stop.clone(),
    );
    let cluster = match &config.redis {
        Some(target) => Some(Cluster::start(
            target,
            &config.redis_prefix,
            &node_id,
            config.node_lease,
            metrics.clone(),
            background.clone(),
        )?),
        None => None,
    };
    let policies = start_policies(&config, cluster.as_ref(), &metrics).await?;
    let mut sio = transport::Sio::build(&config, cluster.as_ref());
    let fanout = sio.fanout(&node_id);
    let shared = Shared::new(&config, cluster.as_ref());
    // Room history: in Redis when scaled out (delivered by each instance from its channel),
    // written to the database too with REALTIME_HISTORY_PERSIST.
    let (history, history_feed): (Arc<dyn crate::history::History>, _) = match &cluster {
        Some(c) => {
            let h = Arc::new(crate::history::RedisHistory::new(
                c.redis().clone(),
                fanout.clone(),
                config.history_persist.then(|| store.clone()),
            ));
            let feed = h.subscribe(&c.driver()).await.map(|s| (h.clone(), s));
            (h, feed)
        }
        None => {
            let persist = config.history_persist.then(|| store.clone());
            (
                Arc::new(crate::history::MemoryHistory::new(fanout.clone(), persist)),
                None,
            )
        }
    };
    let app = Arc::new(App {
        presence: Presence::new(shared.presence, &config, writer.clone(), fanout.clone()),
        config: config.clone(),
        auth,
        store,
        directory: directory.clone(),
        writer,
        metrics,
        typing: shared.typing,
        history: history.clone(),
        fanout,
        room_sockets: shared.room_sockets,
        claims: shared.claims,
        cluster: cluster.clone(),
        policies: policies.clone(),
        dedupe: Dedupe::new(
            crate::dedupe::PER_USER,
            crate::dedupe::TOTAL,
            crate::dedupe::DEDUPE_TTL,
        ),
        connection_rate: shared.connection_rate,
        handshake_limiter: App::ip_limiter(config.connection_rate_per_minute.saturating_mul(2)),
        slots: Default::default(),
        links: TaskTracker::new(),
        pending: Default::default(),
        sockets: Default::default(),
        draining: CancellationToken::new(),
        node_id,
        live: Default::default(),
        started: Instant::now(),
        db_check: Default::default(),
        farewells: Default::default(),
        survey: cluster.as_ref().map(|c| Survey::new(c.clone())),
    });
    sio.register(app.clone()).await;

    let tasks = TaskTracker::new();
    tasks.spawn(directory.clone().run(background.clone()));
    tasks.spawn(maintenance::janitor(app.clone(), background.clone()));
    tasks.spawn(maintenance::leases(app.clone(), background.clone()));
    if let Some(p) = &policies {
        tasks.spawn(p.watch(background.clone()));
    }
    if let Some((h, messages)) = history_feed {
        tasks.spawn(h.serve(messages, background.clone()));
    }
    if let Some(s) = &app.survey {
        let me = app.clone();
        let answer = move |q| {
            let app = me.clone();
            async move { crate::api::answer(&app, q).await }
        };
        tasks.spawn(s.clone().serve(answer, background.clone()));
    }
    if let Some(c) = &cluster {
        tasks.spawn(maintenance::recovery(
            c.clone(),
            app.clone(),
            background.clone(),
        ));
    }
    tasks.close();

    let http_stop = CancellationToken::new();
    let http_task = serve_http(&app, &mut sio, listener, http_stop.clone())?;

    shutdown.cancelled().await;
    let deadline = Instant::now() + config.shutdown_timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    tracing::info!("shutting down: draining connections");
    app.draining.cancel();
    // Links see `draining` and clean up first (socketioxide's close does not run disconnect
    // handlers); then the transports are closed, which clients see as a transport close and
    // answer by reconnecting (to another instance behind the load balancer).
    app.links.close();
    if tokio::time::timeout(left(), app.links.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = app.links.len(),
            "shutdown timeout reached with connections still open"
        );
    }
    // Scaled out: the other instances' clients learn who left with this instance.
    if tokio::time::timeout(left(), pipeline::farewell(&app))
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached while telling the other instances who left");
    }
    if tokio::time::timeout(left().max(Duration::from_secs(1)), sio.close())
        .await
        .is_err()
    {
        tracing::warn!("closing transports timed out");
    }
    background.cancel();
    let _ = tokio::time::timeout(left().max(Duration::from_secs(1)), tasks.wait()).await;
    if let Some(m) = migrations {
        m.abort();
    }
    writer_stop.cancel();
    if tokio::time::timeout(left(), writer_task).await.is_err() {
        tracing::warn!("write-behind flush timed out");
    }
    release_lease(&app, left()).await;
    http_stop.cancel();
    if tokio::time::timeout(left().max(Duration::from_millis(100)), http_task)
        .await
        .is_err()
    {
        tracing::warn!("http server did not stop in time");
    }
    tracing::info!("shutdown complete");
    Ok(())
}

fn authenticator(config: &Config) -> anyhow::Result<Authenticator> {
    let auth = Authenticator::from_config(config)?;
    if auth.insecure() {
        tracing::warn!(
            "INSECURE: no REALTIME_JWT_SECRET or REALTIME_JWT_PUBLIC_KEY is set; tokens are \
             decoded WITHOUT signature verification (development mode). Never run this in production."
        );
    }
    Ok(auth)
}

/// Opens the store and prepares it (this node's lease, the default rooms). The embedded
/// database must work now; PostgreSQL may come later (the server then starts degraded and the
/// returned task applies the migrations once it answers).
async fn open_store(
    config: &Config,
    node_id: &str,
) -> anyhow::Result<(Store, Option<tokio::task::JoinHandle<()>>)> {
    let (store, migrations) = Store::open_for_server(&config.database_url)
        .await
        .context("opening the database")?;
    let prepared = async {
        store.start_node(node_id, config.node_lease).await?;
        create_default_rooms(&store).await
    };
    match prepared.await {
        Ok(()) => {}
        Err(e) if store.kind() == BackendKind::Postgres => {
            tracing::error!(error = %format!("{e:#}"), "database not ready at start: serving degraded")
        }
        Err(e) => return Err(e.context("preparing the database")),
    }
    Ok((store, migrations))
}

/// The directory, with rooms and member counts in memory before the first client arrives (a
/// herd after a restart then finds them); without the database now, they are read once it
/// answers.
async fn load_directory(store: &Store, node_id: &str, config: &Config) -> Arc<Directory> {
    let missing_ttl = config.cache_ttl.unwrap_or(match store.kind() {
        BackendKind::Sqlite => Duration::from_secs(2),
        BackendKind::Postgres => Duration::from_secs(30),
    });
    let directory = Directory::new(store.clone(), node_id, DIRECTORY_WAIT, missing_ttl);
    match tokio::time::timeout(Duration::from_secs(5), directory.load()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "rooms not read at start: read when the database answers")
        }
        Err(_) => {
            tracing::warn!("rooms not read within 5 s at start: read when the database answers")
        }
    }
    directory
}

/// The policy modules (None when `REALTIME_ENABLE_PLUGINS=false`), their key/value store in
/// Redis when scaled out.
async fn start_policies(
    config: &Config,
    cluster: Option<&Arc<Cluster>>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<crate::policy::Policies>>> {
    if !config.enable_plugins {
        return Ok(None);
    }
    let settings = crate::policy::Settings {
        dir: config.plugins_dir.clone(),
        cache_dir: config.plugin_cache_dir.clone(),
        timeout: config.plugin_timeout,
        memory_bytes: (config.plugin_memory_mb as usize) << 20,
        max_payload: config.max_payload_bytes as usize,
    };
    let kv: Arc<dyn crate::policy::kv::KvStore> = match cluster {
        Some(c) => Arc::new(crate::policy::kv::RedisKv::new(c.redis().clone())),
        None => Arc::new(crate::policy::kv::MemoryKv::default()),
    };
    Ok(Some(
        crate::policy::Policies::start(settings, kv, metrics.clone()).await?,
    ))
}

/// The state shared across instances when scaled out (in Redis), or this instance's own.
struct Shared {
    presence: Arc<dyn PresenceManager>,
    typing: Arc<dyn TypingTracker>,
    room_sockets: Arc<dyn RoomSockets>,
    claims: Arc<dyn Claims>,
    connection_rate: Arc<dyn ConnectionRate>,
}

impl Shared {
    fn new(config: &Config, cluster: Option<&Arc<Cluster>>) -> Shared {
        let rate = config.connection_rate_per_minute;
        match cluster {
            Some(c) => {
                let redis = c.redis();
                Shared {
                    presence: Arc::new(RedisPresence::new(
                        redis.clone(),
                        config.presence_away.filter(|_| config.enable_presence),
                        config.node_lease,
                    )),
                    typing: Arc::new(RedisTyping::new(redis.clone())),
                    room_sockets: Arc::new(RedisRoomSockets::new(redis.clone())),
                    claims: Arc::new(RedisClaims::new(redis.clone())),
                    connection_rate: Arc::new(RedisRate::new(redis.clone(), rate)),
                }
            }
            None => Shared {
                presence: Arc::new(MemoryPresence::default()),
                typing: Arc::new(MemoryTyping::default()),
                room_sockets: Arc::new(LocalRoomSockets),
                claims: Arc::new(LocalClaims),
                connection_rate: Arc::new(LocalRate::new(rate)),
            },
        }
    }
}

/// Starts HTTP + Socket.IO on `listener` (the middleware in the order a request meets them:
/// admission, request head copy, Origin, CORS scope and CORS).
fn serve_http(
    app: &Arc<App>,
    sio: &mut transport::Sio,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let config = &app.config;
    let router = sio
        .route(http::router(app.clone()))
        .layer(transport::cors(config))
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
    let limits = transport::serve::Limits {
        max_sockets: config
            .max_sockets
            .unwrap_or_else(transport::serve::default_max_sockets),
        header_timeout: config.header_timeout,
        write_timeout: config.write_timeout,
        trusted_proxies: config.trusted_proxies.clone().into(),
    };
    tracing::info!(%addr, db = app.store.kind().as_str(), max_sockets = limits.max_sockets, "nself-realtime listening");
    Ok(tokio::spawn(transport::serve::serve(
        listener,
        router,
        limits,
        app.sockets.clone(),
        app.metrics.clone(),
        stop,
    )))
}

/// A clean stop hands this node's lease back (its rows are already closed) and, scaled out,
/// its sockets in Redis (its users with no socket elsewhere go offline there; their clients
/// were told by the farewell).
async fn release_lease(app: &App, left: Duration) {
    if let Ok(Err(e)) = tokio::time::timeout(
        left.max(Duration::from_millis(500)),
        app.store.end_node(&app.node_id),
    )
    .await
    {
        tracing::warn!(error = %e, "could not release the node lease");
    }
    if let Some(c) = &app.cluster {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.leave()).await;
    }
}
