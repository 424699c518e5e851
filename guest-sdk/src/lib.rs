//! Guest SDK for nself-realtime policy modules: implement [`Policy`], call [`export_policy!`],
//! build for `wasm32-wasip2`, drop the `.wasm` into the server's plugins directory.
//!
//! A policy module is a WebAssembly component of the `policy-module` world of the server's
//! `wit/realtime.wit`. The server calls it for every client event it subscribed to (after
//! authentication, before the server's own room rules) and acts on its [`Verdict`]: let the
//! event through, let it through with a rewritten payload, or refuse it with an error code
//! that reaches the client.
//!
//! # Writing a module
//!
//! ```
//! use nself_realtime_guest::{
//!     Descriptor, Event, Policy, Verdict, codes, export_policy, host, parse_config,
//! };
//! use serde::Deserialize;
//!
//! /// The sidecar's `config` string, as JSON (`""` gives the defaults).
//! #[derive(Deserialize)]
//! #[serde(default, rename_all = "camelCase")]
//! struct Config {
//!     banned_word: String,
//! }
//!
//! impl Default for Config {
//!     fn default() -> Self {
//!         Config { banned_word: "spam".into() }
//!     }
//! }
//!
//! struct NoSpam {
//!     config: Config,
//! }
//!
//! impl Policy for NoSpam {
//!     // Called once per loaded instance with the sidecar's `config` string; an `Err` makes
//!     // the load fail (the previous version of the module stays live).
//!     fn configure(config: &str) -> Result<Self, String> {
//!         Ok(NoSpam { config: parse_config(config)? })
//!     }
//!
//!     fn describe(&self) -> Descriptor {
//!         Descriptor::new("no-spam", env!("CARGO_PKG_VERSION"))
//!             .with_events(["message:send"])
//!             .with_priority(30)
//!     }
//!
//!     fn handle(&self, event: &Event) -> Verdict {
//!         let Some(content) = event.content() else {
//!             return Verdict::allow(); // not our business: the server validates payloads
//!         };
//!         if content.contains(&self.config.banned_word) {
//!             // Host key/value store: count offenders (shared by all instances).
//!             let user = event.user_id().unwrap_or("anonymous");
//!             let strikes = host::kv_incr(&format!("strikes:{user}"), 1, Some(60_000));
//!             host::info(&format!("{user} has {strikes} strike(s)"));
//!             return Verdict::reject(codes::POLICY_REJECTED, "no spam, please");
//!         }
//!         if content.starts_with("  ") {
//!             // Rewrite: the next module and the server see the new payload.
//!             if let Some(payload) = event.payload_with("content", content.trim_start()) {
//!                 return Verdict::modify(payload);
//!             }
//!         }
//!         Verdict::allow()
//!     }
//! }
//!
//! export_policy!(NoSpam);
//!
//! // Unit tests run natively with plain `cargo test` (no wasm, no server): build the policy
//! // with `configure`, build events with `Event::new(..).with_*(..)`, check verdicts. The host
//! // functions fall back to an in-process stand-in (see the `testing` module).
//! # fn main() {
//! use nself_realtime_guest::testing;
//! use serde_json::json;
//!
//! let policy = NoSpam::configure(r#"{"bannedWord": "buy now"}"#).unwrap();
//! let event = Event::new("message:send", json!({"roomName": "general", "content": "buy now!"}))
//!     .with_user("u1");
//! let verdict = policy.handle(&event);
//! assert_eq!(verdict.reject_code(), Some("POLICY_REJECTED"));
//! assert_eq!(host::kv_get("strikes:u1").as_deref(), Some("1"));
//! assert_eq!(testing::logs().len(), 1);
//!
//! let event = Event::new("message:send", json!({"roomName": "general", "content": "  hi"}));
//! assert_eq!(
//!     policy.handle(&event).modified_payload(),
//!     Some(json!({"roomName": "general", "content": "hi"}))
//! );
//! assert!(NoSpam::configure("{not json").is_err());
//! # }
//! ```
//!
//! # Building
//!
//! A module is a `cdylib` crate depending on this one (and `serde`/`serde_json` if it needs
//! them; it does not need `wit-bindgen`). `nself-realtime plugin new NAME` writes such a crate
//! for you, with a copy of this SDK beside it. By hand:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! nself-realtime-guest = "0.2"
//! # or, from a copy of this crate (e.g. the one `plugin new` writes, or a server checkout):
//! # nself-realtime-guest = { path = "../nself-realtime-guest" }
//! ```
//!
//! `cargo build --release --target wasm32-wasip2` (after `rustup target add wasm32-wasip2`)
//! writes `target/wasm32-wasip2/release/<crate_name>.wasm`, a component ready to load. Copy it
//! into the server's plugins directory, optionally with a sidecar named after the file
//! (`<file stem>.toml`, `-` and `_` alike: `slow_guard.wasm` takes `slow-guard.toml` too) that
//! sets priority, events, `on_error`, `timeout_ms`, `memory_mb`, `mode` and `config`.
//!
//! Check a build offline before dropping it in: `nself-realtime plugin check FILE.wasm
//! [--config JSON]` loads it as the server would, and `nself-realtime plugin run FILE.wasm
//! --event message:send --payload '{...}'` prints its verdict as JSON.
//!
//! # Interface versions
//!
//! This SDK builds components of interface `nself:realtime@0.2.0`. The server loads 0.2.0 and
//! 0.1.0 modules side by side; 0.2.0 added rejection details ([`Verdict::with_details`]),
//! refusing a configuration with a message ([`Policy::configure`] returning `Err`), and
//! acceptance notifications ([`Descriptor::with_accepted`], [`Policy::accepted`]).
//!
//! # What the host expects
//!
//! - `describe(config)` is called once per instance before any `handle`; [`Policy::configure`]
//!   runs there, and its `Err` message is what the server reports (in `/health`, the
//!   `plugins` command and its log) for the failed load. If `handle` is ever called on an
//!   instance that was not described, the SDK configures the policy with `""` (and logs a
//!   warning).
//! - A panic (anywhere) traps the instance: the host fails the event closed
//!   (`POLICY_REJECTED`) unless the module's sidecar says `on_error = "allow"`. The panic
//!   message goes to the host log (level error) first.
//! - Calls must be quick (default deadline 10 ms) and small (default memory cap 16 MiB).
//! - Module state kept in `self` lives as long as the host keeps the instance; state that must
//!   be shared or survive a reload belongs in the host key/value store ([`host`]).
#![deny(missing_docs)]

