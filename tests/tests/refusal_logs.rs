//! Issue 17, item 3: refusals are logged with their cause and the peer's address at info (at
//! most a line a second per kind, with how many were held back): the socket cap, the per-IP
//! handshake rate, and the server API's key check. Runs the real binary and reads its log.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nself_realtime_tests::free_port;
use nself_realtime_tests::process::command;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_cause_and_the_peer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let port_s = port.to_string();
    let db = format!("sqlite://{}/r.db", dir.path().display());
    let mut child = command(&[
        ("REALTIME_HOST", "127.0.0.1"),
        ("REALTIME_PORT", &port_s),
        ("DATABASE_URL", &db),
        (
            "REALTIME_PLUGINS_DIR",
            &dir.path().join("plugins").display().to_string(),
        ),
        ("REALTIME_API_KEY", "refusal-test-key-0123456789"),
        ("REALTIME_MAX_SOCKETS", "3"),
        ("REALTIME_HEADER_TIMEOUT", "1500"),
        ("REALTIME_RATE_LIMIT", "2"),
        ("LOG_FORMAT", "json"),
        ("LOG_LEVEL", "info"),
    ])
    .arg("serve")
    .current_dir(dir.path())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn server");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    let deadline = Instant::now() + Duration::from_secs(15);
    while http
        .get(format!("{base}/health/live"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "server never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The API key check.
    let r = http
        .get(format!("{base}/api/nodes"))
        .bearer_auth("guess")
        .send()
        .await
        .expect("api");
    assert_eq!(r.status().as_u16(), 401);

    // The per-IP handshake rate (twice REALTIME_RATE_LIMIT a minute).
    let mut limited = false;
    for _ in 0..8 {
        let r = http
            .get(format!("{base}/socket.io/?EIO=4&transport=polling"))
            .send()
            .await
            .expect("handshake");
        limited |= r.status().as_u16() == 429;
    }
    assert!(limited, "handshakes past the rate are refused");

    // The socket cap: idle connections fill it, the next one is refused.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), extra.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    drop(idle);

    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut log);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut log);
    }
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l.to_string().contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{log}"))
            .clone()
    };
    for (needle, reason) in [
        ("server API request refused", "wrong API key"),
        ("too many handshakes", "handshake_rate"),
        ("REALTIME_MAX_SOCKETS reached", "sockets"),
    ] {
        let line = find(needle);
        let text = line.to_string();
        assert_eq!(line["level"], "INFO", "{text}");
        assert!(text.contains("127.0.0.1"), "the peer is named: {text}");
        assert!(text.contains(reason), "the cause is named: {text}");
        assert!(
            !text.contains("guess"),
            "the key given is never logged: {text}"
        );
    }
}
