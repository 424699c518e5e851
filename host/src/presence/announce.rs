//! [`Presence`]: presence as the pipeline and the background tasks use it. It owns the switch
//! (`REALTIME_ENABLE_PRESENCE`: off, nothing is tracked or announced), the state (one instance
//! or cluster-wide, behind [`PresenceManager`]) and the announcement: a change is written
//! behind (the `realtime_presence` row), then `presence:changed` goes to every socket, or with
//! `REALTIME_PRESENCE_SCOPE=rooms` to the sockets sharing a room with the user.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{CustomStatus, PresenceManager, PresenceState, Status};
use crate::config::{Config, PresenceScope};
use crate::fanout::Fanout;
use crate::store::WriteOp;
use crate::store::writer::Writer;

/// Presence: switch, state and announcement.
pub struct Presence {
    state: Arc<dyn PresenceManager>,
    enabled: bool,
    scope: PresenceScope,
    writer: Writer,
    fanout: Arc<dyn Fanout>,
}

impl Presence {
    /// Presence over `state`, announced through `fanout`, rows written by `writer`.
    pub fn new(
        state: Arc<dyn PresenceManager>,
        config: &Config,
        writer: Writer,
        fanout: Arc<dyn Fanout>,
    ) -> Presence {
        Presence {
            state,
            enabled: config.enable_presence,
            scope: config.presence_scope,
            writer,
            fanout,
        }
    }

    /// Whether presence is tracked at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The state (counts, online users, a user's state; re-assertion after a Redis outage).
    pub fn state(&self) -> &dyn PresenceManager {
        &*self.state
    }

    /// A socket of `user` connected: their first socket anywhere makes them online.
    pub async fn connected(&self, user: &str) {
        if self.enabled
            && let Some(state) = self.state.connect(user).await
        {
            self.announce(&state, Vec::new()).await;
        }
    }

    /// A socket of `user` went away (`rooms`: the rooms it was in, told under scope `rooms`):
    /// their last socket anywhere makes them offline.
    pub async fn disconnected(&self, user: &str, rooms: Vec<String>) {
        if self.enabled
            && let Some(state) = self.state.disconnect(user).await
        {
            self.announce(&state, rooms).await;
        }
    }

    /// A socket of `user` dropped while this instance drains: the state and its row change,
    /// nothing is announced here; the offline state is returned when it was the last socket
    /// anywhere (the other instances' clients are told by the drain's farewell).
    pub async fn dropped(&self, user: &str) -> Option<PresenceState> {
        if !self.enabled {
            return None;
        }
        let state = self.state.disconnect(user).await?;
        self.persist(&state);
        Some(state)
    }

    /// `presence:update`.
    pub async fn update(&self, user: &str, status: Status, custom: Option<CustomStatus>) {
        let state = self.state.update(user, status, custom).await;
        self.announce(&state, Vec::new()).await;
    }

    /// The user did something (sent, typed, joined, left): an automatic `away` ends.
    pub async fn active(&self, user: &str) {
        if self.enabled
            && let Some(state) = self.state.touch(user, Utc::now()).await
        {
            self.announce(&state, Vec::new()).await;
        }
    }

    /// Periodic work: custom statuses that expired end; with `away` set, users idle since
    /// `idle_before` become away.
    pub async fn tick(&self, now: DateTime<Utc>, idle_before: Option<DateTime<Utc>>) {
        for state in self.state.expire(now).await {
            self.announce(&state, Vec::new()).await;
        }
        if self.enabled
            && let Some(before) = idle_before
        {
            for state in self.state.idle(before).await {
                self.announce(&state, Vec::new()).await;
            }
        }
    }

    /// Heartbeat rows of every online user (moves `last_heartbeat`, and `last_active`).
    pub fn heartbeat(&self, now: DateTime<Utc>) {
        for user_id in self.state.online_users() {
            let last_active = self.state.last_active(&user_id);
            self.writer.write(WriteOp::Heartbeat {
                user_id,
                at: now,
                last_active,
            });
        }
    }

    /// Writes every online user's row again (the database lost this instance's rows).
    pub fn persist_all(&self) {
        for user in self.state.online_users() {
            if let Some(state) = self.state.state(&user) {
                self.persist(&state);
            }
        }
    }

    /// Writes the change, then tells who should know (`extra_rooms`: rooms of a socket that
    /// just left, under scope `rooms`).
    pub async fn announce(&self, state: &PresenceState, extra_rooms: Vec<String>) {
        self.persist(state);
        self.broadcast(state, extra_rooms).await;
    }

    /// Queues the user's presence row.
    pub fn persist(&self, state: &PresenceState) {
        let custom = state.custom.as_ref();
        self.writer.write(WriteOp::Presence {
            user_id: state.user_id.clone(),
            status: state.status.as_str().to_string(),
            custom_status: custom.map(|c| c.text.clone()),
            custom_emoji: custom.and_then(|c| c.emoji.clone()),
            expires_at: custom.and_then(|c| c.expires_at),
            connections_count: state.connections as i32,
            at: Utc::now(),
        });
    }

    /// Sends `presence:changed` for a change already written (a crash cleanup: the reaper
    /// wrote the rows): to everyone, or under scope `rooms` to the rooms the user's sockets
    /// here are in plus `extra_rooms`.
    pub async fn broadcast(&self, state: &PresenceState, extra_rooms: Vec<String>) {
        if !self.enabled {
            return;
        }
        let event = state.event();
        match self.scope {
            PresenceScope::All => self.fanout.all("presence:changed", &event).await,
            PresenceScope::Rooms => {
                let mut rooms = self.fanout.user_rooms(&state.user_id);
                rooms.extend(extra_rooms);
                rooms.sort();
                rooms.dedup();
                self.fanout.rooms(rooms, "presence:changed", &event).await;
            }
        }
    }

    /// The offline announcement of a user a draining instance dropped, to the other
    /// instances' sockets only (`rooms`: the rooms the socket was in).
    pub async fn farewell(&self, state: &PresenceState, rooms: Vec<String>) {
        let rooms = match self.scope {
            PresenceScope::All => None,
            PresenceScope::Rooms => Some(rooms),
        };
        self.fanout
            .all_elsewhere(rooms, "presence:changed", &state.event())
            .await;
    }
}
