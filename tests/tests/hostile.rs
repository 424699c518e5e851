//! Hostile peers: what an attack run found, each as an attack that must fail. Floods of
//! invalid and unknown events, forged identities, oversized metadata, departures injected into
//! rooms the sender is not in, idle and slow connections below Socket.IO, sessions that leave
//! the namespace and linger, handshake floods, the open-socket cap, permissive CORS and an
//! open metrics endpoint. Loopback only; every loop is bounded.

use std::time::{Duration, Instant};

use nself_realtime_tests::pg::PrivatePg;
use nself_realtime_tests::{
    ConnectErrorKind, RoomType, SioClient, TEST_SECRET, TestHost, Visibility, ack_err, ack_ok, ms,
    token,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Audit rows of this type in the server's SQLite database.
async fn audit_rows(host: &TestHost, event_type: &str) -> i64 {
    let store = host.store().await;
    let rows = store.events(1_000_000).await.expect("events");
    rows.iter().filter(|r| r.event_type == event_type).count() as i64
}

/// Sends `n` copies of a raw frame as fast as the socket takes them; returns when the
/// server disconnected the client (Some(elapsed)) or after `within` (None).
async fn flood(c: &mut SioClient, frame: &str, n: usize, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    for _ in 0..n {
        c.send_raw(frame);
    }
    c.wait_disconnect(within).await.map(|_| started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_event_floods_spend_the_budget_disconnect_and_write_few_rows() {
    let host = TestHost::start(&[]).await;
    let mut bystander = host.joined("bystander", "general").await;
    let before_errors = audit_rows(&host, "error").await;
    // 10,000 invalid joins from one socket, without acks.
    let mut attacker = host.joined("mallory", "general").await;
    let cut = flood(
        &mut attacker,
        r#"42["room:join",{"roomName":42}]"#,
        10_000,
        ms(10_000),
    )
    .await;
    let cut = cut.expect("a socket flooding invalid events is disconnected");
    eprintln!("invalid flood: disconnected after {cut:?}");
    // Unknown events likewise.
    let mut other = host.joined("mallory-2", "general").await;
    let cut = flood(&mut other, r#"42["no:such:event",{}]"#, 10_000, ms(10_000)).await;
    eprintln!("unknown-event flood: disconnected after {cut:?}");
    assert!(
        cut.is_some(),
        "a socket flooding unknown events is disconnected"
    );
    // The bystander is served meanwhile and right after.
    let started = Instant::now();
    ack_ok(&bystander.send_message("general", "still served").await);
    eprintln!("bystander send after the floods: {:?}", started.elapsed());
    // Errors were audited sparingly, not one row per event.
    tokio::time::sleep(ms(500)).await;
    let rows = audit_rows(&host, "error").await - before_errors;
    eprintln!("error audit rows for 20,000 invalid events: {rows}");
    assert!(rows <= 20, "{rows} error rows for two floods");
    let m = host.http_request("/metrics", &[]).await.json();
    assert_eq!(m["connections"]["active"], json!(1), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sockets_flooding_do_not_fill_the_write_queue() {
    let host = TestHost::start(&[("REALTIME_WRITE_QUEUE", "2000")]).await;
    let mut attackers = Vec::new();
    for i in 0..50 {
        attackers.push(host.joined(&format!("flooder-{i}"), "general").await);
    }
    let started = Instant::now();
    for a in &attackers {
        for _ in 0..500 {
            a.send_raw(r#"42["room:join",{"roomName":42}]"#);
        }
    }
    for a in &mut attackers {
        a.wait_disconnect(ms(10_000)).await;
    }
    eprintln!("50 flooding sockets cut off within {:?}", started.elapsed());
    let prom = host
        .http_request("/metrics?format=prometheus", &[])
        .await
        .body;
    let dropped = prom
        .lines()
        .find(|l| l.starts_with("realtime_store_writes_dropped_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(-1.0);
    // The connection and presence rows of everyone made it: nothing dropped.
    assert_eq!(dropped, 0.0, "writes dropped under the flood");
    let rows = audit_rows(&host, "error").await;
    assert!(
        rows <= 50 * 6,
        "{rows} error rows for 25,000 invalid events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_without_a_usable_user_id_are_refused() {
    let host = TestHost::start(&[]).await;
    let exp = nself_realtime_tests::time::now_secs() + 3600;
    for claims in [
        json!({"sessionId": "x", "exp": exp}),
        json!({"userId": "u".repeat(300), "exp": exp}),
        json!({"userId": {}, "exp": exp}),
        json!({"userId": "", "exp": exp}),
        json!({"userId": "line\nbreak", "exp": exp}),
    ] {
        let err = SioClient::connect(&host.url(), Some(&token(claims.clone(), TEST_SECRET)))
            .await
            .err()
            .unwrap_or_else(|| panic!("{claims} must be refused"));
        assert_eq!(err.kind, ConnectErrorKind::Refused, "{claims}: {err}");
        assert_eq!(err.message, "Invalid token", "{claims}");
    }
    // With anonymous access on, a token without a user id is an anonymous connection.
    let open = TestHost::start(&[("REALTIME_ALLOW_ANONYMOUS", "true")]).await;
    let c = SioClient::connect(
        &open.url(),
        Some(&token(json!({"sessionId": "x", "exp": exp}), TEST_SECRET)),
    )
    .await;
    assert!(c.is_ok(), "anonymous allowed: {:?}", c.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_announce_departures_and_rejoins_are_not_announced_twice() {
    let host = TestHost::start(&[]).await;
    host.create_room("atk-private", RoomType::Channel, Visibility::Private, None)
        .await;
    for u in ["alice", "bob"] {
        host.add_member("atk-private", u, "member", false, false)
            .await;
    }
    let mut alice = host.joined("alice", "atk-private").await;
    let mut bob = host.joined("bob", "atk-private").await;
    // Everything before this message is behind us.
    ack_ok(&bob.send_message("atk-private", "start").await);
    alice
        .next_event_where("message:new", ms(3000), |v| v["content"] == "start")
        .await
        .expect("start");
    alice.clear_events();
    let mut mallory = host.client("mallory").await;
    let join = mallory
        .emit_ack("room:join", json!({"roomName": "atk-private"}), ms(5000))
        .await;
    ack_err(&join, "ROOM_ACCESS_DENIED");
    for _ in 0..20 {
        let leave = mallory
            .emit_ack("room:leave", json!({"roomName": "atk-private"}), ms(5000))
            .await;
        ack_err(&leave, "NOT_IN_ROOM");
    }
    // Bob joins again and again: the room hears of him once (he was already in it).
    for _ in 0..20 {
        ack_ok(
            &bob.emit_ack("room:join", json!({"roomName": "atk-private"}), ms(5000))
                .await,
        );
    }
    ack_ok(&bob.send_message("atk-private", "barrier").await);
    alice
        .next_event_where("message:new", ms(3000), |v| v["content"] == "barrier")
        .await
        .expect("barrier");
    let left = alice.collect("user:left", Duration::ZERO).await;
    assert!(left.is_empty(), "injected departures: {left:?}");
    let joined = alice.collect("user:joined", Duration::ZERO).await;
    assert!(joined.is_empty(), "re-joins announced: {joined:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_bounded_in_size_and_depth() {
    let host = TestHost::start(&[]).await;
    let mut a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    let huge = json!({"roomName": "general", "content": "8 chars!", "metadata": {"blob": "x".repeat(900_000)}});
    let ack = a.emit_ack("message:send", huge, ms(5000)).await;
    ack_err(&ack, "VALIDATION_ERROR");
    let mut deep = json!(1);
    for _ in 0..20 {
        deep = json!({ "d": deep });
    }
    let ack = a
        .emit_ack(
            "message:send",
            json!({"roomName": "general", "content": "deep", "metadata": deep}),
            ms(5000),
        )
        .await;
    ack_err(&ack, "VALIDATION_ERROR");
    ack_ok(
        &a.emit_ack(
            "message:send",
            json!({"roomName": "general", "content": "small", "metadata": {"k": "v"}}),
            ms(5000),
        )
        .await,
    );
    let got = b
        .next_event("message:new", ms(3000))
        .await
        .expect("the small one");
    assert_eq!(got["content"], "small", "nothing oversized was fanned out");
}

/// Reads until the server closes the connection; the time it took, or None after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + within),
            s.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_below_socket_io() {
    let host = TestHost::start(&[("REALTIME_HEADER_TIMEOUT", "1000")]).await;
    // A connection that never sends a byte.
    let mut idle = TcpStream::connect(host.addr).await.expect("connect");
    let t = closed_within(&mut idle, ms(5000))
        .await
        .expect("an idle connection is closed");
    eprintln!("idle connection closed after {t:?}");
    // Slowloris: the request head a byte every 200 ms.
    let mut slow = TcpStream::connect(host.addr).await.expect("connect");
    let head = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n";
    let started = Instant::now();
    let mut closed = false;
    for b in head {
        if slow.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(ms(200)).await;
        if started.elapsed() > ms(5000) {
            break;
        }
    }
    if !closed {
        closed = closed_within(&mut slow, ms(3000)).await.is_some();
    }
    assert!(closed, "a slowloris connection is closed");
    eprintln!("slowloris closed after {:?}", started.elapsed());
    // The server serves normally.
    let c = host.client("after").await;
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sockets_are_capped_with_a_clear_refusal() {
    let host = TestHost::start(&[
        ("REALTIME_MAX_SOCKETS", "20"),
        ("REALTIME_HEADER_TIMEOUT", "1500"),
    ])
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(host.addr).await.expect("connect"));
    }
    tokio::time::sleep(ms(200)).await;
    let mut extra = TcpStream::connect(host.addr).await.expect("connect");
    let mut answer = String::new();
    let _ = tokio::time::timeout(ms(3000), extra.read_to_string(&mut answer)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "the connection past the cap is refused clearly: {answer:?}"
    );
    let m = host.http_request("/metrics?format=prometheus", &[]).await;
    // (That request itself may have been refused while the idle ones were open.)
    drop(m);
    // Once the idle ones are closed by the header timeout, connections are served again.
    drop(idle);
    let deadline = Instant::now() + ms(10_000);
    loop {
        match SioClient::connect(&host.url(), Some(&nself_realtime_tests::user_token("ok"))).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "never served again: {e}");
                tokio::time::sleep(ms(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_leaves_the_namespace_is_closed() {
    let host = TestHost::start(&[("REALTIME_PING_INTERVAL", "300")]).await;
    let mut c = host.client("leaver").await;
    c.send_raw("41");
    // The client keeps answering pings; the server closes the connection anyway.
    let reason = c.wait_disconnect(ms(5000)).await;
    assert!(
        reason.is_some(),
        "still connected 5 s after leaving the namespace"
    );
    let m = host.http_request("/metrics", &[]).await.json();
    assert_eq!(m["connections"]["active"], json!(0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_count_against_the_per_ip_rate() {
    let host = TestHost::start(&[("REALTIME_RATE_LIMIT", "5")]).await;
    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    let url = format!("{}/socket.io/?EIO=4&transport=polling", host.url());
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            http.get(&url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0),
        );
    }
    // Twice the connection rate is allowed as bare handshakes; past it, 429.
    assert_eq!(&statuses[..10], &[200; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429, 429], "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_gets_no_credentials_and_metrics_can_be_closed() {
    let host = TestHost::start(&[
        ("REALTIME_CORS_ORIGIN", "*"),
        ("REALTIME_METRICS_TOKEN", "metrics-secret-42"),
    ])
    .await;
    let hs = host
        .http_request(
            "/socket.io/?EIO=4&transport=polling",
            &[("Origin", "http://evil.example")],
        )
        .await;
    assert_eq!(hs.status, 200);
    assert_eq!(
        hs.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("*")
    );
    assert!(
        !hs.headers.contains_key("access-control-allow-credentials"),
        "{:?}",
        hs.headers
    );
    // Health and metrics carry no CORS headers: another origin's page cannot read them.
    let health = host
        .http_request("/health", &[("Origin", "http://evil.example")])
        .await;
    assert_eq!(health.status, 200);
    assert!(
        !health.headers.contains_key("access-control-allow-origin"),
        "{:?}",
        health.headers
    );
    let denied = host.http_request("/metrics", &[]).await;
    assert_eq!(denied.status, 401);
    let wrong = host
        .http_request("/metrics", &[("Authorization", "Bearer nope")])
        .await;
    assert_eq!(wrong.status, 401);
    let plugins = host.http_request("/metrics/plugins", &[]).await;
    assert_eq!(plugins.status, 401);
    let ok = host
        .http_request("/metrics", &[("Authorization", "Bearer metrics-secret-42")])
        .await;
    assert_eq!(ok.status, 200);
    assert!(ok.json()["connections"].is_object());
}

/// `/metrics` answers from memory: with the database stopped it still answers at once and
/// in full (so no request reaches the database, let alone counts a table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_database() {
    let pg = PrivatePg::start();
    let host = TestHost::start(&[("DATABASE_URL", pg.url().as_str())]).await;
    let _a = host.joined("alice", "general").await;
    pg.stop("immediate");
    for _ in 0..20 {
        let started = Instant::now();
        let m = host.http_request("/metrics", &[]).await;
        assert_eq!(m.status, 200);
        let v: Value = m.json();
        assert_eq!(v["connections"]["active"], json!(1), "{v}");
        assert!(v["rooms"]["total"].as_u64().is_some_and(|n| n >= 2), "{v}");
        assert!(
            started.elapsed() < ms(1000),
            "metrics waited on the stopped database: {:?}",
            started.elapsed()
        );
    }
    pg.start_again();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_evict_another_users_message_ids() {
    let host = TestHost::start(&[
        ("REALTIME_EVENT_RATE", "100000"),
        ("REALTIME_EVENT_BURST", "100000"),
    ])
    .await;
    let mut victim = host.joined("victim", "general").await;
    let mut reader = host.joined("reader", "general").await;
    let first = victim
        .emit_ack(
            "message:send",
            json!({"roomName": "general", "content": "once", "clientMessageId": "keep-me"}),
            ms(5000),
        )
        .await;
    let first = ack_ok(&first);
    // Another user sends 1,500 distinct ids (more than one user may hold).
    let mut flooder = host.joined("flooder", "general").await;
    for i in 0..1500 {
        let ack = flooder
            .emit_ack(
                "message:send",
                json!({"roomName": "general", "content": "f", "clientMessageId": format!("f-{i}")}),
                ms(5000),
            )
            .await;
        ack_ok(&ack);
    }
    ack_ok(&reader.send_message("general", "before").await);
    reader
        .next_event_where("message:new", ms(10_000), |v| v["content"] == "before")
        .await
        .expect("before");
    reader.clear_events();
    let retry = victim
        .emit_ack(
            "message:send",
            json!({"roomName": "general", "content": "once", "clientMessageId": "keep-me"}),
            ms(5000),
        )
        .await;
    assert_eq!(ack_ok(&retry)["messageId"], first["messageId"]);
    ack_ok(&reader.send_message("general", "barrier").await);
    reader
        .next_event_where("message:new", ms(3000), |v| v["content"] == "barrier")
        .await
        .expect("barrier");
    let again = reader
        .collect("message:new", ms(0))
        .await
        .iter()
        .filter(|m| m["content"] == "once")
        .count();
    assert_eq!(again, 0, "the retry was delivered again");
}

/// Ten polling handshakes, each claiming another client in `X-Forwarded-For`.
async fn spoofed_handshakes(host: &TestHost) -> Vec<u16> {
    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    let url = format!("{}/socket.io/?EIO=4&transport=polling", host.url());
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(
            http.get(&url)
                .header("X-Forwarded-For", format!("198.51.100.{i}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0),
        );
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // Not trusted: the header is ignored, every handshake is 127.0.0.1's (2 per minute).
    let host = TestHost::start(&[
        ("REALTIME_RATE_LIMIT", "1"),
        ("REALTIME_TRUSTED_PROXIES", "10.0.0.0/8"),
    ])
    .await;
    let statuses = spoofed_handshakes(&host).await;
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
    // Trusted (the test connects from 127.0.0.1): each forwarded client has its own budget.
    let host = TestHost::start(&[
        ("REALTIME_RATE_LIMIT", "1"),
        ("REALTIME_TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await;
    let statuses = spoofed_handshakes(&host).await;
    assert_eq!(statuses, vec![200; 10], "{statuses:?}");
}
