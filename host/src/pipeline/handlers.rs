//! Stages 4-8 per request: access rules, state, persist (behind), fan-out; returns ack data.

use chrono::Utc;
use serde_json::{Value, json};

use super::payload::{MessageSend, Request};
use super::{Conn, Joined, Session};
use crate::app::App;
use crate::dedupe::Sent;
use crate::error::{EventError, code};
use crate::history::{Catchup, Page, Position};

use crate::rooms;
use crate::store::WriteOp;
use crate::store::cache::JoinError;
use crate::typing::TypingKey;
use crate::util::{iso, now_ms};

pub(super) async fn dispatch(
    app: &App,
    session: &mut Session,
    conn: &dyn Conn,
    request: Request,
) -> Result<Option<Value>, EventError> {
    // The user did something: an automatic `away` ends.
    if matches!(
        request,
        Request::Join { .. }
            | Request::Leave { .. }
            | Request::Send(_)
            | Request::Typing { start: true, .. }
    ) && let Some(user) = session.user_id()
    {
        app.presence.active(user).await;
    }
    match request {
        Request::Join { room, since } => join(app, session, conn, room, since).await.map(Some),
        Request::History { room, page, limit } => {
            history(app, session, room, page, limit).await.map(Some)
        }
        Request::Leave { room } => leave(app, session, conn, room).await.map(|_| None),
        Request::Send(msg) => send(app, session, msg).await.map(Some),
        Request::Typing {
            room,
            thread,
            start,
        } => typing(app, session, conn, room, thread, start)
            .await
            .map(|_| None),
        Request::Presence { status, custom } => {
            let user = session.user_id().ok_or_else(|| {
                EventError::new(
                    code::VALIDATION_ERROR,
                    "Anonymous connections have no presence",
                )
            })?;
            app.presence.update(user, status, custom).await;
            Ok(None)
        }
        Request::Ping => {
            conn.emit("pong", &json!({ "timestamp": now_ms() }));
            app.writer.write(WriteOp::Ping {
                socket_id: session.socket_id.clone(),
                at: Utc::now(),
            });
            Ok(None)
        }
        Request::Pong { timestamp } => {
            let latency = (now_ms() - timestamp).clamp(0, i64::from(i32::MAX)) as i32;
            app.writer.write(WriteOp::Pong {
                socket_id: session.socket_id.clone(),
                latency_ms: latency,
                at: Utc::now(),
            });
            Ok(None)
        }
        Request::Refresh { token } => {
            let fresh = app.auth.verify(&token).map_err(|_| {
                EventError::new(code::VALIDATION_ERROR, "Invalid token")
                    .with_details(json!({"field": "token"}))
            })?;
            if fresh.user_id != session.identity.user_id {
                return Err(EventError::new(
                    code::VALIDATION_ERROR,
                    "Token belongs to another user",
                )
                .with_details(json!({"field": "token"})));
            }
            session.set_identity(fresh);
            Ok(None)
        }
    }
}

/// How long a client is told to wait before retrying an event the server could not answer.
const RETRY_AFTER_MS: u64 = 1000;

/// The directory could not answer (the database did not, in time): nothing changed.
fn directory_unavailable() -> EventError {
    EventError::unavailable("Rooms cannot be read right now; try again", RETRY_AFTER_MS)
}

