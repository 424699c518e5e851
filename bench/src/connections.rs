//! `connections`: N idle authenticated clients. Connects them in batches up to each checkpoint,
//! reads the server's RSS at every checkpoint (RSS per connection, the slope between the first
//! and the last checkpoint, its projection), holds them idle (answering the server's Engine.IO
//! pings), then has every client send the Socket.IO `ping` event and counts the `pong` answers.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::common::{self, ClientOpts, now_us};
use crate::hist::{Hist, Percentiles};
use crate::sys;

/// Options of the `connections` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnOpts {
    /// Client options.
    #[command(flatten)]
    pub client: ClientOpts,
    /// Clients to open.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Connection counts at which the server RSS is read (comma list); the last is always
    /// `--clients`. Default: 1000 and `--clients`.
    #[arg(long, value_delimiter = ',')]
    pub checkpoints: Vec<usize>,
    /// Seconds to wait at a checkpoint before reading the RSS.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    /// Seconds to hold every client idle before the ping round (the server pings every 25 s
    /// by default: hold longer than that to see every client answer an Engine.IO ping).
    #[arg(long, default_value_t = 30)]
    pub hold: u64,
    /// Seconds to wait for every `pong`.
    #[arg(long, default_value_t = 30)]
    pub ping_timeout: u64,
    /// Connection count to project the RSS slope to.
    #[arg(long, default_value_t = 100_000)]
    pub project_to: usize,
    /// Stop connecting after this many failed connects.
    #[arg(long, default_value_t = 100)]
    pub max_failures: u64,
    /// Rooms the clients join, one each, round-robin (`<room-prefix><i % rooms>`); 0: none,
    /// bare connections.
    #[arg(long, default_value_t = 0)]
    pub rooms: usize,
    /// Prefix of the room names.
    #[arg(long, default_value = "bench-")]
    pub room_prefix: String,
}

impl ConnOpts {
    /// `clients` idle clients against `url`, short hold (for tests and library callers).
    pub fn new(url: &str, secret: &str, clients: usize) -> ConnOpts {
        ConnOpts {
            client: ClientOpts::new(url, secret),
            clients,
            checkpoints: Vec::new(),
            settle: 1,
            hold: 1,
            ping_timeout: 10,
            project_to: 100_000,
            max_failures: 100,
            rooms: 0,
            room_prefix: "bench-".into(),
        }
    }
}

/// The server's RSS at a checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    /// Open connections.
    pub connections: u64,
    /// Server RSS, KiB.
    pub rss_kib: u64,
    /// (RSS − RSS before the first connection) / connections, KiB.
    pub per_conn_kib: f64,
    /// `/proc/loadavg` when read.
    pub loadavg: String,
}

/// The report of a `connections` run.
#[derive(Debug, Clone, Serialize)]
pub struct ConnReport {
    /// Server URLs.
    pub urls: Vec<String>,
    /// Server pid measured.
    pub server_pid: Option<u32>,
    /// The generator's open-file soft limit after raising it.
    pub nofile_limit: u64,
    /// Clients asked for.
    pub requested: usize,
    /// Rooms joined (0: bare connections).
    pub rooms: usize,
    /// Clients connected.
    pub connected: u64,
    /// Failed connects, and the first error.
    pub failures: u64,
    /// The first connect error.
    pub first_error: Option<String>,
    /// Seconds spent connecting (checkpoint pauses excluded).
    pub connect_secs: f64,
    /// Connections per second.
    pub connect_rate: f64,
    /// Server RSS before the first connection, KiB.
    pub baseline_rss_kib: u64,
    /// RSS at each checkpoint.
    pub checkpoints: Vec<Checkpoint>,
    /// KiB per connection between the first and the last checkpoint.
    pub slope_kib_per_conn: f64,
    /// Connection count of the projection.
    pub project_to: usize,
    /// Projected server RSS at `project_to` connections, MiB.
    pub projected_rss_mib: f64,
    /// Seconds held idle.
    pub hold_secs: u64,
    /// Engine.IO pings answered during the whole run (all clients).
    pub engine_pings: u64,
    /// Clients whose connection ended before the ping round.
    pub dropped: u64,
    /// Clients that sent the `ping` event, and `pong` answers received.
    pub pings_sent: u64,
    /// `pong` answers received.
    pub pongs: u64,
    /// `ping` → `pong` round trip.
    pub pong_rtt: Percentiles,
    /// Generator RSS at the end, KiB.
    pub generator_rss_kib: u64,
}

