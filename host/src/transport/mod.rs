//! Socket.IO on axum: engine limits, the Origin allow-list, and the `/` namespace whose connect
//! middleware ([`admit`]) authenticates and wires every socket before its connect reply leaves.

mod admit;
mod link;
mod stall;

pub use stall::{GuardedListener, PeerAddr};

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

use crate::app::App;
use crate::config::Config;

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
        .max_buffer_size(config.send_buffer)
        .connect_timeout(config.connect_timeout)
        .upgrade_timeout(config.connect_timeout)
}

/// Builds the Socket.IO layer with a placeholder handle, so that [`App`] can be created with
/// the handle before the namespace (which needs the [`App`]) is registered by [`register`].
pub fn layer(config: &Config) -> (SocketIoLayer, SocketIo) {
    builder(config).build_layer()
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

/// CORS for the polling transport, from `REALTIME_CORS_ORIGIN` (credentials allowed, as the
/// original did).
pub fn cors(config: &Config) -> CorsLayer {
    let origin = if config.any_origin() {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(
            config
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_credentials(true)
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
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
