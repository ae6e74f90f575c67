//! Durable waits on libSQL: the SQLite store's statements, each operation one conditional
//! batch (the fence checked by a guard after the lease lock), a signal read, decided and
//! written optimistically (the write re-checks what the decision read).

use super::conn::{Arg, Db, Refusal, Tx, parse_first, parse_rows, stmt};
use super::rows;
use crate::error::{Error, Result};
use crate::store::sqlite_sql as sql;
use crate::store::{Fence, Signalled};
use crate::time::{Timestamp, new_id_at};
use crate::waits::{
    self, DurableWait, NewWait, SignalDisposition, SignalStep, WaitStatus, canonical_json,
};

/// How often a signal refused by a concurrent change is decided again.
const RETRIES: usize = 20;

/// The wait a statement of a committed transaction read.
fn wait_at(
    operation: &'static str,
    results: &[super::hrana::StmtResult],
    index: usize,
) -> Result<Option<DurableWait>> {
    let rows = results.get(index).map(|r| r.rows.as_slice());
    parse_first(operation, rows.unwrap_or_default(), rows::wait)
}

pub(super) async fn prepare_wait(
    db: &Db,
    fence: &Fence,
    wait: &NewWait,
    now: Timestamp,
) -> Result<Option<DurableWait>> {
    let created = Timestamp::now();
    let deadline = waits::deadline_after(created.as_millis(), wait.timeout_ms)?;
    let id = new_id_at(created);
    let metadata = wait.metadata.as_ref().map(canonical_json);
    let mut tx = Tx::new();
    tx.push(stmt!(
        sql::LOCK_LIVE_LEASE,
        fence.run_id.as_str(),
        fence.generation,
        now
    ));
    tx.guard_changed("fence");
    // A wait of that run and name that exists already stays as it is (the unique index on
    // `(run_id, name)` ignores the insert); the read returns whichever is stored.
    tx.push(stmt!(
        sql::INSERT_WAIT.replacen("INSERT INTO", "INSERT OR IGNORE INTO", 1),
        id.as_str(),
        fence.run_id.as_str(),
        wait.name.as_str(),
        metadata,
        created,
        deadline,
        deadline.map(|d| d.as_millis())
    ));
    let read = tx.push(stmt!(
        sql::WAIT_BY_NAME,
        fence.run_id.as_str(),
        wait.name.as_str()
    ));
    // The transaction may be sent again when its answer was lost: the insert ignores a wait
    // the first one stored, and the read returns it.
    match db.idempotent_transaction("prepare_wait", tx).await? {
        Ok(results) => wait_at("prepare_wait", &results, read),
        Err(Refusal::Guard(_)) => Ok(None),
        Err(refusal) => Err(refusal.into_error("prepare_wait")),
    }
}

pub(super) async fn wait_result(
    db: &Db,
    fence: &Fence,
    wait_id: &str,
    now: Timestamp,
) -> Result<Option<DurableWait>> {
    let mut tx = Tx::new();
    tx.push(stmt!(
        sql::LOCK_LIVE_LEASE,
        fence.run_id.as_str(),
        fence.generation,
        now
    ));
    tx.guard_changed("fence");
    tx.guard(
        sql::WAIT_IS_RUNS,
        vec![wait_id.arg(), fence.run_id.as_str().arg()],
        "wait",
    );
    tx.push(stmt!(
        sql::TIME_OUT_WAIT,
        wait_id,
        Timestamp::now().as_millis()
    ));
    let read = tx.push(stmt!(sql::WAIT_BY_ID, wait_id));
    // Sent again when its answer was lost: timing out a due wait twice is timing it out once.
    let wait = match db.idempotent_transaction("wait_result", tx).await? {
        Ok(results) => {
            wait_at("wait_result", &results, read)?.ok_or_else(waits::not_this_runs_wait)?
        }
        Err(Refusal::Guard("wait")) => return Err(waits::not_this_runs_wait()),
        Err(Refusal::Guard(_)) => return Ok(None),
        Err(refusal) => return Err(refusal.into_error("wait_result")),
    };
    match wait.status {
        WaitStatus::Cancelled | WaitStatus::Closed => Err(waits::already_closed(wait_id)),
        _ => Ok(Some(wait)),
    }
}

