//! The SQL behind each [`Store`](crate::Store) operation, as plain functions on a connection.
//! Writes run inside the writer thread's group-commit transaction.
//!
//! Hot single-row writes that SQLite cannot prove single-row (`INSERT … SELECT`, `UPDATE …
//! RETURNING`) say `OR FAIL`: for one row it means the same as the default `ABORT` (a violated
//! constraint is found before the row is written), but SQLite then skips the statement journal
//! it would otherwise fill with a copy of every page the statement touches.

use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, ToSql, params, params_from_iter};
use serde_json::Value;

use crate::attempts::{AttemptStatus, NewAttempt, RunFacts, StepAttempt, interruption_reason};
use crate::error::{Error, Result};
use crate::run::{
    Coalesce, Disposition, Log, LogLevel, Progress, Run, RunFilter, RunStatus, Step, StepStatus,
};
use crate::store::{
    AttemptStart, ClaimRequest, Enqueued, Fence, LEASE_EXPIRED_PENDING_EXISTS, NewLog, NewRun,
    NewStep, RunPatch, Signalled, Transition, parse_labels, parse_optional_json, pending_conflict,
    pending_run, resume_key_taken, resume_not_failed, resume_not_found, validate_label_key,
};
use crate::time::{Timestamp, new_id_at};
use crate::waits::{
    self, DurableWait, NewWait, SignalDisposition, SignalStep, WaitOutcome, WaitStatus,
    canonical_json,
};

use super::sql;

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for Timestamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Timestamp::parse(text)
            .ok_or_else(|| FromSqlError::Other(format!("invalid timestamp {text:?}").into()))
    }
}

impl ToSql for RunStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for RunStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        text.parse()
            .map_err(|_| FromSqlError::Other(format!("invalid run status {text:?}").into()))
    }
}

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

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<Run> {
    let input: String = row.get(2)?;
    let progress: Option<String> = row.get(8)?;
    let labels: String = row.get(11)?;
    Ok(Run {
        id: row.get(0)?,
        job_name: row.get(1)?,
        input: serde_json::from_str(&input).unwrap_or(Value::Null),
        status: row.get(3)?,
        idempotency_key: row.get(4)?,
        concurrency_key: row.get(5)?,
        current_step_index: row.get(6)?,
        completed_step_count: row.get(7)?,
        progress: parse_optional_json(progress).and_then(|v| serde_json::from_value(v).ok()),
        output: parse_optional_json(row.get(9)?),
        error: row.get(10)?,
        labels: parse_labels(&labels),
        lease_owner: row.get(12)?,
        lease_expires_at: row.get(13)?,
        lease_generation: row.get(14)?,
        waiting_on_wait_id: row.get(19)?,
        priority: row.get::<_, Option<i32>>(20)?.unwrap_or(0),
        parent_run_id: row.get(21)?,
        parent_wait_id: row.get(22)?,
        trace_context: row.get(23)?,
        started_at: row.get(15)?,
        completed_at: row.get(16)?,
        created_at: row.get(17)?,
        updated_at: row.get(18)?,
    })
}

fn step_from_row(row: &Row<'_>) -> rusqlite::Result<Step> {
    let status: String = row.get(4)?;
    Ok(Step {
        id: row.get(0)?,
        run_id: row.get(1)?,
        name: row.get(2)?,
        index: row.get(3)?,
        status: StepStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("invalid step status {status:?}").into(),
            )
        })?,
        output: parse_optional_json(row.get(5)?),
        error: row.get(6)?,
        started_at: row.get(7)?,
        completed_at: row.get(8)?,
    })
}

fn log_from_row(row: &Row<'_>) -> rusqlite::Result<Log> {
    let level: String = row.get(3)?;
    Ok(Log {
        id: row.get(0)?,
        run_id: row.get(1)?,
        step_name: row.get(2)?,
        level: LogLevel::parse(&level).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("invalid log level {level:?}").into(),
            )
        })?,
        message: row.get(4)?,
        data: parse_optional_json(row.get(5)?),
        created_at: row.get(6)?,
    })
}

pub(super) fn get_run(conn: &Connection, id: &str) -> Result<Option<Run>> {
    conn.prepare_cached(sql::GET_RUN)
        .and_then(|mut stmt| stmt.query_row([id], run_from_row).optional())
        .map_err(sql_error("get_run"))
}

/// Lists runs (the statement: [`sql::list_runs`]).
pub(super) fn get_runs(conn: &Connection, filter: &RunFilter) -> Result<Vec<Run>> {
    let (text, args) = sql::list_runs(filter)?;
    let mut stmt = conn.prepare_cached(&text).map_err(sql_error("get_runs"))?;
    stmt.query_map(params_from_iter(args), run_from_row)
        .and_then(|rows| rows.collect())
        .map_err(sql_error("get_runs"))
}

pub(super) fn get_steps(conn: &Connection, run_id: &str) -> Result<Vec<Step>> {
    conn.prepare_cached(sql::GET_STEPS)
        .and_then(|mut stmt| stmt.query_map([run_id], step_from_row)?.collect())
        .map_err(sql_error("get_steps"))
}

pub(super) fn get_completed_step(
    conn: &Connection,
    run_id: &str,
    name: &str,
) -> Result<Option<Step>> {
    conn.prepare_cached(sql::GET_COMPLETED_STEP)
        .and_then(|mut stmt| stmt.query_row([run_id, name], step_from_row).optional())
        .map_err(sql_error("get_completed_step"))
}

pub(super) fn get_logs(conn: &Connection, run_id: &str) -> Result<Vec<Log>> {
    conn.prepare_cached(sql::GET_LOGS)
        .and_then(|mut stmt| stmt.query_map([run_id], log_from_row)?.collect())
        .map_err(sql_error("get_logs"))
}

