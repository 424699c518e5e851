//! The nself plugin, end to end through its shell scripts (`deploy/nself/`), with `HOME` in a
//! temporary directory: install (twice) from a prebuilt binary (`NSELF_REALTIME_BIN`, the one
//! cargo built: `NSELF_REALTIME_TEST_BIN`), which copies it into the plugin's data directory and
//! writes a `.env` (0600) with a generated secret; then, WITHOUT `NSELF_REALTIME_BIN`, init,
//! server start (and a refused second start) of the installed copy, status and `/health`, rooms
//! with hostile names and user ids, a message through the official socket.io-client signed with
//! the generated secret, logs (free of colour codes, and from `REALTIME_LOG_FILE` when the
//! `.env` sets it), server stop with its drain, uninstall. Plus static checks of the systemd
//! unit (`systemd-analyze verify`), the Containerfile, `.env.example`/`plugin.json` against
//! the variables the server reads, and shellcheck on every script.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_nself-realtime");

/// The binary install.sh is given: `NSELF_REALTIME_TEST_BIN` when set (the test command sets it
/// to the binary of its workspace build), else the one cargo built for this test.
fn test_bin() -> PathBuf {
    match std::env::var_os("NSELF_REALTIME_TEST_BIN") {
        Some(bin) => {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "NSELF_REALTIME_TEST_BIN={} does not exist",
                bin.display()
            );
            bin
        }
        None => PathBuf::from(BIN),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn plugin_dir() -> PathBuf {
    repo().join("deploy").join("nself")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One plugin installation in a temporary HOME, with a server on a free port.
struct Plugin {
    home: tempfile::TempDir,
    port: u16,
}

impl Plugin {
    fn new() -> Plugin {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Plugin {
            home: tempfile::tempdir().expect("temp HOME"),
            port,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.home.path().join(".nself/data/plugins/realtime")
    }

    fn pid_file(&self) -> PathBuf {
        self.data_dir().join("server.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.home
            .path()
            .join(".nself/logs/plugins/realtime/server.log")
    }

    fn env_file(&self) -> PathBuf {
        self.data_dir().join(".env")
    }

    fn installed_bin(&self) -> PathBuf {
        self.data_dir().join("bin/nself-realtime")
    }

    /// The `REALTIME_JWT_SECRET` lines of the plugin's `.env`.
    fn secret_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.env_file())
            .expect(".env")
            .lines()
            .filter(|l| l.starts_with("REALTIME_JWT_SECRET="))
            .map(String::from)
            .collect()
    }

    /// The secret install.sh generated into the `.env`.
    fn secret(&self) -> String {
        let lines = self.secret_lines();
        assert_eq!(lines.len(), 1, "one REALTIME_JWT_SECRET in .env");
        lines[0]["REALTIME_JWT_SECRET=".len()..].to_string()
    }

    /// Runs a plugin script (relative to deploy/nself) with a clean environment. Only
    /// install.sh is given the binary (`NSELF_REALTIME_BIN`): every other script has to find
    /// the copy it installed. No secret in the environment either: the server takes the one
    /// install.sh wrote into the `.env`. No NO_COLOR: the server must leave colour codes out of
    /// its log because that is not a terminal.
    fn script(&self, script: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg("120")
            .arg("bash")
            .arg(plugin_dir().join(script))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("REALTIME_HOST", "127.0.0.1")
            .env("REALTIME_PORT", self.port.to_string())
            .env("REALTIME_SHUTDOWN_TIMEOUT", "5000")
            .env("REALTIME_ENABLE_PLUGINS", "false")
            .current_dir(self.home.path())
            .stdin(Stdio::null());
        if script == "install.sh" {
            cmd.env("NSELF_REALTIME_BIN", test_bin());
        }
        let out = cmd.output().expect("bash runs");
        println!(
            "$ {script} {args:?} -> {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, script: &str, args: &[&str]) -> String {
        let out = self.script(script, args);
        assert!(
            out.status.success(),
            "{script} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, script: &str, args: &[&str]) -> String {
        let out = self.script(script, args);
        assert!(!out.status.success(), "{script} {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, script: &str, args: &[&str]) -> Value {
        let text = self.ok(script, args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{script} {args:?}: {e}: {text}"))
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn room_names(&self) -> Vec<String> {
        self.json("actions/rooms.sh", &["list", "--json"])
            .as_array()
            .expect("a list")
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Plugin {
    /// A failed test must not leave a background server behind.
    fn drop(&mut self) {
        if let Some(pid) = self.pid()
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// GET on the server, as (status, JSON body).
fn http_get(port: u16, path: &str) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let res = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("the server answers");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    })
}

/// The official socket.io-client sends a message through the plugin-started server, with
/// tokens signed by `secret`.
fn send_with_official_client(port: u16, secret: &str, room: &str, sender: &str) {
    let dir = repo().join("tests").join("node");
    assert!(
        dir.join("node_modules/socket.io-client").is_dir(),
        "tests/node/node_modules is missing: run `npm ci --prefix tests/node` (scripts/test does)"
    );
    let out = Command::new("timeout")
        .arg("60")
        .arg("node")
        .arg(dir.join("packaging_send.mjs"))
        .current_dir(&dir)
        .env("SERVER_URL", format!("http://127.0.0.1:{port}"))
        .env("JWT_SECRET", secret)
        .env("ROOM_NAME", room)
        .env("SENDER_ID", sender)
        .env("SCRIPT_TIMEOUT_MS", "30000")
        .stdin(Stdio::null())
        .output()
        .expect("node runs (Node.js >= 18 is needed)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("--- node packaging_send.mjs ---\n{text}");
    assert!(
        out.status.success(),
        "socket.io-client script failed:\n{text}"
    );
}

/// Shell metacharacters and SQL in room names: refused by validation, nothing created, and no
/// command substitution ran.
fn hostile_room_names_are_refused(p: &Plugin) {
    let before = p.room_names();
    for name in [
        "a'b",
        "x'; DROP TABLE realtime_rooms; --",
        "$(touch pwned-subst)",
        "`touch pwned-backtick`",
        "a\"b",
        "semi;colon",
        "room name",
        "",
    ] {
        let err = p.fails("actions/rooms.sh", &["create", name]);
        assert!(
            err.contains("Invalid roomName") || err.contains("Usage"),
            "{name:?}: {err}"
        );
    }
    assert_eq!(p.room_names(), before, "a refused name created something");
    for f in ["pwned-subst", "pwned-backtick"] {
        assert!(!p.home.path().join(f).exists(), "{f} was created");
        assert!(!p.data_dir().join(f).exists(), "{f} was created");
    }
    // A bad type is refused too.
    let err = p.fails("actions/rooms.sh", &["create", "ok-name", "'; --"]);
    assert!(err.contains("type"), "{err}");
    assert!(!p.room_names().contains(&"ok-name".to_string()));
}

#[test]
fn plugin_install_run_and_uninstall() {
    let p = Plugin::new();

    // install from a prebuilt binary: copied into the data directory, executable.
    let install = p.script("install.sh", &[]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    assert!(install.status.success(), "{printed}");
    assert!(printed.contains("Realtime plugin installed"), "{printed}");
    let installed = p.installed_bin();
    let meta = std::fs::metadata(&installed).expect("install.sh installed the binary");
    assert!(
        meta.permissions().mode() & 0o111 != 0,
        "installed binary executable"
    );
    assert_eq!(
        meta.len(),
        std::fs::metadata(test_bin()).unwrap().len(),
        "the installed binary is a copy of NSELF_REALTIME_BIN"
    );
    // The first install generated a secret into a 0600 .env, and did not print it.
    let env_mode = std::fs::metadata(p.env_file())
        .expect(".env written")
        .permissions()
        .mode();
    assert_eq!(env_mode & 0o777, 0o600, ".env mode {env_mode:o}");
    let secret = p.secret();
    assert!(
        secret.len() >= 64 && secret.chars().all(|c| c.is_ascii_hexdigit()),
        "generated secret of {} characters",
        secret.len()
    );
    assert!(!printed.contains(&secret), "install.sh printed the secret");
    let db = p.data_dir().join("data/realtime.db");
    assert!(db.is_file(), "install applied the migrations");

    // install again: re-runnable; the .env is kept byte for byte (no second secret).
    let env_before = std::fs::read(p.env_file()).unwrap();
    let out = p.ok("install.sh", &[]);
    assert!(out.contains("Keeping the existing configuration"), "{out}");
    assert!(
        std::fs::read(p.env_file()).unwrap() == env_before,
        ".env rewritten"
    );
    assert_eq!(p.secret_lines().len(), 1, "a second secret");
    assert!(!out.contains(&secret), "install.sh printed the secret");
    let bad = Command::new("bash")
        .arg(plugin_dir().join("install.sh"))
        .env("HOME", p.home.path())
        .env("NSELF_REALTIME_BIN", p.home.path().join("missing"))
        .output()
        .expect("bash runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an executable"));

    let out = p.ok("actions/init.sh", &[]);
    assert!(out.contains("Initialization complete"), "{out}");
    let init = p.json("actions/init.sh", &["--json"]);
    assert_eq!(init["success"], true, "{init}");

    // A stale PID file (a process that is gone) does not block the start.
    std::fs::write(p.pid_file(), "999999999\n").unwrap();
    let out = p.ok("actions/server.sh", &["start"]);
    assert!(out.contains("Server started"), "{out}");
    let pid = p.pid().expect("PID file written");
    assert!(alive(pid));
    // The server is the installed copy (no NSELF_REALTIME_BIN was given).
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).expect("/proc/PID/exe"),
        installed.canonicalize().unwrap(),
        "server runs the installed binary"
    );
    let err = p.fails("actions/server.sh", &["start"]);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(
        p.pid(),
        Some(pid),
        "the refused start left the PID file alone"
    );

    // status and /health: tokens are verified with the secret of the .env.
    let (code, health) = http_get(p.port, "/health");
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["auth"], "verified", "{health}");
    let out = p.ok("actions/server.sh", &["status"]);
    assert!(out.contains(&format!("running (PID {pid})")), "{out}");
    assert!(out.contains("✓ 200 healthy"), "{out}");
    let st = p.json("actions/status.sh", &["--json"]);
    assert_eq!(st["process"]["running"], true, "{st}");
    assert_eq!(st["health"]["status"], 200, "{st}");
    assert_eq!(st["metrics"]["body"]["rooms"]["active"], 2, "{st}");
    assert_eq!(st["store"]["backend"], "sqlite", "{st}");

    // rooms: hostile names refused; unusual but valid names stored verbatim.
    hostile_room_names_are_refused(&p);
    for name in ["-rf", "team.alpha:x@y_1"] {
        let created = p.json(
            "actions/rooms.sh",
            &["create", name, "channel", "public", "--json"],
        );
        assert_eq!(created["name"], name, "{created}");
        let info = p.json("actions/rooms.sh", &["info", name, "--json"]);
        assert_eq!(info["room"]["name"], name, "{info}");
    }
    let out = p.ok("actions/rooms.sh", &["list"]);
    assert!(out.contains("Active Rooms") && out.contains("-rf"), "{out}");

    // members: a hostile user id is stored verbatim, a bad role and an unknown room refused.
    let hostile_user = "u'1\"; DROP TABLE realtime_room_members; -- $(touch pwned-user) `id`";
    let added = p.json(
        "actions/rooms.sh",
        &["add-member", "-rf", hostile_user, "moderator", "--json"],
    );
    assert_eq!(added["userId"], hostile_user, "{added}");
    let info = p.json("actions/rooms.sh", &["info", "-rf", "--json"]);
    assert_eq!(info["memberCount"], 1, "{info}");
    assert_eq!(info["members"][0]["userId"], hostile_user, "{info}");
    assert_eq!(info["members"][0]["role"], "moderator", "{info}");
    assert!(!p.home.path().join("pwned-user").exists());
    assert!(!p.data_dir().join("pwned-user").exists());
    let err = p.fails("actions/rooms.sh", &["add-member", "-rf", "bob", "root"]);
    assert!(err.contains("--role"), "{err}");
    let err = p.fails("actions/rooms.sh", &["add-member", "no'room", "bob"]);
    assert!(err.contains("room not found"), "{err}");

    // A message with the official client, the sender being the hostile user id.
    send_with_official_client(p.port, &secret, "-rf", hostile_user);

    let out = p.ok("actions/rooms.sh", &["remove-member", "-rf", hostile_user]);
    assert!(out.contains("Member removed"), "{out}");
    let err = p.fails("actions/rooms.sh", &["remove-member", "-rf", hostile_user]);
    assert!(err.contains("is not a member"), "{err}");

    // delete is soft; create brings the room back.
    let out = p.ok("actions/rooms.sh", &["delete", "-rf"]);
    assert!(out.contains("Room deleted"), "{out}");
    assert!(!p.room_names().contains(&"-rf".to_string()));
    let info = p.json("actions/rooms.sh", &["info", "-rf", "--json"]);
    assert_eq!(info["room"]["isActive"], false, "{info}");
    let err = p.fails("actions/rooms.sh", &["delete", "-rf"]);
    assert!(err.contains("already deleted"), "{err}");
    let back = p.json("actions/rooms.sh", &["create", "-rf", "--json"]);
    assert_eq!(back["reactivated"], true, "{back}");
    let err = p.fails("actions/rooms.sh", &["delete", "no-such-room"]);
    assert!(err.contains("room not found"), "{err}");

    // logs [n]; the log file is not a terminal: no colour codes in it.
    let out = p.ok("actions/server.sh", &["logs", "3"]);
    assert!(out.lines().count() <= 3, "{out}");
    assert!(
        !out.contains("\x1b["),
        "colour codes in server logs: {out:?}"
    );
    let err = p.fails("actions/server.sh", &["logs", "3;id"]);
    assert!(err.contains("line count"), "{err}");
    let log = std::fs::read_to_string(p.log_file()).expect("server.log");
    assert!(log.contains("nself-realtime listening"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "colour codes in server.log: {log:?}"
    );

    // stop: SIGTERM, the drain finishes, the PID file goes.
    let started = Instant::now();
    let out = p.ok("actions/server.sh", &["stop"]);
    assert!(out.contains("drain complete"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!p.pid_file().exists(), "PID file removed");
    assert!(!alive(pid), "server process gone");
    let log = std::fs::read_to_string(p.log_file()).expect("server.log");
    assert!(log.contains("shutdown complete"), "{log}");
    let out = p.ok("actions/server.sh", &["stop"]);
    assert!(out.contains("not running"), "{out}");
    // status still prints what it can read, and exits 1: no server answers.
    let out = p.script("actions/status.sh", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopped"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no server answers"),
        "{out:?}"
    );

    // restart from stopped, then stop again.
    let out = p.ok("actions/server.sh", &["restart"]);
    assert!(out.contains("Server started"), "{out}");
    p.ok("actions/server.sh", &["stop"]);

    // REALTIME_LOG_FILE in the plugin's .env (relative: to the data directory): the server
    // logs there, and `server logs` and `server stop` follow that file.
    let mut env = std::fs::read_to_string(p.env_file()).unwrap();
    env.push_str("\nREALTIME_LOG_FILE=logs/realtime.log\nREALTIME_LOG_ROTATION=never\n");
    std::fs::write(p.env_file(), env).unwrap();
    let configured = p.data_dir().join("logs/realtime.log");
    let out = p.ok("actions/server.sh", &["start"]);
    assert!(out.contains(&configured.display().to_string()), "{out}");
    let out = p.ok("actions/server.sh", &["logs", "20"]);
    assert!(out.contains("nself-realtime listening"), "{out}");
    assert!(
        !out.contains("\x1b["),
        "colour codes in server logs: {out:?}"
    );
    let out = p.ok("actions/server.sh", &["stop"]);
    assert!(out.contains("drain complete"), "{out}");
    let log = std::fs::read_to_string(&configured).expect("REALTIME_LOG_FILE written");
    assert!(log.contains("nself-realtime listening"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "colour codes in {configured:?}: {log:?}"
    );

    // uninstall: refuses without --yes (no terminal), then drops the database file.
    let err = p.fails("uninstall.sh", &[]);
    assert!(err.contains("--yes"), "{err}");
    assert!(db.is_file(), "nothing dropped without --yes");
    let out = p.ok("uninstall.sh", &["--yes"]);
    assert!(out.contains("uninstalled"), "{out}");
    assert!(!db.exists(), "database file removed");
    assert!(!installed.exists(), "installed binary removed");
    assert!(p.env_file().is_file(), "configuration kept");
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("deploy/realtime.service")).unwrap();
    for line in [
        "Restart=on-failure",
        "User=nself-realtime",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ExecStart=/usr/local/bin/nself-realtime serve",
        "Environment=REALTIME_ENV=production",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    // No placeholder documentation link.
    for l in unit.lines().filter(|l| l.starts_with("Documentation=")) {
        assert!(
            !l.contains("example.") && !l.contains("invalid") && !l.contains("TODO"),
            "placeholder: {l}"
        );
    }
    // The stop timeout covers the default 30 s drain.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(stop >= 35, "TimeoutStopSec={stop} does not cover the drain");

    if !have("systemd-analyze") {
        println!(
            "SKIP systemd-analyze verify: systemd-analyze is not installed (apt-get install systemd)"
        );
        return;
    }
    // verify needs the ExecStart binary to exist: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("realtime.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/nself-realtime", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("systemd-analyze verify: {}\n{stderr}", out.status);
    assert!(out.status.success(), "{stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("realtime.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze warns: {ours:?}");
}

/// What hadolint would be asked here, checked directly: multi-stage, pinned bases (a tag by
/// default, with the build argument that pins a digest documented), a stripped binary, CA
/// certificates and a non-root user in the runtime stage, a HEALTHCHECK that needs no curl, the
/// plugins volume, exec-form entrypoint.
#[test]
fn containerfile_lint() {
    let text = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    let lines: Vec<String> = text
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let instr = |name: &str| -> Vec<&String> {
        lines
            .iter()
            .filter(|l| l.split_whitespace().next() == Some(name))
            .collect()
    };
    let froms = instr("FROM");
    assert!(froms.len() >= 2, "multi-stage build");
    // Build arguments declared before the first FROM, with their defaults: `FROM ${NAME}`.
    let first_from = lines.iter().position(|l| l.starts_with("FROM ")).unwrap();
    let args: Vec<(&str, &str)> = lines[..first_from]
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| a.trim().split_once('='))
        .collect();
    for f in &froms {
        let written = f.split_whitespace().nth(1).unwrap();
        let image = match written
            .strip_prefix("${")
            .and_then(|n| n.strip_suffix('}'))
            .or_else(|| written.strip_prefix('$'))
        {
            Some(name) => {
                let default = args
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("FROM {written}: no ARG {name} with a default"))
                    .1;
                assert!(
                    text.contains(&format!("--build-arg {name}=")) && text.contains("@sha256:"),
                    "document how to pin {name} by digest (--build-arg {name}=...@sha256:...)"
                );
                default
            }
            None => written,
        };
        assert!(
            image.contains("@sha256:") || (image.contains(':') && !image.ends_with(":latest")),
            "pin {image}"
        );
    }
    let runtime_start = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[runtime_start..];
    let build = &lines[..runtime_start];
    // The shipped binary carries neither debug info nor a symbol table.
    for setting in [
        "CARGO_PROFILE_RELEASE_DEBUG=0",
        "CARGO_PROFILE_RELEASE_STRIP=symbols",
    ] {
        assert!(
            build.iter().any(|l| l.contains(setting)),
            "build stage lacks {setting}"
        );
    }
    assert!(
        runtime.iter().any(|l| l.starts_with("RUN ")
            && l.contains("install")
            && l.contains("ca-certificates")),
        "runtime stage installs ca-certificates"
    );
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    assert!(
        !["root", "0", "0:0"].contains(&user.trim()),
        "runtime runs as root"
    );
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY --from=build")),
        "runtime copies the built binary"
    );
    assert!(
        !runtime.iter().any(|l| l.contains("cargo")),
        "no toolchain in the runtime stage"
    );
    let hc = instr("HEALTHCHECK");
    assert_eq!(hc.len(), 1);
    assert!(
        hc[0].contains("healthcheck") && hc[0].contains("CMD ["),
        "{}",
        hc[0]
    );
    assert!(instr("VOLUME").iter().any(|v| v.contains("/plugins")));
    assert!(instr("EXPOSE").iter().any(|v| v.contains("3101")));
    assert!(instr("STOPSIGNAL").iter().any(|v| v.contains("SIGTERM")));
    assert!(
        instr("ENTRYPOINT").iter().all(|e| e.contains('[')),
        "exec form"
    );
    assert!(instr("ADD").is_empty(), "COPY, not ADD");
    // The HEALTHCHECK subcommand exists in this binary.
    let out = Command::new(BIN)
        .args(["healthcheck", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Every variable the server reads is in `.env.example` with a meaning, and `plugin.json`
/// lists the same variables with the same defaults.
#[test]
fn env_example_and_plugin_manifest_list_every_variable() {
    let config = std::fs::read_to_string(repo().join("host/src/config.rs")).unwrap();
    let mut read: Vec<String> = Vec::new();
    for part in config.split('"').skip(1).step_by(2) {
        let is_var = part.len() > 3
            && part
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && ["REALTIME_", "POSTGRES_", "DATABASE_", "LOG_", "NODE_"]
                .iter()
                .any(|p| part.starts_with(p));
        if is_var && !read.contains(&part.to_string()) {
            read.push(part.to_string());
        }
    }
    read.push("RUST_LOG".into());
    assert!(read.len() > 50, "{read:?}");

    let example = std::fs::read_to_string(repo().join(".env.example")).unwrap();
    let mut documented = serde_json::Map::new();
    let mut previous = "";
    for line in example.lines() {
        if let Some((name, default)) = line
            .strip_prefix("# ")
            .and_then(|l| l.split_once('='))
            .filter(|(n, _)| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
        {
            assert!(
                previous.starts_with("# ") || previous.contains('='),
                "{name} has no meaning line above it"
            );
            documented.insert(name.to_string(), Value::String(default.to_string()));
        }
        previous = line;
    }
    for var in &read {
        assert!(documented.contains_key(var), ".env.example lacks {var}");
    }

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(plugin_dir().join("plugin.json")).unwrap())
            .unwrap();
    let env = manifest["env"].as_object().expect("plugin.json env");
    for (name, default) in &documented {
        assert_eq!(
            &env[name]["default"], default,
            "plugin.json default of {name}"
        );
        assert!(
            env[name]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "plugin.json meaning of {name}"
        );
    }
    assert_eq!(
        env.len(),
        documented.len(),
        "plugin.json lists other variables"
    );
    for cmd in ["init", "server", "status", "rooms"] {
        let script = manifest["commands"][cmd]["script"].as_str().unwrap();
        assert!(plugin_dir().join(script).is_file(), "{script}");
    }
}

#[test]
fn scripts_pass_shellcheck() {
    let dir = plugin_dir();
    let mut scripts = vec![
        dir.join("install.sh"),
        dir.join("uninstall.sh"),
        dir.join("lib/common.sh"),
    ];
    for e in std::fs::read_dir(dir.join("actions")).unwrap() {
        scripts.push(e.unwrap().path());
    }
    // The project's own scripts too.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for s in [
        "scripts/test",
        "scripts/build-plugins",
        "scripts/cluster-demo",
        "bench/compare.sh",
        "bench/pg-audit.sh",
        "bench/cpu-split.sh",
        ".ci/run",
    ] {
        scripts.push(root.join(s));
    }
    for s in &scripts {
        let out = Command::new("bash").arg("-n").arg(s).output().unwrap();
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            s.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !have("shellcheck") {
        println!("SKIP shellcheck: not installed (apt-get install shellcheck); bash -n passed");
        return;
    }
    let out = Command::new("shellcheck")
        .args(["-x", "-P", "SCRIPTDIR"])
        .args(&scripts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The guest SDK is published on its own, so it carries a copy of the interface: the copy must
/// be the interface the host implements, byte for byte.
#[test]
fn guest_sdk_carries_the_hosts_interface() {
    let root = repo();
    let host = std::fs::read(root.join("wit/realtime.wit")).expect("wit/realtime.wit");
    let sdk = std::fs::read(root.join("guest-sdk/wit/realtime.wit")).expect("guest-sdk/wit");
    assert!(
        host == sdk,
        "guest-sdk/wit/realtime.wit differs from wit/realtime.wit: copy it over"
    );
    let text = String::from_utf8_lossy(&host);
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("package nself:realtime@"))
        .map(|v| v.trim_end_matches(';').to_string())
        .expect("package line in wit/realtime.wit");
    let manifest =
        std::fs::read_to_string(root.join("guest-sdk/Cargo.toml")).expect("guest-sdk/Cargo.toml");
    assert!(
        manifest.contains(&format!("version = \"{version}\"")),
        "guest-sdk/Cargo.toml should carry the interface version {version}"
    );
}
