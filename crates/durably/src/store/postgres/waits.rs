//! Durable waits on PostgreSQL (upstream v4 §4): each operation one short transaction that
//! locks the run row before the wait row, with the database's clock read inside it.

use super::*;
use crate::waits::{
    self, DurableWait, NewWait, SignalDisposition, SignalStep, WaitOutcome, WaitStatus,
    canonical_json,
};

/// The columns [`wait_from_row`] reads.
pub(super) const WAIT_COLUMNS: &str = "id, run_id, name, metadata, status, payload, signal_id, \
    created_at, deadline_at, outcome, suspended_at, resolved_at, first_resumed_at, timing_known";

/// A wait from [`WAIT_COLUMNS`].
pub(super) fn wait_from_row(row: &Row) -> std::result::Result<DurableWait, Fail> {
    let status: String = row.try_get(4)?;
    let outcome: Option<String> = row.try_get(9)?;
    let timing_known: Option<i32> = row.try_get(13)?;
    let json = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
    Ok(DurableWait {
        id: row.try_get(0)?,
        run_id: row.try_get(1)?,
        name: row.try_get(2)?,
        metadata: json(row.try_get(3)?),
        status: WaitStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("invalid wait status {status:?}")))?,
        payload: json(row.try_get(5)?),
        signal_id: row.try_get(6)?,
        created_at: get_ts(row, 7)?,
        deadline_at: get_opt_ts(row, 8)?,
        outcome: outcome
            .map(|text| {
                WaitOutcome::parse(&text)
                    .ok_or_else(|| corrupt(format!("invalid wait outcome {text:?}")))
            })
            .transpose()?,
        suspended_at: get_opt_ts(row, 10)?,
        resolved_at: get_opt_ts(row, 11)?,
        first_resumed_at: get_opt_ts(row, 12)?,
        input_wait_ms: None,
        execution_slot_wait_ms: None,
    }
    .with_timing(timing_known == Some(1)))
}

type Tx<'a> = tokio_postgres::Transaction<'a>;

/// The database's clock (v4 §4.7).
async fn database_now(tx: &Tx<'_>) -> std::result::Result<Timestamp, Fail> {
    let row = tx.query_one(DATABASE_NOW_MS, &[]).await?;
    Ok(Timestamp::from_millis(row.try_get::<_, i64>(0)?))
}

/// Locks the fenced run if its lease is unexpired at `now` (a guarded no-op write).
async fn lock_live_lease(tx: &Tx<'_>, fence: &Fence, now: &str) -> std::result::Result<bool, Fail> {
    let changed = tx
        .execute(
            "UPDATE durably_runs SET updated_at = updated_at WHERE id = $1 \
             AND status = 'leased' AND lease_generation = $2::bigint AND lease_expires_at > $3",
            &[&fence.run_id, &fence.generation, &now],
        )
        .await?;
    Ok(changed == 1)
}

/// Locks a run (a no-op write): `None` if it does not exist, else whether it ended.
async fn lock_run(tx: &Tx<'_>, run_id: &str) -> std::result::Result<Option<bool>, Fail> {
    let rows = tx
        .query(
            &format!(
                "UPDATE durably_runs SET updated_at = updated_at WHERE id = $1 \
                 RETURNING status IN {TERMINAL}"
            ),
            &[&run_id],
        )
        .await?;
    rows.first()
        .map(|row| row.try_get::<_, bool>(0))
        .transpose()
        .map_err(Fail::from)
}

async fn wait_by_id(tx: &Tx<'_>, id: &str) -> std::result::Result<Option<DurableWait>, Fail> {
    let rows = tx
        .query(
            &format!("SELECT {WAIT_COLUMNS} FROM durably_waits WHERE id = $1"),
            &[&id],
        )
        .await?;
    rows.first().map(wait_from_row).transpose()
}

/// Resolves wait `id` as a timeout if pending and due at `now`; whether it did.
async fn time_out_if_due(tx: &Tx<'_>, id: &str, now: Timestamp) -> std::result::Result<bool, Fail> {
    let changed = tx
        .execute(
            "UPDATE durably_waits SET status = 'resolved', outcome = 'timeout', \
             resolved_at = deadline_at WHERE id = $1 AND status = 'pending' \
             AND deadline_ms IS NOT NULL AND deadline_ms <= $2::double precision",
            &[&id, &(now.as_millis() as f64)],
        )
        .await?;
    Ok(changed == 1)
}

