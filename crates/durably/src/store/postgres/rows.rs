//! Row mapping: the column lists and the conversion of rows into runs, steps and logs.

use super::*;

pub(super) const RUN_COLUMNS: &str = "id, job_name, input, status, idempotency_key, concurrency_key, \
    current_step_index, completed_step_count, progress, output, error, labels, lease_owner, \
    lease_expires_at, lease_generation, started_at, completed_at, created_at, updated_at, \
    waiting_on_wait_id, rs_priority, rs_parent_run_id, rs_parent_wait_id, rs_trace_context";

pub(super) const STEP_COLUMNS: &str =
    "id, run_id, name, \"index\", status, output, error, started_at, completed_at";

pub(super) const LOG_COLUMNS: &str = "id, run_id, step_name, level, message, data, created_at";

/// The status list of terminal runs, for SQL.
pub(super) const TERMINAL: &str = "('completed', 'failed', 'cancelled')";

/// `RUN_COLUMNS` qualified by `alias`.
/// How many columns [`run_from_row`] reads.
pub(super) fn run_column_count() -> usize {
    RUN_COLUMNS.split(", ").count()
}

pub(super) fn run_columns(alias: &str) -> String {
    RUN_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn corrupt(what: String) -> Fail {
    Fail::Other(Error::storage("decode", what))
}

pub(super) fn timestamp(text: &str) -> std::result::Result<Timestamp, Fail> {
    Timestamp::parse(text).ok_or_else(|| corrupt(format!("invalid timestamp {text:?}")))
}

pub(super) fn get_ts(row: &Row, idx: usize) -> std::result::Result<Timestamp, Fail> {
    let text: String = row.try_get(idx)?;
    timestamp(&text)
}

pub(super) fn get_opt_ts(row: &Row, idx: usize) -> std::result::Result<Option<Timestamp>, Fail> {
    let text: Option<String> = row.try_get(idx)?;
    text.as_deref().map(timestamp).transpose()
}

pub(super) fn get_int(row: &Row, idx: usize) -> std::result::Result<i64, Fail> {
    Ok(i64::from(row.try_get::<_, i32>(idx)?))
}

/// A run from `RUN_COLUMNS` starting at column `at`.
pub(super) fn run_from_row(row: &Row, at: usize) -> std::result::Result<Run, Fail> {
    let input: String = row.try_get(at + 2)?;
    let status: String = row.try_get(at + 3)?;
    let progress: Option<String> = row.try_get(at + 8)?;
    let labels: String = row.try_get(at + 11)?;
    Ok(Run {
        id: row.try_get(at)?,
        job_name: row.try_get(at + 1)?,
        input: serde_json::from_str(&input).unwrap_or(Value::Null),
        status: status
            .parse()
            .map_err(|_| corrupt(format!("invalid run status {status:?}")))?,
        idempotency_key: row.try_get(at + 4)?,
        concurrency_key: row.try_get(at + 5)?,
        current_step_index: get_int(row, at + 6)?,
        completed_step_count: get_int(row, at + 7)?,
        progress: parse_optional_json(progress).and_then(|v| serde_json::from_value(v).ok()),
        output: parse_optional_json(row.try_get(at + 9)?),
        error: row.try_get(at + 10)?,
        labels: parse_labels(&labels),
        lease_owner: row.try_get(at + 12)?,
        lease_expires_at: get_opt_ts(row, at + 13)?,
        lease_generation: get_int(row, at + 14)?,
        waiting_on_wait_id: row.try_get(at + 19)?,
        priority: row.try_get::<_, Option<i32>>(at + 20)?.unwrap_or(0),
        parent_run_id: row.try_get(at + 21)?,
        parent_wait_id: row.try_get(at + 22)?,
        trace_context: row.try_get(at + 23)?,
        started_at: get_opt_ts(row, at + 15)?,
        completed_at: get_opt_ts(row, at + 16)?,
        created_at: get_ts(row, at + 17)?,
        updated_at: get_ts(row, at + 18)?,
    })
}

pub(super) fn step_from_row(row: &Row) -> std::result::Result<Step, Fail> {
    let status: String = row.try_get(4)?;
    Ok(Step {
        id: row.try_get(0)?,
        run_id: row.try_get(1)?,
        name: row.try_get(2)?,
        index: get_int(row, 3)?,
        status: StepStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("invalid step status {status:?}")))?,
        output: parse_optional_json(row.try_get(5)?),
        error: row.try_get(6)?,
        started_at: get_ts(row, 7)?,
        completed_at: get_opt_ts(row, 8)?,
    })
}

pub(super) fn attempt_from_row(row: &Row) -> std::result::Result<StepAttempt, Fail> {
    let status: String = row.try_get(5)?;
    let status = AttemptStatus::parse(&status)
        .ok_or_else(|| corrupt(format!("invalid attempt status {status:?}")))?;
    let generation = get_int(row, 4)?;
    let run_status: Option<String> = row.try_get(10)?;
    let run_status = run_status
        .map(|s| {
            s.parse::<RunStatus>()
                .map_err(|_| corrupt(format!("invalid run status {s:?}")))
        })
        .transpose()?;
    let run_generation: Option<i32> = row.try_get(11)?;
    let run_error: Option<String> = row.try_get(12)?;
    let run = run_status.map(|status| RunFacts {
        status,
        lease_generation: run_generation.map_or(0, i64::from),
        error: run_error.as_deref(),
    });
    Ok(StepAttempt {
        id: row.try_get(0)?,
        run_id: row.try_get(1)?,
        step_name: row.try_get(2)?,
        step_index: get_int(row, 3)?,
        lease_generation: generation,
        status,
        metadata: parse_optional_json(row.try_get(6)?),
        error: row.try_get(7)?,
        started_at: get_ts(row, 8)?,
        completed_at: get_opt_ts(row, 9)?,
        interruption_reason: interruption_reason(status, generation, run),
    })
}

pub(super) fn log_from_row(row: &Row) -> std::result::Result<Log, Fail> {
    let level: String = row.try_get(3)?;
    Ok(Log {
        id: row.try_get(0)?,
        run_id: row.try_get(1)?,
        step_name: row.try_get(2)?,
        level: LogLevel::parse(&level)
            .ok_or_else(|| corrupt(format!("invalid log level {level:?}")))?,
        message: row.try_get(4)?,
        data: parse_optional_json(row.try_get(5)?),
        created_at: get_ts(row, 6)?,
    })
}

pub(super) fn to_json(operation: &'static str, value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::storage(operation, e))
}

pub(super) fn count_bool(row: &Row, idx: usize) -> std::result::Result<bool, Fail> {
    Ok(row.try_get::<_, bool>(idx)?)
}

pub(super) fn count(row: &Row, idx: usize) -> std::result::Result<i64, Fail> {
    Ok(row.try_get::<_, i64>(idx)?)
}
