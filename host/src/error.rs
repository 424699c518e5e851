//! The one error a client event can end in: a stable `{code, message, details?}`.
//!
//! Details of internal failures go to the log, never to the client.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Value, json};

/// Stable error codes (SPEC §5). A policy module may return its own code.
pub mod code {
    /// Malformed payload.
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    /// Room missing or inactive.
    pub const ROOM_NOT_FOUND: &str = "ROOM_NOT_FOUND";
    /// Not allowed into (or to post in) the room.
    pub const ROOM_ACCESS_DENIED: &str = "ROOM_ACCESS_DENIED";
    /// The room is at `max_members`.
    pub const ROOM_FULL: &str = "ROOM_FULL";
    /// The socket has not joined the room.
    pub const NOT_IN_ROOM: &str = "NOT_IN_ROOM";
    /// The member is muted.
    pub const MUTED: &str = "MUTED";
    /// Too many events.
    pub const RATE_LIMIT_EXCEEDED: &str = "RATE_LIMIT_EXCEEDED";
    /// A policy module said no.
    pub const POLICY_REJECTED: &str = "POLICY_REJECTED";
    /// A policy module that covers the event failed to load: the event is refused until it
    /// loads or is removed (`details.plugin` names the file).
    pub const POLICY_UNAVAILABLE: &str = "POLICY_UNAVAILABLE";
    /// The connection's token expired.
    pub const TOKEN_EXPIRED: &str = "TOKEN_EXPIRED";
    /// The server cannot answer now (its database did not answer in time); retry after
    /// `details.retryAfterMs`.
    pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
    /// Anything else (details in the server log).
    pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";
    /// The server API: no API key, or a wrong one (HTTP 401).
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";

    /// Every code the server itself answers with (metrics start each at zero).
    pub const ALL: [&str; 12] = [
        VALIDATION_ERROR,
        ROOM_NOT_FOUND,
        ROOM_ACCESS_DENIED,
        ROOM_FULL,
        NOT_IN_ROOM,
        MUTED,
        RATE_LIMIT_EXCEEDED,
        POLICY_REJECTED,
        POLICY_UNAVAILABLE,
        TOKEN_EXPIRED,
        SERVICE_UNAVAILABLE,
        INTERNAL_ERROR,
    ];
}

/// An event's failure as the client sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventError {
    /// Stable upper snake case code.
    pub code: Cow<'static, str>,
    /// Human readable message.
    pub message: Cow<'static, str>,
    /// Extra structured data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl EventError {
    /// An error with a code and a message.
    pub fn new(code: &'static str, message: impl Into<Cow<'static, str>>) -> EventError {
        EventError {
            code: Cow::Borrowed(code),
            message: message.into(),
            details: None,
        }
    }

    /// Replaces the code (a policy module's own code is passed through).
    pub fn with_code(mut self, code: String) -> EventError {
        self.code = Cow::Owned(code);
        self
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> EventError {
        self.details = Some(details);
        self
    }

    /// `VALIDATION_ERROR` naming the offending field.
    pub fn validation(field: &str, problem: &str) -> EventError {
        EventError::new(
            code::VALIDATION_ERROR,
            format!("Invalid {field}: {problem}"),
        )
        .with_details(json!({ "field": field }))
    }

    /// `ROOM_NOT_FOUND` with the original's message.
    pub fn room_not_found() -> EventError {
        EventError::new(code::ROOM_NOT_FOUND, "Room not found")
    }

    /// `SERVICE_UNAVAILABLE` with `details.retryAfterMs`: nothing was changed, try again.
    pub fn unavailable(message: &'static str, retry_after_ms: u64) -> EventError {
        EventError::new(code::SERVICE_UNAVAILABLE, message)
            .with_details(json!({ "retryAfterMs": retry_after_ms }))
    }

    /// `INTERNAL_ERROR`; the cause is logged here and not sent.
    pub fn internal(message: &'static str, cause: &dyn std::fmt::Display) -> EventError {
        tracing::error!(error = %cause, "{message}");
        EventError::new(code::INTERNAL_ERROR, message)
    }

    /// The ack body `{success: false, error}`.
    pub fn ack(&self) -> Value {
        json!({ "success": false, "error": self })
    }
}
