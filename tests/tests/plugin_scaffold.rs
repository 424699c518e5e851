//! Issue 16: a module author's first hour, outside this repository. `nself-realtime plugin new`
//! writes a crate into a directory of its own; that crate's unit tests pass, it builds to a
//! wasm32-wasip2 component with plain cargo, and the component (cargo names it `slow_guard.wasm`)
//! paired with a sidecar named after the module (`slow-guard.toml`) enforces slow mode in a
//! live server: the refusal carries `retryAfterMs`, and a send the server refused itself
//! (`NOT_IN_ROOM`) does not start the interval.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nself_realtime_tests::process::command;
use nself_realtime_tests::{TestHost, ms};
use serde_json::{Value, json};

/// The cargo target directory this test binary was built in (`<target>/debug/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("test binary inside a target directory")
}

/// Runs cargo in the scaffolded crate as its author would, with a target directory of its own
/// (kept under this workspace's target directory so that later runs start warm).
fn cargo(crate_dir: &Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    // Nothing of this workspace's build leaks into the author's.
    for (key, _) in std::env::vars() {
        let keep = ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"];
        if (key.starts_with("CARGO_") || key.starts_with("RUST")) && !keep.contains(&key.as_str()) {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .args(args)
        .current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", target_dir().join("scaffold"))
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} failed in the scaffolded crate:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn accepted_count(host: &TestHost) -> u64 {
    let list = host.http_request("/metrics/plugins", &[]).await.json();
    list["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["file"] == "slow_guard.wasm"))
        .and_then(|p| p["accepted"].as_u64())
        .unwrap_or(0)
}

async fn wait_accepted(host: &TestHost, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted_count(host).await != want {
        assert!(
            Instant::now() < deadline,
            "accepted notifications: {} (want {want})",
            accepted_count(host).await
        );
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_module_tests_builds_and_enforces_outside_the_repository() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = command(&[])
        .args(["plugin", "new", "slow-guard", "--dir"])
        .arg(dir.path())
        .arg("--json")
        .output()
        .expect("run nself-realtime plugin new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let crate_dir = dir.path().join("slow-guard");
    assert_eq!(
        report["created"].as_str().map(PathBuf::from),
        Some(crate_dir.clone()),
        "{report}"
    );
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        "slow-guard.toml",
        "vendor/nself-realtime-guest/Cargo.toml",
        "vendor/nself-realtime-guest/wit/realtime.wit",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file} not written");
    }
    // A second `new` into the same place writes nothing and says why.
    let again = command(&[])
        .args(["plugin", "new", "slow-guard", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run nself-realtime plugin new");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    cargo(&crate_dir, &["test", "--quiet"]);
    cargo(
        &crate_dir,
        &["build", "--release", "--quiet", "--target", "wasm32-wasip2"],
    );
    let wasm = target_dir().join("scaffold/wasm32-wasip2/release/slow_guard.wasm");
    let wasm = std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
    // The author's sidecar, named after the module, with a long interval for the test.
    let sidecar = std::fs::read_to_string(crate_dir.join("slow-guard.toml")).expect("sidecar");
    let sidecar = sidecar.replace("\"intervalMs\": 2000", "\"intervalMs\": 60000");
    assert!(sidecar.contains("60000"), "{sidecar}");

    let files = [
        ("slow_guard.wasm", wasm),
        ("slow-guard.toml", sidecar.into_bytes()),
    ];
    let host = TestHost::start_with_plugins(&[], &files).await;
    let list = host.http_request("/metrics/plugins", &[]).await.json();
    let module = list["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["file"] == "slow_guard.wasm"))
        .cloned()
        .expect("slow_guard.wasm listed");
    assert_eq!(module["status"], "loaded", "{module}");
    assert_eq!(module["name"], "slow-guard", "{module}");
    assert_eq!(module["sidecar"], "slow-guard.toml", "{module}");

    let mut u1 = host.joined("u1", "general").await;
    let ack = u1.send_message("general", "first").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    wait_accepted(&host, 1).await;
    let ack = u1.send_message("general", "too soon").await;
    assert_eq!(ack["error"]["code"], "RATE_LIMIT_EXCEEDED", "{ack}");
    let retry = ack["error"]["details"]["retryAfterMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retryAfterMs: {ack}"));
    assert!(retry > 0 && retry <= 60_000, "{ack}");
    assert_eq!(ack["error"]["details"]["plugin"], "slow-guard", "{ack}");

    // u2 is not a member of general yet: the server refuses the send, the module never hears
    // it was accepted, so u2's first real message goes through.
    let mut u2 = host.client("u2").await;
    let ack = u2.send_message("general", "not a member").await;
    assert_eq!(ack["error"]["code"], "NOT_IN_ROOM", "{ack}");
    tokio::time::sleep(ms(300)).await;
    assert_eq!(accepted_count(&host).await, 1);
    let ack = u2
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let ack = u2.send_message("general", "now a member").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    wait_accepted(&host, 2).await;
}
