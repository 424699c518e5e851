//! [`RedisHistory`]: room history across instances. A message is numbered, kept (a stream per
//! room) and published on one channel by one script, so every instance receives the offsets
//! in the same order. Each instance delivers a room's messages to its own sockets from that
//! channel, in offset order (a gap, from a message the subscriber dropped, is filled from the
//! stream), remembering the last offset it delivered: a catch-up on this instance reads the
//! stream up to that offset and joins the socket under the same per-room lock, so the next
//! message reaches the socket live, once.
//!
//! With `REALTIME_HISTORY_PERSIST`, each message is also written to the database before it is
//! acknowledged, and a room Redis has no history of (Redis restarted without persistence) is
//! seeded from the database before anything else: a new epoch whose offsets continue after
//! the last message the database holds, remembering the epoch it continues. A position of
//! that epoch up to the database's last message is recovered from the seeded messages; one
//! past it (a message delivered, then lost with Redis before the database had it) is not,
//! since its offset will be given to another message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio_util::sync::CancellationToken;

use super::{Catchup, History, Page, Position, Settings, Unavailable};
use crate::cluster::driver::PubSubDriver;
use crate::cluster::{RedisConn, de_list, lua, now_ms};
use crate::fanout::Fanout;
use crate::store::Store;

/// Messages waiting in the subscriber's buffer.
const BUFFER: usize = 16_384;
/// How often the rooms this instance delivers are checked against the stream.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Most messages one check delivers per room.
const RECONCILE_BATCH: usize = 1000;

/// Settings that keep every entry the stream still has (for filling gaps).
fn unbounded() -> Settings {
    Settings {
        size: usize::MAX,
        ttl: std::time::Duration::from_secs(u32::MAX.into()),
    }
}

/// What this instance delivered of a room.
#[derive(Debug, Clone)]
struct Delivered {
    epoch: String,
    last: u64,
}

#[derive(Deserialize)]
struct Published {
    #[serde(default)]
    o: u64,
    #[serde(default)]
    e: String,
    /// The room has no history in Redis and must be seeded from the database.
    #[serde(default)]
    missing: bool,
}

#[derive(Deserialize)]
struct Range {
    #[serde(default)]
    e: String,
    #[serde(default)]
    l: u64,
    /// The offset the epoch started after.
    #[serde(default)]
    b: u64,
    /// The epoch this one continues, and its last offset the database held.
    #[serde(default)]
    pe: Option<String>,
    #[serde(default)]
    pl: u64,
    #[serde(default)]
    missing: bool,
    #[serde(default, deserialize_with = "de_list")]
    list: Vec<(u64, String)>,
}

#[derive(Deserialize)]
struct Incoming {
    r: String,
    o: u64,
    e: String,
    /// The offset the epoch started after.
    #[serde(default)]
    b: u64,
    m: Value,
}

/// Histories in Redis.
pub struct RedisHistory {
    redis: Arc<RedisConn>,
    fanout: Arc<dyn Fanout>,
    rooms: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Delivered>>>>>,
    /// With `REALTIME_HISTORY_PERSIST`: messages are written here too, and rooms Redis lost
    /// are seeded from here.
    persist: Option<Store>,
}

fn unavailable() -> Unavailable {
    Unavailable("redis did not answer".into())
}

/// A new history generation's id.
fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// The message as clients get it: with its position.
fn positioned(mut m: Value, offset: u64, epoch: &str) -> Value {
    m["offset"] = json!(offset);
    m["epoch"] = json!(epoch);
    m
}

impl RedisHistory {
    /// Histories over the cluster's connection, delivering through `fanout`'s local sockets;
    /// kept in the database `persist` too.
    pub fn new(
        redis: Arc<RedisConn>,
        fanout: Arc<dyn Fanout>,
        persist: Option<Store>,
    ) -> RedisHistory {
        RedisHistory {
            redis,
            fanout,
            rooms: Mutex::new(HashMap::new()),
            persist,
        }
    }

