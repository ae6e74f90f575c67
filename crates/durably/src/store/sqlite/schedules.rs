//! Cron schedules on SQLite (`durably_rs_schedules`, [`crate::schedules`]): their rows, and
//! the firing of a slot as one compare-and-set plus its runs' enqueue in one write.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::{Error, Result};
use crate::schedules::{CatchUp, ScheduleFiring, ScheduleRecord};
use crate::store::{Enqueued, parse_labels};
use crate::time::Timestamp;

use super::{ops, sql};

fn failed(operation: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::storage(operation, e)
}

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<ScheduleRecord> {
    let input: String = row.get(4)?;
    let labels: String = row.get(5)?;
    let catch_up: String = row.get(6)?;
    Ok(ScheduleRecord {
        name: row.get(0)?,
        job_name: row.get(1)?,
        cron: row.get(2)?,
        time_zone: row.get(3)?,
        input: serde_json::from_str(&input).unwrap_or(serde_json::Value::Null),
        labels: parse_labels(&labels),
        catch_up: CatchUp::parse(&catch_up).unwrap_or_default(),
        paused: row.get::<_, i64>(7)? != 0,
        next_fire_at: row.get(8)?,
        last_fired_at: row.get(9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
    })
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::storage("upsert_schedule", e))
}

pub(super) fn upsert(
    conn: &Connection,
    record: &ScheduleRecord,
    now: Timestamp,
) -> Result<ScheduleRecord> {
    conn.query_row(
        sql::UPSERT_SCHEDULE,
        params![
            record.name,
            record.job_name,
            record.cron,
            record.time_zone,
            to_json(&record.input)?,
            to_json(&record.labels)?,
            record.catch_up.as_text(),
            record.next_fire_at,
            now,
        ],
        record_from_row,
    )
    .map_err(failed("upsert_schedule"))
}

pub(super) fn get(conn: &Connection, name: &str) -> Result<Option<ScheduleRecord>> {
    conn.query_row(sql::GET_SCHEDULE, [name], record_from_row)
        .optional()
        .map_err(failed("get_schedule"))
}

pub(super) fn list(conn: &Connection) -> Result<Vec<ScheduleRecord>> {
    let mut statement = conn
        .prepare_cached(sql::LIST_SCHEDULES)
        .map_err(failed("list_schedules"))?;
    let rows = statement
        .query_map([], record_from_row)
        .map_err(failed("list_schedules"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(failed("list_schedules"))
}

pub(super) fn due(conn: &Connection, now: Timestamp, limit: u64) -> Result<Vec<ScheduleRecord>> {
    let mut statement = conn
        .prepare_cached(sql::DUE_SCHEDULES)
        .map_err(failed("due_schedules"))?;
    let rows = statement
        .query_map(
            params![now, limit.min(i64::MAX as u64) as i64],
            record_from_row,
        )
        .map_err(failed("due_schedules"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(failed("due_schedules"))
}

pub(super) fn pause(
    conn: &Connection,
    name: &str,
    now: Timestamp,
) -> Result<Option<ScheduleRecord>> {
    conn.execute(sql::PAUSE_SCHEDULE, params![name, now])
        .map_err(failed("pause_schedule"))?;
    get(conn, name)
}

pub(super) fn resume(
    conn: &Connection,
    name: &str,
    next_fire_at: Timestamp,
    now: Timestamp,
) -> Result<Option<ScheduleRecord>> {
    conn.execute(sql::RESUME_SCHEDULE, params![name, next_fire_at, now])
        .map_err(failed("resume_schedule"))?;
    get(conn, name)
}

pub(super) fn delete(conn: &Connection, name: &str) -> Result<bool> {
    conn.execute(sql::DELETE_SCHEDULE, [name])
        .map(|deleted| deleted == 1)
        .map_err(failed("delete_schedule"))
}

/// The compare-and-set, then the runs. Runs in its own savepoint: a rejected run undoes the
/// whole firing.
pub(super) fn fire(
    conn: &Connection,
    firing: &ScheduleFiring,
    now: Timestamp,
) -> Result<Option<Vec<Enqueued>>> {
    let moved = conn
        .execute(
            sql::FIRE_SCHEDULE,
            params![
                firing.name,
                firing.expected,
                firing.next,
                firing.last_fired,
                now
            ],
        )
        .map_err(failed("fire_schedule"))?;
    if moved == 0 {
        return Ok(None);
    }
    firing
        .runs
        .iter()
        .map(|run| ops::enqueue(conn, run, now))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
