//! Delayed and debounced enqueues (`NewRun::start_at`, `NewRun::debounce`): the run is inserted
//! `waiting` on a `delay` wait in the enqueue's transaction, alone or as part of a batch.

use super::*;

/// A delayed request ready for [`enqueue_delayed_in`]: the request without its concurrency key
/// (a delayed run is not pending, so the pending-per-key rule does not apply), prepared under
/// an id fixed across retries, and its wait's metadata.
pub(super) struct Delayed {
    keyless: NewRun,
    prepared: Prepared,
    metadata: String,
    start_at: Timestamp,
}

impl Delayed {
    /// `run` as a delayed enqueue, if its start is after `now`.
    pub(super) fn of(run: &NewRun, now: Timestamp) -> Result<Option<Self>> {
        let Some(start_at) = run.start_at.filter(|at| *at > now) else {
            return Ok(None);
        };
        let keyless = NewRun {
            concurrency_key: None,
            coalesce: None,
            ..run.clone()
        };
        let prepared = Prepared::new(&keyless, new_id_at(now), now)?;
        let metadata = crate::store::new_delay_metadata(run, now).to_string();
        Ok(Some(Delayed {
            keyless,
            prepared,
            metadata,
            start_at,
        }))
    }
}

/// The delayed enqueue of `run` inside `tx`: debounced onto the waiting run of its job and key
/// when there is one; otherwise the enqueue statement of [`Delayed::keyless`], then the run's
/// `delay` wait and the run waiting on it, with its key. `None`: a concurrent insert won a race
/// (retry); `Some(Err)`: refused (the caller rolls back). A retry after an unacknowledged
/// commit finds the run by its id, already waiting, and changes nothing.
pub(super) async fn enqueue_delayed_in(
    tx: &deadpool_postgres::Transaction<'_>,
    run: &NewRun,
    delayed: &Delayed,
    channel: &String,
    now: Timestamp,
) -> std::result::Result<Option<Result<Enqueued>>, Fail> {
    let Delayed {
        keyless,
        prepared,
        metadata,
        start_at,
    } = delayed;
    let start_at = *start_at;
    if let Some(debounce) = &run.debounce
        && let Some(debounced) = debounce_onto(tx, run, &debounce.key, start_at, now).await?
    {
        return Ok(Some(Ok(Enqueued {
            run: debounced,
            disposition: Disposition::Debounced,
        })));
    }
    let statement = tx.prepare_cached(&prepared.sql()).await?;
    let rows = tx.query(&statement, &prepared.params(channel)).await?;
    let mut enqueued = match resolve(keyless, prepared, &rows)? {
        Some(Ok(enqueued)) => enqueued,
        other => return Ok(other),
    };
    if enqueued.disposition == Disposition::Created && enqueued.run.status == RunStatus::Pending {
        let wait_id = new_id_at(now);
        tx.execute(
            "INSERT INTO durably_waits (id, run_id, name, metadata, status, \
               payload, signal_id, created_at, resolved_at, deadline_at, \
               deadline_ms, outcome, suspended_at, first_resumed_at, timing_known) \
             VALUES ($1, $2, $3, $4, 'pending', NULL, NULL, $5, NULL, $6, \
               $7::double precision, NULL, $5, NULL, 1)",
            &[
                &wait_id,
                &enqueued.run.id,
                &crate::store::DELAY_WAIT,
                metadata,
                &now.to_string(),
                &start_at.to_string(),
                &(start_at.as_millis() as f64),
            ],
        )
        .await?;
        tx.execute(
            "UPDATE durably_runs SET status = 'waiting', waiting_on_wait_id = $2, \
               concurrency_key = $3 WHERE id = $1",
            &[&enqueued.run.id, &wait_id, &run.concurrency_key],
        )
        .await?;
        enqueued.run = crate::store::delayed_run(
            Run {
                concurrency_key: run.concurrency_key.clone(),
                ..enqueued.run
            },
            wait_id,
        );
    }
    Ok(Some(Ok(enqueued)))
}

impl PostgresStore {
    /// [`Store::enqueue`] of a delayed run, in one transaction ([`enqueue_delayed_in`]),
    /// retrying lost races.
    pub(super) async fn enqueue_delayed(
        &self,
        run: &NewRun,
        delayed: Delayed,
        now: Timestamp,
    ) -> Result<Enqueued> {
        let channel = &self.shared.channel;
        for round in 0..3 {
            let delayed = &delayed;
            let outcome = self
                .run("enqueue", true, |mut client, _| async move {
                    let tx = client.transaction().await?;
                    let outcome = enqueue_delayed_in(&tx, run, delayed, channel, now).await?;
                    if matches!(outcome, Some(Ok(_))) {
                        tx.commit().await?;
                    }
                    Ok(outcome)
                })
                .await?;
            match outcome {
                Some(result) => return result,
                None if round < 2 => continue,
                None => {}
            }
        }
        Err(conflict_after_retry(run))
    }

