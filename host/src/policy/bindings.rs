//! The generated WIT bindings of both interface versions the host loads, and the host's own
//! version-independent types, converted here. The only file that names generated types.
//!
//! - `0.1.0` (`wit/v0.1.0/realtime.wit`): the first interface; modules built against it load
//!   unchanged.
//! - `0.2.0` (`wit/realtime.wit`, what the SDK targets): rejections carry `details`,
//!   `describe` may refuse its configuration with a message, and a module may subscribe to
//!   `accepted` notifications.

/// Bindings of `nself:realtime@0.1.0`.
#[allow(missing_docs)]
pub mod v1 {
    wasmtime::component::bindgen!({
        world: "policy-module",
        path: "../wit/v0.1.0",
    });
}

/// Bindings of `nself:realtime@0.2.0`.
#[allow(missing_docs)]
pub mod v2 {
    wasmtime::component::bindgen!({
        world: "policy-module",
        path: "../wit",
    });
}

/// The exported interface of a 0.1.0 module.
pub const EXPORT_V1: &str = "nself:realtime/policy@0.1.0";
/// The exported interface of a 0.2.0 module.
pub const EXPORT_V2: &str = "nself:realtime/policy@0.2.0";
/// The package prefix of every version of that interface.
pub const POLICY_EXPORT_PREFIX: &str = "nself:realtime/policy@";

/// The interface version a module was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `0.1.0`.
    V1,
    /// `0.2.0`.
    V2,
}

impl Version {
    /// `0.1.0` or `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "0.1.0",
            Version::V2 => "0.2.0",
        }
    }
}

/// Who sent an event, as the connection's token says.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `userId` (or `sub`).
    pub user_id: Option<String>,
    /// `sessionId` (or `sid`).
    pub session_id: Option<String>,
    /// `roles`.
    pub roles: Vec<String>,
    /// Every claim, as a JSON object.
    pub claims_json: String,
}

/// The room an event targets.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    /// Room name.
    pub name: String,
    /// channel, dm, group or broadcast.
    pub room_type: String,
    /// public, private or secret.
    pub visibility: String,
    /// The sender's role in the room, if a member.
    pub member_role: Option<String>,
}

/// One client event as modules see it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Event name.
    pub name: String,
    /// The payload as JSON.
    pub payload_json: String,
    /// The sender's socket id.
    pub socket_id: String,
    /// The sender.
    pub identity: Identity,
    /// The targeted room.
    pub room: Option<RoomInfo>,
}

/// Why a module refuses an event.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The module's code.
    pub code: String,
    /// Its message.
    pub message: String,
    /// Extra data for the client (a JSON object; 0.2.0 only).
    pub details_json: Option<String>,
}

/// A module's answer.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Let the event through unchanged.
    Allow,
    /// Let it through with this JSON payload instead.
    Modify(String),
    /// Refuse it.
    Reject(Rejection),
}

/// What a module says about itself.
#[derive(Debug, Clone)]
pub struct Descriptor {
    /// Module name.
    pub name: String,
    /// Module version.
    pub version: String,
    /// Events it wants (`*` for all).
    pub events: Vec<String>,
    /// Lower runs first.
    pub priority: i32,
    /// Events whose acceptance it wants to hear of (0.2.0 only).
    pub accepted: Vec<String>,
}

/// Log levels of the host import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// trace
    Trace,
    /// debug
    Debug,
    /// info
    Info,
    /// warn
    Warn,
    /// error
    Error,
}

/// The conversions of one version's generated types (the two versions share their shapes but
/// are distinct types).
macro_rules! conversions {
    ($v:ident) => {
        impl From<&Event> for $v::nself::realtime::types::Event {
            fn from(e: &Event) -> Self {
                $v::nself::realtime::types::Event {
                    name: e.name.clone(),
                    payload_json: e.payload_json.clone(),
                    socket_id: e.socket_id.clone(),
                    identity: $v::nself::realtime::types::Identity {
                        user_id: e.identity.user_id.clone(),
                        session_id: e.identity.session_id.clone(),
                        roles: e.identity.roles.clone(),
                        claims_json: e.identity.claims_json.clone(),
                    },
                    room: e
                        .room
                        .as_ref()
                        .map(|r| $v::nself::realtime::types::RoomInfo {
                            name: r.name.clone(),
                            room_type: r.room_type.clone(),
                            visibility: r.visibility.clone(),
                            member_role: r.member_role.clone(),
                        }),
                }
            }
        }

        impl From<$v::nself::realtime::host::Level> for Level {
            fn from(l: $v::nself::realtime::host::Level) -> Level {
                use $v::nself::realtime::host::Level as L;
                match l {
                    L::Trace => Level::Trace,
                    L::Debug => Level::Debug,
                    L::Info => Level::Info,
                    L::Warn => Level::Warn,
                    L::Error => Level::Error,
                }
            }
        }
    };
}

conversions!(v1);
conversions!(v2);

impl From<v1::nself::realtime::types::Verdict> for Verdict {
    fn from(v: v1::nself::realtime::types::Verdict) -> Verdict {
        use v1::nself::realtime::types::Verdict as V;
        match v {
            V::Allow => Verdict::Allow,
            V::Modify(json) => Verdict::Modify(json),
            V::Reject(r) => Verdict::Reject(Rejection {
                code: r.code,
                message: r.message,
                details_json: None,
            }),
        }
    }
}

impl From<v2::nself::realtime::types::Verdict> for Verdict {
    fn from(v: v2::nself::realtime::types::Verdict) -> Verdict {
        use v2::nself::realtime::types::Verdict as V;
        match v {
            V::Allow => Verdict::Allow,
            V::Modify(json) => Verdict::Modify(json),
            V::Reject(r) => Verdict::Reject(Rejection {
                code: r.code,
                message: r.message,
                details_json: r.details_json,
            }),
        }
    }
}

impl From<v1::nself::realtime::types::Descriptor> for Descriptor {
    fn from(d: v1::nself::realtime::types::Descriptor) -> Descriptor {
        Descriptor {
            name: d.name,
            version: d.version,
            events: d.events,
            priority: d.priority,
            accepted: Vec::new(),
        }
    }
}

impl From<v2::nself::realtime::types::Descriptor> for Descriptor {
    fn from(d: v2::nself::realtime::types::Descriptor) -> Descriptor {
        Descriptor {
            name: d.name,
            version: d.version,
            events: d.events,
            priority: d.priority,
            accepted: d.accepted,
        }
    }
}
