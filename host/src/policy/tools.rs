//! What the CLI's `plugin check` and `plugin run` do with one module file, without a server:
//! the same checks and the same calls as a server makes, reported as JSON.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use super::bindings::{Event, Identity as WitIdentity, RoomInfo as WitRoom};
use super::engine::{Limits, Runtime};
use super::kv::MemoryKv;
use super::sidecar::Sidecar;
use super::{Checked, check_verdict};

/// What `plugin run` sends the module.
#[derive(Debug, Clone, Default)]
pub struct RunEvent {
    /// Event name (`message:send`, `room:join`, `connect`, ...).
    pub name: String,
    /// Its payload.
    pub payload: Value,
    /// The sender's user id (None: anonymous).
    pub user: Option<String>,
    /// The sender's roles.
    pub roles: Vec<String>,
    /// The targeted room's name, if any (a public channel unless said otherwise).
    pub room: Option<String>,
    /// The room's type.
    pub room_type: Option<String>,
    /// The room's visibility.
    pub visibility: Option<String>,
    /// The sender's role in the room.
    pub member_role: Option<String>,
}

/// A loaded module file and its settings.
struct Opened {
    module: super::engine::Module,
    report: Value,
    limits_ms: u64,
}

fn open(path: &Path, config: Option<&str>) -> Result<Opened, String> {
    let wasm = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    // The sidecar the server would pair with the file.
    let sidecar_path = super::registry::sidecar_beside(path);
    let sidecar_text = sidecar_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let sidecar = match (&sidecar_text, &sidecar_path) {
        (Some(t), Some(p)) => Sidecar::parse(t).map_err(|e| format!("{}: {e}", p.display()))?,
        _ => Sidecar::default(),
    };
    let runtime = Runtime::new(None).map_err(|e| format!("engine: {e:#}"))?;
    let component = runtime.compile(&wasm, "").map_err(|e| e.to_string())?;
    let imports = runtime.imports(&component);
    let config = config
        .map(str::to_string)
        .or(sidecar.config.clone())
        .unwrap_or_default();
    let timeout = sidecar.timeout_ms.unwrap_or(10);
    let limits = Limits {
        timeout: std::time::Duration::from_millis(timeout),
        memory_bytes: (sidecar.memory_mb.unwrap_or(16) as usize) << 20,
    };
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (module, d) = runtime
        .load(
            component,
            limits,
            Arc::new(MemoryKv::default()),
            &config,
            &file,
        )
        .map_err(|e| e.to_string())?;
    let report = json!({
        "file": file,
        "interface": module.version().as_str(),
        "name": d.name,
        "version": d.version,
        "events": sidecar.events.clone().unwrap_or(d.events),
        "priority": sidecar.priority.unwrap_or(d.priority),
        "accepted": d.accepted,
        "imports": imports,
        "sidecar": sidecar_path.as_ref().filter(|_| sidecar_text.is_some()).map(|p| p.display().to_string()),
        "mode": sidecar.mode,
        "onError": match sidecar.on_error { super::OnError::Deny => "deny", super::OnError::Allow => "allow" },
    });
    Ok(Opened {
        module,
        report,
        limits_ms: timeout,
    })
}

/// Loads the file as a server would (interface version, imports, sidecar, `describe` with
/// `config` or the sidecar's): its description, or why it would not load.
pub fn check(path: &Path, config: Option<&str>) -> Result<Value, String> {
    open(path, config).map(|o| o.report)
}

/// Loads the file and sends it one event: the verdict, as the server would see it.
pub fn run(path: &Path, config: Option<&str>, e: RunEvent) -> Result<Value, String> {
    let opened = open(path, config)?;
    let claims = json!({ "userId": e.user, "roles": e.roles });
    let event = Event {
        name: e.name.clone(),
        payload_json: e.payload.to_string(),
        socket_id: "cli".into(),
        identity: WitIdentity {
            user_id: e.user.clone(),
            session_id: None,
            roles: e.roles.clone(),
            claims_json: claims.to_string(),
        },
        room: e.room.map(|name| WitRoom {
            name,
            room_type: e.room_type.unwrap_or_else(|| "channel".into()),
            visibility: e.visibility.unwrap_or_else(|| "public".into()),
            member_role: e.member_role,
        }),
    };
    let started = std::time::Instant::now();
    let verdict = opened.module.handle(&event).map_err(|err| {
        format!(
            "the call failed ({err}); the server would refuse the event (POLICY_REJECTED) unless the sidecar says on_error = \"allow\" (deadline {} ms)",
            opened.limits_ms
        )
    })?;
    let micros = started.elapsed().as_micros() as u64;
    let name = opened.report["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let out = match check_verdict(verdict, &name, 1_000_000)? {
        Checked::Allow => json!({ "verdict": "allow" }),
        Checked::Modify(_, payload) => json!({ "verdict": "modify", "payload": payload }),
        Checked::Reject(error) => json!({ "verdict": "reject", "error": error }),
    };
    let mut out = out;
    out["module"] = json!(name);
    out["event"] = json!(e.name);
    out["micros"] = json!(micros);
    Ok(out)
}
