//! SPEC §3 authentication and §4 connect events: refusals with the exact `connect_error`
//! messages, algorithm pinning, leeway, claim fallbacks, anonymous mode, dev mode, and the
//! `connected` / `authenticated` events.

use jsonwebtoken::Algorithm;
use nself_realtime_tests::time::{now_secs, parse_iso8601};
use nself_realtime_tests::token::{
    expired_token, not_yet_valid_token, token_with_alg, unsigned_token, user_claims,
};
use nself_realtime_tests::{
    ConnectErrorKind, ConnectOptions, SioClient, TEST_SECRET, TestHost, ms, token, user_token,
};
use serde_json::{Value, json};

async fn refused(host: &TestHost, opts: ConnectOptions) -> String {
    match SioClient::connect_with(&host.url(), opts).await {
        Ok(c) => panic!("connect should be refused, got sid {}", c.sid()),
        Err(e) => {
            assert_eq!(e.kind, ConnectErrorKind::Refused, "{e}");
            e.message
        }
    }
}

async fn refused_token(host: &TestHost, token: &str) -> String {
    refused(host, ConnectOptions::token(token)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_authentication_required() {
    let host = TestHost::start(&[]).await;
    assert_eq!(
        refused(&host, ConnectOptions::default()).await,
        "Authentication required"
    );
    let empty = ConnectOptions {
        auth: Some(json!({})),
        ..ConnectOptions::default()
    };
    assert_eq!(refused(&host, empty).await, "Authentication required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_invalid_token() {
    let host = TestHost::start(&[]).await;
    let claims = user_claims("mallory");
    let cases = [
        ("garbage", "not-a-jwt".to_string()),
        ("three garbage segments", "a.b.c".to_string()),
        ("wrong secret", token(claims.clone(), "some-other-secret")),
        ("expired an hour ago", expired_token("mallory")),
        ("nbf in an hour", not_yet_valid_token("mallory")),
        ("alg none", unsigned_token(&claims)),
        (
            "HS512 while HS256 is pinned",
            token_with_alg(claims.clone(), TEST_SECRET, Algorithm::HS512),
        ),
        (
            "HS384 while HS256 is pinned",
            token_with_alg(claims.clone(), TEST_SECRET, Algorithm::HS384),
        ),
    ];
    for (what, t) in cases {
        assert_eq!(
            refused_token(&host, &t).await,
            "Invalid token",
            "case: {what}"
        );
    }
    // A token whose signature was tampered with after signing.
    let good = user_token("mallory");
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = nself_realtime_tests::token::b64url(
        json!({"userId": "admin", "exp": now_secs() + 3600})
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged_payload;
    assert_eq!(
        refused_token(&host, &parts.join(".")).await,
        "Invalid token"
    );
    // Non-string tokens are not a crash, they are refused.
    for auth in [
        json!({"token": 42}),
        json!({"token": null}),
        json!({"token": {"a": 1}}),
    ] {
        let opts = ConnectOptions {
            auth: Some(auth.clone()),
            ..ConnectOptions::default()
        };
        let msg = refused(&host, opts).await;
        assert!(
            msg == "Invalid token" || msg == "Authentication required",
            "{auth}: {msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_leeway_is_honoured() {
    // Default leeway is 30 s: a token expired 5 s ago still connects.
    let host = TestHost::start(&[]).await;
    let mut claims = user_claims("late");
    claims["exp"] = json!(now_secs() - 5);
    let t = token(claims, TEST_SECRET);
    SioClient::connect(&host.url(), Some(&t))
        .await
        .expect("within the default 30 s leeway");
    drop(host);

    let strict = TestHost::start(&[("REALTIME_JWT_LEEWAY_SECONDS", "0")]).await;
    assert_eq!(refused_token(&strict, &t).await, "Invalid token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_when_configured() {
    let host = TestHost::start(&[
        ("REALTIME_JWT_ISSUER", "https://issuer.example"),
        ("REALTIME_JWT_AUDIENCE", "realtime"),
    ])
    .await;
    let mut claims = user_claims("iss-user");
    claims["iss"] = json!("https://issuer.example");
    claims["aud"] = json!("realtime");
    SioClient::connect(&host.url(), Some(&token(claims.clone(), TEST_SECRET)))
        .await
        .expect("matching iss/aud");
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    assert_eq!(
        refused_token(&host, &token(wrong_iss, TEST_SECRET)).await,
        "Invalid token"
    );
    let mut wrong_aud = claims;
    wrong_aud["aud"] = json!("other");
    assert_eq!(
        refused_token(&host, &token(wrong_aud, TEST_SECRET)).await,
        "Invalid token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_then_authenticated() {
    let host = TestHost::start(&[]).await;
    let mut c = host.client("alice").await;
    let mut order = Vec::new();
    let mut connected = Value::Null;
    let mut authenticated = Value::Null;
    while !(order.contains(&"connected".to_string())
        && order.contains(&"authenticated".to_string()))
    {
        let (name, args) = c
            .next_any(ms(3000))
            .await
            .unwrap_or_else(|| panic!("missing connected/authenticated; got {order:?}"));
        match name.as_str() {
            "connected" => connected = args[0].clone(),
            "authenticated" => authenticated = args[0].clone(),
            _ => {}
        }
        order.push(name);
    }
    let pos = |n: &str| order.iter().position(|e| e == n);
    assert!(
        pos("connected") < pos("authenticated"),
        "connected must come before authenticated: {order:?}"
    );
    assert_eq!(connected["socketId"], json!(c.sid()), "{connected}");
    assert_eq!(connected["protocolVersion"], json!("1.0"), "{connected}");
    let server_time = connected["serverTime"].as_str().expect("serverTime string");
    let t = parse_iso8601(server_time).expect("serverTime is ISO 8601");
    assert!(
        (t - nself_realtime_tests::time::now_ms()).abs() < 10_000,
        "{server_time}"
    );
    assert_eq!(
        authenticated,
        json!({"userId": "alice", "sessionId": "sess-alice", "rooms": []})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_and_sid_are_fallbacks_for_user_and_session() {
    let host = TestHost::start(&[]).await;
    let t = token(
        json!({"sub": "sub-user", "sid": "sid-1", "exp": now_secs() + 600}),
        TEST_SECRET,
    );
    let mut c = SioClient::connect(&host.url(), Some(&t))
        .await
        .expect("sub token");
    let auth = c
        .next_event("authenticated", ms(3000))
        .await
        .expect("authenticated");
    assert_eq!(auth["userId"], json!("sub-user"), "{auth}");
    assert_eq!(auth["sessionId"], json!("sid-1"), "{auth}");

    // userId/sessionId win over sub/sid.
    let t = token(
        json!({"userId": "u-claim", "sub": "s-claim", "sessionId": "sess", "sid": "sid",
               "exp": now_secs() + 600}),
        TEST_SECRET,
    );
    let mut c = SioClient::connect(&host.url(), Some(&t))
        .await
        .expect("both claims");
    let auth = c
        .next_event("authenticated", ms(3000))
        .await
        .expect("authenticated");
    assert_eq!(auth["userId"], json!("u-claim"), "{auth}");
    assert_eq!(auth["sessionId"], json!("sess"), "{auth}");

    // The identity is the one used for messages.
    let ack = c
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    c.emit_ack(
        "message:send",
        json!({"roomName": "general", "content": "who am i"}),
        ms(5000),
    )
    .await;
    let msg = c
        .next_event("message:new", ms(3000))
        .await
        .expect("message:new");
    assert_eq!(msg["userId"], json!("u-claim"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_bearer_header_is_accepted() {
    let host = TestHost::start(&[]).await;
    let opts = ConnectOptions::default().header(
        "Authorization",
        &format!("Bearer {}", user_token("bearer-user")),
    );
    let mut c = SioClient::connect_with(&host.url(), opts)
        .await
        .expect("Bearer header token");
    let auth = c
        .next_event("authenticated", ms(3000))
        .await
        .expect("authenticated");
    assert_eq!(auth["userId"], json!("bearer-user"));
    let bad = ConnectOptions::default().header("Authorization", "Bearer nope");
    assert_eq!(refused(&host, bad).await, "Invalid token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_mode_connects_without_token() {
    let host = TestHost::start(&[("REALTIME_ALLOW_ANONYMOUS", "true")]).await;
    let mut anon = host.anonymous_client().await;
    let connected = anon
        .next_event("connected", ms(3000))
        .await
        .expect("connected");
    assert_eq!(connected["socketId"], json!(anon.sid()));
    anon.sync().await;
    anon.expect_none("authenticated", std::time::Duration::ZERO)
        .await;
    // Anonymous users may join public rooms.
    let ack = anon
        .emit_ack("room:join", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    // A bad token is still refused even though anonymous access is on.
    assert_eq!(refused_token(&host, "garbage").await, "Invalid token");
    // And a valid token still authenticates.
    let mut user = host.client("named").await;
    let auth = user
        .next_event("authenticated", ms(3000))
        .await
        .expect("authenticated");
    assert_eq!(auth["userId"], json!("named"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_decodes_without_verifying_and_says_so() {
    let host = TestHost::start(&[("REALTIME_JWT_SECRET", "")]).await;
    let t = token(user_claims("dev-user"), "whatever-secret");
    let mut c = SioClient::connect(&host.url(), Some(&t))
        .await
        .expect("dev mode");
    let auth = c
        .next_event("authenticated", ms(3000))
        .await
        .expect("authenticated");
    assert_eq!(auth["userId"], json!("dev-user"));
    let health = host.http_request("/health", &[]).await.json();
    assert_eq!(health["auth"], json!("insecure-dev"), "{health}");
    // Still no token at all is refused (anonymous is off).
    assert_eq!(
        refused(&host, ConnectOptions::default()).await,
        "Authentication required"
    );
}
