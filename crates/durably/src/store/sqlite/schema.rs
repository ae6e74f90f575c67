//! Migrations on SQLite: applies the shared upstream schema version 1
//! ([`crate::store::schema::SCHEMA_V1`]).

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::store::SCHEMA_VERSION;
use crate::store::schema::SCHEMA_V1;
use crate::time::Timestamp;

/// Applies missing migrations inside the writer's transaction. A database already at version 1
/// or later is left untouched.
pub(super) fn migrate(conn: &Connection) -> Result<()> {
    if current_version(conn)? >= SCHEMA_VERSION {
        return Ok(());
    }
    for statement in SCHEMA_V1 {
        conn.execute_batch(statement)
            .map_err(|e| Error::storage("migrate", e))?;
    }
    conn.execute(
        "INSERT OR IGNORE INTO durably_schema_versions (version, applied_at) VALUES (?1, ?2)",
        rusqlite::params![SCHEMA_VERSION, Timestamp::now()],
    )
    .map_err(|e| Error::storage("migrate", e))?;
    Ok(())
}

/// `MAX(version)` of `durably_schema_versions`, or 0 when the table does not exist.
pub(super) fn current_version(conn: &Connection) -> Result<i64> {
    let exists = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'durably_schema_versions'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(|e| Error::storage("schema_version", e))?
        .is_some();
    if !exists {
        return Ok(0);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM durably_schema_versions",
        [],
        |row| row.get(0),
    )
    .map_err(|e| Error::storage("schema_version", e))
}