/// Wakes idle workers (`NOTIFY`, sent at commit) when the run of a wait just resolved is
/// suspended on it: it is claimable now.
async fn notify_resumable(
    tx: &Tx<'_>,
    channel: &str,
    wait_id: &str,
) -> std::result::Result<(), Fail> {
    tx.execute(
        &format!(
            "SELECT pg_notify($1::text, '{NOTICE_RESUME}') FROM durably_runs r \
             JOIN durably_waits w ON w.run_id = r.id WHERE w.id = $2 \
             AND r.status = 'waiting' AND r.waiting_on_wait_id = w.id"
        ),
        &[&channel, &wait_id],
    )
    .await?;
    Ok(())
}

impl PostgresStore {
    pub(super) async fn prepare_wait_tx(
        &self,
        fence: &Fence,
        wait: &NewWait,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        let now = now.to_string();
        let metadata = wait.metadata.as_ref().map(canonical_json);
        self.run("prepare_wait", true, |mut client, _| {
            let (now, metadata) = (&now, &metadata);
            async move {
                let tx = client.transaction().await?;
                if !lock_live_lease(&tx, fence, now).await? {
                    return Ok(None);
                }
                let rows = tx
                    .query(
                        &format!(
                            "SELECT {WAIT_COLUMNS} FROM durably_waits WHERE run_id = $1 AND name = $2"
                        ),
                        &[&fence.run_id, &wait.name],
                    )
                    .await?;
                if let Some(row) = rows.first() {
                    let existing = wait_from_row(row)?;
                    tx.commit().await?;
                    return Ok(Some(existing));
                }
                let created = database_now(&tx).await?;
                let deadline = waits::deadline_after(created.as_millis(), wait.timeout_ms)?;
                let id = new_id_at(created);
                let rows = tx
                    .query(
                        &format!(
                            "INSERT INTO durably_waits (id, run_id, name, metadata, status, \
                               payload, signal_id, created_at, resolved_at, deadline_at, \
                               deadline_ms, outcome, suspended_at, first_resumed_at, timing_known) \
                             VALUES ($1, $2, $3, $4, 'pending', NULL, NULL, $5, NULL, $6, \
                               $7::double precision, NULL, NULL, NULL, 1) RETURNING {WAIT_COLUMNS}"
                        ),
                        &[
                            &id,
                            &fence.run_id,
                            &wait.name,
                            metadata,
                            &created.to_string(),
                            &deadline.map(|d| d.to_string()),
                            &deadline.map(|d| d.as_millis() as f64),
                        ],
                    )
                    .await?;
                let inserted = rows.first().map(wait_from_row).transpose()?;
                tx.commit().await?;
                Ok(inserted)
            }
        })
        .await
    }

    pub(super) async fn wait_result_tx(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        let now = now.to_string();
        self.run("wait_result", true, |mut client, _| {
            let now = &now;
            async move {
                let tx = client.transaction().await?;
                if !lock_live_lease(&tx, fence, now).await? {
                    return Ok(None);
                }
                match wait_by_id(&tx, wait_id).await? {
                    Some(wait) if wait.run_id == fence.run_id => {}
                    _ => return Err(waits::not_this_runs_wait().into()),
                }
                let database_now = database_now(&tx).await?;
                time_out_if_due(&tx, wait_id, database_now).await?;
                let wait = wait_by_id(&tx, wait_id)
                    .await?
                    .ok_or_else(waits::not_this_runs_wait)?;
                if matches!(wait.status, WaitStatus::Cancelled | WaitStatus::Closed) {
                    return Err(waits::already_closed(wait_id).into());
                }
                tx.commit().await?;
                Ok(Some(wait))
            }
        })
        .await
    }

    /// [`Transition::Wait`]: the `leased → waiting` hand-off (v4 §3.2 step 4). Not retried: a
    /// retry after an unacknowledged commit would find the lease gone.
    pub(super) async fn suspend_run(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let now = now.to_string();
        self.run("suspend_run", false, |mut client, _| {
            let now = &now;
            async move {
                let tx = client.transaction().await?;
                if !lock_live_lease(&tx, fence, now).await? {
                    return Ok(false);
                }
                match wait_by_id(&tx, wait_id).await? {
                    Some(wait)
                        if wait.run_id == fence.run_id
                            && matches!(wait.status, WaitStatus::Pending | WaitStatus::Resolved) => {}
                    _ => return Err(waits::not_available().into()),
                }
                let database_now = database_now(&tx).await?;
                time_out_if_due(&tx, wait_id, database_now).await?;
                let at = database_now.to_string();
                let changed = tx
                    .execute(
                        "UPDATE durably_runs SET status = 'waiting', waiting_on_wait_id = $3, \
                         resume_claimed_at = NULL, lease_owner = NULL, lease_expires_at = NULL, \
                         updated_at = $4 WHERE id = $1 AND status = 'leased' \
                         AND lease_generation = $2::bigint",
                        &[&fence.run_id, &fence.generation, &wait_id, &at],
                    )
                    .await?;
                tx.execute(
                    "UPDATE durably_waits SET suspended_at = COALESCE(suspended_at, $2) WHERE id = $1",
                    &[&wait_id, &at],
                )
                .await?;
                tx.commit().await?;
                Ok(changed == 1)
            }
        })
        .await
    }

