//! The set of live modules, swapped atomically: a reload builds a new list and stores it in an
//! `ArcSwap`; an event in flight keeps the `Arc` of the list it started with, so it finishes on
//! the versions it began with, and no event runs on a half-updated chain.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::engine::{Limits, Module, Runtime};
use super::kv::KvStore;
use super::sidecar::{OnError, Sidecar};
use crate::metrics::{Metrics, ModuleLabel};

/// Failures in a row that quarantine a module.
pub const QUARANTINE_AFTER: u32 = 5;
/// How long a quarantined module is skipped.
pub const QUARANTINE_FOR: Duration = Duration::from_secs(30);
/// Call latencies kept per module for percentiles.
const LATENCY_WINDOW: usize = 4096;

/// Call statistics of one module.
#[derive(Default)]
pub struct Stats {
    pub(super) calls: AtomicU64,
    pub(super) rejects: AtomicU64,
    pub(super) modifies: AtomicU64,
    pub(super) failures: AtomicU64,
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
    /// Failure mode.
    pub on_error: OnError,
    /// Call statistics.
    pub stats: Stats,
    /// The Prometheus label.
    pub label: ModuleLabel,
}

impl Loaded {
    /// Whether the module wants this event.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == event)
    }
}

/// One file of the plugins directory, as last seen.
struct FileEntry {
    hash: String,
    loaded: Option<Arc<Loaded>>,
    error: Option<String>,
}

/// What the CLI, `/health` and `/metrics` show of a module file.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    /// File name.
    pub file: String,
    /// Module name (None when it never loaded).
    pub name: Option<String>,
    /// Module version.
    pub version: Option<String>,
    /// First 12 hex digits of the content hash.
    pub hash: String,
    /// loaded, failed (the previous version may still serve), or quarantined.
    pub status: &'static str,
    /// Why the file failed to load.
    pub error: Option<String>,
    /// Run order.
    pub priority: Option<i32>,
    /// Events it handles.
    pub events: Vec<String>,
    /// Calls.
    pub calls: u64,
    /// Rejections it decided.
    pub rejects: u64,
    /// Payload rewrites.
    pub modifies: u64,
    /// Traps, timeouts, malformed verdicts.
    pub failures: u64,
    /// Median call time, µs.
    pub p50_us: Option<u32>,
    /// 99th percentile call time, µs.
    pub p99_us: Option<u32>,
}

/// Live modules and the files behind them.
pub struct Registry {
    live: ArcSwap<Vec<Arc<Loaded>>>,
    files: Mutex<BTreeMap<PathBuf, FileEntry>>,
    rescan: tokio::sync::Mutex<()>,
    runtime: Runtime,
    kv: Arc<dyn KvStore>,
    metrics: Arc<Metrics>,
    dir: PathBuf,
    default_limits: Limits,
}

