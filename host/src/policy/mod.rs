//! The policy layer: WebAssembly policy modules (wasmtime components of `wit/`) that every
//! client event, connect included, passes through before the native access rules.
//!
//! | file | owns |
//! |---|---|
//! | `bindings.rs` | the generated WIT bindings of both interface versions (only file naming generated types) and the host's own types |
//! | `engine.rs` | engine, limits, compile cache, a module's warm instance pool |
//! | `wasi.rs` | the few WASI functions granted (randomness, clocks) |
//! | `registry.rs` | the chain (atomic swap): live modules and blocking files; file status, call statistics |
//! | `watcher.rs` | hot reload |
//! | `kv/` | the per-module key/value store (memory, Redis) |
//! | `sidecar.rs` | `NAME.toml` settings |
//! | `tools.rs` | what the CLI's `plugin check` and `plugin run` do with one file |

pub(crate) mod bindings;
mod engine;
pub mod kv;
mod registry;
pub mod sidecar;
pub mod tools;
mod wasi;
mod watcher;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use registry::{PluginStatus, QUARANTINE_AFTER, QUARANTINE_FOR};
pub use sidecar::Mode;

use self::bindings::{Event, Identity as WitIdentity, RoomInfo as WitRoom, Verdict};
use self::engine::{Limits, Runtime};
use self::kv::KvStore;
use self::registry::{Loaded, Registry};
use self::sidecar::OnError;

/// `accepted` notifications waiting for the worker, at most (past it they are dropped and
/// counted).
const ACCEPTED_QUEUE: usize = 4096;
use crate::auth::Identity;
use crate::error::{EventError, code};
use crate::metrics::Metrics;

/// The sender as policy modules see it, built once per connection (and per token refresh).
#[derive(Clone)]
pub struct PolicyIdentity(WitIdentity);

impl PolicyIdentity {
    /// Converts an identity (claims serialized once here, not per event).
    pub fn new(identity: &Identity) -> PolicyIdentity {
        PolicyIdentity(WitIdentity {
            user_id: identity.user_id.clone(),
            session_id: identity.session_id.clone(),
            roles: identity.roles.clone(),
            claims_json: identity.claims.to_string(),
        })
    }
}

/// The room an event targets, for policy modules.
#[derive(Debug, Clone)]
pub struct PolicyRoom {
    /// Room name.
    pub name: String,
    /// Room type.
    pub room_type: String,
    /// Visibility.
    pub visibility: String,
    /// The sender's role in the room, if a member.
    pub member_role: Option<String>,
}

/// One module's answer, for the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Module name.
    pub module: String,
    /// Module version.
    pub version: String,
    /// What it answered.
    pub verdict: VerdictKind,
    /// `shadow` when the answer was recorded, not carried out.
    #[serde(skip_serializing_if = "is_enforced")]
    pub mode: Mode,
}

fn is_enforced(m: &Mode) -> bool {
    *m == Mode::Enforce
}

/// A module's answer as the audit log and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictKind {
    /// Let the event through unchanged.
    Allow,
    /// Rewrote the payload.
    Modify,
    /// Refused the event.
    Reject,
    /// Failed (trap, timeout, malformed verdict, quarantine): skipped or denied by `on_error`.
    Error,
}

