//! The SQLite dialect of the store as text: every statement the SQLite store runs, named, with
//! `?N` parameters, and the builders of the two statements whose text depends on their input
//! (listings and operators' patches) returning their arguments as plain [`SqlArg`] values. Only
//! `ops.rs` runs them through `rusqlite`; another SQLite-dialect backend (libSQL over HTTP)
//! runs the same text through its own client; its forms of the few statements that rely on a
//! local transaction or on rusqlite's changed-row count follow the SQLite ones (feature
//! `libsql`, `store/libsql`).
#![cfg_attr(not(feature = "sqlite"), allow(dead_code))]

use crate::error::{Error, Result};
use crate::run::{RunFilter, RunStatus};
use crate::store::{RunPatch, validate_label_key};
use crate::time::Timestamp;

/// An argument of a statement, as plain data any SQLite client can bind.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SqlArg {
    Null,
    Integer(i64),
    Text(String),
}

impl SqlArg {
    /// Text, or NULL for `None`.
    fn text(value: Option<String>) -> Self {
        value.map_or(SqlArg::Null, SqlArg::Text)
    }

    /// `value` as JSON text.
    fn json(operation: &'static str, value: &impl serde::Serialize) -> Result<Self> {
        to_json(operation, value).map(SqlArg::Text)
    }
}

fn to_json(operation: &'static str, value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::storage(operation, e))
}

/// The statuses a listing asks for, each once (all of them when it names none).
pub(crate) fn listed_statuses(filter: &RunFilter) -> Vec<RunStatus> {
    if filter.statuses.is_empty() {
        return RunStatus::ALL.to_vec();
    }
    RunStatus::ALL
        .into_iter()
        .filter(|status| filter.statuses.contains(status))
        .collect()
}

macro_rules! run_columns {
    () => {
        "id, job_name, input, status, idempotency_key, concurrency_key, \
    current_step_index, completed_step_count, progress, output, error, labels, lease_owner, \
    lease_expires_at, lease_generation, started_at, completed_at, created_at, updated_at, \
    waiting_on_wait_id, rs_priority, rs_parent_run_id, rs_parent_wait_id, rs_trace_context"
    };
}

macro_rules! step_columns {
    () => {
        "id, run_id, name, \"index\", status, output, error, started_at, completed_at"
    };
}

macro_rules! log_columns {
    () => {
        "id, run_id, step_name, level, message, data, created_at"
    };
}

/// The status list of terminal runs, for SQL.
macro_rules! terminal {
    () => {
        "('completed', 'failed', 'cancelled')"
    };
}

/// A run's key is free when no *other* run holding that key has an unexpired lease.
macro_rules! key_is_free {
    () => {
        "(r.concurrency_key IS NULL OR NOT EXISTS (\
    SELECT 1 FROM durably_runs o WHERE o.status = 'leased' AND o.concurrency_key = r.concurrency_key \
    AND o.id <> r.id AND o.lease_expires_at IS NOT NULL AND o.lease_expires_at > ?1))"
    };
}

/// The run aliased `$t` never prepared a durable wait (v4 §3.4: maintenance leaves those alone).
macro_rules! no_waits {
    ($t:literal) => {
        concat!(
            "(",
            $t,
            ".waiting_on_wait_id IS NULL AND NOT EXISTS (SELECT 1 FROM durably_waits w WHERE w.run_id = ",
            $t,
            ".id))"
        )
    };
}

/// `status = 'leased' AND lease_generation = <fence>`: the condition of every lease-holder write.
macro_rules! fenced {
    () => {
        "id = ?1 AND status = 'leased' AND lease_generation = ?2"
    };
}

/// One run by id.
pub(crate) const GET_RUN: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM durably_runs WHERE id = ?1"
);

/// A run's steps in order.
pub(crate) const GET_STEPS: &str = concat!(
    "SELECT ",
    step_columns!(),
    " FROM durably_steps WHERE run_id = ?1 ORDER BY \"index\" ASC, id ASC"
);

/// The completed step of a run with a name.
pub(crate) const GET_COMPLETED_STEP: &str = concat!(
    "SELECT ",
    step_columns!(),
    " FROM durably_steps \
         WHERE run_id = ?1 AND name = ?2 AND status = 'completed'"
);

/// A run's logs in the order written.
pub(crate) const GET_LOGS: &str = concat!(
    "SELECT ",
    log_columns!(),
    " FROM durably_logs WHERE run_id = ?1 ORDER BY created_at ASC, id ASC"
);

/// The run of a job with an idempotency key.
pub(crate) const RUN_BY_IDEMPOTENCY_KEY: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM durably_runs WHERE job_name = ?1 AND idempotency_key = ?2"
);

/// The oldest pending run of a job with a concurrency key.
pub(crate) const OLDEST_PENDING_WITH_KEY: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM durably_runs \
         WHERE job_name = ?1 AND concurrency_key = ?2 AND status = 'pending' \
         ORDER BY created_at ASC, id ASC LIMIT 1"
);

/// The oldest leased run of a job with a concurrency key whose lease expires after `?3`
/// (`coalesce: active` reuses it).
pub(crate) const OLDEST_LIVE_LEASED_WITH_KEY: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM durably_runs \
         WHERE job_name = ?1 AND concurrency_key = ?2 AND status = 'leased' \
         AND lease_expires_at IS NOT NULL AND lease_expires_at > ?3 \
         ORDER BY created_at ASC, id ASC LIMIT 1"
);

/// The oldest waiting run of a job with a concurrency key (`coalesce: active` reuses it).
pub(crate) const OLDEST_WAITING_WITH_KEY: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM durably_runs \
         WHERE job_name = ?1 AND concurrency_key = ?2 AND status = 'waiting' \
         ORDER BY created_at ASC, id ASC LIMIT 1"
);

/// A new pending run.
/// (`?8` the priority, NULL for 0; `?9` and `?10` a child run's parent and its wait; `?11` the
/// trigger's trace context).
pub(crate) const INSERT_RUN: &str = "INSERT INTO durably_runs (id, job_name, input, status, idempotency_key, concurrency_key, \
         labels, current_step_index, completed_step_count, lease_generation, created_at, updated_at, \
         rs_priority, rs_parent_run_id, rs_parent_wait_id, rs_trace_context) \
         VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, 0, 0, 0, ?7, ?7, ?8, ?9, ?10, ?11)";