    /// [`Store::enqueue_many`] of a batch with delayed runs: one transaction, each request in
    /// turn (a delayed one through [`enqueue_delayed_in`], the others through the enqueue
    /// statement), after the advisory locks of the batch's keys in lock-id order as every
    /// keyed batch takes them. All or nothing; retried when a concurrent insert won a race.
    pub(super) async fn enqueue_many_delayed(
        &self,
        runs: &[NewRun],
        prepared: &[Prepared],
        delayed: &[Option<Delayed>],
        now: Timestamp,
    ) -> Result<Vec<Enqueued>> {
        let channel = &self.shared.channel;
        for _round in 0..3 {
            let outcome = self
                .run("enqueue_many", true, |mut client, _| async move {
                    let tx = client.transaction().await?;
                    let keys: Vec<&str> = prepared
                        .iter()
                        .zip(delayed)
                        .filter(|(_, delayed)| delayed.is_none())
                        .filter_map(|(p, _)| p.concurrency_key.as_deref())
                        .collect();
                    if !keys.is_empty() {
                        tx.query(ENQUEUE_BATCH_KEY_LOCKS, &[&keys]).await?;
                    }
                    let mut out = Vec::with_capacity(runs.len());
                    for ((run, p), delayed) in runs.iter().zip(prepared).zip(delayed) {
                        let outcome = match delayed {
                            Some(delayed) => {
                                enqueue_delayed_in(&tx, run, delayed, channel, now).await?
                            }
                            None => {
                                let statement = tx.prepare_cached(&p.sql()).await?;
                                let rows = tx.query(&statement, &p.params(channel)).await?;
                                resolve(run, p, &rows)?
                            }
                        };
                        match outcome {
                            Some(Ok(enqueued)) => out.push(enqueued),
                            Some(Err(error)) => return Ok(Some(Err(error))), // rolls back
                            None => return Ok(None), // a concurrent insert won: retry
                        }
                    }
                    tx.commit().await?;
                    Ok(Some(Ok(out)))
                })
                .await?;
            if let Some(result) = outcome {
                return result;
            }
        }
        Err(batch_conflict_after_retry())
    }
}

/// `NewRun::debounce` inside an enqueue's transaction: under the transaction advisory lock of
/// the job and key (concurrent triggers with them are serialized), the run of the job and key
/// that still waits for its start, locked (run before wait, as the expiry sweep locks them),
/// takes the request's input and its start moves to `start_at` (not beyond its bound).
async fn debounce_onto(
    tx: &deadpool_postgres::Transaction<'_>,
    request: &NewRun,
    key: &str,
    start_at: Timestamp,
    now: Timestamp,
) -> std::result::Result<Option<Run>, Fail> {
    let lock_key = format!("durably:debounce:{}:{key}", request.job_name);
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1::text))",
        &[&lock_key],
    )
    .await?;
    let rows = tx
        .query(
            "SELECT r.id, w.id, w.metadata FROM durably_runs r \
               JOIN durably_waits w ON w.id = r.waiting_on_wait_id \
             WHERE r.job_name = $1 AND r.status = 'waiting' AND w.status = 'pending' \
               AND w.name = 'delay' AND (CASE WHEN w.metadata LIKE '{%' \
                 THEN w.metadata::jsonb #>> '{durably,debounce,key}' END) = $2 \
             ORDER BY r.created_at ASC, r.id ASC LIMIT 1 FOR UPDATE OF r, w",
            &[&request.job_name, &key],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let (run_id, wait_id): (String, String) = (row.try_get(0)?, row.try_get(1)?);
    let metadata: Option<String> = row.try_get(2)?;
    let metadata = metadata.and_then(|text| serde_json::from_str::<Value>(&text).ok());
    let start = crate::store::debounced_start(metadata.as_ref(), start_at);
    tx.execute(
        "UPDATE durably_waits SET deadline_at = $2, deadline_ms = $3::double precision \
         WHERE id = $1 AND status = 'pending'",
        &[&wait_id, &start.to_string(), &(start.as_millis() as f64)],
    )
    .await?;
    let input = serde_json::to_string(&request.input)
        .map_err(|e| Fail::Other(Error::Validation(format!("Invalid input: {e}"))))?;
    let rows = tx
        .query(
            &format!(
                "UPDATE durably_runs SET input = $2, updated_at = $3 WHERE id = $1 \
                 RETURNING {RUN_COLUMNS}"
            ),
            &[&run_id, &input, &now.to_string()],
        )
        .await?;
    rows.first().map(|row| run_from_row(row, 0)).transpose()
}
