//! Scale-out over Redis (`REALTIME_REDIS_URL`): several instances behave as one server.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Cluster`]: the command connection, the up/down monitor, node leases and crash cleanup, room sockets across instances, `clientMessageId` claims, the per-IP connection count |
//! | `driver.rs` | the socketioxide-redis [`Driver`](socketioxide_redis::drivers::Driver): a supervised pub/sub connection (reconnects, resubscribes) and a non-blocking publish queue; every lost message counted |
//! | `presence.rs` | [`RedisPresence`](presence::RedisPresence): per-node socket counts, shared status |
//! | `typing.rs` | [`RedisTyping`](typing::RedisTyping): shared typing entries, expiry emitted once |
//! | `kv.rs` | [`RedisKv`](kv::RedisKv): the policy modules' key/value store |
//! | `lua.rs` | the scripts (atomic read-modify-write on the server) |
//!
//! Every call from the event path is bounded by [`CALL_TIMEOUT`] and skipped while Redis is
//! down: each instance then serves its own clients from its local state (what it would do
//! alone) and re-asserts its live sockets when Redis is back.

pub mod driver;
pub(crate) mod lua;
pub mod survey;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, IntoConnectionInfo};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::config::RedisTarget;
use crate::metrics::Metrics;

/// The channel new room-history messages are published on (under the prefix).
pub(crate) const HISTORY_CHANNEL: &str = "hist";

/// Longest wait for one Redis call on the event path.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(300);
/// How often the monitor pings Redis.
const PING_EVERY: Duration = Duration::from_millis(500);

/// A command connection: to one server, or to a Redis Cluster (which routes each command by
/// its key's slot and follows `MOVED`/`ASK` and failovers itself). Cheap to clone.
#[derive(Clone)]
pub enum Conn {
    /// `REALTIME_REDIS_URL`.
    Server(ConnectionManager),
    /// `REALTIME_REDIS_CLUSTER`.
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How commands reach Redis.
enum Commands {
    Server(ConnectionManager),
    /// Connected by the monitor (a cluster connection cannot be created lazily): None until
    /// the first success.
    Cluster {
        client: Box<ClusterClient>,
        conn: ArcSwapOption<ClusterConnection>,
    },
}

/// What `CLUSTER INFO` said last (cluster mode).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// `ok` or `fail`.
    pub state: String,
    /// Slots served by a reachable master (16384 when whole).
    pub slots_ok: i64,
    /// Nodes the cluster knows.
    pub known_nodes: i64,
    /// Masters serving slots.
    pub masters: i64,
}

impl ClusterInfo {
    /// From the text of `CLUSTER INFO` (`name:value` lines; a missing figure reads as 0).
    fn parse(text: &str) -> ClusterInfo {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        ClusterInfo {
            state: field("cluster_state"),
            slots_ok: field("cluster_slots_ok").parse().unwrap_or(0),
            known_nodes: field("cluster_known_nodes").parse().unwrap_or(0),
            masters: field("cluster_size").parse().unwrap_or(0),
        }
    }
}

/// The Redis connection shared by the state implementations and the driver.
pub struct RedisConn {
    /// Where the pub/sub connection goes: the server, or (cluster mode without sharded pub/sub)
    /// one of the seed nodes, tried in turn (a classic `PUBLISH` reaches the subscribers of
    /// every node of a cluster).
    pubsub: Vec<redis::Client>,
    /// Cluster mode: the seed URLs (the driver's sharded pub/sub connection starts from them).
    pub(crate) seeds: Vec<String>,
    cmd: Commands,
    info: std::sync::Mutex<Option<ClusterInfo>>,
    up: AtomicBool,
    /// Cluster mode: whether the cluster has sharded pub/sub (`SPUBLISH`, Redis 7); known
    /// from the first successful check on, before [`RedisConn::up`] first says yes.
    sharded: std::sync::OnceLock<bool>,
    /// Set when a call found Redis answering again before the monitor did: the monitor then
    /// re-asserts this instance's state (calls skipped meanwhile may have left it behind).
    resync: AtomicBool,
    /// When a failed call (not the monitor) last said Redis was down (ms since the epoch; 0:
    /// never).
    down_by_call: std::sync::atomic::AtomicI64,
    /// Prefix of the instance-wide keys (presence, leases, typing): `P`, or `{P}` on a Redis
    /// Cluster (one hash slot: the presence scripts read and write them together).
    pub prefix: String,
    /// The configured prefix `P`: channels, and the keys spread over a cluster's slots.
    base: String,
    /// Cluster mode: the hash tags rooms are spread over (see [`shard_tags`]); empty on one
    /// server.
    tags: Vec<String>,
    /// This instance's id.
    pub node: String,
    metrics: Arc<Metrics>,
}

