//! `nself-realtime uninstall --yes` on PostgreSQL drops exactly the plugin's objects: after
//! `init`, every `realtime_*` table, view and function and this plugin's migration records are
//! gone, while an unrelated table of the same database stays; an object of someone else that
//! depends on ours stops the uninstall and nothing is dropped.

use nself_realtime_tests::pg::FreshDb;
use nself_realtime_tests::process::{cli, command};
use sqlx::PgConnection;

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

const OUR_RELATIONS: &str = "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = 'public' AND c.relname LIKE 'realtime\\_%' AND c.relkind IN ('r', 'v')";
const OUR_FUNCTIONS: &str = "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname = 'public' AND p.proname IN ('cleanup_expired_typing', \
     'update_presence_from_activity', 'disconnect_stale_connections', 'update_room_timestamp', \
     'update_presence_timestamp')";

#[tokio::test]
async fn uninstall_drops_exactly_the_plugin_objects() {
    let db = FreshDb::create().await;
    let vars = [("DATABASE_URL", db.url.as_str())];
    cli(&vars, &["init"]);
    let mut conn = db.connect().await;
    assert_eq!(
        count(&mut conn, OUR_RELATIONS).await,
        12,
        "8 tables + 4 views"
    );
    assert_eq!(count(&mut conn, OUR_FUNCTIONS).await, 5);
    sqlx::raw_sql(
        "CREATE TABLE other_app_items (id int PRIMARY KEY); INSERT INTO other_app_items VALUES (1);",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    // Without --yes nothing happens.
    let out = command(&vars).arg("uninstall").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(count(&mut conn, OUR_RELATIONS).await, 12);

    let report: serde_json::Value =
        serde_json::from_str(&cli(&vars, &["uninstall", "--yes", "--json"])).unwrap();
    assert_eq!(report["backend"], "postgres", "{report}");
    assert!(
        report["migrationRecords"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(count(&mut conn, OUR_RELATIONS).await, 0);
    assert_eq!(count(&mut conn, OUR_FUNCTIONS).await, 0);
    let left: i64 = count(&mut conn, "SELECT count(*) FROM other_app_items").await;
    assert_eq!(left, 1, "an unrelated table survives");
    let records = count(&mut conn, "SELECT count(*) FROM _sqlx_migrations").await;
    assert_eq!(records, 0, "the plugin's migration records are removed");

    // Re-installing works after an uninstall.
    cli(&vars, &["init"]);
    assert_eq!(count(&mut conn, OUR_RELATIONS).await, 12);
}

#[tokio::test]
async fn a_foreign_dependency_stops_the_uninstall_and_nothing_is_dropped() {
    let db = FreshDb::create().await;
    let vars = [("DATABASE_URL", db.url.as_str())];
    cli(&vars, &["init"]);
    let mut conn = db.connect().await;
    sqlx::raw_sql("CREATE VIEW other_app_rooms AS SELECT name FROM realtime_rooms")
        .execute(&mut conn)
        .await
        .unwrap();
    let out = command(&vars)
        .args(["uninstall", "--yes"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "uninstall should refuse: {err}");
    assert!(
        err.contains("other_app_rooms") || err.contains("depend"),
        "{err}"
    );
    assert_eq!(count(&mut conn, OUR_RELATIONS).await, 12, "rolled back");
    assert_eq!(count(&mut conn, OUR_FUNCTIONS).await, 5);
}
