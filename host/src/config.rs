//! Configuration: environment variables (and a `.env` file) -> a typed [`Config`].
//!
//! Every variable of the original plugin's `.env.example` is read here, plus the ones this
//! server adds. Parsing is strict: an invalid value is an error that names the variable, so a
//! typo fails at start instead of silently falling back to a default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration error; the message always names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The value could not be parsed.
    #[error("invalid value for {var}: {value:?} ({expected})")]
    Invalid {
        /// Variable name.
        var: &'static str,
        /// The value found.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A combination of values is not allowed.
    #[error("{var}: {reason}")]
    Rule {
        /// Variable name.
        var: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// Which JWT algorithm family verifies tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC SHA-256 (the default, with `REALTIME_JWT_SECRET`).
    Hs256,
    /// HMAC SHA-384.
    Hs384,
    /// HMAC SHA-512.
    Hs512,
    /// RSA PKCS#1 v1.5 SHA-256 (with `REALTIME_JWT_PUBLIC_KEY`).
    Rs256,
    /// ECDSA P-256 SHA-256 (with `REALTIME_JWT_PUBLIC_KEY`).
    Es256,
}

/// Who receives `presence:changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceScope {
    /// Every connected socket (the original's behaviour).
    All,
    /// Only sockets sharing a room with the user.
    Rooms,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// When the log file (`REALTIME_LOG_FILE`) starts a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRotation {
    /// One file, appended to forever (rotate it externally, e.g. logrotate `copytruncate`).
    Never,
    /// A new file every hour (`<file>.YYYY-MM-DD-HH`).
    Hourly,
    /// A new file every day (`<file>.YYYY-MM-DD`).
    Daily,
}

/// Which events the audit log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventLogFilter {
    /// Every event (`*`).
    All,
    /// Only the named event types (`connect`, `disconnect`, `error`, `message:send`, ...).
    Only(Vec<String>),
}

impl EventLogFilter {
    /// Whether an event type is logged (exact match, unlike the original's substring test).
    pub fn includes(&self, event_type: &str) -> bool {
        match self {
            EventLogFilter::All => true,
            EventLogFilter::Only(list) => list.iter().any(|e| e == event_type),
        }
    }
}

