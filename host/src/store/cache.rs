//! [`Directory`]: rooms, memberships and member counts as the event path reads them, in
//! memory, so that a join, a send or a leave makes no database round trip in the common case.
//!
//! - **Rooms** are read in bulk at start. A name not known is read through once (concurrent
//!   lookups of one name share the read) and then remembered as missing.
//! - **Memberships** are kept per user: loaded when the user connects, many users a query (a
//!   herd of reconnecting clients costs a few queries, not three per join), kept while the user
//!   has a socket here and for a while after.
//! - **Member counts** are read in bulk at start, moved at once by this server's joins and
//!   leaves (whose rows are written behind by the group-commit writer) and by the changes
//!   others make as the database announces them.
//! - **Freshness**: the change feed (PostgreSQL `NOTIFY`, the SQLite change table) carries
//!   every change of rooms and memberships with its row, whoever made it (another instance,
//!   the CLI, plain SQL); the changes this server's writer made itself carry its node id and
//!   are already applied. A lost feed reloads rooms and counts and marks memberships stale.
//!
//! Counts stay exact under concurrency: a count is `committed` (the database's count as the
//! feed reports it) plus this server's own changes not yet seen on the feed. A bulk count
//! carries a [`Watermark`], so a change it already includes is not added twice.
//!
//! Locks are std mutexes around plain maps, never held across an `.await`; when two are
//! needed, `users` is taken before `counts`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::writer::WriteListener;
use super::{Change, Member, MemberOp, Position, Role, Room, Store, Watermark, WriteOp};

/// Users whose memberships one query loads at most.
const LOAD_BATCH: usize = 500;
/// Users waiting for their memberships to be loaded, at most.
const LOAD_QUEUE: usize = 65_536;
/// Names remembered as missing, at most (past it the list starts over).
const MAX_MISSING: usize = 10_000;
/// How long the memberships of a user without a socket here are kept.
const IDLE_USER: Duration = Duration::from_secs(60);
/// A committed change of ours whose announcement never came (the row existed already) stops
/// counting after this.
const UNANNOUNCED: Duration = Duration::from_secs(30);

/// The cache cannot answer and the database did not (in time): the client should retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the room directory is not available")]
pub struct Unavailable;

/// What [`Directory::join`] did.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The room's member count after the join.
    pub count: i64,
    /// The user's membership (None for an anonymous socket).
    pub member: Option<Arc<Member>>,
    /// Whether the membership is new (its row is to be inserted; else `last_seen` moves).
    pub created: bool,
}

/// Why [`Directory::join`] did not join.
#[derive(Debug)]
pub enum JoinError<E> {
    /// The rules refused it (the check's error).
    Refused(E),
    /// The user's memberships are not loaded.
    Unavailable,
}

type Read<T> = Shared<BoxFuture<'static, Result<T, Unavailable>>>;
/// A room read in flight, and whether a change came meanwhile (read again).
type RoomRead = (Read<Option<Arc<Room>>>, bool);
/// A user's load in flight, and the changes announced meanwhile (replayed on its result).
type UserLoad = (Read<()>, Vec<(String, Option<Arc<Member>>)>);

/// Rooms by name.
#[derive(Default)]
struct Rooms {
    by_name: HashMap<String, Arc<Room>>,
    /// Names read and not found, with when.
    missing: HashMap<String, Instant>,
    /// Reads in flight by name; `true` once another change came meanwhile (read again).
    reads: HashMap<String, RoomRead>,
    /// Names changed while a bulk read runs (read again after it).
    bulk: Option<HashSet<String>>,
}

/// One user's memberships.
struct UserEntry {
    /// By room id; None until loaded.
    rooms: Option<HashMap<String, Arc<Member>>>,
    /// The feed was lost since the load: served, and reloaded in the background.
    stale: bool,
    /// A load in flight, and the changes that arrived meanwhile (replayed on its result).
    load: Option<UserLoad>,
    /// Tells the waiters of the load in flight.
    done: Option<oneshot::Sender<bool>>,
    /// Sockets of this user on this server.
    sockets: u32,
    used: Instant,
}

impl UserEntry {
    fn new() -> UserEntry {
        UserEntry {
            rooms: None,
            stale: false,
            load: None,
            done: None,
            sockets: 0,
            used: Instant::now(),
        }
    }

