//! Socket.IO on axum: engine limits, the Origin allow-list, and the `/` namespace whose connect
//! middleware ([`admit`]) authenticates and wires every socket before its connect reply leaves.

mod admit;
mod link;
pub mod proxy;
pub mod rate;
pub mod serve;
mod stall;

pub use stall::{KillSwitch, PeerAddr};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::{ParserConfig, SocketIo, SocketIoBuilder};
use socketioxide_core::adapter::DefinedAdapter;
use tower_http::cors::{AllowOrigin, CorsLayer};

use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

use crate::app::App;
use crate::cluster::Cluster;
use crate::cluster::driver::PubSubDriver;
use crate::config::Config;
use crate::fanout::{Fanout, SocketIoFanout};

/// Read chunk of a websocket connection, allocated per socket for its whole life. Client
/// events are small; a larger frame is read in several chunks.
const WS_READ_BUFFER: usize = 1024;

/// The engine configured from [`Config`] (every limit set explicitly).
pub fn builder(config: &Config) -> SocketIoBuilder {
    let max = config.max_payload_bytes;
    let parser = ParserConfig::common()
        .max_incoming_binary_buf_size(max as usize)
        .max_incoming_binaries(10)
        .packet_completion_timeout(Duration::from_secs(10));
    SocketIo::builder()
        .with_parser(parser)
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .max_payload(max)
        .ws_max_message_size(max as usize)
        .ws_max_frame_size(max as usize)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .max_buffer_size(config.send_buffer)
        .connect_timeout(config.connect_timeout)
        .upgrade_timeout(config.connect_timeout)
}

/// The adapter of a cluster: socketioxide-redis over our supervised driver.
pub type ClusterAdapter = CustomRedisAdapter<SocketEmitter, PubSubDriver>;
type SocketEmitter = socketioxide::adapter::Emitter;

/// The Socket.IO engine of one server: in-process, or over Redis when scaled out. Built before
/// [`App`] (which holds its fan-out) and registered once the [`App`] exists.
pub enum Sio {
    /// Single instance.
    Local(Option<SocketIoLayer>, SocketIo),
    /// Broadcasts cross instances through Redis.
    Cluster(
        Option<SocketIoLayer<ClusterAdapter>>,
        SocketIo<ClusterAdapter>,
    ),
}

impl Sio {
    /// Builds the engine; with a cluster, over its driver, channels under the cluster prefix.
    pub fn build(config: &Config, cluster: Option<&Arc<Cluster>>) -> Sio {
        match cluster {
            None => {
                let (layer, io) = builder(config).build_layer();
                Sio::Local(Some(layer), io)
            }
            Some(c) => {
                let adapter_config = RedisAdapterConfig::new()
                    .with_prefix(crate::cluster::adapter_prefix(&config.redis_prefix))
                    .with_stream_buffer(8192)
                    .with_request_timeout(Duration::from_secs(2));
                let ctr = RedisAdapterCtr::new_with_driver(c.driver(), adapter_config);
                let (layer, io) = builder(config)
                    .with_adapter::<ClusterAdapter>(ctr)
                    .build_layer();
                Sio::Cluster(Some(layer), io)
            }
        }
    }

    /// The fan-out over this engine (`node` names this instance in a cluster).
    pub fn fanout(&self, node: &str) -> Arc<dyn Fanout> {
        match self {
            Sio::Local(_, io) => Arc::new(SocketIoFanout::new(io.clone(), None)),
            Sio::Cluster(_, io) => Arc::new(SocketIoFanout::new(
                io.clone(),
                Some(crate::cluster::node_room(node)),
            )),
        }
    }

    /// Registers the `/` namespace (see [`register`]); with a cluster, waits for the adapter's
    /// subscriptions (they are retried in the background when Redis is down).
    pub async fn register(&self, app: Arc<App>) {
        match self {
            Sio::Local(_, io) => register(io, app),
            Sio::Cluster(_, io) => {
                if let Err(e) = register(io, app).await {
                    tracing::error!(error = %e, "socket.io adapter did not start");
                }
            }
        }
    }

    /// Adds the Socket.IO layer to the router (once).
    pub fn route(&mut self, router: axum::Router) -> axum::Router {
        match self {
            Sio::Local(layer, _) => match layer.take() {
                Some(l) => router.layer(l),
                None => router,
            },
            Sio::Cluster(layer, _) => match layer.take() {
                Some(l) => router.layer(l),
                None => router,
            },
        }
    }

    /// Closes every transport (clients see a transport close).
    pub async fn close(&self) {
        match self {
            Sio::Local(_, io) => io.close().await,
            Sio::Cluster(_, io) => io.close().await,
        }
    }
}

/// Registers the `/` namespace: [`admit`] runs before the connect reply (auth, limits, handler
/// registration); the connect handler opens the socket's link once the reply is out.
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>, app: Arc<App>) -> A::InitRes {
    let admit_app = app.clone();
    let on_connect = move |s: SocketRef<A>| async move {
        link::open(&s);
    };
    let admit = move |s: SocketRef<A>, auth: socketioxide::extract::TryData<serde_json::Value>| {
        let app = admit_app.clone();
        async move { admit::admit(app, s, auth.0.ok()).await }
    };
    io.ns("/", on_connect.with(admit))
}

/// CORS for the polling transport, from `REALTIME_CORS_ORIGIN`. With a list of origins,
/// credentials are allowed (as the original did); with `*` any origin may connect but without
/// credentials (echoing every origin with credentials would let any page ride a user's
/// cookies).
pub fn cors(config: &Config) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    if config.any_origin() {
        layer.allow_origin(AllowOrigin::any())
    } else {
        layer
            .allow_origin(AllowOrigin::list(
                config
                    .cors_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok()),
            ))
            .allow_credentials(true)
    }
}

