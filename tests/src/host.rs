//! `TestHost`: one real server (`nself_realtime::server::run`) on 127.0.0.1:0 with a temp
//! database and plugins directory, its store for seeding, and plain HTTP helpers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nself_realtime::config::Config;
use nself_realtime::store::{NewRoom, RoomType, Store, Visibility};
use tempfile::TempDir;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::SioClient;
use crate::token::{TEST_SECRET, user_token};

/// How long `start` waits for `/health/live`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for `run` to return.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// A running server for one test. Dropping it cancels the server.
pub struct TestHost {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// `DATABASE_URL` the server uses.
    pub database_url: String,
    dir: TempDir,
    cancel: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
    store: OnceCell<Store>,
}

/// A plain HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `Content-Type` header ("" when absent).
    pub content_type: String,
    /// All headers, lower-case names (last value wins).
    pub headers: HashMap<String, String>,
    /// Body as text.
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON; panics (fails the test) when it is not JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

impl TestHost {
    /// Starts a server with these variables on top of the test defaults:
    /// `DATABASE_URL=sqlite://<tmp>/realtime.db`, `REALTIME_HOST=127.0.0.1`,
    /// `REALTIME_PLUGINS_DIR=<tmp>/plugins`, `REALTIME_JWT_SECRET=`[`TEST_SECRET`] and
    /// `REALTIME_RATE_LIMIT=0` (every test connects from 127.0.0.1). A variable given with an
    /// empty value is unset (the config treats empty as unset). Panics when the server does not
    /// answer `<REALTIME_HEALTH_PATH>/live` within 10 s.
    pub async fn start(vars: &[(&str, &str)]) -> TestHost {
        TestHost::start_with_plugins(vars, &[]).await
    }

