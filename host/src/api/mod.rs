//! The server API (`/api/...`, on when `REALTIME_API_KEY` is set): what backends call to push
//! to clients and to see and act on the live state, cluster-wide. Every route needs
//! `Authorization: Bearer <REALTIME_API_KEY>`. Answers use the ack shape of the socket
//! protocol: `{success: true, data}` or `{success: false, error: {code, message, details?}}`.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the routes, the key check, publishing, merging the instances' answers |
//! | `local.rs` | what one instance answers about itself ([`local::Query`] -> [`local::Reply`]) |
//! | `admin.rs` | the admin page (`/admin`, on with `REALTIME_ENABLE_ADMIN`), its embedded assets |

mod admin;
pub mod local;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query as UrlQuery, State};
use axum::http::{Extensions, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::error::{EventError, code};
use crate::pipeline::EventKind;
use crate::pipeline::payload::{self, Request};
use crate::store::WriteOp;
use crate::transport::PeerAddr;

pub use local::answer;
use local::{Query, Reply};

/// Longest wait for the other instances' answers.
const SURVEY_WAIT: Duration = Duration::from_secs(1);
/// Sockets listed when the request does not say.
const DEFAULT_LIMIT: usize = 1000;
/// Most sockets one request lists.
const MAX_LIMIT: usize = 10_000;
/// Longest event name `POST /api/publish` takes.
const MAX_EVENT_NAME: usize = 100;
/// Longest user id `POST /api/publish` takes.
const MAX_USER_ID: usize = 255;

/// Events the server itself emits (and Socket.IO's own): a backend may not impersonate them.
/// `message:new` is allowed: it is built like a client's message (see [`publish`]).
pub const RESERVED_EVENTS: [&str; 14] = [
    "connected",
    "authenticated",
    "error",
    "pong",
    "user:joined",
    "user:left",
    "typing:event",
    "presence:changed",
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The API routes (none without `REALTIME_API_KEY`) and the admin page (with
/// `REALTIME_ENABLE_ADMIN`).
pub fn router(app: &Arc<App>) -> Router<Arc<App>> {
    if app.config.api_key.is_none() {
        return Router::new();
    }
    let api = Router::new()
        .route("/api/publish", post(publish))
        .route("/api/disconnect", post(disconnect))
        .route("/api/rooms", get(rooms))
        .route("/api/rooms/{name}/online", get(online))
        .route("/api/presence", get(presence))
        .route("/api/connections", get(connections))
        .route("/api/nodes", get(nodes))
        .route("/api/policies", get(policies))
        .route("/api/events", get(events))
        .fallback(not_found)
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), key_check));
    let router = Router::new().merge(api);
    if app.config.enable_admin {
        router.merge(admin::router())
    } else {
        router
    }
}

/// An API error: the protocol's error body with an HTTP status.
struct ApiError(StatusCode, EventError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, axum::Json(self.1.ack())).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> ApiError {
        let status = match e.code.as_ref() {
            code::VALIDATION_ERROR => StatusCode::BAD_REQUEST,
            code::ROOM_NOT_FOUND => StatusCode::NOT_FOUND,
            code::SERVICE_UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
            code::UNAUTHORIZED => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e)
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(data: Value) -> ApiResult {
    let mut response = axum::Json(json!({ "success": true, "data": data })).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        EventError::new(code::VALIDATION_ERROR, "No such API route"),
    )
}

/// Refusals are logged at most once a second: a key guesser must not flood the log.
static REFUSAL_LOG: crate::util::Throttle = crate::util::Throttle::new();

