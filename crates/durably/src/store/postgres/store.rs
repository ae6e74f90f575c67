//! [`Store`] for [`PostgresStore`]: each operation as one statement (or one short transaction).
//!
//! The longer operations are methods of their own beside it: the claim and leases in
//! `claims.rs`, what a lease holder records in `steps.rs`, the end of a run and after in
//! `lifecycle.rs`, the dashboard's overview in `overview.rs` (durable waits in `waits.rs`,
//! delayed enqueues in `delayed.rs`).

use super::*;

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
        self.claim_runs(request, now).await
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        self.renew_held_lease(fence, now, lease).await
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        self.release_held_lease(fence, now).await
    }

    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>> {
        self.persist_step_batched(fence, step, now).await
    }

    async fn begin_step_attempt(
        &self,
        fence: &Fence,
        attempt: AttemptStart,
        now: Timestamp,
    ) -> Result<bool> {
        self.insert_step_attempt(fence, attempt, now).await
    }

    async fn set_step_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<Value>,
        now: Timestamp,
    ) -> Result<bool> {
        self.update_attempt_metadata(fence, attempt_id, metadata, now)
            .await
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
        self.read_overview(now, window).await
    }

    async fn run_counts(&self, now: Timestamp) -> Result<crate::overview::RunCounts> {
        self.read_run_counts(now).await
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
        self.write_progress(fence, progress, now).await
    }

    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>> {
        self.insert_log(fence, log, now).await
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> Result<Finished> {
        self.finish_with(fence, transition, now, then_claim).await
    }

    async fn cancel_run(&self, id: &str, now: Timestamp) -> Result<bool> {
        self.cancel_one(id, now).await
    }

    async fn resume_run(&self, id: &str, now: Timestamp) -> Result<Run> {
        self.resume_failed(id, now).await
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        self.delete_terminal(id).await
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        self.purge_terminal(older_than, limit).await
    }

    async fn release_expired_leases(&self, now: Timestamp) -> Result<Vec<Run>> {
        self.recover_expired_leases(now).await
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