/// Whether the children of the wait `?1` are settled (one failed or cancelled, or none
/// unfinished), from `durably_rs_runs_parent_wait`.
pub(crate) const CHILDREN_SETTLED: &str = "SELECT EXISTS (SELECT 1 FROM durably_runs \
         WHERE rs_parent_wait_id = ?1 AND status IN ('failed', 'cancelled')) \
         OR NOT EXISTS (SELECT 1 FROM durably_runs WHERE rs_parent_wait_id = ?1 \
         AND status IN ('pending', 'leased', 'waiting'))";

/// Up to `?1` pending `children:*` waits a run was suspended on whose children are settled.
pub(crate) const SETTLED_CHILDREN_WAITS: &str = "SELECT w.id FROM durably_waits w \
         WHERE w.status = 'pending' AND w.name LIKE 'children:%' AND w.suspended_at IS NOT NULL \
         AND (EXISTS (SELECT 1 FROM durably_runs c WHERE c.rs_parent_wait_id = w.id \
         AND c.status IN ('failed', 'cancelled')) \
         OR NOT EXISTS (SELECT 1 FROM durably_runs c WHERE c.rs_parent_wait_id = w.id \
         AND c.status IN ('pending', 'leased', 'waiting'))) \
         ORDER BY w.created_at, w.id LIMIT ?1";

/// Up to `?1` unfinished children of parents cancelled at or after `?3` whose invoke's wait metadata is not
/// like `?2` ([`crate::children::DETACHED_METADATA_PATTERN`]), oldest first.
pub(crate) const CHILDREN_TO_CANCEL: &str = "SELECT c.id FROM durably_runs c \
     JOIN durably_runs p ON p.id = c.rs_parent_run_id \
     LEFT JOIN durably_waits w ON w.id = c.rs_parent_wait_id \
     WHERE c.status IN ('pending', 'leased', 'waiting') AND p.status = 'cancelled' \
     AND p.completed_at >= ?3 AND (w.metadata IS NULL OR w.metadata NOT LIKE ?2) \
     ORDER BY c.created_at, c.id LIMIT ?1";

/// One label of a new run.
pub(crate) const INSERT_LABEL: &str =
    "INSERT INTO durably_run_labels (run_id, key, value) VALUES (?1, ?2, ?3)";

/// A run's claim priority (aliased `r`), as ordered: NULL is 0.
macro_rules! priority {
    () => {
        "COALESCE(r.rs_priority, 0)"
    };
}

/// The claim order of runs aliased `r`: priority first, then age, then insertion order.
macro_rules! claim_order {
    () => {
        concat!(
            "ORDER BY ",
            priority!(),
            " DESC, r.created_at ASC, r.rowid ASC"
        )
    };
}

/// The first pending run of a priority other than 0 whose key is free (`?1` now), in claim
/// order: its priority, `created_at` and rowid. Only such runs are in durably's index
/// `durably_rs_runs_pending_priority` (its entries end with the rowid), so without priorities
/// in use this is one probe of an empty index. `INDEXED BY`: without statistics SQLite's
/// planner may prefer any index that starts with `status` and sort every pending run.
pub(crate) const FIRST_FREE_PRIORITIZED: &str = concat!(
    "SELECT r.rs_priority, r.created_at, r.rowid FROM durably_runs r \
             INDEXED BY durably_rs_runs_pending_priority \
             WHERE r.status = 'pending' AND r.rs_priority IS NOT NULL AND ",
    key_is_free!(),
    " ORDER BY r.rs_priority DESC, r.created_at ASC, r.rowid ASC LIMIT 1"
);

/// The oldest pending run of priority 0 (`rs_priority` NULL) whose key is free (`?1` now): its
/// priority, `created_at` and rowid, walking upstream's `(status, created_at)` index (whose
/// entries end with the rowid).
pub(crate) const OLDEST_FREE_PENDING: &str = concat!(
    "SELECT 0, r.created_at, r.rowid FROM durably_runs r \
             INDEXED BY idx_durably_runs_status_created \
             WHERE r.status = 'pending' AND r.rs_priority IS NULL AND ",
    key_is_free!(),
    " ORDER BY r.created_at ASC, r.rowid ASC LIMIT 1"
);

/// The first expired lease in claim order whose key is free (`?1` now): its priority,
/// `created_at` and rowid.
pub(crate) const OLDEST_FREE_EXPIRED_LEASE: &str = concat!(
    "SELECT ",
    priority!(),
    ", r.created_at, r.rowid FROM durably_runs r WHERE r.status = 'leased' \
             AND r.lease_expires_at IS NOT NULL AND r.lease_expires_at <= ?1 AND ",
    key_is_free!(),
    " ",
    claim_order!(),
    " LIMIT 1"
);

/// Whether any lease has expired at `?1`.
pub(crate) const ANY_EXPIRED_LEASE: &str = "SELECT EXISTS (SELECT 1 FROM durably_runs WHERE status = 'leased' \
             AND lease_expires_at IS NOT NULL AND lease_expires_at <= ?1)";

/// Leases the run at rowid `?1` (claims: the next generation); a waiting run resumed also
/// records when (`?5`, the database's time) unless a claim since its suspension did.
pub(crate) const LEASE_ROW: &str = "UPDATE durably_runs SET status = 'leased', lease_owner = ?2, lease_expires_at = ?3, \
             lease_generation = lease_generation + 1, started_at = COALESCE(started_at, ?4), \
             resume_claimed_at = CASE WHEN status = 'waiting' \
               THEN COALESCE(resume_claimed_at, ?5) ELSE resume_claimed_at END, \
             updated_at = ?4 WHERE rowid = ?1";

/// Whether any waiting run's wait is resolved (a claim then looks for one).
pub(crate) const ANY_RESUMABLE: &str = "SELECT EXISTS (SELECT 1 FROM durably_runs r \
             WHERE r.status = 'waiting' AND EXISTS (SELECT 1 FROM durably_waits w \
               WHERE w.id = r.waiting_on_wait_id AND w.status = 'resolved'))";

