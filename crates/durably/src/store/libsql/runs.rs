//! Claims, leases and the ends of runs on libSQL: each operation one fenced statement or one
//! conditional batch (guards after the fenced write), never an interactive transaction.

use std::time::Duration;

use super::conn::{Arg, Db, Refusal, Tx, parse_rows, returning_one, stmt};
use super::hrana::StmtResult;
use super::rows;
use crate::error::{Error, Result};
use crate::run::{Run, RunStatus};
use crate::store::sqlite_sql as sql;
use crate::store::{
    ClaimRequest, Fence, Finished, LEASE_EXPIRED_PENDING_EXISTS, RunPatch, Transition,
    resume_key_taken, resume_not_failed, resume_not_found,
};
use crate::time::Timestamp;
use crate::waits::{self, WaitStatus};

/// The most runs one claim request leases (a larger claim takes several requests).
pub(super) const CLAIMS_PER_REQUEST: usize = 32;

/// How often a write refused by a concurrent change is decided again.
const RETRIES: usize = 20;

/// Appends the claim of up to `max` runs to `tx`; returns the indexes of the claim statements.
pub(super) fn push_claims(
    tx: &mut Tx,
    request: &ClaimRequest,
    max: usize,
    now: Timestamp,
) -> Vec<usize> {
    let expires = now + request.lease;
    let database_now = Timestamp::now();
    let claims = (0..max)
        .map(|_| {
            tx.push(stmt!(
                sql::CLAIM_NEXT,
                now,
                request.worker_id.as_str(),
                expires,
                database_now,
                request.resume_waiting
            ))
        })
        .collect();
    if request.resume_waiting {
        tx.push(stmt!(
            sql::MARK_CLAIMED_RESUMED,
            request.worker_id.as_str(),
            expires
        ));
    }
    claims
}

/// The runs the claim statements at `indexes` of `results` leased.
pub(super) fn claimed(results: &[StmtResult], indexes: &[usize]) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for &index in indexes {
        if let Some(result) = results.get(index) {
            runs.extend(parse_rows("claim", &result.rows, rows::run)?);
        }
    }
    Ok(runs)
}

/// `Store::claim`: up to `request.max` runs, at most [`CLAIMS_PER_REQUEST`] per request.
pub(super) async fn claim(db: &Db, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    while runs.len() < request.max {
        let chunk = (request.max - runs.len()).min(CLAIMS_PER_REQUEST);
        let mut tx = Tx::new();
        let indexes = push_claims(&mut tx, request, chunk, now);
        let results = match db.transaction("claim", tx).await? {
            Ok(results) => results,
            Err(refusal) => return Err(refusal.into_error("claim")),
        };
        let taken = claimed(&results, &indexes)?;
        let done = taken.len() < chunk;
        runs.extend(taken);
        if done {
            break;
        }
    }
    Ok(runs)
}

pub(super) async fn renew_lease(
    db: &Db,
    fence: &Fence,
    now: Timestamp,
    lease: Duration,
) -> Result<Option<Timestamp>> {
    let expires = now + lease;
    let result = db
        .write(
            "renew_lease",
            stmt!(
                returning_one(sql::RENEW_LEASE),
                fence.run_id.as_str(),
                fence.generation,
                expires,
                now
            ),
        )
        .await?;
    Ok((!result.rows.is_empty()).then_some(expires))
}

pub(super) async fn release_lease(db: &Db, fence: &Fence, now: Timestamp) -> Result<bool> {
    let result = db
        .write(
            "release_lease",
            stmt!(
                returning_one(sql::RELEASE_LEASE),
                fence.run_id.as_str(),
                fence.generation,
                now
            ),
        )
        .await?;
    Ok(!result.rows.is_empty())
}

