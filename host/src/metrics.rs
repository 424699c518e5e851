//! Counters and gauges of the server, in one per-server Prometheus registry (no global
//! recorder, so tests can run many servers in one process). No label carries a room, user or
//! socket id: only event names and error codes, both bounded sets.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of per-event series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// Event name (one of the known client events).
    pub event: &'static str,
}

/// Label of per-error series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Stable error code.
    pub code: String,
}

/// Label of per-module series (the module name only).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLabel {
    /// Module name.
    pub module: String,
}

/// Label of policy verdicts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// Module name.
    pub module: String,
    /// allow, modify, reject, error.
    pub verdict: crate::policy::VerdictKind,
    /// enforce or shadow.
    pub mode: crate::policy::Mode,
}

/// Label of refused connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why the connection was refused.
    pub reason: &'static str,
}

/// Label of per-status presence gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// Presence status.
    pub status: &'static str,
}

/// Label of Redis pub/sub drops.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `out` (not published) or `in` (received but not handled).
    pub direction: &'static str,
}

/// Labels of `realtime_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    /// The server's version.
    pub version: &'static str,
    /// This instance's node id.
    pub node_id: String,
}

/// Reasons a connection is refused (`realtime_connections_refused_total{reason}`).
pub const REFUSAL_REASONS: [&str; 9] = [
    "auth_required",
    "invalid_token",
    "capacity",
    "rate_limit",
    "shutting_down",
    "policy",
    "busy",
    "handshake_rate",
    "sockets",
];

/// The standard `process_*` figures (Prometheus client conventions), set at scrape time from
/// `/proc`.
#[derive(Default)]
pub struct ProcessMetrics {
    /// User and system CPU time, seconds.
    pub cpu_seconds: Counter<f64, AtomicU64>,
    /// Resident memory, bytes.
    pub resident_memory_bytes: Gauge,
    /// Virtual memory, bytes.
    pub virtual_memory_bytes: Gauge,
    /// Open file descriptors.
    pub open_fds: Gauge,
    /// The open-file limit (soft).
    pub max_fds: Gauge,
    /// Start time, seconds since the epoch.
    pub start_time_seconds: Gauge<f64, AtomicU64>,
}

/// All metrics of one server.
pub struct Metrics {
    /// `process_*` figures (unprefixed, in their own registry).
    pub process: ProcessMetrics,
    process_registry: Registry,
    /// `realtime_build_info{version, node_id} 1`.
    pub build_info: Family<BuildLabel, Gauge>,
    /// Rooms in the directory (set at scrape time).
    pub rooms: Gauge,
    /// Active rooms (set at scrape time).
    pub rooms_active: Gauge,
    /// Users per presence status (set at scrape time).
    pub presence_users: Family<StatusLabel, Gauge>,
    /// Seconds since start (set at scrape time).
    pub uptime_seconds: Gauge,
    /// Resident memory of the process (set at scrape time).
    pub resident_memory_bytes: Gauge,
    registry: Registry,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Connections refused, by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Live connections.
    pub connections_active: Gauge,
    /// Live authenticated connections.
    pub connections_authenticated: Gauge,
    /// Open TCP connections (set at scrape time).
    pub sockets_open: Gauge,
    /// Engine sessions not yet connected to the namespace (set at scrape time).
    pub connections_pending: Gauge,
    /// Tasks alive in the runtime (set at scrape time).
    pub runtime_tasks: Gauge,
    /// Client events handled, by event.
    pub events: Family<EventLabel, Counter>,
    /// Errors answered, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Time to handle an event, by event.
    pub event_seconds: Family<EventLabel, Histogram>,
    /// `message:new` deliveries fanned out (room broadcasts).
    pub messages: Counter,
    /// Rows committed by the writer.
    pub store_writes: Counter,
    /// Batches committed by the writer.
    pub store_batches: Counter,
    /// Writes dropped (queue full, or given up after retries).
    pub store_writes_dropped: Counter,
    /// Audit rows dropped to keep the queue's room for the rows that matter (counted in
    /// `store_writes_dropped` too).
    pub store_audit_dropped: Counter,
    /// Failed batch commits (each retry counts).
    pub store_write_failures: Counter,
    /// Writes waiting in the queue.
    pub store_queue_depth: Gauge,
    /// Policy module calls.
    pub plugin_calls: Family<ModuleLabel, Counter>,
    /// Events a module rejected.
    pub plugin_rejects: Family<ModuleLabel, Counter>,
    /// Traps, timeouts and malformed verdicts.
    pub plugin_failures: Family<ModuleLabel, Counter>,
    /// Quarantines started.
    pub plugin_quarantines: Family<ModuleLabel, Counter>,
    /// Policy call time.
    pub plugin_call_seconds: Family<ModuleLabel, Histogram>,
    /// Module files that failed to load.
    pub plugin_load_failures: Counter,
    /// Verdicts by module, verdict and mode (shadow verdicts are recorded, not carried out).
    pub plugin_verdicts: Family<VerdictLabel, Counter>,
    /// `accepted` notifications dropped (the worker's queue was full).
    pub plugin_accepted_dropped: Family<ModuleLabel, Counter>,
    /// Whether Redis answers (1) or not (0); 0 as well when it is not configured.
    pub redis_up: Gauge,
    /// Redis Cluster mode: hash slots served by a reachable master (16384 when whole).
    pub redis_cluster_slots_ok: Gauge,
    /// Redis Cluster mode: nodes the cluster knows.
    pub redis_cluster_nodes: Gauge,
    /// Broadcasts published to the other instances.
    pub redis_published: Counter,
    /// Cross-instance messages lost: not published (Redis down, queue full) or received and
    /// not handled (buffer full).
    pub redis_dropped: Family<DirectionLabel, Counter>,
    /// Redis connections re-established after a loss.
    pub redis_reconnects: Counter,
    /// Total events (for the JSON `events.total`).
    pub events_total: AtomicU64,
    /// Events of the last hour (for the JSON `events.lastHour`).
    pub events_recent: RecentCounter,
    /// Users whose stored presence is offline, as last read in the background (the JSON
    /// `presence.offline`; no request reads the database for it).
    pub presence_offline: AtomicI64,
}