fn find_by_idempotency_key(conn: &Connection, job_name: &str, key: &str) -> Result<Option<Run>> {
    conn.prepare_cached(sql::RUN_BY_IDEMPOTENCY_KEY)
        .and_then(|mut stmt| stmt.query_row([job_name, key], run_from_row).optional())
        .map_err(sql_error("enqueue"))
}

fn oldest_pending_with_key(conn: &Connection, job_name: &str, key: &str) -> Result<Option<Run>> {
    conn.prepare_cached(sql::OLDEST_PENDING_WITH_KEY)
        .and_then(|mut stmt| stmt.query_row([job_name, key], run_from_row).optional())
        .map_err(sql_error("enqueue"))
}

/// The run of a job and concurrency key that `coalesce: active` reuses (upstream v4 §7.1): the
/// oldest pending one, else the oldest leased one whose lease expires after `now`, else the
/// oldest waiting one.
fn active_with_key(
    conn: &Connection,
    job_name: &str,
    key: &str,
    now: Timestamp,
) -> Result<Option<Run>> {
    if let Some(run) = oldest_pending_with_key(conn, job_name, key)? {
        return Ok(Some(run));
    }
    let leased = conn
        .prepare_cached(sql::OLDEST_LIVE_LEASED_WITH_KEY)
        .and_then(|mut stmt| {
            stmt.query_row(params![job_name, key, now], run_from_row)
                .optional()
        })
        .map_err(sql_error("enqueue"))?;
    if leased.is_some() {
        return Ok(leased);
    }
    conn.prepare_cached(sql::OLDEST_WAITING_WITH_KEY)
        .and_then(|mut stmt| stmt.query_row([job_name, key], run_from_row).optional())
        .map_err(sql_error("enqueue"))
}

/// Upstream §5.5 and v4 §7.1: idempotency first, then label keys, then (`coalesce: active`)
/// the run to reuse, then the pending-per-key rule.
///
/// Every call runs on the writer thread inside its `BEGIN IMMEDIATE` transaction, which holds
/// the database's write lock from its start: the reads and the insert below are one atomic
/// decision for every process sharing the file (upstream takes the lock with a no-op write).
pub(super) fn enqueue(conn: &Connection, request: &NewRun, now: Timestamp) -> Result<Enqueued> {
    if let Some(key) = &request.idempotency_key
        && let Some(run) = find_by_idempotency_key(conn, &request.job_name, key)?
    {
        return Ok(Enqueued {
            run,
            disposition: Disposition::Idempotent,
        });
    }
    for key in request.labels.keys() {
        validate_label_key(key)?;
    }
    // A delayed run is not pending: neither the pending-per-key rule nor coalescing applies.
    let delayed = request.start_at.filter(|at| *at > now);
    if let (Some(debounce), Some(start_at)) = (&request.debounce, delayed)
        && let Some(run) = debounce_onto(conn, request, &debounce.key, start_at, now)?
    {
        return Ok(Enqueued {
            run,
            disposition: Disposition::Debounced,
        });
    }
    if let Some(key) = &request.concurrency_key
        && delayed.is_none()
    {
        let existing = match request.coalesce {
            Some(Coalesce::Active) => active_with_key(conn, &request.job_name, key, now)?,
            _ => oldest_pending_with_key(conn, &request.job_name, key)?,
        };
        if let Some(existing) = existing {
            return match request.coalesce {
                Some(_) => Ok(Enqueued {
                    run: existing,
                    disposition: Disposition::Coalesced,
                }),
                None => Err(pending_conflict(&request.job_name, key)),
            };
        }
    }

    let id = new_id_at(now);
    let input = to_json("enqueue", &request.input)?;
    let labels = to_json("enqueue", &request.labels)?;
    let inserted = conn.prepare_cached(sql::INSERT_RUN)
    .and_then(|mut stmt| {
        stmt.execute(params![
            id,
            request.job_name,
            input,
            request.idempotency_key,
            request.concurrency_key,
            labels,
            now,
            (request.priority != 0).then_some(request.priority),
            request.parent_run_id,
            request.parent_wait_id,
            request.trace_context
        ])
    })
    .map_err(|e| {
        if is_unique_violation(&e) {
            match &request.concurrency_key {
                Some(key) => pending_conflict(&request.job_name, key),
                None => Error::Conflict(format!(
                    "A run of job \"{}\" with the same idempotency key was inserted concurrently",
                    request.job_name
                )),
            }
        } else {
            Error::storage("enqueue", e)
        }
    });
    if let Err(error) = inserted {
        return unique_violation(conn, request, error);
    }
    if !request.labels.is_empty() {
        let mut stmt = conn
            .prepare_cached(sql::INSERT_LABEL)
            .map_err(sql_error("enqueue"))?;
        for (key, value) in &request.labels {
            stmt.execute(params![id, key, value])
                .map_err(sql_error("enqueue"))?;
        }
    }
    let mut run = pending_run(id, request, now);
    if let Some(start_at) = delayed {
        let metadata = crate::store::new_delay_metadata(request, now);
        let wait_id = delay_run(conn, &run.id, start_at, &metadata)?;
        run = crate::store::delayed_run(run, wait_id);
    }
    Ok(Enqueued {
        run,
        disposition: Disposition::Created,
    })
}

