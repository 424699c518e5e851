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

/// Sets the `process_*` metrics from `/proc` (Linux; elsewhere they stay at zero).
pub fn sample_process(p: &crate::metrics::ProcessMetrics) {
    if let Some(cpu) = cpu_seconds() {
        let seen = p.cpu_seconds.get();
        if cpu > seen {
            p.cpu_seconds.inc_by(cpu - seen);
        }
    }
    p.resident_memory_bytes.set(rss_bytes() as i64);
    if let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok()
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if let Some(vsize) = fields.get(20).and_then(|v| v.parse::<i64>().ok()) {
            p.virtual_memory_bytes.set(vsize);
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        let started = fields.get(19).and_then(|v| v.parse::<f64>().ok());
        if let (Some(boot), Some(started)) = (boot, started) {
            // Clock ticks since boot, USER_HZ = 100 on Linux.
            p.start_time_seconds.set(boot + started / 100.0);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        p.open_fds.set(dir.count() as i64);
    }
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<i64>().ok())
        });
    if let Some(max) = max {
        p.max_fds.set(max);
    }
}
