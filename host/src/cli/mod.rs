//! The command line: `serve` (default) and the management subcommands. Human tables by
//! default (the original's formats), `--json` for scripts.

mod client;
mod dispatch;
mod figures;
mod live;
mod plugin;
mod plugins;
mod print;
mod rooms;
mod status;
mod token;
mod uninstall;

pub use dispatch::run_command;

use clap::{Args, Parser, Subcommand};

use crate::store::{RoomType, Visibility};

/// nself-realtime: Socket.IO v4 realtime server.
#[derive(Debug, Parser)]
#[command(name = "nself-realtime", version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply migrations, create the default rooms, clean stale state.
    Init {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show connection, room, presence and event figures.
    Stats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Rooms: `rooms` alone lists the active rooms; `rooms create|delete|info|add-member|remove-member`.
    #[command(args_conflicts_with_subcommands = true)]
    Rooms {
        /// What to do with rooms (default: list).
        #[command(subcommand)]
        action: Option<RoomsCommand>,
        /// Machine-readable output (of the list).
        #[arg(long)]
        json: bool,
    },
    /// Create a room (an existing room is left unchanged, a deleted one is reactivated).
    CreateRoom(CreateRoomArgs),
    /// Add (or update) a room member.
    AddMember(AddMemberArgs),
    /// Remove a room member.
    RemoveMember(RemoveMemberArgs),
    /// List connected sockets.
    Connections {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the live instances of the cluster (asks the running server's API: needs
    /// REALTIME_API_KEY).
    Nodes {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Disconnect a user's sockets or one socket, on whichever instance (asks the running
    /// server's API: needs REALTIME_API_KEY).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["user", "socket"])))]
    Disconnect {
        /// Every socket of this user.
        #[arg(long, allow_hyphen_values = true)]
        user: Option<String>,
        /// This socket (socket ids may start with `-`).
        #[arg(long, allow_hyphen_values = true)]
        socket: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List policy modules (status, mode, hash, calls and verdicts, p50/p99). Exits 1 when a
    /// module file failed to load or a module is quarantined.
    Plugins {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Mint a token for testing, signed with REALTIME_JWT_SECRET (HS256/384/512).
    Token {
        /// The `userId` claim.
        #[arg(long)]
        user: String,
        /// `roles` claim, comma separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// `sessionId` claim (default: a new UUID).
        #[arg(long)]
        session: Option<String>,
        /// Lifetime: 3600, 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Machine-readable output (the token and its claims).
        #[arg(long)]
        json: bool,
    },
    /// Check a token as the server's handshake would: exit 0 with its identity, or 1 and why.
    CheckToken {
        /// The token.
        token: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A module author's tools: `plugin new|check|run` (no server needed).
    Plugin {
        /// What to do.
        #[command(subcommand)]
        action: PluginCommand,
    },
    /// Process, health, metrics and store figures of the server (asked over HTTP at
    /// REALTIME_HOST:REALTIME_PORT).
    Status {
        /// PID file of a background server, to report whether that process runs.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<std::path::PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the server's liveness endpoint (`<REALTIME_HEALTH_PATH>/live`) answers 200,
    /// 1 otherwise (container HEALTHCHECK, scripts).
    Healthcheck {
        /// Ask readiness (`<REALTIME_HEALTH_PATH>/ready`) instead: 1 while draining.
        #[arg(long)]
        ready: bool,
        /// How long to wait for an answer, ms.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Drop the plugin's database objects (PostgreSQL: its tables, views, functions and
    /// migration records; SQLite: the database file). Refuses without --yes.
    Uninstall {
        /// Really drop the data.
        #[arg(long)]
        yes: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the newest audit log events.
    Events {
        /// How many.
        #[arg(short = 'n', long = "number", default_value_t = 20)]
        number: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `plugin` actions.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write a new policy module crate DIR/NAME (Cargo.toml, src/lib.rs with a tested example
    /// policy, NAME.toml sidecar, README, a copy of the guest SDK).
    New {
        /// Module (and crate) name: a-z 0-9 - _, starting with a letter.
        name: String,
        /// Where to create the crate's directory.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Load a module file as the server would (interface version, imports, sidecar beside it,
    /// `describe`) and print what it says about itself; exit 1 with the reason if it would not
    /// load.
    Check {
        /// The `.wasm` file.
        file: std::path::PathBuf,
        /// Config string for `describe` (default: the sidecar's `config`, else "").
        #[arg(long)]
        config: Option<String>,
    },
    /// Send a module one event and print its verdict as JSON.
    Run {
        /// The `.wasm` file.
        file: std::path::PathBuf,
        /// Event name (message:send, room:join, typing:start, connect, ...).
        #[arg(long)]
        event: String,
        /// The event's payload (JSON).
        #[arg(long, default_value = "{}")]
        payload: String,
        /// The sender's user id (default: anonymous).
        #[arg(long)]
        user: Option<String>,
        /// The sender's roles, comma-separated (the token's `roles` claim).
        #[arg(long)]
        roles: Option<String>,
        /// The targeted room (room info for the module; a public channel unless said
        /// otherwise).
        #[arg(long)]
        room: Option<String>,
        /// The room's type (channel, dm, group, broadcast).
        #[arg(long)]
        room_type: Option<String>,
        /// The room's visibility (public, private, secret).
        #[arg(long)]
        visibility: Option<String>,
        /// The sender's role in the room (admin, moderator, member, guest).
        #[arg(long)]
        member_role: Option<String>,
        /// Config string for `describe` (default: the sidecar's `config`, else "").
        #[arg(long)]
        config: Option<String>,
    },
}

/// `rooms` actions (the nself plugin's `rooms` action calls these).
#[derive(Debug, Subcommand)]
pub enum RoomsCommand {
    /// List active rooms (the same as `rooms` alone).
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Create a room (an existing room is left unchanged, a deleted one is reactivated).
    Create(CreateRoomArgs),
    /// Delete a room (soft: it stops being listed and joinable; `create` brings it back).
    Delete {
        /// Room name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A room and its members.
    Info {
        /// Room name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Add (or update) a room member.
    AddMember(AddMemberArgs),
    /// Remove a room member.
    RemoveMember(RemoveMemberArgs),
    /// Show a room's history settings, or change them (running servers pick the change up).
    History(RoomHistoryArgs),
}

/// Arguments of `rooms history`.
#[derive(Debug, Args)]
pub struct RoomHistoryArgs {
    /// Room name.
    pub name: String,
    /// Messages kept (0: no history in this room).
    #[arg(long)]
    pub size: Option<u32>,
    /// How long a message is kept: 600, 90s, 30m, 1h, 7d.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Drop the room's own settings: REALTIME_HISTORY_SIZE / REALTIME_HISTORY_TTL apply.
    #[arg(long, conflicts_with_all = ["size", "ttl"])]
    pub defaults: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `create-room` / `rooms create`.
#[derive(Debug, Args)]
pub struct CreateRoomArgs {
    /// Room name (1-255 of A-Z a-z 0-9 _ . : @ -).
    pub name: String,
    /// channel, dm, group or broadcast.
    #[arg(short = 't', long = "type", default_value = "channel")]
    pub room_type: RoomType,
    /// public, private or secret.
    #[arg(short = 'v', long, default_value = "public")]
    pub visibility: Visibility,
    /// Member limit.
    #[arg(long)]
    pub max_members: Option<i32>,
    /// Messages kept in the room's history (0: none; default REALTIME_HISTORY_SIZE).
    #[arg(long)]
    pub history_size: Option<u32>,
    /// How long a message stays in the room's history: 600, 90s, 30m, 1h, 7d (default
    /// REALTIME_HISTORY_TTL).
    #[arg(long)]
    pub history_ttl: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `add-member` / `rooms add-member`.
#[derive(Debug, Args)]
pub struct AddMemberArgs {
    /// Room name.
    pub room: String,
    /// User id.
    pub user: String,
    /// admin, moderator, member or guest.
    #[arg(long, default_value = "member")]
    pub role: String,
    /// Muted: may read, not send.
    #[arg(long)]
    pub muted: bool,
    /// Banned: may not join.
    #[arg(long)]
    pub banned: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `remove-member` / `rooms remove-member`.
#[derive(Debug, Args)]
pub struct RemoveMemberArgs {
    /// Room name.
    pub room: String,
    /// User id.
    pub user: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}