/// Debounces `request` onto the run of its job and debounce `key` that still waits for its
/// start, if any: that run takes the request's input and its start moves to `start_at` (not
/// beyond its bound). Inside the writer's transaction, so concurrent triggers are serialized.
fn debounce_onto(
    conn: &Connection,
    request: &NewRun,
    key: &str,
    start_at: Timestamp,
    now: Timestamp,
) -> Result<Option<Run>> {
    let found: Option<(String, String, Option<String>)> = conn
        .prepare_cached(sql::DEBOUNCED_RUN)
        .and_then(|mut stmt| {
            stmt.query_row(params![request.job_name, key], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()
        })
        .map_err(sql_error("enqueue"))?;
    let Some((run_id, wait_id, metadata)) = found else {
        return Ok(None);
    };
    let metadata = metadata.and_then(|text| serde_json::from_str::<Value>(&text).ok());
    let start = crate::store::debounced_start(metadata.as_ref(), start_at);
    let input = to_json("enqueue", &request.input)?;
    conn.prepare_cached(sql::MOVE_DELAY)
        .and_then(|mut stmt| stmt.execute(params![wait_id, start, start.as_millis()]))
        .map_err(sql_error("enqueue"))?;
    conn.prepare_cached(sql::DEBOUNCE_INPUT)
        .and_then(|mut stmt| stmt.execute(params![run_id, input, now]))
        .map_err(sql_error("enqueue"))?;
    get_run(conn, &run_id)
}

/// Makes the run just inserted a delayed run (`NewRun::start_at`): a `delay` wait with its
/// start as deadline, and the run `waiting` on it. Returns the wait's id.
fn delay_run(
    conn: &Connection,
    run_id: &str,
    start_at: Timestamp,
    metadata: &Value,
) -> Result<String> {
    let created = database_now();
    let id = new_id_at(created);
    let metadata = canonical_json(metadata);
    conn.prepare_cached(sql::INSERT_WAIT)
        .and_then(|mut stmt| {
            stmt.execute(params![
                id,
                run_id,
                crate::store::DELAY_WAIT,
                metadata,
                created,
                start_at,
                start_at.as_millis()
            ])
        })
        .map_err(sql_error("enqueue"))?;
    conn.prepare_cached(sql::DELAY_WAIT_SUSPENDED)
        .and_then(|mut stmt| stmt.execute(params![id, created]))
        .map_err(sql_error("enqueue"))?;
    conn.prepare_cached(sql::DELAY_RUN)
        .and_then(|mut stmt| stmt.execute(params![run_id, id]))
        .map_err(sql_error("enqueue"))?;
    Ok(id)
}

/// Upstream §5.5 step 5, for an insert refused by a unique index (`error`, already the
/// conflict to report without a coalesce mode). Inside the writer's transaction nothing can
/// change between the lookups above and the insert, so this only guards a schema that holds
/// more unique indexes than ours: the idempotency key is looked up again, then, with a
/// coalesce mode, the oldest pending run of the job and key; a retry would see the same
/// database, so none found is upstream's conflict after retry.
fn unique_violation(conn: &Connection, request: &NewRun, error: Error) -> Result<Enqueued> {
    if let Some(key) = &request.idempotency_key
        && let Some(run) = find_by_idempotency_key(conn, &request.job_name, key)?
    {
        return Ok(Enqueued {
            run,
            disposition: Disposition::Idempotent,
        });
    }
    let (Some(key), Some(_)) = (&request.concurrency_key, request.coalesce) else {
        return Err(error);
    };
    match oldest_pending_with_key(conn, &request.job_name, key)? {
        Some(run) => Ok(Enqueued {
            run,
            disposition: Disposition::Coalesced,
        }),
        None => Err(Error::Conflict(format!(
            "Conflict after retry for concurrency key \"{key}\" in job \"{}\". Concurrent modification detected.",
            request.job_name
        ))),
    }
}

/// The first claimable run in claim order: the first of the first free pending run, the first
/// free expired lease and the first free resumable run (index-driven lookups instead of one OR
/// that would sort the whole table).
///
/// Claim order is priority (higher first, [`NewRun::priority`]), then `created_at`, then
/// insertion order (`rowid`). Runs of one batch share a millisecond; ordering that tie by rowid
/// lets SQLite walk an index (upstream's `(status, created_at)` for priority 0, durably's
/// `durably_rs_runs_pending_priority` for the others; the entries of both end with the rowid)
/// instead of sorting the whole tie group on every claim.
/// Ids are generated inside the insert, so for runs enqueued by one process this is also id order.
///
/// `expired_leases` says whether any lease had expired when the claim began; without one, the
/// second lookup (which sorts its few candidates) is skipped.
fn next_claimable(
    conn: &Connection,
    now: Timestamp,
    expired_leases: bool,
    resumable: bool,
) -> Result<Option<i64>> {
    // Compared as the claim order: higher priority, then older, then inserted earlier.
    type Candidate = (std::cmp::Reverse<i64>, String, i64);
    let candidate = |row: &Row<'_>| -> rusqlite::Result<Candidate> {
        Ok((std::cmp::Reverse(row.get(0)?), row.get(1)?, row.get(2)?))
    };
    let lookup = |statement: &str| -> Result<Option<Candidate>> {
        conn.prepare_cached(statement)
            .and_then(|mut stmt| stmt.query_row([now], candidate).optional())
            .map_err(sql_error("claim"))
    };
    // The first of a status: a run of a priority above 0 (durably's index of such runs) goes
    // before every run of priority 0 (the oldest of which comes from upstream's index), which
    // goes before a negative one.
    let first = |prioritized: &str, oldest: &str| -> Result<Option<Candidate>> {
        Ok(match lookup(prioritized)? {
            Some(first) if first.0.0 > 0 => Some(first),
            negative => lookup(oldest)?.or(negative),
        })
    };
    let pending = first(sql::FIRST_FREE_PRIORITIZED, sql::OLDEST_FREE_PENDING)?;
    if !expired_leases && !resumable {
        return Ok(pending.map(|(_, _, rowid)| rowid));
    }
    let expired = match expired_leases {
        true => lookup(sql::OLDEST_FREE_EXPIRED_LEASE)?,
        false => None,
    };
    let resumed = match resumable {
        true => first(
            sql::FIRST_FREE_PRIORITIZED_RESUMABLE,
            sql::OLDEST_FREE_RESUMABLE,
        )?,
        false => None,
    };
    Ok([pending, expired, resumed]
        .into_iter()
        .flatten()
        .min()
        .map(|(_, _, rowid)| rowid))
}

