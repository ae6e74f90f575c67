//! Migrations on SQLite: climbs the upstream ladder and durably's own
//! ([`crate::store::migrations`]) inside the writer's transaction.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::store::migrations::{Ladder, SQLITE_OWN, UPSTREAM};
use crate::time::Timestamp;

/// Applies the missing steps of both ladders inside the writer's transaction. A database
/// already at the latest versions is only read.
pub(super) fn migrate(conn: &Connection) -> Result<()> {
    climb(conn, &UPSTREAM)?;
    climb(conn, &SQLITE_OWN)
}

/// Applies the steps of `ladder` above the version its table records, recording each.
fn climb(conn: &Connection, ladder: &Ladder) -> Result<()> {
    let current = version_in(conn, ladder.table)?;
    if current >= ladder.latest() {
        return Ok(());
    }
    let failed = |e| Error::storage("migrate", e);
    if let Some(create) = ladder.create_table() {
        conn.execute_batch(&create).map_err(failed)?;
    }
    for migration in ladder.pending(current) {
        for statement in migration.statements {
            conn.execute_batch(statement).map_err(failed)?;
        }
        conn.execute(
            &format!(
                "INSERT OR IGNORE INTO \"{}\" (version, applied_at) VALUES (?1, ?2)",
                ladder.table
            ),
            rusqlite::params![migration.version, Timestamp::now()],
        )
        .map_err(failed)?;
    }
    Ok(())
}

/// The upstream schema version: `MAX(version)` of `durably_schema_versions`, or 0 when the
/// table does not exist.
pub(super) fn current_version(conn: &Connection) -> Result<i64> {
    version_in(conn, UPSTREAM.table)
}

/// `MAX(version)` of a version table, or 0 when it does not exist.
fn version_in(conn: &Connection, table: &str) -> Result<i64> {
    let failed = |e| Error::storage("schema_version", e);
    let exists = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |_| Ok(()),
        )
        .optional()
        .map_err(failed)?
        .is_some();
    if !exists {
        return Ok(0);
    }
    conn.query_row(
        &format!("SELECT COALESCE(MAX(version), 0) FROM \"{table}\""),
        [],
        |row| row.get(0),
    )
    .map_err(failed)
}
