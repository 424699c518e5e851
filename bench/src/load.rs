//! Rooms under load: `fanout` (`message:send` → `message:new` to the whole room) and the
//! `typing`, `presence` and `join` storms. `rooms × room_size` clients each join their room;
//! `senders` of them emit at a fixed total rate, evenly spread over time; every client counts
//! what it receives. One task per connection; the timestamp of a message travels in its content.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Interval, MissedTickBehavior};

use crate::common::{self, ClientOpts, now_us, parse_digits};
use crate::hist::{Hist, Percentiles};
use crate::sys::{self, CpuWindow, ProcUsage};
use crate::ws::{Conn, find};

/// What the senders emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `message:send` with ack; receivers count `message:new` and its end-to-end latency.
    Fanout,
    /// `typing:start` / `typing:stop` alternately, with ack; receivers count `typing:event`.
    Typing,
    /// `presence:update` (`away` / `online` alternately), with ack; receivers count
    /// `presence:changed`.
    Presence,
    /// `room:leave` / `room:join` of the sender's room alternately, with ack; receivers count
    /// `user:joined` and `user:left`.
    Join,
}

/// Options of a load run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOpts {
    /// Client options.
    #[command(flatten)]
    pub client: ClientOpts,
    /// Rooms (`<room-prefix><0..rooms>`; they must exist on nself-realtime).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Members per room (each member is one client).
    #[arg(long, default_value_t = 100)]
    pub room_size: usize,
    /// Sending clients in all (spread over the rooms); default: one per room.
    #[arg(long)]
    pub senders: Option<usize>,
    /// Total events sent per second (all senders together).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Message content length in bytes (fanout; at least 16, the timestamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds each measured step sends.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of sending before the first measured step (not reported).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Seconds to wait after a step for late deliveries.
    #[arg(long, default_value_t = 5)]
    pub drain: u64,
    /// Room name prefix.
    #[arg(long, default_value = "bench-")]
    pub room_prefix: String,
    /// Raise the rate step by step until p99 passes `--max-p99-ms`, delivery drops below 100 %
    /// or an ack fails; report the highest rate that held.
    #[arg(long)]
    pub find_max: bool,
    /// p99 latency limit of `--find-max`, milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,
    /// Factor between two rates of `--find-max`.
    #[arg(long, default_value_t = 1.25)]
    pub step_factor: f64,
    /// Most steps of `--find-max`.
    #[arg(long, default_value_t = 20)]
    pub max_steps: u32,
    /// `--find-max`: how many times a step that did not hold is run again before the search
    /// stops (a transient stall of a shared machine should not end it; every run is reported).
    #[arg(long, default_value_t = 1)]
    pub retries: u32,
    /// Other processes whose CPU is measured over each step beside the server's (a second
    /// instance, redis-server); repeatable.
    #[arg(long = "also-pid")]
    pub also_pids: Vec<u32>,
}

impl LoadOpts {
    /// A fan-out run against `url` with small defaults (for tests and library callers).
    pub fn new(url: &str, secret: &str) -> LoadOpts {
        LoadOpts {
            client: ClientOpts::new(url, secret),
            rooms: 2,
            room_size: 5,
            senders: None,
            rate: 20.0,
            payload: 64,
            duration: 2,
            warmup: 0,
            drain: 5,
            room_prefix: "bench-".into(),
            find_max: false,
            max_p99_ms: 50.0,
            step_factor: 1.25,
            max_steps: 20,
            retries: 1,
            also_pids: Vec::new(),
        }
    }
}

