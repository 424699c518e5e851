//! A socket's link: its inbox and the task that owns its [`Session`].
//!
//! socketioxide spawns a task per incoming event, so two events of one socket may run out of
//! order (a `message:send` could overtake the `room:join` before it). Here every event handler
//! is an [`Inbox`] that only pushes the event onto the socket's bounded queue, synchronously,
//! in arrival order; the link task handles them one at a time, as Node.js does. The queue is
//! bounded: when a client floods faster than it is served, the excess is refused with
//! `RATE_LIMIT_EXCEEDED` at once.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler};
use socketioxide::socket::{DisconnectReason, Socket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Slot};
use crate::error::{EventError, code};
use crate::pipeline::{self, Conn, EventKind, Session};
use crate::rooms::user_room;

/// Events a socket may have queued before new ones are refused.
const INBOX: usize = 64;

enum Inbound<A: Adapter> {
    Event {
        kind: Option<EventKind>,
        payload: Value,
        ack: Option<AckSender<A>>,
    },
    Disconnect(&'static str),
}

/// Opened by the connect handler once the connect reply is out; the link waits for it before
/// it emits anything (socketioxide refuses emits on a socket not yet connected).
#[derive(Clone)]
struct Gate(CancellationToken);

/// The one event handler of a socket (socketioxide's fallback: a per-socket map of named
/// handlers cost about 1 KiB per socket): it names the event and queues it for the link.
struct Inbox<A: Adapter> {
    /// Events this server handles (typing and presence can be switched off).
    known: &'static [EventKind],
    tx: mpsc::Sender<Box<Inbound<A>>>,
}

impl<A: Adapter> MessageHandler<A, ()> for Inbox<A> {
    fn call(&self, s: Arc<Socket<A>>, mut v: socketioxide_core::Value, ack_id: Option<i64>) {
        let kind = socketioxide::extract::Event::from_message_parts(&s, &mut v, &ack_id)
            .ok()
            .and_then(|e| self.known.iter().copied().find(|k| k.name() == e.0));
        let payload = match TryData::<Value>::from_message_parts(&s, &mut v, &ack_id) {
            Ok(TryData(Ok(p))) => p,
            _ => Value::Null,
        };
        let ack = match ack_id {
            Some(_) => AckSender::from_message_parts(&s, &mut v, &ack_id).ok(),
            None => None,
        };
        let item = Box::new(Inbound::Event { kind, payload, ack });
        if let Err(mpsc::error::TrySendError::Full(item)) = self.tx.try_send(item)
            && let Inbound::Event { ack, .. } = *item
        {
            let e = EventError::new(code::RATE_LIMIT_EXCEEDED, "Too many events in flight")
                .with_details(json!({ "retryAfterMs": 100 }));
            match ack {
                Some(ack) => {
                    let _ = ack.send(&e.ack());
                }
                None => {
                    let _ = SocketRef::from(s).emit("error", &e);
                }
            }
        }
    }
}

/// Registers the socket's handlers, joins its user room and spawns its link task.
pub fn attach<A: Adapter>(app: Arc<App>, s: &SocketRef<A>, session: Session, slot: Slot) {
    let (tx, rx) = mpsc::channel(INBOX);
    s.on_fallback(Inbox {
        known: known_events(&app.config),
        tx: tx.clone(),
    });
    s.on_disconnect(move |reason: DisconnectReason| {
        let tx = tx.clone();
        async move {
            let _ = tx
                .send(Box::new(Inbound::Disconnect(reason_text(reason))))
                .await;
        }
    });
    if let Some(user) = session.user_id() {
        s.join(user_room(user));
    }
    if app.cluster.is_some() {
        // Lets a draining instance address the other instances' sockets only.
        s.join(crate::cluster::node_room(&app.node_id));
    }
    // The user's memberships are read now, while the client reads its connect reply: its
    // first join finds them in memory.
    let hold = session.user_id().map(|u| UserHold::new(&app, u));
    let gate = CancellationToken::new();
    s.extensions.insert(Gate(gate.clone()));
    let links = app.links.clone();
    links.spawn(run(app, s.clone(), session, rx, gate, (slot, hold)));
}

/// Keeps a connected user's memberships in the directory while the link lives.
struct UserHold {
    app: Arc<App>,
    user: String,
}

impl UserHold {
    fn new(app: &Arc<App>, user: &str) -> UserHold {
        app.directory.user_connected(user);
        UserHold {
            app: app.clone(),
            user: user.to_string(),
        }
    }
}

impl Drop for UserHold {
    fn drop(&mut self) {
        self.app.directory.user_disconnected(&self.user);
    }
}

/// The events handled under `config` (one list per combination, built once).
fn known_events(config: &crate::config::Config) -> &'static [EventKind] {
    use std::sync::OnceLock;
    static LISTS: [OnceLock<Vec<EventKind>>; 4] = [const { OnceLock::new() }; 4];
    let (typing, presence) = (config.enable_typing, config.enable_presence);
    let slot = usize::from(typing) * 2 + usize::from(presence);
    LISTS[slot].get_or_init(|| {
        EventKind::ALL
            .into_iter()
            .filter(|k| match k {
                EventKind::TypingStart | EventKind::TypingStop => typing,
                EventKind::PresenceUpdate => presence,
                _ => true,
            })
            .collect()
    })
}