impl RedisConn {
    /// Whether Redis answered the last check.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether Redis is thought down only because a call failed within the last second (a
    /// passing disruption, perhaps: the monitor has not looked yet).
    pub(crate) fn briefly_down(&self) -> bool {
        let at = self.down_by_call.load(Ordering::Acquire);
        !self.up() && at > 0 && now_ms() - at < 1000
    }

    /// A failed call says Redis is down.
    fn down_by_call(&self) {
        if self.set_up(false) {
            self.down_by_call.store(now_ms(), Ordering::Release);
        }
    }

    /// A call just succeeded although Redis was thought down (a passing disruption): up again,
    /// and the monitor re-asserts this instance's state.
    pub(crate) fn back_up(&self) {
        if !self.set_up(true) {
            self.resync.store(true, Ordering::Release);
        }
    }

    fn set_up(&self, up: bool) -> bool {
        let was = self.up.swap(up, Ordering::AcqRel);
        self.metrics.redis_up.set(i64::from(up));
        was
    }

    /// The command connection (None in cluster mode until the cluster was first reached).
    pub fn conn(&self) -> Option<Conn> {
        match &self.cmd {
            Commands::Server(c) => Some(Conn::Server(c.clone())),
            Commands::Cluster { conn, .. } => conn.load_full().map(|c| Conn::Cluster((*c).clone())),
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.cmd, Commands::Cluster { .. })
    }

    /// The cluster's state as last seen (cluster mode).
    pub fn cluster_info(&self) -> Option<ClusterInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether broadcasts go over sharded pub/sub (cluster mode, Redis 7).
    pub fn sharded(&self) -> bool {
        self.sharded.get() == Some(&true)
    }

    /// Whether it is known yet how broadcasts go (one server: from the start; a cluster: from
    /// the first successful check).
    pub(crate) fn pubsub_known(&self) -> bool {
        !self.is_cluster() || self.sharded.get().is_some()
    }

    /// The shard a room's keys and broadcasts belong to (cluster mode; 0 on one server).
    pub(crate) fn shard_of(&self, room: &str) -> usize {
        if self.tags.is_empty() {
            return 0;
        }
        usize::from(crc16::State::<crc16::XMODEM>::calculate(room.as_bytes())) % self.tags.len()
    }

    /// How many shards (1 on one server).
    pub(crate) fn shards(&self) -> usize {
        self.tags.len().max(1)
    }

    /// The prefix of one room's keys: `P` on one server; `P:{tag}` on a cluster, the tag of
    /// the room's shard (the room's keys live together, rooms spread over the slots).
    pub(crate) fn room_prefix(&self, room: &str) -> String {
        self.shard_prefix(self.shard_of(room))
    }

    /// The prefix of the keys of shard `k`'s rooms (see [`RedisConn::room_prefix`]).
    pub(crate) fn shard_prefix(&self, k: usize) -> String {
        match self.tags.get(k) {
            Some(tag) => format!("{}:{{{tag}}}", self.base),
            None => self.prefix.clone(),
        }
    }

