//! Join storms: many clients connecting at once, each joining a room right after its connect
//! answer, with a bounded number in flight (a herd after a restart).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::client::SioClient;
use crate::token::user_token;

/// Raises this process's open-file soft limit to the hard one (a storm holds thousands of
/// sockets, and the server of a test runs in the same process).
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// One client's outcome.
pub struct Outcome {
    /// The user.
    pub user: String,
    /// The room it joined (or tried to).
    pub room: String,
    /// The join ack, or `{"connectError": message}` when the connect failed.
    pub ack: Value,
    /// The client, kept connected for the test to use.
    pub client: Option<SioClient>,
}

impl Outcome {
    /// Whether the join succeeded.
    pub fn joined(&self) -> bool {
        self.ack.get("success") == Some(&Value::Bool(true))
    }

    /// The error code of a failed join (or `CONNECT` for a failed connect).
    pub fn code(&self) -> String {
        if self.ack.get("connectError").is_some() {
            return "CONNECT".into();
        }
        self.ack
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("OK")
            .to_string()
    }

    /// The `memberCount` of a successful join.
    pub fn member_count(&self) -> Option<i64> {
        self.ack
            .pointer("/data/memberCount")
            .and_then(Value::as_i64)
    }
}

/// Connects one client per `(user, room)` with at most `in_flight` connects-and-joins under
/// way, each joining its room as soon as it is connected. Every client is kept.
pub async fn join_storm(url: &str, who: Vec<(String, String)>, in_flight: usize) -> Vec<Outcome> {
    join_storm_on(&[url.to_string()], who, in_flight).await
}

/// [`join_storm`] over several servers: client `i` connects to `urls[i % n]`.
pub async fn join_storm_on(
    urls: &[String],
    who: Vec<(String, String)>,
    in_flight: usize,
) -> Vec<Outcome> {
    let gate = Arc::new(Semaphore::new(in_flight));
    let mut tasks = Vec::with_capacity(who.len());
    for (i, (user, room)) in who.into_iter().enumerate() {
        let (gate, url) = (gate.clone(), urls[i % urls.len()].clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok();
            join_one(&url, user, room).await
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("storm task"));
    }
    out
}

/// Connects `user` and joins `room` (30 s at most for each step).
pub async fn join_one(url: &str, user: String, room: String) -> Outcome {
    let mut opts = crate::ConnectOptions::token(&user_token(&user));
    opts.timeout = Duration::from_secs(30);
    let mut client = match SioClient::connect_with(url, opts).await {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                user,
                room,
                ack: json!({ "connectError": e.message }),
                client: None,
            };
        }
    };
    let ack = client
        .emit_args_ack(
            "room:join",
            &[json!({ "roomName": room })],
            Duration::from_secs(30),
        )
        .await
        .and_then(|a| a.into_iter().next())
        .unwrap_or_else(|| json!({ "noAck": true }));
    Outcome {
        user,
        room,
        ack,
        client: Some(client),
    }
}

/// How many outcomes ended in each code (`OK` for a success).
pub fn codes(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        *m.entry(o.code()).or_default() += 1;
    }
    m
}

/// The `memberCount`s of the successful joins, per room, sorted.
pub fn counts_by_room(outcomes: &[Outcome]) -> BTreeMap<String, Vec<i64>> {
    let mut m: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for o in outcomes {
        if let Some(n) = o.member_count() {
            m.entry(o.room.clone()).or_default().push(n);
        }
    }
    for v in m.values_mut() {
        v.sort_unstable();
    }
    m
}

/// Waits (20 s at most) until `check` passes; panics with its last message otherwise.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
