//! Enqueue on libSQL: read, decide, write, optimistically.
//!
//! The SQLite store decides inside its writer's `BEGIN IMMEDIATE` (idempotency, label keys,
//! debounce, coalescing, the pending-per-key rule) between its reads and its insert. Over HTTP
//! that would be an interactive transaction, which `tursodb` cannot isolate. So the lookups go
//! in one request, the decision is taken in Rust (in the same order), and the write is one
//! conditional batch that refuses itself when a decision it rests on no longer holds: the
//! unique indexes (idempotency key, pending run per key) refuse a duplicate insert, and guard
//! steps re-check what no index enforces (`coalesce: active`'s live runs, a debounced run
//! waiting for its start). A refused write is read and decided again.

use serde_json::Value as Json;

use super::conn::{Db, Refusal, Row, Tx, parse_first, stmt, to_json};
use super::hrana::{Statement, StmtResult};
use super::rows;
use super::runs::{CLAIMS_PER_REQUEST, claimed, push_claims};
use crate::error::{Error, Result};
use crate::run::{Coalesce, Disposition, Run, RunStatus};
use crate::store::sqlite_sql as sql;
use crate::store::{
    ClaimRequest, DELAY_WAIT, Enqueued, NewRun, debounced_start, delayed_run, new_delay_metadata,
    pending_conflict, pending_run, validate_label_key,
};
use crate::time::{Timestamp, new_id_at};
use crate::waits::canonical_json;

/// How often a write refused by a concurrent change is decided again.
const RETRIES: usize = 20;

/// What the database held for one request when it was read.
#[derive(Default)]
struct Found {
    idempotent: Option<Run>,
    pending: Option<Run>,
    leased: Option<Run>,
    waiting: Option<Run>,
    /// The debounced run's id, its `delay` wait's id and that wait's metadata.
    debounced: Option<(String, String, Option<Json>)>,
}

/// The lookups of `request`, in the order of their results in [`found`].
fn lookups(request: &NewRun, now: Timestamp) -> Vec<Statement> {
    let job = request.job_name.as_str();
    let mut out = Vec::new();
    if let Some(key) = &request.idempotency_key {
        out.push(stmt!(sql::RUN_BY_IDEMPOTENCY_KEY, job, key));
    }
    if let Some(debounce) = &request.debounce {
        out.push(stmt!(sql::DEBOUNCED_RUN, job, debounce.key.as_str()));
    }
    if let Some(key) = &request.concurrency_key {
        out.push(stmt!(sql::OLDEST_PENDING_WITH_KEY, job, key));
        if request.coalesce == Some(Coalesce::Active) {
            out.push(stmt!(sql::OLDEST_LIVE_LEASED_WITH_KEY, job, key, now));
            out.push(stmt!(sql::OLDEST_WAITING_WITH_KEY, job, key));
        }
    }
    out
}

/// The results of [`lookups`] read back.
fn found(request: &NewRun, results: &mut impl Iterator<Item = StmtResult>) -> Result<Found> {
    let next_run = |results: &mut dyn Iterator<Item = StmtResult>| -> Result<Option<Run>> {
        match results.next() {
            Some(result) => parse_first("enqueue", &result.rows, rows::run),
            None => Err(Error::storage("enqueue", "a lookup has no result")),
        }
    };
    let mut found = Found::default();
    if request.idempotency_key.is_some() {
        found.idempotent = next_run(results)?;
    }
    if request.debounce.is_some() {
        let result = results
            .next()
            .ok_or_else(|| Error::storage("enqueue", "a lookup has no result"))?;
        found.debounced = parse_first("enqueue", &result.rows, |row: &Row<'_>| {
            let metadata = row
                .opt_text(2)?
                .and_then(|text| serde_json::from_str::<Json>(&text).ok());
            Ok((row.text(0)?, row.text(1)?, metadata))
        })?;
    }
    if request.concurrency_key.is_some() {
        found.pending = next_run(results)?;
        if request.coalesce == Some(Coalesce::Active) {
            found.leased = next_run(results)?;
            found.waiting = next_run(results)?;
        }
    }
    Ok(found)
}