#[derive(Default)]
struct Shared {
    connected: AtomicU64,
    failed: AtomicU64,
    alive: AtomicU64,
    engine_pings: AtomicU64,
    pings_sent: AtomicU64,
    pongs: AtomicU64,
    rtt: Hist,
    first_error: Mutex<Option<String>>,
}

/// Runs the scenario.
pub async fn run(opts: &ConnOpts) -> anyhow::Result<ConnReport> {
    let targets = opts.client.targets()?;
    let nofile_limit = sys::raise_nofile();
    let server_pid = opts.client.server_pid();
    let baseline = server_pid.and_then(sys::rss_kib).unwrap_or(0);
    let mut marks: Vec<usize> = opts
        .checkpoints
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < opts.clients)
        .collect();
    if marks.is_empty() && opts.clients > 1000 {
        marks.push(1000);
    }
    marks.push(opts.clients);
    marks.sort_unstable();
    marks.dedup();

    let shared = Arc::new(Shared::default());
    let (round_tx, round_rx) = watch::channel(0u32);
    let gate = Arc::new(Semaphore::new(opts.client.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(opts.clients);
    let mut checkpoints = Vec::new();
    let mut connect_time = Duration::ZERO;
    let mut next = 0usize;
    'marks: for &mark in &marks {
        let t0 = Instant::now();
        while next < mark {
            let (shared, gate, client, targets, rx) = (
                shared.clone(),
                gate.clone(),
                opts.client.clone(),
                targets.clone(),
                round_rx.clone(),
            );
            let i = next;
            let room = (opts.rooms > 0).then(|| format!("{}{}", opts.room_prefix, i % opts.rooms));
            tasks.push(tokio::spawn(async move {
                idle_client(i, client, targets, room, gate, shared, rx).await
            }));
            next += 1;
        }
        // Wait until every connect up to the mark has finished (bounded by the connect timeout
        // of the last batch).
        let limit = Duration::from_secs(opts.client.connect_timeout + 5 + mark as u64 / 100);
        loop {
            let done = shared.connected.load(Ordering::Relaxed) as usize
                + shared.failed.load(Ordering::Relaxed) as usize;
            if done >= mark {
                break;
            }
            if t0.elapsed() > limit || shared.failed.load(Ordering::Relaxed) >= opts.max_failures {
                connect_time += t0.elapsed();
                eprintln!("stopping at {done} connects");
                break 'marks;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        connect_time += t0.elapsed();
        tokio::time::sleep(Duration::from_secs(opts.settle)).await;
        let n = shared.connected.load(Ordering::Relaxed);
        let rss = server_pid.and_then(sys::rss_kib).unwrap_or(0);
        let cp = Checkpoint {
            connections: n,
            rss_kib: rss,
            per_conn_kib: if n == 0 {
                0.0
            } else {
                rss.saturating_sub(baseline) as f64 / n as f64
            },
            loadavg: sys::loadavg(),
        };
        eprintln!(
            "{n} connected: server RSS {} MiB, {:.1} KiB per connection (load {})",
            rss / 1024,
            cp.per_conn_kib,
            cp.loadavg
        );
        checkpoints.push(cp);
        if shared.failed.load(Ordering::Relaxed) >= opts.max_failures {
            break;
        }
    }
    let connected = shared.connected.load(Ordering::Relaxed);
    eprintln!("holding {connected} connections idle for {} s", opts.hold);
    tokio::time::sleep(Duration::from_secs(opts.hold)).await;
    let alive = shared.alive.load(Ordering::Relaxed);
    // Ping round.
    let _ = round_tx.send(1);
    let t0 = Instant::now();
    let limit = Duration::from_secs(opts.ping_timeout);
    while shared.pongs.load(Ordering::Relaxed) < alive && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report_checkpoints = checkpoints.clone();
    let (slope, projected) = match (checkpoints.first(), checkpoints.last()) {
        (Some(a), Some(b)) if b.connections > a.connections => {
            let slope = (b.rss_kib as f64 - a.rss_kib as f64)
                / (b.connections as f64 - a.connections as f64);
            let proj = b.rss_kib as f64 + slope * (opts.project_to as f64 - b.connections as f64);
            (slope, proj / 1024.0)
        }
        (Some(a), _) if a.connections > 0 => (
            a.per_conn_kib,
            (baseline as f64 + a.per_conn_kib * opts.project_to as f64) / 1024.0,
        ),
        _ => (0.0, 0.0),
    };
    let report = ConnReport {
        urls: opts.client.urls.clone(),
        server_pid,
        nofile_limit,
        requested: opts.clients,
        rooms: opts.rooms,
        connected,
        failures: shared.failed.load(Ordering::Relaxed),
        first_error: shared.first_error.lock().expect("lock").clone(),
        connect_secs: connect_time.as_secs_f64(),
        connect_rate: connected as f64 / connect_time.as_secs_f64().max(1e-3),
        baseline_rss_kib: baseline,
        checkpoints: report_checkpoints,
        slope_kib_per_conn: slope,
        project_to: opts.project_to,
        projected_rss_mib: projected,
        hold_secs: opts.hold,
        engine_pings: shared.engine_pings.load(Ordering::Relaxed),
        dropped: connected.saturating_sub(alive),
        pings_sent: shared.pings_sent.load(Ordering::Relaxed),
        pongs: shared.pongs.load(Ordering::Relaxed),
        pong_rtt: shared.rtt.percentiles(),
        generator_rss_kib: sys::rss_kib(std::process::id()).unwrap_or(0),
    };
    let _ = round_tx.send(u32::MAX);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(report)
}

async fn idle_client(
    i: usize,
    client: ClientOpts,
    targets: Vec<crate::ws::Target>,
    room: Option<String>,
    gate: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut round: watch::Receiver<u32>,
) {
    let conn = {
        let _permit = gate.acquire().await;
        match common::connect(&client, &targets, i).await {
            Ok(mut conn) => match &room {
                // Joined before it counts as connected: the RSS read at a checkpoint includes
                // the room memberships.
                Some(room) => {
                    let payload = format!("{{\"roomName\":\"{room}\"}}");
                    let timeout = Duration::from_secs(client.connect_timeout);
                    match common::emit_ack(&mut conn, 1, "room:join", &payload, timeout).await {
                        Ok(ack) if ack.contains("\"success\":true") => Ok(conn),
                        Ok(ack) => Err(anyhow::anyhow!("room:join {room}: {ack}")),
                        Err(e) => Err(anyhow::anyhow!("room:join {room}: {e:#}")),
                    }
                }
                None => Ok(conn),
            },
            Err(e) => Err(e),
        }
    };
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            common::keep_first(&shared.first_error, || format!("client {i}: {e:#}"));
            return;
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    shared.alive.fetch_add(1, Ordering::Relaxed);
    let mut ping_at: Option<u64> = None;
    let mut alive = true;
    loop {
        tokio::select! {
            r = conn.fill() => {
                if !matches!(r, Ok(true)) {
                    break;
                }
                let seen = conn.process(|t| {
                    if t.starts_with(b"42[\"pong\"") {
                        if let Some(at) = ping_at.take() {
                            shared.rtt.record(now_us().saturating_sub(at));
                            shared.pongs.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if t.starts_with(b"41") {
                        alive = false;
                    }
                });
                shared.engine_pings.fetch_add(seen.engine_pings, Ordering::Relaxed);
                if seen.closed || !alive || conn.flush().await.is_err() {
                    break;
                }
            }
            changed = round.changed() => {
                let r = *round.borrow_and_update();
                if changed.is_err() || r == u32::MAX {
                    conn.close().await;
                    return;
                }
                ping_at = Some(now_us());
                if conn.send_text(b"42[\"ping\"]").await.is_err() {
                    break;
                }
                shared.pings_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    shared.alive.fetch_sub(1, Ordering::Relaxed);
}

/// Runs and prints; `json`: the report as one JSON document on stdout.
pub async fn main(opts: ConnOpts, json: bool) -> anyhow::Result<()> {
    let r = run(&opts).await?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "connected {} of {} in {:.1} s ({:.0}/s), {} failures{}",
        r.connected,
        r.requested,
        r.connect_secs,
        r.connect_rate,
        r.failures,
        r.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!("server RSS before: {} MiB", r.baseline_rss_kib / 1024);
    for c in &r.checkpoints {
        println!(
            "  {:>7} connections: RSS {:>6} MiB, {:.1} KiB per connection",
            c.connections,
            c.rss_kib / 1024,
            c.per_conn_kib
        );
    }
    println!(
        "slope {:.1} KiB per connection; projected RSS at {} connections: {:.0} MiB",
        r.slope_kib_per_conn, r.project_to, r.projected_rss_mib
    );
    println!(
        "held {} s: {} Engine.IO pings answered, {} dropped; ping event: {} sent, {} pongs \
         (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
        r.hold_secs,
        r.engine_pings,
        r.dropped,
        r.pings_sent,
        r.pongs,
        r.pong_rtt.p50_ms,
        r.pong_rtt.p99_ms,
        r.pong_rtt.max_ms
    );
    Ok(())
}