fn hash_of(wasm: &[u8], sidecar: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(wasm);
    if let Some(s) = sidecar {
        h.update(b"\0sidecar\0");
        h.update(s.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
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
            live: ArcSwap::from_pointee(Vec::new()),
            files: Mutex::new(BTreeMap::new()),
            rescan: tokio::sync::Mutex::new(()),
            runtime,
            kv,
            metrics,
            dir,
            default_limits,
        }
    }

    /// The live modules, in run order.
    pub fn live(&self) -> Arc<Vec<Arc<Loaded>>> {
        self.live.load_full()
    }

    /// Re-reads the plugins directory: loads new and changed files off the event path, keeps
    /// the previous version of a file that fails, unloads deleted files, then swaps.
    pub async fn rescan(self: &Arc<Self>) {
        let _one_at_a_time = self.rescan.lock().await;
        let found = list_wasm(&self.dir);
        let mut changed = false;
        for path in &found {
            let Ok(wasm) = std::fs::read(path) else {
                continue;
            };
            let sidecar_path = path.with_extension("toml");
            let sidecar_text = std::fs::read_to_string(&sidecar_path).ok();
            let hash = hash_of(&wasm, sidecar_text.as_deref());
            let same = self.files().get(path).is_some_and(|e| e.hash == hash);
            if same {
                continue;
            }
            changed = true;
            let this = self.clone();
            let hash2 = hash.clone();
            let result = tokio::task::spawn_blocking(move || {
                this.load_file(&wasm, sidecar_text.as_deref(), &hash2)
            })
            .await
            .unwrap_or_else(|e| Err(format!("loader crashed: {e}")));
            let file = file_name(path);
            let mut files = self.files();
            let entry = files.entry(path.clone()).or_insert(FileEntry {
                hash: String::new(),
                loaded: None,
                error: None,
            });
            entry.hash = hash;
            match result {
                Ok(loaded) => {
                    tracing::info!(file, module = %loaded.name, version = %loaded.version, "policy module loaded");
                    entry.loaded = Some(Arc::new(loaded));
                    entry.error = None;
                }
                Err(error) => {
                    self.metrics.plugin_load_failures.inc();
                    if entry.loaded.is_some() {
                        tracing::error!(file, %error, "policy module failed to load; the previous version stays live");
                    } else {
                        tracing::error!(file, %error, "policy module failed to load");
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

    /// Builds the run order from the files and swaps it in. Two files claiming one module
    /// name: the first (by file name) wins, the other is reported.
    fn publish(&self) {
        let mut files = self.files();
        let mut seen = std::collections::HashSet::new();
        let mut list = Vec::new();
        for (path, entry) in files.iter_mut() {
            let Some(loaded) = &entry.loaded else {
                continue;
            };
            if !seen.insert(loaded.name.clone()) {
                entry.error = Some(format!(
                    "module name {:?} is already used by another file",
                    loaded.name
                ));
                tracing::error!(file = file_name(path), "duplicate module name");
                continue;
            }
            list.push(loaded.clone());
        }
        list.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
        self.live.store(Arc::new(list));
    }

    fn load_file(&self, wasm: &[u8], sidecar: Option<&str>, hash: &str) -> Result<Loaded, String> {
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
            .load(component, limits, self.kv.clone(), &config)
            .map_err(|e| e.to_string())?;
        let events = sidecar.events.clone().unwrap_or(descriptor.events);
        let name: Arc<str> = Arc::from(descriptor.name.as_str());
        Ok(Loaded {
            module,
            label: ModuleLabel {
                module: descriptor.name.clone(),
            },
            name,
            version: Arc::from(descriptor.version.as_str()),
            priority: sidecar.priority.unwrap_or(descriptor.priority),
            events,
            on_error: sidecar.on_error,
            stats: Stats::default(),
        })
    }

    /// Every file's status.
    pub fn status(&self) -> Vec<PluginStatus> {
        let now = Instant::now();
        let live: Vec<Arc<Loaded>> = self.live().iter().cloned().collect();
        self.files()
            .iter()
            .map(|(path, e)| {
                let serving = e
                    .loaded
                    .as_ref()
                    .filter(|l| live.iter().any(|x| Arc::ptr_eq(x, l)));
                let status = match (serving, &e.error) {
                    (_, Some(_)) => "failed",
                    (Some(l), None) if l.stats.quarantined(now) => "quarantined",
                    (Some(_), None) => "loaded",
                    (None, None) => "failed",
                };
                let l = e.loaded.as_ref();
                PluginStatus {
                    file: file_name(path),
                    name: l.map(|l| l.name.to_string()),
                    version: l.map(|l| l.version.to_string()),
                    hash: e.hash.chars().take(12).collect(),
                    status,
                    error: e.error.clone(),
                    priority: l.map(|l| l.priority),
                    events: l.map(|l| l.events.clone()).unwrap_or_default(),
                    calls: l.map_or(0, |l| l.stats.calls.load(Ordering::Relaxed)),
                    rejects: l.map_or(0, |l| l.stats.rejects.load(Ordering::Relaxed)),
                    modifies: l.map_or(0, |l| l.stats.modifies.load(Ordering::Relaxed)),
                    failures: l.map_or(0, |l| l.stats.failures.load(Ordering::Relaxed)),
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

/// `*.wasm` files directly in `dir`, sorted.
fn list_wasm(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    v.sort();
    v
}
