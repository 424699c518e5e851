//! Redis for tests: a unique key prefix on the shared server ([`unique_prefix`], keys removed
//! by [`SharedRedis::cleanup`]), or a private `redis-server` on a free port that a test may
//! shut down, restart on the same port, pause, and whose connections it may kill
//! ([`PrivateRedis`]).
//!
//! The shared server is `redis://127.0.0.1:6379`, or `NSELF_TEST_REDIS`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// URL of the shared server.
pub fn shared_url() -> String {
    std::env::var("NSELF_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix no other test uses: `nrt-<pid>-<time>-<tag>`.
pub fn unique_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("nrt-{}-{:x}-{tag}", std::process::id(), nanos)
}

/// Runs one command against `url`; the reply as a Redis value.
pub async fn command(url: &str, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(url)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    tokio::time::timeout(Duration::from_secs(5), cmd.query_async(&mut conn))
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "command timed out")))?
}

/// The shared server under one prefix.
pub struct SharedRedis {
    /// `redis://…`.
    pub url: String,
    /// The prefix to give the servers (`REALTIME_REDIS_PREFIX`).
    pub prefix: String,
}

impl SharedRedis {
    /// A new prefix on the shared server.
    pub fn new(tag: &str) -> SharedRedis {
        SharedRedis {
            url: shared_url(),
            prefix: unique_prefix(tag),
        }
    }

    /// Deletes the keys under the prefix (best effort).
    pub async fn cleanup(&self) {
        let pattern = format!("{}:*", self.prefix);
        if let Ok(redis::Value::Array(keys)) = command(&self.url, &["KEYS", &pattern]).await {
            for k in keys {
                if let Ok(k) = redis::from_redis_value::<String>(k) {
                    let _ = command(&self.url, &["DEL", &k]).await;
                }
            }
        }
    }
}

/// A `redis-server` of one test (no persistence), on a port of its own.
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts it and waits until it answers `PING` (10 s at most).
    pub async fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: crate::free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        r.spawn().await;
        r
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                // Tests slow it down on purpose (`DEBUG SLEEP`).
                "--enable-debug-command",
                "local",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if command(&self.url(), &["PING"]).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server on port {} did not answer within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs one command on it.
    pub async fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        command(&self.url(), args).await
    }

    /// `SHUTDOWN NOSAVE`: the server exits (every key is lost).
    pub async fn shutdown(&mut self) {
        let _ = self.command(&["SHUTDOWN", "NOSAVE"]).await;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of one test: `masters` `redis-server`s with `--cluster-enabled yes` on
/// loopback (no replicas, no persistence), formed with `redis-cli --cluster create`. A master
/// may be killed and started again on its port (it keeps its `nodes.conf`, so it rejoins with
/// its slots, empty).
pub struct PrivateCluster {
    /// Client port of each node.
    pub ports: Vec<u16>,
    bus: Vec<u16>,
    dir: tempfile::TempDir,
    children: Vec<Option<Child>>,
    /// More `redis-server` arguments of every node.
    extra: Vec<String>,
}

impl PrivateCluster {
    /// Starts the masters, forms the cluster and waits until every node reports
    /// `cluster_state:ok` (30 s at most).
    pub async fn start(masters: usize) -> PrivateCluster {
        PrivateCluster::start_with(masters, &[]).await
    }

    /// [`PrivateCluster::start`] with more `redis-server` arguments for every node.
    pub async fn start_with(masters: usize, extra: &[&str]) -> PrivateCluster {
        PrivateCluster::form(masters, 0, extra).await
    }

    /// `masters` masters with one replica each (nodes `masters..2*masters` start as replicas;
    /// which master each follows is `redis-cli`'s choice): a killed master fails over.
    pub async fn start_replicated(masters: usize) -> PrivateCluster {
        // A replica syncs at once and may take over whatever its data's age.
        let fast = [
            "--repl-diskless-sync-delay",
            "0",
            "--cluster-replica-validity-factor",
            "0",
        ];
        let c = PrivateCluster::form(masters, 1, &fast).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..c.ports.len() {
            loop {
                let info: String = c
                    .command(i, &["INFO", "replication"])
                    .await
                    .ok()
                    .and_then(|v| redis::from_redis_value(v).ok())
                    .unwrap_or_default();
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {i} did not sync within 30 s: {info}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        c
    }

    async fn form(masters: usize, replicas: usize, extra: &[&str]) -> PrivateCluster {
        let n = masters * (1 + replicas);
        let mut c = PrivateCluster {
            ports: (0..n).map(|_| crate::free_port()).collect(),
            bus: (0..n).map(|_| crate::free_port()).collect(),
            dir: tempfile::tempdir().expect("temp dir"),
            children: (0..n).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            c.spawn(i).await;
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (Debian package redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_ok().await;
        c
    }

    /// `redis://127.0.0.1:<port>` of master `i`.
    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[i])
    }

    /// The seed list for `REALTIME_REDIS_CLUSTER`: every master, comma-separated.
    pub fn seeds(&self) -> String {
        (0..self.ports.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn spawn(&mut self, i: usize) {
        let port = self.ports[i];
        let dir = self.dir.path().join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--cluster-port", &self.bus[i].to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--enable-debug-command", "local"])
            .args(&self.extra)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        self.children[i] = Some(child);
        let url = self.url(i);
        let deadline = Instant::now() + Duration::from_secs(10);
        while command(&url, &["PING"]).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "cluster node on port {port} did not answer within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node says `cluster_state:ok` (30 s at most).
    pub async fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut ok = true;
            for i in 0..self.ports.len() {
                if self.children[i].is_none() {
                    continue;
                }
                let info = self.command(i, &["CLUSTER", "INFO"]).await;
                let state = match info {
                    Ok(v) => redis::from_redis_value::<String>(v).unwrap_or_default(),
                    Err(_) => String::new(),
                };
                ok &= state.contains("cluster_state:ok");
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private Redis Cluster did not reach cluster_state:ok within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs one command on master `i`.
    pub async fn command(&self, i: usize, args: &[&str]) -> redis::RedisResult<redis::Value> {
        command(&self.url(i), args).await
    }

    /// The master (index) that serves `key`'s slot, as the first running node sees it.
    pub async fn master_of(&self, key: &str) -> Option<usize> {
        let ask = self.children.iter().position(Option::is_some)?;
        let slot: i64 =
            redis::from_redis_value(self.command(ask, &["CLUSTER", "KEYSLOT", key]).await.ok()?)
                .ok()?;
        let slots = self.command(ask, &["CLUSTER", "SLOTS"]).await.ok()?;
        let redis::Value::Array(ranges) = slots else {
            return None;
        };
        for r in ranges {
            let redis::Value::Array(r) = r else { continue };
            let (Some(lo), Some(hi), Some(redis::Value::Array(node))) =
                (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            let lo: i64 = redis::from_redis_value_ref(lo).ok()?;
            let hi: i64 = redis::from_redis_value_ref(hi).ok()?;
            if (lo..=hi).contains(&slot) {
                let port: i64 = redis::from_redis_value_ref(node.get(1)?).ok()?;
                return self.ports.iter().position(|p| i64::from(*p) == port);
            }
        }
        None
    }

    /// Kills master `i` (SIGKILL: its keys are lost, its slots uncovered until it is back).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts master `i` again on its port and waits for the cluster to be whole.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i).await;
        self.wait_ok().await;
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut() {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