/// The run aliased `r` waits on a resolved wait.
macro_rules! wait_is_resolved {
    () => {
        "EXISTS (SELECT 1 FROM durably_waits w WHERE w.id = r.waiting_on_wait_id \
               AND w.status = 'resolved')"
    };
}

/// The first waiting run of a priority other than 0 whose wait is resolved and whose key is
/// free (`?1` now), in claim order: its priority, `created_at` and rowid, from durably's index
/// `durably_rs_runs_waiting_priority` (empty unless priorities are used).
pub(crate) const FIRST_FREE_PRIORITIZED_RESUMABLE: &str = concat!(
    "SELECT r.rs_priority, r.created_at, r.rowid FROM durably_runs r \
             INDEXED BY durably_rs_runs_waiting_priority \
             WHERE r.status = 'waiting' AND r.rs_priority IS NOT NULL AND ",
    wait_is_resolved!(),
    " AND ",
    key_is_free!(),
    " ORDER BY r.rs_priority DESC, r.created_at ASC, r.rowid ASC LIMIT 1"
);

/// The oldest waiting run of priority 0 whose wait is resolved and whose key is free (`?1`
/// now): its priority, `created_at` and rowid, walking upstream's `(status, created_at)` index
/// and stopping at the first (waits are mostly resolved in the order their runs were created,
/// so the walk is short; ordering by priority first would read every waiting run).
pub(crate) const OLDEST_FREE_RESUMABLE: &str = concat!(
    "SELECT 0, r.created_at, r.rowid FROM durably_runs r \
             INDEXED BY idx_durably_runs_status_created \
             WHERE r.status = 'waiting' AND r.rs_priority IS NULL AND ",
    wait_is_resolved!(),
    " AND ",
    key_is_free!(),
    " ORDER BY r.created_at ASC, r.rowid ASC LIMIT 1"
);

/// A resumed run's first resume time onto its resolved wait (`?1` wait, `?2` run), once.
pub(crate) const MARK_FIRST_RESUMED: &str = "UPDATE durably_waits SET first_resumed_at = \
             (SELECT resume_claimed_at FROM durably_runs WHERE id = ?2) \
             WHERE id = ?1 AND status = 'resolved' AND first_resumed_at IS NULL \
             AND (SELECT resume_claimed_at FROM durably_runs WHERE id = ?2) IS NOT NULL";

macro_rules! wait_columns {
    () => {
        "id, run_id, name, metadata, status, payload, signal_id, created_at, deadline_at, \
    outcome, suspended_at, resolved_at, first_resumed_at, timing_known"
    };
}

/// Locks the fenced run whose lease is unexpired at `?3` (a guarded no-op write, v4 §4.8).
pub(crate) const LOCK_LIVE_LEASE: &str = concat!(
    "UPDATE durably_runs SET updated_at = updated_at WHERE ",
    fenced!(),
    " AND lease_expires_at > ?3"
);

/// A wait by id.
pub(crate) const WAIT_BY_ID: &str = concat!(
    "SELECT ",
    wait_columns!(),
    " FROM durably_waits WHERE id = ?1"
);

/// A run's wait by name.
pub(crate) const WAIT_BY_NAME: &str = concat!(
    "SELECT ",
    wait_columns!(),
    " FROM durably_waits WHERE run_id = ?1 AND name = ?2"
);

/// A run's waits in creation order.
pub(crate) const WAITS_OF_RUN: &str = concat!(
    "SELECT ",
    wait_columns!(),
    " FROM durably_waits WHERE run_id = ?1 ORDER BY created_at ASC, id ASC"
);

/// A new pending wait (`?6` deadline text, `?7` deadline ms).
pub(crate) const INSERT_WAIT: &str = "INSERT INTO durably_waits (id, run_id, name, metadata, status, \
             payload, signal_id, created_at, resolved_at, deadline_at, deadline_ms, outcome, \
             suspended_at, first_resumed_at, timing_known) \
             VALUES (?1, ?2, ?3, ?4, 'pending', NULL, NULL, ?5, NULL, ?6, ?7, NULL, NULL, NULL, 1)";

/// A run just inserted waits on its `delay` wait `?2`.
pub(crate) const DELAY_RUN: &str =
    "UPDATE durably_runs SET status = 'waiting', waiting_on_wait_id = ?2 WHERE id = ?1";

/// The run of job `?1` with debounce key `?2` that still waits for its start: its id, its
/// `delay` wait's id and that wait's metadata.
pub(crate) const DEBOUNCED_RUN: &str = "SELECT r.id, w.id, w.metadata FROM durably_runs r \
             JOIN durably_waits w ON w.id = r.waiting_on_wait_id \
             WHERE r.job_name = ?1 AND r.status = 'waiting' AND w.status = 'pending' \
             AND w.name = 'delay' AND json_extract(w.metadata, '$.durably.debounce.key') = ?2 \
             ORDER BY r.created_at ASC, r.id ASC LIMIT 1";

/// Moves the deadline of `delay` wait `?1` to `?2` (`?3` in ms).
pub(crate) const MOVE_DELAY: &str = "UPDATE durably_waits SET deadline_at = ?2, deadline_ms = ?3 \
             WHERE id = ?1 AND status = 'pending'";

/// A debounced run `?1` takes the last trigger's input `?2` at `?3`.
pub(crate) const DEBOUNCE_INPUT: &str =
    "UPDATE durably_runs SET input = ?2, updated_at = ?3 WHERE id = ?1 AND status = 'waiting'";

/// A `delay` wait `?1` records when its run was suspended on it (`?2`).
pub(crate) const DELAY_WAIT_SUSPENDED: &str =
    "UPDATE durably_waits SET suspended_at = ?2 WHERE id = ?1";

/// Resolves a pending wait whose deadline is at or before `?2` (ms) as a timeout.
pub(crate) const TIME_OUT_WAIT: &str = "UPDATE durably_waits SET status = 'resolved', \
             outcome = 'timeout', resolved_at = deadline_at WHERE id = ?1 AND status = 'pending' \
             AND deadline_ms IS NOT NULL AND deadline_ms <= ?2";