    /// Sets (Some) or removes (None) a membership; remembered for the load in flight too.
    fn set(&mut self, room_id: &str, member: Option<Arc<Member>>) {
        if let Some((_, changes)) = &mut self.load {
            changes.push((room_id.to_string(), member.clone()));
        }
        if let Some(rooms) = &mut self.rooms {
            match member {
                Some(m) => rooms.insert(room_id.to_string(), m),
                None => rooms.remove(room_id),
            };
        }
    }
}

/// A change of ours: counted at once, until the feed announces it (or it is dropped).
struct Own {
    delta: i64,
    committed: Option<Instant>,
}

#[derive(Default)]
struct Counts {
    /// Members per room id as the database has them (bulk count + announced changes).
    committed: HashMap<String, i64>,
    /// Rooms with a muted or banned member (kept from the bulk count and the inserts and
    /// updates announced since; a sanction lifted stays here until the next bulk count).
    sanctioned: HashSet<String>,
    /// Our changes not announced yet, per (room id, user id), oldest first.
    own: HashMap<(String, String), VecDeque<Own>>,
    /// Their sum per room id.
    own_sum: HashMap<String, i64>,
    /// What the last bulk count included.
    watermark: Option<Watermark>,
    /// While a bulk count runs: the announced changes, to add again unless it includes them.
    recount: Option<Vec<(String, i64, Position)>>,
}

impl Counts {
    fn total(&self, room_id: &str) -> i64 {
        let c = self.committed.get(room_id).copied().unwrap_or(0);
        let o = self.own_sum.get(room_id).copied().unwrap_or(0);
        (c + o).max(0)
    }

    fn add_own(&mut self, room_id: &str, user_id: &str, delta: i64) {
        self.own
            .entry((room_id.to_string(), user_id.to_string()))
            .or_default()
            .push_back(Own {
                delta,
                committed: None,
            });
        *self.own_sum.entry(room_id.to_string()).or_default() += delta;
    }

    /// Forgets the oldest own change of this sign for the pair (announced or dropped).
    fn resolve_own(&mut self, room_id: &str, user_id: &str, delta: i64) {
        let key = (room_id.to_string(), user_id.to_string());
        let Some(queue) = self.own.get_mut(&key) else {
            return;
        };
        if let Some(i) = queue.iter().position(|o| o.delta == delta) {
            queue.remove(i);
            if let Some(sum) = self.own_sum.get_mut(room_id) {
                *sum -= delta;
            }
        }
        if queue.is_empty() {
            self.own.remove(&key);
        }
    }

    /// Drops own changes matching `gone` and recomputes the sums.
    fn retain_own(&mut self, keep: impl Fn(&Own) -> bool) {
        for queue in self.own.values_mut() {
            queue.retain(&keep);
        }
        self.own.retain(|_, q| !q.is_empty());
        self.own_sum.clear();
        for ((room, _), queue) in &self.own {
            *self.own_sum.entry(room.clone()).or_default() +=
                queue.iter().map(|o| o.delta).sum::<i64>();
        }
    }
}

