//! Issue 17: `token` mints what a real server accepts (user, roles, expiry), `check-token` says
//! the same as the server's handshake and, when it refuses, why.

use nself_realtime_tests::process::run_cli;
use nself_realtime_tests::{SioClient, TEST_SECRET, TestHost, ms, token};
use serde_json::{Value, json};

fn run(vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    run_cli(vars, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_connects_and_check_token_agrees_with_the_server() {
    let secret = [("REALTIME_JWT_SECRET", TEST_SECRET)];
    let out = run(
        &secret,
        &[
            "token",
            "--user",
            "ops-7",
            "--roles",
            "moderator,vip",
            "--ttl",
            "10m",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let minted: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let jwt = minted["token"].as_str().expect("token").to_string();
    assert_eq!(minted["claims"]["roles"], json!(["moderator", "vip"]));
    let exp = minted["claims"]["exp"].as_i64().expect("exp");
    let iat = minted["claims"]["iat"].as_i64().expect("iat");
    assert_eq!(exp - iat, 600);

    // A real server accepts it as ops-7.
    let host = TestHost::start(&[]).await;
    let mut c = SioClient::connect(&host.url(), Some(&jwt))
        .await
        .expect("connect with the minted token");
    let who = c
        .next_event("authenticated", ms(5000))
        .await
        .expect("authenticated");
    assert_eq!(who["userId"], "ops-7", "{who}");

    let out = run(&secret, &["check-token", &jwt, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["userId"], "ops-7");
    assert_eq!(report["verified"], true);
    assert_eq!(report["roles"], json!(["moderator", "vip"]));

    // Another secret: refused by the server and by check-token, which says why.
    let other = run(
        &[("REALTIME_JWT_SECRET", "another-secret-entirely-0123456789")],
        &["token", "--user", "ops-7"],
    );
    let forged = String::from_utf8_lossy(&other.stdout).trim().to_string();
    let refused = SioClient::connect(&host.url(), Some(&forged)).await;
    assert!(
        refused.is_err(),
        "the server accepted a token of another secret"
    );
    let out = run(&secret, &["check-token", &forged]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Invalid token") && err.contains("InvalidSignature"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Expired long ago, and a token naming nobody.
    let expired = token(json!({"userId": "u", "exp": 1_000_000}), TEST_SECRET);
    let err = String::from_utf8_lossy(&run(&secret, &["check-token", &expired]).stderr).to_string();
    assert!(err.contains("ExpiredSignature"), "{err}");
    let nobody = token(json!({"sessionId": "s"}), TEST_SECRET);
    let err = String::from_utf8_lossy(&run(&secret, &["check-token", &nobody]).stderr).to_string();
    assert!(err.contains("names no user"), "{err}");

    // No secret to sign with: one line, exit 1.
    let out = run(&[], &["token", "--user", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REALTIME_JWT_SECRET is not set"));
}