    /// A channel: `P:<name>` (never a hash tag: see [`RedisConn::shard_channel`]).
    pub(crate) fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.base)
    }

    /// Shard `k`'s channel of a channel subscribed shard by shard: `<channel>{tag}`, in the
    /// slot of the shard's room keys.
    pub(crate) fn shard_channel(&self, channel: &str, k: usize) -> String {
        match self.tags.get(k) {
            Some(tag) => format!("{channel}{{{tag}}}"),
            None => channel.to_string(),
        }
    }

    /// Where a room's messages on `channel` are published: its shard's channel with sharded
    /// pub/sub, else the channel itself.
    pub(crate) fn room_channel(&self, channel: &str, room: &str) -> String {
        if self.sharded() {
            self.shard_channel(channel, self.shard_of(room))
        } else {
            channel.to_string()
        }
    }

    /// A key touched by single-key commands only: under `P` on one server; on a cluster
    /// without a hash tag, so such keys spread over every slot.
    pub(crate) fn spread_key(&self, parts: &[&str]) -> String {
        let mut k = if self.tags.is_empty() {
            self.prefix.clone()
        } else {
            self.base.clone()
        };
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// The client of pub/sub attempt `n` (the seeds in turn).
    pub(crate) fn pubsub_client(&self, n: usize) -> &redis::Client {
        &self.pubsub[n % self.pubsub.len()]
    }

    /// `PUBSUB NUMSUB channel`, summed over the nodes the instances subscribe through (cluster
    /// mode: each node counts only its own subscribers); with sharded pub/sub, `PUBSUB
    /// SHARDNUMSUB` of the channel's first shard (summed over the nodes by the cluster
    /// connection).
    pub(crate) async fn numsub(&self, channel: &str) -> Option<i64> {
        if self.sharded() {
            let shard = self.shard_channel(channel, 0);
            let counts: std::collections::HashMap<String, i64> = self
                .call(async |c| {
                    redis::cmd("PUBSUB")
                        .arg("SHARDNUMSUB")
                        .arg(&shard)
                        .query_async(c)
                        .await
                })
                .await?;
            return Some(counts.get(&shard).copied().unwrap_or(0));
        }
        if !self.is_cluster() {
            let (_, n): (String, i64) = self
                .call(async |c| {
                    redis::cmd("PUBSUB")
                        .arg("NUMSUB")
                        .arg(channel)
                        .query_async(c)
                        .await
                })
                .await?;
            return Some(n);
        }
        let mut total = 0;
        for client in &self.pubsub {
            let ask = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(channel)
                    .query_async::<(String, i64)>(&mut c)
                    .await
            };
            if let Ok(Ok((_, n))) = tokio::time::timeout(CALL_TIMEOUT, ask).await {
                total += n;
            }
        }
        Some(total)
    }

    /// Runs one command or script invocation within [`CALL_TIMEOUT`]; None when Redis is down,
    /// slow or refuses (the caller falls back to local state).
    pub async fn call<T: FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Option<T> {
        self.call_as(true, f).await
    }

    /// [`RedisConn::call`], or with `gated` false: tried even while Redis is thought down, and
    /// a failure does not say so (a second look after a failed call: see the room history).
    async fn call_as<T: FromRedisValue>(
        &self,
        gated: bool,
        f: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Option<T> {
        if gated && !self.up() {
            return None;
        }
        let mut conn = self.conn()?;
        match tokio::time::timeout(CALL_TIMEOUT, f(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis call failed");
                if gated && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) {
                    self.down_by_call();
                }
                None
            }
            Err(_) => {
                tracing::debug!("redis call timed out");
                if gated {
                    self.down_by_call();
                }
                None
            }
        }
    }

    /// Runs a presence script in shard `k` (its prefix as ARGV[1], its `nodes` declared).
    pub async fn script_in<T: DeserializeOwned>(
        &self,
        k: usize,
        script: &redis::Script,
        args: &[&str],
    ) -> Option<T> {
        let at = self.shard_prefix(k);
        self.script_at(&at, &[&self.nodes_key(k)], script, args)
            .await
    }

    /// Runs a presence script in every shard at once; each shard's answer.
    pub async fn script_each<T: DeserializeOwned>(
        &self,
        script: &redis::Script,
        args: &[&str],
    ) -> Vec<Option<T>> {
        futures_util::future::join_all((0..self.shards()).map(|k| self.script_in(k, script, args)))
            .await
    }

    /// Shard `k`'s sorted set of instance leases (every shard has one; on one server the
    /// only one is `P:nodes`).
    pub(crate) fn nodes_key(&self, k: usize) -> String {
        format!("{}:nodes", self.shard_prefix(k))
    }

    /// Runs a script over the keys under `prefix` (the instance-wide one, or a room's: see
    /// [`RedisConn::room_prefix`]) that answers JSON and decodes it. The scripts build their
    /// keys from the prefix; `keys` (at least one) are declared: they route the call to the
    /// master of the prefix's slot on a Redis Cluster, and while that slot migrates Redis runs
    /// the call where those keys are (or answers `TRYAGAIN`, which the client retries).
    pub async fn script_at<T: DeserializeOwned>(
        &self,
        prefix: &str,
        keys: &[&str],
        script: &redis::Script,
        args: &[&str],
    ) -> Option<T> {
        self.script_as(true, prefix, keys, script, args).await
    }

    /// [`RedisConn::script_at`] even while Redis is thought down (see [`RedisConn::call_as`]).
    pub async fn script_at_ungated<T: DeserializeOwned>(
        &self,
        prefix: &str,
        keys: &[&str],
        script: &redis::Script,
        args: &[&str],
    ) -> Option<T> {
        self.script_as(false, prefix, keys, script, args).await
    }

    async fn script_as<T: DeserializeOwned>(
        &self,
        gated: bool,
        prefix: &str,
        keys: &[&str],
        script: &redis::Script,
        args: &[&str],
    ) -> Option<T> {
        let json: String = self
            .call_as(gated, async |c| {
                let mut inv = script.prepare_invoke();
                for k in keys {
                    inv.key(*k);
                }
                inv.arg(prefix);
                for a in args {
                    inv.arg(*a);
                }
                inv.invoke_async(c).await
            })
            .await?;
        match serde_json::from_str(&json) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "unexpected answer from a redis script");
                None
            }
        }
    }

    /// A key under the prefix: `<prefix>:<part>:<part>…`.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }
}

