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
            match conn.execute_batch(statement) {
                // SQLite has no `ADD COLUMN IF NOT EXISTS`: a column already there (a database
                // whose version table was lost) is the step already applied.
                Err(e) if is_column_already_added(statement, &e) => {}
                result => result.map_err(failed)?,
            }
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

/// Whether `error` of `statement` says that the column it adds exists already.
fn is_column_already_added(statement: &str, error: &rusqlite::Error) -> bool {
    statement.starts_with("ALTER TABLE")
        && statement.contains("ADD COLUMN")
        && error.to_string().contains("duplicate column name")
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
