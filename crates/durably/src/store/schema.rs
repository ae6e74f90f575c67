//! Upstream's schema versions 1 to 4, shared by every backend.
//!
//! The statements reproduce the DDL the TypeScript library (Kysely) issues, so `sqlite_master`
//! of a SQLite database migrated by durably equals one migrated by `@coji/durably` v0.15
//! (checked by `tests/upstream_compat.rs` against a fixture the TypeScript library produced),
//! and PostgreSQL gets the same tables, columns (`text`, `integer`), defaults and index names.
//! Generated from `tests/fixtures/upstream-v0.15/sqlite_master.json`; do not edit by hand.

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

/// Version 2: step attempts (one row per real execution of a step callback), as upstream's
/// Kysely schema builder issues it (`UPSTREAM-v4.md` §2.2).
pub(crate) const SCHEMA_V2: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS \"durably_step_attempts\" (\"id\" text primary key, \"run_id\" text not null, \"step_name\" text not null, \"step_index\" integer not null, \"lease_generation\" integer not null, \"status\" text not null, \"metadata\" text, \"error\" text, \"started_at\" text not null, \"completed_at\" text)",
    "CREATE INDEX IF NOT EXISTS \"idx_durably_step_attempts_run_started\" on \"durably_step_attempts\" (\"run_id\", \"started_at\", \"id\")",
];

/// Version 3: durable waits and the run's link to the wait it is suspended on (§2.3).
pub(crate) const SCHEMA_V3: &[&str] = &[
    "ALTER TABLE \"durably_runs\" add column \"waiting_on_wait_id\" text",
    "CREATE TABLE \"durably_waits\" (\"id\" text primary key, \"run_id\" text not null, \"name\" text not null, \"metadata\" text, \"status\" text not null, \"payload\" text, \"signal_id\" text, \"created_at\" text not null, \"resolved_at\" text)",
    "CREATE UNIQUE INDEX \"idx_durably_waits_run_name\" on \"durably_waits\" (\"run_id\", \"name\")",
];

/// Version 4: wait deadlines and lifecycle timing (§2.4).
pub(crate) const SCHEMA_V4: &[&str] = &[
    "ALTER TABLE \"durably_runs\" add column \"resume_claimed_at\" text",
    "ALTER TABLE \"durably_waits\" add column \"deadline_at\" text",
    "ALTER TABLE \"durably_waits\" add column \"deadline_ms\" double precision",
    "ALTER TABLE \"durably_waits\" add column \"outcome\" text",
    "ALTER TABLE \"durably_waits\" add column \"suspended_at\" text",
    "ALTER TABLE \"durably_waits\" add column \"first_resumed_at\" text",
    "ALTER TABLE \"durably_waits\" add column \"timing_known\" integer default 0 not null",
    "UPDATE \"durably_waits\" set \"outcome\" = 'signal' where \"status\" = 'resolved'",
    "CREATE INDEX \"idx_durably_waits_due\" on \"durably_waits\" (\"status\", \"deadline_ms\", \"id\")",
];
