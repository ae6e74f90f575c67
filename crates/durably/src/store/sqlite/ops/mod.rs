//! The SQL behind each [`Store`](crate::Store) operation, as plain functions on a connection.
//! Writes run inside the writer thread's group-commit transaction.
//!
//! Hot single-row writes that SQLite cannot prove single-row (`INSERT … SELECT`, `UPDATE …
//! RETURNING`) say `OR FAIL`: for one row it means the same as the default `ABORT` (a violated
//! constraint is found before the row is written), but SQLite then skips the statement journal
//! it would otherwise fill with a copy of every page the statement touches.
//!
//! One module per part of the contract: `enqueue.rs` (triggers, delays, debounce and
//! coalescing), `claims.rs` (claims and leases), `steps.rs` (step checkpoints, attempts,
//! progress and logs), `runs.rs` (run reads, the end of a run, resume, deletion and
//! retention), `waits.rs` (durable waits and child runs), over the row decoding of `rows.rs`
//! and the helpers here.

mod claims;
mod enqueue;
mod rows;
mod runs;
mod steps;
mod waits;

use crate::error::{Error, Result};
use crate::time::Timestamp;

pub(super) use claims::{claim, release_expired_leases, release_lease, renew_lease};
pub(super) use enqueue::enqueue;
pub(super) use runs::{
    cancel_run, delete_run, finish_run, get_run, get_runs, purge_runs, resume_run, update_run,
};
pub(super) use steps::{
    append_log, begin_step_attempt, get_completed_step, get_logs, get_step_attempts, get_steps,
    persist_step, set_step_attempt_metadata, update_progress,
};
pub(super) use waits::{
    children_settled, children_to_cancel, expire_due_waits, get_wait, get_waits, prepare_wait,
    settled_children_waits, signal_wait, wait_result,
};

pub(super) fn sql_error(operation: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::storage(operation, e)
}

fn json_error(operation: &'static str) -> impl Fn(serde_json::Error) -> Error {
    move |e| Error::storage(operation, e)
}

fn to_json(operation: &'static str, value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(json_error(operation))
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// The database's clock (v4 §4.7). SQLite's `'now'` is the clock of the process executing the
/// statement, which is this one, read here inside the write transaction (through the runtime's
/// wall clock, so a virtual wall clock applies too).
fn database_now() -> Timestamp {
    Timestamp::now()
}
