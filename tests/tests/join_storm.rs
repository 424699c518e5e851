//! Join storms and reconnect herds: thousands of clients connecting at once, each joining a
//! room right after its connect answer. Every join is acked `success: true` with an exact
//! `memberCount`, on SQLite and on PostgreSQL; with the database stopped mid-storm, joins the
//! cache can answer succeed and the rest get a retryable `SERVICE_UNAVAILABLE`, never
//! `INTERNAL_ERROR`.

use std::collections::BTreeMap;
use std::time::Duration;

use nself_realtime::store::Store;
use nself_realtime_tests::pg::{FreshDb, PrivatePg};
use nself_realtime_tests::redis::SharedRedis;
use nself_realtime_tests::storm::{
    self, Outcome, codes, counts_by_room, eventually, join_storm, join_storm_on,
};
use nself_realtime_tests::{RoomType, TestHost, Visibility, ack_ok};

const ROOMS: usize = 20;
const PER_ROOM: usize = 100;
const IN_FLIGHT: usize = 256;

fn room(i: usize) -> String {
    format!("storm-{i:02}")
}

/// `PER_ROOM` users in each of the `ROOMS` rooms, interleaved (every room fills at once).
fn herd(prefix: &str) -> Vec<(String, String)> {
    (0..ROOMS * PER_ROOM)
        .map(|i| (format!("{prefix}-{i}"), room(i % ROOMS)))
        .collect()
}

async fn create_rooms(host: &TestHost) {
    for i in 0..ROOMS {
        host.create_room(&room(i), RoomType::Channel, Visibility::Public, None)
            .await;
    }
}

/// Members per room name as the database has them.
async fn stored_counts(store: &Store) -> Result<BTreeMap<String, i64>, String> {
    let rooms = store.rooms(false).await.map_err(|e| e.to_string())?;
    let (counts, _) = store.member_counts().await.map_err(|e| e.to_string())?;
    let by_id: BTreeMap<String, i64> = counts.into_iter().map(|c| (c.room_id, c.members)).collect();
    Ok(rooms
        .into_iter()
        .map(|r| {
            let n = by_id.get(&r.id).copied().unwrap_or(0);
            (r.name, n)
        })
        .collect())
}

