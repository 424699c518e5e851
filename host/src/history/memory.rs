//! [`MemoryHistory`]: the history of one instance, in memory. A room's log sits behind its own
//! async lock, held while a message is numbered, kept and handed to the room's sockets, and
//! while a catch-up reads and joins: the lock is the room's order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Catchup, History, Page, Position, Settings, Unavailable};
use crate::fanout::Fanout;
use crate::store::Store;

struct Log {
    /// Read from the database (or not to be): history persistence loads a room once.
    loaded: bool,
    epoch: String,
    /// Offset of the last message numbered (0: none yet).
    last: u64,
    /// (offset, kept at, message), oldest first.
    entries: VecDeque<(u64, Instant, Value)>,
}

impl Log {
    fn new() -> Log {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Log {
            loaded: false,
            epoch: id[..12].to_string(),
            last: 0,
            entries: VecDeque::new(),
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.last,
            epoch: self.epoch.clone(),
        }
    }

    /// Drops what is past the size or older than the TTL.
    fn trim(&mut self, settings: Settings) {
        while self.entries.len() > settings.size {
            self.entries.pop_front();
        }
        while self
            .entries
            .front()
            .is_some_and(|(_, at, _)| at.elapsed() > settings.ttl)
        {
            self.entries.pop_front();
        }
    }
}

/// Histories of one instance.
pub struct MemoryHistory {
    rooms: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Log>>>>,
    fanout: Arc<dyn Fanout>,
    /// With `REALTIME_HISTORY_PERSIST`: each message is also written to the database before
    /// it is delivered, and a room's history is read back the first time it is used.
    persist: Option<Store>,
}

impl MemoryHistory {
    /// Histories that deliver through `fanout`; kept in the database `persist` too.
    pub fn new(fanout: Arc<dyn Fanout>, persist: Option<Store>) -> MemoryHistory {
        MemoryHistory {
            rooms: Mutex::new(HashMap::new()),
            fanout,
            persist,
        }
    }

    /// The room's log, locked; read from the database at its first use when persisted.
    async fn log(
        &self,
        room: &str,
        settings: Settings,
    ) -> Result<tokio::sync::OwnedMutexGuard<Log>, Unavailable> {
        let slot = self
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Log::new())))
            .clone();
        let mut log = slot.lock_owned().await;
        if !log.loaded {
            if let Some(store) = &self.persist
                && let Some(kept) = super::read_kept(store, room, settings).await?
            {
                // Positions continue where the kept history ends.
                log.epoch = kept.epoch;
                log.last = kept.last;
                let now = chrono::Utc::now();
                log.entries = kept
                    .entries
                    .into_iter()
                    .map(|(o, m, at)| {
                        let age = (now - at).to_std().unwrap_or_default();
                        let kept_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                        (o, kept_at, m)
                    })
                    .collect();
            }
            log.loaded = true;
        }
        Ok(log)
    }
}

/// The messages after `since` in `log`, or why not.
pub(super) fn after(
    entries: impl Iterator<Item = (u64, Value)>,
    oldest: Option<u64>,
    current: &Position,
    since: &Position,
) -> Catchup {
    if let Some(decided) = super::settled(current, since) {
        return decided;
    }
    // The first missed message must still be kept.
    match oldest {
        Some(first) if first <= since.offset + 1 => Catchup::Recovered(
            entries
                .filter(|(o, _)| *o > since.offset)
                .map(|(_, m)| m)
                .collect(),
        ),
        _ => Catchup::Lost,
    }
}

/// One page of `entries` (oldest first).
pub(super) fn page_of(entries: Vec<(u64, Value)>, page: Page, limit: usize) -> Vec<Value> {
    let picked: Vec<Value> = match page {
        Page::Newest => {
            let skip = entries.len().saturating_sub(limit);
            entries.into_iter().skip(skip).map(|(_, m)| m).collect()
        }
        Page::Before(b) => {
            let older: Vec<(u64, Value)> = entries.into_iter().filter(|(o, _)| *o < b).collect();
            let skip = older.len().saturating_sub(limit);
            older.into_iter().skip(skip).map(|(_, m)| m).collect()
        }
        Page::After(a) => entries
            .into_iter()
            .filter(|(o, _)| *o > a)
            .take(limit)
            .map(|(_, m)| m)
            .collect(),
    };
    picked
}

