//! nself-realtime: a Socket.IO v4 realtime server (rooms, presence, typing, persistence, audit
//! log, health and metrics) that is a drop-in replacement for the Node.js nself realtime plugin.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | environment (+ `.env`) -> typed [`config::Config`]; errors name the variable |
//! | [`server`] | `run(config, listener, shutdown)`: state, background tasks, serve, drain |
//! | [`app`] | [`app::App`], the shared state of one server |
//! | [`auth`] | token -> [`auth::Identity`] (pure) |
//! | [`transport`] | socketioxide setup, connect middleware, per-socket link (ordered inbox) |
//! | [`pipeline`] | the fixed stage order every client event goes through, and its handlers |
//! | [`rooms`] | room name syntax and access rules (pure) |
//! | [`presence`] | presence trait + in-memory implementation |
//! | [`typing`] | typing trait + in-memory implementation |
//! | [`extensions`] | WebAssembly policy modules: engine, registry, hot reload, chain |
//! | [`fanout`] | broadcast trait over the Socket.IO adapter |
//! | [`store`] | store trait, SQLite backend, write-behind batching writer |
//! | [`dedupe`] | `clientMessageId` memory |
//! | [`metrics`] | Prometheus registry of the server |
//! | [`http`] | `/health*`, `/metrics` |
//! | [`cli`] | subcommands and their table output |
//! | [`error`] | the `{code, message, details?}` every failed event ends in |

pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dedupe;
pub mod error;
pub mod extensions;
pub mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod presence;
pub mod rooms;
pub mod server;
pub mod store;
pub mod transport;
pub mod typing;
pub mod util;
