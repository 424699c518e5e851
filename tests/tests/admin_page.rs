//! Issue 17, item 2: the admin page (`/admin`): off unless enabled, refused at start without an
//! API key, served with a strict content security policy, and driven in a real headless
//! Chromium (`tests/node/admin_page.mjs`, Debian's `chromium` through playwright-core).

use std::path::PathBuf;
use std::process::Stdio;

use nself_realtime_tests::{TEST_SECRET, TestHost, plugin_wasm};

const KEY: &str = "admin-page-test-key-0123456789";

fn chromium() -> PathBuf {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "no Chromium at {}: install Debian's `chromium` package (scripts/test and .ci/run do) \
         or set CHROMIUM to a Chromium executable",
        path.display()
    );
    path
}

#[tokio::test]
async fn admin_page_is_off_unless_enabled() {
    let host = TestHost::start(&[("REALTIME_API_KEY", KEY)]).await;
    let (status, _) = host.http_get("/admin").await;
    assert_eq!(status, 404, "the page is off by default");

    // Enabled without an API key: the server refuses to start, naming the variable.
    let cwd = tempfile::tempdir().expect("temp dir");
    let port = nself_realtime_tests::free_port().to_string();
    let mut child = nself_realtime_tests::process::command(&[
        ("REALTIME_ENABLE_ADMIN", "true"),
        ("REALTIME_API_KEY", ""),
        ("REALTIME_PORT", &port),
    ])
    .arg("serve")
    .current_dir(cwd.path())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn nself-realtime serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with REALTIME_ENABLE_ADMIN and no REALTIME_API_KEY");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("REALTIME_ENABLE_ADMIN"), "{stderr}");

    let host =
        TestHost::start(&[("REALTIME_API_KEY", KEY), ("REALTIME_ENABLE_ADMIN", "true")]).await;
    let page = host.http_request("/admin", &[]).await;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    let csp = page
        .headers
        .get("content-security-policy")
        .cloned()
        .unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no external assets"
    );
    // The page holds no data: its API calls still need the key.
    let (status, _) = host.http_get("/api/nodes").await;
    assert_eq!(status, 401);
    for asset in ["/admin/app.js", "/admin/app.css"] {
        let r = host.http_request(asset, &[]).await;
        assert_eq!(r.status, 200, "{asset}");
        assert!(
            !r.body.contains("https://"),
            "{asset} loads nothing from elsewhere"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_headless_chromium() {
    let chromium = chromium();
    let host = TestHost::start_with_plugins(
        &[("REALTIME_API_KEY", KEY), ("REALTIME_ENABLE_ADMIN", "true")],
        &[("sanitizer.wasm", plugin_wasm("sanitizer"))],
    )
    .await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    assert!(
        dir.join("node_modules").join("playwright-core").is_dir(),
        "tests/node/node_modules is missing playwright-core: run `npm ci --prefix tests/node`"
    );
    let shots = tempfile::tempdir().expect("temp dir");
    let screenshot = std::env::var("ADMIN_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| shots.path().join("admin.png"));
    let child = tokio::process::Command::new("node")
        .arg(dir.join("admin_page.mjs"))
        .current_dir(&dir)
        .env("SERVER_URL", host.url())
        .env("JWT_SECRET", TEST_SECRET)
        .env("API_KEY", KEY)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOT", &screenshot)
        .env("SCRIPT_TIMEOUT_MS", "60000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `node`: {e}"));
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("admin_page.mjs did not finish within 90 s")
        .expect("node output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(
        out.status.success(),
        "admin_page.mjs failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("PASS admin page"), "{stdout}");
    let png = std::fs::read(&screenshot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
}