/// Suspends the (locked, fenced) run on wait `?3` at `?4`.
pub(crate) const SUSPEND_RUN: &str = concat!(
    "UPDATE durably_runs SET status = 'waiting', waiting_on_wait_id = ?3, \
             resume_claimed_at = NULL, lease_owner = NULL, lease_expires_at = NULL, \
             updated_at = ?4 WHERE ",
    fenced!()
);

/// The first suspension on a wait (`?2`).
pub(crate) const MARK_SUSPENDED: &str =
    "UPDATE durably_waits SET suspended_at = COALESCE(suspended_at, ?2) WHERE id = ?1";

/// Locks a run (a no-op write) and reads whether it ended; no row for an unknown run.
pub(crate) const LOCK_RUN: &str = concat!(
    "UPDATE OR FAIL durably_runs SET updated_at = updated_at WHERE id = ?1 \
             RETURNING status IN ",
    terminal!()
);

/// Accepts a signal (`?2` canonical payload, `?3` signal id, `?4` now) on a pending wait.
pub(crate) const RESOLVE_SIGNAL: &str = "UPDATE durably_waits SET status = 'resolved', \
             outcome = 'signal', payload = ?2, signal_id = ?3, resolved_at = ?4 \
             WHERE id = ?1 AND status = 'pending'";

/// Pending waits due at `?1` (ms), earliest deadline first, at most `?2`.
pub(crate) const DUE_WAITS: &str = "SELECT id, run_id FROM durably_waits WHERE status = 'pending' \
             AND deadline_ms IS NOT NULL AND deadline_ms <= ?1 ORDER BY deadline_ms, id LIMIT ?2";

/// Ends a run's pending waits (`?2` status `cancelled` or `closed`, `?3` now).
pub(crate) const END_WAITS: &str = "UPDATE durably_waits SET status = ?2, resolved_at = ?3 \
             WHERE run_id = ?1 AND status = 'pending'";

/// The run at a rowid.
pub(crate) const RUN_BY_ROWID: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM durably_runs WHERE rowid = ?1"
);

/// Extends a held, unexpired lease (fenced).
pub(crate) const RENEW_LEASE: &str = concat!(
    "UPDATE durably_runs SET lease_expires_at = ?3, updated_at = ?4 \
             WHERE ",
    fenced!(),
    " AND lease_expires_at > ?4"
);

/// Gives a claimed run back to pending (fenced).
pub(crate) const RELEASE_LEASE: &str = concat!(
    "UPDATE durably_runs SET status = 'pending', lease_owner = NULL, \
             lease_expires_at = NULL, updated_at = ?3 WHERE ",
    fenced!(),
    " AND (concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM durably_runs p \
               WHERE p.status = 'pending' AND p.job_name = durably_runs.job_name \
               AND p.concurrency_key = durably_runs.concurrency_key))"
);

/// A step row, only while the fence holds.
pub(crate) const INSERT_STEP: &str = "INSERT OR FAIL INTO durably_steps (id, run_id, name, \"index\", status, output, error, started_at, completed_at) \
             SELECT ?3, id, ?4, ?5, ?6, ?7, ?8, ?9, ?10 FROM durably_runs \
             WHERE id = ?1 AND status = 'leased' AND lease_generation = ?2";

/// A whole step attempt with its outcome, written after the step's fenced insert in the same
/// transaction (which proved the fence).
pub(crate) const INSERT_ATTEMPT: &str = "INSERT INTO durably_step_attempts (id, run_id, step_name, \
             step_index, lease_generation, status, metadata, error, started_at, completed_at) \
             VALUES (?3, ?1, ?4, ?5, ?2, ?6, ?7, ?8, ?9, ?10)";

/// A `started` attempt, only while the fence holds and the lease is unexpired at `?8`.
pub(crate) const BEGIN_ATTEMPT: &str = "INSERT OR FAIL INTO durably_step_attempts (id, run_id, step_name, \
             step_index, lease_generation, status, metadata, error, started_at, completed_at) \
             SELECT ?3, id, ?4, ?5, lease_generation, 'started', ?6, NULL, ?7, NULL FROM durably_runs \
             WHERE id = ?1 AND status = 'leased' AND lease_generation = ?2 AND lease_expires_at > ?8";

/// The outcome of a begun attempt, only while it is `started` under the fence.
pub(crate) const FINISH_ATTEMPT: &str = "UPDATE OR FAIL durably_step_attempts SET status = ?4, error = ?5, \
             completed_at = ?6 WHERE id = ?3 AND run_id = ?1 AND lease_generation = ?2 \
             AND status = 'started' AND EXISTS (SELECT 1 FROM durably_runs \
             WHERE id = ?1 AND status = 'leased' AND lease_generation = ?2)";

/// Replaces a `started` attempt's metadata, only while the fence holds and the lease is
/// unexpired at `?5`.
pub(crate) const SET_ATTEMPT_METADATA: &str = "UPDATE OR FAIL durably_step_attempts SET metadata = ?4 \
             WHERE id = ?3 AND run_id = ?1 AND lease_generation = ?2 AND status = 'started' \
             AND EXISTS (SELECT 1 FROM durably_runs WHERE id = ?1 AND status = 'leased' \
             AND lease_generation = ?2 AND lease_expires_at > ?5)";

/// A run's attempts, oldest first, with the run facts their interruption reason needs.
pub(crate) const SELECT_ATTEMPTS: &str = "SELECT a.id, a.run_id, a.step_name, a.step_index, \
             a.lease_generation, a.status, a.metadata, a.error, a.started_at, a.completed_at, \
             r.status, r.lease_generation, r.error FROM durably_step_attempts a \
             LEFT JOIN durably_runs r ON r.id = a.run_id WHERE a.run_id = ?1 \
             ORDER BY a.started_at, a.id";

/// A completed step advances the run's counters (fenced).
pub(crate) const ADVANCE_STEP_COUNTERS: &str = concat!(
    "UPDATE durably_runs SET current_step_index = ?3, \
             completed_step_count = completed_step_count + 1, updated_at = ?4 WHERE ",
    fenced!()
);

