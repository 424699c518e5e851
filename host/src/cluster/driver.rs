//! The pub/sub driver under the socketioxide-redis adapter.
//!
//! The adapter publishes a broadcast before delivering it locally and gives up on the local
//! delivery when publishing fails; and its stock drivers neither reconnect a dropped subscriber
//! connection nor count what they drop. This driver:
//! - publishes through a bounded queue drained by one task (pipelined `PUBLISH`es, in order):
//!   a broadcast never waits for Redis, local delivery goes on while Redis is down, and what
//!   could not be published is counted (`realtime_redis_messages_dropped_total{direction="out"}`);
//! - owns a dedicated subscriber connection under a supervisor that reconnects with backoff,
//!   resubscribes every channel, and every few seconds checks with `PUBSUB NUMSUB` that the
//!   subscriptions still exist (a `CLIENT KILL` or a restart loses them);
//! - hands each received message to its channel's bounded buffer and counts what does not fit
//!   (`direction="in"`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RedisConn;
use crate::metrics::DirectionLabel;

/// Broadcasts waiting to be published.
const PUBLISH_QUEUE: usize = 16_384;
/// Most `PUBLISH`es in one pipeline.
const PUBLISH_BATCH: usize = 256;
/// How often a connected subscriber checks its subscriptions.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for a connect, a subscribe or a publish batch.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A driver error (only `num_serv` can fail: publishing never fails, see the module doc).
#[derive(Debug)]
pub struct DriverError(String);

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DriverError {}

struct Inner {
    redis: Arc<RedisConn>,
    handlers: RwLock<HashMap<String, mpsc::Sender<ChanItem>>>,
    sink: Mutex<Option<PubSubSink>>,
    connected: AtomicBool,
    /// Which node the subscriber connects and the publisher publishes through (cluster mode: the
    /// seeds in order, moving on after a failed connect; with the same list on every instance
    /// they all meet on one node, and a broadcast needs no hop over the cluster bus, which adds
    /// tens of milliseconds under load).
    attempt: AtomicUsize,
    out: mpsc::Sender<(String, Vec<u8>)>,
}

/// The driver; clones share one connection, one queue and one handler map.
#[derive(Clone)]
pub struct PubSubDriver {
    inner: Arc<Inner>,
}

impl PubSubDriver {
    /// Starts the publisher and the subscriber supervisor; both stop with `stop`.
    pub fn start(redis: Arc<RedisConn>, stop: CancellationToken) -> PubSubDriver {
        let (out, rx) = mpsc::channel(PUBLISH_QUEUE);
        let inner = Arc::new(Inner {
            redis,
            handlers: RwLock::new(HashMap::new()),
            sink: Mutex::new(None),
            connected: AtomicBool::new(false),
            attempt: AtomicUsize::new(0),
            out,
        });
        tokio::spawn(publisher(inner.clone(), rx, stop.clone()));
        tokio::spawn(supervise(inner.clone(), stop));
        PubSubDriver { inner }
    }

    /// Whether the subscriber connection is up.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }
}

impl Inner {
    fn dropped(&self, direction: &'static str, n: u64) {
        self.redis
            .metrics
            .redis_dropped
            .get_or_create(&DirectionLabel { direction })
            .inc_by(n);
    }

    fn channels(&self) -> Vec<String> {
        self.handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn current_sink(&self) -> Option<PubSubSink> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_sink(&self, sink: Option<PubSubSink>) {
        self.connected.store(sink.is_some(), Ordering::Release);
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }

    fn dispatch(&self, msg: redis::Msg) {
        let chan = msg.get_channel_name();
        let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = handlers.get(chan)
            && let Err(mpsc::error::TrySendError::Full(_)) =
                tx.try_send((chan.to_string(), msg.get_payload_bytes().to_vec()))
        {
            self.dropped("in", 1);
        }
    }
}

impl Driver for PubSubDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        if self.inner.out.try_send((chan, val)).is_err() {
            self.inner.dropped("out", 1);
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size.max(1));
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        // When not connected now, the supervisor subscribes it on (re)connection.
        if let Some(mut sink) = self.inner.current_sink() {
            let _ = tokio::time::timeout(IO_TIMEOUT, sink.subscribe(&chan)).await;
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chan);
        if let Some(mut sink) = self.inner.current_sink() {
            let _ = tokio::time::timeout(IO_TIMEOUT, sink.unsubscribe(&chan)).await;
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        self.inner
            .redis
            .numsub(chan)
            .await
            .map(|n| u16::try_from(n).unwrap_or(u16::MAX))
            .ok_or_else(|| DriverError("redis is unreachable".into()))
    }
}

