//! The one place that fixes the order an event goes through:
//!
//! ```text
//! rate limit -> parse + validate -> policy chain -> access rules -> state -> persist -> fan-out -> ack
//! ```
//!
//! The transport hands every event here with its [`Session`] (per-socket state owned by the
//! socket's link task, so no locks) and a [`Conn`] (the socket's own operations). The policy
//! chain stage is where WebAssembly policy modules run; until they are loaded it passes the
//! request through unchanged.

mod handlers;
mod lifecycle;
pub mod payload;
mod policy;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};

pub(crate) use handlers::deliver_message;
pub use lifecycle::{Farewell, farewell, on_connect, on_disconnect};

pub use payload::EventKind;

use crate::app::App;
use crate::auth::Identity;
use crate::error::{EventError, code};
use crate::metrics::{CodeLabel, EventLabel};
use crate::store::{Member, Room, WriteOp};

/// The operations of the socket an event came from.
#[async_trait]
pub trait Conn: Send + Sync {
    /// Socket id.
    fn id(&self) -> &str;
    /// Joins a Socket.IO room.
    fn join(&self, room: &str);
    /// Leaves a Socket.IO room.
    fn leave(&self, room: &str);
    /// Emits to this socket only.
    fn emit(&self, event: &'static str, data: &Value);
    /// Emits to a room, except this socket.
    async fn to_others(&self, room: &str, event: &'static str, data: &Value);
    /// Disconnects this socket from the server side.
    fn disconnect(&self);
}

/// A room the socket has joined, with what the access rules need (read once at join time so
/// that `message:send` needs no database round trip).
#[derive(Debug, Clone)]
pub struct Joined {
    /// The room row at join time.
    pub room: Arc<Room>,
    /// The user's membership row at join time, if any.
    pub member: Option<Arc<Member>>,
}

/// Per-socket state, owned by the socket's link task.
pub struct Session {
    /// Socket id.
    pub socket_id: String,
    /// Who is connected.
    pub identity: Identity,
    /// Remote IP.
    pub ip: Option<String>,
    /// websocket or polling at connect time.
    pub transport: String,
    /// User-Agent header.
    pub user_agent: Option<String>,
    /// `handshake.auth.device`.
    pub device: Option<Value>,
    /// Joined rooms by name.
    pub joined: HashMap<String, Joined>,
    limiter: DefaultDirectRateLimiter,
    strikes: u32,
    /// Budget of malformed events (unknown, unparseable): sustained invalid traffic ends the
    /// connection.
    malformed: DefaultDirectRateLimiter,
    /// Error audit rows this socket may still write now (one a second, a burst of five);
    /// errors past it are counted in `errors_unaudited` and reported with the next row.
    error_audit: DefaultDirectRateLimiter,
    /// Errors not audited one by one since the last audited one.
    pub errors_unaudited: u64,
    /// The server decided to disconnect this socket: later events are dropped.
    pub closing: bool,
    /// The identity as policy modules see it (built on first use, reset on refresh).
    policy_identity: Option<crate::policy::PolicyIdentity>,
    /// The policy decisions of the event being handled (for its audit row).
    policy_trail: Vec<crate::policy::Decision>,
    /// The payload the chain let through for the event being handled, and its room (what
    /// the modules that asked hear of once the server accepted the event).
    policy_handled: Option<(Value, Option<crate::policy::PolicyRoom>)>,
}

impl Session {
    /// A new session with the configured event rate.
    pub fn new(app: &App, socket_id: String, identity: Identity) -> Session {
        let rate = NonZeroU32::new(app.config.event_rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(app.config.event_burst).unwrap_or(NonZeroU32::MIN);
        Session {
            socket_id,
            identity,
            ip: None,
            transport: "websocket".into(),
            user_agent: None,
            device: None,
            joined: HashMap::new(),
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            strikes: 0,
            malformed: RateLimiter::direct(
                Quota::per_second(MALFORMED_PER_SECOND).allow_burst(MALFORMED_BURST),
            ),
            error_audit: RateLimiter::direct(
                Quota::per_second(NonZeroU32::MIN).allow_burst(ERROR_AUDIT_BURST),
            ),
            errors_unaudited: 0,
            closing: false,
            policy_identity: None,
            policy_trail: Vec::new(),
            policy_handled: None,
        }
    }

    /// Replaces the identity (after `auth:refresh`).
    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = identity;
        self.policy_identity = None;
    }

    /// The user id, if authenticated.
    pub fn user_id(&self) -> Option<&str> {
        self.identity.user_id.as_deref()
    }

    /// Spends one event from the socket's budget: every event, known or not, valid or not,
    /// before any work. `Err` is the refusal, with whether the socket keeps exceeding it (a
    /// whole burst refused in a row: disconnect).
    pub fn spend(&mut self, burst: u32) -> Result<(), (EventError, bool)> {
        match self.limiter.check() {
            Ok(()) => {
                self.strikes = 0;
                Ok(())
            }
            Err(not_until) => {
                self.strikes += 1;
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let e = EventError::new(code::RATE_LIMIT_EXCEEDED, "Too many events")
                    .with_details(json!({ "retryAfterMs": wait.as_millis().max(1) as u64 }));
                Err((e, self.strikes > burst.max(10)))
            }
        }
    }

    /// Counts a malformed event (unknown, or refused by validation); true once the socket
    /// has sent them faster than [`MALFORMED_PER_SECOND`] for longer than a burst of
    /// [`MALFORMED_BURST`]: it is disconnected.
    pub fn malformed(&mut self) -> bool {
        self.malformed.check().is_err()
    }
}

/// Malformed events a socket may send per second, sustained, before it is disconnected.
pub const MALFORMED_PER_SECOND: NonZeroU32 = nonzero(10);
/// Malformed events a socket may send at once.
pub const MALFORMED_BURST: NonZeroU32 = nonzero(50);
/// Error audit rows a socket may write at once (then one a second).
const ERROR_AUDIT_BURST: NonZeroU32 = nonzero(5);

const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

/// What the transport should do after an event.
#[derive(Debug)]
pub struct Outcome {
    /// The ack body (`{success, data?}` or `{success:false, error}`).
    pub ack: Value,
    /// The error, when the event failed (sent as an `error` event when there is no ack).
    pub error: Option<EventError>,
    /// Disconnect the socket after answering (sustained abuse).
    pub disconnect: bool,
}

/// Handles one client event end to end and returns what to answer.
pub async fn handle(
    app: &App,
    session: &mut Session,
    conn: &dyn Conn,
    kind: EventKind,
    payload: Value,
) -> Outcome {
    let started = Instant::now();
    let label = EventLabel { event: kind.name() };
    app.metrics.events.get_or_create(&label).inc();
    app.metrics.event_seen();
    session.policy_trail.clear();
    session.policy_handled = None;
    let result = run(app, session, conn, kind, &payload).await;
    let trail = std::mem::take(&mut session.policy_trail);
    app.metrics
        .event_seconds
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    let disconnect =
        matches!(&result, Err(e) if e.code == code::VALIDATION_ERROR) && session.malformed();
    match result {
        Ok((data, audited)) => {
            audit_with(app, session, kind.name(), audited, &trail);
            // The modules that asked hear that the server accepted it (off the event path).
            if let (Some(p), Some((handled, room))) = (&app.policies, session.policy_handled.take())
                && let Some(identity) = &session.policy_identity
            {
                p.accepted(
                    kind.name(),
                    &handled,
                    &session.socket_id,
                    identity,
                    room.as_ref(),
                );
            }
            let ack = match data {
                Some(d) => json!({ "success": true, "data": d }),
                None => json!({ "success": true }),
            };
            Outcome {
                ack,
                error: None,
                disconnect,
            }
        }
        Err(e) => {
            record_error(app, session, kind.name(), &e, &trail);
            Outcome {
                ack: e.ack(),
                error: Some(e),
                disconnect,
            }
        }
    }
}

/// Counts a failed event and audits it, at most one row a second per socket (a burst of
/// five): a flood of bad events must not become a flood of rows. The row after a gap says
/// how many errors went unaudited in between.
pub fn record_error(
    app: &App,
    session: &mut Session,
    event: &str,
    e: &EventError,
    trail: &[crate::policy::Decision],
) {
    app.metrics
        .errors
        .get_or_create(&CodeLabel {
            code: e.code.to_string(),
        })
        .inc();
    if !app.config.log_events || !app.config.log_event_types.includes("error") {
        return;
    }
    if session.error_audit.check().is_err() {
        session.errors_unaudited += 1;
        return;
    }
    let mut payload = json!({"event": event, "code": e.code, "message": e.message});
    if session.errors_unaudited > 0 {
        payload["unaudited"] = json!(std::mem::take(&mut session.errors_unaudited));
    }
    audit_with(app, session, "error", payload, trail);
}

async fn run(
    app: &App,
    session: &mut Session,
    conn: &dyn Conn,
    kind: EventKind,
    payload: &Value,
) -> Result<(Option<Value>, Value), EventError> {
    // 1. parse + validate
    let limits = payload::Limits {
        max_message_length: app.config.max_message_length,
        max_metadata_bytes: app.config.max_metadata_bytes,
        max_metadata_depth: app.config.max_metadata_depth,
    };
    // (2. the rate limit was spent by the link before anything else, see `Session::spend`.)
    let mut request = payload::parse(kind, payload, limits)?;
    // 3. policy chain: WebAssembly policy modules may reject or rewrite.
    if let Some(ext) = &app.policies
        && (ext.wants(kind.name()) || ext.wants_accepted(kind.name()))
    {
        request = policy::apply(app, ext, session, kind, payload, request, limits).await?;
    }
    // What the audit row keeps: the request as it is handled (a module's rewrite included).
    let audited = request.audit();
    // 4-8. access rules, state, persist, fan-out: per request.
    let data = handlers::dispatch(app, session, conn, request).await?;
    Ok((data, audited))
}

/// Writes an audit row when the event type is logged.
pub(crate) fn audit(app: &App, session: &Session, event_type: &str, payload: Value) {
    audit_with(app, session, event_type, payload, &[]);
}

/// Writes an audit row with the policy decisions that led to it.
fn audit_with(
    app: &App,
    session: &Session,
    event_type: &str,
    payload: Value,
    trail: &[crate::policy::Decision],
) {
    if !app.config.log_events || !app.config.log_event_types.includes(event_type) {
        return;
    }
    let metadata = (!trail.is_empty()).then(|| json!({ "policy": trail }));
    let room_id = payload
        .get("roomName")
        .and_then(Value::as_str)
        .and_then(|r| session.joined.get(r))
        .map(|j| j.room.id.clone());
    app.writer.write(WriteOp::Event {
        id: uuid::Uuid::now_v7(),
        event_type: event_type.to_string(),
        socket_id: Some(session.socket_id.clone()),
        user_id: session.identity.user_id.clone(),
        room_id,
        payload,
        ip: session.ip.clone(),
        metadata,
        at: Utc::now(),
    });
}
