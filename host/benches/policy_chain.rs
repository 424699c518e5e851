//! The cost of the policy chain per event: one `allow-all` module on a 64-byte `message:send`
//! payload, and the four example modules together. Needs `scripts/build-plugins` first.
//!
//! ```sh
//! scripts/build-plugins && cargo bench -p nself-realtime --bench policy_chain
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use nself_realtime::auth::Identity;
use nself_realtime::metrics::Metrics;
use nself_realtime::policy::kv::MemoryKv;
use nself_realtime::policy::{ChainResult, Policies, PolicyIdentity, PolicyRoom, Settings};
use serde_json::json;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

fn chain(modules: &[&str]) -> (tempfile::TempDir, Arc<Policies>) {
    let dir = tempfile::tempdir().expect("temp dir");
    for m in modules {
        let src = dist().join(format!("{m}.wasm"));
        std::fs::copy(&src, dir.path().join(format!("{m}.wasm")))
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-plugins)", src.display()));
    }
    // The limiter still counts every event in its key/value store, but never says no here.
    std::fs::write(
        dir.path().join("rate-limiter.toml"),
        "config = '{\"limit\": 1000000000, \"windowMs\": 3600000}'\n",
    )
    .expect("sidecar");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ext = rt
        .block_on(Policies::start(
            Settings {
                dir: dir.path().to_path_buf(),
                cache_dir: None,
                timeout: Duration::from_millis(10),
                memory_bytes: 16 << 20,
                max_payload: 1_000_000,
            },
            Arc::new(MemoryKv::default()),
            Arc::new(Metrics::new()),
        ))
        .expect("extensions");
    let live = ext.status();
    assert_eq!(live.len(), modules.len(), "{live:?}");
    assert!(live.iter().all(|s| s.status == "loaded"), "{live:?}");
    (dir, ext)
}

fn bench(c: &mut Criterion) {
    // A `message:send` payload of exactly 64 bytes of JSON.
    let base = json!({"roomName": "general", "content": ""})
        .to_string()
        .len();
    let payload = json!({"roomName": "general", "content": "x".repeat(64 - base)});
    assert_eq!(payload.to_string().len(), 64, "{payload}");
    let identity = PolicyIdentity::new(&Identity {
        user_id: Some("user-1".into()),
        session_id: Some("s-1".into()),
        roles: vec!["member".into()],
        claims: json!({"userId": "user-1"}),
        expires_at: None,
    });
    let room = PolicyRoom {
        name: "general".into(),
        room_type: "channel".into(),
        visibility: "public".into(),
        member_role: Some("member".into()),
    };
    let mut group = c.benchmark_group("policy_chain");
    for (label, modules) in [
        ("allow-all", vec!["allow-all"]),
        (
            "four-examples",
            vec!["sanitizer", "profanity", "room-policy", "rate-limiter"],
        ),
    ] {
        let (_dir, ext) = chain(&modules);
        group.bench_function(label, |b| {
            b.iter(|| {
                let r = ext.run("message:send", &payload, "socket-1", &identity, Some(&room));
                assert!(matches!(r, ChainResult::Pass { .. }), "{r:?}");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
