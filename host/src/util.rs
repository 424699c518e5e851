//! Small shared helpers: time formats, a constant-time comparison of secrets.

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

/// Whether two secrets are equal, in time that depends on neither (both are hashed first, so
/// not even the length leaks).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
        assert!(!super::constant_time_eq(b"", b"a"));
    }

    #[test]
    fn iso_matches_javascript() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-30T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(super::iso(t), "2026-01-30T12:00:00.000Z");
    }
}
