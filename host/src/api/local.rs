//! What one instance answers about itself ([`Query`] -> [`Reply`]): the server API merges the
//! answers of every instance (this one directly, the others over the cluster survey).

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::App;
use crate::store::WriteOp;
use crate::util::iso;

/// A question to one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Query {
    /// The instance's own figures only.
    Node,
    /// Its sockets (in `room`, of `user`, when given), at most `limit` of them.
    Sockets {
        /// Only sockets in this room.
        room: Option<String>,
        /// Only sockets of this user.
        user: Option<String>,
        /// Most sockets listed.
        limit: usize,
    },
    /// Sockets and users per room.
    Rooms,
    /// Its connected users and their presence status.
    Users,
    /// Disconnect the sockets of `user`, or the socket `socket`.
    Disconnect {
        /// Every socket of this user.
        user: Option<String>,
        /// This socket.
        socket: Option<String>,
    },
}

/// One instance's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    /// Its figures.
    pub node: NodeInfo,
    /// Sockets (for [`Query::Sockets`]).
    #[serde(default)]
    pub sockets: Vec<SocketInfo>,
    /// Sockets that matched, listed or not.
    #[serde(default)]
    pub matched: usize,
    /// Rooms (for [`Query::Rooms`]).
    #[serde(default)]
    pub rooms: BTreeMap<String, RoomTally>,
    /// User -> presence status (for [`Query::Users`]).
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// The user's presence as this instance knows it (for [`Query::Sockets`] with a user).
    #[serde(default)]
    pub presence: Option<Value>,
    /// Sockets disconnected (for [`Query::Disconnect`]).
    #[serde(default)]
    pub disconnected: usize,
}

/// An instance's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Its id (`REALTIME_NODE_ID`, or generated at start).
    pub node_id: String,
    /// Server version.
    pub version: String,
    /// Host name.
    pub hostname: Option<String>,
    /// When it started.
    pub started_at: String,
    /// Seconds since.
    pub uptime_seconds: u64,
    /// Its sockets.
    pub connections: usize,
    /// Distinct users among them.
    pub users: usize,
    /// Client events handled since start.
    pub events_total: u64,
    /// Messages sent since start.
    pub messages_total: u64,
    /// Whether it is shutting down.
    pub draining: bool,
}

/// One socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketInfo {
    /// Socket id.
    pub socket_id: String,
    /// User id (None: anonymous).
    pub user_id: Option<String>,
    /// The instance it is connected to.
    pub node_id: String,
    /// Transport it connected with.
    pub transport: Option<String>,
    /// Client address.
    pub ip: Option<String>,
    /// User-Agent.
    pub user_agent: Option<String>,
    /// When it connected.
    pub connected_at: Option<String>,
    /// Rooms it is in.
    pub rooms: Vec<String>,
}

/// A room's sockets and users on one instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomTally {
    /// Sockets in the room.
    pub sockets: usize,
    /// Users with a socket in it.
    pub users: BTreeSet<String>,
}

/// This instance's answer to a question in JSON (what the survey sends back).
pub async fn answer(app: &App, question: Value) -> Value {
    match serde_json::from_value::<Query>(question) {
        Ok(q) => serde_json::to_value(reply(app, &q)).unwrap_or(Value::Null),
        Err(e) => {
            tracing::debug!(error = %e, "unreadable survey question");
            Value::Null
        }
    }
}

/// This instance's answer.
pub fn reply(app: &App, query: &Query) -> Reply {
    let sockets = sockets(app);
    let mut out = Reply {
        node: node_info(app, &sockets),
        ..Reply::default()
    };
    match query {
        Query::Node => {}
        Query::Sockets { room, user, limit } => {
            let matching = sockets.into_iter().filter(|s| {
                room.as_ref().is_none_or(|r| s.rooms.contains(r))
                    && user
                        .as_ref()
                        .is_none_or(|u| s.user_id.as_deref() == Some(u.as_str()))
            });
            for s in matching {
                out.matched += 1;
                if out.sockets.len() < *limit {
                    out.sockets.push(s);
                }
            }
            if let Some(u) = user {
                out.presence = app.presence.state().state(u).map(|p| p.event());
            }
        }
        Query::Rooms => {
            for s in sockets {
                for r in &s.rooms {
                    let tally = out.rooms.entry(r.clone()).or_default();
                    tally.sockets += 1;
                    if let Some(u) = &s.user_id {
                        tally.users.insert(u.clone());
                    }
                }
            }
        }
        Query::Users => {
            let presence = app.presence.state();
            for u in sockets.iter().filter_map(|s| s.user_id.as_ref()) {
                if !out.users.contains_key(u) {
                    let status = presence
                        .state(u)
                        .map(|p| p.status.as_str())
                        .unwrap_or("online");
                    out.users.insert(u.clone(), status.to_string());
                }
            }
        }
        Query::Disconnect { user, socket } => {
            for s in sockets {
                let hit = socket.as_deref() == Some(s.socket_id.as_str())
                    || (user.is_some() && s.user_id == *user);
                if hit && app.fanout.disconnect_local(&s.socket_id) {
                    out.disconnected += 1;
                }
            }
        }
    }
    out
}

/// This instance's sockets, with what their connection row says about them.
fn sockets(app: &App) -> Vec<SocketInfo> {
    let live = app.live.lock().unwrap_or_else(|e| e.into_inner());
    app.fanout
        .local_sockets()
        .into_iter()
        .map(|(socket_id, rooms)| {
            let mut s = SocketInfo {
                socket_id,
                user_id: None,
                node_id: app.node_id.clone(),
                transport: None,
                ip: None,
                user_agent: None,
                connected_at: None,
                rooms,
            };
            if let Some(WriteOp::ConnectionOpened {
                user_id,
                transport,
                ip,
                user_agent,
                at,
                ..
            }) = live.get(&s.socket_id)
            {
                s.user_id = user_id.clone();
                s.transport = Some(transport.clone());
                s.ip = ip.clone();
                s.user_agent = user_agent.clone();
                s.connected_at = Some(iso(*at));
            }
            s
        })
        .collect()
}

fn node_info(app: &App, sockets: &[SocketInfo]) -> NodeInfo {
    let up = app.started.elapsed();
    let started = Utc::now() - chrono::Duration::from_std(up).unwrap_or_default();
    let users: BTreeSet<&str> = sockets
        .iter()
        .filter_map(|s| s.user_id.as_deref())
        .collect();
    NodeInfo {
        node_id: app.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: crate::util::hostname(),
        started_at: iso(started),
        uptime_seconds: up.as_secs(),
        connections: sockets.len(),
        users: users.len(),
        events_total: app
            .metrics
            .events_total
            .load(std::sync::atomic::Ordering::Relaxed),
        messages_total: app.metrics.messages.get(),
        draining: app.is_draining(),
    }
}