/// One measured step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Offered rate (events/s, all senders).
    pub rate: f64,
    /// Events sent in the step, and per second.
    pub sent: u64,
    /// Sent per second over the sending window.
    pub sent_per_s: f64,
    /// Acks `{success: true}`, `{success: false}`, and never answered.
    pub acks_ok: u64,
    /// Acks with `success: false`.
    pub acks_err: u64,
    /// Sent events without an ack by the end of the drain.
    pub acks_missing: u64,
    /// The first failed ack's text.
    pub first_error: Option<String>,
    /// Events received by the clients (`message:new`, or the storm's event).
    pub delivered: u64,
    /// Expected deliveries (fanout: sent × room size; storms: not defined, 0).
    pub expected: u64,
    /// delivered / expected (fanout), 1.0 when nothing was expected.
    pub completeness: f64,
    /// Delivered per second of sending.
    pub delivered_per_s: f64,
    /// End-to-end latency of `message:new` (fanout).
    pub latency: Percentiles,
    /// With several `--url`s: the latency of deliveries whose sender is on the receiver's
    /// instance (local) and on another instance (across Redis). One URL: all are local.
    pub latency_local: Percentiles,
    /// See `latency_local`.
    pub latency_cross: Percentiles,
    /// Ack round trip.
    pub ack_rtt: Percentiles,
    /// Milliseconds from the end of sending until every expected delivery arrived (or the
    /// drain limit).
    pub drain_ms: u64,
    /// The server's CPU (% of one core) over the step and RSS at its end.
    pub server: ProcUsage,
    /// The generator's own CPU and RSS.
    pub generator: ProcUsage,
    /// CPU and RSS of each `--also-pid`, in that order.
    pub also: Vec<ProcUsage>,
    /// `/proc/loadavg` at the start of the step.
    pub loadavg: String,
    /// Whether the step held (100 % delivery, no failed or missing ack, p99 within the limit,
    /// the generator sent at least 95 % of the offered rate).
    pub held: bool,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Scenario.
    pub scenario: Kind,
    /// Server URLs.
    pub urls: Vec<String>,
    /// Server pid measured.
    pub server_pid: Option<u32>,
    /// Clients connected and joined.
    pub clients: usize,
    /// Rooms and members per room.
    pub rooms: usize,
    /// Members per room.
    pub room_size: usize,
    /// Sending clients.
    pub senders: usize,
    /// Content length (fanout).
    pub payload: usize,
    /// Seconds to connect and join every client.
    pub setup_secs: f64,
    /// Server RSS (KiB) once every client had joined.
    pub server_rss_after_setup_kib: u64,
    /// The measured steps (one without `--find-max`).
    pub steps: Vec<StepReport>,
    /// Whether this was a `--find-max` run.
    pub find_max: bool,
    /// `--find-max`: the highest step that held.
    pub max_held: Option<StepReport>,
}

/// Shared counters of all connection tasks.
#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    acks_ok: AtomicU64,
    acks_err: AtomicU64,
    delivered: AtomicU64,
    latency: Hist,
    latency_local: Hist,
    latency_cross: Hist,
    ack_rtt: Hist,
    first_error: Mutex<Option<String>>,
    ready: AtomicU64,
    failed: AtomicU64,
    setup_error: Mutex<Option<String>>,
}

impl Shared {
    fn reset(&self) {
        self.sent.store(0, Ordering::Relaxed);
        self.acks_ok.store(0, Ordering::Relaxed);
        self.acks_err.store(0, Ordering::Relaxed);
        self.delivered.store(0, Ordering::Relaxed);
        self.latency.reset();
        self.latency_local.reset();
        self.latency_cross.reset();
        self.ack_rtt.reset();
        *self.first_error.lock().expect("lock") = None;
    }
}

/// What the controller tells the tasks: the sending period of each sender (0: idle).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Phase {
    step: u32,
    period_us: u64,
    stop: bool,
}

