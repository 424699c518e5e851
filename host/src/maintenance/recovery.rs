//! Redis coming back: this instance's state written again and the changes announced.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::cluster::Cluster;
use crate::presence::PresenceState;

/// Runs until `stop`: watches Redis; each time it answers again (and the first time), this
/// instance's live sockets are written again (they may have been reaped, or the shared state
/// lost with a Redis restart) and the users whose cluster-wide presence changed by it are
/// announced.
pub async fn recovery(cluster: Arc<Cluster>, app: Arc<App>, stop: CancellationToken) {
    let on_up = || back(app.clone());
    cluster.monitor(stop, on_up).await
}

/// Re-asserts this instance's sockets; false when it could not be done now (retried).
async fn back(app: Arc<App>) -> bool {
    let rooms = app.fanout.local_room_sockets();
    let Some(changed) = app.presence.state().reassert(&rooms).await else {
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
    if !app.presence.enabled() {
        return true;
    }
    // The other instances may still be resubscribing after the same outage: announce once
    // they listen (bounded), or their clients would miss it.
    tokio::spawn(async move {
        if let Some(c) = &app.cluster {
            c.wait_peers_listening(Duration::from_secs(5)).await;
        }
        for state in changed.online {
            app.presence.announce(&state, Vec::new()).await;
        }
        for user_id in changed.offline {
            let state = PresenceState::offline(user_id);
            app.presence.announce(&state, Vec::new()).await;
        }
    });
    true
}
