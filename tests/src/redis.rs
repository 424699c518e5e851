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