/// Stores progress (fenced).
pub(crate) const UPDATE_PROGRESS: &str = concat!(
    "UPDATE durably_runs SET progress = ?3, updated_at = ?4 WHERE ",
    fenced!()
);

/// A log line without a fence.
pub(crate) const INSERT_LOG: &str = concat!(
    "INSERT INTO durably_logs (",
    log_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
);

/// A log line, only while the fence (`?8`) holds.
pub(crate) const INSERT_FENCED_LOG: &str = concat!(
    "INSERT OR FAIL INTO durably_logs (",
    log_columns!(),
    ") SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 \
                 FROM durably_runs WHERE id = ?2 AND status = 'leased' AND lease_generation = ?8"
);

/// Drops a run's steps.
pub(crate) const DELETE_STEPS: &str = "DELETE FROM durably_steps WHERE run_id = ?1";

/// Completes a leased run (fenced).
pub(crate) const COMPLETE_RUN: &str = concat!(
    "UPDATE durably_runs SET status = 'completed', output = ?3, error = NULL, \
                 lease_owner = NULL, lease_expires_at = NULL, completed_at = ?4, updated_at = ?4 \
                 WHERE ",
    fenced!()
);

/// Fails a leased run (fenced).
pub(crate) const FAIL_RUN: &str = concat!(
    "UPDATE durably_runs SET status = 'failed', error = ?3, lease_owner = NULL, \
                 lease_expires_at = NULL, completed_at = ?4, updated_at = ?4 WHERE ",
    fenced!()
);

/// Cancels a pending, leased or waiting run (unfenced).
pub(crate) const CANCEL_RUN: &str = "UPDATE durably_runs SET status = 'cancelled', lease_owner = NULL, \
             lease_expires_at = NULL, completed_at = ?2, updated_at = ?2 \
             WHERE id = ?1 AND status IN ('pending', 'leased', 'waiting')";

/// Whether job `?1` has a pending run with concurrency key `?2` (other than run `?3`).
pub(crate) const HAS_PENDING_WITH_KEY: &str = "SELECT EXISTS (SELECT 1 FROM durably_runs \
             WHERE status = 'pending' AND job_name = ?1 AND concurrency_key = ?2 AND id <> ?3)";

/// Puts failed run `?1` back to `pending` at `?2` (an operator's resume, unfenced): error,
/// completion and lease cleared, the lease generation kept.
pub(crate) const RESUME_RUN: &str = concat!(
    "UPDATE durably_runs SET status = 'pending', error = NULL, completed_at = NULL, \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = ?2 \
             WHERE id = ?1 AND status = 'failed' RETURNING ",
    run_columns!()
);

/// Reopens the waits of run `?1` that its failure closed.
pub(crate) const REOPEN_CLOSED_WAITS: &str = "UPDATE durably_waits SET status = 'pending', \
             resolved_at = NULL WHERE run_id = ?1 AND status = 'closed'";

/// Whether a run exists and is terminal.
pub(crate) const IS_TERMINAL: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM durably_runs WHERE id = ?1 AND status IN ",
    terminal!(),
    ")"
);

/// Terminal runs that ended before `?1`, oldest first, at most `?2`.
pub(crate) const PURGE_CANDIDATES: &str = concat!(
    "SELECT id FROM durably_runs WHERE status IN ",
    terminal!(),
    " \
             AND completed_at IS NOT NULL AND completed_at < ?1 \
             ORDER BY completed_at ASC, id ASC LIMIT ?2"
);

/// Fails the expired leases that cannot return to pending (their job and key have a pending run, or an older expired lease goes back).
pub(crate) const FAIL_BLOCKED_EXPIRED_LEASES: &str = concat!(
    "UPDATE durably_runs SET status = 'failed', error = ?2, lease_owner = NULL, \
             lease_expires_at = NULL, completed_at = ?1, updated_at = ?1 \
             WHERE status = 'leased' AND lease_expires_at IS NOT NULL AND lease_expires_at <= ?1 \
             AND ",
    no_waits!("durably_runs"),
    " \
             AND concurrency_key IS NOT NULL AND ( \
               EXISTS (SELECT 1 FROM durably_runs p \
                 WHERE p.status = 'pending' AND p.job_name = durably_runs.job_name \
                 AND p.concurrency_key = durably_runs.concurrency_key AND p.id <> durably_runs.id) \
               OR EXISTS (SELECT 1 FROM durably_runs y \
                 WHERE y.status = 'leased' AND y.lease_expires_at IS NOT NULL \
                 AND y.lease_expires_at <= ?1 AND y.job_name = durably_runs.job_name \
                 AND ",
    no_waits!("y"),
    " \
                 AND y.concurrency_key = durably_runs.concurrency_key \
                 AND (y.created_at < durably_runs.created_at \
                   OR (y.created_at = durably_runs.created_at AND y.id < durably_runs.id)))) \
             RETURNING ",
    run_columns!()
);

/// Returns the other expired leases to pending.
pub(crate) const RELEASE_EXPIRED_LEASES: &str = concat!(
    "UPDATE durably_runs SET status = 'pending', lease_owner = NULL, \
             lease_expires_at = NULL, updated_at = ?1 \
             WHERE status = 'leased' AND lease_expires_at IS NOT NULL AND lease_expires_at <= ?1 \
             AND ",
    no_waits!("durably_runs"),
    " \
             RETURNING ",
    run_columns!()
);

/// Deletes a run's records in upstream's order: attempts, waits, steps, logs, labels, then the
/// run (each `?1` the run id).
pub(crate) const DELETE_RUN_RECORDS: [&str; 6] = [
    "DELETE FROM durably_step_attempts WHERE run_id = ?1",
    "DELETE FROM durably_waits WHERE run_id = ?1",
    "DELETE FROM durably_steps WHERE run_id = ?1",
    "DELETE FROM durably_logs WHERE run_id = ?1",
    "DELETE FROM durably_run_labels WHERE run_id = ?1",
    "DELETE FROM durably_runs WHERE id = ?1",
];