/// The whole server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `REALTIME_HOST` (default 0.0.0.0).
    pub host: IpAddr,
    /// `REALTIME_PORT` (default 3101).
    pub port: u16,
    /// `REALTIME_CORS_ORIGIN`: allowed origins; empty or `*` allows all.
    pub cors_origins: Vec<String>,
    /// `REALTIME_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` names the client (default none).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `REALTIME_REDIS_URL` (one server) or `REALTIME_REDIS_CLUSTER` (a Redis Cluster's seed
    /// nodes); everything in-process when neither is set.
    pub redis: Option<RedisTarget>,
    /// `REALTIME_REDIS_PREFIX` (default `nself-realtime`): prefix of the Redis keys and
    /// channels; the instances of one cluster share it.
    pub redis_prefix: String,
    /// `DATABASE_URL`, or built from `POSTGRES_*` when those are set, else embedded SQLite.
    pub database_url: String,
    /// `REALTIME_MAX_CONNECTIONS` per instance (default 10000).
    pub max_connections: usize,
    /// `REALTIME_MAX_PENDING_CONNECTS`: connections opened but not yet connected to the
    /// namespace, at most (default 2048); past it new ones get HTTP 503 and retry.
    pub max_pending_connects: usize,
    /// `REALTIME_MAX_SOCKETS`: open TCP connections at most (default: the open-file limit
    /// minus 256); past it a new connection gets `503` and is closed.
    pub max_sockets: Option<usize>,
    /// `REALTIME_HEADER_TIMEOUT` (ms, default 10000): longest a request head may take to
    /// arrive; a connection that sends nothing or trickles its head is closed.
    pub header_timeout: Duration,
    /// `REALTIME_RATE_LIMIT` new connections per minute per IP (default 100, 0 disables).
    pub connection_rate_per_minute: u32,
    /// `REALTIME_PING_INTERVAL` (ms, default 25000).
    pub ping_interval: Duration,
    /// `REALTIME_PING_TIMEOUT` (ms, default 60000).
    pub ping_timeout: Duration,
    /// `REALTIME_MAX_PAYLOAD_BYTES` (default 1 MB).
    pub max_payload_bytes: u64,
    /// `REALTIME_CONNECT_TIMEOUT` (ms, default 10000).
    pub connect_timeout: Duration,
    /// `REALTIME_SEND_BUFFER` packets buffered per socket before it is cut off (default 1024).
    pub send_buffer: usize,
    /// `REALTIME_WRITE_TIMEOUT` (ms, default 15000): a connection whose writes make no progress
    /// this long (its peer stopped reading) is closed.
    pub write_timeout: Duration,
    /// `REALTIME_JWT_SECRET`.
    pub jwt_secret: Option<String>,
    /// `REALTIME_JWT_PUBLIC_KEY` (PEM).
    pub jwt_public_key: Option<String>,
    /// `REALTIME_JWT_ALGORITHM`.
    pub jwt_algorithm: JwtAlgorithm,
    /// `REALTIME_JWT_LEEWAY_SECONDS` (default 30).
    pub jwt_leeway_seconds: u64,
    /// `REALTIME_JWT_ISSUER`.
    pub jwt_issuer: Option<String>,
    /// `REALTIME_JWT_AUDIENCE`.
    pub jwt_audience: Option<String>,
    /// `REALTIME_ALLOW_ANONYMOUS` (default false).
    pub allow_anonymous: bool,
    /// `REALTIME_ENV=production` or `NODE_ENV=production`.
    pub production: bool,
    /// `REALTIME_ENABLE_PRESENCE` (default true).
    pub enable_presence: bool,
    /// `REALTIME_ENABLE_TYPING` (default true).
    pub enable_typing: bool,
    /// `REALTIME_TYPING_TIMEOUT` (ms, default 3000).
    pub typing_timeout: Duration,
    /// `REALTIME_PRESENCE_HEARTBEAT` (ms, default 30000): how often live users' heartbeat is persisted.
    pub presence_heartbeat: Duration,
    /// `REALTIME_PRESENCE_SCOPE` (all|rooms, default all).
    pub presence_scope: PresenceScope,
    /// `REALTIME_ENABLE_COMPRESSION` (default true). Accepted for compatibility; see README.
    pub enable_compression: bool,
    /// `REALTIME_BATCH_SIZE` (default 1000): most rows per write-behind transaction.
    pub batch_size: usize,
    /// `REALTIME_WRITE_QUEUE` (default 100000): write-behind queue bound.
    pub write_queue: usize,
    /// `REALTIME_MAX_MESSAGE_LENGTH` (default 5000 characters).
    pub max_message_length: usize,
    /// `REALTIME_MAX_METADATA_BYTES`: largest `message:send` metadata, bytes of JSON (4096).
    pub max_metadata_bytes: usize,
    /// `REALTIME_MAX_METADATA_DEPTH`: deepest nesting of that metadata (8).
    pub max_metadata_depth: usize,
    /// `REALTIME_EVENT_RATE` events per second per socket (default 50).
    pub event_rate: u32,
    /// `REALTIME_EVENT_BURST` (default 100).
    pub event_burst: u32,
    /// `REALTIME_LOG_EVENTS` (default true).
    pub log_events: bool,
    /// `REALTIME_LOG_EVENT_TYPES` (default connect,disconnect,error).
    pub log_event_types: EventLogFilter,
    /// `REALTIME_EVENT_RETENTION_DAYS` (default 30).
    pub event_retention_days: u32,
    /// `REALTIME_SHUTDOWN_TIMEOUT` (ms, default 30000).
    pub shutdown_timeout: Duration,
    /// `REALTIME_ENABLE_HEALTH` (default true).
    pub enable_health: bool,
    /// `REALTIME_HEALTH_PATH` (default /health).
    pub health_path: String,
    /// `REALTIME_ENABLE_METRICS` (default true).
    pub enable_metrics: bool,
    /// `REALTIME_METRICS_PATH` (default /metrics).
    pub metrics_path: String,
    /// `REALTIME_METRICS_TOKEN`: when set, the metrics endpoints answer only requests with
    /// `Authorization: Bearer <token>` (401 otherwise).
    pub metrics_token: Option<String>,
    /// `REALTIME_HISTORY_SIZE` (default 0: off): messages kept per room for catch-up and
    /// paging (a room's `settings.history.size` overrides it).
    pub history_size: usize,
    /// `REALTIME_HISTORY_TTL` (default 10m): how long a message stays in history (a room's
    /// `settings.history.ttl`, seconds, overrides it).
    pub history_ttl: Duration,
    /// `REALTIME_HISTORY_PERSIST` (default false): room history is also written to the
    /// database, each message before it is delivered (one instance: it survives restarts and
    /// crashes, positions continue).
    pub history_persist: bool,
    /// `REALTIME_API_KEY`: turns the server API (`/api/...`) on; its requests need
    /// `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// `REALTIME_ENABLE_ADMIN` (default false): the admin page at `/admin` (needs
    /// `REALTIME_API_KEY`: the page calls the API with it).
    pub enable_admin: bool,
    /// `REALTIME_ENABLE_PLUGINS` (default true).
    pub enable_plugins: bool,
    /// `REALTIME_PLUGINS_DIR` (default ./plugins).
    pub plugins_dir: PathBuf,
    /// `REALTIME_PLUGIN_CACHE_DIR` (default ./data/plugin-cache; `off` disables the cache).
    pub plugin_cache_dir: Option<PathBuf>,
    /// `REALTIME_PLUGIN_TIMEOUT_MS` (default 10): CPU deadline of one policy call.
    pub plugin_timeout: Duration,
    /// `REALTIME_PLUGIN_MEMORY_MB` (default 16): memory cap of one policy instance.
    pub plugin_memory_mb: u64,
    /// `REALTIME_PRESENCE_AWAY_MS` (default 300000; 0 disables): a connected `online` user who
    /// has done nothing (sent, typed, joined, left) for this long becomes `away` until their
    /// next activity.
    pub presence_away: Option<Duration>,
    /// `REALTIME_NODE_ID`: this instance's id in the database (default: a new UUID per start).
    pub node_id: Option<String>,
    /// `REALTIME_NODE_LEASE_MS` (default 30000): an instance that has not renewed its lease
    /// for this long is considered dead; its connections are closed and its users' presence
    /// recomputed by a live instance.
    pub node_lease: Duration,
    /// `REALTIME_CACHE_TTL_MS`: age after which a cached room or membership is refreshed in
    /// the background (default 30000 on PostgreSQL, which also announces changes; 2000 on
    /// SQLite).
    pub cache_ttl: Option<Duration>,
    /// `LOG_LEVEL` (default info).
    pub log_level: String,
    /// `LOG_FORMAT` (default pretty; json when production).
    pub log_format: LogFormat,
    /// `REALTIME_LOG_FILE`: write the server log to this file instead of stderr.
    pub log_file: Option<PathBuf>,
    /// `REALTIME_LOG_ROTATION` (never|hourly|daily, default daily) for `REALTIME_LOG_FILE`.
    pub log_rotation: LogRotation,
    /// `REALTIME_LOG_MAX_FILES` (default 7): rotated files kept, older ones are deleted.
    pub log_max_files: usize,
}

