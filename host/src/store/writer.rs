//! The write-behind writer: one bounded queue, one task, batches committed in one transaction
//! each (group commit). The event path only calls [`Writer::write`], which never waits.
//!
//! While the database fails, the current batch is retried with backoff and the queue fills;
//! past its bound new writes are dropped and counted (`realtime_store_writes_dropped_total`),
//! never silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, WriteOp};
use crate::metrics::Metrics;

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<WriteOp>,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
}

impl Writer {
    /// Queues one write. When the queue is full the write is dropped and counted.
    pub fn write(&self, op: WriteOp) {
        match self.tx.try_send(op) {
            Ok(()) => {
                self.metrics.store_queue_depth.inc();
            }
            Err(_) => {
                let dropped = self.metrics.store_writes_dropped.inc();
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped = dropped + 1,
                        "write-behind queue full or closed: write dropped"
                    );
                }
            }
        }
    }

    /// False while the last batch failed to commit.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Starts the writer task. It runs until `stop` is cancelled, then drains the queue and exits.
pub fn spawn(
    store: Store,
    batch_size: usize,
    capacity: usize,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> (Writer, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity);
    let healthy = Arc::new(AtomicBool::new(true));
    let writer = Writer {
        tx,
        metrics: metrics.clone(),
        healthy: healthy.clone(),
    };
    let task = tokio::spawn(run(store, rx, batch_size, metrics, healthy, stop));
    (writer, task)
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<WriteOp>,
    batch_size: usize,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(batch_size);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, batch_size) => n,
            _ = stop.cancelled() => break,
        };
        if n == 0 {
            return;
        }
        commit(&store, &mut batch, &metrics, &healthy, Some(&stop)).await;
    }
    // Drain: everything queued before the stop is committed (bounded retries).
    rx.close();
    while rx.recv_many(&mut batch, batch_size).await > 0 {
        commit(&store, &mut batch, &metrics, &healthy, None).await;
    }
}

/// Whether the database refused these rows for what they hold (SQLSTATE class 22: data
/// exception, 23: integrity violation): retrying cannot help.
fn is_data_error(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// A batch the database refused for its data: applies the operations one by one, drops
/// (and counts) only those refused for their data, keeps the rest for a retry.
async fn isolate(store: &Store, batch: &mut Vec<WriteOp>, metrics: &Metrics) {
    let mut kept = Vec::new();
    for op in batch.drain(..) {
        match store.apply(std::slice::from_ref(&op)).await {
            Ok(()) => {
                metrics.store_writes.inc();
                metrics.store_queue_depth.dec();
            }
            Err(e) if is_data_error(&e) => {
                tracing::error!(error = %e, op = ?op, "write refused by the database: dropped");
                metrics.store_writes_dropped.inc();
                metrics.store_queue_depth.dec();
            }
            Err(_) => kept.push(op),
        }
    }
    *batch = kept;
}

/// Commits one batch, retrying with backoff. With `stop` given it retries until it succeeds or
/// the stop is requested (then the drain retries a few more times); without it, 5 tries.
async fn commit(
    store: &Store,
    batch: &mut Vec<WriteOp>,
    metrics: &Metrics,
    healthy: &AtomicBool,
    stop: Option<&CancellationToken>,
) {
    let mut delay = Duration::from_millis(50);
    let mut tries = 0u32;
    loop {
        match store.apply(batch).await {
            Ok(()) => {
                metrics.store_writes.inc_by(batch.len() as u64);
                metrics.store_queue_depth.dec_by(batch.len() as i64);
                metrics.store_batches.inc();
                healthy.store(true, Ordering::Relaxed);
                batch.clear();
                return;
            }
            Err(e) if is_data_error(&e) => {
                isolate(store, batch, metrics).await;
                if batch.is_empty() {
                    return;
                }
            }
            Err(e) => {
                tries += 1;
                metrics.store_write_failures.inc();
                if healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, rows = batch.len(), "write-behind batch failed; retrying");
                }
                let give_up = match stop {
                    Some(s) => s.is_cancelled() && tries >= 5,
                    None => tries >= 5,
                };
                if give_up {
                    tracing::error!(
                        rows = batch.len(),
                        "write-behind batch dropped after retries"
                    );
                    metrics.store_writes_dropped.inc_by(batch.len() as u64);
                    metrics.store_queue_depth.dec_by(batch.len() as i64);
                    batch.clear();
                    return;
                }
                match stop {
                    Some(s) => {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = s.cancelled() => {}
                        }
                    }
                    None => tokio::time::sleep(delay).await,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
