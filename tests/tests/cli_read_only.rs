//! Issue 17: read-only commands (`stats`, `rooms`, `rooms info`, `connections`, `events`) open
//! what exists: a mistyped SQLite path is an error and creates nothing, a PostgreSQL database
//! without the schema is not migrated, an unreachable PostgreSQL is named by host:port; each
//! error is one line and exit 1.

use std::process::Output;

use nself_realtime_tests::pg::FreshDb;
use nself_realtime_tests::process::run_cli;

fn run(vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    run_cli(vars, args)
}

fn one_line_error(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn read_only_commands_create_no_sqlite_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let typo = dir.path().join("dta/realtime.db");
    let url = format!("sqlite://{}", typo.display());
    for args in [
        &["stats"][..],
        &["rooms"],
        &["rooms", "info", "general"],
        &["connections"],
        &["events"],
    ] {
        let out = run(&[("DATABASE_URL", &url)], args);
        let err = one_line_error(&out);
        assert!(
            err.contains("no database at") && err.contains("dta"),
            "{args:?}: {err}"
        );
        assert!(
            !typo.exists() && !typo.parent().expect("dir").exists(),
            "{args:?} created it"
        );
    }
    // `init` creates it; then the read-only commands work on it.
    let good = dir.path().join("realtime.db");
    let url = format!("sqlite://{}", good.display());
    let out = run(&[("DATABASE_URL", &url)], &["init"]);
    assert!(out.status.success(), "{out:?}");
    for args in [&["stats", "--json"][..], &["rooms"], &["events"]] {
        let out = run(&[("DATABASE_URL", &url)], args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_do_not_migrate_postgres_and_name_an_unreachable_one() {
    let db = FreshDb::create().await;
    let out = run(&[("DATABASE_URL", &db.url)], &["rooms"]);
    let err = one_line_error(&out);
    assert!(err.contains("no nself-realtime schema"), "{err}");
    let mut conn = db.connect().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count tables");
    assert_eq!(tables, 0, "a read-only command created tables");

    let port = nself_realtime_tests::free_port();
    let url = format!("postgres://nobody@127.0.0.1:{port}/nothing");
    let out = run(&[("DATABASE_URL", &url)], &["stats"]);
    let err = one_line_error(&out);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert_eq!(
        err.matches(&format!("127.0.0.1:{port}")).count(),
        1,
        "{err}"
    );
}

#[test]
fn status_without_a_server_exits_1_and_an_existing_room_is_not_created_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/realtime.db", dir.path().display());
    let port = nself_realtime_tests::free_port().to_string();
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("REALTIME_PORT", port.as_str()),
        ("REALTIME_HOST", "127.0.0.1"),
    ];
    assert!(run(&vars, &["init"]).status.success());
    let out = run(&vars, &["status"]);
    let err = one_line_error(&out);
    assert!(
        err.contains(&format!("no server answers at http://127.0.0.1:{port}")),
        "{err}"
    );
    // The figures were still printed.
    assert!(String::from_utf8_lossy(&out.stdout).contains("Realtime Server Status"));

    let out = run(&vars, &["create-room", "lobby-7"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Room created: lobby-7"));
    let out = run(&vars, &["create-room", "lobby-7"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Room exists (left unchanged): lobby-7"),
        "{text}"
    );
    let out = run(&vars, &["create-room", "lobby-7", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["existed"], true, "{v}");
}

#[test]
fn argument_errors_are_one_line_and_exit_1() {
    for args in [
        &["rooms", "create"][..],
        &["--bogus"],
        &["create-room", "-t", "weird", "x"],
    ] {
        let out = run(&[], args);
        let err = one_line_error(&out);
        assert!(err.starts_with("Error: "), "{args:?}: {err}");
    }
    let out = run(&[], &["--version"]);
    assert!(out.status.success());
}
