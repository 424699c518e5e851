//! Stage 1 of the pipeline: parse and validate a client payload into a typed request.
//! Every malformed shape becomes `VALIDATION_ERROR` naming the field; nothing else runs.

use crate::history::{DEFAULT_PAGE, MAX_PAGE, Page, Position};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::EventError;
use crate::presence::{CustomStatus, Status};
use crate::rooms::validate_room_name;

/// The client events the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `room:join`
    RoomJoin,
    /// `room:leave`
    RoomLeave,
    /// `message:send`
    MessageSend,
    /// `typing:start`
    TypingStart,
    /// `typing:stop`
    TypingStop,
    /// `presence:update`
    PresenceUpdate,
    /// `ping`
    Ping,
    /// `pong`
    Pong,
    /// `auth:refresh`
    AuthRefresh,
    /// `message:history`
    MessageHistory,
}

impl EventKind {
    /// Every known event.
    pub const ALL: [EventKind; 10] = [
        EventKind::RoomJoin,
        EventKind::RoomLeave,
        EventKind::MessageSend,
        EventKind::TypingStart,
        EventKind::TypingStop,
        EventKind::PresenceUpdate,
        EventKind::Ping,
        EventKind::Pong,
        EventKind::AuthRefresh,
        EventKind::MessageHistory,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::RoomJoin => "room:join",
            EventKind::RoomLeave => "room:leave",
            EventKind::MessageSend => "message:send",
            EventKind::TypingStart => "typing:start",
            EventKind::TypingStop => "typing:stop",
            EventKind::PresenceUpdate => "presence:update",
            EventKind::Ping => "ping",
            EventKind::Pong => "pong",
            EventKind::AuthRefresh => "auth:refresh",
            EventKind::MessageHistory => "message:history",
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `room:join`
    Join {
        /// Room.
        room: String,
        /// The history position the client has (catch-up).
        since: Option<Position>,
    },
    /// `message:history`
    History {
        /// Room.
        room: String,
        /// Which messages.
        page: Page,
        /// How many at most.
        limit: usize,
    },
    /// `room:leave`
    Leave {
        /// Room.
        room: String,
    },
    /// `message:send`
    Send(MessageSend),
    /// `typing:start` / `typing:stop`
    Typing {
        /// Room.
        room: String,
        /// Thread.
        thread: Option<String>,
        /// start (true) or stop.
        start: bool,
    },
    /// `presence:update`
    Presence {
        /// New status.
        status: Status,
        /// New custom status (None clears it).
        custom: Option<CustomStatus>,
    },
    /// `ping`
    Ping,
    /// `pong`
    Pong {
        /// Client's timestamp (ms since the epoch).
        timestamp: i64,
    },
    /// `auth:refresh`
    Refresh {
        /// New token.
        token: String,
    },
}

/// A `message:send` request.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageSend {
    /// Room.
    pub room: String,
    /// Content.
    pub content: String,
    /// Thread.
    pub thread: Option<String>,
    /// Metadata object (null when absent).
    pub metadata: Value,
    /// Client id for de-duplication.
    pub client_message_id: Option<String>,
}

impl Request {
    /// What the audit log keeps of the request as it was handled (after any rewrite by a
    /// policy module): never message content or tokens.
    pub fn audit(&self) -> Value {
        match self {
            Request::Send(m) => serde_json::json!({
                "roomName": m.room,
                "threadId": m.thread,
                "clientMessageId": m.client_message_id,
                "contentLength": m.content.chars().count(),
            }),
            Request::Join { room, since } => {
                serde_json::json!({ "roomName": room, "since": since })
            }
            Request::Leave { room } => serde_json::json!({ "roomName": room }),
            Request::History { room, page, limit } => {
                let (before, after) = match page {
                    Page::Newest => (None, None),
                    Page::Before(b) => (Some(*b), None),
                    Page::After(a) => (None, Some(*a)),
                };
                serde_json::json!({ "roomName": room, "before": before, "after": after, "limit": limit })
            }
            Request::Typing { room, thread, .. } => {
                serde_json::json!({ "roomName": room, "threadId": thread })
            }
            Request::Presence { status, .. } => serde_json::json!({ "status": status }),
            Request::Ping | Request::Pong { .. } | Request::Refresh { .. } => serde_json::json!({}),
        }
    }
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest message content, in characters.
    pub max_message_length: usize,
    /// Largest `metadata` object, in bytes of its JSON.
    pub max_metadata_bytes: usize,
    /// Deepest nesting of `metadata` (the object itself is depth 1).
    pub max_metadata_depth: usize,
}

