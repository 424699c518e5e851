//! `clientMessageId` de-duplication: a repeated id from the same user gets the first
//! `{messageId, timestamp}` again and is not delivered twice. [`Dedupe`] remembers the ids
//! sent through this instance; [`Claims`] settles which send was first across instances
//! ([`LocalClaims`] on one instance, [`RedisClaims`] in `redis.rs`).
//!
//! Memory is scoped per user: each user keeps at most `per_user` ids (their own oldest go
//! first), so no user can push another's ids out. The whole is bounded too (`total`); past
//! it, the user holding the most ids gives up their oldest. Ids are forgotten after the TTL.

mod redis;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

pub use redis::RedisClaims;

/// How long a `clientMessageId` is remembered.
pub const DEDUPE_TTL: Duration = Duration::from_secs(600);
/// Ids remembered per user, at most.
pub const PER_USER: usize = 1_000;
/// Ids remembered in all, at most.
pub const TOTAL: usize = 200_000;

/// What the first send of a `clientMessageId` was acked with.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// Server message id.
    pub message_id: String,
    /// Server timestamp (ISO 8601).
    pub timestamp: String,
}

/// Which send of a `clientMessageId` was first, across the instances.
#[async_trait]
pub trait Claims: Send + Sync + 'static {
    /// Claims `client_id` of `user` for `sent`: None when this is the first send (or it is not
    /// known), the earlier result when another send already claimed it.
    async fn claim(&self, user: &str, client_id: &str, sent: &Sent, ttl: Duration) -> Option<Sent>;
}

/// One instance: [`Dedupe`] alone decides.
pub struct LocalClaims;

#[async_trait]
impl Claims for LocalClaims {
    async fn claim(&self, _: &str, _: &str, _: &Sent, _: Duration) -> Option<Sent> {
        None
    }
}

/// Remembers recent `(user, clientMessageId)` pairs.
pub struct Dedupe {
    inner: Mutex<Inner>,
    ttl: Duration,
    per_user: usize,
    total: usize,
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, UserIds>,
    /// (ids held, user) of every user holding any: the heaviest is the last.
    by_size: BTreeSet<(usize, String)>,
    held: usize,
}

#[derive(Default)]
struct UserIds {
    map: HashMap<String, Sent>,
    order: VecDeque<(Instant, String)>,
}

impl Inner {
    /// Runs `f` on a user's ids, keeping the size index and the total in step.
    fn with_user<T>(&mut self, user: &str, f: impl FnOnce(&mut UserIds) -> T) -> T {
        let ids = self.users.entry(user.to_string()).or_default();
        let before = ids.order.len();
        let out = f(ids);
        let after = ids.order.len();
        if after == 0 {
            self.users.remove(user);
        }
        if before != after {
            self.by_size.remove(&(before, user.to_string()));
            if after > 0 {
                self.by_size.insert((after, user.to_string()));
            }
            self.held = self.held + after - before;
        }
        out
    }
}

impl UserIds {
    fn expire(&mut self, ttl: Duration) {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.map.remove(&id);
        }
    }
}

impl Dedupe {
    /// Keeps at most `per_user` ids a user and `total` in all, each for at most `ttl`.
    pub fn new(per_user: usize, total: usize, ttl: Duration) -> Dedupe {
        Dedupe {
            inner: Mutex::new(Inner::default()),
            ttl,
            per_user: per_user.max(1),
            total: total.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The earlier result for this id, if any.
    pub fn get(&self, user: &str, client_id: &str) -> Option<Sent> {
        let mut inner = self.lock();
        if !inner.users.contains_key(user) {
            return None;
        }
        let ttl = self.ttl;
        inner.with_user(user, |ids| {
            ids.expire(ttl);
            ids.map.get(client_id).cloned()
        })
    }

    /// Records the result of a first send.
    pub fn put(&self, user: &str, client_id: &str, sent: Sent) {
        let mut inner = self.lock();
        let (ttl, per_user) = (self.ttl, self.per_user);
        inner.with_user(user, |ids| {
            ids.expire(ttl);
            if ids.map.contains_key(client_id) {
                return;
            }
            while ids.order.len() >= per_user {
                ids.pop_oldest();
            }
            ids.map.insert(client_id.to_string(), sent);
            ids.order.push_back((Instant::now(), client_id.to_string()));
        });
        // Past the overall bound the heaviest user gives up their oldest id.
        while inner.held > self.total {
            let Some((_, heaviest)) = inner.by_size.last().cloned() else {
                break;
            };
            inner.with_user(&heaviest, UserIds::pop_oldest);
        }
    }

    /// Forgets every expired id (the janitor calls it; lookups expire their user's own).
    pub fn sweep(&self) {
        let mut inner = self.lock();
        let users: Vec<String> = inner.users.keys().cloned().collect();
        let ttl = self.ttl;
        for u in users {
            inner.with_user(&u, |ids| ids.expire(ttl));
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.lock().held
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(id: &str) -> Sent {
        Sent {
            message_id: id.into(),
            timestamp: "t".into(),
        }
    }

    #[test]
    fn remembers_per_user_and_is_bounded_per_user() {
        let d = Dedupe::new(2, 100, Duration::from_secs(60));
        d.put("u", "c1", sent("m1"));
        assert_eq!(d.get("u", "c1"), Some(sent("m1")));
        assert_eq!(d.get("other", "c1"), None);
        d.put("u", "c2", sent("m2"));
        d.put("u", "c3", sent("m3"));
        assert_eq!(
            d.get("u", "c1"),
            None,
            "the user's own oldest goes past its bound"
        );
        assert_eq!(d.get("u", "c3"), Some(sent("m3")));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn one_user_cannot_evict_another() {
        let d = Dedupe::new(1000, 1500, Duration::from_secs(60));
        d.put("victim", "keep", sent("v"));
        for i in 0..105_000 {
            d.put("flooder", &format!("c{i}"), sent("f"));
        }
        assert_eq!(d.get("victim", "keep"), Some(sent("v")));
        assert_eq!(d.len(), 1001);
        // Past the overall bound, the heaviest user pays.
        for u in 0..10 {
            for i in 0..100 {
                d.put(&format!("u{u}"), &format!("c{i}"), sent("x"));
            }
        }
        assert!(d.len() <= 1500, "{}", d.len());
        assert_eq!(d.get("victim", "keep"), Some(sent("v")));
        assert_eq!(d.get("u9", "c99"), Some(sent("x")));
    }

    #[test]
    fn forgets_after_ttl() {
        let d = Dedupe::new(10, 100, Duration::from_millis(1));
        d.put("u", "c", sent("m"));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(d.get("u", "c"), None);
        d.put("v", "c", sent("m"));
        std::thread::sleep(Duration::from_millis(5));
        d.sweep();
        assert!(d.is_empty());
    }
}
