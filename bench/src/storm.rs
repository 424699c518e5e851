//! Join storms and reconnect herds: the first minute after a deploy or a crash.
//!
//! - `storm`: N clients connect as fast as the generator can (`--connect-concurrency` in
//!   flight), each joining its room (`<room-prefix><i mod rooms>`) as soon as its connect is
//!   answered. Reported: the time until every client has joined, connect and join-ack
//!   latencies, failures by error code.
//! - `herd`: the same, then every client waits for its connection to drop (the driver kills
//!   and restarts the server once `--ready-file` exists) and reconnects with the official
//!   JavaScript client's backoff (1 s doubling to 5 s, ±50 % jitter), rejoining its room.
//!   Reported: the time from the first drop until every client is back in its room, failed
//!   joins, connect attempts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::common::{self, ClientOpts, now_us};
use crate::hist::{Hist, Percentiles};
use crate::sys::{self, CpuWindow, ProcUsage};
use crate::ws::{Conn, Target};

/// Options of a storm or a herd.
#[derive(Debug, Clone, clap::Args)]
pub struct StormOpts {
    /// Client options (`--connect-concurrency` is the number in flight).
    #[command(flatten)]
    pub client: ClientOpts,
    /// Clients.
    #[arg(long, default_value_t = 5000)]
    pub clients: usize,
    /// Rooms (`<room-prefix><0..rooms>`; they must exist on nself-realtime).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Room name prefix.
    #[arg(long, default_value = "bench-")]
    pub room_prefix: String,
    /// Seconds a join ack may take.
    #[arg(long, default_value_t = 30)]
    pub ack_timeout: u64,
    /// herd: a file created once every client has joined (the driver then kills and
    /// restarts the server).
    #[arg(long)]
    pub ready_file: Option<std::path::PathBuf>,
    /// herd: seconds after the first drop before giving up on clients still not back.
    #[arg(long, default_value_t = 180)]
    pub deadline: u64,
}

/// What a storm measured.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// Clients started.
    pub clients: usize,
    /// Clients whose join was acked `success: true`.
    pub joined: usize,
    /// Failed connects and joins by code (`CONNECT` for a refused or failed connect,
    /// `TIMEOUT` for a join with no ack).
    pub failures: BTreeMap<String, usize>,
    /// The first failure's text.
    pub first_failure: Option<String>,
    /// Milliseconds from the start until the last client joined.
    pub time_to_all_joined_ms: f64,
    /// Connect latency (TCP connect to the namespace connect answer).
    pub connect: Percentiles,
    /// Join ack latency (emit to ack).
    pub join_ack: Percentiles,
    /// Connects plus joins per second over the whole storm.
    pub joins_per_sec: f64,
    /// Server CPU (% of a core) over the storm and RSS at its end.
    pub server: ProcUsage,
}

/// What a herd measured (after the storm that put every client in its room).
#[derive(Debug, Clone, Serialize)]
pub struct HerdReport {
    /// The storm that filled the server.
    pub storm: StormReport,
    /// Clients back in their room (a successful join after the drop).
    pub rejoined: usize,
    /// Milliseconds from the first drop until the last client was back.
    pub time_to_all_back_ms: f64,
    /// Per client: from the first drop until it was back.
    pub back: Percentiles,
    /// Failed joins and connects after the drop, by code (connect errors while the server
    /// is down are expected and counted apart, in `connect_attempts`).
    pub failures: BTreeMap<String, usize>,
    /// The first failure's text.
    pub first_failure: Option<String>,
    /// Connect attempts after the drop (refused ones included).
    pub connect_attempts: u64,
}

#[derive(Default)]
struct Tally {
    failures: Mutex<BTreeMap<String, usize>>,
    first: Mutex<Option<String>>,
}

impl Tally {
    fn fail(&self, code: &str, text: impl FnOnce() -> String) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code.to_string())
            .or_default() += 1;
        common::keep_first(&self.first, text);
    }

    fn take(&self) -> (BTreeMap<String, usize>, Option<String>) {
        (
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(|e| e.into_inner())),
            self.first.lock().unwrap_or_else(|e| e.into_inner()).take(),
        )
    }
}