/// What the write does for one request.
enum Plan {
    /// An existing run answers it: nothing to write.
    Existing(Enqueued),
    /// The debounce of run `run_id`, read back at statement `read`.
    Debounce { run_id: String, read: usize },
    /// A new run.
    Created(Run),
}

/// Enqueues `requests` in order, all or nothing (one request: [`crate::Store::enqueue`]).
pub(super) async fn enqueue_all(
    db: &Db,
    requests: &[NewRun],
    now: Timestamp,
) -> Result<Vec<Enqueued>> {
    enqueue_after(db, None, requests, now)
        .await?
        .ok_or_else(|| Error::storage("enqueue", "refused without a compare-and-set"))
}

/// [`enqueue_all`] in the transaction of `cas` (a write guarded to have changed a row, run
/// first): `None` when it changed none, and then nothing was written.
pub(super) async fn enqueue_after(
    db: &Db,
    cas: Option<&Statement>,
    requests: &[NewRun],
    now: Timestamp,
) -> Result<Option<Vec<Enqueued>>> {
    Ok(enqueue_tx(db, cas, requests, now, None)
        .await?
        .map(|(enqueued, _)| enqueued))
}

/// `Store::enqueue_and_claim`: the enqueue and, when it creates a run, the claim of up to
/// `next.max` runs in the same transaction, so one request (after the lookups, when the run
/// has keys to look up). A claim larger than one request's share continues on its own, and
/// its failure is reported as nothing more claimed, as the trait's default does.
pub(super) async fn enqueue_and_claim(
    db: &Db,
    request: NewRun,
    now: Timestamp,
    next: &ClaimRequest,
) -> Result<(Enqueued, Vec<Run>)> {
    let outcome = enqueue_tx(db, None, std::slice::from_ref(&request), now, Some(next)).await?;
    let Some((mut enqueued, mut claimed)) = outcome else {
        return Err(Error::storage(
            "enqueue",
            "refused without a compare-and-set",
        ));
    };
    let enqueued = enqueued
        .pop()
        .ok_or_else(|| Error::storage("enqueue", "no run enqueued"))?;
    let share = next.max.min(CLAIMS_PER_REQUEST);
    if enqueued.disposition == Disposition::Created && share > 0 && claimed.len() == share {
        let rest = ClaimRequest {
            max: next.max - share,
            ..next.clone()
        };
        if rest.max > 0 {
            match super::runs::claim(db, &rest, now).await {
                Ok(runs) => claimed.extend(runs),
                Err(error) => tracing::warn!(%error, "claim after enqueue failed"),
            }
        }
    }
    Ok((enqueued, claimed))
}