/// `Store::finish_run`: the transition (fenced, guarded), its waits and steps, and the claim
/// of the next runs, in one transaction.
pub(super) async fn finish_run(
    db: &Db,
    fence: &Fence,
    transition: &Transition,
    now: Timestamp,
    drop_steps: bool,
    then_claim: Option<&ClaimRequest>,
) -> Result<Finished> {
    let (run_id, generation) = (fence.run_id.as_str(), fence.generation);
    let mut tx = Tx::new();
    let operation = match transition {
        Transition::Complete { output } => {
            let output = output
                .as_ref()
                .map(|o| super::conn::to_json("complete_run", o))
                .transpose()?;
            tx.push(stmt!(sql::COMPLETE_RUN, run_id, generation, output, now));
            "complete_run"
        }
        Transition::Fail { error } => {
            tx.push(stmt!(
                sql::FAIL_RUN,
                run_id,
                generation,
                error.as_str(),
                now
            ));
            "fail_run"
        }
        Transition::Wait { wait_id } => {
            tx.push(stmt!(sql::LOCK_LIVE_LEASE, run_id, generation, now));
            tx.guard_changed("fence");
            tx.guard(
                sql::WAIT_IS_AVAILABLE,
                vec![wait_id.as_str().arg(), run_id.arg()],
                "wait",
            );
            let database_now = Timestamp::now();
            tx.push(stmt!(
                sql::TIME_OUT_WAIT,
                wait_id.as_str(),
                database_now.as_millis()
            ));
            tx.push(stmt!(
                sql::SUSPEND_RUN,
                run_id,
                generation,
                wait_id.as_str(),
                database_now
            ));
            tx.push(stmt!(sql::MARK_SUSPENDED, wait_id.as_str(), database_now));
            "suspend_run"
        }
    };
    if !matches!(transition, Transition::Wait { .. }) {
        tx.guard_changed("fence");
        if fence.may_have_waits {
            tx.push(stmt!(
                sql::END_WAITS,
                run_id,
                WaitStatus::Closed.as_str(),
                now
            ));
        }
        // A failed run keeps its steps for a resume (`Store::resume_run`).
        if drop_steps && !matches!(transition, Transition::Fail { .. }) {
            tx.push(stmt!(sql::DELETE_STEPS, run_id));
        }
    }
    let claims = match then_claim {
        Some(next) if next.max > 0 => {
            push_claims(&mut tx, next, next.max.min(CLAIMS_PER_REQUEST), now)
        }
        _ => Vec::new(),
    };
    match db.transaction(operation, tx).await? {
        Ok(results) => Ok(Finished {
            landed: true,
            claimed: claimed(&results, &claims)?,
        }),
        Err(Refusal::Guard("wait")) => Err(waits::not_available()),
        Err(Refusal::Guard(_)) => {
            // The transition did not land; the slot is still free for the next run.
            let claimed = match then_claim {
                Some(next) if next.max > 0 => claim(db, next, now).await.unwrap_or_else(|error| {
                    tracing::warn!(%error, "claim after a refused transition failed");
                    Vec::new()
                }),
                _ => Vec::new(),
            };
            Ok(Finished {
                landed: false,
                claimed,
            })
        }
        // The answer was lost: the run as it stands tells whether the transition landed
        // (the runs the lost answer may have claimed come back when their lease expires).
        Err(Refusal::Lost(error)) => match get_run(db, operation, run_id).await? {
            Some(run)
                if run.lease_generation == generation
                    && run.status == transition.status()
                    && run.lease_owner.is_none() =>
            {
                Ok(Finished {
                    landed: true,
                    claimed: Vec::new(),
                })
            }
            _ => Err(error),
        },
        Err(refusal) => Err(refusal.into_error(operation)),
    }
}

pub(super) async fn cancel_run(
    db: &Db,
    id: &str,
    now: Timestamp,
    drop_steps: bool,
) -> Result<bool> {
    let mut tx = Tx::new();
    tx.push(stmt!(sql::CANCEL_RUN, id, now));
    tx.guard_changed("active");
    tx.push(stmt!(
        sql::END_WAITS,
        id,
        WaitStatus::Cancelled.as_str(),
        now
    ));
    if drop_steps {
        tx.push(stmt!(sql::DELETE_STEPS, id));
    }
    match db.transaction("cancel_run", tx).await? {
        Ok(_) => Ok(true),
        Err(Refusal::Guard(_)) => Ok(false),
        // The answer was lost: a cancelled run is what the call asked for (the transaction is
        // all or nothing, so its waits are ended and its steps dropped with it).
        Err(Refusal::Lost(error)) => match get_run(db, "cancel_run", id).await? {
            Some(run) if run.status == RunStatus::Cancelled => Ok(true),
            _ => Err(error),
        },
        Err(refusal) => Err(refusal.into_error("cancel_run")),
    }
}

pub(super) async fn get_run(db: &Db, operation: &'static str, id: &str) -> Result<Option<Run>> {
    let rows = db.rows(operation, stmt!(sql::GET_RUN, id)).await?;
    super::conn::parse_first(operation, &rows, rows::run)
}

/// `Store::resume_run`: checks read first (an error writes nothing), then a transaction that
/// re-checks them (the run still failed, its key still free) and is decided again when a
/// concurrent change refused it.
pub(super) async fn resume_run(db: &Db, id: &str, now: Timestamp) -> Result<Run> {
    for _ in 0..RETRIES {
        let Some(run) = get_run(db, "resume_run", id).await? else {
            return Err(resume_not_found(id));
        };
        if run.status != RunStatus::Failed {
            return Err(resume_not_failed(id, run.status));
        }
        let mut tx = Tx::new();
        if let Some(key) = &run.concurrency_key {
            let taken = db
                .read(
                    "resume_run",
                    stmt!(sql::HAS_PENDING_WITH_KEY, run.job_name.as_str(), key, id),
                )
                .await?;
            if super::conn::scalar_bool("resume_run", &taken)? {
                return Err(resume_key_taken(id, &run.job_name, key));
            }
            tx.guard(
                &format!("NOT ({})", sql::HAS_PENDING_WITH_KEY),
                vec![run.job_name.as_str().arg(), key.arg(), id.arg()],
                "key",
            );
        }
        let resumed = tx.push(stmt!(sql::RESUME_RUN, id, now));
        tx.guard_changed("status");
        tx.push(stmt!(sql::REOPEN_CLOSED_WAITS, id));
        match db.transaction("resume_run", tx).await? {
            Ok(results) => {
                let rows = results.get(resumed).map(|r| r.rows.as_slice());
                return super::conn::parse_first(
                    "resume_run",
                    rows.unwrap_or_default(),
                    rows::run,
                )?
                .ok_or_else(|| resume_not_failed(id, run.status));
            }
            // The answer was lost: the run read back no longer failed, at a later update
            // than the read before, is the resume landed.
            Err(Refusal::Lost(error)) => {
                return match get_run(db, "resume_run", id).await? {
                    Some(now_run)
                        if now_run.status != RunStatus::Failed
                            && now_run.updated_at >= now
                            && now_run.updated_at > run.updated_at =>
                    {
                        Ok(now_run)
                    }
                    _ => Err(error),
                };
            }
            Err(_) => continue,
        }
    }
    Err(Error::Conflict(format!(
        "Run \"{id}\" could not be resumed: it kept changing concurrently"
    )))
}

