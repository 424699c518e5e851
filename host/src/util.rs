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

/// Lets a log line through at most once a second (a flood of refusals must not become a flood
/// of lines); counts the ones it held back.
pub struct Throttle {
    second: std::sync::atomic::AtomicI64,
    held: std::sync::atomic::AtomicU64,
}

impl Throttle {
    /// A throttle that lets the first line through.
    pub const fn new() -> Throttle {
        Throttle {
            second: std::sync::atomic::AtomicI64::new(i64::MIN),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Some(lines held back since the last one let through) when a line may be written now.
    pub fn pass(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = Utc::now().timestamp();
        if self.second.swap(now, Ordering::Relaxed) == now {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new()
    }
}

/// A duration in seconds: `1h`, `30m`, `45s`, `2d`, or plain seconds (at least 1 s).
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 3600, 90s, 30m, 1h or 7d"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    match n.checked_mul(factor) {
        Some(0) | None => Err(format!("{text:?}: must be at least 1 s")),
        Some(secs) => Ok(secs),
    }
}

/// This machine's host name, if it can be read.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
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
