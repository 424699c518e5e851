//! The wasmtime side: one [`Runtime`] (engine with pooling allocator and epoch deadlines,
//! compiled-artifact cache), and [`Module`], a loaded policy with its pool of warm instances.
//!
//! Instantiating costs tens of microseconds, a call on a warm instance about one, so instances
//! are reused: taken from the pool for a call, put back after it, thrown away when they trap
//! and recycled after [`RECYCLE_AFTER`] calls (a module's memory only grows).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

use super::bindings::{
    Descriptor, EXPORT_V1, EXPORT_V2, Event, Level, POLICY_EXPORT_PREFIX, Verdict, Version, v1, v2,
};
use super::kv::KvStore;

/// Calls served by one instance before it is replaced by a fresh one.
pub const RECYCLE_AFTER: u64 = 10_000;
/// Warm instances kept per module.
const POOL_SIZE: usize = 8;
/// Epoch tick: the resolution of call deadlines.
const TICK: Duration = Duration::from_millis(1);
/// Most time a call may spend waiting for the key/value store (Redis) without it counting
/// against the module's deadline.
const MAX_WAIT_CREDIT: Duration = Duration::from_millis(300);
/// Largest wasm stack.
const MAX_STACK: usize = 512 * 1024;
/// Ceiling of any module's memory (the per-module cap is lower, from the sidecar).
pub const MAX_MEMORY_MB: u64 = 256;
/// Longest log line a module may write.
const MAX_LOG: usize = 2048;

/// Why a module could not be loaded; the text is what `/health` and the CLI show.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a valid component.
    #[error("not a valid policy component: {0}")]
    Compile(String),
    /// Built against another interface version.
    #[error("built against interface {found}, this server speaks {EXPORT_V2} and {EXPORT_V1}")]
    Version {
        /// The export found.
        found: String,
    },
    /// Does not export the policy interface.
    #[error("does not export {EXPORT_V2} (or {EXPORT_V1})")]
    NoExport,
    /// Imports a capability policies are not granted.
    #[error("imports {0}, which policy modules are not granted")]
    Forbidden(String),
    /// Instantiation or `describe` failed.
    #[error("describe failed: {0}")]
    Describe(String),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The CPU deadline passed (epoch interruption).
    #[error("deadline exceeded")]
    Deadline,
    /// The module's stack overflowed.
    #[error("stack overflow")]
    StackOverflow,
    /// Any other trap (an `unreachable`, an out-of-bounds access, the memory cap): its text.
    #[error("{0}")]
    Trap(String),
    /// A fresh instance could not be made: instantiation or its `describe` failed.
    #[error("{stage}: {reason}")]
    Instance {
        /// `instantiate` or `describe`.
        stage: &'static str,
        /// What failed.
        reason: String,
    },
}

impl CallError {
    /// The error of a failed call.
    fn of(e: &wasmtime::Error) -> CallError {
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => CallError::Deadline,
            Some(wasmtime::Trap::StackOverflow) => CallError::StackOverflow,
            _ => CallError::Trap(trap_text(e)),
        }
    }
}

/// The engine shared by every module.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    ticker: Arc<Ticker>,
}

/// The epoch ticker's switch: it ticks (every [`TICK`]) only while a module runs, and sleeps
/// otherwise, so a server with no module call in flight is not woken a thousand times a
/// second (on a busy core each wakeup preempts the event loop).
#[derive(Default)]
struct Ticker {
    /// Module calls running now.
    active: std::sync::atomic::AtomicUsize,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// While held, the epoch advances.
struct Ticking<'a>(&'a Ticker);