pub(super) fn claim(conn: &Connection, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Run>> {
    let ClaimRequest {
        worker_id,
        lease,
        max,
        resume_waiting: resume,
    } = request;
    let (max, resume) = (*max, *resume);
    let expires = now + *lease;
    // Claiming never makes another lease expire, so one check serves the whole claim.
    let expired_leases: bool = conn
        .prepare_cached(sql::ANY_EXPIRED_LEASE)
        .and_then(|mut stmt| stmt.query_row([now], |row| row.get(0)))
        .map_err(sql_error("claim"))?;
    // Likewise for waiting runs whose wait is resolved (a claim resolves no wait), when the
    // claim resumes them.
    let resumable: bool = resume
        && conn
            .prepare_cached(sql::ANY_RESUMABLE)
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(sql_error("claim"))?;
    // Only a resumed run records when (a timestamp formatted per claimed run otherwise).
    let database_now = resumable.then(database_now);
    let mut claimed = Vec::new();
    while claimed.len() < max {
        let Some(rowid) = next_claimable(conn, now, expired_leases, resumable)? else {
            break;
        };
        // A plain single-row UPDATE, then a read of the row: `RETURNING` would collect its
        // row in a temporary table and need a statement journal.
        conn.prepare_cached(sql::LEASE_ROW)
            .and_then(|mut stmt| {
                stmt.execute(params![rowid, worker_id, expires, now, database_now])
            })
            .map_err(sql_error("claim"))?;
        let run = conn
            .prepare_cached(sql::RUN_BY_ROWID)
            .and_then(|mut stmt| stmt.query_row([rowid], run_from_row))
            .map_err(sql_error("claim"))?;
        if let Some(wait_id) = &run.waiting_on_wait_id {
            conn.prepare_cached(sql::MARK_FIRST_RESUMED)
                .and_then(|mut stmt| stmt.execute(params![wait_id, run.id]))
                .map_err(sql_error("claim"))?;
        }
        claimed.push(run);
    }
    Ok(claimed)
}

pub(super) fn renew_lease(
    conn: &Connection,
    fence: &Fence,
    now: Timestamp,
    lease: Duration,
) -> Result<Option<Timestamp>> {
    let expires = now + lease;
    let changed = conn
        .prepare_cached(sql::RENEW_LEASE)
        .and_then(|mut stmt| stmt.execute(params![fence.run_id, fence.generation, expires, now]))
        .map_err(sql_error("renew_lease"))?;
    Ok((changed == 1).then_some(expires))
}

pub(super) fn release_lease(conn: &Connection, fence: &Fence, now: Timestamp) -> Result<bool> {
    let changed = conn
        .prepare_cached(sql::RELEASE_LEASE)
        .and_then(|mut stmt| stmt.execute(params![fence.run_id, fence.generation, now]))
        .map_err(sql_error("release_lease"))?;
    Ok(changed == 1)
}

/// Records the outcome of a step's attempt (see `Store::persist_step`): finalizes a begun one
/// (`false` when the fence or the attempt no longer holds: nothing written), or inserts one
/// not begun (after the step's fenced insert).
fn record_attempt(
    conn: &Connection,
    fence: &Fence,
    step: &NewStep,
    attempt: &NewAttempt,
    now: Timestamp,
) -> Result<bool> {
    let status = AttemptStatus::of_step(step.status).as_str();
    let failed = sql_error("persist_step");
    let changed = if attempt.begun {
        conn.prepare_cached(sql::FINISH_ATTEMPT)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    fence.run_id,
                    fence.generation,
                    attempt.id,
                    status,
                    step.error,
                    now
                ])
            })
            .map_err(failed)?
    } else {
        let metadata = attempt
            .metadata
            .as_ref()
            .map(|m| to_json("persist_step", m))
            .transpose()?;
        conn.prepare_cached(sql::INSERT_ATTEMPT)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    fence.run_id,
                    fence.generation,
                    attempt.id,
                    step.name,
                    step.index,
                    status,
                    metadata,
                    step.error,
                    step.started_at,
                    now
                ])
            })
            .map_err(failed)?
    };
    Ok(changed == 1)
}

pub(super) fn begin_step_attempt(
    conn: &Connection,
    fence: &Fence,
    attempt: &AttemptStart,
    now: Timestamp,
) -> Result<bool> {
    let metadata = attempt
        .metadata
        .as_ref()
        .map(|m| to_json("begin_step_attempt", m))
        .transpose()?;
    let changed = conn
        .prepare_cached(sql::BEGIN_ATTEMPT)
        .and_then(|mut stmt| {
            stmt.execute(params![
                fence.run_id,
                fence.generation,
                attempt.id,
                attempt.step_name,
                attempt.step_index,
                metadata,
                attempt.started_at,
                now
            ])
        })
        .map_err(sql_error("begin_step_attempt"))?;
    Ok(changed == 1)
}

pub(super) fn set_step_attempt_metadata(
    conn: &Connection,
    fence: &Fence,
    attempt_id: &str,
    metadata: Option<&Value>,
    now: Timestamp,
) -> Result<bool> {
    let metadata = metadata
        .map(|m| to_json("set_step_attempt_metadata", m))
        .transpose()?;
    let changed = conn
        .prepare_cached(sql::SET_ATTEMPT_METADATA)
        .and_then(|mut stmt| {
            stmt.execute(params![
                fence.run_id,
                fence.generation,
                attempt_id,
                metadata,
                now
            ])
        })
        .map_err(sql_error("set_step_attempt_metadata"))?;
    Ok(changed == 1)
}

