//! Issue 17, item 1: the server API for backends (`REALTIME_API_KEY`): the key check, publishing
//! into rooms (custom events and `message:new` built like a client message), disconnecting a
//! user or a socket, and the live listings (rooms, online users, presence, connections, nodes,
//! audit), on one instance and across two instances over Redis.

use nself_realtime_tests::redis::SharedRedis;
use nself_realtime_tests::{TestHost, ms};
use serde_json::{Value, json};

const KEY: &str = "test-api-key-0123456789abcdef";

/// A small API client: (status, JSON body) of each call.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(host: &TestHost) -> Api {
        Api {
            base: host.url(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        };
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("API request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("API body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, json)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, Some(KEY), None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        assert_eq!(body["success"], true, "GET {path}: {body}");
        body["data"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(KEY), Some(&body.to_string()))
            .await
    }
}

#[tokio::test]
async fn api_is_off_without_a_key_and_refuses_wrong_keys() {
    let off = TestHost::start(&[]).await;
    let (status, _) = off.http_get("/api/nodes").await;
    assert_eq!(status, 404, "no REALTIME_API_KEY: no API");

    let host = TestHost::start(&[("REALTIME_API_KEY", KEY)]).await;
    let api = Api::new(&host);
    for (key, message) in [
        (None, "Authentication required"),
        (Some("wrong"), "Invalid API key"),
    ] {
        let (status, body) = api.call("GET", "/api/nodes", key, None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], "UNAUTHORIZED");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with(message),
            "{body}"
        );
    }
    // A refused publish changes nothing: no client gets it.
    let mut c = host.joined("u1", "general").await;
    let body = json!({"room": "general", "event": "order:shipped", "data": {"id": 1}}).to_string();
    let (status, _) = api
        .call("POST", "/api/publish", Some("wrong"), Some(&body))
        .await;
    assert_eq!(status, 401);
    c.expect_none("order:shipped", ms(300)).await;
    let r = host
        .http_request("/api/nodes", &[("authorization", "Basic abc")])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers.get("www-authenticate").map(String::as_str),
        Some("Bearer")
    );
    // The right key, in any case of the scheme.
    let r = host
        .http_request("/api/nodes", &[("authorization", &format!("bearer {KEY}"))])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn publish_reaches_the_room_and_refuses_bad_requests() {
    let host = TestHost::start(&[
        ("REALTIME_API_KEY", KEY),
        ("REALTIME_MAX_MESSAGE_LENGTH", "50"),
    ])
    .await;
    let api = Api::new(&host);
    let mut a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    let mut outside = host.joined("carol", "announcements").await;

    // A custom event, as given, to everyone in the room (and no one else).
    let (status, body) = api
        .post(
            "/api/publish",
            json!({"room": "general", "event": "order:shipped", "data": {"orderId": 42, "tags": ["x"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["room"], "general");
    for c in [&mut a, &mut b] {
        let got = c
            .next_event("order:shipped", ms(2000))
            .await
            .expect("custom event delivered");
        assert_eq!(got, json!({"orderId": 42, "tags": ["x"]}));
    }
    outside.expect_none("order:shipped", ms(300)).await;

    // message:new is built like a client message: messageId, timestamp, the author.
    let (status, body) = api
        .post(
            "/api/publish",
            json!({"room": "general", "event": "message:new", "userId": "billing-bot",
                   "data": {"content": "invoice ready", "metadata": {"kind": "invoice"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["messageId"]
        .as_str()
        .expect("messageId")
        .to_string();
    assert!(body["data"]["timestamp"].is_string());
    let m = a
        .next_event("message:new", ms(2000))
        .await
        .expect("message:new");
    assert_eq!(m["messageId"], id.as_str());
    assert_eq!(m["userId"], "billing-bot");
    assert_eq!(m["roomName"], "general");
    assert_eq!(m["content"], "invoice ready");
    assert_eq!(m["metadata"], json!({"kind": "invoice"}));
    assert_eq!(m["timestamp"], body["data"]["timestamp"]);

    // A retry with the same clientMessageId answers the first result without a second delivery.
    let retry = json!({"room": "general", "event": "message:new", "userId": "billing-bot",
                       "data": {"content": "once", "clientMessageId": "c-1"}});
    let (_, first) = api.post("/api/publish", retry.clone()).await;
    let (_, second) = api.post("/api/publish", retry).await;
    assert_eq!(first["data"]["messageId"], second["data"]["messageId"]);
    let got = b.collect("message:new", ms(700)).await;
    assert_eq!(
        got.iter().filter(|m| m["content"] == "once").count(),
        1,
        "{got:?}"
    );

    // Refused: each with the protocol's code, and nothing delivered.
    a.sync().await;
    a.clear_events();
    let cases = [
        (
            json!({"room": "general", "event": "user:joined", "data": {"userId": "x"}}),
            400,
            "VALIDATION_ERROR",
            "event",
        ),
        (
            json!({"room": "general", "event": "presence:changed", "data": {}}),
            400,
            "VALIDATION_ERROR",
            "event",
        ),
        (
            json!({"room": "general", "event": "disconnect", "data": {}}),
            400,
            "VALIDATION_ERROR",
            "event",
        ),
        (
            json!({"room": "general", "event": "", "data": {}}),
            400,
            "VALIDATION_ERROR",
            "event",
        ),
        (
            json!({"room": "no-such-room", "event": "x", "data": {}}),
            404,
            "ROOM_NOT_FOUND",
            "",
        ),
        (
            json!({"room": "bad name!", "event": "x", "data": {}}),
            400,
            "VALIDATION_ERROR",
            "roomName",
        ),
        (
            json!({"room": "general", "event": "message:new", "data": {"content": "x".repeat(51)}}),
            400,
            "VALIDATION_ERROR",
            "content",
        ),
        (
            json!({"room": "general", "event": "message:new", "data": 5}),
            400,
            "VALIDATION_ERROR",
            "data",
        ),
        (
            json!({"room": "general", "event": "x", "data": {}, "extra": 1}),
            400,
            "VALIDATION_ERROR",
            "body",
        ),
        (json!({"event": "x"}), 400, "VALIDATION_ERROR", "body"),
    ];
    for (req, status, code, field) in cases {
        let (got, body) = api.post("/api/publish", req.clone()).await;
        assert_eq!(got, status, "{req}: {body}");
        assert_eq!(body["success"], false, "{req}: {body}");
        assert_eq!(body["error"]["code"], code, "{req}: {body}");
        if !field.is_empty() {
            assert_eq!(body["error"]["details"]["field"], field, "{req}: {body}");
        }
    }
    let (status, body) = api
        .call("POST", "/api/publish", Some(KEY), Some("{not json"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("VALIDATION_ERROR"))
    );
    let leaked = a.collect("user:joined", ms(300)).await;
    assert!(
        leaked.iter().all(|e| e["userId"] != "x"),
        "a refused publish was delivered: {leaked:?}"
    );
    let leaked = a.collect("message:new", ms(300)).await;
    assert!(
        leaked.is_empty(),
        "a refused message was delivered: {leaked:?}"
    );

    // The publications are in the audit log, with the caller's address.
    let deadline = std::time::Instant::now() + ms(5000);
    loop {
        let events = api.get("/api/events?limit=100").await;
        let rows: Vec<&Value> = events["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["eventType"] == "api:publish")
            .collect();
        if rows.len() >= 3 {
            assert!(
                rows.iter()
                    .any(|e| e["payload"]["event"] == "order:shipped"),
                "{rows:?}"
            );
            assert!(
                rows.iter()
                    .any(|e| e["payload"]["messageId"] == id.as_str()
                        && e["userId"] == "billing-bot"),
                "{rows:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "api:publish never audited: {events}"
        );
        tokio::time::sleep(ms(100)).await;
    }
}

#[tokio::test]
async fn listings_show_the_live_state() {
    let host = TestHost::start(&[
        ("REALTIME_API_KEY", KEY),
        ("REALTIME_ALLOW_ANONYMOUS", "true"),
    ])
    .await;
    let api = Api::new(&host);
    let a1 = host.joined("alice", "general").await;
    let _a2 = host.joined("alice", "announcements").await;
    let b = host.joined("bob", "general").await;
    let _anon = host.anonymous_client().await;

    let nodes = api.get("/api/nodes").await;
    let list = nodes["nodes"].as_array().expect("nodes");
    assert_eq!(list.len(), 1, "{nodes}");
    assert_eq!(list[0]["self"], true);
    assert_eq!(list[0]["connections"], 4, "{nodes}");
    assert_eq!(list[0]["users"], 2, "{nodes}");
    assert_eq!(nodes["complete"], true);

    let conns = api.get("/api/connections").await;
    assert_eq!(conns["total"], 4, "{conns}");
    let mine = conns["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|c| c["socketId"] == a1.sid())
        .unwrap_or_else(|| panic!("socket {} listed: {conns}", a1.sid()))
        .clone();
    assert_eq!(mine["userId"], "alice");
    assert_eq!(mine["rooms"], json!(["general"]));
    assert_eq!(mine["ip"], "127.0.0.1");
    assert!(
        mine["nodeId"].is_string() && mine["connectedAt"].is_string(),
        "{mine}"
    );
    let filtered = api.get("/api/connections?userId=bob").await;
    assert_eq!(filtered["total"], 1);
    assert_eq!(filtered["connections"][0]["socketId"], b.sid());
    let limited = api.get("/api/connections?limit=2").await;
    assert_eq!(limited["connections"].as_array().map(Vec::len), Some(2));
    assert_eq!(limited["truncated"], true);
    let in_room = api.get("/api/connections?room=announcements").await;
    assert_eq!(in_room["total"], 1, "{in_room}");

    let rooms = api.get("/api/rooms").await;
    let general = rooms["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .find(|r| r["name"] == "general")
        .expect("general listed")
        .clone();
    assert_eq!(general["online"], 2, "{general}");
    assert_eq!(general["sockets"], 2, "{general}");
    assert_eq!(general["isActive"], true);

    let online = api.get("/api/rooms/general/online").await;
    assert_eq!(online["users"], json!(["alice", "bob"]), "{online}");
    assert_eq!(online["count"], 2);
    let (status, body) = api
        .call("GET", "/api/rooms/nowhere/online", Some(KEY), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("ROOM_NOT_FOUND"))
    );

    let p = api.get("/api/presence?userId=alice").await;
    assert_eq!(p["status"], "online", "{p}");
    assert_eq!(p["connections"], 2, "{p}");
    let p = api.get("/api/presence?userId=nobody").await;
    assert_eq!(
        (p["status"].as_str(), p["connections"].as_u64()),
        (Some("offline"), Some(0))
    );
    let summary = api.get("/api/presence").await;
    assert_eq!(summary["online"], 2, "{summary}");
    assert_eq!(summary["byStatus"]["online"], 2, "{summary}");

    let policies = api.get("/api/policies").await;
    assert_eq!(policies["enabled"], true, "{policies}");
    for bad in [
        "/api/connections?limit=abc",
        "/api/connections?limit=0",
        "/api/events?limit=-1",
    ] {
        let (status, body) = api.call("GET", bad, Some(KEY), None).await;
        assert_eq!(
            (status, body["error"]["details"]["field"].as_str()),
            (400, Some("limit")),
            "{bad}: {body}"
        );
    }
    let (status, body) = api.call("GET", "/api/nope", Some(KEY), None).await;
    assert_eq!((status, body["success"].as_bool()), (404, Some(false)));
}

#[tokio::test]
async fn disconnect_a_user_or_a_socket() {
    let host = TestHost::start(&[("REALTIME_API_KEY", KEY)]).await;
    let api = Api::new(&host);
    let mut a1 = host.joined("alice", "general").await;
    let mut a2 = host.client("alice").await;
    let mut b = host.joined("bob", "general").await;
    let mut c = host.client("carol").await;

    let (status, body) = api
        .post("/api/disconnect", json!({"userId": "alice"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["disconnected"], 2, "{body}");
    assert!(
        a1.wait_disconnect(ms(3000)).await.is_some(),
        "alice's first socket disconnected"
    );
    assert!(
        a2.wait_disconnect(ms(3000)).await.is_some(),
        "alice's second socket disconnected"
    );
    // bob sees alice leave, and stays.
    let left = b
        .next_event("user:left", ms(2000))
        .await
        .expect("user:left");
    assert_eq!(left["userId"], "alice");

    let sid = c.sid().to_string();
    let (_, body) = api.post("/api/disconnect", json!({"socketId": sid})).await;
    assert_eq!(body["data"]["disconnected"], 1, "{body}");
    assert!(c.wait_disconnect(ms(3000)).await.is_some());
    assert!(b.disconnect_reason().is_none(), "bob was not disconnected");

    let (_, body) = api
        .post("/api/disconnect", json!({"userId": "nobody"}))
        .await;
    assert_eq!(body["data"]["disconnected"], 0);
    for bad in [
        json!({}),
        json!({"userId": "a", "socketId": "b"}),
        json!({"userId": ""}),
    ] {
        let (status, body) = api.post("/api/disconnect", bad.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("VALIDATION_ERROR")),
            "{bad}"
        );
    }
    let conns = api.get("/api/connections").await;
    assert_eq!(conns["total"], 1, "only bob is left: {conns}");
}

#[tokio::test]
async fn a_call_on_one_instance_reaches_every_instance() {
    let redis = SharedRedis::new("api");
    let db = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/cluster.db", db.path().display());
    let mut hosts = Vec::new();
    for i in 0..2 {
        let node = format!("{}-{i}", redis.prefix);
        hosts.push(
            TestHost::start(&[
                ("REALTIME_REDIS_URL", &redis.url),
                ("REALTIME_REDIS_PREFIX", &redis.prefix),
                ("REALTIME_NODE_ID", &node),
                ("DATABASE_URL", &url),
                ("REALTIME_API_KEY", KEY),
            ])
            .await,
        );
    }
    let api = Api::new(&hosts[0]);
    // Both instances are in the lease set and answer the survey.
    let deadline = std::time::Instant::now() + ms(10_000);
    loop {
        let nodes = api.get("/api/nodes").await;
        if nodes["nodes"].as_array().map(Vec::len) == Some(2) && nodes["complete"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "second instance never listed: {nodes}"
        );
        tokio::time::sleep(ms(200)).await;
    }
    let far_node = format!("{}-1", redis.prefix);
    let mut far = hosts[1].joined("dave", "general").await;
    let mut near = hosts[0].joined("erin", "general").await;

    // Publish on instance 0 reaches the client on instance 1.
    let (status, body) = api
        .post(
            "/api/publish",
            json!({"room": "general", "event": "deploy:done", "data": {"v": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        far.next_event("deploy:done", ms(3000)).await,
        Some(json!({"v": 2}))
    );
    assert_eq!(
        near.next_event("deploy:done", ms(3000)).await,
        Some(json!({"v": 2}))
    );

    // Listings on instance 0 include instance 1's socket, with its node.
    let conns = api.get("/api/connections?userId=dave").await;
    assert_eq!(conns["total"], 1, "{conns}");
    assert_eq!(
        conns["connections"][0]["nodeId"],
        far_node.as_str(),
        "{conns}"
    );
    assert_eq!(conns["connections"][0]["socketId"], far.sid());
    let online = api.get("/api/rooms/general/online").await;
    assert_eq!(online["users"], json!(["dave", "erin"]), "{online}");
    let p = api.get("/api/presence?userId=dave").await;
    assert_eq!(
        (p["status"].as_str(), p["connections"].as_u64()),
        (Some("online"), Some(1)),
        "{p}"
    );

    // Disconnect on instance 0 reaches the socket on instance 1.
    let (_, body) = api.post("/api/disconnect", json!({"userId": "dave"})).await;
    assert_eq!(body["data"]["disconnected"], 1, "{body}");
    assert!(
        far.wait_disconnect(ms(3000)).await.is_some(),
        "dave disconnected on the other instance"
    );
    assert!(near.disconnect_reason().is_none());
    drop(hosts);
    redis.cleanup().await;
}