/// Every join succeeded, each room's acks counted 1..=PER_ROOM exactly once, and the rows
/// are all in the database.
async fn assert_all_joined(host: &TestHost, out: &[Outcome]) {
    let by_code = codes(out);
    assert_eq!(
        by_code.get("OK").copied().unwrap_or(0),
        ROOMS * PER_ROOM,
        "every join must succeed: {by_code:?}"
    );
    let expected: Vec<i64> = (1..=PER_ROOM as i64).collect();
    for (name, counts) in counts_by_room(out) {
        assert_eq!(counts, expected, "memberCounts of {name}");
    }
    let store = host.store().await;
    eventually("membership rows written", || {
        let store = store.clone();
        async move {
            let stored = stored_counts(&store).await?;
            let wrong: Vec<_> = (0..ROOMS)
                .map(room)
                .filter(|r| stored.get(r).copied() != Some(PER_ROOM as i64))
                .map(|r| (r.clone(), stored.get(&r).copied()))
                .collect();
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!("rooms without {PER_ROOM} rows: {wrong:?}"))
            }
        }
    })
    .await;
    // A newcomer sees the exact count.
    let mut late = host.client("storm-late").await;
    let ack = late
        .emit_ack(
            "room:join",
            serde_json::json!({"roomName": room(0)}),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(ack_ok(&ack)["memberCount"], PER_ROOM as i64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_2000_joins_on_sqlite_all_succeed_with_exact_counts() {
    storm::raise_fd_limit();
    let host = TestHost::start(&[("REALTIME_MAX_CONNECTIONS", "5000")]).await;
    create_rooms(&host).await;
    let out = join_storm(&host.url(), herd("sq"), IN_FLIGHT).await;
    assert_all_joined(&host, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_2000_joins_on_postgres_all_succeed_with_exact_counts() {
    storm::raise_fd_limit();
    let db = FreshDb::create().await;
    let host = TestHost::start(&[
        ("DATABASE_URL", db.url.as_str()),
        ("REALTIME_MAX_CONNECTIONS", "5000"),
    ])
    .await;
    create_rooms(&host).await;
    let out = join_storm(&host.url(), herd("pg"), IN_FLIGHT).await;
    assert_all_joined(&host, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_over_two_instances_with_redis_and_postgres_all_join_and_counts_converge() {
    storm::raise_fd_limit();
    let db = FreshDb::create().await;
    let redis = SharedRedis::new("storm");
    let vars = [
        ("DATABASE_URL", db.url.as_str()),
        ("REALTIME_REDIS_URL", redis.url.as_str()),
        ("REALTIME_REDIS_PREFIX", redis.prefix.as_str()),
        ("REALTIME_MAX_CONNECTIONS", "5000"),
    ];
    let one = TestHost::start(&vars).await;
    let two = TestHost::start(&vars).await;
    create_rooms(&one).await;
    let out = join_storm_on(&[one.url(), two.url()], herd("cl"), IN_FLIGHT).await;
    let by_code = codes(&out);
    assert_eq!(
        by_code.get("OK").copied().unwrap_or(0),
        ROOMS * PER_ROOM,
        "every join must succeed: {by_code:?}"
    );
    // Each instance counts its own joins at once and the other's once they are committed:
    // every ack is within the room's size, and no count is repeated more than twice (once
    // per instance at most).
    for (name, counts) in counts_by_room(&out) {
        assert!(
            counts.iter().all(|&n| (1..=PER_ROOM as i64).contains(&n)),
            "{name}: {counts:?}"
        );
        let mut seen = BTreeMap::new();
        for n in &counts {
            *seen.entry(*n).or_insert(0) += 1;
        }
        assert!(seen.values().all(|&k| k <= 2), "{name}: {counts:?}");
    }
    let store = one.store().await;
    eventually("membership rows written", || {
        let store = store.clone();
        async move {
            let stored = stored_counts(&store).await?;
            let total: i64 = stored.values().sum();
            if total == (ROOMS * PER_ROOM) as i64 {
                Ok(())
            } else {
                Err(format!("{total} rows"))
            }
        }
    })
    .await;
    // Once committed, both instances agree: a newcomer on each sees the exact count.
    for (i, host) in [&one, &two].into_iter().enumerate() {
        let want = PER_ROOM as i64 + 1 + i as i64;
        eventually("counts converge across instances", || async {
            let o = storm::join_one(&host.url(), format!("cl-late-{i}"), room(3)).await;
            match o.member_count() {
                Some(n) if n == want => Ok(()),
                other => {
                    // Not yet: leave again so that the retry counts from the same state.
                    if let Some(mut c) = o.client {
                        let _ = c
                            .emit_args_ack(
                                "room:leave",
                                &[serde_json::json!({"roomName": room(3)})],
                                Duration::from_secs(5),
                            )
                            .await;
                    }
                    Err(format!("memberCount {other:?}, want {want}"))
                }
            }
        })
        .await;
    }
    redis.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_stopped_mid_storm_joins_succeed_or_say_retry() {
    storm::raise_fd_limit();
    let pg = PrivatePg::start();
    let url = pg.url();
    let host = TestHost::start(&[
        ("DATABASE_URL", url.as_str()),
        ("REALTIME_MAX_CONNECTIONS", "5000"),
    ])
    .await;
    create_rooms(&host).await;
    // Two rooms where a membership changes the answer: one with a muted member, one private.
    host.create_room(
        "storm-sanctioned",
        RoomType::Channel,
        Visibility::Public,
        None,
    )
    .await;
    host.add_member("storm-sanctioned", "muted-user", "member", true, false)
        .await;
    host.create_room(
        "storm-private",
        RoomType::Channel,
        Visibility::Private,
        None,
    )
    .await;
    // The first half arrives while the database answers.
    let all = herd("down");
    let (first, second) = all.split_at(all.len() / 2);
    let before = join_storm(&host.url(), first.to_vec(), IN_FLIGHT).await;
    assert_eq!(
        codes(&before).get("OK").copied(),
        Some(first.len()),
        "{:?}",
        codes(&before)
    );
    // The database goes away; the second half arrives (their memberships cannot be read),
    // with newcomers for the two rooms where a membership matters.
    pg.stop("immediate");
    let mut arrivals = second.to_vec();
    for i in 0..50 {
        arrivals.push((format!("down-s{i}"), "storm-sanctioned".into()));
        arrivals.push((format!("down-p{i}"), "storm-private".into()));
    }
    let during = join_storm(&host.url(), arrivals, IN_FLIGHT).await;
    eprintln!("database stopped mid-storm: {:?}", codes(&during));
    for o in &during {
        let code = o.code();
        let open = o.room.starts_with("storm-") && o.room.len() == "storm-00".len();
        if open {
            assert_eq!(
                code, "OK",
                "{} joining cached open {}: {}",
                o.user, o.room, o.ack
            );
        } else {
            assert_eq!(
                code, "SERVICE_UNAVAILABLE",
                "{} joining {}: {}",
                o.user, o.room, o.ack
            );
            let retry = o.ack.pointer("/error/details/retryAfterMs");
            assert!(
                retry.and_then(|v| v.as_u64()).is_some_and(|ms| ms > 0),
                "retryAfterMs: {}",
                o.ack
            );
        }
    }
    // Counts stayed exact across both halves.
    let mut together: Vec<&Outcome> = before.iter().chain(during.iter()).collect();
    together.retain(|o| o.room.len() == "storm-00".len());
    let expected: Vec<i64> = (1..=PER_ROOM as i64).collect();
    let mut by_room: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for o in together {
        by_room
            .entry(o.room.clone())
            .or_default()
            .extend(o.member_count());
    }
    for (name, mut counts) in by_room {
        counts.sort_unstable();
        assert_eq!(counts, expected, "memberCounts of {name}");
    }
    // Users already known join other cached rooms: a second socket of each of the first 100
    // users joins the next room.
    let again: Vec<(String, String)> = first[..100]
        .iter()
        .enumerate()
        .map(|(i, (u, _))| (u.clone(), room((i + 1) % ROOMS)))
        .collect();
    let known = join_storm(&host.url(), again, IN_FLIGHT).await;
    assert_eq!(
        codes(&known).get("OK").copied(),
        Some(100),
        "cached users join cached rooms while the database is down: {:?}",
        codes(&known)
    );
    // A room nobody has read cannot be answered for: retry.
    let unknown = storm::join_one(&host.url(), "down-0".into(), "never-seen".into()).await;
    assert_eq!(unknown.code(), "SERVICE_UNAVAILABLE", "{}", unknown.ack);
    // Back: the refused ones retry and get their real answer; every acknowledged membership
    // is in the database.
    pg.start_again();
    let mut retried = Vec::new();
    for o in during.iter().filter(|o| !o.joined()) {
        let mut last = None;
        for _ in 0..100 {
            let again = storm::join_one(&host.url(), o.user.clone(), o.room.clone()).await;
            if again.code() != "SERVICE_UNAVAILABLE" {
                last = Some(again);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let last = last.unwrap_or_else(|| panic!("{} never got an answer for {}", o.user, o.room));
        let want = if o.room == "storm-private" {
            "ROOM_ACCESS_DENIED"
        } else {
            "OK"
        };
        assert_eq!(
            last.code(),
            want,
            "{} joining {}: {}",
            o.user,
            o.room,
            last.ack
        );
        retried.push(last);
    }
    let store = Store::connect(&url).await.expect("store");
    eventually("every acknowledged membership written", || {
        let store = store.clone();
        async move {
            let stored = stored_counts(&store).await?;
            let total: i64 = stored.values().sum();
            // 2,000 in the open rooms, 100 second rooms, 50 + the muted member in the
            // sanctioned room.
            let want = (ROOMS * PER_ROOM + 100 + 51) as i64;
            if total == want {
                Ok(())
            } else {
                Err(format!("{total} rows, want {want}: {stored:?}"))
            }
        }
    })
    .await;
    drop((before, during, known, retried));
}
