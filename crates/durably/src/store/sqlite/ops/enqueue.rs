//! Enqueue (upstream §5.5, v4 §7.1): idempotency keys, label keys, coalescing and the
//! pending-per-key rule, delayed runs (`NewRun::start_at`) and debounce.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::rows::run_from_row;
use super::runs::get_run;
use super::{database_now, is_unique_violation, sql_error, to_json};
use crate::error::{Error, Result};
use crate::run::{Coalesce, Disposition, Run};
use crate::store::sqlite_sql as sql;
use crate::store::{Enqueued, NewRun, pending_conflict, pending_run, validate_label_key};
use crate::time::{Timestamp, new_id_at};
use crate::waits::canonical_json;

fn find_by_idempotency_key(conn: &Connection, job_name: &str, key: &str) -> Result<Option<Run>> {
    conn.prepare_cached(sql::RUN_BY_IDEMPOTENCY_KEY)
        .and_then(|mut stmt| stmt.query_row([job_name, key], run_from_row).optional())
        .map_err(sql_error("enqueue"))
}

fn oldest_pending_with_key(conn: &Connection, job_name: &str, key: &str) -> Result<Option<Run>> {
    conn.prepare_cached(sql::OLDEST_PENDING_WITH_KEY)
        .and_then(|mut stmt| stmt.query_row([job_name, key], run_from_row).optional())
        .map_err(sql_error("enqueue"))
}

/// The run of a job and concurrency key that `coalesce: active` reuses (upstream v4 §7.1): the
/// oldest pending one, else the oldest leased one whose lease expires after `now`, else the
/// oldest waiting one.
fn active_with_key(
    conn: &Connection,
    job_name: &str,
    key: &str,
    now: Timestamp,
) -> Result<Option<Run>> {
    if let Some(run) = oldest_pending_with_key(conn, job_name, key)? {
        return Ok(Some(run));
    }
    let leased = conn
        .prepare_cached(sql::OLDEST_LIVE_LEASED_WITH_KEY)
        .and_then(|mut stmt| {
            stmt.query_row(params![job_name, key, now], run_from_row)
                .optional()
        })
        .map_err(sql_error("enqueue"))?;
    if leased.is_some() {
        return Ok(leased);
    }
    conn.prepare_cached(sql::OLDEST_WAITING_WITH_KEY)
        .and_then(|mut stmt| stmt.query_row([job_name, key], run_from_row).optional())
        .map_err(sql_error("enqueue"))
}

/// Upstream §5.5 and v4 §7.1: idempotency first, then label keys, then (`coalesce: active`)
/// the run to reuse, then the pending-per-key rule.
///
/// Every call runs on the writer thread inside its `BEGIN IMMEDIATE` transaction, which holds
/// the database's write lock from its start: the reads and the insert below are one atomic
/// decision for every process sharing the file (upstream takes the lock with a no-op write).
pub(in crate::store::sqlite) fn enqueue(
    conn: &Connection,
    request: &NewRun,
    now: Timestamp,
) -> Result<Enqueued> {
    if let Some(key) = &request.idempotency_key
        && let Some(run) = find_by_idempotency_key(conn, &request.job_name, key)?
    {
        return Ok(Enqueued {
            run,
            disposition: Disposition::Idempotent,
        });
    }
    for key in request.labels.keys() {
        validate_label_key(key)?;
    }
    // A delayed run is not pending: neither the pending-per-key rule nor coalescing applies.
    let delayed = request.start_at.filter(|at| *at > now);
    if let (Some(debounce), Some(start_at)) = (&request.debounce, delayed)
        && let Some(run) = debounce_onto(conn, request, &debounce.key, start_at, now)?
    {
        return Ok(Enqueued {
            run,
            disposition: Disposition::Debounced,
        });
    }
    if let Some(key) = &request.concurrency_key
        && delayed.is_none()
    {
        let existing = match request.coalesce {
            Some(Coalesce::Active) => active_with_key(conn, &request.job_name, key, now)?,
            _ => oldest_pending_with_key(conn, &request.job_name, key)?,
        };
        if let Some(existing) = existing {
            return match request.coalesce {
                Some(_) => Ok(Enqueued {
                    run: existing,
                    disposition: Disposition::Coalesced,
                }),
                None => Err(pending_conflict(&request.job_name, key)),
            };
        }
    }

    let id = new_id_at(now);
    let input = to_json("enqueue", &request.input)?;
    let labels = to_json("enqueue", &request.labels)?;
    let inserted = conn.prepare_cached(sql::INSERT_RUN)
    .and_then(|mut stmt| {
        stmt.execute(params![
            id,
            request.job_name,
            input,
            request.idempotency_key,
            request.concurrency_key,
            labels,
            now,
            (request.priority != 0).then_some(request.priority),
            request.parent_run_id,
            request.parent_wait_id,
            request.trace_context
        ])
    })
    .map_err(|e| {
        if is_unique_violation(&e) {
            match &request.concurrency_key {
                Some(key) => pending_conflict(&request.job_name, key),
                None => Error::Conflict(format!(
                    "A run of job \"{}\" with the same idempotency key was inserted concurrently",
                    request.job_name
                )),
            }
        } else {
            Error::storage("enqueue", e)
        }
    });
    if let Err(error) = inserted {
        return unique_violation(conn, request, error);
    }
    if !request.labels.is_empty() {
        let mut stmt = conn
            .prepare_cached(sql::INSERT_LABEL)
            .map_err(sql_error("enqueue"))?;
        for (key, value) in &request.labels {
            stmt.execute(params![id, key, value])
                .map_err(sql_error("enqueue"))?;
        }
    }
    let mut run = pending_run(id, request, now);
    if let Some(start_at) = delayed {
        let metadata = crate::store::new_delay_metadata(request, now);
        let wait_id = delay_run(conn, &run.id, start_at, &metadata)?;
        run = crate::store::delayed_run(run, wait_id);
    }
    Ok(Enqueued {
        run,
        disposition: Disposition::Created,
    })
}

