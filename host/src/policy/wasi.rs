//! The few WASI functions a policy module may use, and nothing else: randomness (Rust's
//! `HashMap` seeds itself from it) and clocks. Every other WASI import of a module (stdio,
//! environment, exit) is linked as a trap by the engine: present, never granted. Filesystem,
//! sockets and HTTP imports are refused at load time (see `engine::check_interface`).
//!
//! Definitions are made under the exact versioned names the component imports, so modules
//! built by any WASI 0.2.x toolchain link.

use wasmtime::component::{Component, ComponentType, Linker, Lower, types::ComponentItem};
use wasmtime::{Engine, Result};

use super::engine::State;

/// `wasi:clocks/wall-clock.datetime`.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
struct Datetime {
    seconds: u64,
    nanoseconds: u32,
}

fn random_bytes(len: u64) -> Vec<u8> {
    // Modules get randomness for hashing, not for secrets; cap what one call may ask for.
    let len = len.min(1 << 16) as usize;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(&uuid::Uuid::new_v4().into_bytes());
    }
    out.truncate(len);
    out
}

fn random_u64() -> u64 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Defines the supported WASI functions that `component` imports.
pub fn define(linker: &mut Linker<State>, engine: &Engine, component: &Component) -> Result<()> {
    let imports: Vec<(String, ComponentItem)> = component
        .component_type()
        .imports(engine)
        .map(|(n, i)| (n.to_string(), i.ty))
        .collect();
    for (name, item) in imports {
        let ComponentItem::ComponentInstance(ty) = item else {
            continue;
        };
        let funcs: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        let has = |f: &str| funcs.iter().any(|n| n == f);
        let mut inst = linker.instance(&name)?;
        if name.starts_with("wasi:random/random@") {
            if has("get-random-bytes") {
                inst.func_wrap("get-random-bytes", |_, (len,): (u64,)| {
                    Ok((random_bytes(len),))
                })?;
            }
            if has("get-random-u64") {
                inst.func_wrap("get-random-u64", |_, (): ()| Ok((random_u64(),)))?;
            }
        } else if name.starts_with("wasi:random/insecure@") {
            if has("get-insecure-random-bytes") {
                inst.func_wrap("get-insecure-random-bytes", |_, (len,): (u64,)| {
                    Ok((random_bytes(len),))
                })?;
            }
            if has("get-insecure-random-u64") {
                inst.func_wrap("get-insecure-random-u64", |_, (): ()| Ok((random_u64(),)))?;
            }
        } else if name.starts_with("wasi:random/insecure-seed@") {
            if has("insecure-seed") {
                inst.func_wrap("insecure-seed", |_, (): ()| {
                    Ok(((random_u64(), random_u64()),))
                })?;
            }
        } else if name.starts_with("wasi:clocks/wall-clock@") {
            if has("now") {
                inst.func_wrap("now", |_, (): ()| {
                    let d = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    Ok((Datetime {
                        seconds: d.as_secs(),
                        nanoseconds: d.subsec_nanos(),
                    },))
                })?;
            }
            if has("resolution") {
                inst.func_wrap("resolution", |_, (): ()| {
                    Ok((Datetime {
                        seconds: 0,
                        nanoseconds: 1000,
                    },))
                })?;
            }
        } else if name.starts_with("wasi:clocks/monotonic-clock@") {
            if has("now") {
                inst.func_wrap("now", |_, (): ()| Ok((monotonic_ns(),)))?;
            }
            if has("resolution") {
                inst.func_wrap("resolution", |_, (): ()| Ok((1000u64,)))?;
            }
        }
    }
    Ok(())
}

fn monotonic_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