/// The listing of runs matching `filter`. The statement's text depends only on which kinds of condition the filter has
/// (job names or not; no, one or several labels; which statuses; a page or not), never on how
/// many job names or labels it lists: those go in as JSON arrays and objects read by
/// `json_each`. So a handful of statements serve every filter (and may stay in the statement
/// cache), and the cost of a query grows linearly with its filters: the first label is an
/// indexed `IN` (the planner may drive the query from it), every label of a run is then looked
/// up once in the filter's labels.
pub(crate) fn list_runs(filter: &RunFilter) -> Result<(String, Vec<SqlArg>)> {
    for key in filter.labels.keys() {
        validate_label_key(key)?;
    }
    // The job-name and label conditions, shared by both query shapes below.
    let mut conditions = String::new();
    let mut condition_args: Vec<SqlArg> = Vec::new();
    if !filter.job_names.is_empty() {
        conditions.push_str(" AND r.job_name IN (SELECT value FROM json_each(?))");
        condition_args.push(SqlArg::json("get_runs", &filter.job_names)?);
    }
    if let Some(parent) = &filter.parent_run_id {
        conditions.push_str(" AND r.rs_parent_run_id = ?");
        condition_args.push(SqlArg::Text(parent.clone()));
    }
    if let Some(prefix) = filter.id_prefix.as_deref().filter(|p| !p.is_empty()) {
        // a range of the primary key's index (SQLite compares text byte by byte): every id
        // that starts with `prefix` sorts at or after it and before it followed by U+10FFFF
        conditions.push_str(" AND r.id >= ? AND r.id < ?");
        condition_args.push(SqlArg::Text(prefix.to_owned()));
        condition_args.push(SqlArg::Text(format!("{prefix}\u{10FFFF}")));
    }
    // the time range: stored timestamps are fixed-width text in chronological order
    if let Some(since) = filter.created_since {
        conditions.push_str(" AND r.created_at >= ?");
        condition_args.push(SqlArg::Text(since.stored_text()));
    }
    if let Some(before) = filter.created_before {
        conditions.push_str(" AND r.created_at < ?");
        condition_args.push(SqlArg::Text(before.stored_text()));
    }
    if let Some((key, value)) = filter.labels.iter().next() {
        conditions.push_str(
            " AND r.id IN (SELECT l.run_id FROM durably_run_labels l WHERE l.key = ? AND l.value = ?)",
        );
        condition_args.push(SqlArg::Text(key.clone()));
        condition_args.push(SqlArg::Text(value.clone()));
    }
    if filter.labels.len() > 1 {
        conditions.push_str(
            " AND (SELECT count(*) FROM durably_run_labels l WHERE l.run_id = r.id \
             AND (l.key, l.value) IN (SELECT key, value FROM json_each(?))) = ?",
        );
        condition_args.push(SqlArg::json("get_runs", &filter.labels)?);
        condition_args.push(SqlArg::Integer(filter.labels.len() as i64));
    }
    let offset = filter.offset.unwrap_or(0).min(i64::MAX as u64) as i64;
    // SQLite's `LIMIT -1` is "no limit".
    let page_limit: i64 = filter
        .limit
        .map(|l| l.min(i64::MAX as u64) as i64)
        .unwrap_or(-1);
    // Runs taken from each status slice of a page.
    let per_status = page_limit.saturating_add(offset);
    let statuses = listed_statuses(filter);
    let mut args: Vec<SqlArg> = Vec::new();
    let sql = match filter.limit {
        // A page: schema v1 has no index on `created_at` alone, so instead of sorting every
        // matching run, take the newest `offset + limit` of each status from its
        // `(status, created_at)` index slice and merge those few.
        Some(_) => {
            let part = format!(
                "SELECT * FROM (SELECT {} FROM durably_runs r WHERE r.status = ?{conditions} \
                 ORDER BY r.created_at DESC, r.id DESC LIMIT ?)",
                run_columns!()
            );
            let parts = vec![part; statuses.len()].join(" UNION ALL ");
            for status in &statuses {
                args.push(SqlArg::Text(status.as_str().to_owned()));
                args.extend(condition_args.iter().cloned());
                args.push(SqlArg::Integer(per_status));
            }
            args.push(SqlArg::Integer(page_limit));
            format!(
                "SELECT {} FROM ({parts}) ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                run_columns!()
            )
        }
        // Everything from `offset` on: one query.
        None => {
            args.extend(statuses.iter().map(|s| SqlArg::Text(s.as_str().to_owned())));
            args.extend(condition_args);
            args.push(SqlArg::Integer(page_limit));
            format!(
                "SELECT {} FROM durably_runs r WHERE r.status IN ({}){conditions} \
                 ORDER BY r.created_at DESC, r.id DESC LIMIT ? OFFSET ?",
                run_columns!(),
                vec!["?"; statuses.len()].join(", ")
            )
        }
    };
    args.push(SqlArg::Integer(offset));
    Ok((sql, args))
}

/// The operators' unfenced patch of run `id` ([`RunPatch`]): only the fields it sets, and
/// `updated_at`.
pub(crate) fn patch_run(
    id: &str,
    patch: &RunPatch,
    now: Timestamp,
) -> Result<(String, Vec<SqlArg>)> {
    let mut sets = vec!["updated_at = ?"];
    let mut args = vec![SqlArg::Text(now.to_string())];
    let mut set = |column: &'static str, value: SqlArg| {
        sets.push(column);
        args.push(value);
    };
    if let Some(status) = patch.status {
        set("status = ?", SqlArg::Text(status.as_str().to_owned()));
    }
    if let Some(owner) = &patch.lease_owner {
        set("lease_owner = ?", SqlArg::text(owner.clone()));
    }
    if let Some(expires) = patch.lease_expires_at {
        set(
            "lease_expires_at = ?",
            SqlArg::text(expires.map(|at| at.to_string())),
        );
    }
    if let Some(progress) = &patch.progress {
        let text = progress
            .as_ref()
            .map(|p| to_json("update_run", p))
            .transpose()?;
        set("progress = ?", SqlArg::text(text));
    }
    if let Some(error) = &patch.error {
        set("error = ?", SqlArg::text(error.clone()));
    }
    if let Some(completed_at) = patch.completed_at {
        set(
            "completed_at = ?",
            SqlArg::text(completed_at.map(|at| at.to_string())),
        );
    }
    if let Some(input) = &patch.input {
        set("input = ?", SqlArg::json("update_run", input)?);
    }
    args.push(SqlArg::Text(id.to_owned()));
    let text = format!("UPDATE durably_runs SET {} WHERE id = ?", sets.join(", "));
    Ok((text, args))
}

