//! `nself-realtime plugin new|check|run`: a module author's tools, without a server.
//!
//! - `new NAME [--dir D]` writes a module crate (`D/NAME`): Cargo.toml, src/lib.rs with a tested
//!   example policy, the `NAME.toml` sidecar, a README, and a copy of the guest SDK this binary
//!   was built with (so the crate builds anywhere, offline from this repository).
//! - `check FILE.wasm [--config JSON]` loads the file as the server would and prints what it
//!   found (interface version, imports, descriptor, sidecar), or exits 1 with the reason.
//! - `run FILE.wasm --event E --payload JSON [...]` sends it one event and prints the verdict.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use super::PluginCommand;
use crate::policy::tools::{self, RunEvent};

/// Files of a scaffolded crate: path inside it, template.
const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("template/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("template/lib.rs.tmpl")),
    ("README.md", include_str!("template/README.md.tmpl")),
    (".gitignore", include_str!("template/gitignore.tmpl")),
];

/// The guest SDK as this binary was built with it: path inside `vendor/nself-realtime-guest/`,
/// contents.
const SDK: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../guest-sdk/Cargo.toml")),
    ("README.md", include_str!("../../../guest-sdk/README.md")),
    (
        "wit/realtime.wit",
        include_str!("../../../guest-sdk/wit/realtime.wit"),
    ),
    ("src/lib.rs", include_str!("../../../guest-sdk/src/lib.rs")),
    (
        "src/event.rs",
        include_str!("../../../guest-sdk/src/event.rs"),
    ),
    (
        "src/glue.rs",
        include_str!("../../../guest-sdk/src/glue.rs"),
    ),
    (
        "src/host.rs",
        include_str!("../../../guest-sdk/src/host.rs"),
    ),
    (
        "src/payloads.rs",
        include_str!("../../../guest-sdk/src/payloads.rs"),
    ),
    (
        "src/testing.rs",
        include_str!("../../../guest-sdk/src/testing.rs"),
    ),
    (
        "src/verdict.rs",
        include_str!("../../../guest-sdk/src/verdict.rs"),
    ),
];

/// Runs a `plugin` action.
pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { name, dir, json } => {
            let root = scaffold(&name, &dir)?;
            if json {
                print_json(&serde_json::json!({ "created": root, "name": name }))
            } else {
                let file = name.replace('-', "_");
                println!("Created policy module crate {}", root.display());
                println!();
                println!("  cd {}", root.display());
                println!("  cargo test");
                println!("  cargo build --release --target wasm32-wasip2");
                println!("  nself-realtime plugin check target/wasm32-wasip2/release/{file}.wasm");
                println!(
                    "  cp target/wasm32-wasip2/release/{file}.wasm {name}.toml \"$REALTIME_PLUGINS_DIR\"/"
                );
                Ok(())
            }
        }
        PluginCommand::Check { file, config } => {
            let report = tools::check(&file, config.as_deref()).map_err(|e| refused(&file, e))?;
            print_json(&report)
        }
        PluginCommand::Run {
            file,
            event,
            payload,
            user,
            roles,
            room,
            room_type,
            visibility,
            member_role,
            config,
        } => {
            let payload: Value = serde_json::from_str(&payload)
                .context("--payload is not JSON (give the event's payload object)")?;
            let roles = roles
                .map(|r| {
                    r.split(',')
                        .map(str::trim)
                        .filter(|r| !r.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let e = RunEvent {
                name: event,
                payload,
                user,
                roles,
                room,
                room_type,
                visibility,
                member_role,
            };
            let verdict = tools::run(&file, config.as_deref(), e).map_err(|e| refused(&file, e))?;
            print_json(&verdict)
        }
    }
}

fn refused(file: &Path, reason: String) -> anyhow::Error {
    anyhow::anyhow!("{}: {reason}", file.display())
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// A crate (and module) name: 1-64 of `a-z 0-9 - _`, starting with a letter.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Writes the crate `dir/name`; refuses a bad name or an existing directory (nothing written).
pub fn scaffold(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    if !valid_name(name) {
        bail!(
            "invalid module name {name:?}: use 1-64 of a-z 0-9 - _, starting with a letter (e.g. slow-mode)"
        );
    }
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{} already exists: choose another name or --dir",
            root.display()
        );
    }
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{file}}", &name.replace('-', "_"))
    };
    let mut files: Vec<(PathBuf, String)> = TEMPLATE
        .iter()
        .map(|(path, t)| (root.join(path), fill(t)))
        .collect();
    files.push((
        root.join(format!("{name}.toml")),
        fill(include_str!("template/sidecar.toml.tmpl")),
    ));
    let sdk = root.join("vendor/nself-realtime-guest");
    files.extend(
        SDK.iter()
            .map(|(path, text)| (sdk.join(path), text.to_string())),
    );
    let write = || -> std::io::Result<()> {
        for (path, text) in &files {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&root);
        return Err(e).with_context(|| format!("cannot write {}", root.display()));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(scaffold("Bad Name", dir.path()).is_err());
        assert!(scaffold("../escape", dir.path()).is_err());
        let root = scaffold("slow-guard", dir.path()).expect("written");
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("lib.rs");
        assert!(lib.contains(r#"Descriptor::new("slow-guard""#), "{lib}");
        assert!(root.join("slow-guard.toml").is_file());
        assert!(
            root.join("vendor/nself-realtime-guest/wit/realtime.wit")
                .is_file()
        );
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
        assert!(readme.contains("release/slow_guard.wasm"), "{readme}");
        let again = scaffold("slow-guard", dir.path()).expect_err("exists");
        assert!(again.to_string().contains("already exists"), "{again}");
    }
}
