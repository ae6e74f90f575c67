//! [`Store`] for [`PostgresStore`]: each operation as one statement (or one short transaction).

use super::*;

/// [`Store::run_overview`] and [`Store::run_counts`]: runs per status.
const OVERVIEW_STATUSES: &str = "SELECT status, COUNT(*) FROM durably_runs GROUP BY status";

/// The oldest pending run.
const OVERVIEW_OLDEST_PENDING: &str = "SELECT id, job_name, created_at FROM durably_runs \
     WHERE status = 'pending' ORDER BY created_at, id LIMIT 1";

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<()> {
        let schema = self.shared.schema.clone();
        self.run("migrate", true, |mut client, _| {
            let schema = schema.clone();
            async move {
                let tx = client.transaction().await?;
                // One migrator at a time per database (and schema): concurrent `CREATE ... IF
                // NOT EXISTS` can otherwise fail on the catalogs' unique indexes.
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('durably_migrate:' || $1::text))",
                    &[&schema.clone().unwrap_or_default()],
                )
                .await?;
                if let Some(schema) = &schema {
                    tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
                        .await?;
                }
                climb(&tx, &UPSTREAM).await?;
                climb(&tx, &POSTGRES_OWN).await?;
                tx.commit().await?;
                Ok(())
            }
        })
        .await
    }

    async fn schema_version(&self) -> Result<i64> {
        self.run("schema_version", true, |client, _| async move {
            current_version(&client).await
        })
        .await
    }

    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued> {
        if let Some(delayed) = Delayed::of(&run, now)? {
            return self.enqueue_delayed(&run, delayed, now).await;
        }
        let prepared = Prepared::new(&run, new_id_at(now), now)?;
        self.enqueue_prepared(&run, &prepared).await
    }

    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(Enqueued, Vec<Run>)> {
        if run.start_at.is_some_and(|at| at > now) {
            // Nothing to claim: the run waits for its start.
            return Ok((self.enqueue(run, now).await?, Vec::new()));
        }
        let prepared = Prepared::new(&run, new_id_at(now), now)?;
        if next.max == 0 {
            return Ok((self.enqueue_prepared(&run, &prepared).await?, Vec::new()));
        }
        if prepared.active {
            // The key's lock first (`enqueue_prepared`); the claim follows on its own.
            let enqueued = self.enqueue_prepared(&run, &prepared).await?;
            if enqueued.disposition != Disposition::Created {
                return Ok((enqueued, Vec::new()));
            }
            let claimed = match self.claim(next, now).await {
                Ok(runs) => runs,
                Err(error) => {
                    tracing::warn!(%error, "claim after enqueue failed");
                    Vec::new()
                }
            };
            return Ok((enqueued, claimed));
        }
        let (enqueued, mut claimed, keyed) = self
            .enqueue_then_claim_once(&run, &prepared, next, now)
            .await;
        let enqueued = match enqueued {
            Some(result) => result?,
            // Lost a race, or the attempt failed: the enqueue alone, with the same id, so a
            // retry recognises a row the attempt committed.
            None => self.enqueue_prepared(&run, &prepared).await?,
        };
        // Runs with a concurrency key need the claim's advisory-lock path.
        let room = next.max.saturating_sub(claimed.len());
        if keyed && room > 0 {
            match self
                .claim(
                    &ClaimRequest {
                        max: room,
                        ..next.clone()
                    },
                    now,
                )
                .await
            {
                Ok(runs) => claimed.extend(runs),
                Err(error) => tracing::warn!(%error, "claim after enqueue failed"),
            }
        }
        Ok((enqueued, claimed))
    }

    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let prepared: Vec<Prepared> = runs
            .iter()
            .map(|run| Prepared::new(run, new_id_at(now), now))
            .collect::<Result<_>>()?;
        let delayed: Vec<Option<Delayed>> = runs
            .iter()
            .map(|run| Delayed::of(run, now))
            .collect::<Result<_>>()?;
        if delayed.iter().any(Option::is_some) {
            return self
                .enqueue_many_delayed(&runs, &prepared, &delayed, now)
                .await;
        }
        let channel = self.shared.channel.clone();
        let plain = runs
            .iter()
            .all(|run| run.idempotency_key.is_none() && run.concurrency_key.is_none());
        if plain {
            return self.enqueue_plain(&runs, &prepared, now).await;
        }
        for _round in 0..3 {
            let outcome = self
                .run("enqueue_many", true, |mut client, _| {
                    let (prepared, channel, runs) = (&prepared, &channel, &runs);
                    async move {
                        let full = client.prepare_cached(&enqueue_sql()).await?;
                        let active = client.prepare_cached(&active_enqueue_sql()).await?;
                        let idem = client.prepare_cached(&idempotency_sql()).await?;
                        let locks = client.prepare_cached(ENQUEUE_BATCH_KEY_LOCKS).await?;
                        let tx = client.transaction().await?;
                        let params: Vec<_> = prepared.iter().map(|p| p.params(channel)).collect();
                        // Upstream v4 §7.2: the locks of the batch's keys, in lock-id order,
                        // before its first insert (pipelined with the rest, sent first).
                        let keys: Vec<&str> = prepared
                            .iter()
                            .filter_map(|p| p.concurrency_key.as_deref())
                            .collect();
                        let locked = async {
                            match keys.is_empty() {
                                true => Ok(Vec::new()),
                                false => tx.query(&locks, &[&keys]).await,
                            }
                        };
                        // Pipelined: every statement is sent at once and executed in order, each
                        // seeing the ones before it.
                        let (locked, results) = futures::join!(
                            locked,
                            futures::future::join_all(prepared.iter().zip(&params).map(
                                |(p, params)| {
                                    let statement = match (p.labels_valid, p.active) {
                                        (false, _) => &idem,
                                        (true, true) => &active,
                                        (true, false) => &full,
                                    };
                                    tx.query(statement, &params[..])
                                },
                            ))
                        );
                        locked?;
                        let mut out = Vec::with_capacity(results.len());
                        for ((run, p), rows) in runs.iter().zip(prepared).zip(results) {
                            match resolve(run, p, &rows?)? {
                                Some(Ok(enqueued)) => out.push(enqueued),
                                Some(Err(error)) => return Ok(Some(Err(error))), // rolls back
                                None => return Ok(None), // a concurrent insert won: retry
                            }
                        }
                        tx.commit().await?;
                        Ok(Some(Ok(out)))
                    }
                })
                .await?;
            if let Some(result) = outcome {
                return result;
            }
        }
        Err(batch_conflict_after_retry())
    }

    async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM durably_runs WHERE id = $1");
        let runs = self
            .read("get_run", &sql, &[&id], |row| run_from_row(row, 0))
            .await?;
        Ok(runs.into_iter().next())
    }

    async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        for key in filter.labels.keys() {
            validate_label_key(key)?;
        }
        let values = RunsValues::new(filter);
        let (sql, params) = runs_query(filter, &values);
        self.read("get_runs", &sql, &params, |row| run_from_row(row, 0))
            .await
    }

    async fn get_runs_within(&self, filter: &RunFilter, timeout: Duration) -> Result<Vec<Run>> {
        for key in filter.labels.keys() {
            validate_label_key(key)?;
        }
        let values = RunsValues::new(filter);
        let (sql, params) = runs_query(filter, &values);
        let read = self.read_within(
            "get_runs",
            &sql,
            &params,
            |row| run_from_row(row, 0),
            timeout,
        );
        // The server's timeout ends the statement; the client's (a little later) covers the
        // round trips around it and a server that does not answer.
        match tokio::time::timeout(timeout + Duration::from_millis(500), read).await {
            Ok(runs) => runs,
            Err(_) => Err(crate::store::read_timeout("get_runs", timeout)),
        }
    }

    async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM durably_steps WHERE run_id = $1 ORDER BY \"index\" ASC, id ASC"
        );
        self.read("get_steps", &sql, &[&run_id], step_from_row)
            .await
    }

    async fn get_completed_step(&self, run_id: &str, name: &str) -> Result<Option<Step>> {
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM durably_steps \
             WHERE run_id = $1 AND name = $2 AND status = 'completed'"
        );
        let steps = self
            .read("get_completed_step", &sql, &[&run_id, &name], step_from_row)
            .await?;
        Ok(steps.into_iter().next())
    }

    async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        let sql = format!(
            "SELECT {LOG_COLUMNS} FROM durably_logs WHERE run_id = $1 ORDER BY created_at ASC, id ASC"
        );
        self.read("get_logs", &sql, &[&run_id], log_from_row).await
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Run>> {
        let ClaimRequest {
            worker_id,
            lease,
            max,
            resume_waiting,
        } = request;
        let (worker_id, lease, max) = (worker_id.as_str(), *lease, *max);
        let now_text = now.to_string();
        let expires = (now + lease).to_string();
        let first_sql = claim_sql(*resume_waiting);
        let (lock_sql, keyed_sql) = (lock_claim_keys_sql(), claim_keyed_sql(*resume_waiting));
        let mut claimed: Vec<Run> = Vec::new();
        // Claims are not retried on connection failures: a claim whose commit went
        // unacknowledged leaves runs leased to nobody, and they return when the lease expires.
        for _round in 0..4 {
            let wanted = max.saturating_sub(claimed.len());
            if wanted == 0 {
                break;
            }
            let limit = wanted.min(i64::MAX as usize) as i64;
            let (keyless, keys) = self
                .run("claim", false, |client, _| {
                    let (sql, now_text, expires) = (&first_sql, &now_text, &expires);
                    async move {
                        let statement = client.prepare_cached(sql).await?;
                        let rows = client
                            .query(&statement, &[now_text, &limit, &worker_id, expires])
                            .await?;
                        let mut runs = Vec::new();
                        let mut keys: Vec<String> = Vec::new();
                        for row in &rows {
                            if row.try_get::<_, bool>(0)? {
                                let key: String = row.try_get(2)?;
                                if !keys.contains(&key) {
                                    keys.push(key);
                                }
                            } else {
                                runs.push(run_from_row(row, 3)?);
                            }
                        }
                        Ok((runs, keys))
                    }
                })
                .await?;
            claimed.extend(keyless);
            if keys.is_empty() {
                break;
            }
            let room = max.saturating_sub(claimed.len());
            let keys: Vec<String> = keys.into_iter().take(room).collect();
            if keys.is_empty() {
                break;
            }
            let keys_json = serde_json::to_string(&keys)
                .map_err(|error| Error::storage("claim", error.to_string()))?;
            let leased = self
                .run("claim", false, |client, _| {
                    let (lock_sql, keyed_sql) = (&lock_sql, &keyed_sql);
                    let (now_text, expires, keys_json) = (&now_text, &expires, &keys_json);
                    async move {
                        let lock = client.prepare_cached(lock_sql).await?;
                        let keyed = client.prepare_cached(keyed_sql).await?;
                        let keys_json = Some(keys_json.as_str());
                        let lock_params: [&(dyn ToSql + Sync); 1] = [&keys_json];
                        let keyed_params: [&(dyn ToSql + Sync); 3] =
                            [&worker_id, expires, now_text];
                        // Pipelined, one round trip: the locks, then (a statement of its own,
                        // whose snapshot sees every lease committed under them before) the
                        // leases; a failed statement fails the rest and `COMMIT` rolls back.
                        let (began, locked, leased, committed) = futures::join!(
                            client.batch_execute("BEGIN"),
                            client.query(&lock, &lock_params),
                            client.query(&keyed, &keyed_params),
                            client.batch_execute("COMMIT"),
                        );
                        began?;
                        locked?;
                        let leased = leased?;
                        committed?;
                        leased
                            .iter()
                            .map(|row| run_from_row(row, 0))
                            .collect::<std::result::Result<Vec<_>, _>>()
                    }
                })
                .await?;
            let all_keys_leased = leased.len() == keys.len();
            claimed.extend(leased);
            if all_keys_leased {
                break;
            }
            // Some key was taken by another claimer meanwhile: look again with a fresh view.
        }
        claimed.sort_by(crate::store::claim_order);
        Ok(claimed)
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        let expires = now + lease;
        let (expires_text, now_text) = (expires.to_string(), now.to_string());
        if let Some(extended) = self.renew_together(fence, &expires_text, &now_text).await {
            return Ok(extended?.then_some(expires));
        }
        let sql = format!(
            "UPDATE durably_runs SET lease_expires_at = $3, updated_at = $4 \
             WHERE {FENCED} AND lease_expires_at > $4"
        );
        let changed = self
            .run("renew_lease", true, |client, _| {
                let (sql, expires_text, now_text) = (&sql, &expires_text, &now_text);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    Ok(client
                        .execute(
                            &statement,
                            &[&fence.run_id, &fence.generation, expires_text, now_text],
                        )
                        .await?)
                }
            })
            .await?;
        Ok((changed == 1).then_some(expires))
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let sql = format!(
            "WITH u AS (UPDATE durably_runs r SET status = 'pending', lease_owner = NULL, \
               lease_expires_at = NULL, updated_at = $3 \
               WHERE r.{FENCED_R} AND (r.concurrency_key IS NULL OR NOT EXISTS ( \
                 SELECT 1 FROM durably_runs p WHERE p.status = 'pending' \
                 AND p.job_name = r.job_name AND p.concurrency_key = r.concurrency_key)) \
               RETURNING r.id), \
             note AS (SELECT pg_notify($4::text, '{NOTICE_RUNS}') FROM u) \
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM note)"
        );
        let params: [&(dyn ToSql + Sync); 4] =
            [&fence.run_id, &fence.generation, &now_text, &channel];
        let changed = self
            .read("release_lease", &sql, &params, |row| count(row, 0))
            .await?;
        Ok(changed.first() == Some(&1))
    }

    async fn persist_step(
        &self,
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
        let index = i32::try_from(step.index)
            .map_err(|_| Error::Validation(format!("step index {} is too large", step.index)))?;
        let attempt = step
            .attempt
            .as_ref()
            .map(|a| -> Result<_> {
                let metadata = a
                    .metadata
                    .as_ref()
                    .map(|m| to_json("persist_step", m))
                    .transpose()?;
                Ok((a.id.clone(), a.begun, metadata))
            })
            .transpose()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batch(
            "persist_step",
            batch::Request::Persist(batch::PersistRequest {
                run_id: fence.run_id.clone(),
                generation: fence.generation,
                step_id: id.clone(),
                name: step.name.clone(),
                index,
                status: step.status.as_str(),
                output,
                error: step.error.clone(),
                started_at: step.started_at.to_string(),
                completed_at: now.to_string(),
                attempt,
                reply,
            }),
        )
        .await?;
        let (fenced, inserted, mine) = answer
            .await
            .map_err(|_| Error::storage("persist_step", "the PostgreSQL write task stopped"))??;
        if !mine && !fenced {
            return Ok(None);
        }
        if !mine && !inserted {
            return Err(Error::Conflict(format!(
                "Step \"{}\" of run {} is already completed",
                step.name, fence.run_id
            )));
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

    async fn begin_step_attempt(
        &self,
        fence: &Fence,
        attempt: AttemptStart,
        now: Timestamp,
    ) -> Result<bool> {
        let metadata = attempt
            .metadata
            .as_ref()
            .map(|m| to_json("begin_step_attempt", m))
            .transpose()?;
        let index = i32::try_from(attempt.step_index).map_err(|_| {
            Error::Validation(format!("step index {} is too large", attempt.step_index))
        })?;
        let (started_at, now) = (attempt.started_at.to_string(), now.to_string());
        // A retry after a lost reply finds the row its first try inserted.
        let sql = "WITH ins AS (INSERT INTO durably_step_attempts (id, run_id, step_name, \
               step_index, lease_generation, status, metadata, error, started_at, completed_at) \
             SELECT $3, r.id, $4, $5::integer, r.lease_generation, 'started', $6, NULL, $7, NULL \
               FROM durably_runs r WHERE r.id = $1 AND r.status = 'leased' \
               AND r.lease_generation = $2::bigint AND r.lease_expires_at > $8 \
             ON CONFLICT DO NOTHING RETURNING id) \
             SELECT (SELECT count(*) FROM ins) > 0 OR EXISTS (SELECT 1 FROM durably_step_attempts \
               WHERE id = $3 AND run_id = $1 AND lease_generation = $2::bigint)";
        let params: [&(dyn ToSql + Sync); 8] = [
            &fence.run_id,
            &fence.generation,
            &attempt.id,
            &attempt.step_name,
            &index,
            &metadata,
            &started_at,
            &now,
        ];
        let begun = self
            .read("begin_step_attempt", sql, &params, |row| count_bool(row, 0))
            .await?;
        Ok(begun.first() == Some(&true))
    }

    async fn set_step_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<Value>,
        now: Timestamp,
    ) -> Result<bool> {
        let metadata = metadata
            .as_ref()
            .map(|m| to_json("set_step_attempt_metadata", m))
            .transpose()?;
        let now = now.to_string();
        // Idempotent: a retry after a lost reply writes the same value again.
        let sql = "WITH u AS (UPDATE durably_step_attempts a SET metadata = $4 \
               FROM durably_runs r WHERE a.id = $3 AND a.run_id = $1 \
               AND a.lease_generation = $2::bigint AND a.status = 'started' \
               AND r.id = $1 AND r.status = 'leased' AND r.lease_generation = $2::bigint \
               AND r.lease_expires_at > $5 RETURNING a.id) \
             SELECT count(*) FROM u";
        let params: [&(dyn ToSql + Sync); 5] = [
            &fence.run_id,
            &fence.generation,
            &attempt_id,
            &metadata,
            &now,
        ];
        let changed = self
            .read("set_step_attempt_metadata", sql, &params, |row| {
                count(row, 0)
            })
            .await?;
        Ok(changed.first() == Some(&1))
    }

    async fn get_step_attempts(&self, run_id: &str) -> Result<Vec<StepAttempt>> {
        let sql = "SELECT a.id, a.run_id, a.step_name, a.step_index, a.lease_generation, a.status, \
             a.metadata, a.error, a.started_at, a.completed_at, r.status, r.lease_generation, \
             r.error FROM durably_step_attempts a LEFT JOIN durably_runs r ON r.id = a.run_id \
             WHERE a.run_id = $1 ORDER BY a.started_at ASC, a.id ASC";
        self.read("get_step_attempts", sql, &[&run_id], attempt_from_row)
            .await
    }

    async fn prepare_wait(
        &self,
        fence: &Fence,
        wait: NewWait,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        wait.validate()?;
        self.prepare_wait_tx(fence, &wait, now).await
    }

    async fn wait_result(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        self.wait_result_tx(fence, wait_id, now).await
    }

    async fn signal_wait(
        &self,
        wait_id: &str,
        payload: Value,
        signal_id: &str,
        now: Timestamp,
    ) -> Result<Signalled> {
        let _ = now; // the database's clock decides
        crate::waits::validate_signal_id(signal_id)?;
        let payload = crate::waits::canonical_json(&payload);
        self.signal_wait_tx(wait_id, &payload, signal_id).await
    }

    async fn expire_due_waits(&self, now: Timestamp, limit: u64) -> Result<u64> {
        let _ = now; // the database's clock decides
        crate::waits::validate_limit(limit)?;
        self.expire_due_waits_tx(limit).await
    }

    async fn get_wait(&self, wait_id: &str) -> Result<Option<DurableWait>> {
        let sql = format!("SELECT {WAIT_COLUMNS} FROM durably_waits WHERE id = $1");
        let found = self
            .read("get_wait", &sql, &[&wait_id], wait_from_row)
            .await?;
        Ok(found.into_iter().next())
    }

    async fn run_overview(
        &self,
        now: Timestamp,
        window: crate::overview::OverviewWindow,
    ) -> Result<crate::overview::Overview> {
        use crate::overview::{EndedGroup, EndedRun, OVERVIEW_SAMPLE, OverviewRows};
        const OP: &str = "run_overview";
        let since = window.start(now).to_string();
        let key_len = window.key_len() as i32;
        let limit = OVERVIEW_SAMPLE as i64;
        let ended_params: [&(dyn ToSql + Sync); 2] = [&since, &key_len];
        let sample_params: [&(dyn ToSql + Sync); 2] = [&since, &limit];
        let statuses = self.read(OP, OVERVIEW_STATUSES, &[], |row| {
            Ok((row.try_get(0)?, row.try_get(1)?))
        });
        let oldest = self.read(OP, OVERVIEW_OLDEST_PENDING, &[], |row| {
            Ok((row.try_get(0)?, row.try_get(1)?, get_ts(row, 2)?))
        });
        let ended = self.read(
            OP,
            "SELECT job_name, substr(completed_at, 1, $2), status, COUNT(*) FROM durably_runs \
             WHERE status IN ('completed', 'failed') AND completed_at >= $1 GROUP BY 1, 2, 3",
            &ended_params,
            |row| {
                Ok(EndedGroup {
                    job_name: row.try_get(0)?,
                    bucket: row.try_get(1)?,
                    status: row.try_get(2)?,
                    count: row.try_get(3)?,
                })
            },
        );
        let sample = self.read(
            OP,
            "SELECT r.job_name, r.created_at, r.started_at, r.completed_at, \
             COALESCE(w.resolved_at, w.deadline_at) FROM durably_runs r \
             LEFT JOIN durably_waits w ON w.run_id = r.id AND w.name = 'delay' \
             WHERE r.status IN ('completed', 'failed') AND r.completed_at >= $1 \
             ORDER BY r.completed_at DESC LIMIT $2",
            &sample_params,
            |row| {
                Ok(EndedRun {
                    job_name: row.try_get(0)?,
                    created_at: get_ts(row, 1)?,
                    started_at: get_opt_ts(row, 2)?,
                    completed_at: get_ts(row, 3)?,
                    delay_end: get_opt_ts(row, 4)?,
                })
            },
        );
        let (statuses, oldest, ended, sample) = futures::join!(statuses, oldest, ended, sample);
        let rows = OverviewRows {
            statuses: statuses?,
            oldest_pending: oldest?.pop(),
            ended: ended?,
            sample: sample?,
        };
        Ok(rows.assemble(now, window))
    }

    async fn run_counts(&self, now: Timestamp) -> Result<crate::overview::RunCounts> {
        const OP: &str = "run_counts";
        let statuses = self.read(OP, OVERVIEW_STATUSES, &[], |row| {
            Ok((row.try_get(0)?, row.try_get(1)?))
        });
        let oldest = self.read(OP, OVERVIEW_OLDEST_PENDING, &[], |row| {
            Ok((row.try_get(0)?, row.try_get(1)?, get_ts(row, 2)?))
        });
        let (statuses, oldest) = futures::join!(statuses, oldest);
        let rows = crate::overview::OverviewRows {
            statuses: statuses?,
            oldest_pending: oldest?.pop(),
            ..Default::default()
        };
        Ok(rows.counts(now))
    }

    async fn get_waits(&self, run_id: &str) -> Result<Vec<DurableWait>> {
        let sql = format!(
            "SELECT {WAIT_COLUMNS} FROM durably_waits WHERE run_id = $1 \
             ORDER BY created_at ASC, id ASC"
        );
        self.read("get_waits", &sql, &[&run_id], wait_from_row)
            .await
    }

    async fn children_settled(&self, _parent_run_id: &str, parent_wait_id: &str) -> Result<bool> {
        let settled = self
            .read(
                "children_settled",
                sql::CHILDREN_SETTLED,
                &[&parent_wait_id],
                |row| Ok(row.try_get::<_, bool>(0)?),
            )
            .await?;
        Ok(settled.first().copied().unwrap_or(false))
    }

    async fn settled_children_waits(&self, limit: u64) -> Result<Vec<String>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(
            "settled_children_waits",
            sql::SETTLED_CHILDREN_WAITS,
            &[&limit],
            |row| Ok(row.try_get::<_, String>(0)?),
        )
        .await
    }

    async fn children_to_cancel(
        &self,
        cancelled_since: Timestamp,
        limit: u64,
    ) -> Result<Vec<String>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let since = cancelled_since.to_string();
        self.read(
            "children_to_cancel",
            sql::CHILDREN_TO_CANCEL,
            &[&limit, &crate::children::DETACHED_METADATA_PATTERN, &since],
            |row| Ok(row.try_get::<_, String>(0)?),
        )
        .await
    }

    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool> {
        let progress = progress
            .as_ref()
            .map(|p| to_json("update_progress", p))
            .transpose()?;
        let now_text = now.to_string();
        let sql = format!("UPDATE durably_runs SET progress = $3, updated_at = $4 WHERE {FENCED}");
        let changed = self
            .run("update_progress", true, |client, _| {
                let (sql, progress, now_text) = (&sql, &progress, &now_text);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    Ok(client
                        .execute(
                            &statement,
                            &[&fence.run_id, &fence.generation, progress, now_text],
                        )
                        .await?)
                }
            })
            .await?;
        Ok(changed == 1)
    }

    async fn append_log(
        &self,
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
        let now_text = now.to_string();
        let generation = fence.map(|f| f.generation);
        // Unfenced when `$8` is NULL; a retry recognises its own earlier insert by id.
        let sql = format!(
            "INSERT INTO durably_logs ({LOG_COLUMNS}) \
             SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text \
             WHERE $8::bigint IS NULL OR EXISTS (SELECT 1 FROM durably_runs \
               WHERE id = $2 AND status = 'leased' AND lease_generation = $8::bigint) \
             ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING id"
        );
        let inserted = self
            .run("append_log", true, |client, _| {
                let (sql, id, data, now_text, log) = (&sql, &id, &data, &now_text, &log);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    Ok(client
                        .execute(
                            &statement,
                            &[
                                id,
                                &log.run_id,
                                &log.step_name,
                                &log.level.as_str(),
                                &log.message,
                                data,
                                now_text,
                                &generation,
                            ],
                        )
                        .await?)
                }
            })
            .await?;
        Ok((inserted == 1).then(|| Log {
            id,
            run_id: log.run_id,
            step_name: log.step_name,
            level: log.level,
            message: log.message,
            data: log.data.filter(|d| !d.is_null()),
            created_at: now,
        }))
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> Result<Finished> {
        let claim = then_claim
            .filter(|next| next.max > 0)
            .map(|next| (next.clone(), now));
        match transition {
            Transition::Wait { wait_id } => {
                let landed = self.suspend_run(fence, &wait_id, now).await?;
                let claimed = match claim {
                    Some((next, now)) if landed => match self.claim(&next, now).await {
                        Ok(runs) => runs,
                        Err(error) => {
                            tracing::warn!(%error, "claim after suspension failed");
                            Vec::new()
                        }
                    },
                    _ => Vec::new(),
                };
                Ok(Finished { landed, claimed })
            }
            Transition::Complete { output } => {
                let (landed, claimed) = self.complete(fence, output, now, claim).await?;
                Ok(Finished { landed, claimed })
            }
            Transition::Fail { error } => {
                // A failed run keeps its steps for a resume (`Store::resume_run`).
                let drop_steps = false;
                let landed = self
                    .finish(
                        "fail_run",
                        fence,
                        "status = 'failed', error = $3",
                        "failed",
                        Some(error),
                        now,
                        drop_steps,
                    )
                    .await?;
                // Failures are rare: their claim is a second statement.
                let claimed = match claim {
                    Some((next, now)) => match self.claim(&next, now).await {
                        Ok(runs) => runs,
                        Err(error) => {
                            tracing::warn!(%error, "claim after failure failed");
                            Vec::new()
                        }
                    },
                    None => Vec::new(),
                };
                Ok(Finished { landed, claimed })
            }
        }
    }

    async fn cancel_run(&self, id: &str, now: Timestamp) -> Result<bool> {
        let drop_steps = !self.preserve_steps;
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let prefix = format!("{NOTICE_CANCEL}{}:", self.shared.origin);
        let sql = "WITH u AS (UPDATE durably_runs SET status = 'cancelled', lease_owner = NULL, \
               lease_expires_at = NULL, completed_at = $2, updated_at = $2 \
               WHERE id = $1 AND status IN ('pending', 'leased', 'waiting') RETURNING id), \
             d AS (DELETE FROM durably_steps WHERE $3::boolean AND run_id IN (SELECT id FROM u)), \
             cw AS (UPDATE durably_waits SET status = 'cancelled', resolved_at = $2 \
               WHERE run_id IN (SELECT id FROM u) AND status = 'pending'), \
             note AS (SELECT pg_notify($4::text, $5::text || id) FROM u) \
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM note)";
        let params: [&(dyn ToSql + Sync); 5] = [&id, &now_text, &drop_steps, &channel, &prefix];
        let changed = self
            .read("cancel_run", sql, &params, |row| count(row, 0))
            .await?;
        Ok(changed.first() == Some(&1))
    }

    async fn resume_run(&self, id: &str, now: Timestamp) -> Result<Run> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        // One statement: the run as it was (`r`), whether its job and key already have a
        // pending run (`taken`), the resume itself (`u`, only of a failed run whose key is
        // free), its closed waits reopened (`w`) and a wake-up for idle workers (`note`).
        let sql = format!(
            "WITH r AS (SELECT id, status, job_name, concurrency_key FROM durably_runs \
               WHERE id = $1), \
             taken AS (SELECT 1 FROM durably_runs p, r WHERE r.concurrency_key IS NOT NULL \
               AND p.status = 'pending' AND p.job_name = r.job_name \
               AND p.concurrency_key = r.concurrency_key AND p.id <> r.id LIMIT 1), \
             u AS (UPDATE durably_runs SET status = 'pending', error = NULL, \
               completed_at = NULL, lease_owner = NULL, lease_expires_at = NULL, \
               updated_at = $2 WHERE id = $1 AND status = 'failed' \
               AND NOT EXISTS (SELECT 1 FROM taken) RETURNING {RUN_COLUMNS}), \
             w AS (UPDATE durably_waits SET status = 'pending', resolved_at = NULL \
               WHERE run_id IN (SELECT id FROM u) AND status = 'closed'), \
             note AS (SELECT pg_notify($3::text, '{NOTICE_RUNS}') FROM u) \
             SELECT r.status, r.job_name, r.concurrency_key, \
               EXISTS (SELECT 1 FROM taken), (SELECT count(*) FROM note), {u} \
             FROM r LEFT JOIN u ON true",
            u = run_columns("u"),
        );
        let params: [&(dyn ToSql + Sync); 3] = [&id, &now_text, &channel];
        type Outcome = (String, String, Option<String>, bool, Option<Run>);
        let rows = self
            .read(
                "resume_run",
                &sql,
                &params,
                |row| -> std::result::Result<Outcome, Fail> {
                    let resumed = match row.try_get::<_, Option<String>>(5)? {
                        Some(_) => Some(run_from_row(row, 5)?),
                        None => None,
                    };
                    Ok((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                        resumed,
                    ))
                },
            )
            .await?;
        let Some((status, job_name, key, taken, resumed)) = rows.into_iter().next() else {
            return Err(resume_not_found(id));
        };
        if let Some(run) = resumed {
            return Ok(run);
        }
        let status: RunStatus = status
            .parse()
            .map_err(|_| Error::storage("resume_run", format!("invalid run status {status:?}")))?;
        match (status, key) {
            (RunStatus::Failed, Some(key)) if taken => Err(resume_key_taken(id, &job_name, &key)),
            (RunStatus::Failed, _) => Err(Error::Conflict(format!(
                "Run \"{id}\" changed while it was being resumed; read it again and retry"
            ))),
            (status, _) => Err(resume_not_failed(id, status)),
        }
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        let sql = format!(
            "WITH r AS (DELETE FROM durably_runs WHERE id = $1 AND status IN {TERMINAL} RETURNING id), \
             a AS (DELETE FROM durably_step_attempts WHERE run_id IN (SELECT id FROM r)), \
             w AS (DELETE FROM durably_waits WHERE run_id IN (SELECT id FROM r)), \
             s AS (DELETE FROM durably_steps WHERE run_id IN (SELECT id FROM r)), \
             l AS (DELETE FROM durably_logs WHERE run_id IN (SELECT id FROM r)), \
             b AS (DELETE FROM durably_run_labels WHERE run_id IN (SELECT id FROM r)) \
             SELECT count(*) FROM r"
        );
        let deleted = self
            .run("delete_run", true, |client, _| {
                let sql = &sql;
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let row = client.query_one(&statement, &[&id]).await?;
                    count(&row, 0)
                }
            })
            .await?;
        Ok(deleted == 1)
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        let cutoff = older_than.to_string();
        let limit = limit.min(i64::MAX as u64) as i64;
        let sql = format!(
            "WITH ids AS (SELECT id FROM durably_runs WHERE status IN {TERMINAL} \
               AND completed_at IS NOT NULL AND completed_at < $1 \
               ORDER BY completed_at ASC, id ASC LIMIT $2::bigint FOR UPDATE SKIP LOCKED), \
             r AS (DELETE FROM durably_runs WHERE id IN (SELECT id FROM ids) RETURNING id), \
             a AS (DELETE FROM durably_step_attempts WHERE run_id IN (SELECT id FROM r)), \
             w AS (DELETE FROM durably_waits WHERE run_id IN (SELECT id FROM r)), \
             s AS (DELETE FROM durably_steps WHERE run_id IN (SELECT id FROM r)), \
             l AS (DELETE FROM durably_logs WHERE run_id IN (SELECT id FROM r)), \
             b AS (DELETE FROM durably_run_labels WHERE run_id IN (SELECT id FROM r)) \
             SELECT count(*) FROM r"
        );
        let deleted = self
            .run("purge_runs", true, |client, _| {
                let (sql, cutoff) = (&sql, &cutoff);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let row = client.query_one(&statement, &[cutoff, &limit]).await?;
                    count(&row, 0)
                }
            })
            .await?;
        Ok(deleted.max(0) as u64)
    }

    async fn release_expired_leases(&self, now: Timestamp) -> Result<Vec<Run>> {
        let drop_steps = !self.preserve_steps;
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let returning = RUN_COLUMNS;
        // An expired lease goes back to pending unless its job+key already has a pending run, or
        // an older expired lease of the same job+key goes back instead (the pending-per-key
        // index allows one): those fail.
        let sql = format!(
            "WITH x AS (SELECT id, job_name, concurrency_key, created_at FROM durably_runs \
               WHERE status = 'leased' AND lease_expires_at IS NOT NULL AND lease_expires_at <= $1 \
               AND waiting_on_wait_id IS NULL AND NOT EXISTS (SELECT 1 FROM durably_waits w \
                 WHERE w.run_id = durably_runs.id) \
               FOR UPDATE SKIP LOCKED), \
             blocked AS (SELECT x.id FROM x WHERE x.concurrency_key IS NOT NULL AND ( \
               EXISTS (SELECT 1 FROM durably_runs p WHERE p.status = 'pending' \
                 AND p.job_name = x.job_name AND p.concurrency_key = x.concurrency_key \
                 AND p.id <> x.id) \
               OR EXISTS (SELECT 1 FROM x y WHERE y.job_name = x.job_name \
                 AND y.concurrency_key = x.concurrency_key \
                 AND (y.created_at, y.id) < (x.created_at, x.id)))), \
             f AS (UPDATE durably_runs SET status = 'failed', error = $2, lease_owner = NULL, \
               lease_expires_at = NULL, completed_at = $1, updated_at = $1 \
               WHERE id IN (SELECT id FROM blocked) RETURNING {returning}), \
             p AS (UPDATE durably_runs SET status = 'pending', lease_owner = NULL, \
               lease_expires_at = NULL, updated_at = $1 \
               WHERE id IN (SELECT id FROM x) AND id NOT IN (SELECT id FROM blocked) \
               RETURNING {returning}), \
             dropped AS (DELETE FROM durably_steps WHERE $4 AND run_id IN (SELECT id FROM f)), \
             note AS (SELECT pg_notify($3::text, '{NOTICE_RUNS}') FROM p LIMIT 1) \
             SELECT {returning} FROM f UNION ALL \
             SELECT {returning} FROM p WHERE (SELECT count(*) FROM note) >= 0"
        );
        self.run("release_expired_leases", true, |client, _| {
            let (sql, now_text, channel) = (&sql, &now_text, &channel);
            async move {
                let statement = client.prepare_cached(sql).await?;
                let rows = client
                    .query(
                        &statement,
                        &[
                            now_text,
                            &LEASE_EXPIRED_PENDING_EXISTS,
                            channel,
                            &drop_steps,
                        ],
                    )
                    .await?;
                rows.iter().map(|row| run_from_row(row, 0)).collect()
            }
        })
        .await
    }

    fn preserves_steps(&self) -> bool {
        self.preserve_steps
    }

    fn with_step_policy(&self, preserve_steps: bool) -> Option<Arc<dyn Store>> {
        Some(Arc::new(Self {
            shared: self.shared.clone(),
            preserve_steps,
        }))
    }

    fn keeps_schedules(&self) -> bool {
        true
    }

    async fn upsert_schedule(
        &self,
        record: crate::schedules::ScheduleRecord,
        now: Timestamp,
    ) -> Result<crate::schedules::ScheduleRecord> {
        self.upsert_schedule_row(&record, now).await
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<crate::schedules::ScheduleRecord>> {
        let rows = self
            .schedule_rows("get_schedule", "WHERE name = $1", &[&name])
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn list_schedules(&self) -> Result<Vec<crate::schedules::ScheduleRecord>> {
        self.schedule_rows("list_schedules", "ORDER BY name", &[])
            .await
    }

    async fn due_schedules(
        &self,
        now: Timestamp,
        limit: u64,
    ) -> Result<Vec<crate::schedules::ScheduleRecord>> {
        let now = now.to_string();
        let limit = limit.min(i64::MAX as u64) as i64;
        self.schedule_rows(
            "due_schedules",
            "WHERE NOT paused AND next_fire_at <= $1 ORDER BY next_fire_at, name LIMIT $2",
            &[&now, &limit],
        )
        .await
    }

    async fn pause_schedule(
        &self,
        name: &str,
        now: Timestamp,
    ) -> Result<Option<crate::schedules::ScheduleRecord>> {
        let now = now.to_string();
        self.update_schedule_row(
            "pause_schedule",
            "paused = true, updated_at = $2 WHERE name = $1 AND NOT paused",
            name,
            &[&name, &now],
        )
        .await
    }

    async fn resume_schedule(
        &self,
        name: &str,
        next_fire_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<crate::schedules::ScheduleRecord>> {
        let (next, now) = (next_fire_at.to_string(), now.to_string());
        self.update_schedule_row(
            "resume_schedule",
            "paused = false, next_fire_at = $2, updated_at = $3 WHERE name = $1 AND paused",
            name,
            &[&name, &next, &now],
        )
        .await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let deleted = self
            .read(
                "delete_schedule",
                "WITH d AS (DELETE FROM durably_rs_schedules WHERE name = $1 RETURNING 1) \
                 SELECT count(*) FROM d",
                &[&name],
                |row| count(row, 0),
            )
            .await?;
        Ok(deleted.first() == Some(&1))
    }

    async fn fire_schedule(
        &self,
        firing: crate::schedules::ScheduleFiring,
        now: Timestamp,
    ) -> Result<Option<Vec<Enqueued>>> {
        self.fire_schedule_tx(&firing, now).await
    }

    fn admin(&self) -> Option<&dyn RunAdmin> {
        Some(self)
    }

    fn notifications(&self) -> Option<broadcast::Receiver<StoreNotice>> {
        self.notice_sender().map(|sender| sender.subscribe())
    }
}

#[async_trait]
impl RunAdmin for PostgresStore {
    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool> {
        let mut sets = vec!["updated_at = $1".to_string()];
        let mut values: Vec<Option<String>> = vec![Some(now.to_string())];
        let mut set = |column: &str, value: Option<String>| {
            values.push(value);
            sets.push(format!("{column} = ${}", values.len()));
        };
        if let Some(status) = patch.status {
            set("status", Some(status.as_str().to_owned()));
        }
        if let Some(owner) = &patch.lease_owner {
            set("lease_owner", owner.clone());
        }
        if let Some(expires) = patch.lease_expires_at {
            set("lease_expires_at", expires.map(|t| t.to_string()));
        }
        if let Some(progress) = &patch.progress {
            let text = progress
                .as_ref()
                .map(|p| to_json("update_run", p))
                .transpose()?;
            set("progress", text);
        }
        if let Some(error) = &patch.error {
            set("error", error.clone());
        }
        if let Some(completed_at) = patch.completed_at {
            set("completed_at", completed_at.map(|t| t.to_string()));
        }
        if let Some(input) = &patch.input {
            set("input", Some(to_json("update_run", input)?));
        }
        values.push(Some(id.to_owned()));
        let sql = format!(
            "UPDATE durably_runs SET {} WHERE id = ${}",
            sets.join(", "),
            values.len()
        );
        let changed = self
            .run("update_run", true, |client, _| {
                let (sql, values) = (&sql, &values);
                async move {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    Ok(client.execute(sql.as_str(), &params).await?)
                }
            })
            .await?;
        Ok(changed == 1)
    }
}

impl PostgresStore {
    /// Completes or fails a run (fenced), dropping its steps if asked, and wakes workers when
    /// the run held a concurrency key another pending run waits for. A retry whose first
    /// attempt committed recognises the run in the state it wrote (same generation).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish(
        &self,
        operation: &'static str,
        fence: &Fence,
        set: &str,
        status: &'static str,
        value: Option<String>,
        now: Timestamp,
        drop_steps: bool,
    ) -> Result<bool> {
        let now_text = now.to_string();
        let channel = self.shared.channel.clone();
        let close_waits = match fence.may_have_waits {
            true => {
                "cw AS (UPDATE durably_waits SET status = 'closed', resolved_at = $4 \
                   WHERE run_id IN (SELECT id FROM u) AND status = 'pending'), "
            }
            false => "",
        };
        let sql = format!(
            "WITH u AS (UPDATE durably_runs SET {set}, lease_owner = NULL, \
               lease_expires_at = NULL, completed_at = $4, updated_at = $4 \
               WHERE {FENCED} RETURNING id, job_name, concurrency_key), \
             d AS (DELETE FROM durably_steps WHERE $5::boolean AND run_id IN (SELECT id FROM u)), \
             {close_waits}\
             note AS (SELECT pg_notify($6::text, '{NOTICE_RUNS}') FROM u \
               WHERE u.concurrency_key IS NOT NULL AND EXISTS (SELECT 1 FROM durably_runs p \
               WHERE p.status = 'pending' AND p.concurrency_key = u.concurrency_key)), \
             again AS (SELECT 1 FROM durably_runs WHERE $7::boolean AND id = $1 \
               AND status = '{status}' AND lease_generation = $2::bigint) \
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM note), \
               (SELECT count(*) FROM again)"
        );
        let (changed, again) = self
            .run(operation, true, |client, attempt| {
                let (sql, now_text, channel, value) = (&sql, &now_text, &channel, &value);
                async move {
                    let statement = client.prepare_cached(sql).await?;
                    let retrying = attempt > 0;
                    let row = client
                        .query_one(
                            &statement,
                            &[
                                &fence.run_id,
                                &fence.generation,
                                value,
                                now_text,
                                &drop_steps,
                                channel,
                                &retrying,
                            ],
                        )
                        .await?;
                    Ok((count(&row, 0)?, count(&row, 2)?))
                }
            })
            .await?;
        Ok(changed == 1 || again == 1)
    }
}