impl Ticker {
    fn enter(&self) -> Ticking<'_> {
        if self
            .active
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            == 0
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        Ticking(self)
    }

    fn idle(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Acquire) == 0
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(256)
            .total_core_instances(1024)
            .total_memories(256)
            .total_tables(1024)
            .max_memory_size((MAX_MEMORY_MB as usize) << 20)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_STACK)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let weak = engine.weak();
        let ticker = Arc::new(Ticker::default());
        let switch = ticker.clone();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    if switch.idle() {
                        // Woken by the next call (or once a second, to notice the engine
                        // is gone); a deadline counts ticks from its call's start.
                        drop(engine);
                        std::thread::park_timeout(Duration::from_secs(1));
                        continue;
                    }
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })?;
        let _ = ticker.thread.set(thread.thread().clone());
        if let Some(dir) = &cache_dir
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "plugin cache disabled");
        }
        Ok(Runtime {
            engine,
            cache_dir,
            ticker,
        })
    }

    /// Compiles (or loads the cached compilation of) a component. Blocking: run it off the
    /// event path.
    pub fn compile(&self, bytes: &[u8], hash: &str) -> Result<Component, LoadError> {
        let cached = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{hash}.cwasm")));
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the file was written by `Component::serialize` of this same engine
            // configuration, in a directory owned by the server; wasmtime rejects artifacts
            // of another version or configuration with an error, which falls back below.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::debug!(error = %e, "stale plugin cache entry"),
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        if let Some(path) = cached {
            match component.serialize() {
                Ok(art) => write_atomically(&path, &art),
                Err(e) => tracing::debug!(error = %e, "plugin not cached"),
            }
        }
        Ok(component)
    }

    /// The names of what a component imports (interfaces and functions).
    pub fn imports(&self, component: &Component) -> Vec<String> {
        component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Checks the component's interface, links it, instantiates it once and calls `describe`.
    /// `label` names the module in log lines until `describe` has named it.
    pub fn load(
        &self,
        component: Component,
        limits: Limits,
        kv: Arc<dyn KvStore>,
        config: &str,
        label: &str,
    ) -> Result<(Module, Descriptor), LoadError> {
        let version = check_interface(&self.engine, &component)?;
        let describe_err = |e: wasmtime::Error| LoadError::Describe(format!("{e:#}"));
        let mut linker: Linker<State> = Linker::new(&self.engine);
        match version {
            Version::V1 => v1::PolicyModule::add_to_linker::<
                State,
                wasmtime::component::HasSelf<State>,
            >(&mut linker, |s| s),
            Version::V2 => v2::PolicyModule::add_to_linker::<
                State,
                wasmtime::component::HasSelf<State>,
            >(&mut linker, |s| s),
        }
        .map_err(describe_err)?;
        super::wasi::define(&mut linker, &self.engine, &component).map_err(describe_err)?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(describe_err)?;
        let instance_pre = linker.instantiate_pre(&component).map_err(describe_err)?;
        let pre = match version {
            Version::V1 => v1::PolicyModulePre::new(instance_pre).map(Pre::V1),
            Version::V2 => v2::PolicyModulePre::new(instance_pre).map(Pre::V2),
        }
        .map_err(describe_err)?;
        let module = Module {
            engine: self.engine.clone(),
            ticker: self.ticker.clone(),
            pre,
            limits,
            kv,
            config: config.to_string(),
            // Until `describe` names it, the module is known by its file.
            name: Arc::from(label),
            pool: Mutex::new(Vec::new()),
        };
        let (inst, descriptor) = module
            .instantiate()
            .map_err(|e| LoadError::Describe(e.to_string()))?;
        if descriptor.name.is_empty() || descriptor.name.len() > 64 {
            return Err(LoadError::Describe(
                "module name must be 1-64 characters".into(),
            ));
        }
        let module = Module {
            name: Arc::from(descriptor.name.as_str()),
            ..module
        };
        // From here on the instance's log lines carry the module's name, not its file's.
        let mut inst = inst;
        inst.store.data_mut().module = module.name.clone();
        module.release(inst);
        Ok((module, descriptor))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let r = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(error = %e, "plugin cache write failed");
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() as u64)
        .div_ceil(TICK.as_millis().max(1) as u64)
        .max(1)
}