impl RedisConn {
    /// One health check: `PING` (cluster mode: connects first when not yet connected, and
    /// reads `CLUSTER INFO`, which must say `ok`).
    async fn check(&self) -> bool {
        if let Commands::Cluster { client, conn } = &self.cmd
            && conn.load().is_none()
        {
            match tokio::time::timeout(Duration::from_secs(2), client.get_async_connection()).await
            {
                Ok(Ok(c)) => conn.store(Some(Arc::new(c))),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "redis cluster connect failed");
                    return false;
                }
                Err(_) => return false,
            }
        }
        let Some(mut conn) = self.conn() else {
            return false;
        };
        let ping = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        if !matches!(ping, Ok(Ok(_))) {
            return false;
        }
        if !self.is_cluster() {
            return true;
        }
        let text = tokio::time::timeout(
            Duration::from_secs(1),
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async::<String>(&mut conn),
        )
        .await;
        let Ok(Ok(text)) = text else {
            return false;
        };
        let info = ClusterInfo::parse(&text);
        let whole = info.state == "ok";
        if self.sharded.get().is_none() {
            // Redis 7 knows `SPUBLISH`; an older one describes it as nil (or refuses the
            // question).
            let probe = tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("COMMAND")
                    .arg("INFO")
                    .arg("SPUBLISH")
                    .query_async::<Vec<redis::Value>>(&mut conn),
            )
            .await;
            let known =
                |v: &Vec<redis::Value>| !matches!(v.first(), None | Some(redis::Value::Nil));
            match probe {
                Ok(Ok(v)) if known(&v) => {
                    let _ = self.sharded.set(true);
                    tracing::info!(
                        shards = self.tags.len(),
                        "redis cluster: broadcasts over sharded pub/sub"
                    );
                }
                Ok(Ok(_)) => {
                    let _ = self.sharded.set(false);
                    tracing::warn!(
                        "redis cluster without sharded pub/sub (SPUBLISH needs Redis 7): \
                         broadcasts go over classic pub/sub through one node, which carries them all"
                    );
                }
                Ok(Err(e)) if e.code().is_some() => {
                    let _ = self.sharded.set(false);
                    tracing::warn!(
                        error = %e,
                        "redis cluster without sharded pub/sub (SPUBLISH needs Redis 7): \
                         broadcasts go over classic pub/sub through one node, which carries them all"
                    );
                }
                // Not answered: decided at the next check.
                _ => return false,
            }
        }
        self.metrics.redis_cluster_slots_ok.set(info.slots_ok);
        self.metrics.redis_cluster_nodes.set(info.known_nodes);
        *self.info.lock().unwrap_or_else(|p| p.into_inner()) = Some(info);
        whole
    }
}