/// Reads variables from a lookup function, so tests can pass a map instead of the environment.
struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    fn raw(&self, var: &str) -> Option<String> {
        (self.get)(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn string(&self, var: &'static str, default: &str) -> String {
        self.raw(var).unwrap_or_else(|| default.to_string())
    }

    fn bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(invalid(var, v, "true or false")),
            },
        }
    }

    fn num<T: std::str::FromStr>(&self, var: &'static str, default: T) -> Result<T, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(v) => v
                .parse::<T>()
                .map_err(|_| invalid(var, v, "a non-negative integer")),
        }
    }

    fn positive<T: std::str::FromStr + PartialOrd + Default>(
        &self,
        var: &'static str,
        default: T,
    ) -> Result<T, ConfigError> {
        let v = self.num(var, default)?;
        if v <= T::default() {
            return Err(invalid(
                var,
                self.raw(var).unwrap_or_default(),
                "an integer greater than 0",
            ));
        }
        Ok(v)
    }

    fn millis(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(self.positive(var, default)?))
    }

    fn path(&self, var: &'static str) -> Result<String, ConfigError> {
        let p = self.string(
            var,
            if var.contains("HEALTH") {
                "/health"
            } else {
                "/metrics"
            },
        );
        if !p.starts_with('/') || p.len() < 2 || p.contains(char::is_whitespace) {
            return Err(invalid(var, p, "a path starting with /"));
        }
        Ok(p)
    }
}

fn invalid(var: &'static str, value: String, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value,
        expected,
    }
}

