//! nself-realtime: a Socket.IO v4 realtime server (rooms, presence, typing, persistence, audit
//! log, health and metrics) that is a drop-in replacement for the Node.js nself realtime plugin.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | environment (+ `.env`) -> typed [`config::Config`]; errors name the variable |
//! | [`server`] | `run(config, listener, shutdown)`: what starts, in order, and how it stops |
//! | [`api`] | the server API for backends (`/api/...`) and the admin page (`/admin`) |
//! | [`app`] | [`app::App`], the shared state of one server |
//! | [`auth`] | token -> [`auth::Identity`] (pure) |
//! | [`transport`] | the accept loop and its limits, socketioxide setup, admission, connect middleware, per-socket link (ordered inbox), per-IP connection rate |
//! | [`pipeline`] | the fixed stage order every client event goes through, and its handlers |
//! | [`rooms`] | room name syntax and access rules (pure) |
//! | [`presence`] | presence state (memory, Redis) and its announcement |
//! | [`typing`] | typing entries (memory, Redis) |
//! | [`policy`] | WebAssembly policy modules: engine, registry, hot reload, chain, key/value store |
//! | [`history`] | room history: positions on `message:new`, catch-up on join, paging |
//! | [`fanout`] | broadcasts over the Socket.IO adapter; room sockets across instances |
//! | [`store`] | store trait, SQLite and PostgreSQL backends, write-behind writer, the directory (rooms, memberships, counts in memory) |
//! | [`dedupe`] | `clientMessageId` memory and claims across instances |
//! | [`cluster`] | scale-out over Redis: the connection, the up/down monitor, node leases, the pub/sub driver, the scripts |
//! | [`maintenance`] | background work: janitor, leases and crash cleanup, Redis recovery |
//! | [`metrics`] | Prometheus registry of the server |
//! | [`http`] | `/health*`, `/metrics` |
//! | [`cli`] | subcommands and their table output |
//! | [`error`] | the `{code, message, details?}` every failed event ends in |
//! | [`util`] | time formats, constant-time comparison |

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dedupe;
pub mod error;
pub mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod http;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod presence;
pub mod rooms;
pub mod server;
pub mod store;
pub mod transport;
pub mod typing;
pub mod util;
