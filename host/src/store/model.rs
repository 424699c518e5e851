//! The rows the store reads and writes: rooms, members, and the write-behind operations.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// What kind of room it is (column `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomType {
    /// Open channel.
    Channel,
    /// Direct message between at most two members.
    Dm,
    /// Closed group of members.
    Group,
    /// Only admins and moderators may send.
    Broadcast,
}

/// Who may see and join a room (column `visibility`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Anyone may join.
    Public,
    /// Members only.
    Private,
    /// Members only, and not listed to others.
    Secret,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// The text stored in the database.
            pub fn as_str(&self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($text => Ok($ty::$variant),)* _ => Err(format!(
                    "unknown {} {s:?} (expected {})", stringify!($ty), [$($text),*].join(", ")
                )) }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
text_enum!(RoomType { Channel => "channel", Dm => "dm", Group => "group", Broadcast => "broadcast" });
text_enum!(Visibility { Public => "public", Private => "private", Secret => "secret" });
text_enum!(Role { Admin => "admin", Moderator => "moderator", Member => "member", Guest => "guest" });

/// A member's role in a room (column `role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages the room; may send in broadcast rooms.
    Admin,
    /// Moderates; may send in broadcast rooms.
    Moderator,
    /// A plain member (what a join creates).
    Member,
    /// A guest.
    Guest,
}

impl Role {
    /// The role of a stored row: a text this server does not know (another tool wrote it)
    /// grants the least, `guest`; no role is `member` (the column's default).
    pub fn from_row(text: Option<&str>) -> Role {
        match text {
            None => Role::Member,
            Some(t) => t.parse().unwrap_or(Role::Guest),
        }
    }
}

/// A room row.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    /// Primary key (UUID).
    pub id: String,
    /// Unique name, also the Socket.IO room name.
    pub name: String,
    /// Room type.
    #[serde(rename = "type")]
    pub room_type: RoomType,
    /// Visibility.
    pub visibility: Visibility,
    /// Member limit, if any.
    pub max_members: Option<i32>,
    /// Soft-delete flag.
    pub is_active: bool,
    /// Free-form settings.
    pub settings: Value,
    /// Free-form metadata.
    pub metadata: Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// What `create-room` and `init` insert.
#[derive(Debug, Clone)]
pub struct NewRoom {
    /// Room name (validated by [`crate::rooms::validate_room_name`]).
    pub name: String,
    /// Room type.
    pub room_type: RoomType,
    /// Visibility.
    pub visibility: Visibility,
    /// Member limit.
    pub max_members: Option<i32>,
    /// Free-form settings (`{}` for none; `history: {size, ttl}` is read by the server).
    pub settings: Value,
}

impl NewRoom {
    /// A public channel without a member limit.
    pub fn new(name: impl Into<String>) -> NewRoom {
        NewRoom {
            name: name.into(),
            room_type: RoomType::Channel,
            visibility: Visibility::Public,
            max_members: None,
            settings: Value::Object(Default::default()),
        }
    }
}

/// A membership row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The member.
    pub user_id: String,
    /// Role in the room.
    pub role: Role,
    /// May read but not send.
    pub is_muted: bool,
    /// May not join.
    pub is_banned: bool,
}

/// A connection row as the CLI lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRow {
    /// Socket id.
    pub socket_id: String,
    /// User id (None for anonymous).
    pub user_id: Option<String>,
    /// The instance it is connected to.
    pub node_id: Option<String>,
    /// websocket or polling.
    pub transport: Option<String>,
    /// Last measured latency.
    pub latency_ms: Option<i32>,
    /// When it connected.
    pub connected_at: DateTime<Utc>,
}

/// An audit log row as the CLI lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    /// Event type (`connect`, `message:send`, ...).
    pub event_type: String,
    /// Socket id.
    pub socket_id: Option<String>,
    /// User id.
    pub user_id: Option<String>,
    /// Room id.
    pub room_id: Option<String>,
    /// JSON payload.
    pub payload: Value,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// Figures for `stats` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Connections with status `connected`.
    pub active_connections: i64,
    /// Of those, with a user id.
    pub authenticated_connections: i64,
    /// Rooms with `is_active`.
    pub active_rooms: i64,
    /// All rooms.
    pub total_rooms: i64,
    /// Presence rows per status.
    pub presence: PresenceCounts,
    /// Audit rows of the last hour.
    pub events_last_hour: i64,
    /// All audit rows.
    pub events_total: i64,
}

/// Users per presence status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PresenceCounts {
    /// online
    pub online: i64,
    /// away
    pub away: i64,
    /// busy
    pub busy: i64,
    /// offline
    pub offline: i64,
}

