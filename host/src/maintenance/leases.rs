//! Node leases and crash cleanup, in the database and (scaled out) in Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::cluster::Cluster;
use crate::presence::PresenceState;
use crate::store::WriteOp;

/// When a lease was last renewed, and since when its store has answered without a break.
#[derive(Default)]
struct Lease {
    renewed: Option<Instant>,
    answering_since: Option<Instant>,
}

impl Lease {
    fn due(&self, every: Duration) -> bool {
        self.renewed.is_none_or(|t| t.elapsed() >= every)
    }

    fn answered(&mut self) {
        self.renewed = Some(Instant::now());
        self.answering_since.get_or_insert_with(Instant::now);
    }

    /// Whether the store has answered for `long` in a row: live instances have had the time
    /// to renew their leases after an outage, so an expired lease means a dead instance.
    fn steady_for(&self, long: Duration) -> bool {
        self.answering_since.is_some_and(|t| t.elapsed() >= long)
    }
}

/// Runs until `stop`: renews this instance's lease every third of `REALTIME_NODE_LEASE_MS`;
/// when the lease had gone (reaped during an outage) writes this instance's live rows again;
/// once the store has answered for half a lease in a row, cleans up after the instances whose
/// lease expired and announces their users' departures.
pub async fn leases(app: Arc<App>, stop: CancellationToken) {
    let lease = app.config.node_lease;
    let mut interval = tokio::time::interval((lease / 6).max(Duration::from_millis(50)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut db = Lease::default();
    let mut redis = Lease::default();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Some(c) = &app.cluster {
            redis_lease(&app, c, &mut redis, lease).await;
        }
        database_lease(&app, &mut db, lease).await;
    }
}

/// The lease in Redis, where presence lives when scaled out, and the crash cleanup there.
async fn redis_lease(app: &App, c: &Cluster, state: &mut Lease, lease: Duration) {
    if state.due(lease / 3) {
        match c.renew_lease().await {
            Some(kept) => {
                state.answered();
                if !kept {
                    // Reaped while we could not renew, or Redis lost its data.
                    c.resync();
                }
            }
            None => state.answering_since = None,
        }
    }
    if !c.up() {
        state.answering_since = None;
    }
    if state.steady_for(lease / 2)
        && let Some(reaped) = c.reap(None).await
    {
        for (room, user) in reaped.left {
            let event = serde_json::json!({ "roomName": room, "userId": user });
            app.fanout.room(&room, None, "user:left", &event).await;
        }
        for g in reaped.offline {
            let state = PresenceState::offline(g.user_id);
            app.presence.broadcast(&state, g.rooms).await;
        }
    }
}

/// The lease in the database, and the crash cleanup of the database rows.
async fn database_lease(app: &App, state: &mut Lease, lease: Duration) {
    if state.due(lease / 3) {
        match tokio::time::timeout(lease / 3, app.store.renew_lease(&app.node_id, lease)).await {
            Ok(Ok(kept)) => {
                state.answered();
                if !kept {
                    reassert_rows(app);
                }
            }
            Ok(Err(e)) => {
                state.answering_since = None;
                tracing::debug!(error = %e, "lease renewal failed");
            }
            Err(_) => state.answering_since = None,
        }
    }
    if !state.steady_for(lease / 2) {
        return;
    }
    match app.store.reap_dead_nodes().await {
        // Scaled out, presence is decided in Redis (above): the database cleanup only closes
        // the dead instances' rows.
        Ok(_) if app.cluster.is_some() => {}
        Ok(users) => {
            for gone in users {
                let live_here = app
                    .presence
                    .state()
                    .state(&gone.user_id)
                    .is_some_and(|s| s.connections > 0);
                if live_here {
                    // Our rows were taken for dead: put them back.
                    reassert_rows(app);
                    continue;
                }
                let state = PresenceState::offline(gone.user_id);
                app.presence.broadcast(&state, gone.rooms).await;
            }
        }
        Err(e) => {
            state.answering_since = None;
            tracing::debug!(error = %e, "crash cleanup failed");
        }
    }
}

/// Queues this instance's live connection rows and its users' presence again (upserts).
fn reassert_rows(app: &App) {
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
    app.presence.persist_all();
}
