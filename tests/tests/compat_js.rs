//! Compatibility with the official `socket.io-client` (Node.js): runs `tests/node/*.mjs`
//! against a TestHost and requires exit status 0. Needs `npm ci --prefix tests/node`.

use std::path::PathBuf;
use std::process::Stdio;

use nself_realtime_tests::{TEST_SECRET, TestHost};

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node")
}

async fn run_script(host: &TestHost, script: &str) {
    run_script_with(host, script, &[]).await
}

async fn run_script_with(host: &TestHost, script: &str, env: &[(&str, String)]) {
    let dir = node_dir();
    assert!(
        dir.join("node_modules").join("socket.io-client").is_dir(),
        "tests/node/node_modules is missing: run `npm ci --prefix tests/node` first"
    );
    let child = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .current_dir(&dir)
        .env("SERVER_URL", host.url())
        .env("JWT_SECRET", TEST_SECRET)
        .env("SCRIPT_TIMEOUT_MS", "30000")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `node` (is Node.js >= 18 installed?): {e}"));
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node {script} did not finish within 60 s"))
        .expect("node output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- node {script} stdout ---\n{stdout}");
    println!("--- node {script} stderr ---\n{stderr}");
    assert!(
        out.status.success(),
        "node {script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_flow_with_the_official_client() {
    let host = TestHost::start(&[]).await;
    run_script(&host, "readme_flow.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_helper_with_the_official_client() {
    let helper = node_dir().join("../../clients/js/dist/index.js");
    assert!(
        helper.is_file(),
        "clients/js is not built: run `npm ci --prefix clients/js && npm run build --prefix clients/js` (scripts/test does)"
    );
    let host = TestHost::start(&[
        ("REALTIME_HISTORY_SIZE", "100"),
        ("REALTIME_EVENT_RATE", "10000"),
    ])
    .await;
    run_script(&host, "catchup_helper.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_messages_with_the_official_client() {
    let host = TestHost::start(&[]).await;
    run_script(&host, "auth_errors.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_websocket_and_upgrade_with_the_official_client() {
    let host = TestHost::start(&[]).await;
    run_script(&host, "transports.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_is_retried_by_the_official_client() {
    let host = TestHost::start(&[
        ("REALTIME_MAX_PENDING_CONNECTS", "1"),
        ("REALTIME_CONNECT_TIMEOUT", "1500"),
    ])
    .await;
    run_script(&host, "busy_retry.mjs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_redis_with_the_official_client() {
    let redis = nself_realtime_tests::redis::SharedRedis::new("js");
    let db = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/cluster.db", db.path().display());
    let vars = [
        ("REALTIME_REDIS_URL", redis.url.as_str()),
        ("REALTIME_REDIS_PREFIX", redis.prefix.as_str()),
        ("DATABASE_URL", url.as_str()),
    ];
    let one = TestHost::start(&vars).await;
    let two = TestHost::start(&vars).await;
    for h in [&one, &two] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while h.http_request("/health", &[]).await.json()["checks"]["redis"] != "ok" {
            assert!(std::time::Instant::now() < deadline, "redis never ok");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    run_script_with(&one, "cluster.mjs", &[("SERVER_URL_2", two.url())]).await;
    redis.cleanup().await;
}