/// `Store::signal_wait` (the signal id validated, the payload canonical): `None` when the wait
/// expired (its timeout committed).
pub(super) async fn signal_wait(
    db: &Db,
    wait_id: &str,
    payload: &str,
    signal_id: &str,
) -> Result<Option<Signalled>> {
    for _ in 0..RETRIES {
        let Some(wait) = get_wait(db, "signal_wait", wait_id).await? else {
            return Err(waits::wait_not_found(wait_id));
        };
        let live = db
            .read(
                "signal_wait",
                stmt!(format!("SELECT {}", sql::RUN_IS_LIVE), wait.run_id.as_str()),
            )
            .await?;
        let run_terminal = !super::conn::scalar_bool("signal_wait", &live)?;
        let stored = wait.payload.as_ref().map(canonical_json);
        let now = Timestamp::now();
        let step = waits::signal_step(
            wait.status,
            wait.outcome,
            wait.signal_id.as_deref(),
            stored.as_deref(),
            signal_id,
            payload,
            run_terminal,
            wait.deadline_at,
            now,
        );
        let mut tx = Tx::new();
        let disposition = match step {
            SignalStep::Duplicate => {
                return Ok(Some(Signalled {
                    wait,
                    disposition: SignalDisposition::Duplicate,
                }));
            }
            SignalStep::Expired => return Ok(None),
            SignalStep::Refused => return Err(waits::cannot_accept(wait_id)),
            SignalStep::TimeOutNow => {
                db.write(
                    "signal_wait",
                    stmt!(sql::TIME_OUT_WAIT, wait_id, now.as_millis()),
                )
                .await?;
                return Ok(None);
            }
            SignalStep::Accept => {
                tx.guard(sql::RUN_IS_LIVE, vec![wait.run_id.as_str().arg()], "run");
                tx.push(stmt!(sql::RESOLVE_SIGNAL, wait_id, payload, signal_id, now));
                tx.guard_changed("wait");
                SignalDisposition::Accepted
            }
        };
        let read = tx.push(stmt!(sql::WAIT_BY_ID, wait_id));
        match db.transaction("signal_wait", tx).await? {
            Ok(results) => {
                let wait = wait_at("signal_wait", &results, read)?
                    .ok_or_else(|| waits::wait_not_found(wait_id))?;
                return Ok(Some(Signalled { wait, disposition }));
            }
            // The answer was lost: the wait resolved by this signal (its id and payload) is
            // the signal accepted.
            Err(Refusal::Lost(error)) => {
                return match get_wait(db, "signal_wait", wait_id).await? {
                    Some(wait)
                        if wait.signal_id.as_deref() == Some(signal_id)
                            && wait.payload.as_ref().map(canonical_json).as_deref()
                                == Some(payload) =>
                    {
                        Ok(Some(Signalled { wait, disposition }))
                    }
                    _ => Err(error),
                };
            }
            // The wait or its run changed since the read: decide again.
            Err(_) => continue,
        }
    }
    Err(Error::Conflict(format!(
        "Wait cannot accept this signal: {wait_id} (it kept changing concurrently)"
    )))
}

pub(super) async fn expire_due_waits(db: &Db, limit: u64) -> Result<u64> {
    let result = db
        .write(
            "expire_due_waits",
            stmt!(
                sql::EXPIRE_DUE_WAITS,
                Timestamp::now().as_millis(),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ),
        )
        .await?;
    Ok(result.rows.len() as u64)
}

pub(super) async fn get_wait(
    db: &Db,
    operation: &'static str,
    wait_id: &str,
) -> Result<Option<DurableWait>> {
    let rows = db.rows(operation, stmt!(sql::WAIT_BY_ID, wait_id)).await?;
    parse_first(operation, &rows, rows::wait)
}

pub(super) async fn get_waits(db: &Db, run_id: &str) -> Result<Vec<DurableWait>> {
    let rows = db
        .rows("get_waits", stmt!(sql::WAITS_OF_RUN, run_id))
        .await?;
    parse_rows("get_waits", &rows, rows::wait)
}