macro_rules! schedule_columns {
    () => {
        "name, job_name, cron, time_zone, input, labels, catch_up, paused, \
         next_fire_at, last_fired_at, created_at, updated_at"
    };
}

/// Creates schedule `?1` or replaces its definition (every right-hand side of the update reads
/// the row as it was: the next slot is kept unless the expression or its time zone changed),
/// returning it.
pub(crate) const UPSERT_SCHEDULE: &str = concat!(
    "INSERT INTO durably_rs_schedules (",
    schedule_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, NULL, ?9, ?9) \
     ON CONFLICT (name) DO UPDATE SET job_name = excluded.job_name, cron = excluded.cron, \
       time_zone = excluded.time_zone, input = excluded.input, labels = excluded.labels, \
       catch_up = excluded.catch_up, \
       next_fire_at = CASE WHEN cron = excluded.cron AND time_zone = excluded.time_zone \
         THEN next_fire_at ELSE excluded.next_fire_at END, \
       updated_at = excluded.updated_at \
     RETURNING ",
    schedule_columns!()
);

/// One schedule by name.
pub(crate) const GET_SCHEDULE: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM durably_rs_schedules WHERE name = ?1"
);

/// Every schedule, by name.
pub(crate) const LIST_SCHEDULES: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM durably_rs_schedules ORDER BY name"
);

/// Up to `?2` schedules due at `?1`, earliest first.
pub(crate) const DUE_SCHEDULES: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM durably_rs_schedules WHERE paused = 0 AND next_fire_at <= ?1 \
     ORDER BY next_fire_at, name LIMIT ?2"
);

/// Pauses schedule `?1` at `?2`.
pub(crate) const PAUSE_SCHEDULE: &str =
    "UPDATE durably_rs_schedules SET paused = 1, updated_at = ?2 WHERE name = ?1 AND paused = 0";

/// Resumes schedule `?1` with next slot `?2` at `?3`.
pub(crate) const RESUME_SCHEDULE: &str = "UPDATE durably_rs_schedules SET paused = 0, next_fire_at = ?2, updated_at = ?3 \
     WHERE name = ?1 AND paused = 1";

/// Deletes schedule `?1`.
pub(crate) const DELETE_SCHEDULE: &str = "DELETE FROM durably_rs_schedules WHERE name = ?1";

/// The compare-and-set of a firing: schedule `?1`, still at slot `?2` and not paused, moves to
/// `?3` (`?4` the last slot fired, when given) at `?5`.
pub(crate) const FIRE_SCHEDULE: &str = "UPDATE durably_rs_schedules SET next_fire_at = ?3, \
       last_fired_at = COALESCE(?4, last_fired_at), updated_at = ?5 \
     WHERE name = ?1 AND next_fire_at = ?2 AND paused = 0";

// ---- The libSQL store's forms (`store/libsql`): one statement or one conditional batch where
// the SQLite store reads, decides in Rust and writes inside its local transaction.

/// The libSQL form of a claim of one run ([`OLDEST_FREE_PENDING`] and its siblings, then
/// [`LEASE_ROW`] and [`RUN_BY_ROWID`]): leases the first claimable run in claim order (pending,
/// an expired lease, or with `?5` a waiting run whose wait is resolved; its key free at `?1`
/// now) for owner `?2` until `?3` (`?4` the database's time for a resumed run) and returns it.
/// Several in one transaction claim several runs: each sees the leases of those before it.
#[cfg(feature = "libsql")]
pub(crate) const CLAIM_NEXT: &str = concat!(
    "UPDATE durably_runs SET status = 'leased', lease_owner = ?2, lease_expires_at = ?3, \
     lease_generation = lease_generation + 1, started_at = COALESCE(started_at, ?1), \
     resume_claimed_at = CASE WHEN status = 'waiting' \
       THEN COALESCE(resume_claimed_at, ?4) ELSE resume_claimed_at END, \
     updated_at = ?1 WHERE rowid = (SELECT r.rowid FROM durably_runs r \
     WHERE (r.status = 'pending' OR (r.status = 'leased' AND r.lease_expires_at IS NOT NULL \
       AND r.lease_expires_at <= ?1) OR (?5 AND r.status = 'waiting' AND ",
    wait_is_resolved!(),
    ")) AND ",
    key_is_free!(),
    " ",
    claim_order!(),
    " LIMIT 1) RETURNING ",
    run_columns!()
);

/// The libSQL form of [`MARK_FIRST_RESUMED`] for the runs a claim just leased (owner `?1`,
/// expiry `?2`): their resolved waits take the resume time, once.
#[cfg(feature = "libsql")]
pub(crate) const MARK_CLAIMED_RESUMED: &str = "UPDATE durably_waits SET first_resumed_at = \
     (SELECT r.resume_claimed_at FROM durably_runs r WHERE r.waiting_on_wait_id = durably_waits.id \
       AND r.status = 'leased' AND r.lease_owner = ?1 AND r.lease_expires_at = ?2) \
     WHERE status = 'resolved' AND first_resumed_at IS NULL AND id IN \
     (SELECT waiting_on_wait_id FROM durably_runs WHERE status = 'leased' AND lease_owner = ?1 \
       AND lease_expires_at = ?2 AND resume_claimed_at IS NOT NULL)";

/// The condition (for a guard) that job `?1` has no run with concurrency key `?2` that
/// `coalesce: active` would reuse at `?3` ([`OLDEST_PENDING_WITH_KEY`],
/// [`OLDEST_LIVE_LEASED_WITH_KEY`], [`OLDEST_WAITING_WITH_KEY`]).
#[cfg(feature = "libsql")]
pub(crate) const NO_ACTIVE_WITH_KEY: &str = "NOT EXISTS (SELECT 1 FROM durably_runs \
     WHERE job_name = ?1 AND concurrency_key = ?2 AND (status IN ('pending', 'waiting') \
     OR (status = 'leased' AND lease_expires_at IS NOT NULL AND lease_expires_at > ?3)))";