impl VerdictKind {
    /// `allow`, `modify`, `reject` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Allow => "allow",
            VerdictKind::Modify => "modify",
            VerdictKind::Reject => "reject",
            VerdictKind::Error => "error",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for VerdictKind {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// What the chain decided.
#[derive(Debug)]
pub enum ChainResult {
    /// Go on; with `Some` payload when a module rewrote it.
    Pass {
        /// The rewritten payload.
        payload: Option<Value>,
        /// Each module's answer.
        decisions: Vec<Decision>,
    },
    /// Stop: the event is refused.
    Reject {
        /// What the client gets.
        error: EventError,
        /// Each module's answer.
        decisions: Vec<Decision>,
    },
}

/// Settings of the extension layer.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where `*.wasm` (and `*.toml`) files are.
    pub dir: PathBuf,
    /// Where compiled artifacts are cached (None disables the cache).
    pub cache_dir: Option<PathBuf>,
    /// Default CPU deadline per call.
    pub timeout: Duration,
    /// Default memory cap.
    pub memory_bytes: usize,
    /// Largest payload a module may return.
    pub max_payload: usize,
}

/// The policy layer of one server.
pub struct Policies {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    max_payload: usize,
    /// To the worker that delivers `accepted` notifications off the event path.
    accepted: std::sync::mpsc::SyncSender<(Arc<Loaded>, Event)>,
}

impl Policies {
    /// Builds the engine and loads the modules present now.
    pub async fn start(
        settings: Settings,
        kv: Arc<dyn KvStore>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Policies>> {
        let runtime = Runtime::new(settings.cache_dir.clone())?;
        let registry = Arc::new(Registry::new(
            runtime,
            kv,
            metrics.clone(),
            settings.dir.clone(),
            Limits {
                timeout: settings.timeout,
                memory_bytes: settings.memory_bytes,
            },
        ));
        registry.rescan().await;
        let (accepted, queue) = std::sync::mpsc::sync_channel(ACCEPTED_QUEUE);
        let worker_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("policy-accepted".into())
            .spawn(move || deliver_accepted(queue, worker_metrics))?;
        Ok(Arc::new(Policies {
            registry,
            metrics,
            max_payload: settings.max_payload,
            accepted,
        }))
    }

    /// Spawns the hot-reload watcher.
    pub fn watch(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(watcher::run(self.registry.clone(), stop))
    }

    /// Re-reads the plugins directory now.
    pub async fn rescan(&self) {
        self.registry.rescan().await;
    }

    /// Every module file's status.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.registry.status()
    }

    /// The files that never loaded and refuse their events now: `(file, why)`.
    pub fn blocking(&self) -> Vec<(String, String)> {
        self.registry
            .live()
            .blocked
            .iter()
            .map(|b| (b.file.clone(), b.reason.clone()))
            .collect()
    }

    /// Whether the chain concerns this event (a module wants it, or a blocking file covers
    /// it): lets callers skip preparing room info.
    pub fn wants(&self, event: &str) -> bool {
        self.registry.live().wants(event)
    }

    /// Whether a live module wants to hear that the server accepted this event.
    pub fn wants_accepted(&self, event: &str) -> bool {
        self.registry
            .live()
            .modules
            .iter()
            .any(|m| m.wants_accepted(event))
    }

    /// The server accepted an event: the modules that asked are told, off the event path (a
    /// full queue drops the notification and counts it).
    pub fn accepted(
        &self,
        name: &str,
        payload: &Value,
        socket_id: &str,
        identity: &PolicyIdentity,
        room: Option<&PolicyRoom>,
    ) {
        let chain = self.registry.live();
        let mut event = None;
        for m in chain.modules.iter().filter(|m| m.wants_accepted(name)) {
            let e = event
                .get_or_insert_with(|| build_event(name, payload, socket_id, identity, room))
                .clone();
            if self.accepted.try_send((m.clone(), e)).is_err() {
                self.metrics
                    .plugin_accepted_dropped
                    .get_or_create(&m.label)
                    .inc();
            }
        }
    }

