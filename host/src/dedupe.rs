//! `clientMessageId` de-duplication: a repeated id from the same user gets the first
//! `{messageId, timestamp}` again and is not delivered twice. Bounded in size and age.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a `clientMessageId` is remembered.
pub const DEDUPE_TTL: Duration = Duration::from_secs(600);

/// What the first send of a `clientMessageId` was acked with.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// Server message id.
    pub message_id: String,
    /// Server timestamp (ISO 8601).
    pub timestamp: String,
}

/// Remembers recent `(user, clientMessageId)` pairs.
pub struct Dedupe {
    inner: Mutex<Inner>,
    ttl: Duration,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(String, String), Sent>,
    order: VecDeque<(Instant, (String, String))>,
}

impl Dedupe {
    /// Keeps at most `capacity` ids, each for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Dedupe {
        Dedupe {
            inner: Mutex::new(Inner::default()),
            ttl,
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The earlier result for this id, if any.
    pub fn get(&self, user: &str, client_id: &str) -> Option<Sent> {
        let mut inner = self.lock();
        self.evict(&mut inner);
        inner
            .map
            .get(&(user.to_string(), client_id.to_string()))
            .cloned()
    }

    /// Records the result of a first send.
    pub fn put(&self, user: &str, client_id: &str, sent: Sent) {
        let mut inner = self.lock();
        self.evict(&mut inner);
        let key = (user.to_string(), client_id.to_string());
        if inner.map.insert(key.clone(), sent).is_none() {
            inner.order.push_back((Instant::now(), key));
        }
    }

    fn evict(&self, inner: &mut Inner) {
        let now = Instant::now();
        while let Some((at, _)) = inner.order.front() {
            let expired = now.duration_since(*at) > self.ttl;
            if !expired && inner.order.len() <= self.capacity {
                break;
            }
            if let Some((_, key)) = inner.order.pop_front() {
                inner.map.remove(&key);
            }
        }
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
    fn remembers_per_user_and_is_bounded() {
        let d = Dedupe::new(2, Duration::from_secs(60));
        d.put("u", "c1", sent("m1"));
        assert_eq!(d.get("u", "c1"), Some(sent("m1")));
        assert_eq!(d.get("other", "c1"), None);
        d.put("u", "c2", sent("m2"));
        d.put("u", "c3", sent("m3"));
        assert_eq!(d.get("u", "c1"), None, "oldest evicted past capacity");
        assert_eq!(d.get("u", "c3"), Some(sent("m3")));
    }

    #[test]
    fn forgets_after_ttl() {
        let d = Dedupe::new(10, Duration::from_millis(1));
        d.put("u", "c", sent("m"));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(d.get("u", "c"), None);
    }
}
