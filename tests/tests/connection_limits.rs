//! SPEC §4: REALTIME_MAX_CONNECTIONS → `Server at capacity`; REALTIME_RATE_LIMIT new connections
//! per minute per IP → `Too many connections`; both as `connect_error`.

use std::time::Instant;

use nself_realtime_tests::{ConnectErrorKind, SioClient, TestHost, ms, user_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_server_at_capacity() {
    let host = TestHost::start(&[("REALTIME_MAX_CONNECTIONS", "2")]).await;
    let url = host.url();
    let c1 = host.client("a").await;
    let _c2 = host.client("b").await;
    let err = SioClient::connect(&url, Some(&user_token("c")))
        .await
        .err()
        .expect("the third connection must be refused");
    assert_eq!(err.kind, ConnectErrorKind::Refused, "{err}");
    assert_eq!(err.message, "Server at capacity");
    // A freed slot can be used again.
    c1.close().await;
    let deadline = Instant::now() + ms(3000);
    loop {
        match SioClient::connect(&url, Some(&user_token("c"))).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.message, "Server at capacity", "{e}");
                assert!(Instant::now() < deadline, "slot not freed after a close");
                tokio::time::sleep(ms(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_per_ip_refuses_with_too_many_connections() {
    let host = TestHost::start(&[("REALTIME_RATE_LIMIT", "3")]).await;
    let url = host.url();
    for i in 0..3 {
        let c = SioClient::connect(&url, Some(&user_token("r")))
            .await
            .unwrap_or_else(|e| panic!("connection {i} within the limit: {e}"));
        c.close().await;
    }
    let err = SioClient::connect(&url, Some(&user_token("r")))
        .await
        .err()
        .expect("the 4th connection in a minute must be refused");
    assert_eq!(err.kind, ConnectErrorKind::Refused, "{err}");
    assert_eq!(err.message, "Too many connections");
    // HTTP endpoints are not connections.
    let (status, _) = host.http_get("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_disables_the_connection_rate_limit() {
    let host = TestHost::start(&[("REALTIME_RATE_LIMIT", "0")]).await;
    for i in 0..150 {
        let c = SioClient::connect(&host.url(), Some(&user_token("many")))
            .await
            .unwrap_or_else(|e| panic!("connection {i} with the limit disabled: {e}"));
        c.close().await;
    }
}