/// A count over the last hour, in one-minute buckets (no allocation, no lock).
pub struct RecentCounter {
    /// Per bucket: the minute it counts (since the epoch) and its count.
    buckets: [(AtomicU64, AtomicU64); 60],
}

impl Default for RecentCounter {
    fn default() -> Self {
        RecentCounter {
            buckets: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
        }
    }
}

impl RecentCounter {
    fn minute_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 60)
            .unwrap_or(0)
    }

    /// Counts one.
    pub fn inc(&self) {
        let minute = Self::minute_now();
        let (at, count) = &self.buckets[(minute % 60) as usize];
        let seen = at.load(Ordering::Acquire);
        if seen != minute
            && at
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            count.store(0, Ordering::Release);
        }
        count.fetch_add(1, Ordering::Relaxed);
    }

    /// The count of the last 60 minutes (this one included).
    pub fn last_hour(&self) -> u64 {
        let now = Self::minute_now();
        self.buckets
            .iter()
            .filter(|(at, _)| now.saturating_sub(at.load(Ordering::Acquire)) < 60)
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("realtime");
        let m = Metrics {
            process: ProcessMetrics::default(),
            process_registry: Registry::default(),
            build_info: Family::default(),
            rooms: Gauge::default(),
            rooms_active: Gauge::default(),
            presence_users: Family::default(),
            uptime_seconds: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Family::default(),
            connections_active: Gauge::default(),
            connections_authenticated: Gauge::default(),
            sockets_open: Gauge::default(),
            connections_pending: Gauge::default(),
            runtime_tasks: Gauge::default(),
            events: Family::default(),
            errors: Family::default(),
            event_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0,
                ])
            }),
            messages: Counter::default(),
            store_writes: Counter::default(),
            store_batches: Counter::default(),
            store_writes_dropped: Counter::default(),
            store_audit_dropped: Counter::default(),
            store_write_failures: Counter::default(),
            store_queue_depth: Gauge::default(),
            plugin_calls: Family::default(),
            plugin_rejects: Family::default(),
            plugin_failures: Family::default(),
            plugin_quarantines: Family::default(),
            plugin_call_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1,
                    0.000_5, 0.001, 0.005, 0.01, 0.05,
                ])
            }),
            plugin_load_failures: Counter::default(),
            plugin_verdicts: Family::default(),
            plugin_accepted_dropped: Family::default(),
            redis_up: Gauge::default(),
            redis_cluster_slots_ok: Gauge::default(),
            redis_cluster_nodes: Gauge::default(),
            redis_published: Counter::default(),
            redis_dropped: Family::default(),
            redis_reconnects: Counter::default(),
            events_total: AtomicU64::new(0),
            events_recent: RecentCounter::default(),
            presence_offline: AtomicI64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Socket.IO connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_active",
            "Live connections on this instance",
            m.connections_active.clone(),
        );
        registry.register(
            "connections_authenticated",
            "Live authenticated connections on this instance",
            m.connections_authenticated.clone(),
        );
        registry.register(
            "sockets_open",
            "Open TCP connections (Socket.IO, polling, HTTP)",
            m.sockets_open.clone(),
        );
        registry.register(
            "connections_pending",
            "Engine sessions opened and not yet connected to the namespace",
            m.connections_pending.clone(),
        );
        registry.register(
            "runtime_tasks",
            "Tasks alive in the server's async runtime",
            m.runtime_tasks.clone(),
        );
        registry.register("events", "Client events handled", m.events.clone());
        registry.register("errors", "Errors answered, by code", m.errors.clone());
        registry.register(
            "event_duration_seconds",
            "Time to handle a client event",
            m.event_seconds.clone(),
        );
        registry.register(
            "messages",
            "Messages broadcast to rooms",
            m.messages.clone(),
        );
        registry.register(
            "store_writes",
            "Rows committed by the write-behind writer",
            m.store_writes.clone(),
        );
        registry.register(
            "store_batches",
            "Transactions committed by the write-behind writer",
            m.store_batches.clone(),
        );
        registry.register(
            "store_writes_dropped",
            "Writes dropped because the queue was full or the database kept failing",
            m.store_writes_dropped.clone(),
        );
        registry.register(
            "store_audit_rows_dropped",
            "Audit rows dropped because the write-behind queue was more than half full",
            m.store_audit_dropped.clone(),
        );
        registry.register(
            "store_write_failures",
            "Failed batch commits",
            m.store_write_failures.clone(),
        );
        registry.register(
            "store_queue_depth",
            "Writes waiting in the write-behind queue",
            m.store_queue_depth.clone(),
        );
        registry.register(
            "presence_users",
            "Connected users per presence status",
            m.presence_users.clone(),
        );
        registry.register(
            "uptime_seconds",
            "Seconds since start",
            m.uptime_seconds.clone(),
        );
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the process",
            m.resident_memory_bytes.clone(),
        );
        registry.register(
            "plugin_calls",
            "Policy module calls",
            m.plugin_calls.clone(),
        );
        registry.register(
            "plugin_rejects",
            "Events rejected by a policy module",
            m.plugin_rejects.clone(),
        );
        registry.register(
            "plugin_failures",
            "Policy module traps, timeouts and malformed verdicts",
            m.plugin_failures.clone(),
        );
        registry.register(
            "plugin_quarantines",
            "Policy module quarantines started",
            m.plugin_quarantines.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Time of one policy module call",
            m.plugin_call_seconds.clone(),
        );
        registry.register(
            "plugin_load_failures",
            "Policy module files that failed to load",
            m.plugin_load_failures.clone(),
        );
        registry.register(
            "plugin_verdicts",
            "Policy module verdicts, by module, verdict (allow, modify, reject, error) and mode (enforce, shadow)",
            m.plugin_verdicts.clone(),
        );
        registry.register(
            "plugin_accepted_dropped",
            "Accepted notifications not delivered to a module (queue full)",
            m.plugin_accepted_dropped.clone(),
        );
        registry.register(
            "redis_up",
            "Whether Redis answers (scale-out)",
            m.redis_up.clone(),
        );
        registry.register(
            "redis_cluster_slots_ok",
            "Redis Cluster mode: hash slots served by a reachable master",
            m.redis_cluster_slots_ok.clone(),
        );
        registry.register(
            "redis_cluster_nodes",
            "Redis Cluster mode: nodes the cluster knows",
            m.redis_cluster_nodes.clone(),
        );
        registry.register(
            "redis_published",
            "Broadcasts published to the other instances",
            m.redis_published.clone(),
        );
        registry.register(
            "redis_messages_dropped",
            "Cross-instance messages lost (out: not published; in: received but not handled)",
            m.redis_dropped.clone(),
        );
        registry.register(
            "redis_reconnects",
            "Redis connections re-established after a loss",
            m.redis_reconnects.clone(),
        );
        registry.register(
            "build_info",
            "Version and node id of this instance (always 1)",
            m.build_info.clone(),
        );
        registry.register("rooms", "Rooms known to this instance", m.rooms.clone());
        registry.register(
            "rooms_active",
            "Active (joinable) rooms known to this instance",
            m.rooms_active.clone(),
        );
        let mut process_registry = Registry::default();
        let p = &m.process;
        process_registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            p.cpu_seconds.clone(),
        );
        process_registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_memory_bytes.clone(),
        );
        process_registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_memory_bytes.clone(),
        );
        process_registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds.clone(),
        );
        process_registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            p.max_fds.clone(),
        );
        process_registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            p.start_time_seconds.clone(),
        );
        // Known label values exist from the start (at zero), so a dashboard or an alert sees
        // a series before its first event.
        for kind in crate::pipeline::EventKind::ALL {
            let label = EventLabel { event: kind.name() };
            let _ = m.events.get_or_create(&label);
            let _ = m.event_seconds.get_or_create(&label);
        }
        for code in crate::error::code::ALL {
            let _ = m.errors.get_or_create(&CodeLabel {
                code: code.to_owned(),
            });
        }
        for reason in REFUSAL_REASONS {
            let _ = m.connections_refused.get_or_create(&ReasonLabel { reason });
        }
        for status in ["online", "away", "busy"] {
            let _ = m.presence_users.get_or_create(&StatusLabel { status });
        }
        for direction in ["out", "in"] {
            let _ = m.redis_dropped.get_or_create(&DirectionLabel { direction });
        }
        Metrics {
            registry,
            process_registry,
            ..m
        }
    }

    /// Creates a loaded module's series at zero (so an alert on its failures or quarantines
    /// has a series before the first one).
    pub fn module_seen(&self, label: &ModuleLabel) {
        let _ = self.plugin_calls.get_or_create(label);
        let _ = self.plugin_rejects.get_or_create(label);
        let _ = self.plugin_failures.get_or_create(label);
        let _ = self.plugin_quarantines.get_or_create(label);
        let _ = self.plugin_call_seconds.get_or_create(label);
        let _ = self.plugin_accepted_dropped.get_or_create(label);
    }

    /// Sets `realtime_build_info` (once, at start).
    pub fn set_build_info(&self, node_id: &str) {
        self.build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
                node_id: node_id.to_owned(),
            })
            .set(1);
    }

    /// Counts one client event (the JSON `events` figures).
    pub fn event_seen(&self) {
        self.events_total.fetch_add(1, Ordering::Relaxed);
        self.events_recent.inc();
    }

    /// The exposition of every metric: OpenMetrics text, or with `openmetrics == false` the
    /// classic Prometheus text format 0.0.4 (what `text/plain` promises).
    pub fn encode(&self, openmetrics: bool) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        let result = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process_registry))
            .and_then(|()| encode_eof(&mut out));
        if let Err(e) = result {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        if openmetrics { out } else { classic_text(&out) }
    }
}

