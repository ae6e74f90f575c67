//! Cron schedules on libSQL (`durably_rs_schedules`, [`crate::schedules`]): the SQLite store's
//! statements, and a firing as one transaction: the compare-and-set (guarded), then its runs'
//! enqueue (decided optimistically, [`super::enqueue`]).

use super::conn::{Db, Row, parse_first, parse_rows, returning_one, stmt, to_json};
use super::enqueue;
use crate::error::Result;
use crate::schedules::{CatchUp, ScheduleFiring, ScheduleRecord};
use crate::store::sqlite_sql as sql;
use crate::store::{Enqueued, parse_labels};
use crate::time::Timestamp;

fn record(row: &Row<'_>) -> Result<ScheduleRecord> {
    let input = row.text(4)?;
    let labels = row.text(5)?;
    let catch_up = row.text(6)?;
    Ok(ScheduleRecord {
        name: row.text(0)?,
        job_name: row.text(1)?,
        cron: row.text(2)?,
        time_zone: row.text(3)?,
        input: serde_json::from_str(&input).unwrap_or(serde_json::Value::Null),
        labels: parse_labels(&labels),
        catch_up: CatchUp::parse(&catch_up).unwrap_or_default(),
        paused: row.int(7)? != 0,
        next_fire_at: row.ts(8)?,
        last_fired_at: row.opt_ts(9)?,
        created_at: row.ts(10)?,
        updated_at: row.ts(11)?,
    })
}

pub(super) async fn upsert(
    db: &Db,
    schedule: &ScheduleRecord,
    now: Timestamp,
) -> Result<ScheduleRecord> {
    let statement = stmt!(
        sql::UPSERT_SCHEDULE,
        schedule.name.as_str(),
        schedule.job_name.as_str(),
        schedule.cron.as_str(),
        schedule.time_zone.as_str(),
        to_json("upsert_schedule", &schedule.input)?,
        to_json("upsert_schedule", &schedule.labels)?,
        schedule.catch_up.as_text(),
        schedule.next_fire_at,
        now
    );
    // An upsert is idempotent: retried like a read.
    let rows = db.read("upsert_schedule", statement).await?.rows;
    parse_first("upsert_schedule", &rows, record)?
        .ok_or_else(|| crate::Error::storage("upsert_schedule", "the upsert returned no schedule"))
}

pub(super) async fn get(db: &Db, name: &str) -> Result<Option<ScheduleRecord>> {
    let rows = db
        .rows("get_schedule", stmt!(sql::GET_SCHEDULE, name))
        .await?;
    parse_first("get_schedule", &rows, record)
}

pub(super) async fn list(db: &Db) -> Result<Vec<ScheduleRecord>> {
    let rows = db
        .rows("list_schedules", stmt!(sql::LIST_SCHEDULES))
        .await?;
    parse_rows("list_schedules", &rows, record)
}

pub(super) async fn due(db: &Db, now: Timestamp, limit: u64) -> Result<Vec<ScheduleRecord>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db
        .rows("due_schedules", stmt!(sql::DUE_SCHEDULES, now, limit))
        .await?;
    parse_rows("due_schedules", &rows, record)
}

pub(super) async fn pause(db: &Db, name: &str, now: Timestamp) -> Result<Option<ScheduleRecord>> {
    db.read("pause_schedule", stmt!(sql::PAUSE_SCHEDULE, name, now))
        .await?;
    get(db, name).await
}

pub(super) async fn resume(
    db: &Db,
    name: &str,
    next_fire_at: Timestamp,
    now: Timestamp,
) -> Result<Option<ScheduleRecord>> {
    db.read(
        "resume_schedule",
        stmt!(sql::RESUME_SCHEDULE, name, next_fire_at, now),
    )
    .await?;
    get(db, name).await
}

pub(super) async fn delete(db: &Db, name: &str) -> Result<bool> {
    let result = db
        .write(
            "delete_schedule",
            stmt!(returning_one(sql::DELETE_SCHEDULE), name),
        )
        .await?;
    Ok(!result.rows.is_empty())
}

pub(super) async fn fire(
    db: &Db,
    firing: &ScheduleFiring,
    now: Timestamp,
) -> Result<Option<Vec<Enqueued>>> {
    let cas = stmt!(
        sql::FIRE_SCHEDULE,
        firing.name.as_str(),
        firing.expected,
        firing.next,
        firing.last_fired,
        now
    );
    enqueue::enqueue_after(db, Some(&cas), &firing.runs, now).await
}
