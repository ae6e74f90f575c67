//! Durable waits (upstream v4 §4): preparing a wait, its result, the suspension of its run,
//! signals and timeouts; and the waits on child runs.

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::wait_from_row;
use super::{database_now, sql_error};
use crate::error::Result;
use crate::store::sqlite_sql as sql;
use crate::store::{Fence, Signalled};
use crate::time::{Timestamp, new_id_at};
use crate::waits::{
    self, DurableWait, NewWait, SignalDisposition, SignalStep, WaitStatus, canonical_json,
};

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

pub(super) fn end_waits(
    conn: &Connection,
    run_id: &str,
    status: WaitStatus,
    now: Timestamp,
) -> Result<()> {
    conn.prepare_cached(sql::END_WAITS)
        .and_then(|mut stmt| stmt.execute(params![run_id, status.as_str(), now]))
        .map_err(sql_error("end_waits"))?;
    Ok(())
}

pub(in crate::store::sqlite) fn prepare_wait(
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

pub(in crate::store::sqlite) fn wait_result(
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
pub(super) fn suspend_run(
    conn: &Connection,
    fence: &Fence,
    wait_id: &str,
    now: Timestamp,
) -> Result<bool> {
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
pub(in crate::store::sqlite) fn signal_wait(
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

pub(in crate::store::sqlite) fn expire_due_waits(conn: &Connection, limit: u64) -> Result<u64> {
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

pub(in crate::store::sqlite) fn get_wait(
    conn: &Connection,
    wait_id: &str,
) -> Result<Option<DurableWait>> {
    wait_by_id(conn, "get_wait", wait_id)
}

pub(in crate::store::sqlite) fn get_waits(
    conn: &Connection,
    run_id: &str,
) -> Result<Vec<DurableWait>> {
    conn.prepare_cached(sql::WAITS_OF_RUN)
        .and_then(|mut stmt| stmt.query_map([run_id], wait_from_row)?.collect())
        .map_err(sql_error("get_waits"))
}

/// Whether the children of the wait `parent_wait_id` are settled ([`Store::children_settled`]).
pub(in crate::store::sqlite) fn children_settled(
    conn: &Connection,
    parent_wait_id: &str,
) -> Result<bool> {
    conn.prepare_cached(sql::CHILDREN_SETTLED)
        .and_then(|mut stmt| stmt.query_row([parent_wait_id], |row| row.get(0)))
        .map_err(sql_error("children_settled"))
}

/// Up to `limit` settled children waits ([`Store::settled_children_waits`]).
pub(in crate::store::sqlite) fn settled_children_waits(
    conn: &Connection,
    limit: u64,
) -> Result<Vec<String>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(sql::SETTLED_CHILDREN_WAITS)
        .and_then(|mut stmt| {
            stmt.query_map([limit], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(sql_error("settled_children_waits"))
}

/// Up to `limit` children to cancel with their cancelled parent ([`Store::children_to_cancel`]).
pub(in crate::store::sqlite) fn children_to_cancel(
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
