//! The private Redis Cluster that the cluster-mode tests run on (issue 20): three masters formed
//! by the test itself on loopback. Checks what those tests rely on: the cluster forms, a hash tag
//! keeps one room's keys on one master while different rooms spread over all of them, and a
//! master killed and started again on its port takes its slots back (its keys lost, as after a
//! crash without persistence).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nself_realtime_tests::redis::PrivateCluster;

#[tokio::test]
async fn a_private_cluster_forms_spreads_rooms_and_survives_a_master_restart() {
    let mut c = PrivateCluster::start(3).await;
    assert_eq!(c.seeds().split(',').count(), 3);

    // One room's keys (meta, log, typing) share the room's hash tag: one slot, one master.
    let room_keys = |room: &str| {
        ["hist:meta", "hist:log", "typing:main"].map(|k| format!("rt:{{room:{room}}}:{k}"))
    };
    let mut masters = BTreeSet::new();
    for i in 0..30 {
        let room = format!("room-{i}");
        let owners: BTreeSet<usize> = {
            let mut s = BTreeSet::new();
            for k in room_keys(&room) {
                s.insert(c.master_of(&k).await.expect("a master serves the slot"));
            }
            s
        };
        assert_eq!(owners.len(), 1, "the keys of {room} live on one master");
        masters.extend(owners);
    }
    assert_eq!(masters.len(), 3, "30 rooms spread over all three masters");

    // A key written through the master that owns it is read back there.
    let key = "rt:{room:room-7}:hist:meta";
    let owner = c.master_of(key).await.expect("owner");
    c.command(owner, &["SET", key, "1"])
        .await
        .expect("SET on the owner");
    let got: String = redis::from_redis_value(c.command(owner, &["GET", key]).await.expect("GET"))
        .expect("a string");
    assert_eq!(got, "1");
    // Any other master answers MOVED for it.
    let other = (owner + 1) % 3;
    let moved = c.command(other, &["GET", key]).await;
    assert!(
        moved
            .as_ref()
            .is_err_and(|e| e.to_string().to_uppercase().contains("MOVED")),
        "another master redirects: {moved:?}"
    );

    // Kill the owner: the others notice within the node timeout (2 s) plus gossip.
    c.kill(owner);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = c
            .command(other, &["CLUSTER", "INFO"])
            .await
            .expect("CLUSTER INFO");
        let info: String = redis::from_redis_value(info).expect("text");
        if info.contains("cluster_state:fail") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never noticed the dead master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back on its port with its nodes.conf: it serves its slots again, empty.
    c.restart(owner).await;
    assert_eq!(c.master_of(key).await, Some(owner));
    let after = c
        .command(owner, &["GET", key])
        .await
        .expect("GET after the restart");
    assert_eq!(
        after,
        redis::Value::Nil,
        "a restart without persistence lost the key"
    );
}