extern crate self as nself_realtime_guest;

mod event;
pub mod host;
pub mod payloads;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod verdict;

#[doc(hidden)]
#[path = "glue.rs"]
pub mod __private;

pub use event::{Event, Identity, RoomInfo};
/// The `serde_json` this SDK uses ([`Verdict::modify`] takes its [`Value`](serde_json::Value)).
pub use serde_json;
pub use verdict::{Descriptor, Verdict, codes};

use serde::de::DeserializeOwned;

/// A policy module. Implement it on your type and export it with [`export_policy!`].
pub trait Policy: Sized + 'static {
    /// Builds the policy from the sidecar's `config` string (`""` when there is none). Called
    /// once per loaded instance, before [`Policy::describe`]. Returning `Err` fails the load
    /// (the error is logged and the module's previous version, if any, stays live).
    fn configure(config: &str) -> Result<Self, String>;

    /// Name, version, wanted events and priority of the module.
    fn describe(&self) -> Descriptor;

    /// Decides about one event. Must be quick and should not panic on odd input (a panic traps
    /// and fails the event closed).
    fn handle(&self, event: &Event) -> Verdict;

    /// Hears that the server accepted an event listed in the descriptor's `accepted`
    /// ([`Descriptor::with_accepted`]): the whole chain let it through, the server's own rules
    /// passed and it was carried out. `event` carries the payload as it was handled (after any
    /// rewrite). Called off the event path, after the client had its answer; the default does
    /// nothing.
    ///
    /// Keep counts that must hold across instances in the host key/value store ([`host`]):
    /// the host may call `accepted` on another instance than the `handle` of the same event.
    fn accepted(&self, event: &Event) {
        let _ = event;
    }
}

/// Parses a JSON config string into `T`; an empty (or all-whitespace) string gives
/// `T::default()`. Use `#[serde(default)]` on `T` so that partial configs work.
///
/// ```
/// # use nself_realtime_guest::parse_config;
/// #[derive(serde::Deserialize, Default, Debug, PartialEq)]
/// #[serde(default)]
/// struct Config { limit: u32 }
///
/// assert_eq!(parse_config::<Config>("").unwrap(), Config { limit: 0 });
/// assert_eq!(parse_config::<Config>(r#"{"limit": 5}"#).unwrap(), Config { limit: 5 });
/// assert!(parse_config::<Config>(r#"{"limit": "five"}"#).is_err());
/// ```
pub fn parse_config<T: DeserializeOwned + Default>(config: &str) -> Result<T, String> {
    if config.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(config)
        .map_err(|e| format!("config is not valid JSON for this module: {e}"))
}

/// Exports a [`Policy`] as the module's `describe` and `handle`: `export_policy!(MyPolicy);`,
/// once per crate, at module level.
///
/// On `wasm32` this emits the component exports (`nself:realtime/policy@0.2.0#describe`,
/// `#handle` and `#accepted`). On other targets it only checks that the type implements [`Policy`], so the
/// crate still builds and tests natively.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __NselfRealtimeGuestExport;
            impl $crate::__private::Guest for __NselfRealtimeGuestExport {
                fn describe(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::__private::WitDescriptor, ::std::string::String>
                {
                    $crate::__private::describe::<$policy>(config)
                }
                fn handle(event: $crate::__private::WitEvent) -> $crate::__private::WitVerdict {
                    $crate::__private::handle::<$policy>(event)
                }
                fn accepted(event: $crate::__private::WitEvent) {
                    $crate::__private::accepted::<$policy>(event)
                }
            }
            $crate::__private::bindings::__nself_realtime_export_policy_module!(
                __NselfRealtimeGuestExport with_types_in $crate::__private::bindings
            );
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __nself_realtime_assert_policy<P: $crate::Policy>() {}
            let _ = __nself_realtime_assert_policy::<$policy>;
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(default, deny_unknown_fields)]
    struct Cfg {
        n: u8,
    }

    #[test]
    fn parse_config_blank_is_default() {
        assert_eq!(parse_config::<Cfg>("  \n").map(|c| c.n), Ok(0));
        assert_eq!(parse_config::<Cfg>(r#"{"n":3}"#).map(|c| c.n), Ok(3));
        let err = parse_config::<Cfg>(r#"{"m":3}"#).expect_err("unknown field");
        assert!(err.contains("unknown field"), "{err}");
    }
}