    pub(super) async fn signal_wait_tx(
        &self,
        wait_id: &str,
        payload: &str,
        signal_id: &str,
    ) -> Result<Signalled> {
        let expired = || Error::WaitExpired {
            wait_id: wait_id.to_owned(),
        };
        let channel = &self.shared.channel;
        let outcome = self
            .run("signal_wait", true, |mut client, _| async move {
                let tx = client.transaction().await?;
                let run_id: Option<String> = tx
                    .query(
                        "SELECT run_id FROM durably_waits WHERE id = $1",
                        &[&wait_id],
                    )
                    .await?
                    .first()
                    .map(|row| row.try_get(0))
                    .transpose()?;
                let Some(run_id) = run_id else {
                    return Err(waits::wait_not_found(wait_id).into());
                };
                let terminal = lock_run(&tx, &run_id).await?;
                let wait = wait_by_id(&tx, wait_id)
                    .await?
                    .ok_or_else(|| waits::wait_not_found(wait_id))?;
                let stored = wait.payload.as_ref().map(canonical_json);
                let now = database_now(&tx).await?;
                let step = waits::signal_step(
                    wait.status,
                    wait.outcome,
                    wait.signal_id.as_deref(),
                    stored.as_deref(),
                    signal_id,
                    payload,
                    terminal.unwrap_or(true),
                    wait.deadline_at,
                    now,
                );
                let disposition = match step {
                    SignalStep::Duplicate => SignalDisposition::Duplicate,
                    SignalStep::Expired => return Ok(None),
                    SignalStep::Refused => return Err(waits::cannot_accept(wait_id).into()),
                    SignalStep::TimeOutNow => {
                        time_out_if_due(&tx, wait_id, now).await?;
                        notify_resumable(&tx, channel, wait_id).await?;
                        tx.commit().await?;
                        return Ok(None);
                    }
                    SignalStep::Accept => {
                        tx.execute(
                            "UPDATE durably_waits SET status = 'resolved', outcome = 'signal', \
                             payload = $2, signal_id = $3, resolved_at = $4 \
                             WHERE id = $1 AND status = 'pending'",
                            &[&wait_id, &payload, &signal_id, &now.to_string()],
                        )
                        .await?;
                        notify_resumable(&tx, channel, wait_id).await?;
                        SignalDisposition::Accepted
                    }
                };
                let wait = wait_by_id(&tx, wait_id)
                    .await?
                    .ok_or_else(|| waits::wait_not_found(wait_id))?;
                tx.commit().await?;
                Ok(Some(Signalled { wait, disposition }))
            })
            .await?;
        outcome.ok_or_else(expired)
    }

    pub(super) async fn expire_due_waits_tx(&self, limit: u64) -> Result<u64> {
        let limit = limit.min(i64::MAX as u64) as i64;
        let due: Vec<(String, String)> = self
            .run("expire_due_waits", true, |client, _| async move {
                let now = client.query_one(DATABASE_NOW_MS, &[]).await?;
                let now_ms = now.try_get::<_, i64>(0)? as f64;
                let rows = client
                    .query(
                        "SELECT id, run_id FROM durably_waits WHERE status = 'pending' \
                         AND deadline_ms IS NOT NULL AND deadline_ms <= $1::double precision \
                         ORDER BY deadline_ms, id LIMIT $2::bigint",
                        &[&now_ms, &limit],
                    )
                    .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect()
            })
            .await?;
        let mut expired = 0;
        let channel = &self.shared.channel;
        for (wait_id, run_id) in &due {
            let done = self
                .run("expire_due_waits", true, |mut client, _| async move {
                    let tx = client.transaction().await?;
                    if lock_run(&tx, run_id).await? != Some(false) {
                        return Ok(false);
                    }
                    let now = database_now(&tx).await?;
                    let done = time_out_if_due(&tx, wait_id, now).await?;
                    if done {
                        notify_resumable(&tx, channel, wait_id).await?;
                    }
                    tx.commit().await?;
                    Ok(done)
                })
                .await?;
            if done {
                expired += 1;
            }
        }
        Ok(expired)
    }
}