/// Every API route needs `Authorization: Bearer <REALTIME_API_KEY>` (compared in constant
/// time; the key is never logged).
async fn key_check(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(key) = &app.config.api_key else {
        return not_found().await.into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    if let Some(given) = given
        && crate::util::constant_time_eq(given.as_bytes(), key.as_bytes())
    {
        return next.run(req).await;
    }
    if let Some(held) = REFUSAL_LOG.pass() {
        tracing::info!(
            peer = %peer(req.extensions()).unwrap_or_default(),
            held_back = held,
            path = %req.uri().path(),
            cause = if given.is_some() { "wrong API key" } else { "no API key" },
            "server API request refused"
        );
    }
    let message = if given.is_some() {
        "Invalid API key"
    } else {
        "Authentication required: Authorization: Bearer <REALTIME_API_KEY>"
    };
    let mut response = ApiError(
        StatusCode::UNAUTHORIZED,
        EventError::new(code::UNAUTHORIZED, message),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn peer(ext: &Extensions) -> Option<String> {
    ext.get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0.ip().to_string())
}

/// This instance's answer and the other instances' (scaled out), with which instances did
/// not answer: `(replies, {complete, missing})`.
async fn gather(app: &App, query: Query) -> (Vec<Reply>, Value) {
    let mut replies = vec![local::reply(app, &query)];
    let mut missing = Vec::new();
    let mut complete = true;
    if let Some(survey) = &app.survey {
        let asked = serde_json::to_value(&query).unwrap_or(Value::Null);
        let gathered = survey.ask(asked, SURVEY_WAIT).await;
        complete = !gathered.unreachable;
        missing = gathered.missing;
        for (node, body) in gathered.answers {
            match serde_json::from_value::<Reply>(body) {
                Ok(r) => replies.push(r),
                Err(_) => missing.push(node),
            }
        }
        complete &= missing.is_empty();
    }
    (replies, json!({ "complete": complete, "missing": missing }))
}

/// Adds the coverage fields (`complete`, `missing`) to an answer.
fn covered(mut data: Value, coverage: Value) -> Value {
    if let (Some(d), Value::Object(c)) = (data.as_object_mut(), coverage) {
        d.extend(c);
    }
    data
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::from(
            EventError::new(code::VALIDATION_ERROR, format!("Invalid request body: {e}"))
                .with_details(json!({ "field": "body" })),
        )
    })
}