async fn publisher(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    // Cluster mode: a connection to the node the subscriber uses (its index among the seeds).
    let mut node: Option<(usize, redis::aio::MultiplexedConnection)> = None;
    loop {
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, PUBLISH_BATCH) => n,
            _ = stop.cancelled() => return,
        };
        if got == 0 {
            return;
        }
        let n = batch.len() as u64;
        if !inner.redis.up() {
            batch.clear();
            inner.dropped("out", n);
            continue;
        }
        let mut pipe = redis::pipe();
        for (chan, payload) in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(chan).arg(payload).ignore();
        }
        let sent = if inner.redis.is_cluster() {
            // A connection left over from before a node went away fails at once, having sent
            // nothing: one retry on a fresh connection.
            let mut sent = None;
            for _ in 0..2 {
                let at = inner.attempt.load(Ordering::Relaxed);
                if node.as_ref().is_none_or(|(i, _)| *i != at) {
                    let client = inner.redis.pubsub_client(at);
                    node =
                        tokio::time::timeout(IO_TIMEOUT, client.get_multiplexed_async_connection())
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .map(|c| (at, c));
                }
                let Some((_, conn)) = node.as_mut() else {
                    break;
                };
                let r = tokio::time::timeout(IO_TIMEOUT, pipe.query_async::<()>(conn)).await;
                let stale =
                    matches!(&r, Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped());
                sent = Some(r);
                if !stale {
                    break;
                }
                node = None;
            }
            let Some(sent) = sent else {
                inner.dropped("out", n);
                continue;
            };
            sent
        } else {
            let Some(mut conn) = inner.redis.conn() else {
                inner.dropped("out", n);
                continue;
            };
            tokio::time::timeout(IO_TIMEOUT, pipe.query_async::<()>(&mut conn)).await
        };
        if !matches!(sent, Ok(Ok(()))) {
            node = None;
        }
        match sent {
            Ok(Ok(())) => {
                inner.redis.metrics.redis_published.inc_by(n);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, lost = n, "publishing to redis failed");
                inner.dropped("out", n);
            }
            Err(_) => {
                tracing::debug!(lost = n, "publishing to redis timed out");
                inner.dropped("out", n);
            }
        }
    }
}

/// Subscribes `channels` on a fresh connection; None when Redis does not answer.
async fn connect(inner: &Inner) -> Option<(PubSubSink, redis::aio::PubSubStream)> {
    let client = inner
        .redis
        .pubsub_client(inner.attempt.load(Ordering::Relaxed));
    let pubsub = match tokio::time::timeout(IO_TIMEOUT, client.get_async_pubsub()).await {
        Ok(Ok(p)) => p,
        failed => {
            if let Ok(Err(e)) = failed {
                tracing::debug!(error = %e, "redis pub/sub connect failed");
            }
            // Next time through another node (cluster mode; one server: the same).
            inner.attempt.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let (mut sink, stream) = pubsub.split();
    let channels = inner.channels();
    if !channels.is_empty() {
        tokio::time::timeout(IO_TIMEOUT, sink.subscribe(&channels))
            .await
            .ok()?
            .map_err(|e| tracing::debug!(error = %e, "redis subscribe failed"))
            .ok()?;
    }
    Some((sink, stream))
}

/// Which of our channels have no subscriber on the server (lost subscriptions).
async fn missing(inner: &Inner) -> Option<Vec<String>> {
    let channels = inner.channels();
    if channels.is_empty() {
        return Some(Vec::new());
    }
    let mut numsub = redis::cmd("PUBSUB");
    numsub.arg("NUMSUB").arg(&channels);
    let counts: Vec<redis::Value> = if inner.redis.is_cluster() {
        // A node counts only its own subscribers: ask the one this subscriber is on.
        let client = inner
            .redis
            .pubsub_client(inner.attempt.load(Ordering::Relaxed));
        let ask = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            numsub.query_async(&mut c).await
        };
        tokio::time::timeout(IO_TIMEOUT, ask).await.ok()?.ok()?
    } else {
        inner
            .redis
            .call(async |c| numsub.query_async(c).await)
            .await?
    };
    let mut out = Vec::new();
    for pair in counts.chunks(2) {
        if let [name, count] = pair {
            let name: String = redis::from_redis_value_ref(name).ok()?;
            let count: i64 = redis::from_redis_value_ref(count).ok()?;
            if count == 0 {
                out.push(name);
            }
        }
    }
    Some(out)
}

async fn supervise(inner: Arc<Inner>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut ever = false;
    loop {
        let conn = tokio::select! {
            c = connect(&inner) => c,
            _ = stop.cancelled() => return,
        };
        if let Some((mut sink, mut stream)) = conn {
            inner.set_sink(Some(sink.clone()));
            if ever {
                inner.redis.metrics.redis_reconnects.inc();
                tracing::warn!("redis pub/sub reconnected and resubscribed");
            }
            ever = true;
            backoff = Duration::from_millis(100);
            let mut check = tokio::time::interval(CHECK_EVERY);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            check.tick().await;
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(m) => inner.dispatch(m),
                        None => break,
                    },
                    _ = check.tick() => {
                        if let Some(lost) = missing(&inner).await
                            && !lost.is_empty()
                        {
                            tracing::warn!(channels = lost.len(), "redis subscriptions lost: resubscribing");
                            let all = inner.channels();
                            let _ = tokio::time::timeout(IO_TIMEOUT, sink.subscribe(&all)).await;
                        }
                    }
                    _ = stop.cancelled() => return,
                }
            }
            inner.set_sink(None);
            tracing::warn!("redis pub/sub connection lost: reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
