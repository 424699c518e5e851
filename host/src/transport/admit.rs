//! The connect middleware. It runs before the connect reply is sent, so everything a socket
//! needs (identity, handlers, link) exists before the client can emit its first event: the
//! original (and a plain socketioxide connect handler, which is spawned after the reply) could
//! drop an event emitted right after connect.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use super::link;
use crate::app::App;
use crate::auth::AuthError;
use crate::metrics::ReasonLabel;
use crate::pipeline::Session;

/// Why a connection was refused; the text is the client's `connect_error` message.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Token missing or invalid.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// `REALTIME_MAX_CONNECTIONS` reached.
    #[error("Server at capacity")]
    Capacity,
    /// `REALTIME_RATE_LIMIT` reached for this IP.
    #[error("Too many connections")]
    TooMany,
    /// The server is draining.
    #[error("Server shutting down")]
    ShuttingDown,
    /// A policy module refused the connection (its message).
    #[error("{0}")]
    Policy(String),
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Auth(AuthError::Required) => "auth_required",
            Refusal::Auth(AuthError::Invalid) => "invalid_token",
            Refusal::Capacity => "capacity",
            Refusal::TooMany => "rate_limit",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Policy(_) => "policy",
        }
    }
}

fn peer_ip<A: Adapter>(s: &SocketRef<A>) -> Option<IpAddr> {
    s.req_parts()
        .extensions
        .get::<ConnectInfo<super::PeerAddr>>()
        .map(|c| c.0.0.ip())
}

/// The token from `auth.token`, else from an `Authorization: Bearer` header.
fn token<A: Adapter>(s: &SocketRef<A>, auth: Option<&Value>) -> Option<String> {
    if let Some(t) = auth.and_then(|a| a.get("token")).and_then(Value::as_str) {
        return Some(t.to_string());
    }
    let header = s.req_parts().headers.get(http::header::AUTHORIZATION)?;
    let value = header.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Admits or refuses a socket; on success its handlers and link are in place.
pub async fn admit<A: Adapter>(
    app: Arc<App>,
    s: SocketRef<A>,
    auth: Option<Value>,
) -> Result<(), Refusal> {
    // The session reached the namespace: it is no longer pending (admitted or refused).
    if let Some(p) = s.req_parts().extensions.get::<super::PendingConnect>() {
        p.release();
    }
    let ip = peer_ip(&s);
    let result = if app.is_draining() {
        Err(Refusal::ShuttingDown)
    } else if let Some(ip) = ip
        && !app.connection_rate.allow(ip).await
    {
        Err(Refusal::TooMany)
    } else {
        check(&app, &s, auth.as_ref())
    };
    let (identity, slot, ip) = match result {
        Ok(ok) => ok,
        Err(refusal) => {
            app.metrics
                .connections_refused
                .get_or_create(&ReasonLabel {
                    reason: refusal.label(),
                })
                .inc();
            tracing::info!(peer = ?ip, reason = refusal.label(), message = %refusal, "connection refused");
            return Err(refusal);
        }
    };
    let mut session = Session::new(&app, s.id.to_string(), identity);
    session.ip = ip.map(|ip| ip.to_string());
    session.transport = match s.transport_type() {
        socketioxide::TransportType::Websocket => "websocket".into(),
        socketioxide::TransportType::Polling => "polling".into(),
    };
    session.user_agent = s
        .req_parts()
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(512).collect());
    session.device = auth
        .as_ref()
        .and_then(|a| a.get("device"))
        .filter(|d| d.is_object() && d.to_string().len() <= 4096)
        .cloned();
    link::attach(app, &s, session, slot);
    Ok(())
}

fn check<A: Adapter>(
    app: &Arc<App>,
    s: &SocketRef<A>,
    auth: Option<&Value>,
) -> Result<(crate::auth::Identity, crate::app::Slot, Option<IpAddr>), Refusal> {
    let ip = peer_ip(s);
    let identity = app.auth.authenticate(token(s, auth).as_deref())?;
    check_policy(app, s, auth, &identity)?;
    let slot = app.acquire_slot().ok_or(Refusal::Capacity)?;
    Ok((identity, slot, ip))
}

/// The `connect` event through the policy chain: payload = the handshake auth without the token.
fn check_policy<A: Adapter>(
    app: &App,
    s: &SocketRef<A>,
    auth: Option<&Value>,
    identity: &crate::auth::Identity,
) -> Result<(), Refusal> {
    let Some(ext) = &app.policies else {
        return Ok(());
    };
    if !ext.wants("connect") {
        return Ok(());
    }
    let mut payload = match auth {
        Some(Value::Object(map)) => Value::Object(map.clone()),
        _ => Value::Object(Default::default()),
    };
    if let Some(map) = payload.as_object_mut() {
        map.remove("token");
    }
    let who = crate::policy::PolicyIdentity::new(identity);
    match ext.run("connect", &payload, s.id.as_str(), &who, None) {
        crate::policy::ChainResult::Reject { error, .. } => {
            Err(Refusal::Policy(error.message.into_owned()))
        }
        crate::policy::ChainResult::Pass { .. } => Ok(()),
    }
}