/// The nesting depth of a JSON value (a scalar is 0, `{}` is 1), counted without recursion
/// and stopping once past `limit`.
fn depth_over(v: &Value, limit: usize) -> bool {
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Object(m) => Box::new(m.values()),
            Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        if d + 1 > limit {
            return true;
        }
        stack.extend(children.map(|c| (c, d + 1)));
    }
    false
}

/// `metadata`: an object within the size and depth limits (`None` when absent).
fn metadata(obj: &Map<String, Value>, limits: Limits) -> Result<Value, EventError> {
    let m = match obj.get("metadata") {
        None | Some(Value::Null) => return Ok(Value::Null),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(EventError::validation("metadata", "must be an object")),
    };
    if depth_over(m, limits.max_metadata_depth) {
        return Err(EventError::validation(
            "metadata",
            &format!("may nest at most {} levels", limits.max_metadata_depth),
        ));
    }
    let size = serde_json::to_string(m)
        .map(|s| s.len())
        .unwrap_or(usize::MAX);
    if size > limits.max_metadata_bytes {
        return Err(EventError::validation(
            "metadata",
            &format!(
                "must be at most {} bytes of JSON",
                limits.max_metadata_bytes
            ),
        ));
    }
    Ok(m.clone())
}

fn object(payload: &Value) -> Result<&Map<String, Value>, EventError> {
    payload
        .as_object()
        .ok_or_else(|| EventError::validation("payload", "must be an object"))
}

/// An optional offset field: a non-negative integer.
fn offset(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, EventError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| EventError::validation(field, "must be a non-negative integer")),
    }
}

/// `since: {offset, epoch}` of a join (absent or null: none).
fn since(obj: &Map<String, Value>) -> Result<Option<Position>, EventError> {
    let s = match obj.get("since") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(s)) => s,
        Some(_) => return Err(EventError::validation("since", "must be {offset, epoch}")),
    };
    let offset = s
        .get("offset")
        .and_then(Value::as_u64)
        .ok_or_else(|| EventError::validation("since", "offset must be a non-negative integer"))?;
    let epoch = match s.get("epoch") {
        Some(Value::String(e)) if !e.is_empty() && e.len() <= 64 => e.clone(),
        _ => {
            return Err(EventError::validation(
                "since",
                "epoch must be a string of 1-64 bytes",
            ));
        }
    };
    Ok(Some(Position { offset, epoch }))
}

fn room_name(obj: &Map<String, Value>) -> Result<String, EventError> {
    match obj.get("roomName") {
        Some(Value::String(s)) => {
            validate_room_name(s)?;
            Ok(s.clone())
        }
        Some(_) => Err(EventError::validation("roomName", "must be a string")),
        None => Err(EventError::validation("roomName", "is required")),
    }
}

/// An optional string of 1..=max characters (null and absent are None).
fn opt_string(
    obj: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, EventError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(EventError::validation(
            field,
            &format!("must be 1-{max} characters"),
        )),
        Some(_) => Err(EventError::validation(field, "must be a string")),
    }
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}

fn custom_status(v: Option<&Value>) -> Result<Option<CustomStatus>, EventError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(EventError::validation("customStatus", "must be an object")),
    };
    let text = match obj.get("text") {
        Some(Value::String(s)) if s.chars().count() <= 100 => s.clone(),
        Some(Value::String(_)) => {
            return Err(EventError::validation(
                "customStatus.text",
                "must be at most 100 characters",
            ));
        }
        _ => {
            return Err(EventError::validation(
                "customStatus.text",
                "must be a string",
            ));
        }
    };
    let emoji = opt_string(obj, "emoji", 32)
        .map_err(|_| EventError::validation("customStatus.emoji", "must be 1-32 characters"))?;
    let expires_at = match obj.get("expiresAt") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_time(v).ok_or_else(|| {
            EventError::validation(
                "customStatus.expiresAt",
                "must be an ISO 8601 date or epoch milliseconds",
            )
        })?),
    };
    Ok(Some(CustomStatus {
        text,
        emoji,
        expires_at,
    }))
}