/// The code of a failed join ack text (`43<id>[{...}]`), or None for a success.
fn failure_code(ack: &str) -> Option<String> {
    if ack.contains("\"success\":true") {
        return None;
    }
    let code = ack
        .split("\"code\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("UNKNOWN");
    Some(code.to_string())
}

/// Joins `room` on `conn`; Err(code, text) when it failed.
async fn join(conn: &mut Conn, room: &str, timeout: Duration) -> Result<(), (String, String)> {
    let payload = format!("{{\"roomName\":\"{room}\"}}");
    match common::emit_ack(conn, 1, "room:join", &payload, timeout).await {
        Ok(ack) => match failure_code(&ack) {
            None => Ok(()),
            Some(code) => Err((code, ack)),
        },
        Err(e) => Err(("TIMEOUT".into(), format!("{e:#}"))),
    }
}

struct Storm {
    opts: StormOpts,
    targets: Vec<Target>,
    connect: Hist,
    join_ack: Hist,
    tally: Tally,
    joined: AtomicUsize,
    last_join_us: AtomicU64,
}

impl Storm {
    fn room(&self, i: usize) -> String {
        format!("{}{}", self.opts.room_prefix, i % self.opts.rooms.max(1))
    }

    /// Connects and joins client `i`; the connection when it joined.
    async fn one(&self, i: usize) -> Option<Conn> {
        let t0 = now_us();
        let mut conn = match common::connect(&self.opts.client, &self.targets, i).await {
            Ok(c) => c,
            Err(e) => {
                self.tally.fail("CONNECT", || format!("client {i}: {e:#}"));
                return None;
            }
        };
        let t1 = now_us();
        self.connect.record(t1 - t0);
        let room = self.room(i);
        match join(&mut conn, &room, Duration::from_secs(self.opts.ack_timeout)).await {
            Ok(()) => {
                let t2 = now_us();
                self.join_ack.record(t2 - t1);
                self.joined.fetch_add(1, Ordering::Relaxed);
                self.last_join_us.fetch_max(t2, Ordering::Relaxed);
                Some(conn)
            }
            Err((code, text)) => {
                self.tally
                    .fail(&code, || format!("client {i} joining {room}: {text}"));
                None
            }
        }
    }

    async fn run(self: &Arc<Self>) -> (StormReport, Vec<(usize, Conn)>) {
        let gate = Arc::new(Semaphore::new(self.opts.client.connect_concurrency.max(1)));
        let cpu = CpuWindow::start(self.opts.client.server_pid());
        let start = now_us();
        let mut tasks = Vec::with_capacity(self.opts.clients);
        for i in 0..self.opts.clients {
            let (me, gate) = (self.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok();
                me.one(i).await.map(|c| (i, c))
            }));
        }
        let mut conns = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Ok(Some(c)) = t.await {
                conns.push(c);
            }
        }
        let server = cpu.finish();
        let (failures, first_failure) = self.tally.take();
        let joined = self.joined.load(Ordering::Relaxed);
        let last = self.last_join_us.load(Ordering::Relaxed).max(start);
        let elapsed_s = (now_us() - start) as f64 / 1e6;
        let report = StormReport {
            clients: self.opts.clients,
            joined,
            failures,
            first_failure,
            time_to_all_joined_ms: (last - start) as f64 / 1000.0,
            connect: self.connect.percentiles(),
            join_ack: self.join_ack.percentiles(),
            joins_per_sec: joined as f64 / elapsed_s.max(1e-3),
            server,
        };
        (report, conns)
    }
}

/// `realtime-bench storm`.
pub async fn storm(opts: StormOpts, json: bool) -> anyhow::Result<()> {
    let (_, report, conns) = start(opts).await?;
    for (_, c) in conns {
        c.close().await;
    }
    print(&report, json, |r| {
        format!(
            "storm: {}/{} joined in {:.0} ms ({:.0}/s); connect p50 {:.1} p99 {:.1} ms; join ack p50 {:.1} p99 {:.1} ms; failures {:?}; server CPU {:.0} %, RSS {} KiB",
            r.joined,
            r.clients,
            r.time_to_all_joined_ms,
            r.joins_per_sec,
            r.connect.p50_ms,
            r.connect.p99_ms,
            r.join_ack.p50_ms,
            r.join_ack.p99_ms,
            r.failures,
            r.server.cpu_pct,
            r.server.rss_kib
        )
    })
}

async fn start(opts: StormOpts) -> anyhow::Result<(Arc<Storm>, StormReport, Vec<(usize, Conn)>)> {
    sys::raise_nofile();
    let targets = opts.client.targets()?;
    let storm = Arc::new(Storm {
        opts,
        targets,
        connect: Hist::default(),
        join_ack: Hist::default(),
        tally: Tally::default(),
        joined: AtomicUsize::new(0),
        last_join_us: AtomicU64::new(0),
    });
    let (report, conns) = storm.run().await;
    Ok((storm, report, conns))
}

fn print<R: Serialize>(report: &R, json: bool, line: impl Fn(&R) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", line(report));
    }
    Ok(())
}

/// The official JavaScript client's reconnection delay for attempt `n` (0-based):
/// 1 s doubling to at most 5 s, each ±50 % at random.
fn backoff(n: u32, rng: &mut u64) -> Duration {
    let base = 1000f64 * 2f64.powi(n.min(8) as i32);
    // xorshift64
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let r = (*rng % 10_000) as f64 / 10_000.0;
    let deviation = r * 0.5 * base;
    let ms = if (*rng >> 20) & 1 == 0 {
        base - deviation
    } else {
        base + deviation
    };
    Duration::from_millis(ms.min(5000.0) as u64)
}