impl Config {
    /// Loads `.env` (if present in the working directory) then reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        // A missing .env is normal; a malformed one is reported but not fatal to match dotenv.
        if let Err(e) = dotenvy::dotenv()
            && !e.not_found()
        {
            tracing::warn!(error = %e, "could not read .env");
        }
        Config::from_lookup(&|k| std::env::var(k).ok())
    }

    /// Builds a configuration from a map of variables (tests, embedding).
    pub fn from_map(map: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(&|k| map.get(k).cloned())
    }

    /// Builds a configuration from any variable lookup.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let v = Vars { get };
        let host_raw = v.string("REALTIME_HOST", "0.0.0.0");
        let host = host_raw
            .parse::<IpAddr>()
            .map_err(|_| invalid("REALTIME_HOST", host_raw, "an IP address"))?;
        let production = v
            .raw("REALTIME_ENV")
            .or_else(|| v.raw("NODE_ENV"))
            .is_some_and(|e| e.eq_ignore_ascii_case("production"));
        let jwt_algorithm = parse_algorithm(&v)?;
        let jwt_secret = v.raw("REALTIME_JWT_SECRET");
        let jwt_public_key = v
            .raw("REALTIME_JWT_PUBLIC_KEY")
            .map(|k| k.replace("\\n", "\n"));
        check_auth_rules(production, jwt_algorithm, &jwt_secret, &jwt_public_key)?;
        let api_key = v.raw("REALTIME_API_KEY");
        let enable_admin = v.bool("REALTIME_ENABLE_ADMIN", false)?;
        if enable_admin && api_key.is_none() {
            return Err(ConfigError::Rule {
                var: "REALTIME_ENABLE_ADMIN",
                reason: "the admin page needs REALTIME_API_KEY (it signs in with that key)".into(),
            });
        }
        let log_format = match v.raw("LOG_FORMAT").map(|s| s.to_ascii_lowercase()) {
            None if production => LogFormat::Json,
            None => LogFormat::Pretty,
            Some(s) if s == "pretty" => LogFormat::Pretty,
            Some(s) if s == "json" => LogFormat::Json,
            Some(s) => return Err(invalid("LOG_FORMAT", s, "pretty or json")),
        };
        let log_level = v.string("LOG_LEVEL", "info").to_ascii_lowercase();
        if !["trace", "debug", "info", "warn", "error"].contains(&log_level.as_str()) {
            return Err(invalid(
                "LOG_LEVEL",
                log_level,
                "trace, debug, info, warn or error",
            ));
        }
        let presence_scope = match v.string("REALTIME_PRESENCE_SCOPE", "all").as_str() {
            "all" => PresenceScope::All,
            "rooms" => PresenceScope::Rooms,
            other => {
                return Err(invalid(
                    "REALTIME_PRESENCE_SCOPE",
                    other.into(),
                    "all or rooms",
                ));
            }
        };
        let event_burst = v.positive("REALTIME_EVENT_BURST", 100u32)?;
        Ok(Config {
            host,
            port: v.num("REALTIME_PORT", 3101u16)?,
            cors_origins: v
                .string("REALTIME_CORS_ORIGIN", "*")
                .split(',')
                .map(|s| s.trim().trim_end_matches('/').to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            trusted_proxies: crate::transport::proxy::parse_list(
                &v.string("REALTIME_TRUSTED_PROXIES", ""),
            )
            .map_err(|e| ConfigError::Rule {
                var: "REALTIME_TRUSTED_PROXIES",
                reason: e,
            })?,
            redis: redis_target(&v)?,
            redis_prefix: redis_prefix(&v)?,
            database_url: database_url(&v)?,
            max_connections: v.positive("REALTIME_MAX_CONNECTIONS", 10_000usize)?,
            max_pending_connects: v.positive("REALTIME_MAX_PENDING_CONNECTS", 2048usize)?,
            max_sockets: match v.raw("REALTIME_MAX_SOCKETS") {
                None => None,
                Some(_) => Some(v.positive("REALTIME_MAX_SOCKETS", 1usize)?),
            },
            header_timeout: v.millis("REALTIME_HEADER_TIMEOUT", 10_000)?,
            connection_rate_per_minute: v.num("REALTIME_RATE_LIMIT", 100u32)?,
            ping_interval: v.millis("REALTIME_PING_INTERVAL", 25_000)?,
            ping_timeout: v.millis("REALTIME_PING_TIMEOUT", 60_000)?,
            max_payload_bytes: v.positive("REALTIME_MAX_PAYLOAD_BYTES", 1_000_000u64)?,
            connect_timeout: v.millis("REALTIME_CONNECT_TIMEOUT", 10_000)?,
            send_buffer: v.positive("REALTIME_SEND_BUFFER", 1024usize)?,
            write_timeout: v.millis("REALTIME_WRITE_TIMEOUT", 15_000)?,
            jwt_secret,
            jwt_public_key,
            jwt_algorithm,
            jwt_leeway_seconds: v.num("REALTIME_JWT_LEEWAY_SECONDS", 30u64)?,
            jwt_issuer: v.raw("REALTIME_JWT_ISSUER"),
            jwt_audience: v.raw("REALTIME_JWT_AUDIENCE"),
            allow_anonymous: v.bool("REALTIME_ALLOW_ANONYMOUS", false)?,
            production,
            enable_presence: v.bool("REALTIME_ENABLE_PRESENCE", true)?,
            enable_typing: v.bool("REALTIME_ENABLE_TYPING", true)?,
            typing_timeout: v.millis("REALTIME_TYPING_TIMEOUT", 3000)?,
            presence_heartbeat: v.millis("REALTIME_PRESENCE_HEARTBEAT", 30_000)?,
            presence_scope,
            enable_compression: v.bool("REALTIME_ENABLE_COMPRESSION", true)?,
            batch_size: v.positive("REALTIME_BATCH_SIZE", 1000usize)?,
            write_queue: v.positive("REALTIME_WRITE_QUEUE", 100_000usize)?,
            max_message_length: v.positive("REALTIME_MAX_MESSAGE_LENGTH", 5000usize)?,
            max_metadata_bytes: v.positive("REALTIME_MAX_METADATA_BYTES", 4096usize)?,
            max_metadata_depth: v.positive("REALTIME_MAX_METADATA_DEPTH", 8usize)?,
            event_rate: v.positive("REALTIME_EVENT_RATE", 50u32)?,
            event_burst,
            log_events: v.bool("REALTIME_LOG_EVENTS", true)?,
            log_event_types: parse_event_types(
                &v.string("REALTIME_LOG_EVENT_TYPES", "connect,disconnect,error"),
            ),
            event_retention_days: v.positive("REALTIME_EVENT_RETENTION_DAYS", 30u32)?,
            shutdown_timeout: v.millis("REALTIME_SHUTDOWN_TIMEOUT", 30_000)?,
            enable_health: v.bool("REALTIME_ENABLE_HEALTH", true)?,
            health_path: v.path("REALTIME_HEALTH_PATH")?,
            enable_metrics: v.bool("REALTIME_ENABLE_METRICS", true)?,
            metrics_path: v.path("REALTIME_METRICS_PATH")?,
            metrics_token: v.raw("REALTIME_METRICS_TOKEN"),
            api_key,
            enable_admin,
            history_size: v.num("REALTIME_HISTORY_SIZE", 0usize)?,
            history_persist: v.bool("REALTIME_HISTORY_PERSIST", false)?,
            history_ttl: match v.raw("REALTIME_HISTORY_TTL") {
                None => Duration::from_secs(600),
                Some(t) => Duration::from_secs(crate::util::parse_seconds(&t).map_err(|_| {
                    invalid(
                        "REALTIME_HISTORY_TTL",
                        t.clone(),
                        "a duration: 600, 90s, 30m, 1h or 7d",
                    )
                })?),
            },
            enable_plugins: v.bool("REALTIME_ENABLE_PLUGINS", true)?,
            plugins_dir: PathBuf::from(v.string("REALTIME_PLUGINS_DIR", "./plugins")),
            plugin_cache_dir: match v.string("REALTIME_PLUGIN_CACHE_DIR", "./data/plugin-cache") {
                off if off == "off" => None,
                dir => Some(PathBuf::from(dir)),
            },
            plugin_timeout: v.millis("REALTIME_PLUGIN_TIMEOUT_MS", 10)?,
            plugin_memory_mb: plugin_memory(&v)?,
            presence_away: match v.num("REALTIME_PRESENCE_AWAY_MS", 300_000u64)? {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            node_id: v.raw("REALTIME_NODE_ID"),
            node_lease: v.millis("REALTIME_NODE_LEASE_MS", 30_000)?,
            cache_ttl: match v.raw("REALTIME_CACHE_TTL_MS") {
                Some(_) => Some(v.millis("REALTIME_CACHE_TTL_MS", 0)?),
                None => None,
            },
            log_level,
            log_format,
            log_file: v.raw("REALTIME_LOG_FILE").map(PathBuf::from),
            log_rotation: parse_log_rotation(&v)?,
            log_max_files: v.positive("REALTIME_LOG_MAX_FILES", 7usize)?,
        })
    }

    /// Whether tokens are decoded without verification (no secret and no public key).
    pub fn insecure_dev_auth(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key.is_none()
    }

    /// Whether any Origin is accepted.
    pub fn any_origin(&self) -> bool {
        self.cors_origins.is_empty() || self.cors_origins.iter().any(|o| o == "*")
    }
}

