//! [`Directory`]: the rooms and memberships the event path reads, cached in memory.
//!
//! - `room:join` and `room:leave` read through to the database when it answers within a short
//!   timeout (they decide membership, so they want the current row), and fall back to the
//!   cached row when it does not: the server keeps serving what it has seen.
//! - `message:send` and `typing:*` never wait on the database: they take the cached row
//!   ([`Directory::room_now`], [`Directory::member_now`]); a row older than the TTL is
//!   served once more and refreshed in the background.
//! - Invalidation: PostgreSQL announces every change of rooms and memberships (triggers and
//!   `NOTIFY`, see [`super::Backend::watch`]), whoever made it (another node, the CLI, plain
//!   SQL); the announced rows are refreshed at once. Without such a feed (SQLite) the TTL
//!   bounds staleness.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use super::{Change, Member, Room, Store, StoreError};

/// Entries kept before stale ones are dropped.
const MAX_ENTRIES: usize = 200_000;

struct Slot<T> {
    value: T,
    loaded: Instant,
    refreshing: bool,
}

impl<T> Slot<T> {
    fn new(value: T) -> Slot<T> {
        Slot {
            value,
            loaded: Instant::now(),
            refreshing: false,
        }
    }
}

type Members = HashMap<String, HashMap<String, Slot<Option<Arc<Member>>>>>;

