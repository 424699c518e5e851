//! The event a policy module is asked about: [`Event`], the sender's [`Identity`] and the
//! targeted [`RoomInfo`], with typed, non-panicking accessors and test builders.

use std::cell::OnceCell;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// One client event, as the host hands it to [`Policy::handle`](crate::Policy::handle).
///
/// The payload arrives as JSON text; [`Event::payload`] parses it once, on first use, so a
/// module that only looks at [`Event::name`] pays nothing for it.
///
/// In tests, build events with [`Event::new`] and the `with_*` methods:
///
/// ```
/// use nself_realtime_guest::{Event, RoomInfo};
/// use serde_json::json;
///
/// let event = Event::new("message:send", json!({"roomName": "general", "content": "hi"}))
///     .with_user("u1")
///     .with_roles(["staff"])
///     .with_room(RoomInfo::new("general", "channel", "public"));
/// assert_eq!(event.content(), Some("hi"));
/// assert!(event.identity().has_role("staff"));
/// ```
#[derive(Debug, Clone)]
pub struct Event {
    name: String,
    payload_json: String,
    payload: OnceCell<Value>,
    socket_id: String,
    identity: Identity,
    room: Option<RoomInfo>,
}

impl Event {
    /// A test event named `name` with this payload, an anonymous sender, socket id `"test-socket"`
    /// and no room.
    pub fn new(name: impl Into<String>, payload: Value) -> Self {
        let payload_json = payload.to_string();
        let cell = OnceCell::new();
        let _ = cell.set(payload);
        Event {
            name: name.into(),
            payload_json,
            payload: cell,
            socket_id: "test-socket".to_owned(),
            identity: Identity::anonymous(),
            room: None,
        }
    }

    /// A test event whose payload is this exact text (which need not be valid JSON).
    pub fn from_json(name: impl Into<String>, payload_json: impl Into<String>) -> Self {
        Event {
            name: name.into(),
            payload_json: payload_json.into(),
            payload: OnceCell::new(),
            socket_id: "test-socket".to_owned(),
            identity: Identity::anonymous(),
            room: None,
        }
    }

    /// Builds an event from its parts, as the export glue does.
    pub(crate) fn from_parts(
        name: String,
        payload_json: String,
        socket_id: String,
        identity: Identity,
        room: Option<RoomInfo>,
    ) -> Self {
        Event {
            name,
            payload_json,
            payload: OnceCell::new(),
            socket_id,
            identity,
            room,
        }
    }

    /// Sets the sender's socket id.
    pub fn with_socket_id(mut self, socket_id: impl Into<String>) -> Self {
        self.socket_id = socket_id.into();
        self
    }

    /// Sets the sender's identity.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = identity;
        self
    }

    /// Sets the sender's user id (the sender is then authenticated).
    pub fn with_user(mut self, user_id: impl Into<String>) -> Self {
        self.identity.user_id = Some(user_id.into());
        self
    }

    /// Sets the sender's session id.
    pub fn with_session(mut self, session_id: impl Into<String>) -> Self {
        self.identity.session_id = Some(session_id.into());
        self
    }

    /// Sets the sender's roles.
    pub fn with_roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.identity.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the sender's token claims (a JSON object).
    pub fn with_claims(mut self, claims: Value) -> Self {
        self.identity = self.identity.with_claims(claims);
        self
    }

    /// Sets the targeted room.
    pub fn with_room(mut self, room: RoomInfo) -> Self {
        self.room = Some(room);
        self
    }

    /// Event name: `connect`, `room:join`, `message:send`, ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The payload as the host sent it (JSON text).
    pub fn payload_json(&self) -> &str {
        &self.payload_json
    }

    /// The payload, parsed. A payload that is not valid JSON reads as [`Value::Null`] (the host
    /// only sends valid JSON).
    pub fn payload(&self) -> &Value {
        self.payload
            .get_or_init(|| serde_json::from_str(&self.payload_json).unwrap_or(Value::Null))
    }

    /// Deserializes the payload into your own type.
    pub fn parse_payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload_json)
    }

    /// A string field of the payload object (`None` if absent or not a string).
    pub fn payload_str(&self, key: &str) -> Option<&str> {
        self.payload().get(key).and_then(Value::as_str)
    }

    /// The payload's `content` string (the text of a `message:send`).
    pub fn content(&self) -> Option<&str> {
        self.payload_str("content")
    }

    /// The payload as one of the protocol's typed payloads ([`crate::payloads`]), or any
    /// type of yours; `None` when it does not have that shape.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Option<T> {
        self.parse_payload().ok()
    }

    /// The payload with `patch` merged into its `metadata` (see
    /// [`merge_metadata`](crate::payloads::merge_metadata)), ready for [`Verdict::modify`](crate::Verdict::modify).
    pub fn payload_with_metadata(&self, patch: Value) -> Option<Value> {
        crate::payloads::merge_metadata(self.payload(), patch)
    }

    /// The targeted room's name: the room info's when there is one, else the payload's
    /// `roomName` (a `room:join` for a room that does not exist has no room info).
    pub fn room_name(&self) -> Option<&str> {
        match &self.room {
            Some(room) => Some(room.name()),
            None => self.payload_str("roomName"),
        }
    }

    /// A copy of the payload with `key` set to `value`, ready for
    /// [`Verdict::modify`](crate::Verdict::modify); `None` when the payload is not a JSON object.
    pub fn payload_with(&self, key: &str, value: impl Into<Value>) -> Option<Value> {
        let mut payload = self.payload().clone();
        payload
            .as_object_mut()?
            .insert(key.to_owned(), value.into());
        Some(payload)
    }

    /// The sender's socket id.
    pub fn socket_id(&self) -> &str {
        &self.socket_id
    }

    /// Who sent the event.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The sender's user id; `None` for anonymous connections.
    pub fn user_id(&self) -> Option<&str> {
        self.identity.user_id()
    }

    /// The targeted room, when the event targets one that exists.
    pub fn room(&self) -> Option<&RoomInfo> {
        self.room.as_ref()
    }
}