/// The enqueue of `requests` after `cas`, then, when `claim` asks for runs and a run was
/// created, the claim statements, all in one transaction; the answers and the runs claimed.
async fn enqueue_tx(
    db: &Db,
    cas: Option<&Statement>,
    requests: &[NewRun],
    now: Timestamp,
    claim: Option<&ClaimRequest>,
) -> Result<Option<(Vec<Enqueued>, Vec<Run>)>> {
    for request in requests {
        for key in request.labels.keys() {
            // Checked again in order below; here so that a bad key reads nothing.
            if request.idempotency_key.is_none() {
                validate_label_key(key)?;
            }
        }
    }
    for _ in 0..RETRIES {
        let statements: Vec<Statement> = requests.iter().flat_map(|r| lookups(r, now)).collect();
        let mut results = db.reads("enqueue", statements).await?.into_iter();
        let mut founds = Vec::with_capacity(requests.len());
        for request in requests {
            founds.push(found(request, &mut results)?);
        }
        let mut tx = Tx::new();
        if let Some(cas) = cas {
            tx.push(cas.clone());
            tx.guard_changed("cas");
        }
        let mut plans: Vec<Plan> = Vec::with_capacity(requests.len());
        for (request, found) in requests.iter().zip(founds) {
            let plan = decide(&mut tx, request, found, &plans, now)?;
            plans.push(plan);
        }
        // The claim of a trigger handed to the worker loop, only after creating a run (an
        // idempotent, coalesced or debounced trigger claims nothing, as on SQLite).
        let claims = match claim {
            Some(claim) if claim.max > 0 && created(&plans).next().is_some() => {
                let share = claim.max.min(CLAIMS_PER_REQUEST);
                push_claims(&mut tx, claim, share, now)
            }
            _ => Vec::new(),
        };
        match db.transaction("enqueue", tx).await? {
            Ok(results) => {
                let runs = claimed(&results, &claims)?;
                return Ok(Some((outcome(db, plans, Some(&results)).await?, runs)));
            }
            Err(Refusal::Guard("cas")) => return Ok(None),
            // The answer was lost. The runs created carry ids chosen here: when the first
            // exists, the whole transaction committed. Otherwise it did not (or not yet, if
            // the server still runs it): the caller gets the error, never a second write.
            // The runs its claim leased are not known: nobody runs them, and they are claimed
            // again when that lease expires (as after a `claim` whose answer was lost).
            Err(Refusal::Lost(error)) => {
                let Some(first) = created(&plans).next().map(|run| run.id.clone()) else {
                    return Err(error);
                };
                if super::runs::get_run(db, "enqueue", &first).await?.is_none() {
                    return Err(error);
                }
                return Ok(Some((outcome(db, plans, None).await?, Vec::new())));
            }
            // A concurrent trigger changed what the decision rests on: decide again.
            Err(Refusal::Guard(_) | Refusal::Constraint(..)) => continue,
        }
    }
    let job = requests.first().map_or("", |r| r.job_name.as_str());
    Err(Error::Conflict(format!(
        "Conflict after retry for job \"{job}\": concurrent triggers kept changing its runs. \
         Concurrent modification detected."
    )))
}

/// The answer of each plan once the transaction committed, its reads from `results` (or,
/// when the answer was lost, read again).
async fn outcome(
    db: &Db,
    plans: Vec<Plan>,
    results: Option<&[StmtResult]>,
) -> Result<Vec<Enqueued>> {
    let mut out = Vec::with_capacity(plans.len());
    for plan in plans {
        out.push(match plan {
            Plan::Existing(enqueued) => enqueued,
            Plan::Created(run) => Enqueued {
                run,
                disposition: Disposition::Created,
            },
            Plan::Debounce { run_id, read } => {
                let run = match results.and_then(|r| r.get(read)) {
                    Some(result) => parse_first("enqueue", &result.rows, rows::run)?,
                    None => super::runs::get_run(db, "enqueue", &run_id).await?,
                };
                Enqueued {
                    run: run
                        .ok_or_else(|| Error::storage("enqueue", "the debounced run is gone"))?,
                    disposition: Disposition::Debounced,
                }
            }
        });
    }
    Ok(out)
}

/// The runs created earlier in this batch.
fn created(plans: &[Plan]) -> impl Iterator<Item = &Run> {
    plans.iter().filter_map(|plan| match plan {
        Plan::Created(run) => Some(run),
        _ => None,
    })
}

