//! Typed payloads of the protocol's client events, for [`Event::payload_as`](crate::Event::payload_as),
//! and [`merge_metadata`], which adds fields to a message's nested `metadata`.
//!
//! The server validates payloads after the policy chain (and again after a rewrite), so a
//! module may meet a malformed one: `payload_as` answers `None` then, and the usual choice is
//! to allow it and let the server refuse it.
//!
//! ```
//! use nself_realtime_guest::Event;
//! use nself_realtime_guest::payloads::MessageSend;
//! use serde_json::json;
//!
//! let e = Event::new(
//!     "message:send",
//!     json!({"roomName": "general", "content": "hi", "metadata": {"lang": "en"}}),
//! );
//! let m: MessageSend = e.payload_as().expect("a message");
//! assert_eq!((m.room_name.as_str(), m.content.as_str()), ("general", "hi"));
//! assert_eq!(m.metadata.unwrap()["lang"], "en");
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `message:send`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSend {
    /// The room.
    pub room_name: String,
    /// The text.
    pub content: String,
    /// The thread, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Free-form metadata (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// The client's id for de-duplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

/// `room:join`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomJoin {
    /// The room.
    pub room_name: String,
}

/// `room:leave`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomLeave {
    /// The room.
    pub room_name: String,
}

/// `typing:start` and `typing:stop`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    /// The room.
    pub room_name: String,
    /// The thread, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
}

/// A custom status of `presence:update`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomStatus {
    /// Its text.
    pub text: String,
    /// Its emoji.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// When it ends (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// `presence:update`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceUpdate {
    /// online, away, busy or offline.
    pub status: String,
    /// The custom status, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_status: Option<CustomStatus>,
}

/// Merges `patch` (an object) into the payload's `metadata`, creating it when absent: nested
/// objects are merged key by key, anything else is replaced. The payload must be an object;
/// `None` otherwise (or when `metadata` is there but not an object, or `patch` is not one).
///
/// ```
/// use nself_realtime_guest::payloads::merge_metadata;
/// use serde_json::json;
///
/// let payload = json!({"roomName": "r", "content": "x", "metadata": {"a": {"b": 1}}});
/// let merged = merge_metadata(&payload, json!({"a": {"c": 2}, "checked": true})).unwrap();
/// assert_eq!(merged["metadata"], json!({"a": {"b": 1, "c": 2}, "checked": true}));
/// ```
pub fn merge_metadata(payload: &Value, patch: Value) -> Option<Value> {
    let mut out = payload.as_object()?.clone();
    let Value::Object(patch) = patch else {
        return None;
    };
    let metadata = out
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if metadata.is_null() {
        *metadata = Value::Object(Map::new());
    }
    let target = metadata.as_object_mut()?;
    merge_into(target, patch);
    Some(Value::Object(out))
}

fn merge_into(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (k, v) in patch {
        match (target.get_mut(&k), v) {
            (Some(Value::Object(existing)), Value::Object(inner)) => merge_into(existing, inner),
            (_, v) => {
                target.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_payloads_read_what_clients_send() {
        let t: Typing =
            serde_json::from_value(json!({"roomName": "r", "threadId": "t"})).expect("typing");
        assert_eq!(t.thread_id.as_deref(), Some("t"));
        let p: PresenceUpdate = serde_json::from_value(
            json!({"status": "busy", "customStatus": {"text": "in a call", "emoji": "📞"}}),
        )
        .expect("presence");
        assert_eq!(p.custom_status.map(|c| c.text), Some("in a call".into()));
        assert!(serde_json::from_value::<RoomJoin>(json!({"roomName": 42})).is_err());
    }

    #[test]
    fn metadata_is_created_or_merged() {
        let m = merge_metadata(&json!({"content": "x"}), json!({"k": 1})).expect("merged");
        assert_eq!(m, json!({"content": "x", "metadata": {"k": 1}}));
        let m = merge_metadata(&json!({"metadata": null}), json!({"k": 1})).expect("merged");
        assert_eq!(m["metadata"], json!({"k": 1}));
        assert!(merge_metadata(&json!({"metadata": "text"}), json!({"k": 1})).is_none());
        assert!(merge_metadata(&json!([1]), json!({"k": 1})).is_none());
        assert!(merge_metadata(&json!({}), json!(3)).is_none());
    }
}