/// Appends the deletion of run `id`'s records, only while it is terminal; returns the index
/// of the statement that deletes the run itself (a row when it did).
fn push_delete(tx: &mut Tx, id: &str) -> usize {
    let mut last = 0;
    for statement in sql::DELETE_TERMINAL_RUN_RECORDS {
        last = tx.push(stmt!(statement, id));
    }
    last
}

fn deleted(results: &[StmtResult], index: usize) -> bool {
    results.get(index).is_some_and(|r| !r.rows.is_empty())
}

pub(super) async fn delete_run(db: &Db, id: &str) -> Result<bool> {
    let mut tx = Tx::new();
    let run = push_delete(&mut tx, id);
    match db.transaction("delete_run", tx).await? {
        Ok(results) => Ok(deleted(&results, run)),
        // The answer was lost: a run that is gone was deleted (by this call, or by another
        // at the same time: either way it is what the call asked for).
        Err(Refusal::Lost(error)) => match get_run(db, "delete_run", id).await? {
            None => Ok(true),
            Some(_) => Err(error),
        },
        Err(refusal) => Err(refusal.into_error("delete_run")),
    }
}

pub(super) async fn purge_runs(db: &Db, older_than: Timestamp, limit: u64) -> Result<u64> {
    let rows = db
        .rows(
            "purge_runs",
            stmt!(
                sql::PURGE_CANDIDATES,
                older_than,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ),
        )
        .await?;
    let ids = parse_rows("purge_runs", &rows, |row| row.text(0))?;
    let mut tx = Tx::new();
    let runs: Vec<usize> = ids.iter().map(|id| push_delete(&mut tx, id)).collect();
    match db.transaction("purge_runs", tx).await? {
        Ok(results) => Ok(runs.iter().filter(|&&i| deleted(&results, i)).count() as u64),
        Err(refusal) => Err(refusal.into_error("purge_runs")),
    }
}

/// The steps of the runs that [`sql::FAIL_BLOCKED_EXPIRED_LEASES`] just failed at `?1` with
/// error `?2` (the libSQL form of deleting them by the ids it returned).
const DELETE_STEPS_OF_FAILED_LEASES: &str = "DELETE FROM durably_steps WHERE run_id IN \
     (SELECT id FROM durably_runs WHERE status = 'failed' AND completed_at = ?1 AND error = ?2)";

pub(super) async fn release_expired_leases(
    db: &Db,
    now: Timestamp,
    drop_steps: bool,
) -> Result<Vec<Run>> {
    let mut tx = Tx::new();
    let failed = tx.push(stmt!(
        sql::FAIL_BLOCKED_EXPIRED_LEASES,
        now,
        LEASE_EXPIRED_PENDING_EXISTS
    ));
    if drop_steps {
        tx.push(stmt!(
            DELETE_STEPS_OF_FAILED_LEASES,
            now,
            LEASE_EXPIRED_PENDING_EXISTS
        ));
    }
    let released = tx.push(stmt!(sql::RELEASE_EXPIRED_LEASES, now));
    let results = match db.transaction("release_expired_leases", tx).await? {
        Ok(results) => results,
        Err(refusal) => return Err(refusal.into_error("release_expired_leases")),
    };
    let mut changed = Vec::new();
    for index in [failed, released] {
        if let Some(result) = results.get(index) {
            changed.extend(parse_rows(
                "release_expired_leases",
                &result.rows,
                rows::run,
            )?);
        }
    }
    Ok(changed)
}

pub(super) async fn update_run(
    db: &Db,
    id: &str,
    patch: &RunPatch,
    now: Timestamp,
) -> Result<bool> {
    let (text, args) = sql::patch_run(id, patch, now)?;
    let statement =
        super::hrana::Statement::with_args(returning_one(&text), args.into_iter().map(Arg::arg));
    Ok(!db.write("update_run", statement).await?.rows.is_empty())
}
