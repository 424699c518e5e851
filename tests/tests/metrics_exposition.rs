//! Issue 17: the Prometheus text is what `text/plain; version=0.0.4` promises: `promtool check
//! metrics` accepts it with no complaint, every sample belongs to a family with HELP and TYPE,
//! `process_*` and `realtime_build_info` are there, known labels exist at zero, and every
//! metric the shipped alert rules and dashboard use is exported.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nself_realtime_tests::{TestHost, ms, plugin_wasm};
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool() -> Option<&'static str> {
    let ok = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some("promtool")
    } else {
        eprintln!("SKIP promtool checks: promtool is not installed (Debian package prometheus)");
        None
    }
}

/// Metric names (`realtime_*`, `process_*`) in a text of expressions.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["realtime_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let boundary = at == 0
                || !rest.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && rest.as_bytes()[at - 1] != b'_';
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if boundary {
                names.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_text_passes_promtool_and_covers_the_shipped_rules_and_dashboard() {
    // With a policy module, so that its families have series.
    let host = TestHost::start_with_plugins(
        &[("REALTIME_NODE_ID", "node-exposition")],
        &[("profanity.wasm", plugin_wasm("profanity"))],
    )
    .await;
    let mut c = host.joined("u1", "general").await;
    let ack = c.send_message("general", "hello").await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let ack = c
        .emit_ack("room:join", json!({"roomName": "nope-404"}), ms(5000))
        .await;
    assert_eq!(ack["error"]["code"], "ROOM_NOT_FOUND", "{ack}");

    let r = host.http_request("/metrics?format=prometheus", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type
    );
    let text = r.body;
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    for want in [
        "# TYPE realtime_events_total counter",
        "# HELP realtime_events_total ",
        r#"realtime_events_total{event="message:send"} 1"#,
        r#"realtime_errors_total{code="ROOM_NOT_FOUND"} 1"#,
        // Known labels before their first event.
        r#"realtime_errors_total{code="MUTED"} 0"#,
        r#"realtime_events_total{event="typing:start"} 0"#,
        r#"realtime_connections_refused_total{reason="capacity"} 0"#,
        r#"realtime_build_info{version=""#,
        r#"node_id="node-exposition"} 1"#,
        "# TYPE process_cpu_seconds_total counter",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "realtime_rooms_active ",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} sample"))
    };
    assert!(value("process_open_fds") > 0.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_start_time_seconds") > 1.7e9);
    assert!(value("realtime_rooms_active") >= 1.0);

    // Every sample belongs to a family announced by HELP and TYPE (a strict reading of the
    // 0.0.4 format, whether or not promtool is installed).
    let typed: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.split(' ').next())
        .collect();
    let helped: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|r| r.split(' ').next())
        .collect();
    assert_eq!(typed, helped, "HELP and TYPE for the same families");
    let mut exported = BTreeSet::new();
    for sample in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = sample.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{sample}: no # TYPE {family}");
        exported.insert(name.to_string());
    }

    // The shipped alert rules and dashboard only use metrics that exist.
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).expect("rules");
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/nself-realtime.json"))
        .expect("dashboard");
    let board: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let exprs: Vec<String> = board["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let used: BTreeSet<String> = names_in(&rules)
        .into_iter()
        .chain(exprs.iter().flat_map(|e| names_in(e)))
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(
            exported.contains(name),
            "{name} is used by the rules or the dashboard but not exported"
        );
    }

    if let Some(tool) = promtool() {
        let mut child = Command::new(tool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("promtool");
        let complaints = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && complaints.trim().is_empty(),
            "promtool check metrics: {complaints}"
        );
        let out = Command::new(tool)
            .args(["check", "rules"])
            .arg(repo().join("deploy/prometheus/alerts.yml"))
            .output()
            .expect("promtool check rules");
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // OpenMetrics on request: the same families, OpenMetrics naming, and its end marker.
    let r = host
        .http_request("/metrics", &[("Accept", "application/openmetrics-text")])
        .await;
    assert!(r.content_type.starts_with("application/openmetrics-text"));
    assert!(
        r.body.contains("# TYPE realtime_events counter"),
        "{}",
        r.body
    );
    assert!(r.body.trim_end().ends_with("# EOF"));
}
