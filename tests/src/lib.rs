//! End-to-end test kit: a real server on port 0 ([`TestHost`]) and a real Socket.IO client ([`SioClient`]).
//!
//! Layout:
//! - [`host`]: `TestHost`, one `nself_realtime::server::run` per test on a temp database and
//!   plugins directory, plus plain HTTP helpers.
//! - [`token`]: JWT helpers (HS256 by default; expired, not-yet-valid, `alg=none`, other
//!   algorithms) signed with [`TEST_SECRET`] or any secret.
//! - [`client`]: `SioClient`, a minimal Engine.IO v4 / Socket.IO v5 websocket client: connect
//!   with auth, emit, emit with ack, buffered event reception, ping answers, disconnect
//!   detection. It is deliberately small so the benchmark generator can reuse it.
//! - [`pg`]: a fresh database on the shared PostgreSQL, or a private PostgreSQL server that a
//!   test may stop and restart.
//! - [`process`]: the `nself-realtime` binary as a separate process (CLI, SIGKILL tests).
//! - [`redis`]: a unique key prefix on the shared Redis, or a private `redis-server` that a
//!   test may shut down, restart, pause and whose connections it may kill.
//! - [`storm`]: join storms (thousands of clients connecting and joining at once).
//! - [`time`]: wall-clock helpers (epoch milliseconds, ISO 8601) without a date crate.
//!
//! The feature tests live in `tests/tests/*.rs`, one file per feature; the official JS client
//! checks live in `tests/node/` and are driven by `tests/tests/compat_js.rs`.

pub mod client;
pub mod host;
pub mod pg;
pub mod process;
pub mod redis;
pub mod storm;
pub mod time;
pub mod token;

pub use client::{ConnectError, ConnectErrorKind, ConnectOptions, SioClient};
pub use host::{HttpResponse, TestHost};
pub use nself_realtime::store::{RoomType, Visibility};
pub use token::{TEST_SECRET, token, user_token};

/// A loopback TCP port free at the time of asking (for a server a test starts itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Shorthand for the `Duration` of `ms` milliseconds; tests read better with it.
pub fn ms(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms)
}

/// Asserts that an ack is `{success: true}` and returns its `data` (or `null`).
#[track_caller]
pub fn ack_ok(ack: &serde_json::Value) -> serde_json::Value {
    assert_eq!(
        ack.get("success"),
        Some(&serde_json::Value::Bool(true)),
        "expected a successful ack, got {ack}"
    );
    ack.get("data").cloned().unwrap_or(serde_json::Value::Null)
}

/// Asserts that an ack is `{success: false, error: {code, message}}` with this code and returns
/// the error object.
#[track_caller]
pub fn ack_err(ack: &serde_json::Value, code: &str) -> serde_json::Value {
    assert_eq!(
        ack.get("success"),
        Some(&serde_json::Value::Bool(false)),
        "expected a failed ack with {code}, got {ack}"
    );
    let error = ack.get("error").cloned().unwrap_or(serde_json::Value::Null);
    assert_eq!(
        error.get("code").and_then(|c| c.as_str()),
        Some(code),
        "expected error code {code}, got {ack}"
    );
    assert!(
        error.get("message").is_some_and(|m| m.is_string()),
        "error.message must be a string: {ack}"
    );
    error
}

/// The bytes of a policy module built by `scripts/build-plugins` (`plugins/dist/NAME.wasm`).
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Build the policy modules first: scripts/build-plugins",
            path.display()
        )
    })
}
