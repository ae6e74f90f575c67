//! What a lease holder records as its run executes: step checkpoints and their attempts,
//! progress and logs, and their reads.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::rows::{log_from_row, step_from_row};
use super::{is_unique_violation, sql_error, to_json};
use crate::attempts::{AttemptStatus, NewAttempt, RunFacts, StepAttempt, interruption_reason};
use crate::error::{Error, Result};
use crate::run::{Log, Progress, RunStatus, Step, StepStatus};
use crate::store::sqlite_sql as sql;
use crate::store::{AttemptStart, Fence, NewLog, NewStep, parse_optional_json};
use crate::time::{Timestamp, new_id_at};

pub(in crate::store::sqlite) fn get_steps(conn: &Connection, run_id: &str) -> Result<Vec<Step>> {
    conn.prepare_cached(sql::GET_STEPS)
        .and_then(|mut stmt| stmt.query_map([run_id], step_from_row)?.collect())
        .map_err(sql_error("get_steps"))
}

pub(in crate::store::sqlite) fn get_completed_step(
    conn: &Connection,
    run_id: &str,
    name: &str,
) -> Result<Option<Step>> {
    conn.prepare_cached(sql::GET_COMPLETED_STEP)
        .and_then(|mut stmt| stmt.query_row([run_id, name], step_from_row).optional())
        .map_err(sql_error("get_completed_step"))
}

pub(in crate::store::sqlite) fn get_logs(conn: &Connection, run_id: &str) -> Result<Vec<Log>> {
    conn.prepare_cached(sql::GET_LOGS)
        .and_then(|mut stmt| stmt.query_map([run_id], log_from_row)?.collect())
        .map_err(sql_error("get_logs"))
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

pub(in crate::store::sqlite) fn begin_step_attempt(
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

pub(in crate::store::sqlite) fn set_step_attempt_metadata(
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

pub(in crate::store::sqlite) fn get_step_attempts(
    conn: &Connection,
    run_id: &str,
) -> Result<Vec<StepAttempt>> {
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

pub(in crate::store::sqlite) fn persist_step(
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

pub(in crate::store::sqlite) fn update_progress(
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

pub(in crate::store::sqlite) fn append_log(
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

pub(super) fn delete_steps(conn: &Connection, run_id: &str) -> Result<()> {
    conn.prepare_cached(sql::DELETE_STEPS)
        .and_then(|mut stmt| stmt.execute([run_id]))
        .map_err(sql_error("delete_steps"))?;
    Ok(())
}