fn parse_algorithm(v: &Vars<'_>) -> Result<JwtAlgorithm, ConfigError> {
    let default = if v.raw("REALTIME_JWT_PUBLIC_KEY").is_some() {
        "RS256"
    } else {
        "HS256"
    };
    let raw = v
        .string("REALTIME_JWT_ALGORITHM", default)
        .to_ascii_uppercase();
    Ok(match raw.as_str() {
        "HS256" => JwtAlgorithm::Hs256,
        "HS384" => JwtAlgorithm::Hs384,
        "HS512" => JwtAlgorithm::Hs512,
        "RS256" => JwtAlgorithm::Rs256,
        "ES256" => JwtAlgorithm::Es256,
        _ => {
            return Err(invalid(
                "REALTIME_JWT_ALGORITHM",
                raw,
                "HS256, HS384, HS512, RS256 or ES256",
            ));
        }
    })
}

fn check_auth_rules(
    production: bool,
    alg: JwtAlgorithm,
    secret: &Option<String>,
    public_key: &Option<String>,
) -> Result<(), ConfigError> {
    let hmac = matches!(
        alg,
        JwtAlgorithm::Hs256 | JwtAlgorithm::Hs384 | JwtAlgorithm::Hs512
    );
    if production && secret.is_none() && public_key.is_none() {
        return Err(ConfigError::Rule {
            var: "REALTIME_JWT_SECRET",
            reason: "production mode refuses to start without REALTIME_JWT_SECRET or \
                     REALTIME_JWT_PUBLIC_KEY (tokens would not be verified)"
                .into(),
        });
    }
    if hmac && secret.is_none() && public_key.is_some() {
        return Err(ConfigError::Rule {
            var: "REALTIME_JWT_ALGORITHM",
            reason:
                "an HMAC algorithm needs REALTIME_JWT_SECRET; use RS256 or ES256 with a public key"
                    .into(),
        });
    }
    if !hmac && public_key.is_none() {
        return Err(ConfigError::Rule {
            var: "REALTIME_JWT_PUBLIC_KEY",
            reason: "RS256/ES256 need a PEM public key".into(),
        });
    }
    Ok(())
}