    fn persisted(&self) -> &'static str {
        if self.persist.is_some() { "1" } else { "0" }
    }

    /// Seeds a room Redis has no history of from the database (see the module's text); does
    /// nothing when another instance did it first.
    async fn seed(&self, room: &str, settings: Settings) -> Result<(), Unavailable> {
        let Some(store) = &self.persist else {
            return Ok(());
        };
        let kept = super::read_kept(store, room, settings).await?;
        let mut args: Vec<String> = vec![room.to_string(), new_epoch()];
        match kept {
            Some(kept) => {
                // Only the unbroken run that ends at the last message: a position before a
                // message the database never got cannot be recovered.
                let mut run = Vec::new();
                let mut want = kept.last;
                for (o, m, at) in kept.entries.into_iter().rev() {
                    if o != want || want == 0 {
                        break;
                    }
                    run.push((o, m, at));
                    want -= 1;
                }
                run.reverse();
                args.push(kept.last.to_string());
                args.push(kept.epoch);
                args.push(settings.ttl.as_millis().to_string());
                for (o, m, at) in run {
                    args.push(o.to_string());
                    args.push(serde_json::to_string(&m).map_err(|e| Unavailable(e.to_string()))?);
                    args.push(at.timestamp_millis().to_string());
                }
            }
            None => {
                args.extend(["0".into(), String::new(), "0".into()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (at, keys) = self.keys(room);
        self.redis
            .script_at::<Value>(&at, &[&keys[0], &keys[1]], &lua::HISTORY_SEED, &args)
            .await
            .ok_or_else(unavailable)?;
        Ok(())
    }

    /// [`Self::range`], seeding the room first when Redis has no history of it.
    async fn range_seeded(
        &self,
        room: &str,
        first: &str,
        last: &str,
        settings: Settings,
        count: usize,
        newest_first: bool,
    ) -> Result<(Range, Vec<(u64, Value)>), Unavailable> {
        let answer = self
            .range(room, first, last, settings, count, newest_first)
            .await?;
        if !answer.0.missing {
            return Ok(answer);
        }
        self.seed(room, settings).await?;
        let answer = self
            .range(room, first, last, settings, count, newest_first)
            .await?;
        if answer.0.missing {
            return Err(Unavailable("the room's history could not be seeded".into()));
        }
        Ok(answer)
    }

    /// A publish that failed while Redis was up (a slot moving, a failover, a slow moment) may
    /// have landed: looks for the message among the room's newest entries, else publishes it
    /// again; twice at most, 100 and 200 ms later. A passing disruption then neither sends the
    /// message without a position (out of order with the numbered ones) nor numbers it twice.
    async fn settle(
        &self,
        room: &str,
        at: &str,
        keys: &[&str],
        args: &[&str],
        id: &str,
    ) -> Option<Published> {
        for wait in [100, 200] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let now = now_ms().to_string();
            let fresh = new_epoch();
            let newest: Option<Range> = self
                .redis
                .script_at_ungated(
                    at,
                    keys,
                    &lua::HISTORY_RANGE,
                    &[
                        room,
                        "-",
                        "+",
                        &now,
                        &i64::MAX.to_string(),
                        "50",
                        "1",
                        &fresh,
                        self.persisted(),
                    ],
                )
                .await;
            // Not answered: whether it landed is unknown, so it is not published again.
            let Some(newest) = newest else { continue };
            self.redis.back_up();
            let landed = newest.list.iter().find(|(_, m)| {
                serde_json::from_str::<Value>(m)
                    .is_ok_and(|m| m.get("messageId").and_then(Value::as_str) == Some(id))
            });
            if let Some((o, _)) = landed {
                return Some(Published {
                    o: *o,
                    e: newest.e,
                    missing: false,
                });
            }
            if let Some(p) = self
                .redis
                .script_at_ungated::<Published>(at, keys, &lua::HISTORY_PUBLISH, args)
                .await
            {
                return Some(p);
            }
        }
        None
    }

    /// The prefix of a room's keys and the keys its scripts use (meta, log).
    fn keys(&self, room: &str) -> (String, [String; 2]) {
        let at = self.redis.room_prefix(room);
        let keys = [
            format!("{at}:hist:{room}:meta"),
            format!("{at}:hist:{room}:log"),
        ];
        (at, keys)
    }

    fn channel(&self) -> String {
        self.redis.channel(crate::cluster::HISTORY_CHANNEL)
    }

    fn room(&self, room: &str) -> Arc<tokio::sync::Mutex<Option<Delivered>>> {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room.to_string())
            .or_default()
            .clone()
    }

    /// Entries of `room` between two stream ids (inclusive), within the TTL.
    async fn range(
        &self,
        room: &str,
        first: &str,
        last: &str,
        settings: Settings,
        count: usize,
        newest_first: bool,
    ) -> Result<(Range, Vec<(u64, Value)>), Unavailable> {
        let now = now_ms().to_string();
        let ttl = settings.ttl.as_millis().to_string();
        let count = count.to_string();
        let rev = if newest_first { "1" } else { "0" };
        let fresh = new_epoch();
        let (at, keys) = self.keys(room);
        let r: Range = self
            .redis
            .script_at(
                &at,
                &[&keys[0], &keys[1]],
                &lua::HISTORY_RANGE,
                &[
                    room,
                    first,
                    last,
                    &now,
                    &ttl,
                    &count,
                    rev,
                    &fresh,
                    self.persisted(),
                ],
            )
            .await
            .ok_or_else(unavailable)?;
        let epoch = r.e.clone();
        let mut list: Vec<(u64, Value)> = r
            .list
            .iter()
            .filter_map(|(o, m)| {
                serde_json::from_str(m)
                    .ok()
                    .map(|m| (*o, positioned(m, *o, &epoch)))
            })
            .collect();
        if newest_first {
            list.reverse();
        }
        Ok((r, list))
    }

    /// Subscribes to the channel (before the server takes clients: the subscription is made
    /// with the connection's first subscriptions).
    pub async fn subscribe(&self, driver: &PubSubDriver) -> Option<MessageStream<ChanItem>> {
        match driver.subscribe(self.channel(), BUFFER).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "room history: could not subscribe");
                None
            }
        }
    }

    /// Delivers what the channel brings, in each room's offset order, until `stop`; every
    /// second, the rooms with sockets here are checked against the stream, so a message
    /// published while the subscriber was reconnecting is delivered without waiting for the
    /// next one.
    pub async fn serve(
        self: Arc<Self>,
        messages: MessageStream<ChanItem>,
        stop: CancellationToken,
    ) {
        let mut messages = std::pin::pin!(messages.take_until(stop.cancelled()));
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some((_, bytes)) => match serde_json::from_slice::<Incoming>(&bytes) {
                        Ok(m) => self.deliver(m).await,
                        Err(e) => tracing::debug!(error = %e, "unreadable history message"),
                    },
                    None => return,
                },
                _ = tick.tick() => self.reconcile().await,
            }
        }
    }

    /// Delivers what the stream holds past what this instance delivered, room by room.
    async fn reconcile(&self) {
        let rooms: Vec<(String, Arc<tokio::sync::Mutex<Option<Delivered>>>)> = self
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, s)| (r.clone(), s.clone()))
            .collect();
        for (room, slot) in rooms {
            if !self.fanout.has_local(&room) {
                continue;
            }
            let mut delivered = slot.lock().await;
            let Some(state) = delivered.as_mut() else {
                continue;
            };
            let first = format!("{}-1", state.last + 1);
            let Ok((r, list)) = self
                .range(&room, &first, "+", unbounded(), RECONCILE_BATCH, false)
                .await
            else {
                return;
            };
            if r.e != state.epoch {
                // A new generation: its messages come with the next publication.
                continue;
            }
            for (o, msg) in list {
                if o == state.last + 1 {
                    self.fanout.room_local(&room, "message:new", &msg).await;
                    state.last = o;
                }
            }
        }
    }

    async fn deliver(&self, m: Incoming) {
        let slot = self.room(&m.r);
        let mut delivered = slot.lock().await;
        let state = delivered.get_or_insert_with(|| Delivered {
            epoch: m.e.clone(),
            last: m.o.saturating_sub(1),
        });
        if state.epoch != m.e {
            // The history was lost and started again: deliver the new generation from its
            // start.
            *state = Delivered {
                epoch: m.e.clone(),
                last: m.b,
            };
        }
        if m.o <= state.last {
            return;
        }
        if m.o > state.last + 1 {
            // A gap (the subscriber dropped messages): fill it from the stream.
            let first = format!("{}-1", state.last + 1);
            let last = format!("{}-1", m.o - 1);
            let missing = (m.o - state.last - 1) as usize;
            match self
                .range(&m.r, &first, &last, unbounded(), missing, false)
                .await
            {
                Ok((_, list)) => {
                    for (o, msg) in list {
                        self.fanout.room_local(&m.r, "message:new", &msg).await;
                        state.last = o;
                    }
                }
                Err(e) => tracing::warn!(room = %m.r, error = %e, "history gap not filled"),
            }
        }
        let msg = positioned(m.m, m.o, &m.e);
        self.fanout.room_local(&m.r, "message:new", &msg).await;
        state.last = m.o;
    }
}