/// Milliseconds since the epoch, as the scripts take them.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A JSON list that Lua's cjson may have encoded as `{}` when empty.
pub(crate) fn de_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(D::Error::custom))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

#[derive(Deserialize)]
struct Reaped {
    #[serde(default, deserialize_with = "de_list")]
    users: Vec<String>,
    #[serde(default, deserialize_with = "de_list")]
    nodes: Vec<String>,
    /// [room, user] pairs of the dead instances' sockets.
    #[serde(default, deserialize_with = "de_list")]
    pairs: Vec<(String, String)>,
    /// [room, user] pairs of the dead instances with no socket of the user in the room left
    /// anywhere.
    #[serde(default, deserialize_with = "de_list")]
    left: Vec<(String, String)>,
}

/// What a crash cleanup found: users gone offline, and users gone from rooms.
#[derive(Debug, Clone, Default)]
pub struct Reaping {
    /// Users with no socket left anywhere (each once, cluster-wide).
    pub offline: Vec<Gone>,
    /// (room, user): the user has no socket left in the room anywhere.
    pub left: Vec<(String, String)>,
}

/// A user a crash cleanup took offline, with the rooms they were in on the dead instance.
#[derive(Debug, Clone)]
pub struct Gone {
    /// The user.
    pub user_id: String,
    /// Rooms of their sockets on the dead instance.
    pub rooms: Vec<String>,
}

/// Scale-out state and housekeeping of one instance.
pub struct Cluster {
    redis: Arc<RedisConn>,
    driver: driver::PubSubDriver,
    lease: Duration,
    /// Whether this instance's state in Redis is re-asserted since Redis last came back.
    synced: AtomicBool,
}