fn parse_log_rotation(v: &Vars<'_>) -> Result<LogRotation, ConfigError> {
    match v
        .string("REALTIME_LOG_ROTATION", "daily")
        .to_ascii_lowercase()
        .as_str()
    {
        "never" => Ok(LogRotation::Never),
        "hourly" => Ok(LogRotation::Hourly),
        "daily" => Ok(LogRotation::Daily),
        other => Err(invalid(
            "REALTIME_LOG_ROTATION",
            other.into(),
            "never, hourly or daily",
        )),
    }
}

fn plugin_memory(v: &Vars<'_>) -> Result<u64, ConfigError> {
    let mb = v.positive("REALTIME_PLUGIN_MEMORY_MB", 16u64)?;
    if mb > 256 {
        return Err(invalid(
            "REALTIME_PLUGIN_MEMORY_MB",
            mb.to_string(),
            "at most 256",
        ));
    }
    Ok(mb)
}

fn parse_event_types(raw: &str) -> EventLogFilter {
    let list: Vec<String> = raw
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if list.iter().any(|s| s == "*") {
        EventLogFilter::All
    } else {
        EventLogFilter::Only(list)
    }
}

/// Where the scale-out state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server (or a primary behind Sentinel): `REALTIME_REDIS_URL`.
    Server(String),
    /// A Redis Cluster: `REALTIME_REDIS_CLUSTER`.
    Cluster {
        /// The URLs of some of its nodes.
        seeds: Vec<String>,
        /// `REALTIME_REDIS_CLUSTER_SHARDS` (default 16): how many hash tags the rooms' keys
        /// and broadcast channels are spread over.
        shards: u16,
    },
}

