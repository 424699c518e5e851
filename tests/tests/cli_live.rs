//! Issue 17, item 3: the CLI commands that act on the running server through its API (`nodes`,
//! `disconnect --user | --socket`), their one-line errors, and the node column of
//! `connections` (read from the database).

use std::process::Output;

use nself_realtime_tests::process::run_cli;
use nself_realtime_tests::{TestHost, ms};
use serde_json::Value;

const KEY: &str = "cli-live-test-key-0123456789";

/// Runs the CLI off the async runtime (it asks the server this runtime serves).
async fn cli(host: &TestHost, key: &str, args: &[&str]) -> Output {
    let port = host.addr.port().to_string();
    let db = host.database_url.clone();
    let key = key.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(
            &[
                ("REALTIME_HOST", "127.0.0.1"),
                ("REALTIME_PORT", &port),
                ("REALTIME_API_KEY", &key),
                ("DATABASE_URL", &db),
            ],
            &args,
        )
    })
    .await
    .expect("cli task")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_disconnect_through_the_api() {
    let host = TestHost::start(&[("REALTIME_API_KEY", KEY), ("REALTIME_NODE_ID", "node-a")]).await;
    let mut alice = host.joined("alice", "general").await;
    let mut bob = host.client("bob").await;

    let out = cli(&host, KEY, &["nodes", "--json"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let nodes: Value = serde_json::from_str(&stdout).expect("nodes --json");
    assert_eq!(nodes["nodes"][0]["nodeId"], "node-a", "{nodes}");
    assert_eq!(nodes["nodes"][0]["connections"], 2, "{nodes}");
    let out = cli(&host, KEY, &["nodes"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("node-a *") && stdout.contains("serving"),
        "{stdout}"
    );

    // The connection rows carry the node (written behind: wait for them).
    let deadline = std::time::Instant::now() + ms(5000);
    loop {
        let out = cli(&host, KEY, &["connections"]).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("node-a")).collect();
        if rows.len() == 2 {
            assert!(stdout.contains("NODE"), "{stdout}");
            assert!(rows.iter().any(|r| r.contains("alice")), "{stdout}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node column: {stdout}"
        );
        tokio::time::sleep(ms(100)).await;
    }

    let out = cli(&host, KEY, &["disconnect", "--user", "alice"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("user alice: 1 socket(s) disconnected"),
        "{stdout}"
    );
    assert!(alice.wait_disconnect(ms(3000)).await.is_some());

    // Socket ids may start with '-' (base64url): taken as the value, not as an option.
    let sid = bob.sid().to_string();
    let out = cli(&host, KEY, &["disconnect", "--socket", "-Qnot-a-socket"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("socket -Qnot-a-socket: 0 socket(s)"),
        "{stdout}"
    );
    let out = cli(&host, KEY, &["disconnect", "--socket", &sid, "--json"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).expect("disconnect --json");
    assert_eq!(answer["disconnected"], 1, "{answer}");
    assert!(bob.wait_disconnect(ms(3000)).await.is_some());

    // Errors: one line, exit 1.
    for (key, args, says) in [
        ("", vec!["nodes"], "REALTIME_API_KEY"),
        ("wrong-key", vec!["nodes"], "refused REALTIME_API_KEY"),
        (KEY, vec!["disconnect"], "--user"),
        (
            KEY,
            vec!["disconnect", "--user", "a", "--socket", "b"],
            "--socket",
        ),
    ] {
        let out = cli(&host, key, &args).await;
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line: {stderr}"
        );
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_being_off_is_said_plainly() {
    let host = TestHost::start(&[]).await;
    let out = cli(&host, KEY, &["nodes"]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the server API is off"), "{stderr}");
}
