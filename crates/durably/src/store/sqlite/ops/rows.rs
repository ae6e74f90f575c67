//! Rows to values and back: the `rusqlite` conversions of timestamps, run statuses and
//! statement arguments, and the decoding of run, step, log and wait rows.

use rusqlite::Row;
use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use serde_json::Value;

use crate::run::{Log, LogLevel, Run, RunStatus, Step, StepStatus};
use crate::store::sqlite_sql as sql;
use crate::store::{parse_labels, parse_optional_json};
use crate::time::Timestamp;
use crate::waits::{DurableWait, WaitOutcome, WaitStatus};

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

impl ToSql for sql::SqlArg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            sql::SqlArg::Null => ToSqlOutput::from(rusqlite::types::Null),
            sql::SqlArg::Integer(value) => ToSqlOutput::from(*value),
            sql::SqlArg::Text(text) => ToSqlOutput::from(text.as_str()),
        })
    }
}

pub(super) fn run_from_row(row: &Row<'_>) -> rusqlite::Result<Run> {
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

pub(super) fn step_from_row(row: &Row<'_>) -> rusqlite::Result<Step> {
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

pub(super) fn log_from_row(row: &Row<'_>) -> rusqlite::Result<Log> {
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

pub(super) fn wait_from_row(row: &Row<'_>) -> rusqlite::Result<DurableWait> {
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