/// `REALTIME_REDIS_URL` or `REALTIME_REDIS_CLUSTER` (not both), checked now so that a typo
/// stops the start with its name.
fn redis_target(v: &Vars) -> Result<Option<RedisTarget>, ConfigError> {
    match (v.raw("REALTIME_REDIS_URL"), v.raw("REALTIME_REDIS_CLUSTER")) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ConfigError::Rule {
            var: "REALTIME_REDIS_CLUSTER",
            reason: "set together with REALTIME_REDIS_URL: set REALTIME_REDIS_URL for one Redis \
                     server or REALTIME_REDIS_CLUSTER for a Redis Cluster, not both"
                .into(),
        }),
        (Some(url), None) => Ok(Some(RedisTarget::Server(redis_url(
            "REALTIME_REDIS_URL",
            url,
        )?))),
        (None, Some(list)) => {
            let seeds = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| redis_url("REALTIME_REDIS_CLUSTER", s.to_string()))
                .collect::<Result<Vec<_>, _>>()?;
            if seeds.is_empty() {
                return Err(ConfigError::Rule {
                    var: "REALTIME_REDIS_CLUSTER",
                    reason: "no node URL; expected redis://host:port[,redis://host:port…]".into(),
                });
            }
            let shards = v.positive("REALTIME_REDIS_CLUSTER_SHARDS", 16u16)?;
            if shards > 1024 {
                return Err(invalid(
                    "REALTIME_REDIS_CLUSTER_SHARDS",
                    shards.to_string(),
                    "an integer from 1 to 1024",
                ));
            }
            if let Some(p) = v.raw("REALTIME_REDIS_PREFIX")
                && (p.contains('{') || p.contains('}'))
            {
                return Err(ConfigError::Rule {
                    var: "REALTIME_REDIS_PREFIX",
                    reason: "must not contain { or } with REALTIME_REDIS_CLUSTER (the server \
                             chooses the hash tags of its keys itself)"
                        .into(),
                });
            }
            Ok(Some(RedisTarget::Cluster { seeds, shards }))
        }
    }
}

/// One Redis URL of `var`.
fn redis_url(var: &'static str, url: String) -> Result<String, ConfigError> {
    match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
        Ok(_) => Ok(url),
        // The value is not echoed: it may carry a password.
        Err(e) => Err(ConfigError::Rule {
            var,
            reason: format!(
                "not a Redis URL ({e}); expected redis://[:password@]host[:port][/db] or rediss://…"
            ),
        }),
    }
}

/// `REALTIME_REDIS_PREFIX`: printable, no spaces.
fn redis_prefix(v: &Vars) -> Result<String, ConfigError> {
    let p = v.string("REALTIME_REDIS_PREFIX", "nself-realtime");
    if p.len() > 100 || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "REALTIME_REDIS_PREFIX",
            p,
            "at most 100 characters, no spaces or control characters",
        ));
    }
    Ok(p)
}

/// `DATABASE_URL`, else a PostgreSQL URL from `POSTGRES_*` when `POSTGRES_HOST` or
/// `POSTGRES_DB` is set, else the embedded SQLite file.
fn database_url(v: &Vars<'_>) -> Result<String, ConfigError> {
    if let Some(url) = v.raw("DATABASE_URL") {
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            return Err(invalid(
                "DATABASE_URL",
                url,
                "a postgres:// or sqlite:// URL",
            ));
        }
        return Ok(url);
    }
    if v.raw("POSTGRES_HOST").is_some() || v.raw("POSTGRES_DB").is_some() {
        let host = v.string("POSTGRES_HOST", "localhost");
        let port: u16 = v.num("POSTGRES_PORT", 5432u16)?;
        let db = v.string("POSTGRES_DB", "nself");
        let user = v.string("POSTGRES_USER", "postgres");
        let password = v.raw("POSTGRES_PASSWORD").unwrap_or_default();
        let ssl = if v.bool("POSTGRES_SSL", false)? {
            "require"
        } else {
            "prefer"
        };
        let auth = if password.is_empty() {
            encode(&user)
        } else {
            format!("{}:{}", encode(&user), encode(&password))
        };
        return Ok(format!(
            "postgres://{auth}@{host}:{port}/{}?sslmode={ssl}",
            encode(&db)
        ));
    }
    Ok("sqlite://./data/realtime.db".into())
}