pub(super) fn get_step_attempts(conn: &Connection, run_id: &str) -> Result<Vec<StepAttempt>> {
    let mut stmt = conn
        .prepare_cached(sql::SELECT_ATTEMPTS)
        .map_err(sql_error("get_step_attempts"))?;
    let rows = stmt
        .query_map([run_id], |row| {
            let status: String = row.get(5)?;
            let status = AttemptStatus::parse(&status).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    5,
                    rusqlite::types::Type::Text,
                    format!("invalid attempt status {status:?}").into(),
                )
            })?;
            let generation: i64 = row.get(4)?;
            let run_status: Option<RunStatus> = row.get(10)?;
            let run_generation: Option<i64> = row.get(11)?;
            let run_error: Option<String> = row.get(12)?;
            let run = run_status.map(|status| RunFacts {
                status,
                lease_generation: run_generation.unwrap_or(0),
                error: run_error.as_deref(),
            });
            Ok(StepAttempt {
                id: row.get(0)?,
                run_id: row.get(1)?,
                step_name: row.get(2)?,
                step_index: row.get(3)?,
                lease_generation: generation,
                status,
                metadata: parse_optional_json(row.get(6)?),
                error: row.get(7)?,
                started_at: row.get(8)?,
                completed_at: row.get(9)?,
                interruption_reason: interruption_reason(status, generation, run),
            })
        })
        .map_err(sql_error("get_step_attempts"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql_error("get_step_attempts"))
}

pub(super) fn persist_step(
    conn: &Connection,
    fence: &Fence,
    step: NewStep,
    now: Timestamp,
) -> Result<Option<Step>> {
    let id = new_id_at(now);
    let output = step
        .output
        .as_ref()
        .map(|o| to_json("persist_step", o))
        .transpose()?;
    // A begun attempt is finalized first: when it no longer holds, nothing is written.
    if let Some(attempt) = step.attempt.as_ref().filter(|a| a.begun)
        && !record_attempt(conn, fence, &step, attempt, now)?
    {
        return Ok(None);
    }
    let inserted = conn
        .prepare_cached(sql::INSERT_STEP)
        .and_then(|mut stmt| {
            stmt.execute(params![
                fence.run_id,
                fence.generation,
                id,
                step.name,
                step.index,
                step.status.as_str(),
                output,
                step.error,
                step.started_at,
                now
            ])
        })
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::Conflict(format!(
                    "Step \"{}\" of run {} is already completed",
                    step.name, fence.run_id
                ))
            } else {
                Error::storage("persist_step", e)
            }
        })?;
    if inserted == 0 {
        return Ok(None);
    }
    // An attempt not begun is inserted whole, once the step's insert proved the fence.
    if let Some(attempt) = step.attempt.as_ref().filter(|a| !a.begun) {
        record_attempt(conn, fence, &step, attempt, now)?;
    }
    if step.status == StepStatus::Completed {
        conn.prepare_cached(sql::ADVANCE_STEP_COUNTERS)
            .and_then(|mut stmt| {
                stmt.execute(params![fence.run_id, fence.generation, step.index + 1, now])
            })
            .map_err(sql_error("persist_step"))?;
    }
    Ok(Some(Step {
        id,
        run_id: fence.run_id.clone(),
        name: step.name,
        index: step.index,
        status: step.status,
        output: step.output.filter(|o| !o.is_null()),
        error: step.error,
        started_at: step.started_at,
        completed_at: Some(now),
    }))
}

pub(super) fn update_progress(
    conn: &Connection,
    fence: &Fence,
    progress: Option<&Progress>,
    now: Timestamp,
) -> Result<bool> {
    let progress = progress
        .map(|p| to_json("update_progress", p))
        .transpose()?;
    let changed = conn
        .prepare_cached(sql::UPDATE_PROGRESS)
        .and_then(|mut stmt| stmt.execute(params![fence.run_id, fence.generation, progress, now]))
        .map_err(sql_error("update_progress"))?;
    Ok(changed == 1)
}

pub(super) fn append_log(
    conn: &Connection,
    fence: Option<&Fence>,
    log: NewLog,
    now: Timestamp,
) -> Result<Option<Log>> {
    let id = new_id_at(now);
    let data = log
        .data
        .as_ref()
        .map(|d| to_json("append_log", d))
        .transpose()?;
    let values = params![
        id,
        log.run_id,
        log.step_name,
        log.level.as_str(),
        log.message,
        data,
        now
    ];
    let inserted = match fence {
        None => conn
            .prepare_cached(sql::INSERT_LOG)
            .and_then(|mut stmt| stmt.execute(values)),
        Some(fence) => conn
            .prepare_cached(sql::INSERT_FENCED_LOG)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    id,
                    log.run_id,
                    log.step_name,
                    log.level.as_str(),
                    log.message,
                    data,
                    now,
                    fence.generation
                ])
            }),
    }
    .map_err(sql_error("append_log"))?;
    Ok((inserted == 1).then(|| Log {
        id,
        run_id: log.run_id,
        step_name: log.step_name,
        level: log.level,
        message: log.message,
        data: log.data.filter(|d| !d.is_null()),
        created_at: now,
    }))
}

fn delete_steps(conn: &Connection, run_id: &str) -> Result<()> {
    conn.prepare_cached(sql::DELETE_STEPS)
        .and_then(|mut stmt| stmt.execute([run_id]))
        .map_err(sql_error("delete_steps"))?;
    Ok(())
}