/// The interface version a component exports; refuses one that exports another version, or
/// none, or that imports a capability policies are not granted (filesystem, sockets, HTTP).
fn check_interface(engine: &Engine, component: &Component) -> Result<Version, LoadError> {
    let ty = component.component_type();
    let mut version = None;
    for (name, _) in ty.exports(engine) {
        if name == EXPORT_V2 {
            version = Some(Version::V2);
            break;
        }
        if name == EXPORT_V1 {
            version = Some(Version::V1);
            break;
        }
        if name.starts_with(POLICY_EXPORT_PREFIX) {
            return Err(LoadError::Version {
                found: name.to_string(),
            });
        }
    }
    let Some(version) = version else {
        return Err(LoadError::NoExport);
    };
    for (name, item) in ty.imports(engine) {
        let forbidden = ["wasi:filesystem/", "wasi:sockets/", "wasi:http/"]
            .iter()
            .any(|p| name.starts_with(p));
        if forbidden && matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            return Err(LoadError::Forbidden(name.to_string()));
        }
    }
    Ok(version)
}

/// Per-module limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU deadline of one call.
    pub timeout: Duration,
    /// Memory cap.
    pub memory_bytes: usize,
}

/// The data of one instance's store: what the host imports need.
pub struct State {
    module: Arc<str>,
    kv: Arc<dyn KvStore>,
    limits: StoreLimits,
    /// The last error the module logged (a 0.1.0 module refusing its configuration panics:
    /// its message, logged by the SDK's panic hook, says why its `describe` trapped).
    last_error: Option<String>,
    /// Time spent in key/value calls since the deadline was last extended: the deadline is the
    /// module's own time, not the store's (Redis under load is slower than a module's budget).
    waited: Duration,
    /// What is left of this call's [`MAX_WAIT_CREDIT`].
    credit: Duration,
}