/// Keeps CORS to the Socket.IO paths: `/health` and `/metrics` carry no CORS headers, so a
/// web page of another origin cannot read them.
pub async fn cors_scope(req: Request, next: Next) -> Response {
    let socket_io = req.uri().path().starts_with("/socket.io");
    let mut res = next.run(req).await;
    if !socket_io {
        let headers = res.headers_mut();
        let cors: Vec<_> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for k in cors {
            headers.remove(k);
        }
    }
    res
}

/// Refuses Socket.IO requests (polling and the websocket upgrade alike) whose `Origin` is not
/// allowed; socketioxide does not check it itself. No `Origin` (a non-browser client) passes.
pub async fn origin_guard(
    axum::extract::State(config): axum::extract::State<Arc<Config>>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path().starts_with("/socket.io") && !config.any_origin() {
        let allowed = match req.headers().get(header::ORIGIN) {
            None => true,
            Some(o) => o.to_str().is_ok_and(|o| {
                let o = o.trim_end_matches('/');
                config.cors_origins.iter().any(|a| a == o)
            }),
        };
        if !allowed {
            return (StatusCode::FORBIDDEN, "Origin not allowed").into_response();
        }
    }
    next.run(req).await
}

/// Whether a request opens an Engine.IO session (a Socket.IO request without a `sid`).
fn opens_session(req: &Request) -> bool {
    req.uri().path().starts_with("/socket.io")
        && !req.uri().query().is_some_and(|q| q.contains("sid="))
}

/// An engine session that has not connected to the namespace yet. Released by the connect
/// middleware ([`admit`]), or when the session ends without connecting (engineioxide keeps the
/// opening request's extensions for the session's life).
#[derive(Clone)]
pub struct PendingConnect(Arc<PendingInner>);

struct PendingInner {
    count: Arc<std::sync::atomic::AtomicUsize>,
    released: std::sync::atomic::AtomicBool,
}

impl PendingConnect {
    fn new(count: Arc<std::sync::atomic::AtomicUsize>) -> PendingConnect {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        PendingConnect(Arc::new(PendingInner {
            count,
            released: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The session connected (or gave up): it no longer counts.
    pub fn release(&self) {
        if !self
            .0
            .released
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.0
                .count
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

impl Drop for PendingInner {
    fn drop(&mut self) {
        if !self
            .released
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// Admission of new engine sessions under a herd: past `REALTIME_MAX_PENDING_CONNECTS`
/// sessions opened and not yet connected (the server is behind on authenticating and wiring
/// them), a new one is refused with HTTP 503 and `Retry-After`. Clients see a transport error
/// and retry with their reconnection backoff (the JavaScript client does so by itself; a
/// `connect_error` from the namespace would stop it). While draining, new sessions get 503 too.
pub async fn admission(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !opens_session(&req) {
        return next.run(req).await;
    }
    // Handshakes count against the peer's rate too (at twice the connection rate, so a
    // client over the connection rate still gets its clear `Too many connections`).
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0.ip());
    if let (Some(limiter), Some(ip)) = (&app.handshake_limiter, peer)
        && limiter.check_key(&ip).is_err()
    {
        app.metrics
            .connections_refused
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "handshake_rate",
            })
            .inc();
        static LOG: crate::util::Throttle = crate::util::Throttle::new();
        if let Some(held) = LOG.pass() {
            tracing::info!(peer = %ip, reason = "handshake_rate", held_back = held, "connection refused: too many handshakes from this address");
        }
        let body =
            serde_json::json!({ "code": "RATE_LIMIT_EXCEEDED", "message": "Too many connections" });
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::RETRY_AFTER, HeaderValue::from_static("60")),
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
            ],
            body.to_string(),
        )
            .into_response();
    }
    let busy =
        app.pending.load(std::sync::atomic::Ordering::Acquire) >= app.config.max_pending_connects;
    if busy || app.is_draining() {
        let (reason, message) = if busy {
            ("busy", "Server busy: retry")
        } else {
            ("shutting_down", "Server shutting down")
        };
        app.metrics
            .connections_refused
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc();
        static LOG: crate::util::Throttle = crate::util::Throttle::new();
        if let Some(held) = LOG.pass() {
            let peer = peer.map(|p| p.to_string()).unwrap_or_default();
            tracing::info!(%peer, reason, held_back = held, "connection refused: {message}");
        }
        let body = serde_json::json!({ "code": "SERVICE_UNAVAILABLE", "message": message });
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::RETRY_AFTER, HeaderValue::from_static("1")),
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
            ],
            body.to_string(),
        )
            .into_response();
    }
    req.extensions_mut()
        .insert(PendingConnect::new(app.pending.clone()));
    next.run(req).await
}

/// Copies the head of a request that opens an Engine.IO session (no `sid` yet) out of the
/// connection's read buffer.
///
/// hyper parses the URI and header values as slices of the connection's read buffer (16 KiB
/// here), and engineioxide keeps the handshake's request head for the life of the session: each
/// live socket then pinned a whole read buffer (measured with DHAT: 16 KiB of the ~38 KiB per
/// idle websocket connection). Owned copies cost the size of the head.
pub async fn detach_request_head(req: Request, next: Next) -> Response {
    if !opens_session(&req) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let mut headers = http::HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let owned = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        headers.append(name.clone(), owned);
    }
    parts.headers = headers;
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    next.run(Request::from_parts(parts, body)).await
}
