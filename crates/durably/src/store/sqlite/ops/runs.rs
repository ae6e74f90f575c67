//! Runs as a whole: reads and listing, the end of a run (complete, fail, suspend, cancel),
//! resume, deletion and retention (purge), and the admin patch.

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::rows::run_from_row;
use super::steps::delete_steps;
use super::waits::{end_waits, suspend_run};
use super::{sql_error, to_json};
use crate::error::Result;
use crate::run::{Run, RunFilter, RunStatus};
use crate::store::sqlite_sql as sql;
use crate::store::{
    Fence, RunPatch, Transition, resume_key_taken, resume_not_failed, resume_not_found,
};
use crate::time::Timestamp;
use crate::waits::WaitStatus;

pub(in crate::store::sqlite) fn get_run(conn: &Connection, id: &str) -> Result<Option<Run>> {
    conn.prepare_cached(sql::GET_RUN)
        .and_then(|mut stmt| stmt.query_row([id], run_from_row).optional())
        .map_err(sql_error("get_run"))
}

/// Lists runs (the statement: [`sql::list_runs`]).
pub(in crate::store::sqlite) fn get_runs(
    conn: &Connection,
    filter: &RunFilter,
) -> Result<Vec<Run>> {
    let (text, args) = sql::list_runs(filter)?;
    let mut stmt = conn.prepare_cached(&text).map_err(sql_error("get_runs"))?;
    stmt.query_map(params_from_iter(args), run_from_row)
        .and_then(|rows| rows.collect())
        .map_err(sql_error("get_runs"))
}

/// Applies a lease holder's [`Transition`] if the fence holds; `drop_steps` deletes the run's
/// steps with it.
pub(in crate::store::sqlite) fn finish_run(
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

pub(in crate::store::sqlite) fn cancel_run(
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
pub(in crate::store::sqlite) fn resume_run(
    conn: &Connection,
    id: &str,
    now: Timestamp,
) -> Result<Run> {
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

pub(in crate::store::sqlite) fn delete_run(conn: &Connection, id: &str) -> Result<bool> {
    let terminal: bool = conn
        .prepare_cached(sql::IS_TERMINAL)
        .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)))
        .map_err(sql_error("delete_run"))?;
    if terminal {
        delete_run_records(conn, id)?;
    }
    Ok(terminal)
}

pub(in crate::store::sqlite) fn purge_runs(
    conn: &Connection,
    older_than: Timestamp,
    limit: u64,
) -> Result<u64> {
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

pub(in crate::store::sqlite) fn update_run(
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
