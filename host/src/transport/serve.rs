//! The accept loop: what every TCP connection meets before HTTP, Engine.IO or Socket.IO.
//!
//! - **Open sockets are capped** below the process's open-file limit
//!   (`REALTIME_MAX_SOCKETS`): past it a new connection gets a one-line `503` and is closed,
//!   so a flood of idle connections cannot take the file descriptors the server needs.
//! - **Headers must arrive in time** (`REALTIME_HEADER_TIMEOUT`, hyper's header read timer):
//!   a connection that sends nothing, or its request head a byte at a time, is closed.
//! - Every stream gets `TCP_NODELAY`, the write-stall guard and a [`KillSwitch`]; requests
//!   carry the peer address and the switch in their extensions.
//!
//! hyper's HTTP/1 connection is driven directly (with upgrades, for the websocket), and shut
//! down gracefully when `stop` is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::stall::{KillSwitch, PeerAddr, StallGuard};
use crate::metrics::{Metrics, ReasonLabel};

/// What the accept loop enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most.
    pub max_sockets: usize,
    /// Longest a request head may take to arrive (from the connection's start, or the end of
    /// the previous request).
    pub header_timeout: Duration,
    /// `REALTIME_WRITE_TIMEOUT` of the stall guard.
    pub write_timeout: Duration,
    /// `REALTIME_TRUSTED_PROXIES`: connections from these name their client in
    /// `X-Forwarded-For` (the address every later stage sees).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

/// The answer to a connection past the cap.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: text/plain\r\nContent-Length: 21\r\nConnection: close\r\n\r\nToo many connections\n";

/// Open connections, counted down when one ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `router` on `listener` until `stop`, then lets every connection finish its request
/// (bounded by the caller).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        let (mut stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, or a connection reset before accept: wait a bit
                // rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_sockets {
            open.fetch_sub(1, Ordering::AcqRel);
            metrics
                .connections_refused
                .get_or_create(&ReasonLabel { reason: "sockets" })
                .inc();
            static LOG: crate::util::Throttle = crate::util::Throttle::new();
            if let Some(held) = LOG.pass() {
                tracing::info!(peer = %addr, reason = "sockets", held_back = held, "connection refused: REALTIME_MAX_SOCKETS reached");
            }
            tracker.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), stream.write_all(FULL)).await;
            });
            continue;
        }
        let open_guard = Open(open.clone());
        // Without it, small frames wait for Nagle's algorithm: measured p99 38 ms -> 7 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let kill = KillSwitch::default();
        let io = TokioIo::new(StallGuard::new(stream, limits.write_timeout, kill.clone()));
        let trusted = limits.trusted_proxies.clone();
        let limits_here = limits.clone();
        let service = router
            .clone()
            .map_request(move |mut req: http::Request<Incoming>| {
                let client = super::proxy::client_addr(addr, req.headers(), &trusted);
                let ext = req.extensions_mut();
                ext.insert(ConnectInfo(PeerAddr(client)));
                ext.insert(kill.clone());
                req
            });
        let stop = stop.clone();
        tracker.spawn(async move {
            let _open = open_guard;
            connection(
                io,
                TowerToHyperService::new(service),
                addr,
                limits_here,
                stop,
            )
            .await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn connection<S>(
    io: TokioIo<StallGuard>,
    service: TowerToHyperService<S>,
    peer: SocketAddr,
    limits: Limits,
    stop: CancellationToken,
) where
    S: tower::Service<
            http::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

/// The socket cap when none is configured: the open-file limit minus room for the server's
/// own files (database, logs, policy modules, Redis).
pub fn default_max_sockets() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    (soft.saturating_sub(256) as usize).max(64)
}
