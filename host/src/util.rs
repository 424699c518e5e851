//! Small shared helpers: time formats.

use chrono::{DateTime, SecondsFormat, Utc};

/// A timestamp as JavaScript's `Date.toISOString()` writes it (`2026-01-30T12:00:00.000Z`),
/// which is what the original sent for every date on the wire.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_matches_javascript() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-30T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(super::iso(t), "2026-01-30T12:00:00.000Z");
    }
}
