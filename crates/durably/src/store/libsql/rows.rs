//! Rows of the SQLite store's statements, as the libSQL client reads them: the same columns in
//! the same order as `sqlite/ops.rs` reads through rusqlite.

use serde_json::Value;

use super::conn::Row;
use crate::attempts::{AttemptStatus, RunFacts, StepAttempt, interruption_reason};
use crate::error::{Error, Result};
use crate::run::{Log, LogLevel, Run, RunStatus, Step, StepStatus};
use crate::store::{parse_labels, parse_optional_json};
use crate::waits::{DurableWait, WaitOutcome, WaitStatus};

fn invalid(row: &Row<'_>, what: &str, text: &str) -> Error {
    Error::storage(row.operation, format!("invalid {what} {text:?}"))
}

fn run_status(row: &Row<'_>, index: usize) -> Result<RunStatus> {
    let text = row.text(index)?;
    text.parse().map_err(|_| invalid(row, "run status", &text))
}

/// A run from `run_columns!()`.
pub(super) fn run(row: &Row<'_>) -> Result<Run> {
    let input = row.text(2)?;
    let labels = row.opt_text(11)?.unwrap_or_default();
    Ok(Run {
        id: row.text(0)?,
        job_name: row.text(1)?,
        input: serde_json::from_str(&input).unwrap_or(Value::Null),
        status: run_status(row, 3)?,
        idempotency_key: row.opt_text(4)?,
        concurrency_key: row.opt_text(5)?,
        current_step_index: row.int(6)?,
        completed_step_count: row.int(7)?,
        progress: parse_optional_json(row.opt_text(8)?)
            .and_then(|v| serde_json::from_value(v).ok()),
        output: parse_optional_json(row.opt_text(9)?),
        error: row.opt_text(10)?,
        labels: parse_labels(&labels),
        lease_owner: row.opt_text(12)?,
        lease_expires_at: row.opt_ts(13)?,
        lease_generation: row.int(14)?,
        started_at: row.opt_ts(15)?,
        completed_at: row.opt_ts(16)?,
        created_at: row.ts(17)?,
        updated_at: row.ts(18)?,
        waiting_on_wait_id: row.opt_text(19)?,
        priority: row
            .opt_int(20)?
            .map_or(0, |p| i32::try_from(p).unwrap_or(0)),
        parent_run_id: row.opt_text(21)?,
        parent_wait_id: row.opt_text(22)?,
        trace_context: row.opt_text(23)?,
    })
}

/// A step from `step_columns!()`.
pub(super) fn step(row: &Row<'_>) -> Result<Step> {
    let status = row.text(4)?;
    Ok(Step {
        id: row.text(0)?,
        run_id: row.text(1)?,
        name: row.text(2)?,
        index: row.int(3)?,
        status: StepStatus::parse(&status).ok_or_else(|| invalid(row, "step status", &status))?,
        output: parse_optional_json(row.opt_text(5)?),
        error: row.opt_text(6)?,
        started_at: row.ts(7)?,
        completed_at: row.opt_ts(8)?,
    })
}

/// A log from `log_columns!()`.
pub(super) fn log(row: &Row<'_>) -> Result<Log> {
    let level = row.text(3)?;
    Ok(Log {
        id: row.text(0)?,
        run_id: row.text(1)?,
        step_name: row.opt_text(2)?,
        level: LogLevel::parse(&level).ok_or_else(|| invalid(row, "log level", &level))?,
        message: row.text(4)?,
        data: parse_optional_json(row.opt_text(5)?),
        created_at: row.ts(6)?,
    })
}

/// A stored JSON column where `null` is a value (a signal's payload may be `null`).
fn json_keeping_null(text: Option<String>) -> Option<Value> {
    text.and_then(|text| serde_json::from_str(&text).ok())
}

/// A wait from `wait_columns!()`.
pub(super) fn wait(row: &Row<'_>) -> Result<DurableWait> {
    let status = row.text(4)?;
    let outcome = match row.opt_text(9)? {
        Some(text) => {
            Some(WaitOutcome::parse(&text).ok_or_else(|| invalid(row, "wait outcome", &text))?)
        }
        None => None,
    };
    Ok(DurableWait {
        id: row.text(0)?,
        run_id: row.text(1)?,
        name: row.text(2)?,
        metadata: json_keeping_null(row.opt_text(3)?),
        status: WaitStatus::parse(&status).ok_or_else(|| invalid(row, "wait status", &status))?,
        payload: json_keeping_null(row.opt_text(5)?),
        signal_id: row.opt_text(6)?,
        created_at: row.ts(7)?,
        deadline_at: row.opt_ts(8)?,
        outcome,
        suspended_at: row.opt_ts(10)?,
        resolved_at: row.opt_ts(11)?,
        first_resumed_at: row.opt_ts(12)?,
        input_wait_ms: None,
        execution_slot_wait_ms: None,
    }
    .with_timing(row.opt_int(13)? == Some(1)))
}

/// An attempt from `sql::SELECT_ATTEMPTS`, with its interruption reason.
pub(super) fn attempt(row: &Row<'_>) -> Result<StepAttempt> {
    let status = row.text(5)?;
    let status =
        AttemptStatus::parse(&status).ok_or_else(|| invalid(row, "attempt status", &status))?;
    let generation = row.int(4)?;
    let run_status = match row.opt_text(10)? {
        Some(text) => Some(
            text.parse::<RunStatus>()
                .map_err(|_| invalid(row, "run status", &text))?,
        ),
        None => None,
    };
    let run_generation = row.opt_int(11)?;
    let run_error = row.opt_text(12)?;
    let run = run_status.map(|status| RunFacts {
        status,
        lease_generation: run_generation.unwrap_or(0),
        error: run_error.as_deref(),
    });
    Ok(StepAttempt {
        id: row.text(0)?,
        run_id: row.text(1)?,
        step_name: row.text(2)?,
        step_index: row.int(3)?,
        lease_generation: generation,
        status,
        metadata: parse_optional_json(row.opt_text(6)?),
        error: row.opt_text(7)?,
        started_at: row.ts(8)?,
        completed_at: row.opt_ts(9)?,
        interruption_reason: interruption_reason(status, generation, run),
    })
}
