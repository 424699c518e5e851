//! The set of live modules, swapped atomically: a reload builds a new [`Chain`] and stores it
//! in an `ArcSwap`; an event in flight keeps the `Arc` of the chain it started with, so it
//! finishes on the versions it began with, and no event runs on a half-updated chain.
//!
//! A file that fails to load keeps its previous version serving. A file that never loaded
//! (broken at start, or broken when first dropped in) blocks: the events it would have seen
//! are refused until it loads or is removed (fail closed), unless its sidecar says
//! `on_error = "allow"`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::engine::{Limits, Module, Runtime};
use super::kv::KvStore;
use super::sidecar::{Mode, OnError, Sidecar};
use crate::metrics::{Metrics, ModuleLabel};

/// Failures in a row that quarantine a module.
pub const QUARANTINE_AFTER: u32 = 5;
/// How long a quarantined module is skipped.
pub const QUARANTINE_FOR: Duration = Duration::from_secs(30);
/// Call latencies kept per module for percentiles.
const LATENCY_WINDOW: usize = 4096;

/// Call statistics of one module, kept by module name across reloads (a new version goes on
/// counting; its failure streak and quarantine start over).
#[derive(Default)]
pub struct Stats {
    pub(super) calls: AtomicU64,
    pub(super) rejects: AtomicU64,
    pub(super) modifies: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) accepted: AtomicU64,
    pub(super) in_a_row: AtomicU32,
    quarantined_until: Mutex<Option<Instant>>,
    latencies: Mutex<VecDeque<u32>>,
}

impl Stats {
    pub(super) fn record_latency(&self, d: Duration) {
        let mut l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() == LATENCY_WINDOW {
            l.pop_front();
        }
        l.push_back(d.as_micros().min(u32::MAX as u128) as u32);
    }

    fn percentile(&self, p: f64) -> Option<u32> {
        let l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_empty() {
            return None;
        }
        let mut v: Vec<u32> = l.iter().copied().collect();
        v.sort_unstable();
        let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(idx).copied()
    }