fn audit(
    app: &App,
    ext: &Extensions,
    event_type: &str,
    user: Option<String>,
    room_id: Option<String>,
    payload: Value,
) {
    // Operator actions are audited whenever the audit log is on, whatever
    // REALTIME_LOG_EVENT_TYPES lists.
    if !app.config.log_events {
        return;
    }
    app.writer.write(WriteOp::Event {
        id: uuid::Uuid::now_v7(),
        event_type: event_type.to_string(),
        socket_id: None,
        user_id: user,
        room_id,
        payload,
        ip: peer(ext),
        metadata: Some(json!({ "source": "api" })),
        at: Utc::now(),
    });
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublishBody {
    room: String,
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    user_id: Option<String>,
}

/// `POST /api/publish {room, event, data, userId?}`: emits `event` with `data` to every
/// socket in the room, on every instance. `message:new` is built like a client's message
/// (validated as `message:send` is, with a new messageId and timestamp; `userId` is its
/// author; `data.clientMessageId` makes a retry answer the first result).
async fn publish(State(app): State<Arc<App>>, ext: Extensions, body: Bytes) -> ApiResult {
    let body: PublishBody = parse_body(&body)?;
    crate::rooms::validate_room_name(&body.room)?;
    let event = body.event.as_str();
    if event.is_empty() || event.chars().count() > MAX_EVENT_NAME {
        return Err(EventError::validation("event", "must be 1 to 100 characters").into());
    }
    if event.chars().any(char::is_control) {
        return Err(EventError::validation("event", "must not contain control characters").into());
    }
    if RESERVED_EVENTS.contains(&event) {
        return Err(
            EventError::validation("event", "is reserved for the server's own events").into(),
        );
    }
    if let Some(u) = &body.user_id
        && (u.is_empty() || u.chars().count() > MAX_USER_ID || u.chars().any(char::is_control))
    {
        return Err(
            EventError::validation("userId", "must be 1 to 255 printable characters").into(),
        );
    }
    let size = serde_json::to_vec(&body.data).map(|v| v.len()).unwrap_or(0);
    if size as u64 > app.config.max_payload_bytes {
        return Err(
            EventError::validation("data", "is larger than REALTIME_MAX_PAYLOAD_BYTES").into(),
        );
    }
    let room = app
        .directory
        .room(&body.room)
        .await
        .map_err(|_| EventError::unavailable("Rooms cannot be read right now; try again", 1000))?
        .filter(|r| r.is_active)
        .ok_or_else(EventError::room_not_found)?;
    let mut answer = json!({ "room": body.room, "event": event });
    if event == "message:new" {
        let msg = match &body.data {
            Value::String(s) => json!({ "roomName": body.room, "content": s }),
            Value::Object(o) => {
                let mut m = o.clone();
                m.insert("roomName".into(), json!(body.room));
                Value::Object(m)
            }
            _ => {
                return Err(EventError::validation(
                    "data",
                    "must be the message: {content, threadId?, metadata?, clientMessageId?} or a string",
                )
                .into());
            }
        };
        let limits = payload::Limits {
            max_message_length: app.config.max_message_length,
            max_metadata_bytes: app.config.max_metadata_bytes,
            max_metadata_depth: app.config.max_metadata_depth,
        };
        let Request::Send(msg) = payload::parse(EventKind::MessageSend, &msg, limits)? else {
            return Err(EventError::new(code::INTERNAL_ERROR, "unexpected request").into());
        };
        let sent = crate::pipeline::deliver_message(&app, body.user_id.as_deref(), msg).await;
        answer["messageId"] = sent["messageId"].clone();
        answer["timestamp"] = sent["timestamp"].clone();
    } else {
        app.fanout.room(&body.room, None, event, &body.data).await;
    }
    audit(
        &app,
        &ext,
        "api:publish",
        body.user_id,
        Some(room.id.clone()),
        answer.clone(),
    );
    ok(answer)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DisconnectBody {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
}

/// `POST /api/disconnect {userId | socketId}`: disconnects every socket of the user, or the
/// socket, wherever it is connected. Answers how many sockets were disconnected.
async fn disconnect(State(app): State<Arc<App>>, ext: Extensions, body: Bytes) -> ApiResult {
    let body: DisconnectBody = parse_body(&body)?;
    let query = match (body.user_id, body.socket_id) {
        (Some(u), None) if !u.is_empty() => Query::Disconnect {
            user: Some(u),
            socket: None,
        },
        (None, Some(s)) if !s.is_empty() => Query::Disconnect {
            user: None,
            socket: Some(s),
        },
        _ => {
            return Err(EventError::validation(
                "userId",
                "give exactly one of userId and socketId",
            )
            .into());
        }
    };
    let (replies, coverage) = gather(&app, query.clone()).await;
    let count: usize = replies.iter().map(|r| r.disconnected).sum();
    let (user, target) = match &query {
        Query::Disconnect { user, socket } => {
            (user.clone(), json!({ "userId": user, "socketId": socket }))
        }
        _ => (None, Value::Null),
    };
    let mut payload = target;
    payload["disconnected"] = json!(count);
    audit(&app, &ext, "api:disconnect", user, None, payload);
    ok(covered(json!({ "disconnected": count }), coverage))
}

/// `GET /api/rooms`: every room with its member count and who is online in it now.
async fn rooms(State(app): State<Arc<App>>) -> ApiResult {
    if !app.directory.is_loaded() {
        return Err(
            EventError::unavailable("Rooms cannot be read right now; try again", 1000).into(),
        );
    }
    let (replies, coverage) = gather(&app, Query::Rooms).await;
    let mut online: BTreeMap<String, (usize, BTreeSet<String>)> = BTreeMap::new();
    for r in replies {
        for (room, tally) in r.rooms {
            let entry = online.entry(room).or_default();
            entry.0 += tally.sockets;
            entry.1.extend(tally.users);
        }
    }
    let list: Vec<Value> = app
        .directory
        .rooms_now()
        .into_iter()
        .map(|room| {
            let (sockets, users) = online.remove(&room.name).unwrap_or_default();
            json!({
                "name": room.name,
                "type": room.room_type,
                "visibility": room.visibility,
                "isActive": room.is_active,
                "maxMembers": room.max_members,
                "memberCount": app.directory.count(&room.id),
                "online": users.len(),
                "sockets": sockets,
                "createdAt": crate::util::iso(room.created_at),
            })
        })
        .collect();
    ok(covered(json!({ "rooms": list }), coverage))
}

/// `GET /api/rooms/{name}/online`: the users with a socket in the room now.
async fn online(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult {
    crate::rooms::validate_room_name(&name)?;
    app.directory
        .room(&name)
        .await
        .map_err(|_| EventError::unavailable("Rooms cannot be read right now; try again", 1000))?
        .ok_or_else(EventError::room_not_found)?;
    let (replies, coverage) = gather(&app, Query::Rooms).await;
    let mut users = BTreeSet::new();
    let mut sockets = 0;
    for mut r in replies {
        if let Some(tally) = r.rooms.remove(&name) {
            sockets += tally.sockets;
            users.extend(tally.users);
        }
    }
    ok(covered(
        json!({ "room": name, "count": users.len(), "sockets": sockets, "users": users }),
        coverage,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PresenceParams {
    user_id: Option<String>,
}

/// `GET /api/presence?userId=U`: the user's status, custom status and live sockets across
/// instances. Without `userId`: users online per status.
async fn presence(
    State(app): State<Arc<App>>,
    UrlQuery(params): UrlQuery<PresenceParams>,
) -> ApiResult {
    let Some(user) = params.user_id.filter(|u| !u.is_empty()) else {
        let (replies, coverage) = gather(&app, Query::Users).await;
        let mut users: BTreeMap<String, String> = BTreeMap::new();
        for r in replies {
            for (u, s) in r.users {
                users.entry(u).or_insert(s);
            }
        }
        let mut by_status: BTreeMap<&str, usize> = [("online", 0), ("away", 0), ("busy", 0)]
            .into_iter()
            .collect();
        for s in users.values() {
            *by_status.entry(s.as_str()).or_default() += 1;
        }
        return ok(covered(
            json!({ "online": users.len(), "byStatus": by_status }),
            coverage,
        ));
    };
    let query = Query::Sockets {
        room: None,
        user: Some(user.clone()),
        limit: 0,
    };
    let (replies, coverage) = gather(&app, query).await;
    let connections: usize = replies.iter().map(|r| r.matched).sum();
    let state = replies.iter().find_map(|r| r.presence.clone());
    let mut data = match state {
        Some(s) if connections > 0 => s,
        _ => {
            json!({ "userId": user, "status": "offline", "customStatus": null, "customEmoji": null })
        }
    };
    data["connections"] = json!(connections);
    if connections == 0 {
        data["status"] = json!("offline");
    }
    ok(covered(data, coverage))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionParams {
    user_id: Option<String>,
    room: Option<String>,
    limit: Option<String>,
}

/// A `limit` query parameter: absent, or a positive integer (else `VALIDATION_ERROR`).
fn limit_param(given: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match given {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n.min(max)),
            _ => Err(EventError::validation("limit", "must be a positive integer").into()),
        },
    }
}

/// `GET /api/connections[?userId=U][&room=R][&limit=N]`: live sockets on every instance.
async fn connections(
    State(app): State<Arc<App>>,
    UrlQuery(params): UrlQuery<ConnectionParams>,
) -> ApiResult {
    let limit = limit_param(params.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let query = Query::Sockets {
        room: params.room.filter(|r| !r.is_empty()),
        user: params.user_id.filter(|u| !u.is_empty()),
        limit,
    };
    let (replies, coverage) = gather(&app, query).await;
    let total: usize = replies.iter().map(|r| r.matched).sum();
    let mut list: Vec<local::SocketInfo> = replies.into_iter().flat_map(|r| r.sockets).collect();
    list.sort_by(|a, b| b.connected_at.cmp(&a.connected_at));
    list.truncate(limit);
    ok(covered(
        json!({ "total": total, "truncated": list.len() < total, "connections": list }),
        coverage,
    ))
}

/// `GET /api/nodes`: every live instance with its figures.
async fn nodes(State(app): State<Arc<App>>) -> ApiResult {
    let (replies, coverage) = gather(&app, Query::Node).await;
    let mut list: Vec<Value> = replies
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.node).unwrap_or(Value::Null);
            v["self"] = json!(r.node.node_id == app.node_id);
            v
        })
        .collect();
    list.sort_by(|a, b| a["nodeId"].as_str().cmp(&b["nodeId"].as_str()));
    ok(covered(json!({ "nodes": list }), coverage))
}

/// `GET /api/policies`: the policy modules of this instance (every instance loads the same
/// directory).
async fn policies(State(app): State<Arc<App>>) -> ApiResult {
    let list = app
        .policies
        .as_ref()
        .map(|p| p.status())
        .unwrap_or_default();
    ok(json!({ "enabled": app.policies.is_some(), "modules": list }))
}

#[derive(Deserialize)]
struct EventParams {
    limit: Option<String>,
}

/// `GET /api/events[?limit=N]`: the newest audit rows (at most 500).
async fn events(State(app): State<Arc<App>>, UrlQuery(params): UrlQuery<EventParams>) -> ApiResult {
    let limit = limit_param(params.limit.as_deref(), 50, 500)? as i64;
    match tokio::time::timeout(Duration::from_secs(2), app.store.events(limit)).await {
        Ok(Ok(rows)) => ok(json!({ "events": rows })),
        _ => Err(EventError::unavailable(
            "The audit log cannot be read right now; try again",
            1000,
        )
        .into()),
    }
}
