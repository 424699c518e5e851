//! Process figures from `/proc` (Linux): resident memory, system memory, CPU usage.

use std::sync::Mutex;
use std::time::Instant;

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Total memory of the machine, in bytes.
pub fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// CPU seconds (user + system) this process used so far.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // /proc reports in USER_HZ, which is 100 on Linux.
    Some((utime + stime) / 100.0)
}

/// CPU usage in percent of one core since the previous call.
pub struct CpuMeter {
    last: Mutex<Option<(Instant, f64)>>,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter {
            last: Mutex::new(cpu_seconds().map(|c| (Instant::now(), c))),
        }
    }
}

impl CpuMeter {
    /// Percent of one core used since the previous sample.
    pub fn sample(&self) -> f64 {
        let Some(now_cpu) = cpu_seconds() else {
            return 0.0;
        };
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let usage = match *last {
            Some((t, c)) if now.duration_since(t).as_secs_f64() > 0.0 => {
                (now_cpu - c) / now.duration_since(t).as_secs_f64() * 100.0
            }
            _ => 0.0,
        };
        *last = Some((now, now_cpu));
        (usage * 100.0).round() / 100.0
    }
}
