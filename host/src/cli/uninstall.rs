//! `uninstall --yes`: drops exactly what the plugin created in its database.
//!
//! PostgreSQL: the tables, views and functions that `migrations/postgres` creates (read from
//! the migrations compiled into this binary, so the list follows the schema), dropped in one
//! transaction without CASCADE, so an object of someone else that depends on ours stops the
//! uninstall instead of disappearing with it; then this plugin's rows of `_sqlx_migrations`.
//! The `uuid-ossp` extension stays (other schemas may use it). SQLite: the database file and
//! its `-wal`/`-shm`/`-journal` companions.

use std::path::PathBuf;
use std::str::FromStr;

use serde_json::json;
use sqlx::Connection;

use super::print::{outln, print_json};
use crate::config::Config;

static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// What the PostgreSQL migrations create.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PgObjects {
    /// Table names.
    pub tables: Vec<String>,
    /// View names.
    pub views: Vec<String>,
    /// Function signatures, `name(args)`.
    pub functions: Vec<String>,
}

/// Runs `uninstall`.
pub async fn run(config: &Config, yes: bool, json: bool) -> anyhow::Result<()> {
    if !yes {
        anyhow::bail!(
            "uninstall drops the realtime tables and their data: run it again with --yes to confirm"
        );
    }
    let url = &config.database_url;
    let report = if url.starts_with("sqlite:") {
        let removed = drop_sqlite(url)?;
        json!({"backend": "sqlite", "removedFiles": removed})
    } else {
        let objects = pg_objects();
        let migrations = drop_postgres(url).await?;
        json!({"backend": "postgres", "tables": objects.tables, "views": objects.views,
               "functions": objects.functions, "migrationRecords": migrations})
    };
    if json {
        print_json(&report);
    } else if report["backend"] == "sqlite" {
        let files = report["removedFiles"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if files.is_empty() {
            outln!("Nothing to remove: no database file");
        }
        for f in files {
            outln!("✓ Removed {}", f.as_str().unwrap_or("-"));
        }
    } else {
        for kind in ["views", "tables", "functions"] {
            for name in report[kind].as_array().into_iter().flatten() {
                outln!(
                    "✓ Dropped {} {}",
                    &kind[..kind.len() - 1],
                    name.as_str().unwrap_or("-")
                );
            }
        }
        outln!("✓ Removed {} migration records", report["migrationRecords"]);
    }
    Ok(())
}

/// The file behind a `sqlite:` URL (None for in-memory databases and other URLs).
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let name = opts.get_filename();
    let text = name.to_string_lossy();
    if text.is_empty() || text == ":memory:" || text.starts_with("file:") {
        return None;
    }
    Some(name.to_path_buf())
}

fn drop_sqlite(url: &str) -> anyhow::Result<Vec<String>> {
    let path = sqlite_path(url)
        .ok_or_else(|| anyhow::anyhow!("DATABASE_URL {url:?} names no database file"))?;
    let mut removed = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let p = PathBuf::from(p);
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(
                std::path::absolute(&p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
                    .to_string(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot remove {}: {e}", p.display()),
        }
    }
    Ok(removed)
}

/// The tables, views and functions the PostgreSQL migrations create.
pub fn pg_objects() -> PgObjects {
    let mut out = PgObjects::default();
    for m in PG_MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        parse_creates(&m.sql, &mut out);
    }
    out
}

/// Collects `CREATE [OR REPLACE] TABLE|VIEW|FUNCTION [IF NOT EXISTS] name` statements.
fn parse_creates(sql: &str, out: &mut PgObjects) {
    for line in sql.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        if upper.first().map(String::as_str) != Some("CREATE") {
            continue;
        }
        let mut i = 1;
        if upper.get(1).map(String::as_str) == Some("OR")
            && upper.get(2).map(String::as_str) == Some("REPLACE")
        {
            i = 3;
        }
        let Some(kind) = upper.get(i).cloned() else {
            continue;
        };
        i += 1;
        if upper.get(i).map(String::as_str) == Some("IF") {
            i += 3; // IF NOT EXISTS
        }
        let rest = words.get(i..).map(|w| w.join(" ")).unwrap_or_default();
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        let list = match kind.as_str() {
            "TABLE" => &mut out.tables,
            "VIEW" => &mut out.views,
            "FUNCTION" => &mut out.functions,
            _ => continue,
        };
        let entry = if kind == "FUNCTION" {
            let args = rest[name.len()..]
                .trim_start()
                .strip_prefix('(')
                .and_then(|a| a.split(')').next())
                .unwrap_or("")
                .trim()
                .to_string();
            format!("{name}({args})")
        } else {
            name
        };
        if !list.contains(&entry) {
            list.push(entry);
        }
    }
}

