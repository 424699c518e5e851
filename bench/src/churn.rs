//! `churn`: steady turnover for soak runs. `--users` virtual users each loop until the
//! deadline: connect, join a room, send `--messages` messages (acked) with a typing start and
//! stop, leave, disconnect; then again as a new connection. Reported: sessions, messages,
//! failures by code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::common::{self, ClientOpts};
use crate::sys;

/// Options of a churn run.
#[derive(Debug, Clone, clap::Args)]
pub struct ChurnOpts {
    /// Client options.
    #[command(flatten)]
    pub client: ClientOpts,
    /// Virtual users looping at once.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Rooms (`<room-prefix><i mod rooms>`; they must exist on nself-realtime).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Room name prefix.
    #[arg(long, default_value = "bench-")]
    pub room_prefix: String,
    /// Messages per session.
    #[arg(long, default_value_t = 5)]
    pub messages: usize,
    /// Milliseconds between two messages of a session.
    #[arg(long, default_value_t = 200)]
    pub interval_ms: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
}

/// What a churn run did.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// Sessions completed (connect .. disconnect).
    pub sessions: u64,
    /// Messages acked `success: true`.
    pub messages: u64,
    /// Failures by code (`CONNECT`, `TIMEOUT`, or the error code of an ack).
    pub failures: BTreeMap<String, u64>,
    /// The first failure's text.
    pub first_failure: Option<String>,
}

#[derive(Default)]
struct Tally {
    sessions: AtomicU64,
    messages: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    first: Mutex<Option<String>>,
}

impl Tally {
    fn fail(&self, code: String, text: String) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
        common::keep_first(&self.first, || text);
    }
}

fn code_of(ack: &str) -> Option<String> {
    if ack.contains("\"success\":true") {
        return None;
    }
    Some(
        ack.split("\"code\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("UNKNOWN")
            .to_string(),
    )
}

/// Emits with an ack; true when it was `success: true` (failures are tallied).
async fn ack(
    conn: &mut crate::ws::Conn,
    tally: &Tally,
    timeout: Duration,
    id: u64,
    event: &'static str,
    payload: String,
) -> bool {
    match common::emit_ack(conn, id, event, &payload, timeout).await {
        Ok(a) => match code_of(&a) {
            None => true,
            Some(code) => {
                tally.fail(code, format!("{event}: {a}"));
                false
            }
        },
        Err(e) => {
            tally.fail("TIMEOUT".into(), format!("{event}: {e:#}"));
            false
        }
    }
}

async fn session(opts: &ChurnOpts, targets: &[crate::ws::Target], i: usize, tally: &Tally) {
    let mut conn = match common::connect(&opts.client, targets, i).await {
        Ok(c) => c,
        Err(e) => return tally.fail("CONNECT".into(), format!("{e:#}")),
    };
    let room = format!("{}{}", opts.room_prefix, i % opts.rooms.max(1));
    let timeout = Duration::from_secs(10);
    let room_payload = format!("{{\"roomName\":\"{room}\"}}");
    if !ack(
        &mut conn,
        tally,
        timeout,
        1,
        "room:join",
        room_payload.clone(),
    )
    .await
    {
        conn.close().await;
        return;
    }
    let _ = conn
        .send_text(format!("42[\"typing:start\",{room_payload}]").as_bytes())
        .await;
    for m in 0..opts.messages {
        let payload = format!(
            "{{\"roomName\":\"{room}\",\"content\":\"churn {i} {m}\",\"clientMessageId\":\"c-{i}-{m}-{}\"}}",
            crate::common::now_us()
        );
        if ack(
            &mut conn,
            tally,
            timeout,
            10 + m as u64,
            "message:send",
            payload,
        )
        .await
        {
            tally.messages.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(opts.interval_ms)).await;
    }
    let _ = conn
        .send_text(format!("42[\"typing:stop\",{room_payload}]").as_bytes())
        .await;
    ack(&mut conn, tally, timeout, 2, "room:leave", room_payload).await;
    conn.close().await;
    tally.sessions.fetch_add(1, Ordering::Relaxed);
}

/// `realtime-bench churn`.
pub async fn main(opts: ChurnOpts, json: bool) -> anyhow::Result<()> {
    sys::raise_nofile();
    let targets = Arc::new(opts.client.targets()?);
    let opts = Arc::new(opts);
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(opts.duration);
    let mut tasks = Vec::new();
    for u in 0..opts.users {
        let (opts, targets, tally) = (opts.clone(), targets.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0usize;
            while Instant::now() < deadline {
                // A new client index per session: a new user id each time.
                session(&opts, &targets, u + round * opts.users, &tally).await;
                round += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let report = ChurnReport {
        sessions: tally.sessions.load(Ordering::Relaxed),
        messages: tally.messages.load(Ordering::Relaxed),
        failures: std::mem::take(&mut *tally.failures.lock().unwrap_or_else(|e| e.into_inner())),
        first_failure: tally.first.lock().unwrap_or_else(|e| e.into_inner()).take(),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "churn: {} sessions, {} messages, failures {:?}{}",
            report.sessions,
            report.messages,
            report.failures,
            report
                .first_failure
                .as_deref()
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
