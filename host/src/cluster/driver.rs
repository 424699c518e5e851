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
//!
//! On a Redis Cluster with sharded pub/sub (Redis 7) the subscriber is a cluster connection
//! (RESP3) that `SSUBSCRIBE`s each channel on the master of its slot, and the publisher
//! `SPUBLISH`es there, so no node carries all broadcasts. The two channels every instance
//! reads all of (the adapter's broadcast requests and the room history) are split into one
//! channel per shard: a broadcast to one room goes out on its room's shard (in order: one
//! room, one channel), any other on shard 0. Without sharded pub/sub (Redis 6) the classic
//! path above runs through one node.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use serde::de::{IgnoredAny, SeqAccess, Visitor};
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
    /// Channels subscribed shard by shard with sharded pub/sub.
    split: Vec<String>,
    /// Sharded pub/sub: the cluster connection the subscriber made (the publisher uses it too).
    sharded: ArcSwapOption<ClusterConnection>,
}

/// The driver; clones share one connection, one queue and one handler map.
#[derive(Clone)]
pub struct PubSubDriver {
    inner: Arc<Inner>,
}

impl PubSubDriver {
    /// Starts the publisher and the subscriber supervisor; both stop with `stop`. `split`: the
    /// channels subscribed shard by shard with sharded pub/sub.
    pub fn start(
        redis: Arc<RedisConn>,
        split: Vec<String>,
        stop: CancellationToken,
    ) -> PubSubDriver {
        let (out, rx) = mpsc::channel(PUBLISH_QUEUE);
        let inner = Arc::new(Inner {
            redis,
            handlers: RwLock::new(HashMap::new()),
            sink: Mutex::new(None),
            connected: AtomicBool::new(false),
            attempt: AtomicUsize::new(0),
            out,
            split,
            sharded: ArcSwapOption::empty(),
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
        self.deliver(msg.get_channel_name(), msg.get_payload_bytes().to_vec());
    }

    /// Hands a message of `chan` (a shard's channel: to the channel it is a shard of) to its
    /// handler.
    fn deliver(&self, chan: &str, payload: Vec<u8>) {
        let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
        let (name, tx) = match handlers.get_key_value(chan) {
            Some(found) => found,
            None => {
                let Some(base) = chan.rfind('{').map(|i| &chan[..i]) else {
                    return;
                };
                match handlers.get_key_value(base) {
                    Some(found) if chan.ends_with('}') => found,
                    _ => return,
                }
            }
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send((name.clone(), payload)) {
            self.dropped("in", 1);
        }
    }

    /// The channels subscribed on the wire with sharded pub/sub: every shard of a split
    /// channel, the others as they are.
    fn shard_channels(&self) -> Vec<String> {
        self.channels().iter().flat_map(|c| self.wire(c)).collect()
    }

    /// The channels `chan` is subscribed as with sharded pub/sub.
    fn wire(&self, chan: &str) -> Vec<String> {
        if self.split.iter().any(|c| c == chan) {
            (0..self.redis.shards())
                .map(|k| self.redis.shard_channel(chan, k))
                .collect()
        } else {
            vec![chan.to_string()]
        }
    }

    /// Where a message for `chan` is `SPUBLISH`ed: a split channel's shard (its one room's,
    /// else the first), or the channel itself.
    fn publish_channel(&self, chan: &str, payload: &[u8]) -> String {
        if !self.split.iter().any(|c| c == chan) {
            return chan.to_string();
        }
        let shard = single_room(payload).map_or(0, |room| self.redis.shard_of(&room));
        self.redis.shard_channel(chan, shard)
    }
}

/// The one room a broadcast request of the adapter targets, from its MessagePack encoding (an
/// array: node id, request id, type, packet, rooms, options `[flags, rooms, except, sid,
/// server id]`, …); None when it targets several rooms, none (everyone) or cannot be read.
fn single_room(payload: &[u8]) -> Option<String> {
    /// Reads the elements of an array, keeping the `rooms` of the one at `at` (an options
    /// array when `at` is 5, the rooms list when it is 1).
    struct Pick(usize);
    impl<'de> Visitor<'de> for Pick {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            for _ in 0..self.0 {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(None);
                }
            }
            let found = if self.0 == 1 {
                seq.next_element::<Vec<String>>()?
            } else {
                seq.next_element::<Option<Opts>>()?.flatten().map(|o| o.0)
            };
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(found)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    struct Opts(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Opts {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Ok(Opts(d.deserialize_seq(Pick(1))?.unwrap_or_default()))
        }
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(payload);
    let rooms = serde::Deserializer::deserialize_seq(&mut de, Pick(5)).ok()??;
    match <[String; 1]>::try_from(rooms) {
        Ok([room]) => Some(room),
        Err(_) => None,
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
        if let Some(conn) = self.inner.sharded.load_full() {
            let mut conn = (*conn).clone();
            for wire in self.inner.wire(&chan) {
                let _ = tokio::time::timeout(IO_TIMEOUT, conn.ssubscribe(&wire)).await;
            }
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
        if let Some(conn) = self.inner.sharded.load_full() {
            let mut conn = (*conn).clone();
            for wire in self.inner.wire(&chan) {
                let _ = tokio::time::timeout(IO_TIMEOUT, conn.sunsubscribe(&wire)).await;
            }
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
        if inner.redis.sharded() {
            publish_sharded(&inner, &mut batch).await;
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

/// `SPUBLISH`es a batch: one pipeline per channel (its messages in order, on its slot's
/// master), the channels at once.
async fn publish_sharded(inner: &Inner, batch: &mut Vec<(String, Vec<u8>)>) {
    let n = batch.len() as u64;
    let Some(conn) = inner.sharded.load_full() else {
        batch.clear();
        inner.dropped("out", n);
        return;
    };
    let mut groups: Vec<(redis::Pipeline, u64)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (chan, payload) in batch.drain(..) {
        let wire = inner.publish_channel(&chan, &payload);
        let i = *index.entry(wire.clone()).or_insert_with(|| {
            groups.push((redis::pipe(), 0));
            groups.len() - 1
        });
        groups[i].0.cmd("SPUBLISH").arg(wire).arg(payload).ignore();
        groups[i].1 += 1;
    }
    let sends = groups.into_iter().map(|(pipe, count)| {
        let mut conn = (*conn).clone();
        async move {
            let sent = tokio::time::timeout(IO_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
            (sent, count)
        }
    });
    for (sent, count) in futures_util::future::join_all(sends).await {
        match sent {
            Ok(Ok(())) => {
                inner.redis.metrics.redis_published.inc_by(count);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, lost = count, "publishing to redis failed");
                inner.dropped("out", count);
            }
            Err(_) => {
                tracing::debug!(lost = count, "publishing to redis timed out");
                inner.dropped("out", count);
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
    // A cluster says at its first check whether it has sharded pub/sub.
    while !inner.redis.pubsub_known() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.cancelled() => return,
        }
    }
    if inner.redis.sharded() {
        supervise_sharded(inner, stop).await
    } else {
        supervise_classic(inner, stop).await
    }
}

/// `SSUBSCRIBE`s every channel (each on its slot's master); whether all succeeded.
async fn ssubscribe_all(inner: &Inner, conn: &mut ClusterConnection) -> bool {
    let channels = inner.shard_channels();
    let all = async {
        for chan in &channels {
            conn.ssubscribe(chan).await?;
        }
        Ok::<_, redis::RedisError>(())
    };
    match tokio::time::timeout(IO_TIMEOUT, all).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "redis ssubscribe failed");
            false
        }
        Err(_) => false,
    }
}

/// Sharded pub/sub: one cluster connection follows the cluster (it reconnects to a node that
/// comes back and re-subscribes there); every few seconds, and at once when the server drops a
/// subscription (its slot moved to another master), each channel is subscribed again (a no-op
/// where it still is).
async fn supervise_sharded(inner: Arc<Inner>, stop: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
    let client =
        redis::cluster::ClusterClientBuilder::new(inner.redis.seeds.iter().map(String::as_str))
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(IO_TIMEOUT)
            .retries(2)
            .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "redis sharded pub/sub: cannot build the cluster client");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    let mut conn = loop {
        let made = tokio::select! {
            c = tokio::time::timeout(IO_TIMEOUT, client.get_async_connection()) => c,
            _ = stop.cancelled() => return,
        };
        match made {
            Ok(Ok(c)) => break c,
            Ok(Err(e)) => tracing::debug!(error = %e, "redis sharded pub/sub connect failed"),
            Err(_) => tracing::debug!("redis sharded pub/sub connect timed out"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    };
    inner.sharded.store(Some(Arc::new(conn.clone())));
    let mut ever = false;
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            push = rx.recv() => {
                let Some(push) = push else { return };
                if push.kind == redis::PushKind::SUnsubscribe {
                    // The server dropped a subscription (its slot moved to another master):
                    // subscribe again now, which the client routes to the new owner.
                    check.reset_immediately();
                    continue;
                }
                if push.kind == redis::PushKind::SMessage {
                    // [channel, message]: the message is handed on without a copy.
                    let mut data = push.data.into_iter();
                    if let (Some(redis::Value::BulkString(chan)), Some(redis::Value::BulkString(payload))) =
                        (data.next(), data.next())
                    {
                        inner.deliver(&String::from_utf8_lossy(&chan), payload);
                    }
                }
            }
            _ = check.tick() => {
                let was = inner.connected.load(Ordering::Acquire);
                let ok = ssubscribe_all(&inner, &mut conn).await;
                inner.connected.store(ok, Ordering::Release);
                if ok && !was {
                    if ever {
                        inner.redis.metrics.redis_reconnects.inc();
                        tracing::warn!("redis sharded pub/sub: subscribed again");
                    }
                    ever = true;
                } else if !ok && was {
                    tracing::warn!("redis sharded pub/sub: subscriptions failing: retrying");
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

async fn supervise_classic(inner: Arc<Inner>, stop: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::adapter::BroadcastOptions;
    use socketioxide_core::adapter::remote_packet::{RequestOut, RequestTypeOut};
    use socketioxide_core::packet::Packet;
    use socketioxide_core::{Sid, Uid, Value};

    /// Encodes a request as socketioxide-redis publishes it.
    fn encoded(rooms: &[&str], acked: bool) -> Vec<u8> {
        let packet = Packet::event("/", Value::Str("[\"message\",{}]".into(), None));
        let mut opts = BroadcastOptions::new(Sid::new());
        opts.rooms = rooms.iter().map(|r| r.to_string().into()).collect();
        opts.except = ["#node:other".to_string().into()].into_iter().collect();
        let ty = if acked {
            RequestTypeOut::BroadcastWithAck(&packet)
        } else {
            RequestTypeOut::Broadcast(&packet)
        };
        let req = RequestOut::new(Uid::new(), ty, &opts);
        rmp_serde::to_vec(&req).expect("encode")
    }

    #[test]
    fn the_room_of_a_broadcast_is_read_from_the_request() {
        let one = encoded(&["general"], false);
        assert_eq!(single_room(&one).as_deref(), Some("general"));
        let acked = encoded(&["ops"], true);
        assert_eq!(single_room(&acked).as_deref(), Some("ops"));
        let mut o = BroadcastOptions::new(Sid::new());
        o.rooms = ["r1".to_string().into()].into_iter().collect();
        let req = RequestOut::new(Uid::new(), RequestTypeOut::DisconnectSockets, &o)
            .with_ack_timeout(Some(Duration::from_secs(1)));
        let with_timeout = rmp_serde::to_vec(&req).expect("encode");
        assert_eq!(single_room(&with_timeout).as_deref(), Some("r1"));
        // Several rooms or none (everyone): no single shard.
        assert_eq!(single_room(&encoded(&["a", "b"], false)), None);
        assert_eq!(single_room(&encoded(&[], false)), None);
        let empty = RequestOut::new_empty(Uid::new(), RequestTypeOut::AllRooms);
        assert_eq!(
            single_room(&rmp_serde::to_vec(&empty).expect("encode")),
            None
        );
        // Garbage is no room.
        for bad in [&b""[..], b"\xc1", b"\x93\x01\x02", &one[..one.len() / 2]] {
            assert_eq!(single_room(bad), None);
        }
    }
}