#[async_trait]
impl History for RedisHistory {
    async fn publish(
        &self,
        room: &str,
        settings: Settings,
        message: Value,
    ) -> Result<Position, Unavailable> {
        let json = serde_json::to_string(&message).map_err(|e| Unavailable(e.to_string()))?;
        let size = settings.size.to_string();
        let ttl = settings.ttl.as_millis().to_string();
        let now = now_ms().to_string();
        let fresh = new_epoch();
        // With sharded pub/sub the room's shard channel, in the slot of the room's keys.
        let channel = self.redis.room_channel(&self.channel(), room);
        let publish = if self.redis.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let args = [
            room,
            &json,
            &size,
            &ttl,
            &now,
            &fresh,
            &channel,
            self.persisted(),
            publish,
        ];
        let (at, keys) = self.keys(room);
        let keys = [keys[0].as_str(), keys[1].as_str()];
        // Up, or down only since a call failed a moment ago (the first message of an outage,
        // or a slot moving): worth settling before falling back.
        let was_up = self.redis.up() || self.redis.briefly_down();
        let first = self
            .redis
            .script_at(&at, &keys, &lua::HISTORY_PUBLISH, &args)
            .await;
        let id = message.get("messageId").and_then(Value::as_str);
        let mut p: Published = match (first, id) {
            (Some(p), _) => p,
            (None, Some(id)) if was_up => self
                .settle(room, &at, &keys, &args, id)
                .await
                .ok_or_else(unavailable)?,
            (None, _) => return Err(unavailable()),
        };
        if p.missing {
            self.seed(room, settings).await?;
            p = self
                .redis
                .script_at(&at, &keys, &lua::HISTORY_PUBLISH, &args)
                .await
                .ok_or_else(unavailable)?;
            if p.missing {
                return Err(Unavailable("the room's history could not be seeded".into()));
            }
        }
        if let Some(store) = &self.persist {
            // Written before the acknowledgement: every acknowledged message is in the
            // database. The message is delivered already: a failure here is logged, and a
            // seed later leaves this message out (positions past a gap are not recovered).
            let position = Position {
                offset: p.o,
                epoch: p.e.clone(),
            };
            let message = positioned(message, p.o, &p.e);
            let written = super::write_kept(store, room, &position, message, settings).await;
            // At most a line a second while the database is down.
            static LOG: crate::util::Throttle = crate::util::Throttle::new();
            if let Err(error) = written
                && let Some(held_back) = LOG.pass()
            {
                tracing::warn!(%room, offset = p.o, %error, held_back, "history: message not persisted");
            }
        }
        Ok(Position {
            offset: p.o,
            epoch: p.e,
        })
    }