impl Cluster {
    /// Prepares the connections (lazily: Redis may be down now and come later) and starts the
    /// pub/sub driver; its tasks end with `stop`.
    pub fn start(
        target: &RedisTarget,
        base: &str,
        node: &str,
        lease: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Cluster>> {
        let open = |var: &str, url: &str| -> anyhow::Result<redis::Client> {
            let info = url
                .into_connection_info()
                .map_err(|e| anyhow::anyhow!("{var}: {e}"))?;
            redis::Client::open(info).map_err(|e| anyhow::anyhow!("{var}: {e}"))
        };
        let (pubsub, cmd, prefix, seeds, tags) = match target {
            RedisTarget::Server(url) => {
                let client = open("REALTIME_REDIS_URL", url)?;
                let prefix = base;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let cmd = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(|e| anyhow::anyhow!("redis: {e}"))?;
                (
                    vec![client],
                    Commands::Server(cmd),
                    prefix.to_string(),
                    Vec::new(),
                    Vec::new(),
                )
            }
            RedisTarget::Cluster { seeds, shards } => {
                let pubsub = seeds
                    .iter()
                    .map(|s| open("REALTIME_REDIS_CLUSTER", s))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(Duration::from_secs(2))
                    .retries(2)
                    .build()
                    .map_err(|e| anyhow::anyhow!("REALTIME_REDIS_CLUSTER: {e}"))?;
                let cmd = Commands::Cluster {
                    client: Box::new(client),
                    conn: ArcSwapOption::empty(),
                };
                let prefix = base;
                // The instance-wide keys in one hash slot: the presence scripts read and write
                // several of them at once.
                (
                    pubsub,
                    cmd,
                    format!("{{{prefix}}}"),
                    seeds.clone(),
                    shard_tags(usize::from(*shards)),
                )
            }
        };
        metrics.redis_up.set(0);
        let redis = Arc::new(RedisConn {
            pubsub,
            seeds,
            cmd,
            info: std::sync::Mutex::new(None),
            up: AtomicBool::new(false),
            sharded: std::sync::OnceLock::new(),
            resync: AtomicBool::new(false),
            down_by_call: std::sync::atomic::AtomicI64::new(0),
            prefix,
            base: base.to_string(),
            tags,
            node: node.to_string(),
            metrics,
        });
        let split = vec![
            adapter_request_channel(base),
            redis.channel(HISTORY_CHANNEL),
        ];
        let driver = driver::PubSubDriver::start(redis.clone(), split, stop);
        Ok(Arc::new(Cluster {
            redis,
            driver,
            lease,
            synced: AtomicBool::new(false),
        }))
    }

    /// The adapter's driver (clones share everything).
    pub fn driver(&self) -> driver::PubSubDriver {
        self.driver.clone()
    }

    /// Whether both the command and the subscriber connections are up and this instance's
    /// state is in Redis.
    pub fn healthy(&self) -> bool {
        self.redis.up() && self.driver.connected() && self.synced.load(Ordering::Acquire)
    }

    /// The shared connection.
    pub fn redis(&self) -> &Arc<RedisConn> {
        &self.redis
    }

    /// Whether Redis answers.
    pub fn up(&self) -> bool {
        self.redis.up()
    }

    /// Pings Redis until `stop`. Each time Redis comes back (and at the first successful
    /// ping) `on_up` runs until it reports success: the instance re-asserts its state, and
    /// only then does [`Cluster::healthy`] say so.
    pub async fn monitor<F, Fut>(self: Arc<Self>, stop: CancellationToken, on_up: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut interval = tokio::time::interval(PING_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ever_up = false;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.cancelled() => return,
            }
            let ok = self.redis.check().await;
            let was = self.redis.set_up(ok);
            if ok && !was {
                if ever_up {
                    tracing::warn!("redis is back: re-asserting this instance's state");
                    self.redis.metrics.redis_reconnects.inc();
                } else {
                    tracing::info!("redis connected");
                }
                ever_up = true;
                self.synced.store(false, Ordering::Release);
            } else if !ok && was {
                self.synced.store(false, Ordering::Release);
                tracing::warn!("redis is unreachable: serving local clients only until it is back");
            }
            if self.redis.resync.swap(false, Ordering::AcqRel) {
                self.synced.store(false, Ordering::Release);
            }
            if ok && !self.synced.load(Ordering::Acquire) && on_up().await {
                self.synced.store(true, Ordering::Release);
            }
        }
    }