async fn join(
    app: &App,
    session: &mut Session,
    conn: &dyn Conn,
    name: String,
    since: Option<Position>,
) -> Result<Value, EventError> {
    if app.fanout.is_socket_id(&name) {
        return Err(EventError::validation("roomName", "cannot be a socket id"));
    }
    let dir = &app.directory;
    // Both from memory in the common case: the room table is read in bulk at start and the
    // user's memberships when the user connected.
    let room = dir
        .room(&name)
        .await
        .map_err(|_| directory_unavailable())?
        .filter(|r| r.is_active)
        .ok_or_else(EventError::room_not_found)?;
    let identity = &session.identity;
    let check = |member: Option<&crate::store::Member>, count| {
        rooms::check_join(&room, member, identity, count)
    };
    let joined = match session.user_id() {
        Some(u) => match dir.memberships(u).await {
            Ok(()) => dir.join(&room.id, Some(u), check),
            // The database does not answer and this user's memberships were never read: an
            // open room without sanctions can still be joined (no membership could change
            // the answer); anything else is retried later.
            Err(_) => dir.join_unread(&room.id, u, check),
        },
        None => dir.join(&room.id, None, check),
    }
    .map_err(|e| match e {
        JoinError::Refused(e) => e,
        JoinError::Unavailable => directory_unavailable(),
    })?;
    if let Some(u) = session.user_id() {
        let (room_id, user_id, at) = (room.id.clone(), u.to_string(), Utc::now());
        app.writer.write(if joined.created {
            WriteOp::MemberJoin {
                room_id,
                user_id,
                at,
            }
        } else {
            WriteOp::MemberSeen {
                room_id,
                user_id,
                at,
            }
        });
    }
    let newly = !session.joined.contains_key(&name);
    // A room with history: the missed messages (after `since`) reach the socket before it
    // joins, in the room's order, so none is lost or doubled at the seam.
    let mut answer = json!({ "roomName": name, "memberCount": joined.count });
    match crate::history::settings(&app.config, &room) {
        Some(settings) => {
            let mut deliver = |found: &Catchup| {
                if let Catchup::Recovered(missed) = found {
                    for m in missed {
                        conn.emit("message:new", m);
                    }
                }
                conn.join(&name);
            };
            match app
                .history
                .catch_up(&name, settings, since.as_ref(), &mut deliver)
                .await
            {
                Ok((found, position)) => {
                    answer["position"] = json!(position);
                    if since.is_some() {
                        answer["recovered"] = json!(matches!(found, Catchup::Recovered(_)));
                    }
                }
                Err(e) => {
                    // History cannot be read (Redis or the database is down): the join works
                    // as in a room without history, and says nothing was recovered.
                    tracing::warn!(room = %name, error = %e, "catch-up unavailable: joined without it");
                    conn.join(&name);
                    if since.is_some() {
                        answer["recovered"] = json!(false);
                    }
                }
            }
        }
        None => {
            conn.join(&name);
            if since.is_some() {
                answer["recovered"] = json!(false);
            }
        }
    }
    if newly && let Some(u) = session.user_id() {
        app.room_sockets.joined(u, &name).await;
    }
    let user_id = session.identity.user_id.clone();
    session.joined.insert(
        name.clone(),
        Joined {
            room,
            member: joined.member,
        },
    );
    // A socket already in the room is not announced again.
    if newly {
        conn.to_others(
            &name,
            "user:joined",
            &json!({ "roomName": name, "userId": user_id }),
        )
        .await;
    }
    Ok(answer)
}

/// `message:history`: a page of a room's history, for a socket in the room or a user the
/// room would admit (the same access rules as a join).
async fn history(
    app: &App,
    session: &Session,
    name: String,
    page: Page,
    limit: usize,
) -> Result<Value, EventError> {
    let room = match session.joined.get(&name) {
        Some(j) => match app.directory.room_now(&name) {
            Some(Some(r)) if r.id == j.room.id => r,
            _ => j.room.clone(),
        },
        None => {
            let room = app
                .directory
                .room(&name)
                .await
                .map_err(|_| directory_unavailable())?
                .filter(|r| r.is_active)
                .ok_or_else(EventError::room_not_found)?;
            let member = match session.user_id() {
                Some(u) => {
                    app.directory
                        .memberships(u)
                        .await
                        .map_err(|_| directory_unavailable())?;
                    app.directory.member_now(&room.id, u).flatten()
                }
                None => None,
            };
            let count = app.directory.count(&room.id);
            rooms::check_join(&room, member.as_deref(), &session.identity, count)?;
            room
        }
    };
    if !room.is_active {
        return Err(EventError::room_not_found());
    }
    let Some(settings) = crate::history::settings(&app.config, &room) else {
        return Ok(json!({ "roomName": name, "messages": [], "position": null }));
    };
    let (messages, position) = app
        .history
        .page(&name, settings, page, limit)
        .await
        .map_err(|e| {
            tracing::warn!(room = %name, error = %e, "history page failed");
            EventError::unavailable(
                "History cannot be read right now; try again",
                RETRY_AFTER_MS,
            )
        })?;
    Ok(json!({ "roomName": name, "messages": messages, "position": position }))
}

