//! Hot reload: watches the plugins directory (notify, debounced) and rescans on any change; a
//! slow periodic rescan covers a directory created later or an event the OS dropped.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::registry::Registry;

/// Quiet time after the last file event before rescanning (a copy is many events).
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Fallback rescan period.
const PERIODIC: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled.
pub async fn run(registry: Arc<Registry>, stop: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // Full: a rescan is already pending, which will see this change too.
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the plugins directory; rescanning every 5 s");
            None
        }
    };
    let mut watching = false;
    let mut tick = tokio::time::interval(PERIODIC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !watching && let Some(w) = watcher.as_mut() {
            watching = w.watch(registry.dir(), RecursiveMode::NonRecursive).is_ok();
            if watching {
                tracing::info!(dir = %registry.dir().display(), "watching for policy modules");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            Some(()) = rx.recv() => {
                // Debounce: wait until the directory is quiet.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                        Some(()) = rx.recv() => continue,
                    }
                }
            }
        }
        registry.rescan().await;
    }
}
