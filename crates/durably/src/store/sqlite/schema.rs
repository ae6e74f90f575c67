//! Upstream schema version 1, byte for byte.
//!
//! The statements reproduce the DDL the TypeScript library (Kysely) issues, so `sqlite_master`
//! of a database migrated by durably equals one migrated by `@coji/durably` v0.15 (checked by
//! `tests/upstream_compat.rs` against a fixture the TypeScript library produced). Generated from
//! `tests/fixtures/upstream-v0.15/sqlite_master.json`; do not edit by hand.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::store::SCHEMA_VERSION;
use crate::time::Timestamp;

/// Version 1 DDL in upstream's creation order.
pub(crate) const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS \"durably_runs\" (\"id\" text primary key, \"job_name\" text not null, \"input\" text not null, \"status\" text not null, \"idempotency_key\" text, \"concurrency_key\" text, \"labels\" text default '{}' not null, \"current_step_index\" integer default 0 not null, \"completed_step_count\" integer default 0 not null, \"progress\" text, \"output\" text, \"error\" text, \"lease_owner\" text, \"lease_expires_at\" text, \"lease_generation\" integer default 0 not null, \"started_at\" text, \"completed_at\" text, \"created_at\" text not null, \"updated_at\" text not null)",
    "CREATE UNIQUE INDEX IF NOT EXISTS \"idx_durably_runs_job_idempotency\" on \"durably_runs\" (\"job_name\", \"idempotency_key\")",
    "CREATE INDEX IF NOT EXISTS \"idx_durably_runs_status_concurrency\" on \"durably_runs\" (\"status\", \"concurrency_key\")",
    "CREATE INDEX IF NOT EXISTS \"idx_durably_runs_status_created\" on \"durably_runs\" (\"status\", \"created_at\")",
    "CREATE INDEX IF NOT EXISTS \"idx_durably_runs_status_lease_expires\" on \"durably_runs\" (\"status\", \"lease_expires_at\")",
    "CREATE INDEX IF NOT EXISTS \"idx_durably_runs_job_created\" on \"durably_runs\" (\"job_name\", \"created_at\")",
    "CREATE INDEX IF NOT EXISTS \"idx_durably_runs_status_completed\" on \"durably_runs\" (\"status\", \"completed_at\")",
    "CREATE TABLE IF NOT EXISTS \"durably_run_labels\" (\"run_id\" text not null, \"key\" text not null, \"value\" text not null)",
    "CREATE UNIQUE INDEX IF NOT EXISTS \"idx_durably_run_labels_pk\" on \"durably_run_labels\" (\"run_id\", \"key\")",
    "CREATE INDEX IF NOT EXISTS \"idx_durably_run_labels_key_value\" on \"durably_run_labels\" (\"key\", \"value\")",
    "CREATE TABLE IF NOT EXISTS \"durably_steps\" (\"id\" text primary key, \"run_id\" text not null, \"name\" text not null, \"index\" integer not null, \"status\" text not null, \"output\" text, \"error\" text, \"started_at\" text not null, \"completed_at\" text)",
    "CREATE INDEX IF NOT EXISTS \"idx_durably_steps_run_index\" on \"durably_steps\" (\"run_id\", \"index\")",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_durably_steps_completed_unique\n        ON durably_steps(run_id, name) WHERE status = 'completed'\n      ",
    "CREATE TABLE IF NOT EXISTS \"durably_logs\" (\"id\" text primary key, \"run_id\" text not null, \"step_name\" text, \"level\" text not null, \"message\" text not null, \"data\" text, \"created_at\" text not null)",
    "CREATE INDEX IF NOT EXISTS \"idx_durably_logs_run_created\" on \"durably_logs\" (\"run_id\", \"created_at\")",
    "CREATE TABLE IF NOT EXISTS \"durably_schema_versions\" (\"version\" integer primary key, \"applied_at\" text not null)",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_durably_runs_pending_concurrency\n        ON durably_runs (job_name, concurrency_key)\n        WHERE status = 'pending' AND concurrency_key IS NOT NULL\n      ",
];

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