/// Called by the connect handler: the connect reply is out, the link may start.
pub fn open<A: Adapter>(s: &SocketRef<A>) {
    if let Some(Gate(gate)) = s.extensions.get::<Gate>() {
        gate.cancel();
    }
}

fn reason_text(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport close",
        DisconnectReason::MultipleHttpPollingError => "multiple http polling error",
        DisconnectReason::PacketParsingError => "parse error",
        DisconnectReason::TransportError => "transport error",
        DisconnectReason::HeartbeatTimeout => "ping timeout",
        DisconnectReason::ClientNSDisconnect => "client namespace disconnect",
        DisconnectReason::ServerNSDisconnect => "server namespace disconnect",
        DisconnectReason::ClosingServer => "server shutting down",
    }
}

struct SocketConn<A: Adapter>(SocketRef<A>);

#[async_trait::async_trait]
impl<A: Adapter> Conn for SocketConn<A> {
    fn id(&self) -> &str {
        self.0.id.as_str()
    }
    fn join(&self, room: &str) {
        self.0.join(room.to_string());
    }
    fn leave(&self, room: &str) {
        self.0.leave(room.to_string());
    }
    fn emit(&self, event: &'static str, data: &Value) {
        if let Err(e) = self.0.emit(event, data) {
            tracing::debug!(socket = %self.0.id, event, error = %e, "emit failed");
        }
    }
    async fn to_others(&self, room: &str, event: &'static str, data: &Value) {
        if let Err(e) = self.0.to(room.to_string()).emit(event, data).await {
            tracing::debug!(event, error = %e, "broadcast incomplete");
        }
    }
    fn disconnect(&self) {
        let _ = self.0.clone().disconnect();
    }
}

fn expiry_deadline(session: &Session, leeway: u64) -> Option<tokio::time::Instant> {
    let exp = session.identity.expires_at?;
    let at = exp.saturating_add(i64::try_from(leeway).unwrap_or(i64::MAX));
    let left = at.saturating_sub(chrono::Utc::now().timestamp()).max(0) as u64;
    Some(tokio::time::Instant::now() + std::time::Duration::from_secs(left))
}

