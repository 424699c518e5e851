//! SPEC §4 graceful shutdown: cancelling the token disconnects clients with a reconnectable
//! reason, `run` returns within REALTIME_SHUTDOWN_TIMEOUT, and new connections are refused.

use std::time::Instant;

use nself_realtime_tests::{SioClient, TestHost, ms, user_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_disconnects_clients_and_returns_in_time() {
    let mut host = TestHost::start(&[("REALTIME_SHUTDOWN_TIMEOUT", "3000")]).await;
    let url = host.url();
    let mut a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    let _idle = host.client("idle").await;

    let started = Instant::now();
    let cancel = host.cancel_token();
    let run = tokio::spawn(async move {
        let result = host.shutdown_within(ms(8000)).await;
        (result, host)
    });
    cancel.cancel();
    for (name, c) in [("alice", &mut a), ("bob", &mut b)] {
        let reason = c
            .wait_disconnect(ms(5000))
            .await
            .unwrap_or_else(|| panic!("{name} still connected 5 s after shutdown began"));
        // `io server disconnect` (a `41` packet) tells socket.io-client NOT to reconnect.
        assert_ne!(
            reason, "io server disconnect",
            "clients must be disconnected with a reconnectable reason"
        );
    }
    let (result, _host) = run.await.expect("shutdown task");
    result.expect("server::run returns Ok within the shutdown timeout");
    let took = started.elapsed();
    assert!(took < ms(3000 + 2000), "run returned after {took:?}");

    let refused = SioClient::connect(&url, Some(&user_token("late"))).await;
    assert!(
        refused.is_err(),
        "a new connection after shutdown must be refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_clients_is_quick() {
    let mut host = TestHost::start(&[]).await;
    let started = Instant::now();
    host.shutdown_within(ms(5000))
        .await
        .expect("idle server stops cleanly");
    assert!(started.elapsed() < ms(2000), "took {:?}", started.elapsed());
    let r = reqwest::Client::builder()
        .no_proxy()
        .timeout(ms(2000))
        .build()
        .expect("client")
        .get(format!("{}/health/live", host.url()))
        .send()
        .await;
    assert!(r.is_err(), "HTTP must be gone after run returned: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_connections_and_reports_not_ready() {
    let host = TestHost::start(&[("REALTIME_SHUTDOWN_TIMEOUT", "3000")]).await;
    // A client that keeps the server busy draining: it never answers the close itself.
    let _held = host.joined("held", "general").await;
    host.cancel_token().cancel();
    // During the drain and after it, a new socket is refused and readiness is not 200.
    let refused = SioClient::connect(&host.url(), Some(&user_token("late"))).await;
    assert!(refused.is_err(), "connect during shutdown must be refused");
    if let Ok(r) = host.try_http_request("/health/ready", &[]).await {
        assert_ne!(r.status, 200, "readiness must go false during shutdown");
    }
}