async fn leave(
    app: &App,
    session: &mut Session,
    conn: &dyn Conn,
    name: String,
) -> Result<(), EventError> {
    // Only a socket in the room can leave it: anything else would let a stranger announce
    // departures in a room they were never admitted to.
    let Some(joined) = session.joined.remove(&name) else {
        return Err(not_in_room(app, session, &name).await);
    };
    conn.leave(&name);
    if let Some(u) = session.user_id() {
        app.room_sockets.left(u, std::slice::from_ref(&name)).await;
    }
    if let Some(user) = session.user_id() {
        let dir = &app.directory;
        let room = match dir.room_now(&name) {
            Some(Some(r)) if r.id == joined.room.id => r,
            _ => joined.room.clone(),
        };
        let member = dir
            .member_now(&room.id, user)
            .unwrap_or_else(|| joined.member.clone());
        if rooms::leave_deletes_membership(&room, member.as_deref()) && dir.leave(&room.id, user) {
            app.writer.write(WriteOp::MemberLeave {
                room_id: room.id.clone(),
                user_id: user.to_string(),
            });
        }
    }
    conn.to_others(
        &name,
        "user:left",
        &json!({ "roomName": name, "userId": session.identity.user_id }),
    )
    .await;
    Ok(())
}

/// The answer to leaving a room this socket is not in: `ROOM_NOT_FOUND` for a room that does
/// not exist (or that this user may not know of), else `NOT_IN_ROOM`.
async fn not_in_room(app: &App, session: &Session, name: &str) -> EventError {
    let not_in = || EventError::new(code::NOT_IN_ROOM, "You are not in this room");
    let dir = &app.directory;
    let room = match dir.room(name).await {
        Ok(Some(r)) if r.is_active => r,
        Ok(_) => return EventError::room_not_found(),
        Err(_) => return not_in(),
    };
    if room.visibility == crate::store::Visibility::Secret {
        let member = match session.user_id() {
            Some(u) => {
                let _ = dir.memberships(u).await;
                dir.member_now(&room.id, u).flatten()
            }
            None => None,
        };
        if member.is_none() {
            return EventError::room_not_found();
        }
    }
    not_in()
}

async fn send(app: &App, session: &mut Session, msg: MessageSend) -> Result<Value, EventError> {
    let joined = session
        .joined
        .get(&msg.room)
        .ok_or_else(|| EventError::new(code::NOT_IN_ROOM, "Join the room before sending to it"))?;
    // The current rows from the cache (no database round trip): a room closed or a member
    // muted after the join takes effect.
    let room = match app.directory.room_now(&msg.room) {
        Some(Some(r)) if r.id == joined.room.id => r,
        Some(_) => return Err(EventError::room_not_found()),
        None => joined.room.clone(),
    };
    if !room.is_active {
        return Err(EventError::room_not_found());
    }
    let member = match session.user_id() {
        Some(u) => app
            .directory
            .member_now(&room.id, u)
            .unwrap_or_else(|| joined.member.clone()),
        None => None,
    };
    rooms::check_send(&room, member.as_deref())?;
    let author = session.identity.user_id.clone();
    Ok(deliver_message(app, author.as_deref(), msg).await)
}

