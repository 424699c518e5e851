//! Fan-out: how an event reaches other sockets. [`Fanout`] hides the Socket.IO adapter (local,
//! or Redis when scaled out) from the pipeline, which stays free of adapter generics.
//! [`RoomSockets`] answers whether a user still has a socket in a room anywhere: on one
//! instance the adapter alone knows ([`LocalRoomSockets`]); across instances the counts are in
//! Redis ([`RedisRoomSockets`], `redis.rs`).

mod redis;

pub use redis::RedisRoomSockets;

use async_trait::async_trait;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;

use std::collections::BTreeMap;

use crate::rooms::{USER_ROOM_PREFIX, user_room};

/// Broadcasts to rooms and to everyone.
#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// Every socket in `room`, minus the sockets of `except_user` when given.
    async fn room(&self, room: &str, except_user: Option<&str>, event: &str, data: &Value);
    /// Every socket of this instance in `room` (the other instances deliver to their own).
    async fn room_local(&self, room: &str, event: &str, data: &Value);
    /// Every socket in any of `rooms`.
    async fn rooms(&self, rooms: Vec<String>, event: &'static str, data: &Value);
    /// Every connected socket.
    async fn all(&self, event: &'static str, data: &Value);
    /// Whether another socket of `user_id` (on this node) is still in `room`.
    fn user_in_room(&self, user_id: &str, room: &str, except_socket: &str) -> bool;
    /// Rooms (client-visible) that the sockets of `user_id` on this node are in.
    fn user_rooms(&self, user_id: &str) -> Vec<String>;
    /// Whether `name` is the id of a live socket.
    fn is_socket_id(&self, name: &str) -> bool;
    /// Sockets of this instance per (user, client-visible room).
    fn local_room_sockets(&self) -> BTreeMap<(String, String), u32>;
    /// Whether a socket of this instance is in `room`.
    fn has_local(&self, room: &str) -> bool;
    /// This instance's sockets: (socket id, client-visible rooms).
    fn local_sockets(&self) -> Vec<(String, Vec<String>)>;
    /// Disconnects a socket of this instance; false when there is no such socket here.
    fn disconnect_local(&self, socket_id: &str) -> bool;
    /// Every socket in `room` on the other instances only (nothing when this instance is
    /// alone): what a draining instance tells the cluster about the users it drops.
    async fn room_elsewhere(&self, room: &str, event: &'static str, data: &Value);
    /// Every socket on the other instances, or those in `rooms` when given.
    async fn all_elsewhere(&self, rooms: Option<Vec<String>>, event: &'static str, data: &Value);
}

/// Which rooms a user has sockets in on the other instances.
#[async_trait]
pub trait RoomSockets: Send + Sync + 'static {
    /// A socket of `user` on this instance joined `room`.
    async fn joined(&self, user: &str, room: &str);
    /// A socket of `user` on this instance left `rooms` (leave or disconnect): the rooms where
    /// the user has no socket left on any other instance, or None when that is not known (this
    /// instance alone decides from its own sockets).
    async fn left(&self, user: &str, rooms: &[String]) -> Option<Vec<String>>;
}

/// One instance: there are no other instances to ask.
pub struct LocalRoomSockets;

#[async_trait]
impl RoomSockets for LocalRoomSockets {
    async fn joined(&self, _user: &str, _room: &str) {}

    async fn left(&self, _user: &str, _rooms: &[String]) -> Option<Vec<String>> {
        None
    }
}

/// [`Fanout`] over a socketioxide instance.
pub struct SocketIoFanout<A: Adapter> {
    io: SocketIo<A>,
    /// The room every local socket is in, in a cluster ([`crate::cluster::node_room`]).
    node_room: Option<String>,
}

impl<A: Adapter> SocketIoFanout<A> {
    /// Wraps the Socket.IO handle; `node_room` is the room of this instance's sockets when
    /// scaled out.
    pub fn new(io: SocketIo<A>, node_room: Option<String>) -> Self {
        SocketIoFanout { io, node_room }
    }
}

fn log_err<E: std::fmt::Display>(event: &str, r: Result<(), E>) {
    if let Err(e) = r {
        tracing::debug!(event, error = %e, "broadcast incomplete");
    }
}

#[async_trait]
impl<A: Adapter> Fanout for SocketIoFanout<A> {
    async fn room(&self, room: &str, except_user: Option<&str>, event: &str, data: &Value) {
        let op = self.io.to(room.to_string());
        let op = match except_user {
            Some(u) => op.except(user_room(u)),
            None => op,
        };
        log_err(event, op.emit(event, data).await);
    }

    async fn room_local(&self, room: &str, event: &str, data: &Value) {
        let op = self.io.local().to(room.to_string());
        log_err(event, op.emit(event, data).await);
    }

    async fn rooms(&self, rooms: Vec<String>, event: &'static str, data: &Value) {
        if rooms.is_empty() {
            return;
        }
        log_err(event, self.io.to(rooms).emit(event, data).await);
    }

    async fn all(&self, event: &'static str, data: &Value) {
        log_err(event, self.io.emit(event, data).await);
    }

    fn user_in_room(&self, user_id: &str, room: &str, except_socket: &str) -> bool {
        let Some(ns) = self.io.of("/") else {
            return false;
        };
        ns.local()
            .within(user_room(user_id))
            .sockets()
            .iter()
            .any(|s| s.id.as_str() != except_socket && s.rooms().iter().any(|r| r == room))
    }

    fn user_rooms(&self, user_id: &str) -> Vec<String> {
        let Some(ns) = self.io.of("/") else {
            return Vec::new();
        };
        let mut rooms: Vec<String> = ns
            .local()
            .within(user_room(user_id))
            .sockets()
            .iter()
            .flat_map(|s| s.rooms())
            .map(|r| r.to_string())
            .filter(|r| !r.starts_with('#'))
            .collect();
        rooms.sort();
        rooms.dedup();
        rooms
    }

    fn local_room_sockets(&self) -> BTreeMap<(String, String), u32> {
        let mut out = BTreeMap::new();
        let Some(ns) = self.io.of("/") else {
            return out;
        };
        for s in ns.local().sockets() {
            let rooms = s.rooms();
            let Some(user) = rooms.iter().find_map(|r| r.strip_prefix(USER_ROOM_PREFIX)) else {
                continue;
            };
            for r in rooms.iter().filter(|r| !r.starts_with('#')) {
                *out.entry((user.to_string(), r.to_string())).or_insert(0) += 1;
            }
        }
        out
    }

    async fn room_elsewhere(&self, room: &str, event: &'static str, data: &Value) {
        if let Some(local) = &self.node_room {
            let op = self.io.to(room.to_string()).except(local.clone());
            log_err(event, op.emit(event, data).await);
        }
    }

    async fn all_elsewhere(&self, rooms: Option<Vec<String>>, event: &'static str, data: &Value) {
        let Some(local) = &self.node_room else { return };
        let op = match rooms {
            Some(r) if r.is_empty() => return,
            Some(r) => self.io.to(r).except(local.clone()),
            None => self.io.except(local.clone()),
        };
        log_err(event, op.emit(event, data).await);
    }

    fn has_local(&self, room: &str) -> bool {
        self.io
            .of("/")
            .is_some_and(|ns| !ns.local().within(room.to_string()).sockets().is_empty())
    }

    fn local_sockets(&self) -> Vec<(String, Vec<String>)> {
        let Some(ns) = self.io.of("/") else {
            return Vec::new();
        };
        ns.local()
            .sockets()
            .into_iter()
            .map(|s| {
                let mut rooms: Vec<String> = s
                    .rooms()
                    .into_iter()
                    .filter(|r| !r.starts_with('#'))
                    .map(|r| r.to_string())
                    .collect();
                rooms.sort();
                (s.id.to_string(), rooms)
            })
            .collect()
    }

    fn disconnect_local(&self, socket_id: &str) -> bool {
        let socket = socket_id
            .parse()
            .ok()
            .and_then(|sid| self.io.get_socket(sid));
        match socket {
            Some(s) => {
                if let Err(e) = s.disconnect() {
                    tracing::debug!(socket_id, error = %e, "disconnect not sent");
                }
                true
            }
            None => false,
        }
    }

    fn is_socket_id(&self, name: &str) -> bool {
        name.parse()
            .ok()
            .and_then(|sid| self.io.get_socket(sid))
            .is_some()
    }
}