    /// Waits until as many subscribers listen on the cluster's broadcast channel as there are
    /// live instances (each one subscribes it), at most `max`: what is broadcast next then
    /// reaches every instance that is back.
    pub async fn wait_peers_listening(&self, max: Duration) {
        let deadline = std::time::Instant::now() + max;
        let channel = adapter_request_channel(&self.redis.base);
        let nodes = self.redis.nodes_key(0);
        loop {
            let since = format!("({}", now_ms());
            let live: Option<i64> = self
                .redis
                .call(async |c| {
                    redis::cmd("ZCOUNT")
                        .arg(&nodes)
                        .arg(&since)
                        .arg("+inf")
                        .query_async(c)
                        .await
                })
                .await;
            let listening = self.redis.numsub(&channel).await;
            if let (Some(live), Some(listening)) = (live, listening)
                && listening >= live
            {
                return;
            }
            if std::time::Instant::now() >= deadline {
                tracing::debug!("not every instance listens again; announcing anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Marks this instance's state as lost in Redis (the monitor re-asserts it).
    pub fn resync(&self) {
        self.synced.store(false, Ordering::Release);
    }

    /// Renews this instance's lease: Some(true) when the lease was renewed, Some(false) when
    /// it had gone (reaped, or Redis lost it: the state must be re-asserted), None when Redis
    /// did not answer.
    pub async fn renew_lease(&self) -> Option<bool> {
        let until = now_ms() + self.lease.as_millis() as i64;
        let node = &self.redis.node;
        // In every shard: each shard's scripts count the instances live there.
        let renewals = (0..self.redis.shards()).map(|k| {
            let key = self.redis.nodes_key(k);
            async move {
                self.redis
                    .call(async |c| {
                        redis::cmd("ZADD")
                            .arg(&key)
                            .arg(until)
                            .arg(node)
                            .query_async::<i64>(c)
                            .await
                    })
                    .await
            }
        });
        let added: Option<Vec<i64>> = futures_util::future::join_all(renewals)
            .await
            .into_iter()
            .collect();
        Some(added?.iter().all(|&a| a == 0))
    }

    /// Crash cleanup: forgets the sockets of instances whose lease expired (or of `force`,
    /// this instance's previous run) and returns the users left with no socket anywhere (each
    /// returned once, cluster-wide: the script runs atomically).
    pub async fn reap(&self, force: Option<&str>) -> Option<Reaping> {
        let now = now_ms().to_string();
        // Each shard reaps its own users and rooms (once: its script runs atomically); a shard
        // that does not answer keeps the dead instance's lease and is reaped at a later tick.
        let answers: Vec<Reaped> = self
            .redis
            .script_each::<Reaped>(&lua::REAP, &[&now, force.unwrap_or("")])
            .await
            .into_iter()
            .flatten()
            .collect();
        if answers.is_empty() {
            return None;
        }
        let mut nodes = std::collections::BTreeSet::new();
        let mut users = Vec::new();
        let mut rooms: std::collections::HashMap<String, Vec<String>> = Default::default();
        let mut left = Vec::new();
        for r in answers {
            nodes.extend(r.nodes);
            users.extend(r.users);
            for (room, user) in r.pairs {
                rooms.entry(user).or_default().push(room);
            }
            left.extend(r.left);
        }
        if !nodes.is_empty() && force.is_none() {
            tracing::warn!(nodes = ?nodes, offline = users.len(), "reaped instances whose lease expired");
        }
        let gone = users
            .into_iter()
            .map(|user_id| {
                let rooms = rooms.remove(&user_id).unwrap_or_default();
                Gone { user_id, rooms }
            })
            .collect();
        Some(Reaping {
            offline: gone,
            left,
        })
    }

    /// Removes this instance from the cluster at a clean stop: its users with no socket
    /// elsewhere are returned (already offline in Redis).
    pub async fn leave(&self) -> Option<Reaping> {
        self.reap(Some(&self.redis.node.clone())).await
    }
}

/// Whether Redis at `url` answers `PING` within 3 s (for `init`).
pub async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Ok(_))
    )
}

/// For `init`: whether the configured Redis answers (`ok`, `unreachable`, or `degraded`: a
/// Redis Cluster whose state is not `ok`), and a line saying what was seen.
pub async fn probe(target: &RedisTarget) -> (&'static str, String) {
    let seeds = match target {
        RedisTarget::Server(url) => {
            return if ping(url).await {
                ("ok", "Redis answers".into())
            } else {
                (
                    "unreachable",
                    "Redis at REALTIME_REDIS_URL does not answer".into(),
                )
            };
        }
        RedisTarget::Cluster { seeds, .. } => seeds,
    };
    let mut answering = 0;
    let mut info: Option<String> = None;
    for url in seeds {
        let Ok(client) = redis::Client::open(url.as_str()) else {
            continue;
        };
        let ask = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async::<String>(&mut conn)
                .await
        };
        if let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(3), ask).await {
            answering += 1;
            info.get_or_insert(text);
        }
    }
    let Some(text) = info else {
        return (
            "unreachable",
            format!(
                "no node of REALTIME_REDIS_CLUSTER answers (0/{} seeds)",
                seeds.len()
            ),
        );
    };
    let info = ClusterInfo::parse(&text);
    let line = format!(
        "Redis Cluster: {answering}/{} seed nodes answer, state {}, {}/16384 slots covered, {} masters, {} nodes",
        seeds.len(),
        info.state,
        info.slots_ok,
        info.masters,
        info.known_nodes,
    );
    (if info.state == "ok" { "ok" } else { "degraded" }, line)
}

