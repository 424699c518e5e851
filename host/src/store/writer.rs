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

/// Told what became of membership writes: the directory's member counts follow them.
pub trait WriteListener: Send + Sync + 'static {
    /// A batch was committed (called with the whole batch; only membership writes matter).
    fn committed(&self, ops: &[WriteOp]);
    /// A write was dropped (queue full, refused by the database, or retries exhausted).
    fn dropped(&self, op: &WriteOp);
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<WriteOp>,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    listener: Option<Arc<dyn WriteListener>>,
}

impl Writer {
    /// Queues one write. When the queue is full the write is dropped and counted. Audit rows
    /// give way first: past half the queue they are dropped (and counted), so that the room
    /// left goes to connection, presence and membership rows.
    pub fn write(&self, op: WriteOp) {
        if matches!(op, WriteOp::Event { .. }) && self.tx.capacity() < self.tx.max_capacity() / 2 {
            self.metrics.store_audit_dropped.inc();
            self.metrics.store_writes_dropped.inc();
            return;
        }
        match self.tx.try_send(op) {
            Ok(()) => {
                self.metrics.store_queue_depth.inc();
            }
            Err(e) => {
                if let Some(l) = &self.listener {
                    l.dropped(&e.into_inner());
                }
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
    listener: Option<Arc<dyn WriteListener>>,
    stop: CancellationToken,
) -> (Writer, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity);
    let healthy = Arc::new(AtomicBool::new(true));
    let writer = Writer {
        tx,
        metrics: metrics.clone(),
        healthy: healthy.clone(),
        listener: listener.clone(),
    };
    let task = Task {
        store,
        metrics,
        healthy,
        listener,
    };
    let task = tokio::spawn(task.run(rx, batch_size, stop));
    (writer, task)
}

/// The writer task's state.
struct Task {
    store: Store,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    listener: Option<Arc<dyn WriteListener>>,
}

impl Task {
    async fn run(
        self,
        mut rx: mpsc::Receiver<WriteOp>,
        batch_size: usize,
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
            self.commit(&mut batch, Some(&stop)).await;
        }
        // Drain: everything queued before the stop is committed (bounded retries).
        rx.close();
        while rx.recv_many(&mut batch, batch_size).await > 0 {
            self.commit(&mut batch, None).await;
        }
    }

    fn committed(&self, ops: &[WriteOp]) {
        self.metrics.store_writes.inc_by(ops.len() as u64);
        self.metrics.store_queue_depth.dec_by(ops.len() as i64);
        if let Some(l) = &self.listener
            && ops.iter().any(WriteOp::is_membership)
        {
            l.committed(ops);
        }
    }

    fn dropped(&self, ops: &[WriteOp]) {
        self.metrics.store_writes_dropped.inc_by(ops.len() as u64);
        self.metrics.store_queue_depth.dec_by(ops.len() as i64);
        if let Some(l) = &self.listener {
            for op in ops.iter().filter(|op| op.is_membership()) {
                l.dropped(op);
            }
        }
    }

    /// A batch the database refused for its data: applies the operations one by one, drops
    /// (and counts) only those refused for their data, keeps the rest for a retry.
    async fn isolate(&self, batch: &mut Vec<WriteOp>) {
        let mut kept = Vec::new();
        for op in batch.drain(..) {
            let one = std::slice::from_ref(&op);
            match self.store.apply(one).await {
                Ok(()) => self.committed(one),
                Err(e) if is_data_error(&e) => {
                    tracing::error!(error = %e, op = ?op, "write refused by the database: dropped");
                    self.dropped(one);
                }
                Err(_) => kept.push(op),
            }
        }
        *batch = kept;
    }

    /// Commits one batch, retrying with backoff. With `stop` given it retries until it
    /// succeeds or the stop is requested (then the drain retries a few more times); without
    /// it, 5 tries.
    async fn commit(&self, batch: &mut Vec<WriteOp>, stop: Option<&CancellationToken>) {
        let mut delay = Duration::from_millis(50);
        let mut tries = 0u32;
        loop {
            match self.store.apply(batch).await {
                Ok(()) => {
                    self.committed(batch);
                    self.metrics.store_batches.inc();
                    self.healthy.store(true, Ordering::Relaxed);
                    batch.clear();
                    return;
                }
                Err(e) if is_data_error(&e) => {
                    self.isolate(batch).await;
                    if batch.is_empty() {
                        return;
                    }
                }
                Err(e) => {
                    tries += 1;
                    self.metrics.store_write_failures.inc();
                    if self.healthy.swap(false, Ordering::Relaxed) {
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
                        self.dropped(batch);
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
