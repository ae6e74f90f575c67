//! The dashboard's overview on SQLite ([`Store::run_overview`](crate::Store::run_overview),
//! [`Store::run_counts`](crate::Store::run_counts)): plain reads in one read transaction (one
//! snapshot), assembled by [`OverviewRows`] as on every backend.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::error::Result;
use crate::overview::{
    EndedGroup, EndedRun, OVERVIEW_SAMPLE, Overview, OverviewRows, OverviewWindow, RunCounts,
};
use crate::time::Timestamp;

use super::ops::sql_error;
use super::sql;

/// The overview's four reads: the counts, then the runs that ended in the window (grouped, and
/// the newest [`OVERVIEW_SAMPLE`] for percentiles).
pub(super) fn run_overview(
    conn: &Connection,
    now: Timestamp,
    window: OverviewWindow,
) -> Result<Overview> {
    let failed = sql_error("run_overview");
    let tx = conn.unchecked_transaction().map_err(&failed)?;
    let since = window.start(now);
    let mut rows = read_counts(&tx, "run_overview")?;
    {
        let mut stmt = tx.prepare_cached(sql::OVERVIEW_ENDED).map_err(&failed)?;
        rows.ended = stmt
            .query_map(params![since, window.key_len() as i64], |row| {
                Ok(EndedGroup {
                    job_name: row.get(0)?,
                    bucket: row.get(1)?,
                    status: row.get(2)?,
                    count: row.get(3)?,
                })
            })
            .and_then(|r| r.collect::<rusqlite::Result<_>>())
            .map_err(&failed)?;
        let mut stmt = tx.prepare_cached(sql::OVERVIEW_SAMPLE).map_err(&failed)?;
        rows.sample = stmt
            .query_map(params![since, OVERVIEW_SAMPLE as i64], |row| {
                Ok(EndedRun {
                    job_name: row.get(0)?,
                    created_at: row.get(1)?,
                    started_at: row.get(2)?,
                    completed_at: row.get(3)?,
                    delay_end: row.get(4)?,
                })
            })
            .and_then(|r| r.collect::<rusqlite::Result<_>>())
            .map_err(&failed)?;
    }
    tx.finish().map_err(&failed)?;
    Ok(rows.assemble(now, window))
}

/// The two cheap reads alone.
pub(super) fn run_counts(conn: &Connection, now: Timestamp) -> Result<RunCounts> {
    let failed = sql_error("run_counts");
    let tx = conn.unchecked_transaction().map_err(&failed)?;
    let rows = read_counts(&tx, "run_counts")?;
    tx.finish().map_err(&failed)?;
    Ok(rows.counts(now))
}

/// Runs per status (through the status index) and the oldest pending run (through the
/// pending-order index).
fn read_counts(tx: &Transaction<'_>, operation: &'static str) -> Result<OverviewRows> {
    let failed = sql_error(operation);
    let mut rows = OverviewRows::default();
    let mut stmt = tx.prepare_cached(sql::OVERVIEW_STATUSES).map_err(&failed)?;
    rows.statuses = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(|r| r.collect::<rusqlite::Result<_>>())
        .map_err(&failed)?;
    let mut stmt = tx
        .prepare_cached(sql::OVERVIEW_OLDEST_PENDING)
        .map_err(&failed)?;
    rows.oldest_pending = stmt
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()
        .map_err(&failed)?;
    Ok(rows)
}