impl State {
    fn log(&mut self, level: Level, message: String) {
        let message: String = message.chars().take(MAX_LOG).collect();
        let module = &*self.module;
        // One module line is one log line: line breaks and other control characters are
        // escaped, so a module cannot forge lines (and its name stays on the same line).
        let mut line = String::with_capacity(message.len());
        for c in message.chars() {
            if c.is_control() {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
        match level {
            Level::Trace => tracing::trace!(target: "plugin", module, "{line}"),
            Level::Debug => tracing::debug!(target: "plugin", module, "{line}"),
            Level::Info => tracing::info!(target: "plugin", module, "{line}"),
            Level::Warn => tracing::warn!(target: "plugin", module, "{line}"),
            Level::Error => tracing::error!(target: "plugin", module, "{line}"),
        }
        if level == Level::Error {
            self.last_error = Some(message);
        }
    }

    fn now_ms(&mut self) -> u64 {
        chrono::Utc::now().timestamp_millis().max(0) as u64
    }

    /// Runs a key/value call, counting its time as waited.
    fn timed<T>(&mut self, f: impl FnOnce(&dyn KvStore, &str) -> T) -> T {
        let start = std::time::Instant::now();
        let out = f(&*self.kv, &self.module);
        self.waited += start.elapsed();
        out
    }

    /// Starts a call: no wait counted yet, the whole credit available.
    fn start_call(&mut self) {
        self.waited = Duration::ZERO;
        self.credit = MAX_WAIT_CREDIT;
    }

    /// At the deadline: extended by the time waited for the store since the last extension
    /// (within the call's credit), otherwise the call is interrupted.
    fn at_deadline(&mut self) -> wasmtime::UpdateDeadline {
        let credit = std::mem::take(&mut self.waited).min(self.credit);
        self.credit -= credit;
        if credit.is_zero() {
            wasmtime::UpdateDeadline::Interrupt
        } else {
            wasmtime::UpdateDeadline::Continue(ticks(credit))
        }
    }

    fn kv_get(&mut self, key: String) -> Option<String> {
        self.timed(|kv, module| kv.get(module, &key))
    }

    fn kv_set(&mut self, key: String, value: String, ttl_ms: Option<u64>) {
        self.timed(|kv, module| kv.set(module, &key, value, ttl_ms.map(Duration::from_millis)))
    }

    fn kv_incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> i64 {
        self.timed(|kv, module| kv.incr(module, &key, delta, ttl_ms.map(Duration::from_millis)))
    }

    fn kv_delete(&mut self, key: String) {
        self.timed(|kv, module| kv.delete(module, &key))
    }
}

/// The host imports of one interface version, over [`State`] (the versions share them).
macro_rules! host_imports {
    ($v:ident) => {
        impl $v::nself::realtime::host::Host for State {
            fn log(&mut self, level: $v::nself::realtime::host::Level, message: String) {
                State::log(self, level.into(), message)
            }
            fn now_ms(&mut self) -> u64 {
                State::now_ms(self)
            }
            fn kv_get(&mut self, key: String) -> Option<String> {
                State::kv_get(self, key)
            }
            fn kv_set(&mut self, key: String, value: String, ttl_ms: Option<u64>) {
                State::kv_set(self, key, value, ttl_ms)
            }
            fn kv_incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> i64 {
                State::kv_incr(self, key, delta, ttl_ms)
            }
            fn kv_delete(&mut self, key: String) {
                State::kv_delete(self, key)
            }
        }

        impl $v::nself::realtime::types::Host for State {}
    };
}

host_imports!(v1);
host_imports!(v2);

/// A pre-linked component of either interface version.
enum Pre {
    V1(v1::PolicyModulePre<State>),
    V2(v2::PolicyModulePre<State>),
}

/// An instance's exports, of either interface version.
enum Bound {
    V1(v1::PolicyModule),
    V2(v2::PolicyModule),
}

/// One instance: its store and its exports.
struct Instance {
    store: Store<State>,
    bindings: Bound,
    calls: u64,
}

/// A loaded module: its pre-linked component and its warm instances.
pub struct Module {
    engine: Engine,
    ticker: Arc<Ticker>,
    pre: Pre,
    limits: Limits,
    kv: Arc<dyn KvStore>,
    /// The sidecar's config string: every instance is configured with it.
    config: String,
    name: Arc<str>,
    pool: Mutex<Vec<Instance>>,
}

impl Module {
    /// A new instance, configured: `describe(config)` runs on every instance before its first
    /// `handle` (a module builds its settings there).
    fn instantiate(&self) -> Result<(Instance, Descriptor), CallError> {
        let _ticking = self.ticker.enter();
        let state = State {
            module: self.name.clone(),
            kv: self.kv.clone(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .instances(64)
                .trap_on_grow_failure(true)
                .build(),
            last_error: None,
            waited: Duration::ZERO,
            credit: MAX_WAIT_CREDIT,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().at_deadline()));
        // Instantiation runs the module's initialisers: give it a (generous) deadline too.
        store.set_epoch_deadline(ticks(self.limits.timeout) * 10);
        let instantiate_err = |e: wasmtime::Error| CallError::Instance {
            stage: "instantiate",
            reason: trap_text(&e),
        };
        let bindings = match &self.pre {
            Pre::V1(pre) => Bound::V1(pre.instantiate(&mut store).map_err(instantiate_err)?),
            Pre::V2(pre) => Bound::V2(pre.instantiate(&mut store).map_err(instantiate_err)?),
        };
        // A refused configuration: the module's own message (0.2.0 answers it; a 0.1.0
        // module's panic message was logged before its trap).
        let describe_err = |e: wasmtime::Error, store: &Store<State>| CallError::Instance {
            stage: "describe",
            reason: store
                .data()
                .last_error
                .as_deref()
                .map(without_location)
                .unwrap_or_else(|| trap_text(&e)),
        };
        let descriptor: Descriptor = match &bindings {
            Bound::V1(b) => match b
                .nself_realtime_policy()
                .call_describe(&mut store, &self.config)
            {
                Ok(d) => d.into(),
                Err(e) => return Err(describe_err(e, &store)),
            },
            Bound::V2(b) => match b
                .nself_realtime_policy()
                .call_describe(&mut store, &self.config)
            {
                Ok(Ok(d)) => d.into(),
                Ok(Err(message)) => {
                    return Err(CallError::Instance {
                        stage: "describe",
                        reason: message.chars().take(500).collect(),
                    });
                }
                Err(e) => return Err(describe_err(e, &store)),
            },
        };
        let inst = Instance {
            store,
            bindings,
            calls: 0,
        };
        Ok((inst, descriptor))
    }

    /// Puts a healthy instance back into the pool (or drops it when the pool is full or the
    /// instance is due for recycling).
    fn release(&self, inst: Instance) {
        if inst.calls < RECYCLE_AFTER {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOL_SIZE {
                pool.push(inst);
            }
        }
    }

    /// Calls `handle` on a warm instance within the module's deadline and memory cap.
    pub fn handle(&self, event: &Event) -> Result<Verdict, CallError> {
        let _ticking = self.ticker.enter();
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut inst = match taken {
            Some(i) => i,
            None => self.instantiate()?.0,
        };
        inst.store.data_mut().start_call();
        inst.store.set_epoch_deadline(ticks(self.limits.timeout));
        let result = match &inst.bindings {
            Bound::V1(b) => b
                .nself_realtime_policy()
                .call_handle(&mut inst.store, &event.into())
                .map(Verdict::from),
            Bound::V2(b) => b
                .nself_realtime_policy()
                .call_handle(&mut inst.store, &event.into())
                .map(Verdict::from),
        };
        match result {
            Ok(verdict) => {
                inst.calls += 1;
                self.release(inst);
                Ok(verdict)
            }
            // A trapped instance is never reused.
            Err(e) => Err(CallError::of(&e)),
        }
    }
}

impl Module {
    /// The interface version the module was built against.
    pub fn version(&self) -> Version {
        match self.pre {
            Pre::V1(_) => Version::V1,
            Pre::V2(_) => Version::V2,
        }
    }

    /// Tells the module the server accepted `event` (0.2.0 modules that asked for it; a 0.1.0
    /// module has no such export). Within the module's deadline; a failure is returned, the
    /// instance dropped.
    pub fn accepted(&self, event: &Event) -> Result<(), CallError> {
        if matches!(self.pre, Pre::V1(_)) {
            return Ok(());
        }
        let _ticking = self.ticker.enter();
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut inst = match taken {
            Some(i) => i,
            None => self.instantiate()?.0,
        };
        inst.store.data_mut().start_call();
        inst.store.set_epoch_deadline(ticks(self.limits.timeout));
        let result = match &inst.bindings {
            Bound::V1(_) => Ok(()),
            Bound::V2(b) => b
                .nself_realtime_policy()
                .call_accepted(&mut inst.store, &event.into()),
        };
        match result {
            Ok(()) => {
                inst.calls += 1;
                self.release(inst);
                Ok(())
            }
            Err(e) => Err(CallError::of(&e)),
        }
    }
}

/// A panic message as the SDK logs it, without the source location of the module's build
/// (`panicked at /home/dev/my-module/src/lib.rs:10:5:` carries the author's paths).
fn without_location(message: &str) -> String {
    let message = message.strip_prefix("panic: ").unwrap_or(message);
    let text = match message.split_once("panicked at ") {
        Some((_, rest)) => rest.split_once(":\n").map_or(rest, |(_, m)| m),
        None => message,
    };
    text.trim().chars().take(500).collect()
}

fn trap_text(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => "deadline exceeded".into(),
            wasmtime::Trap::StackOverflow => "stack overflow".into(),
            other => other.to_string(),
        };
    }
    let text = format!("{e:#}");
    text.chars().take(300).collect()
}