/// Applies a lease holder's [`Transition`] if the fence holds; `drop_steps` deletes the run's
/// steps with it.
pub(super) fn finish_run(
    conn: &Connection,
    fence: &Fence,
    transition: &Transition,
    now: Timestamp,
    drop_steps: bool,
) -> Result<bool> {
    let changed = match transition {
        Transition::Wait { wait_id } => return suspend_run(conn, fence, wait_id, now),
        Transition::Complete { output } => {
            let output = output
                .as_ref()
                .map(|o| to_json("complete_run", o))
                .transpose()?;
            conn.prepare_cached(sql::COMPLETE_RUN)
                .and_then(|mut stmt| {
                    stmt.execute(params![fence.run_id, fence.generation, output, now])
                })
                .map_err(sql_error("complete_run"))?
        }
        Transition::Fail { error } => conn
            .prepare_cached(sql::FAIL_RUN)
            .and_then(|mut stmt| stmt.execute(params![fence.run_id, fence.generation, error, now]))
            .map_err(sql_error("fail_run"))?,
    };
    if changed == 1 {
        if fence.may_have_waits {
            end_waits(conn, &fence.run_id, WaitStatus::Closed, now)?;
        }
        // A failed run keeps its steps for a resume (`Store::resume_run`).
        if drop_steps && !matches!(transition, Transition::Fail { .. }) {
            delete_steps(conn, &fence.run_id)?;
        }
    }
    Ok(changed == 1)
}

pub(super) fn cancel_run(
    conn: &Connection,
    id: &str,
    now: Timestamp,
    drop_steps: bool,
) -> Result<bool> {
    let changed = conn
        .prepare_cached(sql::CANCEL_RUN)
        .and_then(|mut stmt| stmt.execute(params![id, now]))
        .map_err(sql_error("cancel_run"))?;
    if changed == 1 {
        end_waits(conn, id, WaitStatus::Cancelled, now)?;
        if drop_steps {
            delete_steps(conn, id)?;
        }
    }
    Ok(changed == 1)
}

/// Puts a failed run back to `pending` ([`Store::resume_run`](crate::store::Store::resume_run)):
/// checks first, so an error writes nothing.
pub(super) fn resume_run(conn: &Connection, id: &str, now: Timestamp) -> Result<Run> {
    let Some(run) = get_run(conn, id)? else {
        return Err(resume_not_found(id));
    };
    if run.status != RunStatus::Failed {
        return Err(resume_not_failed(id, run.status));
    }
    if let Some(key) = &run.concurrency_key {
        let taken: bool = conn
            .prepare_cached(sql::HAS_PENDING_WITH_KEY)
            .and_then(|mut stmt| stmt.query_row(params![run.job_name, key, id], |row| row.get(0)))
            .map_err(sql_error("resume_run"))?;
        if taken {
            return Err(resume_key_taken(id, &run.job_name, key));
        }
    }
    let resumed = conn
        .prepare_cached(sql::RESUME_RUN)
        .and_then(|mut stmt| stmt.query_row(params![id, now], run_from_row).optional())
        .map_err(sql_error("resume_run"))?
        .ok_or_else(|| resume_not_failed(id, run.status))?;
    conn.prepare_cached(sql::REOPEN_CLOSED_WAITS)
        .and_then(|mut stmt| stmt.execute([id]))
        .map_err(sql_error("resume_run"))?;
    Ok(resumed)
}

fn delete_run_records(conn: &Connection, id: &str) -> Result<()> {
    for sql in sql::DELETE_RUN_RECORDS {
        conn.prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute([id]))
            .map_err(sql_error("delete_run"))?;
    }
    Ok(())
}

pub(super) fn delete_run(conn: &Connection, id: &str) -> Result<bool> {
    let terminal: bool = conn
        .prepare_cached(sql::IS_TERMINAL)
        .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)))
        .map_err(sql_error("delete_run"))?;
    if terminal {
        delete_run_records(conn, id)?;
    }
    Ok(terminal)
}

pub(super) fn purge_runs(conn: &Connection, older_than: Timestamp, limit: u64) -> Result<u64> {
    let ids: Vec<String> = conn
        .prepare_cached(sql::PURGE_CANDIDATES)
        .and_then(|mut stmt| {
            stmt.query_map(
                params![older_than, limit.min(i64::MAX as u64) as i64],
                |row| row.get(0),
            )?
            .collect()
        })
        .map_err(sql_error("purge_runs"))?;
    for id in &ids {
        delete_run_records(conn, id)?;
    }
    Ok(ids.len() as u64)
}

pub(super) fn release_expired_leases(
    conn: &Connection,
    now: Timestamp,
    drop_steps: bool,
) -> Result<Vec<Run>> {
    // Phase 1: an expired lease cannot go back to pending when its job+key already has a
    // pending run, or an older expired lease of the same job+key goes back instead (the
    // pending-per-key index allows one): fail it.
    let mut changed: Vec<Run> = conn
        .prepare_cached(sql::FAIL_BLOCKED_EXPIRED_LEASES)
        .and_then(|mut stmt| {
            stmt.query_map(params![now, LEASE_EXPIRED_PENDING_EXISTS], run_from_row)?
                .collect()
        })
        .map_err(sql_error("release_expired_leases"))?;
    if drop_steps {
        for run in &changed {
            delete_steps(conn, &run.id)?;
        }
    }
    // Phase 2: the rest go back to pending.
    let released: Vec<Run> = conn
        .prepare_cached(sql::RELEASE_EXPIRED_LEASES)
        .and_then(|mut stmt| stmt.query_map(params![now], run_from_row)?.collect())
        .map_err(sql_error("release_expired_leases"))?;
    changed.extend(released);
    Ok(changed)
}

pub(super) fn update_run(
    conn: &Connection,
    id: &str,
    patch: &RunPatch,
    now: Timestamp,
) -> Result<bool> {
    let (text, args) = sql::patch_run(id, patch, now)?;
    let changed = conn
        .execute(&text, params_from_iter(args))
        .map_err(sql_error("update_run"))?;
    Ok(changed == 1)
}

impl ToSql for sql::SqlArg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            sql::SqlArg::Null => ToSqlOutput::from(rusqlite::types::Null),
            sql::SqlArg::Integer(value) => ToSqlOutput::from(*value),
            sql::SqlArg::Text(text) => ToSqlOutput::from(text.as_str()),
        })
    }
}