    /// Runs the chain for one event: modules in priority order, each seeing the previous
    /// one's output; the first reject stops it. Blocking for at most the modules' deadlines.
    pub fn run(
        &self,
        name: &str,
        payload: &Value,
        socket_id: &str,
        identity: &PolicyIdentity,
        room: Option<&PolicyRoom>,
    ) -> ChainResult {
        let chain = self.registry.live();
        let mut decisions = Vec::new();
        if !chain.wants(name) {
            return ChainResult::Pass {
                payload: None,
                decisions,
            };
        }
        // A module file that never loaded refuses the events it would have seen (fail closed
        // from the first second): nothing runs for them until it loads or is removed.
        if let Some(b) = chain.blocked.iter().find(|b| b.covers(name)) {
            let error = EventError::new(
                code::POLICY_UNAVAILABLE,
                format!("Policy module {} is not available", b.file),
            )
            .with_details(json!({ "plugin": b.file }));
            return ChainResult::Reject { error, decisions };
        }
        let mut event = build_event(name, payload, socket_id, identity, room);
        let mut rewritten = None;
        let now = Instant::now();
        for m in chain.modules.iter().filter(|m| m.wants(name)) {
            let outcome = if m.stats.quarantined(now) {
                Err("quarantined after repeated failures".to_string())
            } else {
                self.call(m, &event)
            };
            if m.mode == Mode::Shadow {
                // Recorded, never carried out.
                let verdict = match &outcome {
                    Ok(Checked::Allow) => VerdictKind::Allow,
                    Ok(Checked::Modify(..)) => VerdictKind::Modify,
                    Ok(Checked::Reject(e)) => {
                        tracing::info!(module = %m.name, event = name, code = %e.code, message = %e.message, "shadow policy would reject");
                        VerdictKind::Reject
                    }
                    Err(_) => VerdictKind::Error,
                };
                decisions.push(decision(m, verdict));
                continue;
            }
            let verdict = match outcome {
                Ok(v) => v,
                Err(reason) => {
                    decisions.push(decision(m, VerdictKind::Error));
                    match m.on_error {
                        OnError::Allow => continue,
                        OnError::Deny => {
                            let error = EventError::new(
                                code::POLICY_REJECTED,
                                format!("Rejected by policy {}", m.name),
                            )
                            .with_details(json!({ "plugin": &*m.name, "reason": reason }));
                            return ChainResult::Reject { error, decisions };
                        }
                    }
                }
            };
            match verdict {
                Checked::Allow => decisions.push(decision(m, VerdictKind::Allow)),
                Checked::Modify(json, value) => {
                    decisions.push(decision(m, VerdictKind::Modify));
                    event.payload_json = json;
                    rewritten = Some(value);
                }
                Checked::Reject(error) => {
                    decisions.push(decision(m, VerdictKind::Reject));
                    return ChainResult::Reject { error, decisions };
                }
            }
        }
        ChainResult::Pass {
            payload: rewritten,
            decisions,
        }
    }

