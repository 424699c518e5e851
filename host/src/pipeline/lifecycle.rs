//! What happens when a socket connects (after the handshake is accepted) and disconnects.

use chrono::Utc;
use serde_json::json;

use super::{Conn, Session, audit};
use crate::app::App;
use crate::store::WriteOp;
use crate::util::iso;

/// Greets the socket and records the connection: `connected`, then `authenticated`, then
/// presence (the first socket of a user makes them online).
pub async fn on_connect(app: &App, session: &Session, conn: &dyn Conn) {
    conn.emit(
        "connected",
        &json!({
            "socketId": session.socket_id,
            "serverTime": iso(Utc::now()),
            "protocolVersion": "1.0",
        }),
    );
    if let Some(user) = session.user_id() {
        let rooms: Vec<&String> = session.joined.keys().collect();
        conn.emit(
            "authenticated",
            &json!({
                "userId": user,
                "sessionId": session.identity.session_id,
                "rooms": rooms,
            }),
        );
    }
    app.connection_opened(
        &session.socket_id,
        WriteOp::ConnectionOpened {
            socket_id: session.socket_id.clone(),
            user_id: session.identity.user_id.clone(),
            session_id: session.identity.session_id.clone(),
            transport: session.transport.clone(),
            ip: session.ip.clone(),
            user_agent: session.user_agent.clone(),
            device_info: session.device.clone(),
            node_id: app.node_id.clone(),
            at: Utc::now(),
        },
    );
    audit(
        app,
        session,
        "connect",
        json!({ "transport": session.transport }),
    );
    if let Some(user) = session.user_id() {
        app.presence.connected(user).await;
    }
}

/// Cleans up after a socket: its typing entries (peers get `typing:event`), its rooms (peers
/// get `user:left` when the user's last socket leaves), its user's presence, its row.
pub async fn on_disconnect(app: &App, session: &Session, reason: &str) {
    if app.is_draining() {
        // Every socket is going: persist, but do not fan out per socket (n x n sends).
        return forget(app, session, reason).await;
    }
    for update in app.typing.clear_socket(&session.socket_id).await {
        let room_id = session
            .joined
            .get(&update.key.room)
            .map(|j| j.room.id.clone());
        if let Some(room_id) = room_id {
            app.writer.write(WriteOp::TypingClear {
                room_id,
                user_id: update.user_id.clone(),
                thread_id: update.key.thread.clone(),
            });
        }
        app.fanout
            .room(&update.key.room, None, "typing:event", &update.event())
            .await;
    }
    if let Some(user) = session.user_id() {
        let rooms: Vec<String> = session.joined.keys().cloned().collect();
        // Scaled out: rooms where the user has no socket on any instance any more (None on
        // one instance, or when Redis did not answer: decided from this instance alone).
        let gone_everywhere = app.room_sockets.left(user, &rooms).await;
        for room in session.joined.keys() {
            let elsewhere = gone_everywhere.as_ref().is_some_and(|g| !g.contains(room));
            if !elsewhere && !app.fanout.user_in_room(user, room, &session.socket_id) {
                app.fanout
                    .room(
                        room,
                        None,
                        "user:left",
                        &json!({ "roomName": room, "userId": user }),
                    )
                    .await;
            }
        }
        app.presence.disconnected(user, rooms).await;
    }
    app.connection_closed(&session.socket_id);
    audit(app, session, "disconnect", json!({ "reason": reason }));
}

/// Shutdown path of [`on_disconnect`]: state and rows, no broadcast to this instance's own
/// sockets (they are all going: n x n sends). Scaled out, what the other instances' clients
/// must learn (typing ended, `user:left` where the user has no socket left anywhere, offline)
/// is kept for [`farewell`], sent once every socket here is done.
async fn forget(app: &App, session: &Session, reason: &str) {
    let typing = app.typing.clear_socket(&session.socket_id).await;
    if let Some(user) = session.user_id() {
        let rooms: Vec<String> = session.joined.keys().cloned().collect();
        let left = app
            .room_sockets
            .left(user, &rooms)
            .await
            .unwrap_or_default();
        let offline = app.presence.dropped(user).await;
        app.farewells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Farewell {
                user: user.to_string(),
                typing: typing
                    .into_iter()
                    .map(|u| (u.key.room.clone(), u.event()))
                    .collect(),
                left,
                offline,
                rooms,
            });
    }
    app.connection_closed(&session.socket_id);
    audit(app, session, "disconnect", json!({ "reason": reason }));
}

/// What the other instances of a cluster must learn about a socket a draining instance drops.
#[derive(Debug)]
pub struct Farewell {
    user: String,
    /// `typing:event`s of the typing entries the socket had, by room.
    typing: Vec<(String, serde_json::Value)>,
    /// Rooms where the user has no socket left anywhere.
    left: Vec<String>,
    /// The user's presence, when this was their last socket anywhere.
    offline: Option<crate::presence::PresenceState>,
    /// The rooms the socket was in (who hears `presence:changed` under scope `rooms`).
    rooms: Vec<String>,
}

/// A draining instance tells the other instances' clients about every user it dropped:
/// typing ended, `user:left`, `presence:changed` offline (sent to their sockets only).
pub async fn farewell(app: &App) {
    let all = std::mem::take(&mut *app.farewells.lock().unwrap_or_else(|e| e.into_inner()));
    if all.is_empty() {
        return;
    }
    tracing::info!(sockets = all.len(), "telling the other instances who left");
    for f in all {
        for (room, event) in &f.typing {
            app.fanout.room_elsewhere(room, "typing:event", event).await;
        }
        for room in &f.left {
            let event = json!({ "roomName": room, "userId": f.user });
            app.fanout.room_elsewhere(room, "user:left", &event).await;
        }
        if let Some(state) = &f.offline {
            app.presence.farewell(state, f.rooms).await;
        }
    }
}
