//! SPEC §2 Origin allow-list (REALTIME_CORS_ORIGIN) on the websocket upgrade and on polling;
//! a request without Origin is allowed; `*` allows all.

use nself_realtime_tests::{ConnectOptions, SioClient, TestHost, user_token};

fn with_origin(origin: &str) -> ConnectOptions {
    ConnectOptions::token(&user_token("web")).header("Origin", origin)
}

const POLL: &str = "/socket.io/?EIO=4&transport=polling";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_checks_origin() {
    let host = TestHost::start(&[(
        "REALTIME_CORS_ORIGIN",
        "http://good.example, http://other.example",
    )])
    .await;
    let url = host.url();
    let err = SioClient::connect_with(&url, with_origin("http://evil.example"))
        .await
        .err()
        .expect("a websocket from a foreign Origin must be refused");
    eprintln!("evil origin refused: {err}");
    SioClient::connect_with(&url, with_origin("http://good.example"))
        .await
        .expect("allowed origin");
    SioClient::connect_with(&url, with_origin("http://other.example"))
        .await
        .expect("second allowed origin");
    SioClient::connect_with(&url, ConnectOptions::token(&user_token("cli")))
        .await
        .expect("no Origin header (non-browser client)");
    // Prefix tricks are not a match.
    SioClient::connect_with(&url, with_origin("http://good.example.evil.example"))
        .await
        .err()
        .expect("a look-alike origin must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_checks_origin() {
    let host = TestHost::start(&[("REALTIME_CORS_ORIGIN", "http://good.example")]).await;
    let evil = host
        .http_request(POLL, &[("Origin", "http://evil.example")])
        .await;
    assert!(
        evil.status >= 400,
        "polling handshake from a foreign Origin must be refused, got {} {}",
        evil.status,
        evil.body
    );
    assert_ne!(
        evil.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("http://evil.example")
    );
    let good = host
        .http_request(POLL, &[("Origin", "http://good.example")])
        .await;
    assert_eq!(good.status, 200, "{}", good.body);
    assert!(
        good.body.starts_with('0') || good.body.contains("\"sid\""),
        "{}",
        good.body
    );
    assert_eq!(
        good.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("http://good.example")
    );
    let none = host.http_request(POLL, &[]).await;
    assert_eq!(none.status, 200, "{}", none.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_allows_every_origin() {
    let host = TestHost::start(&[("REALTIME_CORS_ORIGIN", "*")]).await;
    SioClient::connect_with(&host.url(), with_origin("http://anything.example"))
        .await
        .expect("* allows any origin");
    let r = host
        .http_request(POLL, &[("Origin", "http://anything.example")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}
