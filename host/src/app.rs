//! [`App`]: the shared state of one server, behind one `Arc`. Every connection's link and
//! every HTTP handler reads it; nothing in it is held across an `.await` under a lock.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::dedupe::Claims;
use crate::dedupe::Dedupe;
use crate::fanout::Fanout;
use crate::fanout::RoomSockets;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::presence::Presence;
use crate::store::Store;
use crate::store::cache::Directory;
use crate::store::writer::Writer;
use crate::transport::rate::ConnectionRate;
use crate::typing::TypingTracker;

/// Shared state of one server.
pub struct App {
    /// Configuration.
    pub config: Arc<Config>,
    /// Token verifier.
    pub auth: Authenticator,
    /// Database.
    pub store: Store,
    /// Cached rooms and memberships (over `store`).
    pub directory: Arc<Directory>,
    /// Write-behind queue.
    pub writer: Writer,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Presence state.
    pub presence: Presence,
    /// Typing state.
    pub typing: Arc<dyn TypingTracker>,
    /// Broadcasts.
    pub fanout: Arc<dyn Fanout>,
    /// Room histories (message positions, catch-up, paging).
    pub history: Arc<dyn crate::history::History>,
    /// Which rooms users have sockets in on the other instances.
    pub room_sockets: Arc<dyn RoomSockets>,
    /// `clientMessageId` claims across instances.
    pub claims: Arc<dyn Claims>,
    /// Scale-out over Redis (None: a single instance).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Questions to every instance (the server API's cluster-wide answers; None alone).
    pub survey: Option<Arc<crate::cluster::survey::Survey>>,
    /// Policy modules (None when `REALTIME_ENABLE_PLUGINS=false`).
    pub policies: Option<Arc<Policies>>,
    /// `clientMessageId` memory.
    pub dedupe: Dedupe,
    /// New connections per minute per IP.
    pub connection_rate: Arc<dyn ConnectionRate>,
    /// Engine handshakes per minute per IP: twice the connection rate, so that only handshakes
    /// that never become connections are cut off here (None when disabled).
    pub handshake_limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Connection slots in use (admitted, not yet cleaned up).
    pub slots: AtomicUsize,
    /// Every socket's link task: a drain waits for them.
    pub links: tokio_util::task::TaskTracker,
    /// Open TCP connections (see [`crate::transport::serve`]).
    pub sockets: Arc<AtomicUsize>,
    /// Engine sessions opened and not yet connected to the namespace (see
    /// [`crate::transport::admission`]).
    pub pending: Arc<AtomicUsize>,
    /// Cancelled when the server starts draining.
    pub draining: CancellationToken,
    /// This instance's id (connection rows carry it).
    pub node_id: String,
    /// The connection row of every live socket of this instance, by socket id: re-written
    /// when the database lost this instance's rows (its lease was reaped during an outage).
    pub live: std::sync::Mutex<std::collections::HashMap<String, crate::store::WriteOp>>,
    /// Start time.
    pub started: Instant,
    /// What the other instances must learn about the sockets a drain dropped (see
    /// [`crate::pipeline::farewell`]).
    pub farewells: std::sync::Mutex<Vec<crate::pipeline::Farewell>>,
    /// The last database check of `/health`: (when, answered).
    pub db_check: std::sync::Mutex<Option<(Instant, bool)>>,
}

impl App {
    /// A per-IP limiter of `per_minute` (0 disables it).
    pub fn ip_limiter(per_minute: u32) -> Option<DefaultKeyedRateLimiter<IpAddr>> {
        NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
    }

    /// Takes a connection slot, or None at `REALTIME_MAX_CONNECTIONS`.
    pub fn acquire_slot(self: &Arc<Self>) -> Option<Slot> {
        let max = self.config.max_connections;
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot { app: self.clone() })
    }

    /// Whether the server is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Whether the database answers, checked at most once a second however often it is
    /// asked (`/health` is reachable without credentials: its requests must not become
    /// database round trips).
    pub async fn database_answers(&self) -> bool {
        let recent = *self.db_check.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ok)) = recent
            && at.elapsed() < std::time::Duration::from_secs(1)
        {
            return ok;
        }
        // Claim the check; concurrent callers keep the last answer meanwhile.
        {
            let mut slot = self.db_check.lock().unwrap_or_else(|e| e.into_inner());
            let last = slot.map(|(_, ok)| ok).unwrap_or(true);
            *slot = Some((Instant::now(), last));
        }
        let ok = matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), self.store.ping()).await,
            Ok(Ok(()))
        );
        *self.db_check.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), ok));
        ok
    }
}

/// A held connection slot; dropping it frees the slot.
pub struct Slot {
    app: Arc<App>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.app.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl App {
    /// Records a live connection row (see [`App::live`]) and queues it.
    pub fn connection_opened(&self, socket_id: &str, op: crate::store::WriteOp) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(socket_id.to_string(), op.clone());
        self.writer.write(op);
    }

    /// Forgets a live connection and queues its closing.
    pub fn connection_closed(&self, socket_id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(socket_id);
        self.writer.write(crate::store::WriteOp::ConnectionClosed {
            socket_id: socket_id.to_string(),
            at: chrono::Utc::now(),
        });
    }
}
