//! [`Store`] for [`SqliteStore`]: reads go to the reader pool, writes to the writer thread.

use super::*;

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<()> {
        self.write_isolated("migrate", schema::migrate).await
    }

    async fn schema_version(&self) -> Result<i64> {
        self.read("schema_version", schema::current_version).await
    }

    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued> {
        self.write("enqueue", move |conn| ops::enqueue(conn, &run, now))
            .await
    }

    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(Enqueued, Vec<Run>)> {
        let next = next.clone();
        // In its own savepoint when shared: a claim failing after the insert undoes the insert.
        // A claimed run usually writes its first step at once.
        let kind = WriteKind {
            isolated: true,
            synced: true,
            continues: next.max > 0,
        };
        self.queue_write("enqueue", kind, move |conn| {
            let enqueued = ops::enqueue(conn, &run, now)?;
            let claimed = match (next.max, enqueued.disposition) {
                (0, _) | (_, Disposition::Idempotent | Disposition::Coalesced) => Vec::new(),
                (_, Disposition::Debounced) => Vec::new(),
                (max, Disposition::Created) => ops::claim(
                    conn,
                    &ClaimRequest {
                        max,
                        ..next.clone()
                    },
                    now,
                )?,
            };
            Ok((enqueued, claimed))
        })
        .await
    }

    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        self.write_isolated("enqueue_many", move |conn| {
            // All or nothing: a failing item fails the whole write, which its savepoint (or,
            // alone, the transaction's rollback) undoes.
            runs.iter()
                .map(|run| ops::enqueue(conn, run, now))
                .collect()
        })
        .await
    }

    async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        let id = id.to_owned();
        self.read("get_run", move |conn| ops::get_run(conn, &id))
            .await
    }

    async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let filter = filter.clone();
        self.read("get_runs", move |conn| ops::get_runs(conn, &filter))
            .await
    }

    async fn run_overview(
        &self,
        now: Timestamp,
        window: crate::overview::OverviewWindow,
    ) -> Result<crate::overview::Overview> {
        self.read("run_overview", move |conn| {
            super::overview::run_overview(conn, now, window)
        })
        .await
    }

    async fn run_counts(&self, now: Timestamp) -> Result<crate::overview::RunCounts> {
        self.read("run_counts", move |conn| {
            super::overview::run_counts(conn, now)
        })
        .await
    }

    async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        let run_id = run_id.to_owned();
        self.read("get_steps", move |conn| ops::get_steps(conn, &run_id))
            .await
    }

    async fn get_completed_step(&self, run_id: &str, name: &str) -> Result<Option<Step>> {
        let (run_id, name) = (run_id.to_owned(), name.to_owned());
        self.read("get_completed_step", move |conn| {
            ops::get_completed_step(conn, &run_id, &name)
        })
        .await
    }

    async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        let run_id = run_id.to_owned();
        self.read("get_logs", move |conn| ops::get_logs(conn, &run_id))
            .await
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Run>> {
        if request.max == 0 {
            return Ok(Vec::new());
        }
        let next = request.clone();
        self.write_unsynced("claim", move |conn| ops::claim(conn, &next, now))
            .await
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        let fence = fence.clone();
        self.write_unsynced("renew_lease", move |conn| {
            ops::renew_lease(conn, &fence, now, lease)
        })
        .await
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        let fence = fence.clone();
        self.write_unsynced("release_lease", move |conn| {
            ops::release_lease(conn, &fence, now)
        })
        .await
    }

    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>> {
        let fence = fence.clone();
        self.write_continuing("persist_step", move |conn| {
            ops::persist_step(conn, &fence, step, now)
        })
        .await
    }

    async fn begin_step_attempt(
        &self,
        fence: &Fence,
        attempt: AttemptStart,
        now: Timestamp,
    ) -> Result<bool> {
        let fence = fence.clone();
        self.write_continuing("begin_step_attempt", move |conn| {
            ops::begin_step_attempt(conn, &fence, &attempt, now)
        })
        .await
    }

    async fn set_step_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<serde_json::Value>,
        now: Timestamp,
    ) -> Result<bool> {
        let (fence, attempt_id) = (fence.clone(), attempt_id.to_owned());
        self.write_continuing("set_step_attempt_metadata", move |conn| {
            ops::set_step_attempt_metadata(conn, &fence, &attempt_id, metadata.as_ref(), now)
        })
        .await
    }

    async fn get_step_attempts(&self, run_id: &str) -> Result<Vec<StepAttempt>> {
        let run_id = run_id.to_owned();
        self.read("get_step_attempts", move |conn| {
            ops::get_step_attempts(conn, &run_id)
        })
        .await
    }

    async fn prepare_wait(
        &self,
        fence: &Fence,
        wait: NewWait,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        wait.validate()?;
        let fence = fence.clone();
        self.write_isolated("prepare_wait", move |conn| {
            ops::prepare_wait(conn, &fence, &wait, now)
        })
        .await
    }

    async fn wait_result(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        let (fence, wait_id) = (fence.clone(), wait_id.to_owned());
        self.write_isolated("wait_result", move |conn| {
            ops::wait_result(conn, &fence, &wait_id, now)
        })
        .await
    }

    async fn signal_wait(
        &self,
        wait_id: &str,
        payload: Value,
        signal_id: &str,
        now: Timestamp,
    ) -> Result<Signalled> {
        let _ = now; // the database's clock decides (the writer's, here)
        waits::validate_signal_id(signal_id)?;
        let payload = waits::canonical_json(&payload);
        let (wait_id, signal_id) = (wait_id.to_owned(), signal_id.to_owned());
        let id = wait_id.clone();
        let outcome = self
            .write_isolated("signal_wait", move |conn| {
                ops::signal_wait(conn, &id, &payload, &signal_id)
            })
            .await?;
        // `None`: the timeout is committed; the signal is refused.
        outcome.ok_or(Error::WaitExpired { wait_id })
    }

    async fn expire_due_waits(&self, now: Timestamp, limit: u64) -> Result<u64> {
        let _ = now; // the database's clock decides (the writer's, here)
        waits::validate_limit(limit)?;
        self.write_isolated("expire_due_waits", move |conn| {
            ops::expire_due_waits(conn, limit)
        })
        .await
    }

    async fn get_wait(&self, wait_id: &str) -> Result<Option<DurableWait>> {
        let wait_id = wait_id.to_owned();
        self.read("get_wait", move |conn| ops::get_wait(conn, &wait_id))
            .await
    }

    async fn get_waits(&self, run_id: &str) -> Result<Vec<DurableWait>> {
        let run_id = run_id.to_owned();
        self.read("get_waits", move |conn| ops::get_waits(conn, &run_id))
            .await
    }

    async fn children_settled(&self, _parent_run_id: &str, parent_wait_id: &str) -> Result<bool> {
        let wait_id = parent_wait_id.to_owned();
        self.read("children_settled", move |conn| {
            ops::children_settled(conn, &wait_id)
        })
        .await
    }

    async fn settled_children_waits(&self, limit: u64) -> Result<Vec<String>> {
        self.read("settled_children_waits", move |conn| {
            ops::settled_children_waits(conn, limit)
        })
        .await
    }

    async fn children_to_cancel(
        &self,
        cancelled_since: Timestamp,
        limit: u64,
    ) -> Result<Vec<String>> {
        self.read("children_to_cancel", move |conn| {
            ops::children_to_cancel(conn, cancelled_since, limit)
        })
        .await
    }

    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool> {
        let fence = fence.clone();
        self.write_continuing("update_progress", move |conn| {
            ops::update_progress(conn, &fence, progress.as_ref(), now)
        })
        .await
    }

    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>> {
        let fence = fence.cloned();
        self.write_continuing("append_log", move |conn| {
            ops::append_log(conn, fence.as_ref(), log, now)
        })
        .await
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> Result<Finished> {
        let (fence, next) = (fence.clone(), then_claim.cloned());
        let drop_steps = !self.preserve_steps;
        let operation = match (&transition, &next) {
            (Transition::Complete { .. }, None) => "complete_run",
            (Transition::Complete { .. }, Some(_)) => "complete_run_and_claim",
            (Transition::Fail { .. }, None) => "fail_run",
            (Transition::Fail { .. }, Some(_)) => "fail_run_and_claim",
            (Transition::Wait { .. }, None) => "suspend_run",
            (Transition::Wait { .. }, Some(_)) => "suspend_run_and_claim",
        };
        // A hand-off usually claims a run whose first step follows at once.
        let kind = match next.as_ref().map_or(0, |next| next.max) {
            // A suspension may refuse its wait after the lock: in its own savepoint.
            _ if matches!(transition, Transition::Wait { .. }) => WriteKind::ISOLATED,
            0 => WriteKind::PLAIN,
            _ => WriteKind::CONTINUING,
        };
        self.queue_write(operation, kind, move |conn| {
            let landed = ops::finish_run(conn, &fence, &transition, now, drop_steps)?;
            let claimed = match next {
                Some(next) if next.max > 0 => ops::claim(conn, &next, now)?,
                _ => Vec::new(),
            };
            Ok(Finished { landed, claimed })
        })
        .await
    }

    async fn cancel_run(&self, id: &str, now: Timestamp) -> Result<bool> {
        let id = id.to_owned();
        let drop_steps = !self.preserve_steps;
        self.write("cancel_run", move |conn| {
            ops::cancel_run(conn, &id, now, drop_steps)
        })
        .await
    }

    async fn resume_run(&self, id: &str, now: Timestamp) -> Result<Run> {
        let id = id.to_owned();
        self.write_isolated("resume_run", move |conn| ops::resume_run(conn, &id, now))
            .await
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write_isolated("delete_run", move |conn| ops::delete_run(conn, &id))
            .await
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        self.write_isolated("purge_runs", move |conn| {
            ops::purge_runs(conn, older_than, limit)
        })
        .await
    }

    async fn release_expired_leases(&self, now: Timestamp) -> Result<Vec<Run>> {
        let drop_steps = !self.preserve_steps;
        self.write_isolated("release_expired_leases", move |conn| {
            ops::release_expired_leases(conn, now, drop_steps)
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

    fn admin(&self) -> Option<&dyn RunAdmin> {
        Some(self)
    }

    fn keeps_schedules(&self) -> bool {
        true
    }

    async fn upsert_schedule(
        &self,
        record: crate::schedules::ScheduleRecord,
        now: Timestamp,
    ) -> Result<crate::schedules::ScheduleRecord> {
        self.write("upsert_schedule", move |conn| {
            schedules::upsert(conn, &record, now)
        })
        .await
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<crate::schedules::ScheduleRecord>> {
        let name = name.to_owned();
        self.read("get_schedule", move |conn| schedules::get(conn, &name))
            .await
    }

    async fn list_schedules(&self) -> Result<Vec<crate::schedules::ScheduleRecord>> {
        self.read("list_schedules", schedules::list).await
    }

    async fn due_schedules(
        &self,
        now: Timestamp,
        limit: u64,
    ) -> Result<Vec<crate::schedules::ScheduleRecord>> {
        self.read("due_schedules", move |conn| {
            schedules::due(conn, now, limit)
        })
        .await
    }

    async fn pause_schedule(
        &self,
        name: &str,
        now: Timestamp,
    ) -> Result<Option<crate::schedules::ScheduleRecord>> {
        let name = name.to_owned();
        self.write("pause_schedule", move |conn| {
            schedules::pause(conn, &name, now)
        })
        .await
    }

    async fn resume_schedule(
        &self,
        name: &str,
        next_fire_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<crate::schedules::ScheduleRecord>> {
        let name = name.to_owned();
        self.write("resume_schedule", move |conn| {
            schedules::resume(conn, &name, next_fire_at, now)
        })
        .await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write("delete_schedule", move |conn| {
            schedules::delete(conn, &name)
        })
        .await
    }

    async fn fire_schedule(
        &self,
        firing: crate::schedules::ScheduleFiring,
        now: Timestamp,
    ) -> Result<Option<Vec<Enqueued>>> {
        self.write_isolated("fire_schedule", move |conn| {
            schedules::fire(conn, &firing, now)
        })
        .await
    }

    fn maintenance_tasks(&self) -> Vec<Arc<dyn MaintenanceTask>> {
        vec![Arc::new(WalCheckpoint(self.clone()))]
    }
}

#[async_trait]
impl RunAdmin for SqliteStore {
    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool> {
        let id = id.to_owned();
        self.write("update_run", move |conn| {
            ops::update_run(conn, &id, &patch, now)
        })
        .await
    }
}

/// Truncates the write-ahead log while the worker is idle, at most once a minute (30 s after
/// one that found the database busy): the WAL of a busy queue otherwise only ever grows to
/// its autocheckpoint size and stays there.
struct WalCheckpoint(SqliteStore);

#[async_trait]
impl MaintenanceTask for WalCheckpoint {
    fn name(&self) -> &'static str {
        "wal-checkpoint"
    }

    fn every(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn after_busy(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn error_context(&self) -> &'static str {
        "wal-checkpoint"
    }

    async fn run(&self) -> Result<Maintained> {
        Ok(match self.0.checkpoint().await? {
            true => Maintained::Done,
            false => Maintained::Busy,
        })
    }
}

impl SqliteStore {
    /// Truncates the write-ahead log (`wal_checkpoint(TRUNCATE)`) without waiting for readers.
    /// `Ok(false)` when it could not finish because the database was busy (readers or a
    /// writer in the way). An idle worker calls it at most once a minute.
    pub async fn checkpoint(&self) -> Result<bool> {
        let Some(readers) = &self.shared.readers else {
            return Ok(true); // in-memory: no WAL
        };
        let busy_timeout = readers.options.busy_timeout;
        self.direct("checkpoint", move |conn| {
            // Never waits for readers, since every write waits for the writer thread meanwhile:
            // with readers in the way it copies what it can (as `PASSIVE` does) and reports busy.
            // One row: (busy, WAL frames, frames checkpointed).
            let checkpoint = conn.busy_timeout(Duration::ZERO).and_then(|()| {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    row.get::<_, i64>(0)
                })
            });
            let restored = conn.busy_timeout(busy_timeout);
            let busy = checkpoint.map_err(|e| Error::storage("checkpoint", e))?;
            restored.map_err(|e| Error::storage("checkpoint", e))?;
            Ok(busy == 0)
        })
        .await
    }
}