/// Parses and validates the payload of a known event.
pub fn parse(kind: EventKind, payload: &Value, limits: Limits) -> Result<Request, EventError> {
    Ok(match kind {
        EventKind::RoomJoin => {
            let obj = object(payload)?;
            Request::Join {
                room: room_name(obj)?,
                since: since(obj)?,
            }
        }
        EventKind::MessageHistory => {
            let obj = object(payload)?;
            let room = room_name(obj)?;
            let limit = match obj.get("limit") {
                None | Some(Value::Null) => DEFAULT_PAGE,
                Some(v) => match v.as_u64() {
                    Some(n) if n >= 1 => (n as usize).min(MAX_PAGE),
                    _ => {
                        return Err(EventError::validation(
                            "limit",
                            "must be a positive integer",
                        ));
                    }
                },
            };
            let page = match (offset(obj, "before")?, offset(obj, "after")?) {
                (None, None) => Page::Newest,
                (Some(b), None) => Page::Before(b),
                (None, Some(a)) => Page::After(a),
                (Some(_), Some(_)) => {
                    return Err(EventError::validation(
                        "before",
                        "give before or after, not both",
                    ));
                }
            };
            Request::History { room, page, limit }
        }
        EventKind::RoomLeave => Request::Leave {
            room: room_name(object(payload)?)?,
        },
        EventKind::MessageSend => {
            let obj = object(payload)?;
            let room = room_name(obj)?;
            let content = match obj.get("content") {
                Some(Value::String(s)) => s,
                Some(_) => return Err(EventError::validation("content", "must be a string")),
                None => return Err(EventError::validation("content", "is required")),
            };
            let chars = content.chars().count();
            if chars == 0 || chars > limits.max_message_length {
                return Err(EventError::validation(
                    "content",
                    &format!("must be 1-{} characters", limits.max_message_length),
                ));
            }
            let metadata = metadata(obj, limits)?;
            Request::Send(MessageSend {
                room,
                content: content.clone(),
                thread: opt_string(obj, "threadId", 255)?,
                metadata,
                client_message_id: opt_string(obj, "clientMessageId", 255)?,
            })
        }
        EventKind::TypingStart | EventKind::TypingStop => {
            let obj = object(payload)?;
            Request::Typing {
                room: room_name(obj)?,
                thread: opt_string(obj, "threadId", 255)?,
                start: kind == EventKind::TypingStart,
            }
        }
        EventKind::PresenceUpdate => {
            let obj = object(payload)?;
            let status = match obj.get("status") {
                Some(Value::String(s)) => Status::parse(s).ok_or_else(|| {
                    EventError::validation("status", "must be online, away, busy or offline")
                })?,
                _ => return Err(EventError::validation("status", "is required")),
            };
            Request::Presence {
                status,
                custom: custom_status(obj.get("customStatus"))?,
            }
        }
        EventKind::Ping => Request::Ping,
        EventKind::Pong => {
            let obj = object(payload)?;
            let timestamp = obj
                .get("timestamp")
                .and_then(|t| t.as_i64().or_else(|| t.as_f64().map(|f| f as i64)))
                .ok_or_else(|| EventError::validation("timestamp", "must be a number"))?;
            Request::Pong { timestamp }
        }
        EventKind::AuthRefresh => {
            let obj = object(payload)?;
            match obj.get("token") {
                Some(Value::String(t)) if !t.is_empty() && t.len() <= 16 * 1024 => {
                    Request::Refresh { token: t.clone() }
                }
                _ => {
                    return Err(EventError::validation(
                        "token",
                        "must be a non-empty string",
                    ));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const L: Limits = Limits {
        max_message_length: 10,
        max_metadata_bytes: 64,
        max_metadata_depth: 3,
    };

    #[test]
    fn metadata_within_the_limits_passes() {
        let ok = parse(
            EventKind::MessageSend,
            &json!({"roomName": "r", "content": "x", "metadata": {"a": {"b": {"c": 1}}}}),
            L,
        );
        assert!(ok.is_ok(), "{ok:?}");
        assert!(!depth_over(&json!({"a": {"b": [1]}}), 3));
        assert!(depth_over(&json!({"a": {"b": [[1]]}}), 3));
    }

    #[test]
    fn malformed_payloads_are_validation_errors() {
        let bad: Vec<(EventKind, Value)> = vec![
            (EventKind::RoomJoin, Value::Null),
            (EventKind::RoomJoin, json!(42)),
            (EventKind::RoomJoin, json!("general")),
            (EventKind::RoomJoin, json!([{"roomName": "general"}])),
            (EventKind::RoomJoin, json!({})),
            (EventKind::RoomJoin, json!({"roomName": 5})),
            (EventKind::RoomJoin, json!({"roomName": ""})),
            (EventKind::RoomJoin, json!({"roomName": "a b"})),
            (EventKind::RoomLeave, json!({"roomName": null})),
            (EventKind::MessageSend, json!({"roomName": "r"})),
            (
                EventKind::MessageSend,
                json!({"roomName": "r", "content": ""}),
            ),
            (
                EventKind::MessageSend,
                json!({"roomName": "r", "content": "x".repeat(11)}),
            ),
            (
                EventKind::MessageSend,
                json!({"roomName": "r", "content": 1}),
            ),
            (
                EventKind::MessageSend,
                json!({"roomName": "r", "content": "x", "metadata": []}),
            ),
            // Metadata past 64 bytes of JSON, or nested past 3 levels.
            (
                EventKind::MessageSend,
                json!({"roomName": "r", "content": "x", "metadata": {"k": "v".repeat(60)}}),
            ),
            (
                EventKind::MessageSend,
                json!({"roomName": "r", "content": "x", "metadata": {"a": {"b": {"c": {}}}}}),
            ),
            (
                EventKind::MessageSend,
                json!({"roomName": "r", "content": "x", "metadata": {"a": [[[1]]]}}),
            ),
            (
                EventKind::MessageSend,
                json!({"roomName": "r", "content": "x", "threadId": 7}),
            ),
            (
                EventKind::MessageSend,
                json!({"roomName": "r", "content": "x", "clientMessageId": {}}),
            ),
            (EventKind::TypingStart, json!({"threadId": "t"})),
            (EventKind::PresenceUpdate, json!({"status": "sleeping"})),
            (
                EventKind::PresenceUpdate,
                json!({"status": "away", "customStatus": "x"}),
            ),
            (
                EventKind::PresenceUpdate,
                json!({"status": "away", "customStatus": {"text": "x".repeat(101)}}),
            ),
            (
                EventKind::PresenceUpdate,
                json!({"status": "away", "customStatus": {"text": "x", "expiresAt": "soon"}}),
            ),
            (EventKind::Pong, json!({"timestamp": "now"})),
            (EventKind::AuthRefresh, json!({"token": ""})),
        ];
        for (kind, payload) in bad {
            let err = parse(kind, &payload, L).expect_err(&format!("{kind:?} {payload}"));
            assert_eq!(err.code, "VALIDATION_ERROR");
        }
    }

    #[test]
    fn good_payloads() {
        let r = parse(
            EventKind::MessageSend,
            &json!({"roomName": "general", "content": "héllo", "metadata": {"a": 1}, "clientMessageId": "c1"}),
            L,
        )
        .unwrap();
        let Request::Send(m) = r else { panic!() };
        assert_eq!(m.content, "héllo");
        assert_eq!(m.client_message_id.as_deref(), Some("c1"));
        // 10 multi-byte characters are 10 characters, not 20 bytes.
        assert!(
            parse(
                EventKind::MessageSend,
                &json!({"roomName": "r", "content": "é".repeat(10)}),
                L
            )
            .is_ok()
        );
        assert_eq!(
            parse(EventKind::Ping, &Value::Null, L).unwrap(),
            Request::Ping
        );
        let p = parse(
            EventKind::PresenceUpdate,
            &json!({"status": "busy", "customStatus": {"text": "mtg", "emoji": "📅", "expiresAt": "2030-01-01T00:00:00Z"}}),
            L,
        )
        .unwrap();
        assert!(matches!(
            p,
            Request::Presence {
                status: Status::Busy,
                custom: Some(_)
            }
        ));
    }
}