/// Who sent an event, as the connection's token says.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    user_id: Option<String>,
    session_id: Option<String>,
    roles: Vec<String>,
    claims_json: String,
    claims: OnceCell<Value>,
}

impl Identity {
    /// An anonymous sender: no user, no session, no roles, claims `{}`.
    pub fn anonymous() -> Self {
        Identity {
            claims_json: "{}".to_owned(),
            ..Identity::default()
        }
    }

    /// Builds an identity from its parts, as the export glue does.
    pub(crate) fn from_parts(
        user_id: Option<String>,
        session_id: Option<String>,
        roles: Vec<String>,
        claims_json: String,
    ) -> Self {
        Identity {
            user_id,
            session_id,
            roles,
            claims_json,
            claims: OnceCell::new(),
        }
    }

    /// Sets the token claims (a JSON object).
    pub fn with_claims(mut self, claims: Value) -> Self {
        self.claims_json = claims.to_string();
        let cell = OnceCell::new();
        let _ = cell.set(claims);
        self.claims = cell;
        self
    }

    /// `userId` (or `sub`) claim; `None` for anonymous connections.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// Whether the connection has no user id.
    pub fn is_anonymous(&self) -> bool {
        self.user_id.is_none()
    }

    /// `sessionId` (or `sid`) claim.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// `roles` claim.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// Whether `roles` contains `role` (exact, case-sensitive match).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Every claim of the token as JSON text.
    pub fn claims_json(&self) -> &str {
        &self.claims_json
    }

    /// Every claim of the token, parsed (a JSON object; [`Value::Null`] if unparsable).
    pub fn claims(&self) -> &Value {
        self.claims
            .get_or_init(|| serde_json::from_str(&self.claims_json).unwrap_or(Value::Null))
    }

    /// One claim, if present.
    pub fn claim(&self, key: &str) -> Option<&Value> {
        self.claims().get(key)
    }
}

/// The room an event targets, when it targets one that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    name: String,
    room_type: String,
    visibility: String,
    member_role: Option<String>,
}

impl RoomInfo {
    /// A room named `name` of type `room_type` (`channel`, `dm`, `group` or `broadcast`) and
    /// `visibility` (`public`, `private` or `secret`), of which the sender is not a member.
    pub fn new(
        name: impl Into<String>,
        room_type: impl Into<String>,
        visibility: impl Into<String>,
    ) -> Self {
        RoomInfo {
            name: name.into(),
            room_type: room_type.into(),
            visibility: visibility.into(),
            member_role: None,
        }
    }

    /// Sets the sender's membership role in the room.
    pub fn with_member_role(mut self, role: impl Into<String>) -> Self {
        self.member_role = Some(role.into());
        self
    }

    /// Room name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `channel`, `dm`, `group` or `broadcast`.
    pub fn room_type(&self) -> &str {
        &self.room_type
    }

    /// `public`, `private` or `secret`.
    pub fn visibility(&self) -> &str {
        &self.visibility
    }

    /// The sender's membership role in the room, if they are a member.
    pub fn member_role(&self) -> Option<&str> {
        self.member_role.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_is_parsed_lazily_and_tolerates_garbage() {
        let event = Event::from_json("message:send", "{not json");
        assert_eq!(event.payload(), &Value::Null);
        assert_eq!(event.content(), None);
        assert_eq!(event.payload_with("content", "x"), None);
        let event = Event::from_json("message:send", r#"{"content":"hi","roomName":"r"}"#);
        assert_eq!(event.content(), Some("hi"));
        assert_eq!(event.room_name(), Some("r"));
    }

    #[test]
    fn payload_with_sets_a_field_on_a_copy() {
        let event = Event::new("message:send", json!({"content": "a", "roomName": "r"}));
        let rewritten = event.payload_with("content", "b");
        assert_eq!(rewritten, Some(json!({"content": "b", "roomName": "r"})));
        assert_eq!(event.content(), Some("a"));
    }

    #[test]
    fn parse_payload_into_a_struct() {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Join {
            room_name: String,
        }
        let event = Event::new("room:join", json!({"roomName": "general"}));
        let join: Join = event.parse_payload().expect("valid payload");
        assert_eq!(join.room_name, "general");
    }

    #[test]
    fn identity_accessors() {
        let event = Event::new("connect", json!({}))
            .with_user("u1")
            .with_session("s1")
            .with_roles(["staff", "admin"])
            .with_claims(json!({"userId": "u1", "tenant": "t"}));
        let id = event.identity();
        assert_eq!(id.user_id(), Some("u1"));
        assert_eq!(id.session_id(), Some("s1"));
        assert!(id.has_role("admin"));
        assert!(!id.has_role("Admin"));
        assert_eq!(id.claim("tenant"), Some(&json!("t")));
        assert!(!id.is_anonymous());
        assert!(Identity::anonymous().is_anonymous());
        assert_eq!(Identity::anonymous().claims(), &json!({}));
    }

    #[test]
    fn room_info_wins_over_payload_room_name() {
        let event = Event::new("room:join", json!({"roomName": "payload-room"}))
            .with_room(RoomInfo::new("real", "dm", "private").with_member_role("owner"));
        assert_eq!(event.room_name(), Some("real"));
        let room = event.room().expect("room set");
        assert_eq!(room.room_type(), "dm");
        assert_eq!(room.visibility(), "private");
        assert_eq!(room.member_role(), Some("owner"));
    }
}
