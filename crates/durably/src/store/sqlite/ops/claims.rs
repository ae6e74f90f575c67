//! Claims and leases: the claim in claim order, lease renewal and release, and the recovery
//! of expired leases.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::rows::run_from_row;
use super::steps::delete_steps;
use super::{database_now, sql_error};
use crate::error::Result;
use crate::run::Run;
use crate::store::sqlite_sql as sql;
use crate::store::{ClaimRequest, Fence, LEASE_EXPIRED_PENDING_EXISTS};
use crate::time::Timestamp;

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

pub(in crate::store::sqlite) fn claim(
    conn: &Connection,
    request: &ClaimRequest,
    now: Timestamp,
) -> Result<Vec<Run>> {
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

pub(in crate::store::sqlite) fn renew_lease(
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

pub(in crate::store::sqlite) fn release_lease(
    conn: &Connection,
    fence: &Fence,
    now: Timestamp,
) -> Result<bool> {
    let changed = conn
        .prepare_cached(sql::RELEASE_LEASE)
        .and_then(|mut stmt| stmt.execute(params![fence.run_id, fence.generation, now]))
        .map_err(sql_error("release_lease"))?;
    Ok(changed == 1)
}

pub(in crate::store::sqlite) fn release_expired_leases(
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