/// The cache. Shared as `Arc<Directory>`.
pub struct Directory {
    store: Store,
    ttl: Duration,
    read_timeout: Duration,
    me: Weak<Directory>,
    rooms: RwLock<HashMap<String, Slot<Option<Arc<Room>>>>>,
    members: RwLock<Members>,
    counts: RwLock<HashMap<String, i64>>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Directory {
    /// A cache over `store`; rows older than `ttl` are refreshed in the background; a
    /// read-through waits at most `read_timeout` for the database.
    pub fn new(store: Store, ttl: Duration, read_timeout: Duration) -> Arc<Directory> {
        Arc::new_cyclic(|me| Directory {
            store,
            ttl,
            read_timeout,
            me: me.clone(),
            rooms: RwLock::default(),
            members: RwLock::default(),
            counts: RwLock::default(),
        })
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.read_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }

    /// The room of this name: from the database when it answers, else the cached row. Err
    /// when the database fails and nothing is cached.
    pub async fn room(&self, name: &str) -> Result<Option<Arc<Room>>, StoreError> {
        match self.bounded(self.store.room(name)).await {
            Ok(room) => {
                let room = room.map(Arc::new);
                self.put_room(name, room.clone());
                Ok(room)
            }
            Err(e) => match read(&self.rooms).get(name) {
                Some(slot) => {
                    tracing::debug!(error = %e, room = name, "database unavailable: cached room");
                    Ok(slot.value.clone())
                }
                None => Err(e),
            },
        }
    }

    /// A membership: from the database when it answers, else the cached row.
    pub async fn member(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<Arc<Member>>, StoreError> {
        match self.bounded(self.store.member(room_id, user_id)).await {
            Ok(m) => {
                let m = m.map(Arc::new);
                self.put_member(room_id, user_id, m.clone());
                Ok(m)
            }
            Err(e) => match read(&self.members)
                .get(room_id)
                .and_then(|r| r.get(user_id))
            {
                Some(slot) => Ok(slot.value.clone()),
                None => Err(e),
            },
        }
    }

    /// Persistent members of a room: from the database when it answers, else the last count
    /// seen (adjusted by the joins and leaves served from the cache).
    pub async fn member_count(&self, room_id: &str) -> Result<i64, StoreError> {
        match self.bounded(self.store.member_count(room_id)).await {
            Ok(n) => {
                write(&self.counts).insert(room_id.to_string(), n);
                Ok(n)
            }
            Err(e) => {
                if let Some(n) = read(&self.counts).get(room_id) {
                    return Ok(*n);
                }
                // Never counted: the members this cache knows of.
                match read(&self.members).get(room_id) {
                    Some(r) => Ok(r.values().filter(|s| s.value.is_some()).count() as i64),
                    None => Err(e),
                }
            }
        }
    }

    /// A join written to the database: the new count and the membership row.
    pub async fn join(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<(i64, Option<Arc<Member>>), StoreError> {
        let n = self.bounded(self.store.join(room_id, user_id)).await?;
        write(&self.counts).insert(room_id.to_string(), n);
        let m = self.member(room_id, user_id).await?;
        Ok((n, m))
    }

    /// A join that could not be written now (it is queued): the cache shows the membership
    /// the write will create. Returns the count the room will have.
    pub fn join_offline(&self, room_id: &str, user_id: &str) -> (i64, Option<Arc<Member>>) {
        let existing = read(&self.members)
            .get(room_id)
            .and_then(|r| r.get(user_id))
            .and_then(|s| s.value.clone());
        let was_member = existing.is_some();
        let member = existing.unwrap_or_else(|| {
            Arc::new(Member {
                user_id: user_id.to_string(),
                role: "member".into(),
                is_muted: false,
                is_banned: false,
            })
        });
        self.put_member(room_id, user_id, Some(member.clone()));
        let mut counts = write(&self.counts);
        let n = counts.entry(room_id.to_string()).or_insert(0);
        if !was_member {
            *n += 1;
        }
        (*n, Some(member))
    }

    /// A membership deleted (now or queued).
    pub fn left(&self, room_id: &str, user_id: &str) {
        let was_member = read(&self.members)
            .get(room_id)
            .and_then(|r| r.get(user_id))
            .is_some_and(|s| s.value.is_some());
        self.put_member(room_id, user_id, None);
        if was_member && let Some(n) = write(&self.counts).get_mut(room_id) {
            *n = (*n - 1).max(0);
        }
    }

    /// The cached room, without waiting; a stale row is refreshed in the background. None when
    /// nothing is cached for this name.
    pub fn room_now(&self, name: &str) -> Option<Option<Arc<Room>>> {
        let (value, stale) = {
            let rooms = read(&self.rooms);
            let slot = rooms.get(name)?;
            (
                slot.value.clone(),
                slot.loaded.elapsed() >= self.ttl && !slot.refreshing,
            )
        };
        if stale {
            self.refresh_room(name);
        }
        Some(value)
    }

    /// The cached membership, without waiting; a stale row is refreshed in the background.
    /// None when nothing is cached for this pair.
    pub fn member_now(&self, room_id: &str, user_id: &str) -> Option<Option<Arc<Member>>> {
        let (value, stale) = {
            let members = read(&self.members);
            let slot = members.get(room_id)?.get(user_id)?;
            (
                slot.value.clone(),
                slot.loaded.elapsed() >= self.ttl && !slot.refreshing,
            )
        };
        if stale {
            self.refresh_member(room_id, user_id);
        }
        Some(value)
    }

    /// Applies a change announced by the database.
    pub fn apply(&self, change: Change) {
        match change {
            Change::Room(name) => {
                if read(&self.rooms).contains_key(&name) {
                    self.refresh_room(&name);
                }
            }
            Change::Member { room_id, user_id } => {
                let cached = read(&self.members)
                    .get(&room_id)
                    .is_some_and(|r| r.contains_key(&user_id));
                if cached {
                    self.refresh_member(&room_id, &user_id);
                }
            }
            Change::All => {
                // Everything is stale: served until refreshed, refreshed when next read.
                let long_ago = Instant::now()
                    .checked_sub(self.ttl)
                    .unwrap_or_else(Instant::now);
                for slot in write(&self.rooms).values_mut() {
                    slot.loaded = long_ago;
                }
                for room in write(&self.members).values_mut() {
                    for slot in room.values_mut() {
                        slot.loaded = long_ago;
                    }
                }
            }
        }
    }

    fn put_room(&self, name: &str, room: Option<Arc<Room>>) {
        let mut rooms = write(&self.rooms);
        if rooms.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            rooms.retain(|_, s| s.loaded.elapsed() < ttl);
        }
        rooms.insert(name.to_string(), Slot::new(room));
    }

    fn put_member(&self, room_id: &str, user_id: &str, member: Option<Arc<Member>>) {
        let mut members = write(&self.members);
        let total: usize = members.values().map(HashMap::len).sum::<usize>();
        if total >= MAX_ENTRIES {
            let ttl = self.ttl;
            for room in members.values_mut() {
                room.retain(|_, s| s.loaded.elapsed() < ttl);
            }
            members.retain(|_, r| !r.is_empty());
        }
        members
            .entry(room_id.to_string())
            .or_default()
            .insert(user_id.to_string(), Slot::new(member));
    }

    fn refresh_room(&self, name: &str) {
        let Some(me) = self.me.upgrade() else { return };
        if let Some(slot) = write(&self.rooms).get_mut(name) {
            slot.refreshing = true;
        }
        let name = name.to_string();
        tokio::spawn(async move {
            match me.bounded(me.store.room(&name)).await {
                Ok(room) => me.put_room(&name, room.map(Arc::new)),
                Err(_) => {
                    // Keep serving the old row; try again after another TTL.
                    if let Some(slot) = write(&me.rooms).get_mut(&name) {
                        slot.refreshing = false;
                        slot.loaded = Instant::now();
                    }
                }
            }
        });
    }

    fn refresh_member(&self, room_id: &str, user_id: &str) {
        let Some(me) = self.me.upgrade() else { return };
        if let Some(slot) = write(&self.members)
            .get_mut(room_id)
            .and_then(|r| r.get_mut(user_id))
        {
            slot.refreshing = true;
        }
        let (room_id, user_id) = (room_id.to_string(), user_id.to_string());
        tokio::spawn(async move {
            match me.bounded(me.store.member(&room_id, &user_id)).await {
                Ok(m) => me.put_member(&room_id, &user_id, m.map(Arc::new)),
                Err(_) => {
                    if let Some(slot) = write(&me.members)
                        .get_mut(&room_id)
                        .and_then(|r| r.get_mut(&user_id))
                    {
                        slot.refreshing = false;
                        slot.loaded = Instant::now();
                    }
                }
            }
        });
    }
}