    /// Like [`TestHost::start`], with these files (`NAME.wasm`, `NAME.toml`) in the plugins
    /// directory before the server starts.
    pub async fn start_with_plugins(vars: &[(&str, &str)], files: &[(&str, Vec<u8>)]) -> TestHost {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).expect("plugins dir");
        for (name, bytes) in files {
            std::fs::write(plugins.join(name), bytes).expect("write plugin file");
        }
        let mut map: HashMap<String, String> = HashMap::new();
        let db_url = format!("sqlite://{}/realtime.db", dir.path().display());
        map.insert("DATABASE_URL".into(), db_url);
        map.insert("REALTIME_HOST".into(), "127.0.0.1".into());
        map.insert("REALTIME_PLUGINS_DIR".into(), plugins.display().to_string());
        map.insert(
            "REALTIME_PLUGIN_CACHE_DIR".into(),
            dir.path().join("plugin-cache").display().to_string(),
        );
        map.insert("REALTIME_JWT_SECRET".into(), TEST_SECRET.into());
        map.insert("REALTIME_RATE_LIMIT".into(), "0".into());
        for (k, v) in vars {
            map.insert((*k).to_string(), (*v).to_string());
        }
        let config = Config::from_map(&map).expect("test config must be valid");
        // Readiness probe: `<health path>/live`, or the polling handshake when health is off.
        let probe_path = if config.enable_health {
            format!("{}/live", config.health_path)
        } else {
            "/socket.io/?EIO=4&transport=polling".to_string()
        };
        let database_url = config.database_url.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(nself_realtime::server::run(
            config,
            listener,
            cancel.clone(),
        ));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut host = TestHost {
            addr,
            database_url,
            dir,
            cancel,
            task: Some(task),
            http,
            store: OnceCell::new(),
        };
        host.wait_live(&probe_path).await;
        host
    }

    async fn wait_live(&mut self, probe_path: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(task) = &self.task
                && task.is_finished()
            {
                let task = self.task.take().expect("task present");
                match task.await {
                    Ok(Ok(())) => panic!("server::run returned before it was live"),
                    Ok(Err(e)) => panic!("server::run failed at start: {e:#}"),
                    Err(e) => panic!("server::run panicked at start: {e}"),
                }
            }
            let probe = self
                .http
                .get(format!("{}{probe_path}", self.url()))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(resp) = probe
                && resp.status().as_u16() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not answer GET {probe_path} with 200 within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The plugins directory the server watches.
    pub fn plugins_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("plugins")
    }

    /// The temp directory (database, plugins).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A store on the same database, for seeding rooms and members (connected once).
    pub async fn store(&self) -> Store {
        self.store
            .get_or_init(|| async {
                Store::connect(&self.database_url)
                    .await
                    .unwrap_or_else(|e| panic!("Store::connect({}): {e}", self.database_url))
            })
            .await
            .clone()
    }

    /// Creates a room row (the server reads rooms at `room:join` time).
    pub async fn create_room(
        &self,
        name: &str,
        room_type: RoomType,
        visibility: Visibility,
        max_members: Option<i32>,
    ) {
        let room = NewRoom {
            name: name.to_string(),
            room_type,
            visibility,
            max_members,
            settings: serde_json::json!({}),
        };
        self.store()
            .await
            .create_room(&room)
            .await
            .unwrap_or_else(|e| panic!("create_room({name}): {e}"));
    }

    /// Adds a membership row (`role`: admin|moderator|member|guest).
    pub async fn add_member(&self, room: &str, user: &str, role: &str, muted: bool, banned: bool) {
        self.store()
            .await
            .add_member(room, user, role, muted, banned)
            .await
            .unwrap_or_else(|e| panic!("add_member({room}, {user}): {e}"));
    }

    /// A connected client for `user_id` (valid [`TEST_SECRET`] token); panics when refused.
    pub async fn client(&self, user_id: &str) -> SioClient {
        SioClient::connect(&self.url(), Some(&user_token(user_id)))
            .await
            .unwrap_or_else(|e| panic!("connect as {user_id}: {e}"))
    }

    /// A connected client without a token (needs `REALTIME_ALLOW_ANONYMOUS=true`).
    pub async fn anonymous_client(&self) -> SioClient {
        SioClient::connect(&self.url(), None)
            .await
            .unwrap_or_else(|e| panic!("anonymous connect: {e}"))
    }

    /// A client for `user_id` that has joined `room` (join acked with success).
    pub async fn joined(&self, user_id: &str, room: &str) -> SioClient {
        let mut c = self.client(user_id).await;
        let ack = c
            .emit_ack(
                "room:join",
                serde_json::json!({ "roomName": room }),
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(
            ack.get("success"),
            Some(&serde_json::Value::Bool(true)),
            "{user_id} joining {room}: {ack}"
        );
        c
    }

    /// `GET path` → (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let r = self.http_request(path, &[]).await;
        (r.status, r.body)
    }

    /// `GET path` with extra request headers; panics when the server does not answer.
    pub async fn http_request(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.try_http_request(path, headers)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET path` with extra request headers; `Err` when the connection fails.
    pub async fn try_http_request(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, reqwest::Error> {
        let mut req = self.http.get(format!("{}{path}", self.url()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers: HashMap<String, String> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let content_type = headers.get("content-type").cloned().unwrap_or_default();
        let body = resp.text().await?;
        Ok(HttpResponse {
            status,
            content_type,
            headers,
            body,
        })
    }

    /// The server's shutdown token (cancel it to start a graceful shutdown).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Cancels the server and waits (at most 15 s) for `run` to return; returns its result.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.shutdown_within(SHUTDOWN_TIMEOUT).await
    }

    /// Cancels the server and waits at most `limit` for `run` to return.
    pub async fn shutdown_within(&mut self, limit: Duration) -> anyhow::Result<()> {
        self.cancel.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(limit, task).await {
            Err(_) => anyhow::bail!("server::run did not return within {limit:?} of shutdown"),
            Ok(Err(join)) => anyhow::bail!("server::run panicked: {join}"),
            Ok(Ok(result)) => result,
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