/// Sends `message:new` to the room with a new messageId and timestamp (or, for a
/// `clientMessageId` the author used before, answers the first result again without a second
/// delivery); returns `{messageId, timestamp}`. The caller checked that the author may send.
pub(crate) async fn deliver_message(app: &App, author: Option<&str>, msg: MessageSend) -> Value {
    let dedupe_key = author.zip(msg.client_message_id.as_deref());
    if let Some((user, cid)) = dedupe_key
        && let Some(sent) = app.dedupe.get(user, cid)
    {
        return json!({ "messageId": sent.message_id, "timestamp": sent.timestamp });
    }
    let message_id = uuid::Uuid::now_v7().to_string();
    let timestamp = iso(Utc::now());
    let event = json!({
        "roomName": msg.room,
        "userId": author,
        "content": msg.content,
        "threadId": msg.thread,
        "timestamp": timestamp,
        "metadata": msg.metadata,
        "messageId": message_id,
    });
    if let Some((user, cid)) = dedupe_key {
        let sent = Sent {
            message_id: message_id.clone(),
            timestamp: timestamp.clone(),
        };
        // Scaled out, the id is claimed cluster-wide: a retry on another instance gets the
        // first result, not a second delivery.
        if let Some(first) = app
            .claims
            .claim(user, cid, &sent, crate::dedupe::DEDUPE_TTL)
            .await
        {
            app.dedupe.put(user, cid, first.clone());
            return json!({ "messageId": first.message_id, "timestamp": first.timestamp });
        }
        app.dedupe.put(user, cid, sent);
    }
    let history = match app.directory.room_now(&msg.room) {
        Some(Some(room)) => crate::history::settings(&app.config, &room),
        _ => None,
    };
    let mut ack = json!({ "messageId": message_id, "timestamp": timestamp });
    match history {
        Some(settings) => match app
            .history
            .publish(&msg.room, settings, event.clone())
            .await
        {
            Ok(position) => {
                ack["offset"] = json!(position.offset);
                ack["epoch"] = json!(position.epoch);
            }
            Err(e) => {
                // Delivered without a position rather than not at all.
                tracing::warn!(room = %msg.room, error = %e, "history unavailable: message sent without a position");
                app.fanout
                    .room(&msg.room, None, "message:new", &event)
                    .await;
            }
        },
        None => {
            app.fanout
                .room(&msg.room, None, "message:new", &event)
                .await
        }
    }
    app.metrics.messages.inc();
    ack
}

async fn typing(
    app: &App,
    session: &mut Session,
    conn: &dyn Conn,
    room: String,
    thread: Option<String>,
    start: bool,
) -> Result<(), EventError> {
    let joined = session
        .joined
        .get(&room)
        .ok_or_else(|| EventError::new(code::NOT_IN_ROOM, "Join the room before typing in it"))?;
    let user = session.user_id().ok_or_else(|| {
        EventError::new(
            code::ROOM_ACCESS_DENIED,
            "Anonymous connections cannot send typing indicators",
        )
    })?;
    let room_id = joined.room.id.clone();
    let key = TypingKey {
        room: room.clone(),
        thread: thread.clone(),
    };
    let update = if start {
        let ttl = chrono::Duration::from_std(app.config.typing_timeout)
            .unwrap_or(chrono::Duration::seconds(3));
        let u = app.typing.start(key, user, &session.socket_id, ttl).await;
        let now = Utc::now();
        app.writer.write(WriteOp::TypingSet {
            room_id,
            user_id: user.to_string(),
            thread_id: thread,
            started_at: now,
            expires_at: now + ttl,
        });
        u
    } else {
        let u = app.typing.stop(key, user).await;
        app.writer.write(WriteOp::TypingClear {
            room_id,
            user_id: user.to_string(),
            thread_id: thread,
        });
        u
    };
    conn.to_others(&room, "typing:event", &update.event()).await;
    Ok(())
}
