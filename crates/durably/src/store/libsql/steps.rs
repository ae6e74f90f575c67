//! A lease holder's writes while its run executes: steps, attempts, progress and logs. Each is
//! one statement fenced in its `WHERE` (its `RETURNING 1` says whether it landed), or, for a
//! step, one conditional batch whose guards refuse the rest when the fence no longer holds.

use serde_json::Value;

use super::conn::{Db, Refusal, Tx, returning_one, stmt, to_json};
use crate::attempts::AttemptStatus;
use crate::error::{Error, Result};
use crate::run::{Log, Progress, Step, StepStatus};
use crate::store::sqlite_sql as sql;
use crate::store::{AttemptStart, Fence, NewLog, NewStep};
use crate::time::{Timestamp, new_id_at};

/// `Store::persist_step`: in one transaction, a begun attempt's outcome (guarded: still
/// `started` under the fence), the step's fenced insert (guarded), an attempt not begun, and
/// a completed step's counters.
pub(super) async fn persist_step(
    db: &Db,
    fence: &Fence,
    step: NewStep,
    now: Timestamp,
) -> Result<Option<Step>> {
    let id = new_id_at(now);
    let output = step
        .output
        .as_ref()
        .map(|o| to_json("persist_step", o))
        .transpose()?;
    let status = AttemptStatus::of_step(step.status).as_str();
    let (run_id, generation) = (fence.run_id.as_str(), fence.generation);
    let mut tx = Tx::new();
    if let Some(attempt) = step.attempt.as_ref().filter(|a| a.begun) {
        tx.push(stmt!(
            sql::FINISH_ATTEMPT,
            run_id,
            generation,
            attempt.id.as_str(),
            status,
            &step.error,
            now
        ));
        tx.guard_changed("fence");
    }
    let insert = tx.push(stmt!(
        sql::INSERT_STEP,
        run_id,
        generation,
        id.as_str(),
        step.name.as_str(),
        step.index,
        step.status.as_str(),
        output,
        &step.error,
        step.started_at,
        now
    ));
    tx.guard_changed("fence");
    if let Some(attempt) = step.attempt.as_ref().filter(|a| !a.begun) {
        let metadata = attempt
            .metadata
            .as_ref()
            .map(|m| to_json("persist_step", m))
            .transpose()?;
        tx.push(stmt!(
            sql::INSERT_ATTEMPT,
            run_id,
            generation,
            attempt.id.as_str(),
            step.name.as_str(),
            step.index,
            status,
            metadata,
            &step.error,
            step.started_at,
            now
        ));
    }
    if step.status == StepStatus::Completed {
        tx.push(stmt!(
            sql::ADVANCE_STEP_COUNTERS,
            run_id,
            generation,
            step.index + 1,
            now
        ));
    }
    match db.transaction("persist_step", tx).await? {
        Ok(_) => Ok(Some(Step {
            id,
            run_id: fence.run_id.clone(),
            name: step.name,
            index: step.index,
            status: step.status,
            output: step.output.filter(|o| !o.is_null()),
            error: step.error,
            started_at: step.started_at,
            completed_at: Some(now),
        })),
        Err(Refusal::Guard(_)) => Ok(None),
        Err(Refusal::Constraint(index, _)) if index == insert => Err(Error::Conflict(format!(
            "Step \"{}\" of run {} is already completed",
            step.name, fence.run_id
        ))),
        // The answer was lost: the step's id (chosen here) tells whether it committed.
        Err(Refusal::Lost(error)) => {
            let found = db
                .read("persist_step", stmt!(STEP_EXISTS, id.as_str()))
                .await?;
            if !super::conn::scalar_bool("persist_step", &found)? {
                return Err(error);
            }
            Ok(Some(Step {
                id,
                run_id: fence.run_id.clone(),
                name: step.name,
                index: step.index,
                status: step.status,
                output: step.output.filter(|o| !o.is_null()),
                error: step.error,
                started_at: step.started_at,
                completed_at: Some(now),
            }))
        }
        Err(refusal) => Err(refusal.into_error("persist_step")),
    }
}

/// Whether the step of id `?1` exists (a write whose answer was lost committed).
const STEP_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM durably_steps WHERE id = ?1)";

/// Whether one fenced write returned its row.
async fn landed(
    db: &Db,
    operation: &'static str,
    statement: super::hrana::Statement,
) -> Result<bool> {
    Ok(!db.write(operation, statement).await?.rows.is_empty())
}

pub(super) async fn begin_step_attempt(
    db: &Db,
    fence: &Fence,
    attempt: &AttemptStart,
    now: Timestamp,
) -> Result<bool> {
    let metadata = attempt
        .metadata
        .as_ref()
        .map(|m| to_json("begin_step_attempt", m))
        .transpose()?;
    let statement = stmt!(
        returning_one(sql::BEGIN_ATTEMPT),
        fence.run_id.as_str(),
        fence.generation,
        attempt.id.as_str(),
        attempt.step_name.as_str(),
        attempt.step_index,
        metadata,
        attempt.started_at,
        now
    );
    landed(db, "begin_step_attempt", statement).await
}

pub(super) async fn set_step_attempt_metadata(
    db: &Db,
    fence: &Fence,
    attempt_id: &str,
    metadata: Option<&Value>,
    now: Timestamp,
) -> Result<bool> {
    let metadata = metadata
        .map(|m| to_json("set_step_attempt_metadata", m))
        .transpose()?;
    landed(
        db,
        "set_step_attempt_metadata",
        stmt!(
            returning_one(sql::SET_ATTEMPT_METADATA),
            fence.run_id.as_str(),
            fence.generation,
            attempt_id,
            metadata,
            now
        ),
    )
    .await
}

pub(super) async fn update_progress(
    db: &Db,
    fence: &Fence,
    progress: Option<&Progress>,
    now: Timestamp,
) -> Result<bool> {
    let progress = progress
        .map(|p| to_json("update_progress", p))
        .transpose()?;
    landed(
        db,
        "update_progress",
        stmt!(
            returning_one(sql::UPDATE_PROGRESS),
            fence.run_id.as_str(),
            fence.generation,
            progress,
            now
        ),
    )
    .await
}

pub(super) async fn append_log(
    db: &Db,
    fence: Option<&Fence>,
    log: NewLog,
    now: Timestamp,
) -> Result<Option<Log>> {
    let id = new_id_at(now);
    let data = log
        .data
        .as_ref()
        .map(|d| to_json("append_log", d))
        .transpose()?;
    let statement = match fence {
        None => stmt!(
            returning_one(sql::INSERT_LOG),
            id.as_str(),
            log.run_id.as_str(),
            &log.step_name,
            log.level.as_str(),
            log.message.as_str(),
            data,
            now
        ),
        Some(fence) => stmt!(
            returning_one(sql::INSERT_FENCED_LOG),
            id.as_str(),
            log.run_id.as_str(),
            &log.step_name,
            log.level.as_str(),
            log.message.as_str(),
            data,
            now,
            fence.generation
        ),
    };
    let inserted = landed(db, "append_log", statement).await?;
    Ok(inserted.then(|| Log {
        id,
        run_id: log.run_id,
        step_name: log.step_name,
        level: log.level,
        message: log.message,
        data: log.data.filter(|d| !d.is_null()),
        created_at: now,
    }))
}
