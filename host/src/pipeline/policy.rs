//! Stage 3: the policy chain. Builds what the modules see (payload, sender, targeted room),
//! runs the chain, and turns a rewrite back into a validated request: a module can change what
//! a client sent, never bypass the parsing or the access rules that follow.

use serde_json::{Value, json};

use super::Session;
use super::payload::{self, EventKind, Limits, Request};
use crate::app::App;
use crate::error::{EventError, code};
use crate::policy::{ChainResult, Policies, PolicyIdentity, PolicyRoom};

/// Runs the chain; returns the (possibly rewritten) request or the refusal.
pub(super) async fn apply(
    app: &App,
    ext: &Policies,
    session: &mut Session,
    kind: EventKind,
    payload: &Value,
    request: Request,
    limits: Limits,
) -> Result<Request, EventError> {
    let room = room_of(app, session, &request).await;
    let identity = session
        .policy_identity
        .get_or_insert_with(|| PolicyIdentity::new(&session.identity))
        .clone();
    let result = ext.run(
        kind.name(),
        payload,
        &session.socket_id,
        &identity,
        room.as_ref(),
    );
    match result {
        ChainResult::Pass {
            payload: None,
            decisions,
        } => {
            session.policy_trail = decisions;
            session.policy_handled = Some((payload.clone(), room));
            Ok(request)
        }
        ChainResult::Pass {
            payload: Some(rewritten),
            decisions,
        } => {
            let module = decisions
                .iter()
                .rev()
                .find(|d| {
                    d.verdict == crate::policy::VerdictKind::Modify
                        && d.mode == crate::policy::Mode::Enforce
                })
                .map(|d| d.module.clone())
                .unwrap_or_default();
            session.policy_trail = decisions;
            let parsed = payload::parse(kind, &rewritten, limits);
            session.policy_handled = Some((rewritten, room));
            parsed.map_err(|e| {
                EventError::new(
                    code::POLICY_REJECTED,
                    format!("Policy {module} produced an invalid payload"),
                )
                .with_details(json!({ "plugin": module, "reason": e.message }))
            })
        }
        ChainResult::Reject { error, decisions } => {
            session.policy_trail = decisions;
            Err(error)
        }
    }
}

/// The room the request targets, as policy modules see it: from the socket's joined rooms
/// when it can be, from the store for a join.
async fn room_of(app: &App, session: &Session, request: &Request) -> Option<PolicyRoom> {
    let name = match request {
        Request::Join { room, .. }
        | Request::Leave { room }
        | Request::Typing { room, .. }
        | Request::History { room, .. } => room,
        Request::Send(m) => &m.room,
        _ => return None,
    };
    if let Some(j) = session.joined.get(name) {
        return Some(PolicyRoom {
            name: name.clone(),
            room_type: j.room.room_type.to_string(),
            visibility: j.room.visibility.to_string(),
            member_role: j.member.as_ref().map(|m| m.role.to_string()),
        });
    }
    let dir = &app.directory;
    let room = dir.room(name).await.ok().flatten()?;
    let member_role = match session.user_id() {
        Some(u) => {
            let _ = dir.memberships(u).await;
            dir.member_now(&room.id, u)
                .flatten()
                .map(|m| m.role.to_string())
        }
        None => None,
    };
    Some(PolicyRoom {
        name: name.clone(),
        room_type: room.room_type.to_string(),
        visibility: room.visibility.to_string(),
        member_role,
    })
}
