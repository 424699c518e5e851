//! Connect options and connect errors of [`super::SioClient`].

use std::time::Duration;

use serde_json::{Value, json};

/// How a connection attempt ends when it does not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectErrorKind {
    /// The server answered the namespace connect with `44{message}` (`connect_error`).
    Refused,
    /// The websocket could not be opened (refused TCP, HTTP error on the upgrade, closed early).
    Transport,
    /// Nothing conclusive arrived in time.
    Timeout,
}

/// Why a connect failed; `message` is the `connect_error` message for [`ConnectErrorKind::Refused`].
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// Which stage failed.
    pub kind: ConnectErrorKind,
    /// `err.message` as a JS client would see it, or a transport description.
    pub message: String,
    /// `err.data`, when the server sent one.
    pub data: Option<Value>,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ConnectError {}

impl ConnectError {
    pub(crate) fn transport(message: impl Into<String>) -> ConnectError {
        ConnectError {
            kind: ConnectErrorKind::Transport,
            message: message.into(),
            data: None,
        }
    }
}

/// Options for [`SioClient::connect_with`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The handshake `auth` object sent with `40` (`None`: a bare `40`).
    pub auth: Option<Value>,
    /// Extra HTTP headers on the websocket upgrade (e.g. `Origin`, `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Bound on the whole handshake.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            auth: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectOptions {
    /// `auth: {token}`.
    pub fn token(token: &str) -> ConnectOptions {
        ConnectOptions {
            auth: Some(json!({ "token": token })),
            ..ConnectOptions::default()
        }
    }

    /// Adds a header to the upgrade request.
    pub fn header(mut self, name: &str, value: &str) -> ConnectOptions {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}