/// The condition (for a guard) that job `?1` has no run with debounce key `?2` still waiting
/// for its start ([`DEBOUNCED_RUN`]).
#[cfg(feature = "libsql")]
pub(crate) const NO_DEBOUNCED_RUN: &str = "NOT EXISTS (SELECT 1 FROM durably_runs r \
     JOIN durably_waits w ON w.id = r.waiting_on_wait_id \
     WHERE r.job_name = ?1 AND r.status = 'waiting' AND w.status = 'pending' \
     AND w.name = 'delay' AND json_extract(w.metadata, '$.durably.debounce.key') = ?2)";

/// The condition (for a guard) that run `?1` exists and has not ended.
#[cfg(feature = "libsql")]
pub(crate) const RUN_IS_LIVE: &str = concat!(
    "EXISTS (SELECT 1 FROM durably_runs WHERE id = ?1 AND status NOT IN ",
    terminal!(),
    ")"
);

/// The condition (for a guard) that wait `?1` is run `?2`'s and pending or resolved (a
/// suspension may wait on it).
#[cfg(feature = "libsql")]
pub(crate) const WAIT_IS_AVAILABLE: &str = "EXISTS (SELECT 1 FROM durably_waits WHERE id = ?1 \
     AND run_id = ?2 AND status IN ('pending', 'resolved'))";

/// The condition (for a guard) that wait `?1` is run `?2`'s.
#[cfg(feature = "libsql")]
pub(crate) const WAIT_IS_RUNS: &str =
    "EXISTS (SELECT 1 FROM durably_waits WHERE id = ?1 AND run_id = ?2)";

/// The libSQL form of [`DELETE_RUN_RECORDS`] after [`IS_TERMINAL`]: each statement deletes
/// only while run `?1` is terminal, the run itself last (returning its id).
#[cfg(feature = "libsql")]
pub(crate) const DELETE_TERMINAL_RUN_RECORDS: [&str; 6] = [
    concat!(
        "DELETE FROM durably_step_attempts WHERE run_id = ?1 AND EXISTS (SELECT 1 FROM durably_runs \
         WHERE id = ?1 AND status IN ",
        terminal!(),
        ")"
    ),
    concat!(
        "DELETE FROM durably_waits WHERE run_id = ?1 AND EXISTS (SELECT 1 FROM durably_runs \
         WHERE id = ?1 AND status IN ",
        terminal!(),
        ")"
    ),
    concat!(
        "DELETE FROM durably_steps WHERE run_id = ?1 AND EXISTS (SELECT 1 FROM durably_runs \
         WHERE id = ?1 AND status IN ",
        terminal!(),
        ")"
    ),
    concat!(
        "DELETE FROM durably_logs WHERE run_id = ?1 AND EXISTS (SELECT 1 FROM durably_runs \
         WHERE id = ?1 AND status IN ",
        terminal!(),
        ")"
    ),
    concat!(
        "DELETE FROM durably_run_labels WHERE run_id = ?1 AND EXISTS (SELECT 1 FROM durably_runs \
         WHERE id = ?1 AND status IN ",
        terminal!(),
        ")"
    ),
    concat!(
        "DELETE FROM durably_runs WHERE id = ?1 AND status IN ",
        terminal!(),
        " RETURNING id"
    ),
];

/// The libSQL form of [`DUE_WAITS`] and [`TIME_OUT_WAIT`] under [`LOCK_RUN`]: resolves as
/// timeouts up to `?2` pending waits due at `?1` (ms) whose run exists and has not ended,
/// earliest deadline first, returning one row per wait.
#[cfg(feature = "libsql")]
pub(crate) const EXPIRE_DUE_WAITS: &str = concat!(
    "UPDATE durably_waits SET status = 'resolved', outcome = 'timeout', \
     resolved_at = deadline_at WHERE id IN (SELECT w.id FROM durably_waits w \
     WHERE w.status = 'pending' AND w.deadline_ms IS NOT NULL AND w.deadline_ms <= ?1 \
     AND EXISTS (SELECT 1 FROM durably_runs r WHERE r.id = w.run_id AND r.status NOT IN ",
    terminal!(),
    ") ORDER BY w.deadline_ms, w.id LIMIT ?2) AND status = 'pending' RETURNING id"
);

/// [`Store::run_overview`](crate::Store::run_overview): runs per status (through upstream's
/// `(status, …)` indexes).
pub(crate) const OVERVIEW_STATUSES: &str =
    "SELECT status, COUNT(*) FROM durably_runs GROUP BY status";

/// The oldest pending run (through `durably_rs_runs_pending_order`).
pub(crate) const OVERVIEW_OLDEST_PENDING: &str = "SELECT id, job_name, created_at FROM durably_runs \
     WHERE status = 'pending' ORDER BY created_at, id LIMIT 1";

/// Runs that completed or failed since `?1`, grouped by job, bucket (the first `?2` characters
/// of their completion time) and status (through upstream's `(status, completed_at)` index).
pub(crate) const OVERVIEW_ENDED: &str = "SELECT job_name, substr(completed_at, 1, ?2), status, COUNT(*) FROM durably_runs \
     WHERE status IN ('completed', 'failed') AND completed_at >= ?1 GROUP BY 1, 2, 3";

/// The times of the newest `?2` runs that completed or failed since `?1`, with the end of
/// their `delay` wait (a delayed run).
pub(crate) const OVERVIEW_SAMPLE: &str = "SELECT r.job_name, r.created_at, r.started_at, \
     r.completed_at, COALESCE(w.resolved_at, w.deadline_at) FROM durably_runs r \
     LEFT JOIN durably_waits w ON w.run_id = r.id AND w.name = 'delay' \
     WHERE r.status IN ('completed', 'failed') AND r.completed_at >= ?1 \
     ORDER BY r.completed_at DESC LIMIT ?2";
