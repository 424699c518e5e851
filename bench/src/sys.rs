//! What the generator reads from the operating system: a process's RSS and CPU time from
//! `/proc`, the process listening on a port, the load average, the open-file limit.

use std::time::Instant;

use serde::Serialize;

/// `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat` (100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// Resident set size of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User and system CPU time of `pid` in clock ticks.
pub fn cpu_times(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state(3) ... utime(14) stime(15); index = field - 3.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// The first figure of `/proc/loadavg` and the whole line.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The pid of the process that listens on TCP `port` (IPv4 or IPv6), if it can be seen.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(s) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in s.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Raises the open-file soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// CPU use of a process over a window, in % of one core, and its RSS at the end.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcUsage {
    /// CPU time / wall time, in % of one core.
    pub cpu_pct: f64,
    /// Of which in user space.
    pub user_pct: f64,
    /// Of which in the kernel.
    pub sys_pct: f64,
    /// RSS at the end of the window, KiB.
    pub rss_kib: u64,
}

/// Samples a process's CPU time at the start of a window.
pub struct CpuWindow {
    pid: Option<u32>,
    ticks: (u64, u64),
    at: Instant,
}

impl CpuWindow {
    /// Starts a window for `pid` (none: figures stay zero).
    pub fn start(pid: Option<u32>) -> CpuWindow {
        CpuWindow {
            pid,
            ticks: pid.and_then(cpu_times).unwrap_or((0, 0)),
            at: Instant::now(),
        }
    }

    /// CPU % since the start, RSS now.
    pub fn finish(&self) -> ProcUsage {
        let Some(pid) = self.pid else {
            return ProcUsage::default();
        };
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let (user, sys) = cpu_times(pid).unwrap_or(self.ticks);
        let pct = |now: u64, then: u64| (now.saturating_sub(then) as f64 / USER_HZ) / secs * 100.0;
        let user_pct = pct(user, self.ticks.0);
        let sys_pct = pct(sys, self.ticks.1);
        ProcUsage {
            cpu_pct: user_pct + sys_pct,
            user_pct,
            sys_pct,
            rss_kib: rss_kib(pid).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_figures() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_times(me).is_some());
        assert!(!loadavg().is_empty());
    }

    #[test]
    fn finds_the_listener_of_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }
}