/// Drops the objects in one transaction; returns how many migration records were removed.
/// The uninstall script: the objects of [`pg_objects`], dropped in dependency order.
const UNINSTALL_SQL: &str = include_str!("../../../migrations/postgres-uninstall.sql");

async fn drop_postgres(url: &str) -> anyhow::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL: {e}"))?;
    let mut tx = conn.begin().await?;
    // A fixed script (no SQL is assembled from names at run time).
    sqlx::raw_sql(UNINSTALL_SQL).execute(&mut *tx).await?;
    let versions: Vec<i64> = PG_MIGRATOR.iter().map(|m| m.version).collect();
    let has_records: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(&mut *tx)
            .await?;
    let removed = if has_records.is_some() {
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ANY($1)")
            .bind(&versions)
            .execute(&mut *tx)
            .await?
            .rows_affected()
    } else {
        0
    };
    tx.commit().await?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uninstall_script_names_every_object_the_migrations_create() {
        let o = pg_objects();
        let script: String = UNINSTALL_SQL
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join(" ");
        let words: Vec<&str> = script
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        for name in o.tables.iter().chain(&o.views).chain(&o.functions) {
            let bare = name.split('(').next().unwrap_or(name);
            assert!(
                words.contains(&bare),
                "{bare} is not dropped by the uninstall script"
            );
        }
        // And nothing else: every name after DROP … IF EXISTS is one of the migrations'.
        let ours: Vec<&str> = o
            .tables
            .iter()
            .chain(&o.views)
            .chain(&o.functions)
            .map(|n| n.split('(').next().unwrap_or(n))
            .collect();
        let keywords = ["DROP", "VIEW", "TABLE", "FUNCTION", "IF", "EXISTS"];
        for w in words.iter().filter(|w| !keywords.contains(w)) {
            assert!(
                ours.contains(w),
                "{w} is dropped but not created by the migrations"
            );
        }
    }

    #[test]
    fn the_drop_list_is_the_schema_of_the_original_plus_node_leases() {
        let o = pg_objects();
        for t in [
            "realtime_connections",
            "realtime_rooms",
            "realtime_room_members",
            "realtime_presence",
            "realtime_typing",
            "realtime_events",
            "realtime_nodes",
        ] {
            assert!(o.tables.iter().any(|x| x == t), "{t} missing: {o:?}");
        }
        for v in [
            "realtime_active_connections",
            "realtime_room_stats",
            "realtime_current_typing",
            "realtime_presence_summary",
        ] {
            assert!(o.views.iter().any(|x| x == v), "{v} missing: {o:?}");
        }
        for f in [
            "cleanup_expired_typing()",
            "update_presence_from_activity()",
            "disconnect_stale_connections()",
            "update_room_timestamp()",
            "update_presence_timestamp()",
        ] {
            assert!(o.functions.iter().any(|x| x == f), "{f} missing: {o:?}");
        }
        // Only the plugin's own names: nothing generic such as an extension.
        for name in o.tables.iter().chain(&o.views) {
            assert!(name.starts_with("realtime_"), "{name}");
        }
    }

    #[test]
    fn parser_reads_the_create_forms() {
        let mut o = PgObjects::default();
        parse_creates(
            "create table if not exists a_b (\n  x int);\nCREATE OR REPLACE VIEW v1 AS\n\
             CREATE FUNCTION f(a int, b text) RETURNS void\nCREATE INDEX IF NOT EXISTS i ON a_b(x);\n\
             CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\";\n-- CREATE TABLE commented (x int);",
            &mut o,
        );
        assert_eq!(o.tables, vec!["a_b"]);
        assert_eq!(o.views, vec!["v1"]);
        assert_eq!(o.functions, vec!["f(a int, b text)"]);
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://./data/realtime.db"),
            Some(PathBuf::from("./data/realtime.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/x.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/x.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x/y"), None);
    }
}
