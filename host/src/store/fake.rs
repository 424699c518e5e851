//! A store for unit tests: only `apply` does anything (it records the batches it commits),
//! and it can be told to fail, to refuse ops for their data, or to hold until released.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::*;

/// What the fake does on its next `apply` calls.
#[derive(Default)]
pub(crate) struct Script {
    /// Fail this many more calls as if the database did not answer.
    pub(crate) unreachable: u32,
    /// Refuse (SQLSTATE 23505) any batch holding an op for which this is true.
    pub(crate) refuse: Option<fn(&WriteOp) -> bool>,
    /// Committed batches.
    pub(crate) batches: Vec<Vec<WriteOp>>,
    /// Calls made.
    pub(crate) calls: u32,
}

/// The fake backend.
#[derive(Default, Clone)]
pub(crate) struct Fake {
    pub(crate) script: Arc<Mutex<Script>>,
    /// While set, `apply` waits (to fill the queue in front of it).
    pub(crate) hold: Arc<tokio::sync::RwLock<()>>,
}

impl Fake {
    pub(crate) fn store(&self) -> Store {
        Store {
            backend: Arc::new(self.clone()),
            kind: BackendKind::Sqlite,
        }
    }

    pub(crate) fn committed(&self) -> Vec<WriteOp> {
        self.script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .batches
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("duplicate key value violates unique constraint")
    }
}

impl std::error::Error for Refused {}

impl sqlx::error::DatabaseError for Refused {
    fn message(&self) -> &str {
        "duplicate key value violates unique constraint"
    }
    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("23505"))
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::UniqueViolation
    }
}

fn unsupported<T>() -> Result<T, StoreError> {
    Err(StoreError::Unsupported("fake".into()))
}

#[async_trait]
impl Backend for Fake {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn create_room(&self, _: &NewRoom) -> Result<Room, StoreError> {
        unsupported()
    }
    async fn room(&self, _: &str) -> Result<Option<Room>, StoreError> {
        Ok(None)
    }
    async fn rooms(&self, _: bool) -> Result<Vec<Room>, StoreError> {
        Ok(Vec::new())
    }
    async fn set_room_active(&self, _: &str, _: bool) -> Result<bool, StoreError> {
        unsupported()
    }
    async fn set_room_settings(&self, _: &str, _: &serde_json::Value) -> Result<bool, StoreError> {
        unsupported()
    }
    async fn add_member(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: bool,
        _: bool,
    ) -> Result<(), StoreError> {
        unsupported()
    }
    async fn remove_member(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        unsupported()
    }
    async fn members(&self, _: &str) -> Result<Vec<Member>, StoreError> {
        Ok(Vec::new())
    }
    async fn user_memberships(&self, _: &[String]) -> Result<Vec<(String, Member)>, StoreError> {
        Ok(Vec::new())
    }
    async fn member_counts(&self) -> Result<(Vec<RoomCount>, Watermark), StoreError> {
        Ok((Vec::new(), Watermark::Seq(0)))
    }
    fn set_origin(&self, _: &str) {}
    async fn apply(&self, ops: &[WriteOp]) -> Result<(), StoreError> {
        let _held = self.hold.read().await;
        let mut s = self.script.lock().unwrap_or_else(|e| e.into_inner());
        s.calls += 1;
        if s.unreachable > 0 {
            s.unreachable -= 1;
            return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        }
        if let Some(refuse) = s.refuse
            && ops.iter().any(refuse)
        {
            return Err(StoreError::Database(sqlx::Error::Database(Box::new(
                Refused,
            ))));
        }
        s.batches.push(ops.to_vec());
        Ok(())
    }
    async fn stats(&self) -> Result<Stats, StoreError> {
        unsupported()
    }
    async fn offline_users(&self) -> Result<i64, StoreError> {
        Ok(0)
    }
    async fn connections(&self) -> Result<Vec<ConnectionRow>, StoreError> {
        Ok(Vec::new())
    }
    async fn events(&self, _: i64) -> Result<Vec<EventRow>, StoreError> {
        Ok(Vec::new())
    }
    async fn reset_live_state(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn kept_history(&self, _: &str, _: i64) -> Result<Option<KeptHistory>, StoreError> {
        Ok(None)
    }
    async fn cleanup(&self, _: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn start_node(&self, _: &str, _: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    async fn renew_lease(&self, _: &str, _: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn end_node(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn reap_dead_nodes(&self) -> Result<Vec<Offline>, StoreError> {
        Ok(Vec::new())
    }
    async fn watch(&self, _: &(dyn Fn(Change) + Send + Sync), _: CancellationToken) {}
}