/// One write-behind operation. The writer applies a batch of them in one transaction.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// A socket connected.
    ConnectionOpened {
        /// Socket id.
        socket_id: String,
        /// User id.
        user_id: Option<String>,
        /// Session id.
        session_id: Option<String>,
        /// websocket or polling.
        transport: String,
        /// Remote IP.
        ip: Option<String>,
        /// User-Agent header.
        user_agent: Option<String>,
        /// `handshake.auth.device`.
        device_info: Option<Value>,
        /// This node's id.
        node_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A message of a room with persisted history.
    MessageKept {
        /// Room name.
        room: String,
        /// History generation.
        epoch: String,
        /// Offset in the room.
        offset: u64,
        /// The message as delivered (with its offset and epoch).
        message: Value,
        /// When it was kept.
        at: DateTime<Utc>,
        /// When it expires.
        expires_at: DateTime<Utc>,
    },
    /// A socket disconnected.
    ConnectionClosed {
        /// Socket id.
        socket_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The client sent `ping`.
    Ping {
        /// Socket id.
        socket_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The client sent `pong` with a latency.
    Pong {
        /// Socket id.
        socket_id: String,
        /// Measured latency.
        latency_ms: i32,
        /// When.
        at: DateTime<Utc>,
    },
    /// A user's presence row, written whole.
    Presence {
        /// User id.
        user_id: String,
        /// Status text.
        status: String,
        /// Custom status text.
        custom_status: Option<String>,
        /// Custom status emoji.
        custom_emoji: Option<String>,
        /// Custom status expiry.
        expires_at: Option<DateTime<Utc>>,
        /// Live sockets of the user.
        connections_count: i32,
        /// When.
        at: DateTime<Utc>,
    },
    /// Heartbeat of a live user.
    Heartbeat {
        /// User id.
        user_id: String,
        /// When.
        at: DateTime<Utc>,
        /// When the user last did something (moves `last_active`).
        last_active: Option<DateTime<Utc>>,
    },
    /// A typing entry was set or refreshed.
    TypingSet {
        /// Room id.
        room_id: String,
        /// User id.
        user_id: String,
        /// Thread id.
        thread_id: Option<String>,
        /// Start.
        started_at: DateTime<Utc>,
        /// Expiry.
        expires_at: DateTime<Utc>,
    },
    /// A typing entry ended.
    TypingClear {
        /// Room id.
        room_id: String,
        /// User id.
        user_id: String,
        /// Thread id.
        thread_id: Option<String>,
    },
    /// A user joined a room: the membership is written behind (an upsert: a member who joins
    /// again keeps their row, with `last_seen` moved).
    MemberJoin {
        /// Room id.
        room_id: String,
        /// User id.
        user_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A member joined a room again: `last_seen` moves (the row is not re-created).
    MemberSeen {
        /// Room id.
        room_id: String,
        /// User id.
        user_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A user left a public room: the self-made membership is deleted behind.
    MemberLeave {
        /// Room id.
        room_id: String,
        /// User id.
        user_id: String,
    },
    /// An audit log row.
    Event {
        /// Row id, chosen when the event happens: a batch retried after an ambiguous failure
        /// does not insert it twice.
        id: uuid::Uuid,
        /// Event type.
        event_type: String,
        /// Socket id.
        socket_id: Option<String>,
        /// User id.
        user_id: Option<String>,
        /// Room id.
        room_id: Option<String>,
        /// JSON payload.
        payload: Value,
        /// Remote IP.
        ip: Option<String>,
        /// Extra data (policy decisions).
        metadata: Option<Value>,
        /// When.
        at: DateTime<Utc>,
    },
}

impl WriteOp {
    /// Whether this operation writes a membership row (its commit is announced by the feed).
    pub fn is_membership(&self) -> bool {
        matches!(
            self,
            WriteOp::MemberJoin { .. } | WriteOp::MemberLeave { .. }
        )
    }
}

/// What happened to a membership row (a [`Change::Member`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberOp {
    /// A new row: the room has one member more.
    Insert,
    /// The role or a flag changed.
    Update,
    /// The row went: the room has one member less.
    Delete,
}

/// A change announced by the database (PostgreSQL `NOTIFY`, the SQLite change table): what the
/// caches apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The room of this name changed (or appeared, or went away): re-read it.
    Room(String),
    /// A membership changed; the row as it is now travels with the change.
    Member {
        /// Room id.
        room_id: String,
        /// User id.
        user_id: String,
        /// Insert, update or delete.
        op: MemberOp,
        /// The row after an insert or update (None after a delete).
        member: Option<Member>,
        /// The node whose writer made the change (None: the CLI, plain SQL, another tool).
        origin: Option<String>,
        /// Where the change stands in the database's order.
        position: Position,
    },
    /// Anything may have changed (the feed was lost and notifications may be missing).
    All,
}

/// A room's membership figures (a bulk count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCount {
    /// Room id.
    pub room_id: String,
    /// Membership rows.
    pub members: i64,
    /// Of those, muted or banned.
    pub sanctioned: i64,
}

/// Where a change stands in the database's commit order: whether a count read at a
/// [`Watermark`] already includes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// SQLite: the change table's sequence number.
    Seq(i64),
    /// PostgreSQL: the id of the transaction that made the change.
    Tx(i64),
    /// Not known (an older notification): treated as not included.
    Unknown,
}

/// What a bulk read saw: the changes it includes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watermark {
    /// SQLite: every change up to this sequence number.
    Seq(i64),
    /// PostgreSQL: the read's snapshot (transactions below `xmin` are in it, those at or past
    /// `xmax` and those in `running` are not).
    Snapshot {
        /// Oldest transaction still running when the snapshot was taken.
        xmin: i64,
        /// First transaction id not yet assigned then.
        xmax: i64,
        /// Transactions running then.
        running: Vec<i64>,
    },
}

impl Watermark {
    /// Whether a read at this watermark saw the change at `p`.
    pub fn includes(&self, p: Position) -> bool {
        match (self, p) {
            (Watermark::Seq(w), Position::Seq(s)) => s <= *w,
            (
                Watermark::Snapshot {
                    xmin,
                    xmax,
                    running,
                },
                Position::Tx(t),
            ) => t < *xmin || (t < *xmax && !running.contains(&t)),
            _ => false,
        }
    }
}

/// A user whose last connection was on a node that died (crash cleanup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offline {
    /// User id.
    pub user_id: String,
    /// Names of the rooms the user is a member of.
    pub rooms: Vec<String>,
}

/// A room's history as the database keeps it (the newest epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct KeptHistory {
    /// The newest generation.
    pub epoch: String,
    /// Its last offset.
    pub last: u64,
    /// Its unexpired messages, oldest first: (offset, message, kept at).
    pub entries: Vec<(u64, Value, DateTime<Utc>)>,
}
