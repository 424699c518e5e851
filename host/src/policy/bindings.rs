//! The generated WIT bindings (`wit/realtime.wit`). The only file that names generated types;
//! the rest of the host goes through the re-exports below.

wasmtime::component::bindgen!({
    world: "policy-module",
    path: "../wit",
});

pub use nself::realtime::host::{Host, Level};
pub use nself::realtime::types::{Descriptor, Event, Identity, Rejection, RoomInfo, Verdict};

/// The exported interface a module must provide, with the version this host speaks.
pub const POLICY_EXPORT: &str = "nself:realtime/policy@0.1.0";
/// The package prefix of every version of that interface.
pub const POLICY_EXPORT_PREFIX: &str = "nself:realtime/policy@";