#[async_trait]
impl History for MemoryHistory {
    async fn publish(
        &self,
        room: &str,
        settings: Settings,
        mut message: Value,
    ) -> Result<Position, Unavailable> {
        let mut log = self.log(room, settings).await?;
        let position = Position {
            offset: log.last + 1,
            epoch: log.epoch.clone(),
        };
        message["offset"] = json!(position.offset);
        message["epoch"] = json!(position.epoch);
        if let Some(store) = &self.persist {
            // Written before the message is numbered for good, delivered or acknowledged: a
            // crash right after cannot make a restarted server hand the same offset to another
            // message (a client holding it would skip that one). Write-behind would.
            super::write_kept(store, room, &position, message.clone(), settings).await?;
        }
        log.last = position.offset;
        log.entries
            .push_back((position.offset, Instant::now(), message.clone()));
        log.trim(settings);
        // Under the lock: the room's sockets get the messages in offset order.
        self.fanout.room(room, None, "message:new", &message).await;
        Ok(position)
    }

    async fn catch_up(
        &self,
        room: &str,
        settings: Settings,
        since: Option<&Position>,
        deliver: &mut (dyn for<'c> FnMut(&'c Catchup) + Send),
    ) -> Result<(Catchup, Position), Unavailable> {
        let mut log = self.log(room, settings).await?;
        log.trim(settings);
        let current = log.position();
        let found = match since {
            None => Catchup::NotAsked,
            Some(since) => after(
                log.entries.iter().map(|(o, _, m)| (*o, m.clone())),
                log.entries.front().map(|(o, _, _)| *o),
                &current,
                since,
            ),
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
        let mut log = self.log(room, settings).await?;
        log.trim(settings);
        let entries = log
            .entries
            .iter()
            .map(|(o, _, m)| (*o, m.clone()))
            .collect();
        Ok((page_of(entries, page, limit), log.position()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Value)> {
        range.map(|o| (o, json!(o))).collect()
    }

    #[test]
    fn catch_up_finds_exactly_the_missed_messages() {
        let current = pos(10, "e");
        let e = || entries(4..=10).into_iter();
        assert_eq!(
            after(e(), Some(4), &current, &pos(7, "e")),
            Catchup::Recovered(vec![json!(8), json!(9), json!(10)])
        );
        assert_eq!(
            after(e(), Some(4), &current, &pos(10, "e")),
            Catchup::Recovered(vec![])
        );
        // The first missed one (4) is still kept: recovered; 3 is gone: lost.
        assert!(
            matches!(after(e(), Some(4), &current, &pos(3, "e")), Catchup::Recovered(v) if v.len() == 7)
        );
        assert_eq!(after(e(), Some(4), &current, &pos(2, "e")), Catchup::Lost);
        assert_eq!(
            after(e(), Some(4), &current, &pos(7, "other")),
            Catchup::Lost
        );
        assert_eq!(after(e(), Some(4), &current, &pos(11, "e")), Catchup::Lost);
        assert_eq!(
            after(std::iter::empty(), None, &pos(0, "e"), &pos(0, "e")),
            Catchup::Recovered(vec![])
        );
    }

    #[test]
    fn pages() {
        let e = || entries(1..=10);
        assert_eq!(
            page_of(e(), Page::Newest, 3),
            vec![json!(8), json!(9), json!(10)]
        );
        assert_eq!(
            page_of(e(), Page::Before(8), 3),
            vec![json!(5), json!(6), json!(7)]
        );
        assert_eq!(page_of(e(), Page::Before(2), 3), vec![json!(1)]);
        assert_eq!(page_of(e(), Page::After(8), 3), vec![json!(9), json!(10)]);
        assert_eq!(page_of(e(), Page::After(0), 2), vec![json!(1), json!(2)]);
    }
}