/// Upstream §5.5 and v4 §7.1 for one request, seeing the database as read and the runs this
/// batch created before it; appends the writes to `tx`.
fn decide(
    tx: &mut Tx,
    request: &NewRun,
    found: Found,
    earlier: &[Plan],
    now: Timestamp,
) -> Result<Plan> {
    let job = request.job_name.as_str();
    if let Some(key) = &request.idempotency_key {
        let in_batch = created(earlier)
            .find(|run| run.job_name == job && run.idempotency_key.as_ref() == Some(key));
        if let Some(run) = in_batch.cloned().or(found.idempotent) {
            return Ok(Plan::Existing(Enqueued {
                run,
                disposition: Disposition::Idempotent,
            }));
        }
    }
    for key in request.labels.keys() {
        validate_label_key(key)?;
    }
    let delayed = request.start_at.filter(|at| *at > now);
    if let (Some(_), Some(start_at), Some((run_id, wait_id, metadata))) =
        (&request.debounce, delayed, &found.debounced)
    {
        let start = debounced_start(metadata.as_ref(), start_at);
        let input = to_json("enqueue", &request.input)?;
        tx.push(stmt!(sql::MOVE_DELAY, wait_id, start, start.as_millis()));
        tx.guard_changed("debounce");
        tx.push(stmt!(sql::DEBOUNCE_INPUT, run_id, input, now));
        tx.guard_changed("debounce");
        let read = tx.push(stmt!(sql::GET_RUN, run_id));
        return Ok(Plan::Debounce {
            run_id: run_id.clone(),
            read,
        });
    }
    if let Some(key) = &request.concurrency_key
        && delayed.is_none()
    {
        let batch_pending = created(earlier).find(|run| {
            run.job_name == job
                && run.concurrency_key.as_ref() == Some(key)
                && run.status == RunStatus::Pending
        });
        let pending = found.pending.or_else(|| batch_pending.cloned());
        let existing = match request.coalesce {
            Some(Coalesce::Active) => pending.or(found.leased).or(found.waiting),
            _ => pending,
        };
        if let Some(run) = existing {
            return match request.coalesce {
                Some(_) => Ok(Plan::Existing(Enqueued {
                    run,
                    disposition: Disposition::Coalesced,
                })),
                None => Err(pending_conflict(job, key)),
            };
        }
        if request.coalesce == Some(Coalesce::Active) {
            tx.guard(
                sql::NO_ACTIVE_WITH_KEY,
                vec![
                    super::conn::Arg::arg(job),
                    super::conn::Arg::arg(key),
                    super::conn::Arg::arg(now),
                ],
                "active",
            );
        }
    }
    if let (Some(debounce), Some(_)) = (&request.debounce, delayed) {
        tx.guard(
            sql::NO_DEBOUNCED_RUN,
            vec![
                super::conn::Arg::arg(job),
                super::conn::Arg::arg(debounce.key.as_str()),
            ],
            "debounce",
        );
    }
    let id = new_id_at(now);
    tx.push(stmt!(
        sql::INSERT_RUN,
        id.as_str(),
        job,
        to_json("enqueue", &request.input)?,
        &request.idempotency_key,
        &request.concurrency_key,
        to_json("enqueue", &request.labels)?,
        now,
        (request.priority != 0).then_some(request.priority),
        &request.parent_run_id,
        &request.parent_wait_id,
        &request.trace_context,
    ));
    for (key, value) in &request.labels {
        tx.push(stmt!(sql::INSERT_LABEL, id.as_str(), key, value));
    }
    let mut run = pending_run(id, request, now);
    if let Some(start_at) = delayed {
        let created = Timestamp::now();
        let wait_id = new_id_at(created);
        let metadata = canonical_json(&new_delay_metadata(request, now));
        tx.push(stmt!(
            sql::INSERT_WAIT,
            wait_id.as_str(),
            run.id.as_str(),
            DELAY_WAIT,
            metadata,
            created,
            start_at,
            start_at.as_millis()
        ));
        tx.push(stmt!(sql::DELAY_WAIT_SUSPENDED, wait_id.as_str(), created));
        tx.push(stmt!(sql::DELAY_RUN, run.id.as_str(), wait_id.as_str()));
        run = delayed_run(run, wait_id);
    }
    Ok(Plan::Created(run))
}
