//! The `nself-realtime` binary, for tests that need a separate process (the CLI; a server
//! killed with SIGKILL).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The server binary: `NSELF_REALTIME_TEST_BIN` when set (the test command sets it to the
/// binary its workspace build makes), else the debug binary next to the test executable
/// (`target/debug/nself-realtime`), brought up to date with `cargo build --workspace --bins`
/// on first use.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("NSELF_REALTIME_TEST_BIN") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.exists(),
                "NSELF_REALTIME_TEST_BIN={} does not exist",
                bin.display()
            );
            return bin;
        }
        let exe = std::env::current_exe().expect("current exe");
        // target/debug/deps/<test> -> target/debug/nself-realtime
        let dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .to_path_buf();
        let bin = dir.join("nself-realtime");
        let status = Command::new(env!("CARGO"))
            // The whole workspace (as the test build resolves its features), so that this
            // build and the test build do not rebuild each other.
            .args(["build", "-q", "--workspace", "--bins"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("CARGO_TARGET_DIR", dir.parent().expect("target dir parent"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// A command for the binary with a clean environment plus `vars` (no `.env` is read: the
/// working directory is a fresh temp dir).
pub fn command(vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new(binary());
    c.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        c.env("PATH", path);
    }
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

/// Runs a CLI subcommand in a fresh temporary directory; returns its output whatever the exit.
pub fn run_cli(vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    command(vars)
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("run nself-realtime")
}

/// Runs a CLI subcommand; returns stdout; panics on a non-zero exit.
pub fn cli(vars: &[(&str, &str)], args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = command(vars)
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("run nself-realtime");
    assert!(
        out.status.success(),
        "nself-realtime {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Starts `nself-realtime serve` in the background with `vars` (its output discarded).
pub fn spawn_server(vars: &[(&str, &str)], cwd: &std::path::Path) -> Child {
    command(vars)
        .arg("serve")
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nself-realtime serve")
}
