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

/// [`WAIT_COLUMNS`] of the table aliased `alias`.
fn prefixed_wait_columns(alias: &str) -> String {
    WAIT_COLUMNS
        .split(", ")
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A wait from [`WAIT_COLUMNS`].
pub(super) fn wait_from_row(row: &Row) -> std::result::Result<DurableWait, Fail> {
    wait_from_row_at(row, 0)
}

/// A wait from [`WAIT_COLUMNS`] starting at column `at`.
fn wait_from_row_at(row: &Row, at: usize) -> std::result::Result<DurableWait, Fail> {
    let status: String = row.try_get(at + 4)?;
    let outcome: Option<String> = row.try_get(at + 9)?;
    let timing_known: Option<i32> = row.try_get(at + 13)?;
    let json = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
    Ok(DurableWait {
        id: row.try_get(at)?,
        run_id: row.try_get(at + 1)?,
        name: row.try_get(at + 2)?,
        metadata: json(row.try_get(at + 3)?),
        status: WaitStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("invalid wait status {status:?}")))?,
        payload: json(row.try_get(at + 5)?),
        signal_id: row.try_get(at + 6)?,
        created_at: get_ts(row, at + 7)?,
        deadline_at: get_opt_ts(row, at + 8)?,
        outcome: outcome
            .map(|text| {
                WaitOutcome::parse(&text)
                    .ok_or_else(|| corrupt(format!("invalid wait outcome {text:?}")))
            })
            .transpose()?,
        suspended_at: get_opt_ts(row, at + 10)?,
        resolved_at: get_opt_ts(row, at + 11)?,
        first_resumed_at: get_opt_ts(row, at + 12)?,
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

/// The database clock in milliseconds, as a CTE `clk(ms, at)` (`at` the text form a
/// [`Timestamp`] writes), read once per statement (v4 §4.7).
const CLOCK_CTE: &str = "clk AS MATERIALIZED (SELECT c.ms, to_char(timestamp 'epoch' + c.ms * \
     interval '1 millisecond', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS at \
     FROM (SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms) c)";

/// Locks the fenced run if its lease is unexpired at `$3` (a guarded no-op write); the first
/// statement of a pipelined transaction whose next statement tests [`LOCKED_BY_US`].
const LOCK_LIVE_LEASE: &str = "UPDATE durably_runs SET updated_at = updated_at WHERE id = $1 \
     AND status = 'leased' AND lease_generation = $2::bigint AND lease_expires_at > $3";

/// True of a run row (aliased `r`) this transaction wrote: a later statement's proof that
/// [`LOCK_LIVE_LEASE`] (sent with it in one pipeline) locked the run, without a round trip to
/// learn its row count in between.
const LOCKED_BY_US: &str = "r.xmin = pg_current_xact_id()::xid";

/// Pipelined `BEGIN; first; second; COMMIT` on `client` (one round trip); the second
/// statement's rows. A failed statement fails the rest and `COMMIT` rolls back.
async fn pipelined(
    client: &Object,
    first: (&str, &[&(dyn ToSql + Sync)]),
    second: (&str, &[&(dyn ToSql + Sync)]),
) -> std::result::Result<Vec<Row>, Fail> {
    let first_statement = client.prepare_cached(first.0).await?;
    let second_statement = client.prepare_cached(second.0).await?;
    let (began, firsted, rows, committed) = futures::join!(
        client.batch_execute("BEGIN"),
        client.execute(&first_statement, first.1),
        client.query(&second_statement, second.1),
        client.batch_execute("COMMIT"),
    );
    began?;
    firsted?;
    let rows = rows?;
    committed?;
    Ok(rows)
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

    /// A wait's result for the run holding it (v4 §4.2). Only a pending wait past its deadline
    /// needs a write (its timeout), under the run's lock ([`Self::wait_result_locked`]); any
    /// other answer is a lease-guarded read: one statement, one snapshot, no lock.
    ///
    /// Why reading without the run's lock is safe: a signal (or expiry, or close) committing
    /// concurrently is either in the snapshot, and read as the outcome, or not, and then it is
    /// as if it landed just after this read: the run sees the wait pending and suspends on it,
    /// and [`Self::suspend_run`] locks the run and re-reads the wait in a statement of its own,
    /// after the signal's commit (a signal holds the run's lock until then), so the run is
    /// handed off waiting on a resolved wait, claimable again. That interleaving (a signal
    /// between this call and the suspension) was always possible: the lock this call took was
    /// released at its commit, before the suspension's transaction began. A lease lost
    /// concurrently makes the answer stale but harmless: it writes nothing, and whatever the
    /// run does next is fenced on its own.
    pub(super) async fn wait_result_tx(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        let now_text = now.to_string();
        let sql = format!(
            "SELECT {columns}, \
               EXISTS (SELECT 1 FROM durably_runs r WHERE r.id = $1 AND r.status = 'leased' \
                 AND r.lease_generation = $2::bigint AND r.lease_expires_at > $3), \
               (w.status = 'pending' AND w.deadline_ms IS NOT NULL AND w.deadline_ms <= \
                 floor(extract(epoch FROM clock_timestamp()) * 1000)::double precision) \
             FROM (SELECT 1) AS one LEFT JOIN durably_waits w ON w.id = $4",
            columns = prefixed_wait_columns("w"),
        );
        let read = self
            .run("wait_result", true, |client, _| {
                let (sql, now_text) = (&sql, &now_text);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let row = client
                        .query_one(
                            &statement,
                            &[&fence.run_id, &fence.generation, now_text, &wait_id],
                        )
                        .await?;
                    if !row.try_get::<_, bool>(14)? {
                        return Ok(None);
                    }
                    let found: Option<String> = row.try_get(0)?;
                    let wait = match found {
                        Some(_) => wait_from_row(&row)?,
                        None => return Err(waits::not_this_runs_wait().into()),
                    };
                    if wait.run_id != fence.run_id {
                        return Err(waits::not_this_runs_wait().into());
                    }
                    let due = row.try_get::<_, Option<bool>>(15)?.unwrap_or(false);
                    Ok(Some((wait, due)))
                }
            })
            .await?;
        match read {
            None => Ok(None),
            Some((_, true)) => self.wait_result_locked(fence, wait_id, now).await,
            Some((wait, false)) => {
                if matches!(wait.status, WaitStatus::Cancelled | WaitStatus::Closed) {
                    return Err(waits::already_closed(wait_id));
                }
                Ok(Some(wait))
            }
        }
    }

    /// [`Self::wait_result_tx`] for a wait found pending past its deadline: under the run's
    /// lock, times it out (if it still is) and reads it back.
    async fn wait_result_locked(
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
    ///
    /// One round trip: `BEGIN`, the run's lock (lease-guarded), then one statement (its
    /// snapshot taken under that lock, so after any signal that held it) that checks the wait,
    /// times it out if due and marks it suspended on, and hands the run off, `COMMIT`.
    pub(super) async fn suspend_run(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let now = now.to_string();
        let sql = format!(
            "WITH {CLOCK_CTE}, \
             locked AS (SELECT r.id FROM durably_runs r WHERE r.id = $1 AND {LOCKED_BY_US}), \
             ok AS (SELECT w.id, (w.status = 'pending' AND w.deadline_ms IS NOT NULL \
                 AND w.deadline_ms <= clk.ms::double precision) AS due \
               FROM durably_waits w, locked, clk WHERE w.id = $3 AND w.run_id = locked.id \
               AND w.status IN ('pending', 'resolved')), \
             waited AS (UPDATE durably_waits w SET \
                 status = CASE WHEN ok.due THEN 'resolved' ELSE w.status END, \
                 outcome = CASE WHEN ok.due THEN 'timeout' ELSE w.outcome END, \
                 resolved_at = CASE WHEN ok.due THEN w.deadline_at ELSE w.resolved_at END, \
                 suspended_at = COALESCE(w.suspended_at, clk.at) \
               FROM ok, clk WHERE w.id = ok.id RETURNING w.id), \
             handed AS (UPDATE durably_runs r SET status = 'waiting', waiting_on_wait_id = $3, \
                 resume_claimed_at = NULL, lease_owner = NULL, lease_expires_at = NULL, \
                 updated_at = clk.at FROM ok, clk WHERE r.id = $1 AND r.status = 'leased' \
                 AND r.lease_generation = $2::bigint RETURNING r.id) \
             SELECT (SELECT count(*) FROM locked), (SELECT count(*) FROM ok), \
               (SELECT count(*) FROM waited), (SELECT count(*) FROM handed)"
        );
        self.run("suspend_run", false, |client, _| {
            let (now, sql) = (&now, &sql);
            async move {
                let rows = pipelined(
                    &client,
                    (LOCK_LIVE_LEASE, &[&fence.run_id, &fence.generation, now]),
                    (sql, &[&fence.run_id, &fence.generation, &wait_id]),
                )
                .await?;
                let row = rows
                    .first()
                    .ok_or_else(|| corrupt("suspend_run: no row".into()))?;
                if row.try_get::<_, i64>(0)? == 0 {
                    return Ok(false);
                }
                if row.try_get::<_, i64>(1)? == 0 {
                    return Err(waits::not_available().into());
                }
                Ok(row.try_get::<_, i64>(3)? == 1)
            }
        })
        .await
    }

    /// A signal (v4 §4.3). One round trip: `BEGIN`, the wait's run locked (found by the wait,
    /// whose run never changes), then one statement (its snapshot taken under that lock) that
    /// reads the wait as it stands and, when [`waits::signal_step`] would accept the signal or
    /// time the wait out, writes that and wakes the run if it is suspended on the wait,
    /// `COMMIT`. The statement returns the wait before and after; the decision is then made
    /// again, in Rust, from the wait before, and agrees (the statement's conditions are
    /// `signal_step`'s for the two writing steps).
    pub(super) async fn signal_wait_tx(
        &self,
        wait_id: &str,
        payload: &str,
        signal_id: &str,
    ) -> Result<Signalled> {
        let expired = || Error::WaitExpired {
            wait_id: wait_id.to_owned(),
        };
        let lock = "UPDATE durably_runs SET updated_at = updated_at \
                    WHERE id = (SELECT run_id FROM durably_waits WHERE id = $1)";
        let sql = format!(
            "WITH {CLOCK_CTE}, \
             w AS (SELECT {columns}, w.deadline_ms, \
                 COALESCE((SELECT r.status IN {TERMINAL} FROM durably_runs r \
                   WHERE r.id = w.run_id), true) AS terminal \
               FROM durably_waits w WHERE w.id = $1), \
             step AS (SELECT w.id, (w.deadline_ms IS NOT NULL \
                 AND w.deadline_ms <= clk.ms::double precision) AS due FROM w, clk \
               WHERE w.status = 'pending' AND w.outcome IS DISTINCT FROM 'timeout' \
               AND NOT w.terminal), \
             written AS (UPDATE durably_waits u SET status = 'resolved', \
                 outcome = CASE WHEN step.due THEN 'timeout' ELSE 'signal' END, \
                 payload = CASE WHEN step.due THEN u.payload ELSE $2 END, \
                 signal_id = CASE WHEN step.due THEN u.signal_id ELSE $3 END, \
                 resolved_at = CASE WHEN step.due THEN u.deadline_at ELSE clk.at END \
               FROM step, clk WHERE u.id = step.id AND u.status = 'pending' \
               RETURNING {returned}), \
             woken AS (SELECT pg_notify($4::text, '{NOTICE_RESUME}') FROM written \
               JOIN durably_runs r ON r.id = written.run_id \
               WHERE r.status = 'waiting' AND r.waiting_on_wait_id = written.id) \
             SELECT {before}, clk.ms, w.terminal, {after}, \
               (SELECT count(*) FROM woken) \
             FROM clk LEFT JOIN w ON true LEFT JOIN written ON true",
            columns = prefixed_wait_columns("w"),
            returned = prefixed_wait_columns("u"),
            before = prefixed_wait_columns("w"),
            after = prefixed_wait_columns("written"),
        );
        let channel = &self.shared.channel;
        let outcome = self
            .run("signal_wait", true, |client, _| {
                let sql = &sql;
                async move {
                    let rows = pipelined(
                        &client,
                        (lock, &[&wait_id]),
                        (sql, &[&wait_id, &payload, &signal_id, channel]),
                    )
                    .await?;
                    let row = rows
                        .first()
                        .ok_or_else(|| corrupt("signal_wait: no row".into()))?;
                    if row.try_get::<_, Option<String>>(0)?.is_none() {
                        return Err(waits::wait_not_found(wait_id).into());
                    }
                    let wait = wait_from_row(row)?;
                    let now = Timestamp::from_millis(row.try_get::<_, i64>(14)?);
                    let terminal: bool = row.try_get(15)?;
                    let stored = wait.payload.as_ref().map(canonical_json);
                    let step = waits::signal_step(
                        wait.status,
                        wait.outcome,
                        wait.signal_id.as_deref(),
                        stored.as_deref(),
                        signal_id,
                        payload,
                        terminal,
                        wait.deadline_at,
                        now,
                    );
                    let written = match row.try_get::<_, Option<String>>(16)? {
                        Some(_) => Some(wait_from_row_at(row, 16)?),
                        None => None,
                    };
                    match (step, written) {
                        (SignalStep::Duplicate, None) => Ok(Some(Signalled {
                            wait,
                            disposition: SignalDisposition::Duplicate,
                        })),
                        (SignalStep::Expired, None) => Ok(None),
                        (SignalStep::Refused, None) => Err(waits::cannot_accept(wait_id).into()),
                        (SignalStep::TimeOutNow, Some(_)) => Ok(None),
                        (SignalStep::Accept, Some(wait)) => Ok(Some(Signalled {
                            wait,
                            disposition: SignalDisposition::Accepted,
                        })),
                        (step, written) => Err(corrupt(format!(
                            "signal_wait: step {step:?} but written {:?}",
                            written.is_some()
                        ))),
                    }
                }
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
        if due.is_empty() {
            return Ok(0);
        }
        // One transaction for the whole batch (it was one per wait: six round trips each, so
        // a burst of sleeps ending together resumed at about 20 runs/s). Runs are locked
        // first, in id order (as one run at a time elsewhere: run before wait), skipping ended
        // ones; then every due wait of a locked run is resolved; one notice wakes the workers.
        let (wait_ids, run_ids): (Vec<String>, Vec<String>) = due.into_iter().unzip();
        let channel = &self.shared.channel;
        let (wait_ids, run_ids) = (&wait_ids, &run_ids);
        let expired = self
            .run("expire_due_waits", true, |mut client, _| async move {
                let tx = client.transaction().await?;
                tx.execute(
                    &format!(
                        "SELECT id FROM durably_runs WHERE id = ANY($1) \
                         AND status NOT IN {TERMINAL} ORDER BY id FOR NO KEY UPDATE"
                    ),
                    &[run_ids],
                )
                .await?;
                let now = database_now(&tx).await?;
                let resolved = tx
                    .query(
                        &format!(
                            "UPDATE durably_waits w SET status = 'resolved', outcome = 'timeout', \
                             resolved_at = w.deadline_at FROM durably_runs r \
                             WHERE w.id = ANY($1) AND r.id = w.run_id \
                             AND r.status NOT IN {TERMINAL} AND w.status = 'pending' \
                             AND w.deadline_ms IS NOT NULL AND w.deadline_ms <= $2::double precision \
                             RETURNING w.id"
                        ),
                        &[wait_ids, &(now.as_millis() as f64)],
                    )
                    .await?;
                let resolved: Vec<String> = resolved
                    .iter()
                    .map(|row| row.try_get(0))
                    .collect::<std::result::Result<_, _>>()?;
                if !resolved.is_empty() {
                    tx.execute(
                        &format!(
                            "SELECT pg_notify($1::text, '{NOTICE_RESUME}') WHERE EXISTS \
                             (SELECT 1 FROM durably_runs r JOIN durably_waits w ON w.run_id = r.id \
                             WHERE w.id = ANY($2) AND r.status = 'waiting' \
                             AND r.waiting_on_wait_id = w.id)"
                        ),
                        &[&channel, &resolved],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(resolved.len() as u64)
            })
            .await?;
        Ok(expired)
    }
}
