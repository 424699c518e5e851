//! SPEC §5 `room:join` / `room:leave` and §7 access rules: ack shapes, ROOM_NOT_FOUND,
//! VALIDATION_ERROR, visibility and type, banned, muted, broadcast, max_members, and
//! `user:joined` / `user:left` to the others only (also on disconnect of the last socket).

use nself_realtime_tests::{RoomType, TestHost, Visibility, ack_err, ack_ok, ms};
use serde_json::{Value, json};

async fn join(c: &mut nself_realtime_tests::SioClient, room: &str) -> Value {
    c.emit_ack("room:join", json!({ "roomName": room }), ms(5000))
        .await
}

async fn send(c: &mut nself_realtime_tests::SioClient, room: &str, content: &str) -> Value {
    c.emit_ack(
        "message:send",
        json!({ "roomName": room, "content": content }),
        ms(5000),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_ack_carries_room_and_persistent_member_count() {
    let host = TestHost::start(&[]).await;
    let mut a = host.client("alice").await;
    let data = ack_ok(&join(&mut a, "general").await);
    assert_eq!(data, json!({"roomName": "general", "memberCount": 1}));
    let mut b = host.client("bob").await;
    let data = ack_ok(&join(&mut b, "general").await);
    assert_eq!(data, json!({"roomName": "general", "memberCount": 2}));
    // A second socket of alice does not add a member.
    let mut a2 = host.client("alice").await;
    let data = ack_ok(&join(&mut a2, "general").await);
    assert_eq!(data["memberCount"], json!(2));
    // Leaving deletes the membership: the count drops.
    ack_ok(
        &b.emit_ack("room:leave", json!({"roomName": "general"}), ms(5000))
            .await,
    );
    let mut c = host.client("carol").await;
    let data = ack_ok(&join(&mut c, "general").await);
    assert_eq!(
        data["memberCount"],
        json!(2),
        "alice + carol after bob left"
    );
    // Default rooms exist.
    ack_ok(&join(&mut c, "announcements").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_rooms_are_not_created_by_a_join() {
    let host = TestHost::start(&[]).await;
    let mut a = host.client("alice").await;
    let err = ack_err(&join(&mut a, "does-not-exist").await, "ROOM_NOT_FOUND");
    // The original's message string (ORIGINAL §5, §15.3).
    assert_eq!(err["message"], json!("Room not found"), "{err}");
    ack_err(&join(&mut a, "does-not-exist").await, "ROOM_NOT_FOUND");
    // 255 characters is a valid name: not found rather than invalid.
    ack_err(&join(&mut a, &"r".repeat(255)).await, "ROOM_NOT_FOUND");
    let leave = a
        .emit_ack(
            "room:leave",
            json!({"roomName": "does-not-exist"}),
            ms(5000),
        )
        .await;
    ack_err(&leave, "ROOM_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_room_names_are_validation_errors() {
    let host = TestHost::start(&[]).await;
    let mut a = host.client("alice").await;
    let long = "r".repeat(256);
    for name in [
        json!(""),
        json!("has space"),
        json!(long),
        json!("slash/room"),
        json!("<script>"),
        json!("emoji-😀"),
        json!("tab\troom"),
        json!(42),
        json!(null),
        json!(["general"]),
        json!({"name": "general"}),
        json!(true),
    ] {
        let ack = a
            .emit_ack("room:join", json!({ "roomName": name.clone() }), ms(5000))
            .await;
        ack_err(&ack, "VALIDATION_ERROR");
        let ack = a
            .emit_ack("room:leave", json!({ "roomName": name.clone() }), ms(5000))
            .await;
        ack_err(&ack, "VALIDATION_ERROR");
    }
    ack_err(
        &a.emit_ack("room:join", json!({}), ms(5000)).await,
        "VALIDATION_ERROR",
    );
    // Every allowed character class works in a real room name.
    let name = "Team_1.ops:eu@prod-x";
    host.create_room(name, RoomType::Channel, Visibility::Public, None)
        .await;
    ack_ok(&join(&mut a, name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_id_is_never_a_room() {
    let host = TestHost::start(&[]).await;
    let victim = host.client("victim").await;
    let mut a = host.client("attacker").await;
    let ack = join(&mut a, victim.sid()).await;
    assert_eq!(
        ack["success"],
        json!(false),
        "joining another socket's id: {ack}"
    );
    let ack = a
        .emit_ack(
            "message:send",
            json!({"roomName": victim.sid(), "content": "psst"}),
            ms(5000),
        )
        .await;
    assert_eq!(ack["success"], json!(false), "{ack}");
    let mut victim = victim;
    victim.sync().await;
    victim
        .expect_none("message:new", std::time::Duration::ZERO)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_secret_dm_and_group_need_membership() {
    let host = TestHost::start(&[]).await;
    let rooms = [
        ("priv-room", RoomType::Channel, Visibility::Private),
        ("secret-room", RoomType::Channel, Visibility::Secret),
        ("dm-room", RoomType::Dm, Visibility::Private),
        ("group-room", RoomType::Group, Visibility::Private),
        ("public-dm", RoomType::Dm, Visibility::Public),
        ("public-group", RoomType::Group, Visibility::Public),
    ];
    for (name, t, v) in rooms {
        host.create_room(name, t, v, None).await;
        host.add_member(name, "insider", "member", false, false)
            .await;
    }
    let mut outsider = host.client("outsider").await;
    let mut insider = host.client("insider").await;
    for (name, _, v) in rooms {
        // A secret room answers a stranger exactly like a missing one (its existence is not
        // revealed); the others say access denied.
        if v == Visibility::Secret {
            let secret = ack_err(&join(&mut outsider, name).await, "ROOM_NOT_FOUND");
            let missing = ack_err(&join(&mut outsider, "no-such-room").await, "ROOM_NOT_FOUND");
            assert_eq!(secret, missing);
            let leave = outsider
                .emit_ack("room:leave", json!({"roomName": name}), ms(5000))
                .await;
            ack_err(&leave, "ROOM_NOT_FOUND");
        } else {
            ack_err(&join(&mut outsider, name).await, "ROOM_ACCESS_DENIED");
        }
        ack_ok(&join(&mut insider, name).await);
    }
    // The refused join did not put the outsider in the room.
    ack_ok(&send(&mut insider, "priv-room", "members only").await);
    insider
        .next_event("message:new", ms(3000))
        .await
        .expect("own message");
    outsider.sync().await;
    outsider
        .expect_none("message:new", std::time::Duration::ZERO)
        .await;
    // And did not create a membership: still refused.
    ack_err(
        &join(&mut outsider, "priv-room").await,
        "ROOM_ACCESS_DENIED",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_users_cannot_join_private_rooms() {
    let host = TestHost::start(&[("REALTIME_ALLOW_ANONYMOUS", "true")]).await;
    host.create_room("priv-room", RoomType::Channel, Visibility::Private, None)
        .await;
    let mut anon = host.anonymous_client().await;
    ack_err(&join(&mut anon, "priv-room").await, "ROOM_ACCESS_DENIED");
    ack_ok(&join(&mut anon, "general").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_members_are_denied_everywhere() {
    let host = TestHost::start(&[]).await;
    host.add_member("general", "troll", "member", false, true)
        .await;
    host.create_room("priv-room", RoomType::Channel, Visibility::Private, None)
        .await;
    host.add_member("priv-room", "troll", "admin", false, true)
        .await;
    let mut troll = host.client("troll").await;
    ack_err(&join(&mut troll, "general").await, "ROOM_ACCESS_DENIED");
    ack_err(&join(&mut troll, "priv-room").await, "ROOM_ACCESS_DENIED");
    let ack = send(&mut troll, "general", "let me in").await;
    assert_eq!(ack["success"], json!(false), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_members_read_but_cannot_send() {
    let host = TestHost::start(&[]).await;
    host.add_member("general", "quiet", "member", true, false)
        .await;
    let mut quiet = host.joined("quiet", "general").await;
    let mut loud = host.joined("loud", "general").await;
    ack_err(
        &send(&mut quiet, "general", "can you hear me").await,
        "MUTED",
    );
    loud.sync().await;
    loud.expect_none("message:new", std::time::Duration::ZERO)
        .await;
    ack_ok(&send(&mut loud, "general", "hello quiet").await);
    let msg = quiet
        .next_event("message:new", ms(3000))
        .await
        .expect("muted still reads");
    assert_eq!(msg["content"], json!("hello quiet"));
    // Re-joining does not lift the mute.
    ack_ok(&join(&mut quiet, "general").await);
    ack_err(&send(&mut quiet, "general", "still muted?").await, "MUTED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_rooms_only_admins_and_moderators_send() {
    let host = TestHost::start(&[]).await;
    host.create_room("news", RoomType::Broadcast, Visibility::Public, None)
        .await;
    host.add_member("news", "boss", "admin", false, false).await;
    host.add_member("news", "mod", "moderator", false, false)
        .await;
    host.add_member("news", "reader", "member", false, false)
        .await;
    let mut boss = host.joined("boss", "news").await;
    let mut moderator = host.joined("mod", "news").await;
    let mut reader = host.joined("reader", "news").await;
    // Not a member at all, but the room is public: may join and read.
    let mut passer = host.joined("passer-by", "news").await;

    ack_err(
        &send(&mut reader, "news", "me too").await,
        "ROOM_ACCESS_DENIED",
    );
    ack_err(
        &send(&mut passer, "news", "me too").await,
        "ROOM_ACCESS_DENIED",
    );
    ack_ok(&send(&mut boss, "news", "from the admin").await);
    ack_ok(&send(&mut moderator, "news", "from the moderator").await);
    for c in [&mut reader, &mut passer] {
        let m1 = c
            .next_event("message:new", ms(3000))
            .await
            .expect("admin message");
        let m2 = c
            .next_event("message:new", ms(3000))
            .await
            .expect("moderator message");
        assert_eq!(m1["content"], json!("from the admin"));
        assert_eq!(m2["content"], json!("from the moderator"));
        c.sync().await;
        c.expect_none("message:new", std::time::Duration::ZERO)
            .await;
    }
    // Joining again (membership upsert) must not demote the admin.
    ack_ok(&join(&mut boss, "news").await);
    ack_ok(&send(&mut boss, "news", "still admin").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_members_gives_room_full() {
    let host = TestHost::start(&[]).await;
    host.create_room("tiny", RoomType::Channel, Visibility::Public, Some(2))
        .await;
    let mut a = host.joined("a", "tiny").await;
    let _b = host.joined("b", "tiny").await;
    let mut c = host.client("c").await;
    ack_err(&join(&mut c, "tiny").await, "ROOM_FULL");
    // An existing member joining again does not exceed the limit.
    ack_ok(&join(&mut a, "tiny").await);
    let mut a2 = host.client("a").await;
    ack_ok(&join(&mut a2, "tiny").await);
    // A leave frees a place.
    ack_ok(
        &a.emit_ack("room:leave", json!({"roomName": "tiny"}), ms(5000))
            .await,
    );
    ack_ok(&join(&mut c, "tiny").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_and_left_go_to_the_others_only() {
    let host = TestHost::start(&[]).await;
    let mut a = host.joined("alice", "general").await;
    let mut b = host.joined("bob", "general").await;
    let joined = a
        .next_event("user:joined", ms(3000))
        .await
        .expect("user:joined");
    assert_eq!(joined, json!({"roomName": "general", "userId": "bob"}));
    b.sync().await;
    b.expect_none("user:joined", std::time::Duration::ZERO)
        .await;

    let ack = b
        .emit_ack("room:leave", json!({"roomName": "general"}), ms(5000))
        .await;
    assert_eq!(ack["success"], json!(true), "{ack}");
    let left = a
        .next_event("user:left", ms(3000))
        .await
        .expect("user:left");
    assert_eq!(left, json!({"roomName": "general", "userId": "bob"}));
    b.sync().await;
    b.expect_none("user:left", std::time::Duration::ZERO).await;

    // After leaving, bob no longer receives the room's messages.
    ack_ok(&send(&mut a, "general", "bob is gone").await);
    b.sync().await;
    b.expect_none("message:new", std::time::Duration::ZERO)
        .await;
    // Nor can he send there.
    ack_err(&send(&mut b, "general", "i'm back").await, "NOT_IN_ROOM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_left_on_disconnect_of_the_last_socket() {
    let host = TestHost::start(&[]).await;
    let mut a = host.joined("alice", "general").await;
    let b1 = host.joined("bob", "general").await;
    let b2 = host.joined("bob", "general").await;
    a.clear_events();
    b1.close().await;
    a.expect_none_where("user:left", ms(400), |v| v["userId"] == "bob")
        .await;
    b2.close().await;
    let left = a
        .next_event_where("user:left", ms(3000), |v| v["userId"] == "bob")
        .await
        .expect("user:left once bob's last socket is gone");
    assert_eq!(left, json!({"roomName": "general", "userId": "bob"}));
}
