//! What a module answers: [`Verdict`] (allow / modify / reject), what it says about itself:
//! [`Descriptor`], and the well-known rejection [`codes`].

use serde_json::Value;

/// Well-known error codes (they reach the client as is). A module may use its own upper snake
/// case codes too.
pub mod codes {
    /// Generic refusal by a policy module.
    pub const POLICY_REJECTED: &str = "POLICY_REJECTED";
    /// The payload is not acceptable (e.g. nothing left after sanitizing).
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    /// The sender may not join / use the room.
    pub const ROOM_ACCESS_DENIED: &str = "ROOM_ACCESS_DENIED";
    /// The sender sends too much.
    pub const RATE_LIMIT_EXCEEDED: &str = "RATE_LIMIT_EXCEEDED";
}

/// A module's answer to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the event through unchanged.
    Allow,
    /// Let it through with this payload (JSON text) instead.
    Modify(String),
    /// Refuse it; `code` reaches the client as is.
    Reject {
        /// Upper snake case code, e.g. `POLICY_REJECTED` or the module's own.
        code: String,
        /// Human readable message.
        message: String,
        /// Extra data for the client's `error.details` (a JSON object; the host adds
        /// `plugin`), e.g. `{"retryAfterMs": 1500}`.
        details: Option<Value>,
    },
}

impl Verdict {
    /// Let the event through unchanged.
    pub fn allow() -> Self {
        Verdict::Allow
    }

    /// Let the event through with `payload` instead of its own.
    pub fn modify(payload: Value) -> Self {
        Verdict::Modify(payload.to_string())
    }

    /// Let the event through with this exact payload text. Nothing checks that it is JSON: the
    /// host refuses a verdict whose payload is not (the event then fails closed).
    pub fn modify_raw(payload_json: impl Into<String>) -> Self {
        Verdict::Modify(payload_json.into())
    }

    /// Refuse the event with this code (see [`codes`]) and message.
    pub fn reject(code: impl Into<String>, message: impl Into<String>) -> Self {
        Verdict::Reject {
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }

    /// Adds details to a rejection: a JSON object the client receives as `error.details`
    /// (beside `plugin`, which the host sets). No effect on other verdicts.
    ///
    /// ```
    /// use nself_realtime_guest::{Verdict, codes};
    /// use serde_json::json;
    ///
    /// let v = Verdict::reject(codes::RATE_LIMIT_EXCEEDED, "slow down")
    ///     .with_details(json!({"retryAfterMs": 1500}));
    /// assert_eq!(v.reject_details(), Some(&json!({"retryAfterMs": 1500})));
    /// ```
    pub fn with_details(self, details: Value) -> Self {
        match self {
            Verdict::Reject { code, message, .. } => Verdict::Reject {
                code,
                message,
                details: Some(details),
            },
            other => other,
        }
    }

    /// Whether this is [`Verdict::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }

    /// Whether this is a [`Verdict::Reject`].
    pub fn is_reject(&self) -> bool {
        matches!(self, Verdict::Reject { .. })
    }

    /// The new payload of a [`Verdict::Modify`], parsed (`None` for other verdicts or a payload
    /// that is not JSON).
    pub fn modified_payload(&self) -> Option<Value> {
        match self {
            Verdict::Modify(json) => serde_json::from_str(json).ok(),
            _ => None,
        }
    }

    /// The code of a [`Verdict::Reject`].
    pub fn reject_code(&self) -> Option<&str> {
        match self {
            Verdict::Reject { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The details of a [`Verdict::Reject`], if it has any.
    pub fn reject_details(&self) -> Option<&Value> {
        match self {
            Verdict::Reject { details, .. } => details.as_ref(),
            _ => None,
        }
    }
}

/// What a module says about itself when loaded (returned by
/// [`Policy::describe`](crate::Policy::describe)).
///
/// ```
/// use nself_realtime_guest::Descriptor;
///
/// let d = Descriptor::new("sanitizer", "1.0.0")
///     .with_events(["message:send"])
///     .with_priority(10);
/// assert_eq!(d.events, ["message:send"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Module name (unique among loaded modules).
    pub name: String,
    /// Module version.
    pub version: String,
    /// Events it wants (`*` for all).
    pub events: Vec<String>,
    /// Lower runs first.
    pub priority: i32,
    /// Events whose acceptance by the server the module wants to hear of
    /// ([`Policy::accepted`](crate::Policy::accepted)).
    pub accepted: Vec<String>,
}

impl Descriptor {
    /// A module named `name` at `version` that wants every event (`*`) at priority 0.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Descriptor {
            name: name.into(),
            version: version.into(),
            events: vec!["*".to_owned()],
            priority: 0,
            accepted: Vec::new(),
        }
    }

    /// Sets the events the module wants (`*` for all).
    pub fn with_events<I, S>(mut self, events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.events = events.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the priority (lower runs first).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Asks to hear, through [`Policy::accepted`](crate::Policy::accepted), of these events
    /// once the server accepted them (its own rules passed and it was carried out): count what
    /// was accepted, not what was merely attempted.
    pub fn with_accepted<I, S>(mut self, events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.accepted = events.into_iter().map(Into::into).collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builders() {
        assert!(Verdict::allow().is_allow());
        let v = Verdict::modify(json!({"content": "x"}));
        assert_eq!(v.modified_payload(), Some(json!({"content": "x"})));
        assert!(!v.is_allow() && !v.is_reject());
        let v = Verdict::reject(codes::POLICY_REJECTED, "no");
        assert!(v.is_reject());
        assert_eq!(v.reject_code(), Some("POLICY_REJECTED"));
        assert_eq!(Verdict::modify_raw("nope").modified_payload(), None);
    }

    #[test]
    fn descriptor_defaults() {
        let d = Descriptor::new("m", "1.2.3");
        assert_eq!(d.events, ["*"]);
        assert_eq!(d.priority, 0);
        let d = d.with_events(["a", "b"]).with_priority(-3);
        assert_eq!(d.events, ["a", "b"]);
        assert_eq!(d.priority, -3);
    }
}