struct Herd {
    storm: Arc<Storm>,
    first_drop_us: AtomicU64,
    last_back_us: AtomicU64,
    rejoined: AtomicUsize,
    attempts: AtomicU64,
    tally: Tally,
    back: Hist,
}

impl Herd {
    /// Waits for `conn` to drop, then reconnects (with backoff) and rejoins until it is back
    /// or the deadline passes.
    async fn client(&self, i: usize, mut conn: Conn) {
        // Until the server goes away (engine pings are answered by `process`).
        loop {
            let seen = conn.process(|_| {});
            if conn.flush().await.is_err() || seen.closed {
                break;
            }
            match conn.fill().await {
                Ok(true) => {}
                _ => break,
            }
        }
        let dropped = now_us();
        let first = match self.first_drop_us.compare_exchange(
            0,
            dropped,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => dropped,
            Err(earlier) => earlier,
        };
        let deadline = Instant::now() + Duration::from_secs(self.storm.opts.deadline);
        let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
        let room = self.storm.room(i);
        let timeout = Duration::from_secs(self.storm.opts.ack_timeout);
        let mut attempt = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(backoff(attempt, &mut rng)).await;
            attempt += 1;
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let Ok(mut conn) =
                common::connect(&self.storm.opts.client, &self.storm.targets, i).await
            else {
                continue;
            };
            match join(&mut conn, &room, timeout).await {
                Ok(()) => {
                    let now = now_us();
                    self.back.record(now.saturating_sub(first));
                    self.last_back_us.fetch_max(now, Ordering::Relaxed);
                    self.rejoined.fetch_add(1, Ordering::Relaxed);
                    conn.close().await;
                    return;
                }
                Err((code, text)) => {
                    self.tally
                        .fail(&code, || format!("client {i} rejoining {room}: {text}"));
                    conn.close().await;
                }
            }
        }
    }
}

/// `realtime-bench herd`.
pub async fn herd(opts: StormOpts, json: bool) -> anyhow::Result<()> {
    let ready = opts.ready_file.clone();
    let (storm, storm_report, conns) = start(opts).await?;
    eprintln!(
        "herd: {}/{} clients joined; waiting for the server to go away",
        storm_report.joined, storm_report.clients
    );
    let herd = Arc::new(Herd {
        storm,
        first_drop_us: AtomicU64::new(0),
        last_back_us: AtomicU64::new(0),
        rejoined: AtomicUsize::new(0),
        attempts: AtomicU64::new(0),
        tally: Tally::default(),
        back: Hist::default(),
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(i, c)| {
            let h = herd.clone();
            tokio::spawn(async move { h.client(i, c).await })
        })
        .collect();
    if let Some(path) = &ready {
        std::fs::write(path, b"ready\n")?;
    }
    for t in tasks {
        let _ = t.await;
    }
    let first = herd.first_drop_us.load(Ordering::Relaxed);
    let last = herd.last_back_us.load(Ordering::Relaxed);
    let (failures, first_failure) = herd.tally.take();
    let report = HerdReport {
        storm: storm_report,
        rejoined: herd.rejoined.load(Ordering::Relaxed),
        time_to_all_back_ms: last.saturating_sub(first) as f64 / 1000.0,
        back: herd.back.percentiles(),
        failures,
        first_failure,
        connect_attempts: herd.attempts.load(Ordering::Relaxed),
    };
    print(&report, json, |r| {
        format!(
            "herd: {}/{} back in their room {:.0} ms after the first drop (per client p50 {:.0} p99 {:.0} ms); failed joins {:?}; {} connect attempts",
            r.rejoined,
            r.storm.joined,
            r.time_to_all_back_ms,
            r.back.p50_ms,
            r.back.p99_ms,
            r.failures,
            r.connect_attempts
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_js_client() {
        let mut rng = 42;
        for n in 0..10 {
            let d = backoff(n, &mut rng).as_millis() as f64;
            let base = (1000.0 * 2f64.powi(n as i32)).min(5000.0);
            assert!(d <= 5000.0, "{d}");
            assert!(
                d >= (1000.0 * 2f64.powi(n as i32)) * 0.5 || d >= base * 0.5,
                "{n}: {d}"
            );
        }
    }

    #[test]
    fn failure_codes() {
        assert_eq!(failure_code(r#"431[{"success":true,"data":{}}]"#), None);
        assert_eq!(
            failure_code(r#"431[{"success":false,"error":{"code":"SERVICE_UNAVAILABLE"}}]"#)
                .as_deref(),
            Some("SERVICE_UNAVAILABLE")
        );
    }
}
