//! Issue 16: a module author's and an operator's command line, and what the server logs.
//! `plugin check` and `plugin run` work on a file without a server; `plugins` exits 1 when a
//! module file failed; log lines carry the module's name, a refused config its own message
//! (no build paths), and a sidecar that pairs with no module file is reported.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use nself_realtime_tests::process::{run_cli, spawn_server};
use nself_realtime_tests::{SioClient, ms, plugin_wasm, user_token};
use serde_json::{Value, json};

fn run(args: &[&str], vars: &[(&str, &str)]) -> Output {
    run_cli(vars, args)
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path.display().to_string()
}

#[test]
fn check_reports_a_good_file_and_the_real_reason_for_a_bad_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = put(
        dir.path(),
        "rate_limiter.wasm",
        &plugin_wasm("rate-limiter"),
    );
    put(
        dir.path(),
        "rate-limiter.toml",
        br#"config = '{"limit": 3, "count": "accepted"}'"#,
    );
    let out = run(&["plugin", "check", &good], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout_json(&out);
    assert_eq!(report["interface"], "0.2.0", "{report}");
    assert_eq!(report["name"], "rate-limiter", "{report}");
    assert_eq!(
        report["events"],
        serde_json::json!(["message:send"]),
        "{report}"
    );
    assert_eq!(
        report["accepted"],
        serde_json::json!(["message:send"]),
        "{report}"
    );
    assert!(
        report["sidecar"]
            .as_str()
            .is_some_and(|s| s.ends_with("rate-limiter.toml")),
        "the - sidecar pairs with the _ file: {report}"
    );

    // A config the module refuses: its own message, exit 1.
    let out = run(
        &["plugin", "check", &good, "--config", r#"{"windowMs": 0}"#],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("windowMs must be at least 1"), "{err}");
    assert!(!err.contains("unreachable"), "{err}");

    // A legacy (0.1.0) module is recognised as such.
    let legacy = put(dir.path(), "legacy-v01.wasm", &plugin_wasm("legacy-v01"));
    let out = run(&["plugin", "check", &legacy], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["interface"], "0.1.0");

    // Not a component, another interface version, a forbidden import, a missing file.
    let wasm = plugin_wasm("profanity");
    let cut = put(dir.path(), "cut.wasm", &wasm[..wasm.len() / 3]);
    let other = put(dir.path(), "other.wasm", &plugin_wasm("other-version"));
    let fs = put(dir.path(), "fs.wasm", &plugin_wasm("fs-import"));
    let missing = dir.path().join("missing.wasm").display().to_string();
    for (file, needle) in [
        (&cut, "not a valid policy component"),
        (&other, "0.9.0"),
        (&fs, "wasi:filesystem"),
        (&missing, "cannot read"),
    ] {
        let out = run(&["plugin", "check", file], &[]);
        assert_eq!(out.status.code(), Some(1), "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{file}: {err}");
    }
}

#[test]
fn run_prints_the_verdict_as_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let legacy = put(dir.path(), "legacy-v01.wasm", &plugin_wasm("legacy-v01"));
    let out = run(
        &[
            "plugin",
            "run",
            &legacy,
            "--event",
            "message:send",
            "--payload",
            r#"{"roomName": "general", "content": "hi"}"#,
            "--user",
            "u1",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["verdict"], "modify", "{v}");
    assert_eq!(v["payload"]["content"], "[v01] hi", "{v}");

    let out = run(
        &[
            "plugin",
            "run",
            &legacy,
            "--event",
            "message:send",
            "--payload",
            r#"{"roomName": "general", "content": "legacy-no"}"#,
        ],
        &[],
    );
    let v = stdout_json(&out);
    assert_eq!(v["verdict"], "reject", "{v}");
    assert_eq!(v["error"]["code"], "LEGACY_REJECTED", "{v}");

    // Roles and room reach the module (room-policy: `staff-` rooms need the staff role).
    let room_policy = put(dir.path(), "room-policy.wasm", &plugin_wasm("room-policy"));
    let join = |roles: &str| {
        let out = run(
            &[
                "plugin",
                "run",
                &room_policy,
                "--event",
                "room:join",
                "--payload",
                r#"{"roomName": "staff-lounge"}"#,
                "--user",
                "u1",
                "--roles",
                roles,
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout_json(&out)["verdict"].as_str().map(str::to_string)
    };
    assert_eq!(join("guest").as_deref(), Some("reject"));
    assert_eq!(join("member,staff").as_deref(), Some("allow"));

    let out = run(
        &[
            "plugin",
            "run",
            &legacy,
            "--event",
            "message:send",
            "--payload",
            "{oops",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload is not JSON"));
}

#[test]
fn plugins_exits_1_when_a_module_file_failed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    put(&plugins, "profanity.wasm", &plugin_wasm("profanity"));
    let dir_var = plugins.display().to_string();
    // No server on this port: the command loads the directory itself.
    let vars = [
        ("REALTIME_PLUGINS_DIR", dir_var.as_str()),
        ("REALTIME_PORT", "1"),
    ];
    let out = run(&["plugins"], &vars);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("profanity") && table.contains("enforce"),
        "{table}"
    );

    let wasm = plugin_wasm("sanitizer");
    put(&plugins, "broken.wasm", &wasm[..wasm.len() / 2]);
    let out = run(&["plugins", "--json"], &vars);
    assert_eq!(out.status.code(), Some(1));
    let list = stdout_json(&out);
    let broken = list["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["file"] == "broken.wasm"))
        .cloned()
        .expect("broken.wasm listed");
    assert_eq!(broken["status"], "blocking", "{broken}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.wasm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_name_the_module_and_the_real_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    // The SDK's panic hook logs at error level as the module: the line must carry its name.
    put(&plugins, "panics.wasm", &plugin_wasm("panics"));
    put(&plugins, "panics.toml", b"events = [\"message:send\"]\n");
    // A refused config (0.2.0: describe answers with the module's message).
    put(&plugins, "rate-limiter.wasm", &plugin_wasm("rate-limiter"));
    put(
        &plugins,
        "rate-limiter.toml",
        b"on_error = \"allow\"\nconfig = '{\"windowMs\": 0}'\n",
    );
    // A sidecar for a module that is not there.
    put(&plugins, "slow-mode.toml", b"priority = 1\n");
    let log = dir.path().join("server.log");
    let port = nself_realtime_tests::free_port();
    let (dir_var, log_var, port_var) = (
        plugins.display().to_string(),
        log.display().to_string(),
        port.to_string(),
    );
    let db = format!("sqlite://{}/realtime.db", dir.path().display());
    let vars = [
        ("REALTIME_PLUGINS_DIR", dir_var.as_str()),
        ("REALTIME_LOG_FILE", log_var.as_str()),
        ("REALTIME_LOG_ROTATION", "never"),
        ("REALTIME_PORT", port_var.as_str()),
        ("REALTIME_HOST", "127.0.0.1"),
        ("REALTIME_JWT_SECRET", nself_realtime_tests::TEST_SECRET),
        ("DATABASE_URL", db.as_str()),
        // The retries below are handshakes from one IP: not what this test is about.
        ("REALTIME_RATE_LIMIT", "0"),
    ];
    let mut server = spawn_server(&vars, dir.path());
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        match SioClient::connect(&url, Some(&user_token("u1"))).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "server never came up: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let ack = client
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    // The panicking module traps; the SDK's hook logged the panic first, as the module.
    let ack = client.send_message("general", "boom").await;
    assert_eq!(ack["error"]["code"], "POLICY_REJECTED", "{ack}");
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("panic:") && text.contains("sidecar with no module file") {
            break text;
        }
        assert!(Instant::now() < deadline, "log so far:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = server.kill();
    let _ = server.wait();
    assert!(!text.contains("(loading)"), "{text}");
    let panic_line = text
        .lines()
        .find(|l| l.contains("panic:"))
        .unwrap_or_default();
    assert!(
        panic_line.contains("module=\"panics\"") || panic_line.contains("module=panics"),
        "{panic_line}"
    );
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("rate-limiter.wasm") && l.contains("failed to load"))
        .collect();
    assert_eq!(refused.len(), 1, "{text}");
    assert!(
        refused[0].contains("windowMs must be at least 1"),
        "{}",
        refused[0]
    );
    assert!(!refused[0].contains("unreachable"), "{}", refused[0]);
    assert!(text.contains("slow-mode.toml"), "{text}");
}