/// The cache. Shared as `Arc<Directory>`.
pub struct Directory {
    store: Store,
    me: Weak<Directory>,
    /// This server's node id: the feed's changes with this origin are ours.
    origin: String,
    /// Longest an event waits for a read (a room read through, a user's memberships).
    wait: Duration,
    /// A name remembered as missing is read again after this.
    missing_ttl: Duration,
    rooms: Mutex<Rooms>,
    users: Mutex<HashMap<String, UserEntry>>,
    counts: Mutex<Counts>,
    loads: mpsc::Sender<String>,
    load_rx: Mutex<Option<mpsc::Receiver<String>>>,
    /// Rooms and counts were read in bulk at least once.
    loaded: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Directory {
    /// A cache over `store` for the server `origin` (its node id). An event waits at most
    /// `wait` for a read; a name found missing is read again after `missing_ttl`.
    pub fn new(
        store: Store,
        origin: &str,
        wait: Duration,
        missing_ttl: Duration,
    ) -> Arc<Directory> {
        store.set_origin(origin);
        let (loads, load_rx) = mpsc::channel(LOAD_QUEUE);
        Arc::new_cyclic(|me| Directory {
            store,
            me: me.clone(),
            origin: origin.to_string(),
            wait,
            missing_ttl,
            rooms: Mutex::default(),
            users: Mutex::default(),
            counts: Mutex::default(),
            loads,
            load_rx: Mutex::new(Some(load_rx)),
            loaded: AtomicBool::new(false),
        })
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether rooms and counts have been read in bulk (false while the database has not
    /// answered since start).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Reads every room and every room's member count.
    pub async fn load(&self) -> Result<(), super::StoreError> {
        self.load_rooms().await?;
        self.recount().await?;
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Runs until `stop`: the initial bulk read (retried until the database answers), the
    /// membership loader and the change feed.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let loader = self.clone().loader(stop.clone());
        let feed = {
            let me = self.clone();
            let stop = stop.clone();
            async move {
                let on_change = |c| me.apply(c);
                me.store.watch(&on_change, stop).await;
            }
        };
        let upkeep = {
            let me = self.clone();
            let stop = stop.clone();
            async move {
                let mut delay = Duration::from_millis(200);
                while !me.is_loaded() {
                    if let Err(e) = me.load().await {
                        tracing::debug!(error = %e, "room directory not loaded yet");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => me.sweep(),
                        _ = stop.cancelled() => return,
                    }
                }
            }
        };
        tokio::join!(loader, feed, upkeep);
    }

    // ---- rooms -------------------------------------------------------------------------

    /// The room of this name (active or not), or None when there is none. Read through when
    /// not cached; Err when the database did not answer in time.
    pub async fn room(&self, name: &str) -> Result<Option<Arc<Room>>, Unavailable> {
        let read = {
            let mut rooms = lock(&self.rooms);
            if let Some(r) = rooms.by_name.get(name) {
                return Ok(Some(r.clone()));
            }
            if rooms
                .missing
                .get(name)
                .is_some_and(|at| at.elapsed() < self.missing_ttl)
            {
                return Ok(None);
            }
            self.read_room(&mut rooms, name)
        };
        match tokio::time::timeout(self.wait, read).await {
            Ok(r) => r,
            Err(_) => Err(Unavailable),
        }
    }

    /// The cached room, without waiting: Some(None) when the name is known to be missing,
    /// None when nothing is cached for it.
    pub fn room_now(&self, name: &str) -> Option<Option<Arc<Room>>> {
        let rooms = lock(&self.rooms);
        match rooms.by_name.get(name) {
            Some(r) => Some(Some(r.clone())),
            None => rooms.missing.contains_key(name).then_some(None),
        }
    }

    /// Every room known, by name.
    pub fn rooms_now(&self) -> Vec<Arc<Room>> {
        let rooms = lock(&self.rooms);
        let mut list: Vec<Arc<Room>> = rooms.by_name.values().cloned().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Rooms known (all, and active ones).
    pub fn room_totals(&self) -> (usize, usize) {
        let rooms = lock(&self.rooms);
        let active = rooms.by_name.values().filter(|r| r.is_active).count();
        (rooms.by_name.len(), active)
    }

    /// The read of one room (shared by concurrent callers); a change announced while it runs
    /// makes it read again.
    fn read_room(&self, rooms: &mut Rooms, name: &str) -> Read<Option<Arc<Room>>> {
        if let Some((read, again)) = rooms.reads.get_mut(name) {
            *again = true;
            return read.clone();
        }
        let Some(me) = self.me.upgrade() else {
            return futures_util::future::ready(Err(Unavailable))
                .boxed()
                .shared();
        };
        let name = name.to_string();
        let task = tokio::spawn({
            let name = name.clone();
            async move {
                loop {
                    let result = tokio::time::timeout(me.wait, me.store.room(&name)).await;
                    let mut rooms = lock(&me.rooms);
                    let found = match result {
                        Ok(Ok(room)) => {
                            let room = room.map(Arc::new);
                            rooms.missing.remove(&name);
                            match &room {
                                Some(r) => rooms.by_name.insert(name.clone(), r.clone()),
                                None => {
                                    if rooms.missing.len() >= MAX_MISSING {
                                        rooms.missing.clear();
                                    }
                                    rooms.missing.insert(name.clone(), Instant::now());
                                    rooms.by_name.remove(&name)
                                }
                            };
                            if let Some(names) = &mut rooms.bulk {
                                names.insert(name.clone());
                            }
                            Ok(room)
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, room = %name, "room not read");
                            Err(Unavailable)
                        }
                        Err(_) => Err(Unavailable),
                    };
                    match rooms.reads.get_mut(&name) {
                        Some((_, again)) if *again => *again = false,
                        _ => {
                            rooms.reads.remove(&name);
                            return found;
                        }
                    }
                }
            }
        });
        let read = async move { task.await.unwrap_or(Err(Unavailable)) }
            .boxed()
            .shared();
        rooms.reads.insert(name, (read.clone(), false));
        read
    }

    /// Reads every room in bulk.
    async fn load_rooms(&self) -> Result<(), super::StoreError> {
        lock(&self.rooms).bulk = Some(HashSet::new());
        let result = self.store.rooms(false).await;
        let mut rooms = lock(&self.rooms);
        let changed = rooms.bulk.take().unwrap_or_default();
        let all = result?;
        rooms.by_name = all
            .into_iter()
            .map(|r| (r.name.clone(), Arc::new(r)))
            .collect();
        rooms.missing.clear();
        // Rows read one by one while the bulk read ran may be newer: read them again.
        for name in changed {
            drop(self.read_room(&mut rooms, &name));
        }
        Ok(())
    }

    // ---- memberships -------------------------------------------------------------------

    /// A socket of `user_id` connected: its memberships are loaded now (in the background),
    /// so that its joins find them, and kept while it has a socket here.
    pub fn user_connected(&self, user_id: &str) {
        let mut users = lock(&self.users);
        let entry = users
            .entry(user_id.to_string())
            .or_insert_with(UserEntry::new);
        entry.sockets += 1;
        entry.used = Instant::now();
        if entry.rooms.is_none() || entry.stale {
            drop(self.load_user(user_id, entry));
        }
    }

    /// A socket of `user_id` went away.
    pub fn user_disconnected(&self, user_id: &str) {
        if let Some(entry) = lock(&self.users).get_mut(user_id) {
            entry.sockets = entry.sockets.saturating_sub(1);
            entry.used = Instant::now();
        }
    }

    /// Waits until the user's memberships are loaded (a stale copy is served and reloaded in
    /// the background). Err when the database did not answer in time.
    pub async fn memberships(&self, user_id: &str) -> Result<(), Unavailable> {
        let read = {
            let mut users = lock(&self.users);
            let entry = users
                .entry(user_id.to_string())
                .or_insert_with(UserEntry::new);
            entry.used = Instant::now();
            match (&entry.rooms, entry.stale) {
                (Some(_), false) => return Ok(()),
                (Some(_), true) => {
                    drop(self.load_user(user_id, entry));
                    return Ok(());
                }
                (None, _) => self.load_user(user_id, entry),
            }
        };
        match tokio::time::timeout(self.wait, read).await {
            Ok(r) => r,
            Err(_) => Err(Unavailable),
        }
    }

    /// The user's membership of a room: Some(None) when not a member, None when the user's
    /// memberships are not loaded (a stale or missing entry is loaded in the background).
    pub fn member_now(&self, room_id: &str, user_id: &str) -> Option<Option<Arc<Member>>> {
        let mut users = lock(&self.users);
        let entry = users.get_mut(user_id)?;
        entry.used = Instant::now();
        if entry.stale || entry.rooms.is_none() {
            drop(self.load_user(user_id, entry));
        }
        let rooms = entry.rooms.as_ref()?;
        Some(rooms.get(room_id).cloned())
    }

    /// The load of a user's memberships (shared by concurrent callers).
    fn load_user(&self, user_id: &str, entry: &mut UserEntry) -> Read<()> {
        if let Some((read, _)) = &entry.load {
            return read.clone();
        }
        let (tx, rx) = oneshot::channel();
        let read = async move {
            match rx.await {
                Ok(true) => Ok(()),
                _ => Err(Unavailable),
            }
        }
        .boxed()
        .shared();
        if self.loads.try_send(user_id.to_string()).is_err() {
            // The loader is saturated: this caller gets Unavailable, the next one tries again.
            return futures_util::future::ready(Err(Unavailable))
                .boxed()
                .shared();
        }
        entry.load = Some((read.clone(), Vec::new()));
        entry.done = Some(tx);
        read
    }

    /// Loads queued users' memberships, many users a query.
    async fn loader(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut rx) = lock(&self.load_rx).take() else {
            return;
        };
        let mut batch = Vec::with_capacity(LOAD_BATCH);
        loop {
            batch.clear();
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, LOAD_BATCH) => n,
                _ = stop.cancelled() => return,
            };
            if n == 0 {
                return;
            }
            batch.sort();
            batch.dedup();
            let result = tokio::time::timeout(
                self.wait.max(Duration::from_secs(5)),
                self.store.user_memberships(&batch),
            )
            .await;
            let rows = match result {
                Ok(Ok(rows)) => Some(rows),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, users = batch.len(), "memberships not loaded");
                    None
                }
                Err(_) => None,
            };
            self.loaded_users(&batch, rows);
        }
    }

    /// Stores a load's result (None: it failed) and tells its waiters.
    fn loaded_users(&self, batch: &[String], rows: Option<Vec<(String, Member)>>) {
        let mut by_user: HashMap<&str, HashMap<String, Arc<Member>>> = HashMap::new();
        if let Some(rows) = &rows {
            for (room_id, m) in rows {
                by_user
                    .entry(m.user_id.as_str())
                    .or_default()
                    .insert(room_id.clone(), Arc::new(m.clone()));
            }
        }
        let mut users = lock(&self.users);
        for user in batch {
            let Some(entry) = users.get_mut(user) else {
                continue;
            };
            let changes = entry.load.take().map(|(_, c)| c).unwrap_or_default();
            let ok = rows.is_some();
            if ok {
                let mut rooms = by_user.remove(user.as_str()).unwrap_or_default();
                // Changes announced while the load ran, in order, over what it read: each
                // carries the whole row, so one the read already saw changes nothing.
                for (room_id, member) in changes {
                    match member {
                        Some(m) => rooms.insert(room_id, m),
                        None => rooms.remove(&room_id),
                    };
                }
                entry.rooms = Some(rooms);
                entry.stale = false;
            }
            if let Some(done) = entry.done.take() {
                let _ = done.send(ok);
            }
        }
    }

    // ---- joins, leaves, counts ---------------------------------------------------------

    /// The room's member count.
    pub fn count(&self, room_id: &str) -> i64 {
        lock(&self.counts).total(room_id)
    }

    /// Joins `user_id` (None: an anonymous socket) to the room if `check(member, count)`
    /// allows it: one step under the lock, so concurrent joins see each other's counts (a
    /// room's `max_members` holds). A new membership is counted at once; the caller queues
    /// its row. The user's memberships must be loaded ([`Directory::memberships`]).
    pub fn join<E>(
        &self,
        room_id: &str,
        user_id: Option<&str>,
        check: impl FnOnce(Option<&Member>, i64) -> Result<(), E>,
    ) -> Result<Joined, JoinError<E>> {
        let mut users = lock(&self.users);
        let Some(user_id) = user_id else {
            let count = lock(&self.counts).total(room_id);
            check(None, count).map_err(JoinError::Refused)?;
            return Ok(Joined {
                count,
                member: None,
                created: false,
            });
        };
        let Some(entry) = users.get_mut(user_id) else {
            return Err(JoinError::Unavailable);
        };
        let Some(rooms) = &entry.rooms else {
            return Err(JoinError::Unavailable);
        };
        entry.used = Instant::now();
        let existing = rooms.get(room_id).cloned();
        let mut counts = lock(&self.counts);
        let count = counts.total(room_id);
        check(existing.as_deref(), count).map_err(JoinError::Refused)?;
        if let Some(member) = existing {
            return Ok(Joined {
                count,
                member: Some(member),
                created: false,
            });
        }
        let member = Arc::new(Member {
            user_id: user_id.to_string(),
            role: Role::Member,
            is_muted: false,
            is_banned: false,
        });
        counts.add_own(room_id, user_id, 1);
        let count = counts.total(room_id);
        drop(counts);
        entry.set(room_id, Some(member.clone()));
        Ok(Joined {
            count,
            member: Some(member),
            created: true,
        })
    }

    /// Joins a user whose memberships could not be read (the database does not answer) to an
    /// open room, as a user with no membership there: allowed only where no membership could
    /// change the answer, i.e. the rules admit non-members (`check(None, count)`) and the room
    /// has no muted or banned member. Otherwise [`JoinError::Unavailable`].
    pub fn join_unread<E>(
        &self,
        room_id: &str,
        user_id: &str,
        check: impl FnOnce(Option<&Member>, i64) -> Result<(), E>,
    ) -> Result<Joined, JoinError<E>> {
        let mut counts = lock(&self.counts);
        if !self.is_loaded() || counts.sanctioned.contains(room_id) {
            return Err(JoinError::Unavailable);
        }
        check(None, counts.total(room_id)).map_err(|_| JoinError::Unavailable)?;
        counts.add_own(room_id, user_id, 1);
        Ok(Joined {
            count: counts.total(room_id),
            member: Some(Arc::new(Member {
                user_id: user_id.to_string(),
                role: Role::Member,
                is_muted: false,
                is_banned: false,
            })),
            created: true,
        })
    }

    /// Removes the user's membership of the room (its deletion is queued by the caller);
    /// false when the cache knew no such membership.
    pub fn leave(&self, room_id: &str, user_id: &str) -> bool {
        let mut users = lock(&self.users);
        let Some(entry) = users.get_mut(user_id) else {
            return false;
        };
        if !entry
            .rooms
            .as_ref()
            .is_some_and(|r| r.contains_key(room_id))
        {
            return false;
        }
        entry.set(room_id, None);
        lock(&self.counts).add_own(room_id, user_id, -1);
        true
    }

    /// Reads every room's count in bulk (with the watermark of what it includes).
    async fn recount(&self) -> Result<(), super::StoreError> {
        let started = Instant::now();
        lock(&self.counts).recount = Some(Vec::new());
        let result = self.store.member_counts().await;
        let mut counts = lock(&self.counts);
        let seen = counts.recount.take().unwrap_or_default();
        let (rows, watermark) = result?;
        counts.sanctioned = rows
            .iter()
            .filter(|r| r.sanctioned > 0)
            .map(|r| r.room_id.clone())
            .collect();
        counts.committed = rows.into_iter().map(|r| (r.room_id, r.members)).collect();
        for (room_id, delta, position) in seen {
            if !watermark.includes(position) {
                *counts.committed.entry(room_id).or_default() += delta;
            }
        }
        counts.watermark = Some(watermark);
        // Our changes committed before the read are in it.
        counts.retain_own(|o| o.committed.is_none_or(|t| t >= started));
        Ok(())
    }

    // ---- the feed ----------------------------------------------------------------------

    /// Applies a change announced by the database.
    pub fn apply(&self, change: Change) {
        match change {
            Change::Room(name) => {
                let mut rooms = lock(&self.rooms);
                if let Some(names) = &mut rooms.bulk {
                    names.insert(name.clone());
                }
                drop(self.read_room(&mut rooms, &name));
            }
            Change::Member {
                room_id,
                user_id,
                op,
                member,
                origin,
                position,
            } => {
                let ours = origin.as_deref() == Some(self.origin.as_str());
                let sanction = member.as_ref().is_some_and(|m| m.is_muted || m.is_banned);
                if !ours && let Some(entry) = lock(&self.users).get_mut(&user_id) {
                    entry.set(&room_id, member.map(Arc::new));
                }
                if sanction {
                    lock(&self.counts).sanctioned.insert(room_id.clone());
                }
                let delta = match op {
                    MemberOp::Insert => 1,
                    MemberOp::Delete => -1,
                    MemberOp::Update => 0,
                };
                if delta == 0 {
                    return;
                }
                let mut counts = lock(&self.counts);
                let included = counts
                    .watermark
                    .as_ref()
                    .is_some_and(|w| w.includes(position));
                if !included {
                    *counts.committed.entry(room_id.clone()).or_default() += delta;
                    if let Some(seen) = &mut counts.recount {
                        seen.push((room_id.clone(), delta, position));
                    }
                }
                if ours {
                    counts.resolve_own(&room_id, &user_id, delta);
                }
            }
            Change::All => {
                for entry in lock(&self.users).values_mut() {
                    entry.stale = entry.rooms.is_some();
                }
                let Some(me) = self.me.upgrade() else { return };
                tokio::spawn(async move {
                    if let Err(e) = me.load().await {
                        tracing::warn!(error = %e, "room directory not reloaded");
                    }
                });
            }
        }
    }

    /// Forgets idle users and own changes whose announcement never came.
    fn sweep(&self) {
        lock(&self.users)
            .retain(|_, e| e.sockets > 0 || e.load.is_some() || e.used.elapsed() < IDLE_USER);
        lock(&self.counts).retain_own(|o| o.committed.is_none_or(|t| t.elapsed() < UNANNOUNCED));
    }
}