/// The database's clock (v4 §4.7). SQLite's `'now'` is the clock of the process executing the
/// statement, which is this one, read here inside the write transaction (through the runtime's
/// wall clock, so a virtual wall clock applies too).
fn database_now() -> Timestamp {
    Timestamp::now()
}

fn wait_from_row(row: &Row<'_>) -> rusqlite::Result<DurableWait> {
    let invalid = |index: usize, what: &str, text: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("invalid wait {what} {text:?}").into(),
        )
    };
    let status: String = row.get(4)?;
    let outcome: Option<String> = row.get(9)?;
    let timing_known: Option<i64> = row.get(13)?;
    Ok(DurableWait {
        id: row.get(0)?,
        run_id: row.get(1)?,
        name: row.get(2)?,
        metadata: parse_json_keeping_null(row.get(3)?),
        status: WaitStatus::parse(&status).ok_or_else(|| invalid(4, "status", &status))?,
        payload: parse_json_keeping_null(row.get(5)?),
        signal_id: row.get(6)?,
        created_at: row.get(7)?,
        deadline_at: row.get(8)?,
        outcome: match outcome {
            Some(text) => {
                Some(WaitOutcome::parse(&text).ok_or_else(|| invalid(9, "outcome", &text))?)
            }
            None => None,
        },
        suspended_at: row.get(10)?,
        resolved_at: row.get(11)?,
        first_resumed_at: row.get(12)?,
        input_wait_ms: None,
        execution_slot_wait_ms: None,
    }
    .with_timing(timing_known == Some(1)))
}

/// A stored JSON column where `null` is a value (a signal's payload may be `null`).
fn parse_json_keeping_null(text: Option<String>) -> Option<Value> {
    text.and_then(|text| serde_json::from_str(&text).ok())
}

fn wait_by_id(conn: &Connection, operation: &'static str, id: &str) -> Result<Option<DurableWait>> {
    conn.prepare_cached(sql::WAIT_BY_ID)
        .and_then(|mut stmt| stmt.query_row([id], wait_from_row).optional())
        .map_err(sql_error(operation))
}

/// Locks the fenced run if its lease holds at `now` (`false`: it does not).
fn lock_live_lease(
    conn: &Connection,
    operation: &'static str,
    fence: &Fence,
    now: Timestamp,
) -> Result<bool> {
    let changed = conn
        .prepare_cached(sql::LOCK_LIVE_LEASE)
        .and_then(|mut stmt| stmt.execute(params![fence.run_id, fence.generation, now]))
        .map_err(sql_error(operation))?;
    Ok(changed == 1)
}

/// Resolves wait `id` as a timeout if it is pending and due at `now`; whether it did.
fn time_out_if_due(
    conn: &Connection,
    operation: &'static str,
    id: &str,
    now: Timestamp,
) -> Result<bool> {
    let changed = conn
        .prepare_cached(sql::TIME_OUT_WAIT)
        .and_then(|mut stmt| stmt.execute(params![id, now.as_millis()]))
        .map_err(sql_error(operation))?;
    Ok(changed == 1)
}

fn end_waits(conn: &Connection, run_id: &str, status: WaitStatus, now: Timestamp) -> Result<()> {
    conn.prepare_cached(sql::END_WAITS)
        .and_then(|mut stmt| stmt.execute(params![run_id, status.as_str(), now]))
        .map_err(sql_error("end_waits"))?;
    Ok(())
}

pub(super) fn prepare_wait(
    conn: &Connection,
    fence: &Fence,
    wait: &NewWait,
    now: Timestamp,
) -> Result<Option<DurableWait>> {
    if !lock_live_lease(conn, "prepare_wait", fence, now)? {
        return Ok(None);
    }
    let existing = conn
        .prepare_cached(sql::WAIT_BY_NAME)
        .and_then(|mut stmt| {
            stmt.query_row([&fence.run_id, &wait.name], wait_from_row)
                .optional()
        })
        .map_err(sql_error("prepare_wait"))?;
    if let Some(existing) = existing {
        return Ok(Some(existing));
    }
    let created = database_now();
    let deadline = waits::deadline_after(created.as_millis(), wait.timeout_ms)?;
    let id = new_id_at(created);
    let metadata = wait.metadata.as_ref().map(canonical_json);
    conn.prepare_cached(sql::INSERT_WAIT)
        .and_then(|mut stmt| {
            stmt.execute(params![
                id,
                fence.run_id,
                wait.name,
                metadata,
                created,
                deadline,
                deadline.map(|d| d.as_millis())
            ])
        })
        .map_err(sql_error("prepare_wait"))?;
    wait_by_id(conn, "prepare_wait", &id)
}

pub(super) fn wait_result(
    conn: &Connection,
    fence: &Fence,
    wait_id: &str,
    now: Timestamp,
) -> Result<Option<DurableWait>> {
    if !lock_live_lease(conn, "wait_result", fence, now)? {
        return Ok(None);
    }
    match wait_by_id(conn, "wait_result", wait_id)? {
        Some(wait) if wait.run_id == fence.run_id => {}
        _ => return Err(waits::not_this_runs_wait()),
    }
    time_out_if_due(conn, "wait_result", wait_id, database_now())?;
    let wait = wait_by_id(conn, "wait_result", wait_id)?.ok_or_else(waits::not_this_runs_wait)?;
    match wait.status {
        WaitStatus::Cancelled | WaitStatus::Closed => Err(waits::already_closed(wait_id)),
        _ => Ok(Some(wait)),
    }
}