/// Debounces `request` onto the run of its job and debounce `key` that still waits for its
/// start, if any: that run takes the request's input and its start moves to `start_at` (not
/// beyond its bound). Inside the writer's transaction, so concurrent triggers are serialized.
fn debounce_onto(
    conn: &Connection,
    request: &NewRun,
    key: &str,
    start_at: Timestamp,
    now: Timestamp,
) -> Result<Option<Run>> {
    let found: Option<(String, String, Option<String>)> = conn
        .prepare_cached(sql::DEBOUNCED_RUN)
        .and_then(|mut stmt| {
            stmt.query_row(params![request.job_name, key], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()
        })
        .map_err(sql_error("enqueue"))?;
    let Some((run_id, wait_id, metadata)) = found else {
        return Ok(None);
    };
    let metadata = metadata.and_then(|text| serde_json::from_str::<Value>(&text).ok());
    let start = crate::store::debounced_start(metadata.as_ref(), start_at);
    let input = to_json("enqueue", &request.input)?;
    conn.prepare_cached(sql::MOVE_DELAY)
        .and_then(|mut stmt| stmt.execute(params![wait_id, start, start.as_millis()]))
        .map_err(sql_error("enqueue"))?;
    conn.prepare_cached(sql::DEBOUNCE_INPUT)
        .and_then(|mut stmt| stmt.execute(params![run_id, input, now]))
        .map_err(sql_error("enqueue"))?;
    get_run(conn, &run_id)
}

/// Makes the run just inserted a delayed run (`NewRun::start_at`): a `delay` wait with its
/// start as deadline, and the run `waiting` on it. Returns the wait's id.
fn delay_run(
    conn: &Connection,
    run_id: &str,
    start_at: Timestamp,
    metadata: &Value,
) -> Result<String> {
    let created = database_now();
    let id = new_id_at(created);
    let metadata = canonical_json(metadata);
    conn.prepare_cached(sql::INSERT_WAIT)
        .and_then(|mut stmt| {
            stmt.execute(params![
                id,
                run_id,
                crate::store::DELAY_WAIT,
                metadata,
                created,
                start_at,
                start_at.as_millis()
            ])
        })
        .map_err(sql_error("enqueue"))?;
    conn.prepare_cached(sql::DELAY_WAIT_SUSPENDED)
        .and_then(|mut stmt| stmt.execute(params![id, created]))
        .map_err(sql_error("enqueue"))?;
    conn.prepare_cached(sql::DELAY_RUN)
        .and_then(|mut stmt| stmt.execute(params![run_id, id]))
        .map_err(sql_error("enqueue"))?;
    Ok(id)
}

/// Upstream §5.5 step 5, for an insert refused by a unique index (`error`, already the
/// conflict to report without a coalesce mode). Inside the writer's transaction nothing can
/// change between the lookups above and the insert, so this only guards a schema that holds
/// more unique indexes than ours: the idempotency key is looked up again, then, with a
/// coalesce mode, the oldest pending run of the job and key; a retry would see the same
/// database, so none found is upstream's conflict after retry.
fn unique_violation(conn: &Connection, request: &NewRun, error: Error) -> Result<Enqueued> {
    if let Some(key) = &request.idempotency_key
        && let Some(run) = find_by_idempotency_key(conn, &request.job_name, key)?
    {
        return Ok(Enqueued {
            run,
            disposition: Disposition::Idempotent,
        });
    }
    let (Some(key), Some(_)) = (&request.concurrency_key, request.coalesce) else {
        return Err(error);
    };
    match oldest_pending_with_key(conn, &request.job_name, key)? {
        Some(run) => Ok(Enqueued {
            run,
            disposition: Disposition::Coalesced,
        }),
        None => Err(Error::Conflict(format!(
            "Conflict after retry for concurrency key \"{key}\" in job \"{}\". Concurrent modification detected.",
            request.job_name
        ))),
    }
}
