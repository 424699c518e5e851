//! The optional `NAME.toml` beside `NAME.wasm`: priority, event filter, limits, failure mode
//! and the config string handed to the module's `describe`.

use serde::Deserialize;

/// What a module does when it fails (trap, timeout, malformed verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: the event is rejected with `POLICY_REJECTED` (the default).
    #[default]
    Deny,
    /// Fail open: the module is skipped.
    Allow,
}

/// Whether a module's verdicts are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Its verdicts are carried out (the default).
    #[default]
    Enforce,
    /// It runs on live traffic and its verdicts are recorded (metrics, audit, a log line per
    /// reject), never carried out: a new policy tried on production traffic before it is
    /// turned on.
    Shadow,
}

impl Mode {
    /// `enforce` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Mode {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// The sidecar file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Overrides the priority the module reports (lower runs first).
    pub priority: Option<i32>,
    /// Overrides the events the module asks for.
    pub events: Option<Vec<String>>,
    /// Failure mode.
    #[serde(default)]
    pub on_error: OnError,
    /// CPU deadline per call, in ms (default 10).
    pub timeout_ms: Option<u64>,
    /// Memory cap, in MiB (default 16).
    pub memory_mb: Option<u64>,
    /// The string handed to `describe`.
    pub config: Option<String>,
    /// `enforce` (the default) or `shadow`.
    #[serde(default)]
    pub mode: Mode,
}

impl Sidecar {
    /// Parses a sidecar; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Sidecar, String> {
        let s: Sidecar = toml::from_str(text).map_err(|e| e.to_string())?;
        if s.timeout_ms.is_some_and(|t| t == 0 || t > 1000) {
            return Err("timeout_ms must be 1-1000".into());
        }
        if s.memory_mb.is_some_and(|m| m == 0 || m > 256) {
            return Err("memory_mb must be 1-256".into());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let s = Sidecar::parse(
            "priority = 3\nevents = [\"message:send\"]\non_error = \"allow\"\ntimeout_ms = 5\nconfig = '{\"limit\": 2}'\n",
        )
        .unwrap();
        assert_eq!(s.priority, Some(3));
        assert_eq!(s.on_error, OnError::Allow);
        assert_eq!(s.config.as_deref(), Some("{\"limit\": 2}"));
        assert!(Sidecar::parse("on_error = \"maybe\"").is_err());
        assert!(Sidecar::parse("timeout_ms = 0").is_err());
        assert!(Sidecar::parse("unknown = 1").is_err());
        assert_eq!(Sidecar::parse("").unwrap().on_error, OnError::Deny);
        assert_eq!(
            Sidecar::parse("mode = \"shadow\"").unwrap().mode,
            Mode::Shadow
        );
        assert_eq!(Sidecar::parse("").unwrap().mode, Mode::Enforce);
        assert!(Sidecar::parse("mode = \"dry\"").is_err());
    }
}
