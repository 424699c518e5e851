//! The command line: `serve` (default) and the management subcommands. Human tables by
//! default (the original's formats), `--json` for scripts.

mod output;
mod plugins;

use clap::{Parser, Subcommand};

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
    /// List active rooms.
    Rooms {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Create a room (an existing room is left unchanged).
    CreateRoom {
        /// Room name (1-255 of A-Z a-z 0-9 _ . : @ -).
        name: String,
        /// channel, dm, group or broadcast.
        #[arg(short = 't', long = "type", default_value = "channel")]
        room_type: RoomType,
        /// public, private or secret.
        #[arg(short = 'v', long, default_value = "public")]
        visibility: Visibility,
        /// Member limit.
        #[arg(long)]
        max_members: Option<i32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Add (or update) a room member.
    AddMember {
        /// Room name.
        room: String,
        /// User id.
        user: String,
        /// admin, moderator, member or guest.
        #[arg(long, default_value = "member")]
        role: String,
        /// Muted: may read, not send.
        #[arg(long)]
        muted: bool,
        /// Banned: may not join.
        #[arg(long)]
        banned: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a room member.
    RemoveMember {
        /// Room name.
        room: String,
        /// User id.
        user: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List connected sockets.
    Connections {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List policy modules (name, version, hash, status, calls, rejects, traps, p50/p99).
    Plugins {
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

pub use output::run_command;
