//! SPEC §3 token expiry on a live socket: `error {code: "TOKEN_EXPIRED"}` then a disconnect at
//! `exp` (+ leeway), unless `auth:refresh {token}` brought a valid token for the same user.

use std::time::Instant;

use nself_realtime_tests::token::token_expiring_in;
use nself_realtime_tests::{SioClient, TestHost, ms, user_token};
use serde_json::json;

const NO_LEEWAY: &[(&str, &str)] = &[("REALTIME_JWT_LEEWAY_SECONDS", "0")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_gets_token_expired_then_a_disconnect() {
    let host = TestHost::start(NO_LEEWAY).await;
    let started = Instant::now();
    let mut c = SioClient::connect(&host.url(), Some(&token_expiring_in("eve", 2)))
        .await
        .expect("valid for 2 s");
    let err = c
        .next_event("error", ms(6000))
        .await
        .expect("error TOKEN_EXPIRED at exp");
    assert_eq!(err["code"], json!("TOKEN_EXPIRED"), "{err}");
    assert!(
        started.elapsed() >= ms(900),
        "expired too early: {:?}",
        started.elapsed()
    );
    let reason = c.wait_disconnect(ms(3000)).await;
    assert!(
        reason.is_some(),
        "the socket must be disconnected after TOKEN_EXPIRED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_keeps_the_socket() {
    let host = TestHost::start(NO_LEEWAY).await;
    let mut c = SioClient::connect(&host.url(), Some(&token_expiring_in("eve", 2)))
        .await
        .expect("valid for 2 s");
    let ack = c
        .emit_ack(
            "auth:refresh",
            json!({"token": user_token("eve")}),
            ms(5000),
        )
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    c.expect_none("error", ms(3500)).await;
    assert!(
        c.disconnect_reason().is_none(),
        "{:?}",
        c.disconnect_reason()
    );
    c.emit_args("ping", &[]);
    c.next_event("pong", ms(3000))
        .await
        .expect("still connected after the old exp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_for_another_user_is_refused() {
    let host = TestHost::start(NO_LEEWAY).await;
    let mut c = SioClient::connect(&host.url(), Some(&token_expiring_in("eve", 2)))
        .await
        .expect("valid for 2 s");
    let ack = c
        .emit_ack(
            "auth:refresh",
            json!({"token": user_token("mallory")}),
            ms(5000),
        )
        .await;
    assert_eq!(ack["success"], json!(false), "{ack}");
    let ack = c
        .emit_ack("auth:refresh", json!({"token": "garbage"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(false), "{ack}");
    let ack = c
        .emit_ack(
            "auth:refresh",
            json!({"token": nself_realtime_tests::token::expired_token("eve")}),
            ms(5000),
        )
        .await;
    assert_eq!(ack["success"], json!(false), "{ack}");
    // The identity did not change: messages still come from eve.
    c.emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    let sent = c
        .emit_ack(
            "message:send",
            json!({"roomName": "general", "content": "who"}),
            ms(5000),
        )
        .await;
    assert_eq!(sent["success"], json!(true), "{sent}");
    let msg = c
        .next_event("message:new", ms(3000))
        .await
        .expect("message");
    assert_eq!(msg["userId"], json!("eve"));
    // And the original expiry still applies.
    let err = c
        .next_event("error", ms(6000))
        .await
        .expect("TOKEN_EXPIRED");
    assert_eq!(err["code"], json!("TOKEN_EXPIRED"), "{err}");
    assert!(c.wait_disconnect(ms(3000)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leeway_delays_the_expiry() {
    let host = TestHost::start(&[("REALTIME_JWT_LEEWAY_SECONDS", "3")]).await;
    let mut c = SioClient::connect(&host.url(), Some(&token_expiring_in("eve", 1)))
        .await
        .expect("valid");
    // exp is ~1 s away, leeway 3 s: nothing before ~3 s.
    c.expect_none("error", ms(2500)).await;
    assert!(c.disconnect_reason().is_none());
    let err = c
        .next_event("error", ms(5000))
        .await
        .expect("TOKEN_EXPIRED after leeway");
    assert_eq!(err["code"], json!("TOKEN_EXPIRED"));
}