/// Percent-encodes the characters that would break a URL's user, password or path part.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map)
    }

    #[test]
    fn defaults_are_the_originals() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.port, 3101);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.ping_interval, Duration::from_millis(25_000));
        assert_eq!(c.ping_timeout, Duration::from_millis(60_000));
        assert_eq!(c.typing_timeout, Duration::from_millis(3000));
        assert_eq!(c.database_url, "sqlite://./data/realtime.db");
        assert!(c.insecure_dev_auth());
        assert!(c.log_event_types.includes("connect"));
        assert!(!c.log_event_types.includes("message:send"));
        assert!(c.any_origin());
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (var, val) in [
            ("REALTIME_PORT", "abc"),
            ("REALTIME_PORT", "70000"),
            ("REALTIME_MAX_CONNECTIONS", "0"),
            ("REALTIME_ALLOW_ANONYMOUS", "maybe"),
            ("REALTIME_TYPING_TIMEOUT", "-5"),
            ("REALTIME_JWT_ALGORITHM", "none"),
            ("LOG_LEVEL", "loud"),
            ("DATABASE_URL", "mysql://x"),
            ("REALTIME_PRESENCE_SCOPE", "world"),
            ("REALTIME_LOG_ROTATION", "weekly"),
            ("REALTIME_LOG_MAX_FILES", "0"),
            ("REALTIME_REDIS_URL", "http://cache:6379"),
            ("REALTIME_REDIS_URL", "redis://host:notaport"),
            ("REALTIME_REDIS_PREFIX", "has space"),
        ] {
            let err = cfg(&[(var, val)]).unwrap_err().to_string();
            assert!(err.contains(var), "{err} should name {var}");
        }
    }

    #[test]
    fn redis_url_forms_and_no_password_in_errors() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://:secret@cache:6380/2",
            "redis://user:secret@cache",
            "rediss://cache.example.com:6380",
        ] {
            let c = cfg(&[("REALTIME_REDIS_URL", url)]).unwrap();
            assert_eq!(c.redis, Some(RedisTarget::Server(url.to_string())));
        }
        assert_eq!(cfg(&[]).unwrap().redis_prefix, "nself-realtime");
        let err = cfg(&[("REALTIME_REDIS_URL", "redis://:hunter2@host:bad")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REALTIME_REDIS_URL"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the password must not be echoed: {err}"
        );
    }

    #[test]
    fn redis_cluster_seeds_and_conflicts() {
        let c = cfg(&[(
            "REALTIME_REDIS_CLUSTER",
            "redis://10.0.0.1:7000, redis://:pw@10.0.0.2:7001,",
        )])
        .unwrap();
        assert_eq!(
            c.redis,
            Some(RedisTarget::Cluster {
                seeds: vec![
                    "redis://10.0.0.1:7000".into(),
                    "redis://:pw@10.0.0.2:7001".into()
                ],
                shards: 16
            })
        );
        let c = cfg(&[
            ("REALTIME_REDIS_CLUSTER", "redis://10.0.0.1:7000"),
            ("REALTIME_REDIS_CLUSTER_SHARDS", "64"),
        ])
        .unwrap();
        assert!(matches!(
            c.redis,
            Some(RedisTarget::Cluster { shards: 64, .. })
        ));
        for (var, bad) in [
            ("REALTIME_REDIS_CLUSTER_SHARDS", "0"),
            ("REALTIME_REDIS_CLUSTER_SHARDS", "1025"),
            ("REALTIME_REDIS_CLUSTER_SHARDS", "many"),
            ("REALTIME_REDIS_PREFIX", "{app}"),
        ] {
            let err = cfg(&[
                ("REALTIME_REDIS_CLUSTER", "redis://10.0.0.1:7000"),
                (var, bad),
            ])
            .unwrap_err()
            .to_string();
            assert!(err.contains(var), "{err}");
        }
        let both = cfg(&[
            ("REALTIME_REDIS_URL", "redis://cache:6379"),
            ("REALTIME_REDIS_CLUSTER", "redis://10.0.0.1:7000"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("REALTIME_REDIS_URL") && both.contains("REALTIME_REDIS_CLUSTER"),
            "{both}"
        );
        for bad in [",", "redis://:hunter2@host:bad,redis://ok:1"] {
            let err = cfg(&[("REALTIME_REDIS_CLUSTER", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("REALTIME_REDIS_CLUSTER"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn production_refuses_without_a_key() {
        let err = cfg(&[("REALTIME_ENV", "production")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REALTIME_JWT_SECRET"));
        let err = cfg(&[("NODE_ENV", "production")]).unwrap_err().to_string();
        assert!(err.contains("REALTIME_JWT_SECRET"));
        assert!(cfg(&[("NODE_ENV", "production"), ("REALTIME_JWT_SECRET", "s")]).is_ok());
    }

    #[test]
    fn star_means_all_events() {
        let c = cfg(&[("REALTIME_LOG_EVENT_TYPES", "connect,*")]).unwrap();
        assert!(c.log_event_types.includes("message:send"));
    }

    #[test]
    fn postgres_variables_build_a_url() {
        let c = cfg(&[
            ("POSTGRES_HOST", "db"),
            ("POSTGRES_USER", "u@x"),
            ("POSTGRES_PASSWORD", "p:w/"),
        ])
        .unwrap();
        assert_eq!(
            c.database_url,
            "postgres://u%40x:p%3Aw%2F@db:5432/nself?sslmode=prefer"
        );
    }
}