/// Runs the scenario and returns its report (printing progress to stderr).
pub async fn run(kind: Kind, opts: &LoadOpts) -> anyhow::Result<LoadReport> {
    let targets = opts.client.targets()?;
    sys::raise_nofile();
    let clients = opts.rooms * opts.room_size;
    anyhow::ensure!(clients > 0, "--rooms and --room-size must be positive");
    let senders = opts.senders.unwrap_or(opts.rooms).clamp(1, clients);
    anyhow::ensure!(opts.rate > 0.0, "--rate must be positive");
    let per_sender = opts.rate / senders as f64;
    if per_sender > 50.0 {
        eprintln!(
            "warning: {per_sender:.1} events/s per sender; nself-realtime's default per-socket \
             limit is 50/s (REALTIME_EVENT_RATE): use more --senders"
        );
    }
    let server_pid = opts.client.server_pid();
    let shared = Arc::new(Shared::default());
    let (ctl, ctl_rx) = watch::channel(Phase {
        step: 0,
        period_us: 0,
        stop: false,
    });
    let gate = Arc::new(Semaphore::new(opts.client.connect_concurrency.max(1)));
    let payload = opts.payload.max(16);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let room = i / opts.room_size;
        let member = i % opts.room_size;
        let sender_index = member * opts.rooms + room;
        let spec = TaskSpec {
            index: i,
            instance: b'A' + (i % targets.len()).min(25) as u8,
            room: format!("{}{room}", opts.room_prefix),
            sender: (sender_index < senders).then_some(sender_index),
            senders,
            payload,
            kind,
        };
        let shared = shared.clone();
        let client = opts.client.clone();
        let targets = targets.clone();
        let gate = gate.clone();
        let rx = ctl_rx.clone();
        tasks.push(tokio::spawn(async move {
            client_task(spec, client, targets, gate, shared, rx).await
        }));
    }
    // Wait for every client to connect and join (bounded).
    let setup_limit = Duration::from_secs(60 + clients as u64 / 50);
    loop {
        let ready = shared.ready.load(Ordering::Relaxed) as usize;
        let failed = shared.failed.load(Ordering::Relaxed) as usize;
        if failed > 0 {
            let e = shared.setup_error.lock().expect("lock").clone();
            let _ = ctl.send(Phase {
                step: 0,
                period_us: 0,
                stop: true,
            });
            anyhow::bail!(
                "{failed} of {clients} clients failed to connect or join: {}",
                e.unwrap_or_default()
            );
        }
        if ready == clients {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < setup_limit,
            "only {ready} of {clients} clients ready after {setup_limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let setup_secs = started.elapsed().as_secs_f64();
    let rss_after_setup = server_pid.and_then(sys::rss_kib).unwrap_or(0);
    eprintln!(
        "{clients} clients in {} rooms of {} joined in {setup_secs:.1} s; {senders} senders",
        opts.rooms, opts.room_size
    );
    let period = |rate: f64| ((senders as f64 / rate) * 1e6).max(1.0) as u64;
    let mut step_no = 1u32;
    if opts.warmup > 0 {
        let _ = ctl.send(Phase {
            step: step_no,
            period_us: period(opts.rate),
            stop: false,
        });
        tokio::time::sleep(Duration::from_secs(opts.warmup)).await;
        let _ = ctl.send(Phase {
            step: step_no,
            period_us: 0,
            stop: false,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        step_no += 1;
    }
    let mut steps = Vec::new();
    let mut max_held: Option<StepReport> = None;
    let mut rate = opts.rate;
    let step_count = if opts.find_max { opts.max_steps } else { 1 };
    let tries = if opts.find_max { 1 + opts.retries } else { 1 };
    'search: for _ in 0..step_count {
        let mut held = false;
        for _ in 0..tries {
            let report = measure_step(
                kind,
                opts,
                &shared,
                &ctl,
                step_no,
                rate,
                period(rate),
                server_pid,
            )
            .await;
            step_no += 1;
            eprintln!("{}", step_line(&report));
            held = report.held;
            steps.push(report.clone());
            if held {
                max_held = Some(report);
                break;
            }
        }
        if !held {
            break 'search;
        }
        rate *= opts.step_factor;
    }
    let _ = ctl.send(Phase {
        step: step_no,
        period_us: 0,
        stop: true,
    });
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(LoadReport {
        scenario: kind,
        urls: opts.client.urls.clone(),
        server_pid,
        clients,
        rooms: opts.rooms,
        room_size: opts.room_size,
        senders,
        payload,
        setup_secs,
        server_rss_after_setup_kib: rss_after_setup,
        steps,
        find_max: opts.find_max,
        max_held: if opts.find_max { max_held } else { None },
    })
}

#[allow(clippy::too_many_arguments)]
async fn measure_step(
    kind: Kind,
    opts: &LoadOpts,
    shared: &Shared,
    ctl: &watch::Sender<Phase>,
    step: u32,
    rate: f64,
    period_us: u64,
    server_pid: Option<u32>,
) -> StepReport {
    shared.reset();
    let loadavg = sys::loadavg();
    let server_cpu = CpuWindow::start(server_pid);
    let also_cpu: Vec<CpuWindow> = opts
        .also_pids
        .iter()
        .map(|p| CpuWindow::start(Some(*p)))
        .collect();
    let own_cpu = CpuWindow::start(Some(std::process::id()));
    let t0 = Instant::now();
    let _ = ctl.send(Phase {
        step,
        period_us,
        stop: false,
    });
    tokio::time::sleep(Duration::from_secs(opts.duration)).await;
    let _ = ctl.send(Phase {
        step,
        period_us: 0,
        stop: false,
    });
    let window = t0.elapsed().as_secs_f64();
    let server = server_cpu.finish();
    let also = also_cpu.iter().map(CpuWindow::finish).collect();
    let generator = own_cpu.finish();
    // Senders that were due when the phase changed may still send: `sent` and `expected` are
    // read again while draining.
    let expected_for = |sent: u64| {
        if kind == Kind::Fanout {
            sent * opts.room_size as u64
        } else {
            0
        }
    };
    // Drain: wait for the expected deliveries and the acks (bounded).
    let drain_start = Instant::now();
    let drain_limit = Duration::from_secs(opts.drain);
    loop {
        let sent = shared.sent.load(Ordering::Relaxed);
        let expected = expected_for(sent);
        let delivered = shared.delivered.load(Ordering::Relaxed);
        let acked =
            shared.acks_ok.load(Ordering::Relaxed) + shared.acks_err.load(Ordering::Relaxed);
        if delivered >= expected && acked >= sent {
            break;
        }
        if drain_start.elapsed() >= drain_limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_ms = drain_start.elapsed().as_millis() as u64;
    if kind != Kind::Fanout {
        // Storm events have no count to wait for: give late ones the same drain.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent = shared.sent.load(Ordering::Relaxed);
    let expected = expected_for(sent);
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let acks_ok = shared.acks_ok.load(Ordering::Relaxed);
    let acks_err = shared.acks_err.load(Ordering::Relaxed);
    let acks_missing = sent.saturating_sub(acks_ok + acks_err);
    let completeness = if expected == 0 {
        1.0
    } else {
        delivered as f64 / expected as f64
    };
    let latency = shared.latency.percentiles();
    let ack_rtt = shared.ack_rtt.percentiles();
    let sent_per_s = sent as f64 / window;
    let p99 = if kind == Kind::Fanout {
        latency.p99_ms
    } else {
        ack_rtt.p99_ms
    };
    let held = delivered >= expected
        && acks_err == 0
        && acks_missing == 0
        && p99 <= opts.max_p99_ms
        && sent_per_s >= 0.95 * rate;
    StepReport {
        rate,
        sent,
        sent_per_s,
        acks_ok,
        acks_err,
        acks_missing,
        first_error: shared.first_error.lock().expect("lock").clone(),
        delivered,
        expected,
        completeness,
        delivered_per_s: delivered as f64 / window,
        latency,
        latency_local: shared.latency_local.percentiles(),
        latency_cross: shared.latency_cross.percentiles(),
        ack_rtt,
        drain_ms,
        server,
        generator,
        also,
        loadavg,
        held,
    }
}

/// One line per step for the terminal.
pub fn step_line(s: &StepReport) -> String {
    let cross = if s.latency_cross.count > 0 {
        format!(
            ", p99 local {:.1} / across instances {:.1} ms",
            s.latency_local.p99_ms, s.latency_cross.p99_ms
        )
    } else {
        String::new()
    };
    let also: String = s
        .also
        .iter()
        .map(|u| format!(", also-pid cpu {:.0} %", u.cpu_pct))
        .collect();
    format!(
        "rate {:.0}/s: sent {:.0}/s, delivered {:.0}/s ({:.2} %), latency p50 {:.1} p90 {:.1} \
         p99 {:.1} max {:.1} ms{cross}, ack p50 {:.1} p99 {:.1} ms, acks ok {} err {} missing {}, \
         server cpu {:.0} % rss {} MiB{also}, generator cpu {:.0} %, load {}{}",
        s.rate,
        s.sent_per_s,
        s.delivered_per_s,
        s.completeness * 100.0,
        s.latency.p50_ms,
        s.latency.p90_ms,
        s.latency.p99_ms,
        s.latency.max_ms,
        s.ack_rtt.p50_ms,
        s.ack_rtt.p99_ms,
        s.acks_ok,
        s.acks_err,
        s.acks_missing,
        s.server.cpu_pct,
        s.server.rss_kib / 1024,
        s.generator.cpu_pct,
        s.loadavg,
        if s.held { "" } else { "  (did not hold)" }
    )
}

struct TaskSpec {
    index: usize,
    /// The instance (index of its `--url`) this client is connected to, as a letter written
    /// after the timestamp in each message it sends (`A` for the first).
    instance: u8,
    room: String,
    /// Sender number (0..senders) when this client sends.
    sender: Option<usize>,
    senders: usize,
    payload: usize,
    kind: Kind,
}

async fn client_task(
    spec: TaskSpec,
    client: ClientOpts,
    targets: Vec<crate::ws::Target>,
    gate: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut ctl: watch::Receiver<Phase>,
) {
    let conn = {
        let _permit = gate.acquire().await;
        setup(&spec, &client, &targets).await
    };
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            common::keep_first(&shared.setup_error, || {
                format!("client {}: {e:#}", spec.index)
            });
            return;
        }
    };
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let mut ticker: Option<Interval> = None;
    let mut pending: VecDeque<(u64, u64)> = VecDeque::new();
    let mut next_id: u64 = 1;
    let mut flip = false;
    let mut frame = Vec::with_capacity(spec.payload + 128);
    let mut server_closed = false;
    let mut last_step = 0u32;
    loop {
        tokio::select! {
            r = conn.fill() => {
                if !matches!(r, Ok(true)) {
                    break;
                }
                let seen = conn.process(|t| {
                    on_text(t, spec.kind, spec.instance, &shared, &mut pending, &mut server_closed)
                });
                if seen.closed || server_closed || conn.flush().await.is_err() {
                    break;
                }
            }
            changed = ctl.changed() => {
                if changed.is_err() {
                    break;
                }
                let phase = *ctl.borrow_and_update();
                if phase.stop {
                    break;
                }
                if phase.step != last_step {
                    // A new step: acks of the previous one no longer count.
                    pending.clear();
                    last_step = phase.step;
                }
                ticker = match (spec.sender, phase.period_us) {
                    (Some(k), p) if p > 0 => {
                        let offset = p * k as u64 / spec.senders as u64;
                        let start = tokio::time::Instant::now() + Duration::from_micros(offset);
                        let mut t = tokio::time::interval_at(start, Duration::from_micros(p));
                        t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                        Some(t)
                    }
                    _ => None,
                };
            }
            _ = tick(&mut ticker) => {
                let id = next_id;
                next_id += 1;
                let t = now_us();
                build_frame(&mut frame, &spec, id, t, flip);
                flip = !flip;
                pending.push_back((id, t));
                if conn.send_text(&frame).await.is_err() {
                    break;
                }
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    conn.close().await;
}

async fn tick(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

async fn setup(
    spec: &TaskSpec,
    client: &ClientOpts,
    targets: &[crate::ws::Target],
) -> anyhow::Result<Conn> {
    let mut conn = common::connect(client, targets, spec.index).await?;
    let ack = common::emit_ack(
        &mut conn,
        0,
        "room:join",
        &format!(r#"{{"roomName":"{}"}}"#, spec.room),
        Duration::from_secs(client.connect_timeout),
    )
    .await?;
    anyhow::ensure!(
        find(ack.as_bytes(), b"\"success\":true").is_some(),
        "room:join {}: {ack}",
        spec.room
    );
    Ok(conn)
}

fn build_frame(out: &mut Vec<u8>, spec: &TaskSpec, id: u64, t: u64, flip: bool) {
    use std::io::Write;
    let (kind, room, payload, instance) = (spec.kind, &spec.room, spec.payload, spec.instance);
    out.clear();
    let _ = match kind {
        Kind::Fanout => {
            let _ = write!(
                out,
                r#"42{id}["message:send",{{"roomName":"{room}","content":"{t:016}"#
            );
            if payload > 16 {
                out.push(instance);
            }
            out.resize(out.len() + payload.saturating_sub(17), b'x');
            write!(out, r#""}}]"#)
        }
        Kind::Typing => {
            let ev = if flip { "typing:stop" } else { "typing:start" };
            write!(out, r#"42{id}["{ev}",{{"roomName":"{room}"}}]"#)
        }
        Kind::Presence => {
            let st = if flip { "online" } else { "away" };
            write!(out, r#"42{id}["presence:update",{{"status":"{st}"}}]"#)
        }
        Kind::Join => {
            let ev = if flip { "room:join" } else { "room:leave" };
            write!(out, r#"42{id}["{ev}",{{"roomName":"{room}"}}]"#)
        }
    };
}

/// Handles one text frame of a joined client (the hot path: no JSON parsing).
fn on_text(
    t: &[u8],
    kind: Kind,
    instance: u8,
    shared: &Shared,
    pending: &mut VecDeque<(u64, u64)>,
    server_closed: &mut bool,
) {
    if let Some(rest) = t.strip_prefix(b"42[\"") {
        let counted = match kind {
            Kind::Fanout => {
                if rest.starts_with(b"message:new\"") {
                    if let Some(at) = find(rest, b"\"content\":\"")
                        && let Some((sent_at, n)) = parse_digits(&rest[at + 11..])
                    {
                        let us = now_us().saturating_sub(sent_at);
                        shared.latency.record(us);
                        match rest.get(at + 11 + n) {
                            Some(&from) if from.is_ascii_uppercase() && from != instance => {
                                shared.latency_cross.record(us)
                            }
                            _ => shared.latency_local.record(us),
                        }
                    }
                    true
                } else {
                    false
                }
            }
            Kind::Typing => rest.starts_with(b"typing:event\""),
            Kind::Presence => rest.starts_with(b"presence:changed\""),
            Kind::Join => rest.starts_with(b"user:joined\"") || rest.starts_with(b"user:left\""),
        };
        if counted {
            shared.delivered.fetch_add(1, Ordering::Relaxed);
        }
    } else if let Some(rest) = t.strip_prefix(b"43") {
        let Some((id, n)) = parse_digits(rest) else {
            return;
        };
        let now = now_us();
        while let Some(&(pid, sent_at)) = pending.front() {
            if pid > id {
                break;
            }
            pending.pop_front();
            if pid == id {
                shared.ack_rtt.record(now.saturating_sub(sent_at));
            }
        }
        if find(&rest[n..], b"\"success\":true").is_some() {
            shared.acks_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.acks_err.fetch_add(1, Ordering::Relaxed);
            common::keep_first(&shared.first_error, || {
                String::from_utf8_lossy(t).into_owned()
            });
        }
    } else if t == b"41" || t.starts_with(b"41") {
        *server_closed = true;
    }
}

/// Runs and prints; `json`: the report as one JSON document on stdout.
pub async fn main(kind: Kind, opts: LoadOpts, json: bool) -> anyhow::Result<()> {
    let report = run(kind, &opts).await.context("load run")?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:?}: {} clients, {} rooms of {}, {} senders, setup {:.1} s",
            report.scenario,
            report.clients,
            report.rooms,
            report.room_size,
            report.senders,
            report.setup_secs
        );
        for s in &report.steps {
            println!("{}", step_line(s));
        }
        if let Some(m) = &report.max_held {
            println!(
                "highest rate that held: {:.0}/s ({:.0} deliveries/s, p99 {:.1} ms)",
                m.rate, m.delivered_per_s, m.latency.p99_ms
            );
        } else if opts.find_max {
            println!("no rate held");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frames_have_the_exact_content_length() {
        let mut f = Vec::new();
        let spec = TaskSpec {
            index: 1,
            instance: b'B',
            room: "bench-0".into(),
            sender: Some(0),
            senders: 1,
            payload: 64,
            kind: Kind::Fanout,
        };
        build_frame(&mut f, &spec, 7, 42, false);
        let s = String::from_utf8(f).unwrap();
        assert!(s.starts_with(
            r#"427["message:send",{"roomName":"bench-0","content":"0000000000000042"#
        ));
        let v: serde_json::Value = serde_json::from_str(&s[3..]).unwrap();
        assert_eq!(v[1]["content"].as_str().unwrap().len(), 64);
        assert!(s.contains(r#""content":"0000000000000042Bx"#));
    }

    #[test]
    fn counts_deliveries_and_acks() {
        let shared = Shared::default();
        let mut pending = VecDeque::from([(1, now_us()), (2, now_us())]);
        let mut closed = false;
        let msg = format!(
            r#"42["message:new",{{"roomName":"r","userId":"u","content":"{:016}xx","messageId":"1"}}]"#,
            now_us()
        );
        on_text(
            msg.as_bytes(),
            Kind::Fanout,
            b'A',
            &shared,
            &mut pending,
            &mut closed,
        );
        on_text(
            br#"432[{"success":true,"data":{}}]"#,
            Kind::Fanout,
            b'A',
            &shared,
            &mut pending,
            &mut closed,
        );
        assert_eq!(shared.delivered.load(Ordering::Relaxed), 1);
        assert_eq!(shared.latency.percentiles().count, 1);
        assert_eq!(shared.latency_local.percentiles().count, 1);
        assert_eq!(shared.latency_cross.percentiles().count, 0);
        // A message sent through the second instance counts as a cross-instance delivery.
        let cross = format!(
            r#"42["message:new",{{"roomName":"r","userId":"u","content":"{:016}Bx","messageId":"2"}}]"#,
            now_us()
        );
        on_text(
            cross.as_bytes(),
            Kind::Fanout,
            b'A',
            &shared,
            &mut VecDeque::new(),
            &mut closed,
        );
        assert_eq!(shared.latency_cross.percentiles().count, 1);
        assert_eq!(shared.latency.percentiles().count, 2);
        assert_eq!(shared.acks_ok.load(Ordering::Relaxed), 1);
        assert_eq!(shared.ack_rtt.percentiles().count, 1);
        assert!(pending.is_empty());
        on_text(
            br#"433[{"success":false,"error":{"code":"MUTED"}}]"#,
            Kind::Fanout,
            b'A',
            &shared,
            &mut pending,
            &mut closed,
        );
        assert_eq!(shared.acks_err.load(Ordering::Relaxed), 1);
        on_text(
            b"41",
            Kind::Fanout,
            b'A',
            &shared,
            &mut pending,
            &mut closed,
        );
        assert!(closed);
    }
}