/// The writer tells what became of membership writes.
impl WriteListener for Directory {
    fn committed(&self, ops: &[WriteOp]) {
        let now = Instant::now();
        let mut counts = lock(&self.counts);
        for op in ops {
            let (room_id, user_id, delta) = match op {
                WriteOp::MemberJoin {
                    room_id, user_id, ..
                } => (room_id, user_id, 1),
                WriteOp::MemberLeave { room_id, user_id } => (room_id, user_id, -1),
                _ => continue,
            };
            if let Some(own) = counts
                .own
                .get_mut(&(room_id.clone(), user_id.clone()))
                .and_then(|q| {
                    q.iter_mut()
                        .find(|o| o.delta == delta && o.committed.is_none())
                })
            {
                own.committed = Some(now);
            }
        }
    }

    fn dropped(&self, op: &WriteOp) {
        let (room_id, user_id, delta) = match op {
            WriteOp::MemberJoin {
                room_id, user_id, ..
            } => (room_id, user_id, 1),
            WriteOp::MemberLeave { room_id, user_id } => (room_id, user_id, -1),
            _ => return,
        };
        // The row will not change: the cached membership is read again from the database.
        if let Some(entry) = lock(&self.users).get_mut(user_id) {
            entry.stale = entry.rooms.is_some();
        }
        lock(&self.counts).resolve_own(room_id, user_id, delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str) -> Member {
        Member {
            user_id: user.into(),
            role: Role::Member,
            is_muted: false,
            is_banned: false,
        }
    }

    fn announced(room: &str, user: &str, op: MemberOp, origin: Option<&str>, seq: i64) -> Change {
        Change::Member {
            room_id: room.into(),
            user_id: user.into(),
            op,
            member: (op != MemberOp::Delete).then(|| member(user)),
            origin: origin.map(str::to_string),
            position: Position::Seq(seq),
        }
    }

    async fn directory() -> (tempfile::TempDir, Arc<Directory>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/d.db", dir.path().display());
        let store = Store::connect(&url).await.expect("store");
        let d = Directory::new(store, "me", Duration::from_secs(2), Duration::from_secs(1));
        (dir, d)
    }

    #[tokio::test]
    async fn own_changes_count_at_once_and_once() {
        let (_tmp, d) = directory().await;
        lock(&d.users).insert("u".into(), {
            let mut e = UserEntry::new();
            e.rooms = Some(HashMap::new());
            e
        });
        let j = d
            .join("r", Some("u"), |_, _| Ok::<_, ()>(()))
            .expect("joins");
        assert!(j.created);
        assert_eq!(j.count, 1);
        // Joining again: same membership, same count.
        let again = d
            .join("r", Some("u"), |_, _| Ok::<_, ()>(()))
            .expect("joins");
        assert!(!again.created);
        assert_eq!(again.count, 1);
        // The feed announces our own insert: still 1.
        d.apply(announced("r", "u", MemberOp::Insert, Some("me"), 1));
        assert_eq!(d.count("r"), 1);
        // Someone else's insert and delete move the count.
        d.apply(announced("r", "v", MemberOp::Insert, None, 2));
        assert_eq!(d.count("r"), 2);
        d.apply(announced("r", "v", MemberOp::Delete, Some("other-node"), 3));
        assert_eq!(d.count("r"), 1);
        // Leave: down at once; its announcement does not move it twice.
        assert!(d.leave("r", "u"));
        assert_eq!(d.count("r"), 0);
        d.apply(announced("r", "u", MemberOp::Delete, Some("me"), 4));
        assert_eq!(d.count("r"), 0);
        assert!(!d.leave("r", "u"), "not a member any more");
    }

    #[tokio::test]
    async fn a_dropped_write_stops_counting() {
        let (_tmp, d) = directory().await;
        lock(&d.users).insert("u".into(), {
            let mut e = UserEntry::new();
            e.rooms = Some(HashMap::new());
            e
        });
        assert!(d.join("r", Some("u"), |_, _| Ok::<_, ()>(())).is_ok());
        assert_eq!(d.count("r"), 1);
        d.dropped(&WriteOp::MemberJoin {
            room_id: "r".into(),
            user_id: "u".into(),
            at: chrono::Utc::now(),
        });
        assert_eq!(d.count("r"), 0);
        assert!(lock(&d.users).get("u").is_some_and(|e| e.stale));
    }

    #[tokio::test]
    async fn the_check_sees_the_count_and_refuses_without_counting() {
        let (_tmp, d) = directory().await;
        for u in ["a", "b"] {
            lock(&d.users).insert(u.into(), {
                let mut e = UserEntry::new();
                e.rooms = Some(HashMap::new());
                e
            });
        }
        let full = |_: Option<&Member>, n: i64| if n >= 1 { Err("full") } else { Ok(()) };
        assert!(d.join("r", Some("a"), full).is_ok());
        assert!(matches!(
            d.join("r", Some("b"), full),
            Err(JoinError::Refused("full"))
        ));
        assert_eq!(d.count("r"), 1);
    }

    #[tokio::test]
    async fn a_bulk_count_does_not_add_what_it_includes() {
        let (_tmp, d) = directory().await;
        {
            let mut c = lock(&d.counts);
            c.committed.insert("r".into(), 5);
            c.watermark = Some(Watermark::Seq(10));
        }
        // Announced before the count was read (included): not added.
        d.apply(announced("r", "x", MemberOp::Insert, None, 9));
        assert_eq!(d.count("r"), 5);
        d.apply(announced("r", "y", MemberOp::Insert, None, 11));
        assert_eq!(d.count("r"), 6);
    }

    #[tokio::test]
    async fn memberships_load_in_batches_and_replay_changes_made_meanwhile() {
        let (_tmp, d) = directory().await;
        let store = d.store().clone();
        store
            .create_room(&super::super::NewRoom::new("lobby"))
            .await
            .expect("room");
        store
            .add_member("lobby", "u", "admin", false, false)
            .await
            .expect("member");
        let room = store.room("lobby").await.expect("read").expect("room");
        d.load().await.expect("bulk read");
        let stop = CancellationToken::new();
        let task = tokio::spawn(d.clone().run(stop.clone()));
        d.user_connected("u");
        d.memberships("u").await.expect("loaded");
        let m = d
            .member_now(&room.id, "u")
            .expect("loaded")
            .expect("member");
        assert_eq!(m.role, Role::Admin);
        // A user with no rows is loaded too (as a member of nothing).
        d.memberships("nobody").await.expect("loaded");
        assert_eq!(d.member_now(&room.id, "nobody"), Some(None));
        // Rooms were read in bulk: a known room and a missing one need no read.
        assert!(d.room("lobby").await.expect("answered").is_some());
        assert!(d.room("nope").await.expect("answered").is_none());
        assert_eq!(d.count(&room.id), 1);
        stop.cancel();
        let _ = task.await;
    }

    #[tokio::test]
    async fn the_sqlite_feed_announces_changes_with_their_origin() {
        let (_tmp, d) = directory().await;
        let store = d.store().clone();
        let room = store
            .create_room(&super::super::NewRoom::new("fed"))
            .await
            .expect("room");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let feed = {
            let (store, seen, stop) = (store.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let on_change = move |c: Change| lock(&seen).push(c);
                store.watch(&on_change, stop).await;
            })
        };
        // The feed starts after what is there (and says so with All).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(&seen).contains(&Change::All) {
            assert!(Instant::now() < deadline, "the feed did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store
            .add_member("fed", "cli-user", "member", false, true)
            .await
            .expect("member");
        store
            .apply(&[WriteOp::MemberJoin {
                room_id: room.id.clone(),
                user_id: "writer-user".into(),
                at: chrono::Utc::now(),
            }])
            .await
            .expect("write");
        let members = || -> Vec<Change> {
            lock(&seen)
                .iter()
                .filter(|c| matches!(c, Change::Member { .. }))
                .cloned()
                .collect()
        };
        while members().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "changes not announced: {:?}",
                lock(&seen)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        let _ = feed.await;
        let got = members();
        let Change::Member {
            user_id,
            op,
            member,
            origin,
            ..
        } = &got[0]
        else {
            unreachable!()
        };
        assert_eq!(
            (user_id.as_str(), *op, origin.as_deref()),
            ("cli-user", MemberOp::Insert, None)
        );
        assert!(member.as_ref().is_some_and(|m| m.is_banned));
        let Change::Member {
            user_id,
            origin,
            position,
            ..
        } = &got[1]
        else {
            unreachable!()
        };
        assert_eq!(
            (user_id.as_str(), origin.as_deref()),
            ("writer-user", Some("me"))
        );
        let (counts, watermark) = store.member_counts().await.expect("counts");
        assert!(watermark.includes(*position));
        assert_eq!((counts[0].members, counts[0].sanctioned), (2, 1));
    }
}
