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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::store::fake::Fake;

    fn op(n: usize) -> WriteOp {
        WriteOp::Ping {
            socket_id: format!("s{n}"),
            at: chrono::Utc::now(),
        }
    }

    fn audit(n: usize) -> WriteOp {
        WriteOp::Event {
            id: uuid::Uuid::now_v7(),
            event_type: "error".into(),
            socket_id: Some(format!("s{n}")),
            user_id: None,
            room_id: None,
            payload: serde_json::json!({}),
            ip: None,
            metadata: None,
            at: chrono::Utc::now(),
        }
    }

    fn socket_of(op: &WriteOp) -> String {
        match op {
            WriteOp::Ping { socket_id, .. } => socket_id.clone(),
            WriteOp::MemberJoin { user_id, .. } => user_id.clone(),
            other => format!("{other:?}"),
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[derive(Default)]
    struct Heard(Mutex<Vec<String>>);

    impl WriteListener for Heard {
        fn committed(&self, ops: &[WriteOp]) {
            let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
            h.extend(ops.iter().map(|o| format!("committed {}", socket_of(o))));
        }
        fn dropped(&self, op: &WriteOp) {
            let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let line = format!("dropped {}", socket_of(op));
            h.push(line);
        }
    }

    #[tokio::test]
    async fn writes_are_committed_in_order_through_an_outage() {
        let fake = Fake::default();
        fake.script.lock().unwrap().unreachable = 3;
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let (w, task) = spawn(fake.store(), 4, 100, metrics.clone(), None, stop.clone());
        for n in 0..10 {
            w.write(op(n));
        }
        until("all committed", || fake.committed().len() == 10).await;
        let order: Vec<String> = fake.committed().iter().map(socket_of).collect();
        let want: Vec<String> = (0..10).map(|n| format!("s{n}")).collect();
        assert_eq!(order, want, "the outage reordered nothing");
        assert_eq!(metrics.store_write_failures.get(), 3);
        assert_eq!(metrics.store_writes.get(), 10);
        assert_eq!(metrics.store_writes_dropped.get(), 0);
        assert!(w.healthy());
        stop.cancel();
        let _ = task.await;
    }

    #[tokio::test]
    async fn a_write_refused_for_its_data_is_dropped_alone_and_reported() {
        let fake = Fake::default();
        fake.script.lock().unwrap().refuse =
            Some(|o| matches!(o, WriteOp::MemberJoin { user_id, .. } if user_id == "bad"));
        let metrics = Arc::new(Metrics::new());
        let heard = Arc::new(Heard::default());
        let stop = CancellationToken::new();
        let hold = fake.hold.clone().write_owned().await;
        let (w, task) = spawn(
            fake.store(),
            10,
            100,
            metrics.clone(),
            Some(heard.clone()),
            stop.clone(),
        );
        w.write(op(1));
        w.write(WriteOp::MemberJoin {
            room_id: "r".into(),
            user_id: "bad".into(),
            at: chrono::Utc::now(),
        });
        w.write(op(2));
        drop(hold);
        until("the others committed", || fake.committed().len() == 2).await;
        assert_eq!(metrics.store_writes_dropped.get(), 1);
        let heard = heard.0.lock().unwrap().clone();
        assert!(heard.contains(&"dropped bad".to_string()), "{heard:?}");
        stop.cancel();
        let _ = task.await;
    }

    #[tokio::test]
    async fn past_half_the_queue_audit_rows_give_way_and_past_it_everything_is_counted() {
        let fake = Fake::default();
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        // The writer holds its first batch while the queue (10) fills.
        let hold = fake.hold.clone().write_owned().await;
        let (w, task) = spawn(fake.store(), 1, 10, metrics.clone(), None, stop.clone());
        w.write(op(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        for n in 1..=6 {
            w.write(op(n));
        }
        // More than half the queue in use: audit rows are refused, other rows still fit.
        w.write(audit(100));
        assert_eq!(metrics.store_audit_dropped.get(), 1);
        for n in 7..=10 {
            w.write(op(n));
        }
        // Full: the next write is dropped and counted.
        w.write(op(11));
        assert_eq!(
            metrics.store_writes_dropped.get(),
            2,
            "one audit row, one past the bound"
        );
        drop(hold);
        until("the queue drained", || fake.committed().len() == 11).await;
        stop.cancel();
        let _ = task.await;
    }
}
