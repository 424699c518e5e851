//! Printing helpers shared by the subcommands: stdout that never panics, JSON.

/// `println!` that does not panic when stdout is closed (e.g. piped into `head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use outln;

/// Pretty JSON on stdout.
pub(crate) fn print_json(v: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Truncates to `n` characters (the original sliced JavaScript strings).
pub(crate) fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