/// The hash tags of `n` shards: tag `k` is the first of `k.0`, `k.1`, … whose slot lies in the
/// `k`-th of `n` equal ranges of the 16384 slots, so the shards spread evenly over masters
/// that serve equal ranges (what `redis-cli --cluster create` makes). Every instance computes
/// the same list.
pub(crate) fn shard_tags(n: usize) -> Vec<String> {
    let n = n.clamp(1, 16384);
    (0..n)
        .map(|k| {
            let (lo, hi) = (k * 16384 / n, (k + 1) * 16384 / n);
            (0u32..)
                .map(|j| format!("{k}.{j}"))
                .find(|tag| (lo..hi).contains(&usize::from(key_slot(tag))))
                .unwrap_or_default()
        })
        .collect()
}

/// The slot of a key (its hash tag's when it has one), as a Redis Cluster computes it.
pub(crate) fn key_slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = b.iter().position(|&c| c == b'{').and_then(|open| {
        let len = b[open + 1..].iter().position(|&c| c == b'}')?;
        (len > 0).then(|| &b[open + 1..open + 1 + len])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(b)) % 16384
}

/// The Socket.IO adapter's channel prefix under the cluster prefix.
pub fn adapter_prefix(prefix: &str) -> String {
    format!("{prefix}:sio")
}

/// The adapter's broadcast request channel of the `/` namespace (every instance subscribes it;
/// socketioxide-redis names it `<adapter prefix>-request#<namespace>#`).
fn adapter_request_channel(prefix: &str) -> String {
    format!("{}-request#/#", adapter_prefix(prefix))
}

/// The internal room every socket of instance `node` is in: a broadcast that excepts it
/// reaches the other instances only (a draining instance's farewells).
pub fn node_room(node: &str) -> String {
    format!("#node:{node}")
}

/// The field of a (user, room) socket count.
pub(crate) fn room_field(user: &str, room: &str) -> String {
    format!("{room}\u{1f}{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_as_redis_computes_them() {
        // Figures from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("somekey"), 11058);
        assert_eq!(key_slot("{foo}:bar"), 12182);
        assert_eq!(key_slot("x:{foo}:y{z}"), 12182);
        // An empty tag is no tag: the whole name counts.
        assert_eq!(key_slot("{}foo"), key_slot("{}foo"));
        assert_ne!(key_slot("{}foo"), key_slot("foo"));
    }

    #[test]
    fn shard_tags_spread_evenly_over_the_slots() {
        for n in [1, 3, 16, 100, 1024] {
            let tags = shard_tags(n);
            assert_eq!(tags.len(), n);
            for (k, tag) in tags.iter().enumerate() {
                let slot = usize::from(key_slot(tag));
                assert!(
                    (k * 16384 / n..(k + 1) * 16384 / n).contains(&slot),
                    "{n} shards: tag {tag} of shard {k} is in slot {slot}"
                );
            }
        }
        // Three masters of equal ranges serve 5 or 6 of 16 shards each.
        let per_master = shard_tags(16).iter().fold([0; 3], |mut m, t| {
            m[usize::from(key_slot(t)) * 3 / 16384] += 1;
            m
        });
        assert!(
            per_master.iter().all(|&n| (5..=6).contains(&n)),
            "{per_master:?}"
        );
    }
}