/// [`Transition::Wait`]: the `leased → waiting` hand-off (v4 §3.2 step 4).
fn suspend_run(conn: &Connection, fence: &Fence, wait_id: &str, now: Timestamp) -> Result<bool> {
    if !lock_live_lease(conn, "suspend_run", fence, now)? {
        return Ok(false);
    }
    match wait_by_id(conn, "suspend_run", wait_id)? {
        Some(wait)
            if wait.run_id == fence.run_id
                && matches!(wait.status, WaitStatus::Pending | WaitStatus::Resolved) => {}
        _ => return Err(waits::not_available()),
    }
    let database_now = database_now();
    time_out_if_due(conn, "suspend_run", wait_id, database_now)?;
    let changed = conn
        .prepare_cached(sql::SUSPEND_RUN)
        .and_then(|mut stmt| {
            stmt.execute(params![
                fence.run_id,
                fence.generation,
                wait_id,
                database_now
            ])
        })
        .map_err(sql_error("suspend_run"))?;
    conn.prepare_cached(sql::MARK_SUSPENDED)
        .and_then(|mut stmt| stmt.execute(params![wait_id, database_now]))
        .map_err(sql_error("suspend_run"))?;
    Ok(changed == 1)
}

/// Signals a wait; `None` when it expired (its timeout must commit: an error to the caller,
/// not to the write).
pub(super) fn signal_wait(
    conn: &Connection,
    wait_id: &str,
    payload: &str,
    signal_id: &str,
) -> Result<Option<Signalled>> {
    let Some(found) = wait_by_id(conn, "signal_wait", wait_id)? else {
        return Err(waits::wait_not_found(wait_id));
    };
    let run_terminal: Option<bool> = conn
        .prepare_cached(sql::LOCK_RUN)
        .and_then(|mut stmt| stmt.query_row([&found.run_id], |row| row.get(0)).optional())
        .map_err(sql_error("signal_wait"))?;
    // Re-read after the lock (on SQLite the writer's transaction already excludes others).
    let wait =
        wait_by_id(conn, "signal_wait", wait_id)?.ok_or_else(|| waits::wait_not_found(wait_id))?;
    let stored = wait.payload.as_ref().map(canonical_json);
    let now = database_now();
    let step = waits::signal_step(
        wait.status,
        wait.outcome,
        wait.signal_id.as_deref(),
        stored.as_deref(),
        signal_id,
        payload,
        run_terminal.unwrap_or(true),
        wait.deadline_at,
        now,
    );
    let disposition = match step {
        SignalStep::Duplicate => SignalDisposition::Duplicate,
        SignalStep::Expired => return Ok(None),
        SignalStep::Refused => return Err(waits::cannot_accept(wait_id)),
        SignalStep::TimeOutNow => {
            time_out_if_due(conn, "signal_wait", wait_id, now)?;
            return Ok(None);
        }
        SignalStep::Accept => {
            conn.prepare_cached(sql::RESOLVE_SIGNAL)
                .and_then(|mut stmt| stmt.execute(params![wait_id, payload, signal_id, now]))
                .map_err(sql_error("signal_wait"))?;
            SignalDisposition::Accepted
        }
    };
    let wait =
        wait_by_id(conn, "signal_wait", wait_id)?.ok_or_else(|| waits::wait_not_found(wait_id))?;
    Ok(Some(Signalled { wait, disposition }))
}

pub(super) fn expire_due_waits(conn: &Connection, limit: u64) -> Result<u64> {
    let now = database_now();
    let due: Vec<(String, String)> = conn
        .prepare_cached(sql::DUE_WAITS)
        .and_then(|mut stmt| {
            stmt.query_map(
                params![now.as_millis(), limit.min(i64::MAX as u64) as i64],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?
            .collect()
        })
        .map_err(sql_error("expire_due_waits"))?;
    let mut expired = 0;
    for (wait_id, run_id) in &due {
        let terminal: Option<bool> = conn
            .prepare_cached(sql::LOCK_RUN)
            .and_then(|mut stmt| stmt.query_row([run_id], |row| row.get(0)).optional())
            .map_err(sql_error("expire_due_waits"))?;
        if terminal != Some(false) {
            continue;
        }
        if time_out_if_due(conn, "expire_due_waits", wait_id, database_now())? {
            expired += 1;
        }
    }
    Ok(expired)
}

pub(super) fn get_wait(conn: &Connection, wait_id: &str) -> Result<Option<DurableWait>> {
    wait_by_id(conn, "get_wait", wait_id)
}

pub(super) fn get_waits(conn: &Connection, run_id: &str) -> Result<Vec<DurableWait>> {
    conn.prepare_cached(sql::WAITS_OF_RUN)
        .and_then(|mut stmt| stmt.query_map([run_id], wait_from_row)?.collect())
        .map_err(sql_error("get_waits"))
}

/// Whether the children of the wait `parent_wait_id` are settled ([`Store::children_settled`]).
pub(super) fn children_settled(conn: &Connection, parent_wait_id: &str) -> Result<bool> {
    conn.prepare_cached(sql::CHILDREN_SETTLED)
        .and_then(|mut stmt| stmt.query_row([parent_wait_id], |row| row.get(0)))
        .map_err(sql_error("children_settled"))
}

/// Up to `limit` settled children waits ([`Store::settled_children_waits`]).
pub(super) fn settled_children_waits(conn: &Connection, limit: u64) -> Result<Vec<String>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(sql::SETTLED_CHILDREN_WAITS)
        .and_then(|mut stmt| {
            stmt.query_map([limit], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(sql_error("settled_children_waits"))
}

/// Up to `limit` children to cancel with their cancelled parent ([`Store::children_to_cancel`]).
pub(super) fn children_to_cancel(
    conn: &Connection,
    cancelled_since: Timestamp,
    limit: u64,
) -> Result<Vec<String>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(sql::CHILDREN_TO_CANCEL)
        .and_then(|mut stmt| {
            stmt.query_map(
                params![
                    limit,
                    crate::children::DETACHED_METADATA_PATTERN,
                    cancelled_since
                ],
                |row| row.get(0),
            )?
            .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(sql_error("children_to_cancel"))
}