async fn run<A: Adapter>(
    app: Arc<App>,
    socket: SocketRef<A>,
    mut session: Session,
    mut rx: mpsc::Receiver<Box<Inbound<A>>>,
    gate: CancellationToken,
    _held: (Slot, Option<UserHold>),
) {
    if tokio::time::timeout(app.config.connect_timeout, gate.cancelled())
        .await
        .is_err()
    {
        return;
    }
    let conn = SocketConn(socket.clone());
    let authed = session.identity.is_authenticated();
    app.metrics.connections_total.inc();
    app.metrics.connections_active.inc();
    if authed {
        app.metrics.connections_authenticated.inc();
    }
    // The connect, event and disconnect futures are boxed: the link task of an idle socket
    // then keeps only its waiting state, not room for the largest handler (measured: the
    // task's allocation was 3.3 KiB per socket).
    Box::pin(pipeline::on_connect(&app, &session, &conn)).await;
    let leeway = app.config.jwt_leeway_seconds;
    let mut expired = false;
    let reason = loop {
        let deadline = if expired {
            None
        } else {
            expiry_deadline(&session, leeway)
        };
        let item = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = app.draining.cancelled() => break "server shutting down",
            _ = sleep_until(deadline) => {
                expired = true;
                let e = EventError::new(code::TOKEN_EXPIRED, "Token expired");
                pipeline::audit(&app, &session, "error", json!({"code": e.code}));
                conn.emit("error", &serde_json::to_value(&e).unwrap_or_default());
                conn.disconnect();
                continue;
            }
        };
        let Some(item) = item else {
            break "transport close";
        };
        match *item {
            Inbound::Disconnect(reason) => break reason,
            Inbound::Event { kind, payload, ack } => {
                Box::pin(handle(&app, &mut session, &conn, kind, payload, ack)).await;
            }
        }
    };
    Box::pin(pipeline::on_disconnect(&app, &session, reason)).await;
    if reason == "client namespace disconnect" {
        // The client left the only namespace: its engine session has nothing left to carry,
        // yet would live on as long as it answers pings. Its connection ends here.
        if let Some(kill) = socket.req_parts().extensions.get::<super::KillSwitch>() {
            kill.kill();
        }
    }
    app.metrics.connections_active.dec();
    if authed {
        app.metrics.connections_authenticated.dec();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn handle<A: Adapter>(
    app: &App,
    session: &mut Session,
    conn: &SocketConn<A>,
    kind: Option<EventKind>,
    payload: Value,
    ack: Option<AckSender<A>>,
) {
    if session.closing {
        // Queued before the decision to disconnect: not handled, not answered.
        return;
    }
    let answer = |error: &EventError, ack: Option<AckSender<A>>| match ack {
        Some(ack) => {
            if let Err(e) = ack.send(&error.ack()) {
                tracing::debug!(error = %e, "ack not sent");
            }
        }
        None => conn.emit("error", &serde_json::to_value(error).unwrap_or_default()),
    };
    // Every event, known or not, valid or not, spends from the socket's budget first.
    if let Err((e, abusive)) = session.spend(app.config.event_burst) {
        let name = kind.map_or("unknown", EventKind::name);
        pipeline::record_error(app, session, name, &e, &[]);
        answer(&e, ack);
        if abusive {
            close(session, conn, "keeps exceeding its rate limit");
        }
        return;
    }
    let Some(kind) = kind else {
        // Unknown events are ignored, as the original did; an ack still gets its one answer.
        // They count as malformed: a socket that keeps sending them is disconnected.
        let e = EventError::new(code::VALIDATION_ERROR, "Unknown event");
        app.metrics
            .errors
            .get_or_create(&crate::metrics::CodeLabel {
                code: e.code.to_string(),
            })
            .inc();
        if let Some(ack) = ack {
            let _ = ack.send(&e.ack());
        }
        if session.malformed() {
            close(session, conn, "keeps sending malformed events");
        }
        return;
    };
    let out = pipeline::handle(app, session, conn, kind, payload).await;
    match (ack, &out.error) {
        (Some(ack), _) => {
            if let Err(e) = ack.send(&out.ack) {
                tracing::debug!(socket = %session.socket_id, error = %e, "ack not sent");
            }
        }
        (None, Some(e)) => conn.emit("error", &serde_json::to_value(e).unwrap_or_default()),
        (None, None) => {}
    }
    if out.disconnect {
        close(session, conn, "keeps sending malformed events");
    }
}

/// Disconnects an abusive socket once (one log line); its queued events are dropped.
fn close<A: Adapter>(session: &mut Session, conn: &SocketConn<A>, why: &'static str) {
    if session.closing {
        return;
    }
    session.closing = true;
    tracing::info!(socket = %session.socket_id, ip = ?session.ip, "disconnecting a socket that {why}");
    conn.disconnect();
}