/// OpenMetrics text -> Prometheus text format 0.0.4. A counter family `x` is exposed by
/// OpenMetrics as `# TYPE x counter` with samples `x_total`; the classic format names the
/// family after its samples (`# TYPE x_total counter`), else parsers type the samples
/// `unknown` and find no help text for them. `# UNIT` and `# EOF` do not exist there.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 16);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_after_their_samples() {
        let m = Metrics::new();
        m.set_build_info("node-a");
        m.events
            .get_or_create(&EventLabel {
                event: "message:send",
            })
            .inc();
        let open = m.encode(true);
        assert!(open.contains("# TYPE realtime_events counter"), "{open}");
        assert!(open.trim_end().ends_with("# EOF"), "{open}");
        let text = m.encode(false);
        assert!(
            text.contains("# TYPE realtime_events_total counter"),
            "{text}"
        );
        assert!(text.contains("# HELP realtime_events_total Client events handled"));
        assert!(text.contains(r#"realtime_events_total{event="message:send"} 1"#));
        // Known labels at zero before their first event.
        assert!(
            text.contains(r#"realtime_errors_total{code="MUTED"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"realtime_build_info{version=""#), "{text}");
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // Every sample belongs to a family with HELP and TYPE.
        let families: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|r| r.split(' ').next())
            .collect();
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(f)))
                .unwrap_or(name);
            assert!(families.contains(family), "{sample} has no family");
        }
    }

    #[test]
    fn recent_counts_sum_the_last_hour() {
        let r = RecentCounter::default();
        for _ in 0..5 {
            r.inc();
        }
        assert_eq!(r.last_hour(), 5);
        // A bucket from more than an hour ago does not count.
        let old = RecentCounter::minute_now() - 61;
        r.buckets[(old % 60) as usize]
            .0
            .store(old, Ordering::Release);
        r.buckets[(old % 60) as usize]
            .1
            .store(100, Ordering::Release);
        let now_bucket = (RecentCounter::minute_now() % 60) as usize;
        if now_bucket != (old % 60) as usize {
            assert_eq!(r.last_hour(), 5);
        }
    }
}