    /// Calls one module and checks its verdict; a failure is counted (and may quarantine).
    fn call(&self, m: &Loaded, event: &Event) -> Result<Checked, String> {
        let started = Instant::now();
        let result = m.module.handle(event);
        let elapsed = started.elapsed();
        m.stats.record_latency(elapsed);
        m.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.metrics.plugin_calls.get_or_create(&m.label).inc();
        self.metrics
            .plugin_call_seconds
            .get_or_create(&m.label)
            .observe(elapsed.as_secs_f64());
        let checked = match result {
            Ok(v) => check_verdict(v, &m.name, self.max_payload),
            Err(e) => Err(e.to_string()),
        };
        let verdict = |v: VerdictKind| crate::metrics::VerdictLabel {
            module: m.label.module.clone(),
            verdict: v,
            mode: m.mode,
        };
        match &checked {
            Ok(Checked::Reject(_)) => {
                m.stats.succeed();
                m.stats.rejects.fetch_add(1, Ordering::Relaxed);
                self.metrics.plugin_rejects.get_or_create(&m.label).inc();
                self.metrics
                    .plugin_verdicts
                    .get_or_create(&verdict(VerdictKind::Reject))
                    .inc();
            }
            Ok(Checked::Modify(..)) => {
                m.stats.succeed();
                m.stats.modifies.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .plugin_verdicts
                    .get_or_create(&verdict(VerdictKind::Modify))
                    .inc();
            }
            Ok(Checked::Allow) => {
                m.stats.succeed();
                self.metrics
                    .plugin_verdicts
                    .get_or_create(&verdict(VerdictKind::Allow))
                    .inc();
            }
            Err(reason) => {
                self.metrics.plugin_failures.get_or_create(&m.label).inc();
                self.metrics
                    .plugin_verdicts
                    .get_or_create(&verdict(VerdictKind::Error))
                    .inc();
                tracing::warn!(module = %m.name, %reason, "policy module failed");
                if m.stats.fail() {
                    tracing::error!(module = %m.name, "policy module quarantined after repeated failures");
                    self.metrics
                        .plugin_quarantines
                        .get_or_create(&m.label)
                        .inc();
                }
            }
        }
        checked
    }
}

fn decision(m: &Loaded, verdict: VerdictKind) -> Decision {
    Decision {
        module: m.name.to_string(),
        version: m.version.to_string(),
        verdict,
        mode: m.mode,
    }
}

/// The event as modules see it.
fn build_event(
    name: &str,
    payload: &Value,
    socket_id: &str,
    identity: &PolicyIdentity,
    room: Option<&PolicyRoom>,
) -> Event {
    Event {
        name: name.to_string(),
        payload_json: payload.to_string(),
        socket_id: socket_id.to_string(),
        identity: identity.0.clone(),
        room: room.map(|r| WitRoom {
            name: r.name.clone(),
            room_type: r.room_type.clone(),
            visibility: r.visibility.clone(),
            member_role: r.member_role.clone(),
        }),
    }
}

/// The worker of `accepted` notifications: one module call at a time, off the event path.
fn deliver_accepted(queue: std::sync::mpsc::Receiver<(Arc<Loaded>, Event)>, metrics: Arc<Metrics>) {
    while let Ok((m, event)) = queue.recv() {
        match m.module.accepted(&event) {
            Ok(()) => {
                m.stats.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.plugin_failures.get_or_create(&m.label).inc();
                tracing::warn!(module = %m.name, reason = %e, "policy module failed on an accepted notification");
            }
        }
    }
}

/// A verdict the host checked.
enum Checked {
    Allow,
    Modify(String, Value),
    Reject(EventError),
}

/// A module's own error code must look like one: 1-64 of `A-Z 0-9 _`.
fn valid_code(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// [`check_verdict`] for the fuzz targets: the rewritten payload of a `modify`.
#[doc(hidden)]
pub fn check_verdict_for_fuzzing(
    v: Verdict,
    module: &str,
    max_payload: usize,
) -> Result<Option<Value>, String> {
    match check_verdict(v, module, max_payload)? {
        Checked::Modify(_, value) => Ok(Some(value)),
        Checked::Allow | Checked::Reject(_) => Ok(None),
    }
}

fn check_verdict(v: Verdict, module: &str, max_payload: usize) -> Result<Checked, String> {
    match v {
        Verdict::Allow => Ok(Checked::Allow),
        Verdict::Modify(json) => {
            if json.len() > max_payload {
                return Err(format!(
                    "rewrite of {} bytes exceeds the {max_payload}-byte payload limit",
                    json.len()
                ));
            }
            let value: Value = serde_json::from_str(&json)
                .map_err(|_| "malformed verdict: the rewritten payload is not JSON".to_string())?;
            Ok(Checked::Modify(json, value))
        }
        Verdict::Reject(r) => {
            if !valid_code(&r.code) {
                return Err("malformed verdict: invalid error code".into());
            }
            let message: String = r.message.chars().take(500).collect();
            let message = if message.is_empty() {
                format!("Rejected by policy {module}")
            } else {
                message
            };
            // A module's details (0.2.0) reach the client beside `plugin`, which the host sets.
            let mut details = match r.details_json.as_deref() {
                None => serde_json::Map::new(),
                Some(text) if text.len() > 4096 => {
                    return Err("malformed verdict: rejection details over 4096 bytes".into());
                }
                Some(text) => match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(map)) => map,
                    _ => {
                        return Err(
                            "malformed verdict: rejection details are not a JSON object".into()
                        );
                    }
                },
            };
            details.insert("plugin".into(), json!(module));
            Ok(Checked::Reject(
                EventError::new(code::POLICY_REJECTED, message)
                    .with_code(r.code)
                    .with_details(Value::Object(details)),
            ))
        }
    }
}