    async fn catch_up(
        &self,
        room: &str,
        settings: Settings,
        since: Option<&Position>,
        deliver: &mut (dyn for<'c> FnMut(&'c Catchup) + Send),
    ) -> Result<(Catchup, Position), Unavailable> {
        let slot = self.room(room);
        let mut delivered = slot.lock().await;
        // What this instance has delivered: the first socket here starts at the room's
        // current position (no socket here was in the room before it).
        let mut state = match delivered.as_ref() {
            Some(d) => d.clone(),
            None => {
                let (r, _) = self
                    .range_seeded(room, "+", "+", settings, 1, false)
                    .await?;
                let d = Delivered {
                    epoch: r.e,
                    last: r.l,
                };
                *delivered = Some(d.clone());
                d
            }
        };
        let mut since = since.cloned();
        // At the position this instance delivered: nothing missed, no need to ask Redis.
        if let Some(s) = since
            .as_mut()
            .filter(|s| s.epoch != state.epoch || s.offset != state.last)
        {
            // The room's epoch now: Redis may have lost the history since this instance last
            // delivered (a new epoch, possibly seeded from the database).
            let (r, _) = self
                .range_seeded(room, "+", "+", settings, 1, false)
                .await?;
            if r.e != state.epoch {
                // This instance has delivered nothing of the current epoch yet: it starts
                // where the epoch started, as its first publication would make it.
                state = Delivered {
                    epoch: r.e.clone(),
                    last: r.b,
                };
                *delivered = Some(state.clone());
            }
            // A position of the epoch the current one continues (seeded from the database)
            // is one of this epoch when the database held it.
            if s.epoch != r.e && r.pe.as_deref() == Some(s.epoch.as_str()) && s.offset <= r.pl {
                s.epoch = r.e;
            }
        }
        let current = Position {
            offset: state.last,
            epoch: state.epoch.clone(),
        };
        let found = match since.as_ref() {
            None => Catchup::NotAsked,
            Some(s) => match super::settled(&current, s) {
                Some(decided) => decided,
                None => {
                    let first = format!("{}-1", s.offset + 1);
                    let last = format!("{}-1", state.last);
                    let want = (state.last - s.offset) as usize;
                    let (r, list) = self
                        .range_seeded(room, &first, &last, settings, want, false)
                        .await?;
                    if r.e == state.epoch
                        && list.first().map(|(o, _)| *o) == Some(s.offset + 1)
                        && list.len() == want
                    {
                        Catchup::Recovered(list.into_iter().map(|(_, m)| m).collect())
                    } else {
                        Catchup::Lost
                    }
                }
            },
        };
        deliver(&found);
        Ok((found, current))
    }

    async fn page(
        &self,
        room: &str,
        settings: Settings,
        page: Page,
        limit: usize,
    ) -> Result<(Vec<Value>, Position), Unavailable> {
        let (r, list) = match page {
            Page::Newest => {
                self.range_seeded(room, "-", "+", settings, limit, true)
                    .await?
            }
            Page::Before(b) if b <= 1 => {
                let (r, _) = self.range_seeded(room, "+", "+", settings, 1, true).await?;
                (r, Vec::new())
            }
            Page::Before(b) => {
                let last = format!("{}-1", b - 1);
                self.range_seeded(room, "-", &last, settings, limit, true)
                    .await?
            }
            Page::After(a) => {
                let first = format!("{}-1", a + 1);
                self.range_seeded(room, &first, "+", settings, limit, false)
                    .await?
            }
        };
        let position = Position {
            offset: r.l,
            epoch: r.e,
        };
        Ok((list.into_iter().map(|(_, m)| m).collect(), position))
    }
}