    /// Whether the module is cooling off.
    pub fn quarantined(&self, now: Instant) -> bool {
        let mut q = self
            .quarantined_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match *q {
            Some(until) if until > now => true,
            Some(_) => {
                // Half-open: the next call tries the module again.
                *q = None;
                self.in_a_row.store(0, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Counts a failure; returns true when it starts a quarantine.
    pub(super) fn fail(&self) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= QUARANTINE_AFTER {
            let mut q = self
                .quarantined_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if q.is_none() {
                *q = Some(Instant::now() + QUARANTINE_FOR);
                return true;
            }
        }
        false
    }

    pub(super) fn succeed(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
    }

    /// A new version was loaded: its failure streak and quarantine start over.
    fn fresh_start(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
        *self
            .quarantined_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A live module with its settings.
pub struct Loaded {
    /// The wasm side.
    pub module: Module,
    /// Name from `describe`.
    pub name: Arc<str>,
    /// Version from `describe`.
    pub version: Arc<str>,
    /// Run order (lower first).
    pub priority: i32,
    /// Events it wants (`*` = all).
    pub events: Vec<String>,
    /// Events whose acceptance it wants to hear of (0.2.0).
    pub accepted: Vec<String>,
    /// Failure mode.
    pub on_error: OnError,
    /// Enforced, or shadow.
    pub mode: Mode,
    /// Call statistics (shared with the module's earlier and later versions).
    pub stats: Arc<Stats>,
    /// The Prometheus label.
    pub label: ModuleLabel,
}

impl Loaded {
    /// Whether the module wants this event.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == event)
    }

    /// Whether it wants to hear that the server accepted this event.
    pub fn wants_accepted(&self, event: &str) -> bool {
        self.accepted.iter().any(|e| e == "*" || e == event)
    }
}

/// A module file that never loaded and keeps refusing the events it would have seen.
#[derive(Debug, Clone)]
pub struct Blocked {
    /// Its file.
    pub file: String,
    /// The events it covers: its sidecar's `events`, else every event.
    pub events: Option<Vec<String>>,
    /// Why it did not load.
    pub reason: String,
}

impl Blocked {
    /// Whether it covers this event.
    pub fn covers(&self, event: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|ev| ev.iter().any(|e| e == "*" || e == event))
    }
}

/// What events run through: the live modules in run order, and the blocking files.
#[derive(Default)]
pub struct Chain {
    /// Live modules, in run order.
    pub modules: Vec<Arc<Loaded>>,
    /// Files that never loaded and refuse their events.
    pub blocked: Vec<Blocked>,
}

impl Chain {
    /// Whether anything in the chain concerns this event.
    pub fn wants(&self, event: &str) -> bool {
        self.modules.iter().any(|m| m.wants(event)) || self.blocked.iter().any(|b| b.covers(event))
    }
}

/// One file of the plugins directory, as last seen.
struct FileEntry {
    /// Of the wasm and the sidecar together (what a change is detected by).
    key: String,
    /// SHA-256 of the `.wasm` file alone.
    wasm_sha256: String,
    /// SHA-256 of its sidecar, if any.
    sidecar_sha256: Option<String>,
    sidecar_file: Option<String>,
    loaded: Option<Arc<Loaded>>,
    error: Option<String>,
    /// The sidecar as far as it could be read (what a blocking file covers).
    sidecar: Option<Sidecar>,
}

/// What the CLI, `/health` and `/metrics` show of a module file.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    /// File name.
    pub file: String,
    /// Its sidecar file, if any.
    pub sidecar: Option<String>,
    /// Module name (None when it never loaded).
    pub name: Option<String>,
    /// Module version.
    pub version: Option<String>,
    /// Interface version it was built against (`0.1.0` or `0.2.0`).
    pub interface: Option<&'static str>,
    /// First 12 hex digits of the SHA-256 of the `.wasm` file (`sha256sum NAME.wasm`).
    pub hash: String,
    /// First 12 hex digits of the SHA-256 of the sidecar, if any.
    pub sidecar_hash: Option<String>,
    /// `loaded`; `quarantined`; `stale` (this file failed, its previous version serves);
    /// `blocking` (never loaded: its events are refused); `failed` (never loaded, skipped:
    /// its sidecar says `on_error = "allow"`).
    pub status: &'static str,
    /// Whether a version of the module is serving events.
    pub serving: bool,
    /// `enforce` or `shadow`.
    pub mode: Mode,
    /// Why the file failed to load.
    pub error: Option<String>,
    /// Run order.
    pub priority: Option<i32>,
    /// Events it handles.
    pub events: Vec<String>,
    /// Calls (since the server started, across reloads).
    pub calls: u64,
    /// Rejections it decided (in shadow mode: would have decided).
    pub rejects: u64,
    /// Payload rewrites (in shadow mode: would have made).
    pub modifies: u64,
    /// Traps, timeouts, malformed verdicts.
    pub failures: u64,
    /// `accepted` notifications delivered.
    pub accepted: u64,
    /// Median call time, µs.
    pub p50_us: Option<u32>,
    /// 99th percentile call time, µs.
    pub p99_us: Option<u32>,
}

/// Live modules and the files behind them.
pub struct Registry {
    live: ArcSwap<Chain>,
    files: Mutex<BTreeMap<PathBuf, FileEntry>>,
    stats: Mutex<BTreeMap<String, Arc<Stats>>>,
    orphans: Mutex<BTreeSet<String>>,
    rescan: tokio::sync::Mutex<()>,
    runtime: Runtime,
    kv: Arc<dyn KvStore>,
    metrics: Arc<Metrics>,
    dir: PathBuf,
    default_limits: Limits,
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A module file's stem with `-` and `_` taken as one (cargo writes `slow_guard.wasm` for a
/// crate named `slow-guard`).
fn normalized(stem: &str) -> String {
    stem.replace('-', "_")
}

impl Registry {
    /// An empty registry over a plugins directory.
    pub fn new(
        runtime: Runtime,
        kv: Arc<dyn KvStore>,
        metrics: Arc<Metrics>,
        dir: PathBuf,
        default_limits: Limits,
    ) -> Registry {
        Registry {
            live: ArcSwap::from_pointee(Chain::default()),
            files: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(BTreeMap::new()),
            orphans: Mutex::new(BTreeSet::new()),
            rescan: tokio::sync::Mutex::new(()),
            runtime,
            kv,
            metrics,
            dir,
            default_limits,
        }
    }

    /// The chain events run through now.
    pub fn live(&self) -> Arc<Chain> {
        self.live.load_full()
    }

    /// Re-reads the plugins directory: loads new and changed files off the event path, keeps
    /// the previous version of a file that fails, unloads deleted files, then swaps.
    pub async fn rescan(self: &Arc<Self>) {
        let _one_at_a_time = self.rescan.lock().await;
        let (found, sidecars) = list_dir(&self.dir);
        self.warn_orphans(&found, &sidecars);
        let mut changed = false;
        for path in &found {
            let Ok(wasm) = std::fs::read(path) else {
                continue;
            };
            let sidecar_path = sidecar_of(path, &sidecars);
            let sidecar_text = sidecar_path
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok());
            let key = sha256_hex(&[
                &wasm,
                b"\0sidecar\0",
                sidecar_text.as_deref().unwrap_or("").as_bytes(),
            ]);
            if self.files().get(path).is_some_and(|e| e.key == key) {
                continue;
            }
            changed = true;
            let file = file_name(path);
            let this = self.clone();
            let (text, label) = (sidecar_text.clone(), file.clone());
            let wasm_sha256 = sha256_hex(&[&wasm]);
            let hash = wasm_sha256.clone();
            let result = tokio::task::spawn_blocking(move || {
                this.load_file(&label, &wasm, text.as_deref(), &hash)
            })
            .await
            .unwrap_or_else(|e| Err(format!("loader crashed: {e}")));
            let sidecar = sidecar_text.as_deref().and_then(|t| Sidecar::parse(t).ok());
            let mut files = self.files();
            let entry = files.entry(path.clone()).or_insert(FileEntry {
                key: String::new(),
                wasm_sha256: String::new(),
                sidecar_sha256: None,
                sidecar_file: None,
                loaded: None,
                error: None,
                sidecar: None,
            });
            entry.key = key;
            entry.wasm_sha256 = wasm_sha256;
            entry.sidecar_sha256 = sidecar_text.as_deref().map(|t| sha256_hex(&[t.as_bytes()]));
            entry.sidecar_file = sidecar_path.as_deref().map(file_name);
            entry.sidecar = sidecar;
            match result {
                Ok(loaded) => {
                    tracing::info!(file, module = %loaded.name, version = %loaded.version, interface = loaded.module.version().as_str(), mode = ?loaded.mode, "policy module loaded");
                    entry.loaded = Some(Arc::new(loaded));
                    entry.error = None;
                }
                Err(error) => {
                    self.metrics.plugin_load_failures.inc();
                    match (&entry.loaded, entry.sidecar.as_ref().map(|s| s.on_error)) {
                        (Some(_), _) => {
                            tracing::error!(file, %error, "policy module failed to load; the previous version stays live")
                        }
                        (None, Some(OnError::Allow)) => {
                            tracing::error!(file, %error, "policy module failed to load; its events pass without it (on_error = \"allow\")")
                        }
                        (None, _) => {
                            tracing::error!(file, %error, "policy module failed to load; the events it covers are refused until it loads or is removed")
                        }
                    }
                    entry.error = Some(error);
                }
            }
        }
        {
            let mut files = self.files();
            let before = files.len();
            files.retain(|p, _| found.contains(p));
            if files.len() != before {
                changed = true;
                tracing::info!("policy module file removed: unloaded");
            }
        }
        if changed {
            self.publish();
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, FileEntry>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sidecar whose stem matches no module file is reported (once per appearance).
    fn warn_orphans(&self, wasm: &[PathBuf], sidecars: &[PathBuf]) {
        let stems: BTreeSet<String> = wasm.iter().map(|p| normalized(&stem(p))).collect();
        let now: BTreeSet<String> = sidecars
            .iter()
            .filter(|p| !stems.contains(&normalized(&stem(p))))
            .map(|p| file_name(p))
            .collect();
        let mut known = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        for orphan in now.difference(&known) {
            tracing::warn!(sidecar = %orphan, "sidecar with no module file of that name (NAME.toml goes beside NAME.wasm; - and _ are taken as one): ignored");
        }
        *known = now;
    }

    /// Builds the chain from the files and swaps it in. Two files claiming one module name:
    /// the first (by file name) wins, the other is reported.
    fn publish(&self) {
        let mut files = self.files();
        let mut seen = std::collections::HashSet::new();
        let mut chain = Chain::default();
        for (path, entry) in files.iter_mut() {
            let Some(loaded) = &entry.loaded else {
                let allow = entry
                    .sidecar
                    .as_ref()
                    .is_some_and(|s| s.on_error == OnError::Allow);
                if !allow {
                    chain.blocked.push(Blocked {
                        file: file_name(path),
                        events: entry.sidecar.as_ref().and_then(|s| s.events.clone()),
                        reason: entry.error.clone().unwrap_or_default(),
                    });
                }
                continue;
            };
            if !seen.insert(loaded.name.clone()) {
                entry.error = Some(format!(
                    "module name {:?} is already used by another file",
                    loaded.name
                ));
                tracing::error!(file = file_name(path), module = %loaded.name, "duplicate module name");
                continue;
            }
            chain.modules.push(loaded.clone());
        }
        chain
            .modules
            .sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
        self.live.store(Arc::new(chain));
    }

    fn stats_of(&self, name: &str) -> Arc<Stats> {
        let mut all = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let stats = all.entry(name.to_string()).or_default().clone();
        stats.fresh_start();
        stats
    }

    fn load_file(
        &self,
        file: &str,
        wasm: &[u8],
        sidecar: Option<&str>,
        hash: &str,
    ) -> Result<Loaded, String> {
        let sidecar = match sidecar {
            Some(text) => Sidecar::parse(text).map_err(|e| format!("sidecar: {e}"))?,
            None => Sidecar::default(),
        };
        let limits = Limits {
            timeout: sidecar
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(self.default_limits.timeout),
            memory_bytes: sidecar
                .memory_mb
                .map(|m| (m as usize) << 20)
                .unwrap_or(self.default_limits.memory_bytes),
        };
        let component = self
            .runtime
            .compile(wasm, hash)
            .map_err(|e| e.to_string())?;
        let config = sidecar.config.clone().unwrap_or_default();
        let (module, descriptor) = self
            .runtime
            .load(component, limits, self.kv.clone(), &config, file)
            .map_err(|e| e.to_string())?;
        let events = sidecar.events.clone().unwrap_or(descriptor.events);
        let label = ModuleLabel {
            module: descriptor.name.clone(),
        };
        self.metrics.module_seen(&label);
        Ok(Loaded {
            stats: self.stats_of(&descriptor.name),
            label,
            name: Arc::from(descriptor.name.as_str()),
            version: Arc::from(descriptor.version.as_str()),
            priority: sidecar.priority.unwrap_or(descriptor.priority),
            events,
            accepted: descriptor.accepted,
            on_error: sidecar.on_error,
            mode: sidecar.mode,
            module,
        })
    }

    /// Every file's status.
    pub fn status(&self) -> Vec<PluginStatus> {
        let now = Instant::now();
        let live = self.live();
        self.files()
            .iter()
            .map(|(path, e)| {
                let serving = e
                    .loaded
                    .as_ref()
                    .filter(|l| live.modules.iter().any(|x| Arc::ptr_eq(x, l)));
                let allow = e
                    .sidecar
                    .as_ref()
                    .is_some_and(|s| s.on_error == OnError::Allow);
                let status = match (serving, &e.error) {
                    (Some(_), Some(_)) => "stale",
                    (Some(l), None) if l.stats.quarantined(now) => "quarantined",
                    (Some(_), None) => "loaded",
                    (None, _) if allow => "failed",
                    (None, _) => "blocking",
                };
                let l = e.loaded.as_ref();
                let count = |f: fn(&Stats) -> &AtomicU64| {
                    l.map_or(0, |l| f(&l.stats).load(Ordering::Relaxed))
                };
                PluginStatus {
                    file: file_name(path),
                    sidecar: e.sidecar_file.clone(),
                    name: l.map(|l| l.name.to_string()),
                    version: l.map(|l| l.version.to_string()),
                    interface: l.map(|l| l.module.version().as_str()),
                    hash: e.wasm_sha256.chars().take(12).collect(),
                    sidecar_hash: e
                        .sidecar_sha256
                        .as_ref()
                        .map(|h| h.chars().take(12).collect()),
                    status,
                    serving: serving.is_some(),
                    mode: l
                        .map(|l| l.mode)
                        .or(e.sidecar.as_ref().map(|s| s.mode))
                        .unwrap_or_default(),
                    error: e.error.clone(),
                    priority: l.map(|l| l.priority),
                    events: l.map(|l| l.events.clone()).unwrap_or_default(),
                    calls: count(|s| &s.calls),
                    rejects: count(|s| &s.rejects),
                    modifies: count(|s| &s.modifies),
                    failures: count(|s| &s.failures),
                    accepted: count(|s| &s.accepted),
                    p50_us: l.and_then(|l| l.stats.percentile(0.5)),
                    p99_us: l.and_then(|l| l.stats.percentile(0.99)),
                }
            })
            .collect()
    }

    /// The plugins directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The sidecar of a module file: `NAME.toml`, else the one whose stem matches with `-` and
/// `_` taken as one.
fn sidecar_of(wasm: &Path, sidecars: &[PathBuf]) -> Option<PathBuf> {
    let exact = wasm.with_extension("toml");
    if sidecars.contains(&exact) {
        return Some(exact);
    }
    let want = normalized(&stem(wasm));
    sidecars
        .iter()
        .find(|p| normalized(&stem(p)) == want)
        .cloned()
}

/// The sidecar the server pairs with a module file, looking in the file's directory.
pub fn sidecar_beside(wasm: &Path) -> Option<PathBuf> {
    let dir = wasm
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sidecar_of(&dir.join(wasm.file_name()?), &list_dir(dir).1)
}

/// `*.wasm` and `*.toml` files directly in `dir`, each sorted.
fn list_dir(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (Vec::new(), Vec::new());
    };
    let files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    let of = |ext: &str| {
        let mut v: Vec<PathBuf> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .cloned()
            .collect();
        v.sort();
        v
    };
    (of("wasm"), of("toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_match_with_dash_and_underscore_as_one() {
        let toml = |n: &str| PathBuf::from(format!("/p/{n}.toml"));
        let sidecars = vec![toml("other"), toml("slow-guard")];
        assert_eq!(
            sidecar_of(Path::new("/p/slow_guard.wasm"), &sidecars),
            Some(toml("slow-guard"))
        );
        let both = vec![toml("slow-guard"), toml("slow_guard")];
        assert_eq!(
            sidecar_of(Path::new("/p/slow_guard.wasm"), &both),
            Some(toml("slow_guard")),
            "the exact name first"
        );
        assert_eq!(sidecar_of(Path::new("/p/lonely.wasm"), &sidecars), None);
    }

    #[test]
    fn a_blocking_file_covers_its_sidecar_events_or_everything() {
        let b = Blocked {
            file: "x.wasm".into(),
            events: Some(vec!["message:send".into()]),
            reason: String::new(),
        };
        assert!(b.covers("message:send"));
        assert!(!b.covers("room:join"));
        let all = Blocked { events: None, ..b };
        assert!(all.covers("connect") && all.covers("room:join"));
    }
}
