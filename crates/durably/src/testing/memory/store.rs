//! [`Store`] and [`RunAdmin`] for [`MemoryStore`]: each call takes the lock and applies one
//! operation of `state.rs`.

use super::*;

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn migrate(&self) -> Result<()> {
        self.lock().migrated = true;
        Ok(())
    }

    async fn schema_version(&self) -> Result<i64> {
        Ok(match self.lock().migrated {
            true => SCHEMA_VERSION,
            false => 0,
        })
    }

    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued> {
        self.lock().enqueue(&run, now)
    }

    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(Enqueued, Vec<Run>)> {
        let mut state = self.lock();
        let enqueued = state.enqueue(&run, now)?;
        let claimed = match (next.max, enqueued.disposition) {
            (max, Disposition::Created) if max > 0 => {
                state.claim(&next.worker_id, now, next.lease, max, next.resume_waiting)
            }
            _ => Vec::new(),
        };
        Ok((enqueued, claimed))
    }

    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>> {
        let mut state = self.lock();
        let mut done: Vec<Enqueued> = Vec::with_capacity(runs.len());
        for run in &runs {
            match state.enqueue(run, now) {
                Ok(enqueued) => done.push(enqueued),
                Err(error) => {
                    // All or nothing: undo the runs this batch created.
                    for enqueued in &done {
                        if enqueued.disposition == Disposition::Created {
                            state.remove(&enqueued.run.id);
                        }
                    }
                    return Err(error);
                }
            }
        }
        Ok(done)
    }

    async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        Ok(self.lock().run(id).cloned())
    }

    async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        for key in filter.labels.keys() {
            validate_label_key(key)?;
        }
        let state = self.lock();
        let mut runs: Vec<&Run> = state
            .runs
            .values()
            .filter(|run| filter.statuses.is_empty() || filter.statuses.contains(&run.status))
            .filter(|run| filter.job_names.is_empty() || filter.job_names.contains(&run.job_name))
            .filter(|run| {
                filter.parent_run_id.is_none() || run.parent_run_id == filter.parent_run_id
            })
            .filter(|run| {
                filter
                    .id_prefix
                    .as_deref()
                    .is_none_or(|prefix| run.id.starts_with(prefix))
            })
            .filter(|run| {
                filter
                    .created_since
                    .is_none_or(|since| run.created_at >= since)
            })
            .filter(|run| {
                filter
                    .created_before
                    .is_none_or(|before| run.created_at < before)
            })
            .filter(|run| {
                filter
                    .labels
                    .iter()
                    .all(|(key, value)| run.labels.get(key) == Some(value))
            })
            .collect();
        runs.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        let offset = usize::try_from(filter.offset.unwrap_or(0)).unwrap_or(usize::MAX);
        let limit = filter
            .limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        Ok(runs.into_iter().skip(offset).take(limit).cloned().collect())
    }

    async fn run_overview(
        &self,
        now: Timestamp,
        window: crate::overview::OverviewWindow,
    ) -> Result<crate::overview::Overview> {
        use crate::overview::{EndedGroup, EndedRun, OVERVIEW_SAMPLE};
        let state = self.lock();
        let since = window.start(now);
        let mut rows = state.count_rows();
        let mut groups: BTreeMap<(String, String, &'static str), i64> = BTreeMap::new();
        let mut ended: Vec<&Run> = Vec::new();
        for run in state.runs.values() {
            let Some(completed_at) = run.completed_at else {
                continue;
            };
            if matches!(run.status, RunStatus::Completed | RunStatus::Failed)
                && completed_at >= since
            {
                let key = (
                    run.job_name.clone(),
                    window.key_of(completed_at),
                    run.status.as_str(),
                );
                *groups.entry(key).or_default() += 1;
                ended.push(run);
            }
        }
        ended.sort_by_key(|run| std::cmp::Reverse(run.completed_at));
        ended.truncate(OVERVIEW_SAMPLE as usize);
        rows.ended = groups
            .into_iter()
            .map(|((job_name, bucket, status), count)| EndedGroup {
                job_name,
                bucket,
                status: status.to_owned(),
                count,
            })
            .collect();
        rows.sample = ended
            .into_iter()
            .map(|run| EndedRun {
                job_name: run.job_name.clone(),
                created_at: run.created_at,
                started_at: run.started_at,
                completed_at: run.completed_at.unwrap_or(run.created_at),
                delay_end: state
                    .waits
                    .values()
                    .find(|w| w.run_id == run.id && w.name == crate::store::DELAY_WAIT)
                    .and_then(|w| w.resolved_at.or(w.deadline_at)),
            })
            .collect();
        Ok(rows.assemble(now, window))
    }

    async fn run_counts(&self, now: Timestamp) -> Result<crate::overview::RunCounts> {
        Ok(self.lock().count_rows().counts(now))
    }

    async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        let mut steps = self.lock().steps.get(run_id).cloned().unwrap_or_default();
        steps.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
        Ok(steps)
    }

    async fn get_completed_step(&self, run_id: &str, name: &str) -> Result<Option<Step>> {
        Ok(self.lock().steps.get(run_id).and_then(|steps| {
            steps
                .iter()
                .find(|step| step.status == StepStatus::Completed && step.name == name)
                .cloned()
        }))
    }

    async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        let mut logs = self.lock().logs.get(run_id).cloned().unwrap_or_default();
        logs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(logs)
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Run>> {
        Ok(self.lock().claim(
            &request.worker_id,
            now,
            request.lease,
            request.max,
            request.resume_waiting,
        ))
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        let mut state = self.lock();
        let Some(run) = state
            .fenced_mut(fence)
            .filter(|run| unexpired_lease(run, now))
        else {
            return Ok(None);
        };
        let expires = now + lease;
        run.lease_expires_at = Some(expires);
        run.updated_at = now;
        Ok(Some(expires))
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        let Some(run) = state
            .run(&fence.run_id)
            .filter(|r| fenced(r, fence.generation))
        else {
            return Ok(false);
        };
        if let Some(key) = run.concurrency_key.as_deref()
            && state.has_pending_with_key(&run.job_name, key, &run.id)
        {
            return Ok(false);
        }
        let Some(run) = state.run_mut(&fence.run_id) else {
            return Ok(false);
        };
        run.status = RunStatus::Pending;
        run.lease_owner = None;
        run.lease_expires_at = None;
        run.updated_at = now;
        Ok(true)
    }

    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>> {
        let mut state = self.lock();
        if state.fenced_mut(fence).is_none() {
            return Ok(None);
        }
        let steps = state.steps.entry(fence.run_id.clone()).or_default();
        if step.status == StepStatus::Completed
            && steps
                .iter()
                .any(|s| s.status == StepStatus::Completed && s.name == step.name)
        {
            return Err(Error::Conflict(format!(
                "Step \"{}\" of run {} is already completed",
                step.name, fence.run_id
            )));
        }
        if let Some(attempt) = &step.attempt {
            let attempts = state.attempts.entry(fence.run_id.clone()).or_default();
            let status = AttemptStatus::of_step(step.status);
            if attempt.begun {
                let Some(row) = attempts.iter_mut().find(|a| {
                    a.id == attempt.id
                        && a.lease_generation == fence.generation
                        && a.status == AttemptStatus::Started
                }) else {
                    return Ok(None);
                };
                row.status = status;
                row.error = step.error.clone();
                row.completed_at = Some(now);
            } else {
                attempts.push(StepAttempt {
                    id: attempt.id.clone(),
                    run_id: fence.run_id.clone(),
                    step_name: step.name.clone(),
                    step_index: step.index,
                    lease_generation: fence.generation,
                    status,
                    metadata: attempt.metadata.clone(),
                    started_at: step.started_at,
                    completed_at: Some(now),
                    error: step.error.clone(),
                    interruption_reason: None,
                });
            }
        }
        let steps = state.steps.entry(fence.run_id.clone()).or_default();
        let row = Step {
            id: new_id_at(now),
            run_id: fence.run_id.clone(),
            name: step.name,
            index: step.index,
            status: step.status,
            output: step.output.filter(|o| !o.is_null()),
            error: step.error,
            started_at: step.started_at,
            completed_at: Some(now),
        };
        steps.push(row.clone());
        if row.status == StepStatus::Completed
            && let Some(run) = state.fenced_mut(fence)
        {
            run.current_step_index = row.index + 1;
            run.completed_step_count += 1;
            run.updated_at = now;
        }
        Ok(Some(row))
    }

    async fn begin_step_attempt(
        &self,
        fence: &Fence,
        attempt: AttemptStart,
        now: Timestamp,
    ) -> Result<bool> {
        let mut state = self.lock();
        match state.fenced_mut(fence) {
            Some(run) if unexpired_lease(run, now) => {}
            _ => return Ok(false),
        }
        state
            .attempts
            .entry(fence.run_id.clone())
            .or_default()
            .push(StepAttempt {
                id: attempt.id,
                run_id: fence.run_id.clone(),
                step_name: attempt.step_name,
                step_index: attempt.step_index,
                lease_generation: fence.generation,
                status: AttemptStatus::Started,
                metadata: attempt.metadata,
                started_at: attempt.started_at,
                completed_at: None,
                error: None,
                interruption_reason: None,
            });
        Ok(true)
    }

    async fn set_step_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<Value>,
        now: Timestamp,
    ) -> Result<bool> {
        let mut state = self.lock();
        match state.fenced_mut(fence) {
            Some(run) if unexpired_lease(run, now) => {}
            _ => return Ok(false),
        }
        let attempt = state.attempts.get_mut(&fence.run_id).and_then(|attempts| {
            attempts.iter_mut().find(|a| {
                a.id == attempt_id
                    && a.lease_generation == fence.generation
                    && a.status == AttemptStatus::Started
            })
        });
        match attempt {
            Some(attempt) => {
                attempt.metadata = metadata;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn get_step_attempts(&self, run_id: &str) -> Result<Vec<StepAttempt>> {
        let state = self.lock();
        let run = state.run(run_id).map(|run| RunFacts {
            status: run.status,
            lease_generation: run.lease_generation,
            error: run.error.as_deref(),
        });
        let mut attempts = state.attempts.get(run_id).cloned().unwrap_or_default();
        attempts.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        for attempt in &mut attempts {
            attempt.interruption_reason =
                interruption_reason(attempt.status, attempt.lease_generation, run.clone());
        }
        Ok(attempts)
    }

    async fn prepare_wait(
        &self,
        fence: &Fence,
        wait: NewWait,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        wait.validate()?;
        let mut state = self.lock();
        if !state.live_lease(fence, now) {
            return Ok(None);
        }
        if let Some(existing) = state
            .waits
            .values()
            .find(|w| w.run_id == fence.run_id && w.name == wait.name)
        {
            return Ok(Some(existing.clone().with_timing(true)));
        }
        let deadline_at = waits::deadline_after(now.as_millis(), wait.timeout_ms)?;
        let metadata = wait
            .metadata
            .map(|m| serde_json::from_str(&canonical_json(&m)).unwrap_or(m));
        let row = DurableWait {
            id: new_id_at(now),
            run_id: fence.run_id.clone(),
            name: wait.name,
            metadata,
            status: WaitStatus::Pending,
            payload: None,
            signal_id: None,
            created_at: now,
            deadline_at,
            outcome: None,
            suspended_at: None,
            resolved_at: None,
            first_resumed_at: None,
            input_wait_ms: None,
            execution_slot_wait_ms: None,
        };
        state.waits.insert(row.id.clone(), row.clone());
        Ok(Some(row.with_timing(true)))
    }

    async fn wait_result(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        let mut state = self.lock();
        if !state.live_lease(fence, now) {
            return Ok(None);
        }
        match state.waits.get(wait_id) {
            Some(wait) if wait.run_id == fence.run_id => {}
            _ => return Err(waits::not_this_runs_wait()),
        }
        state.expire_if_overdue(wait_id, now);
        let Some(wait) = state.waits.get(wait_id) else {
            return Err(waits::not_this_runs_wait());
        };
        match wait.status {
            WaitStatus::Cancelled | WaitStatus::Closed => Err(waits::already_closed(wait_id)),
            _ => Ok(Some(wait.clone().with_timing(true))),
        }
    }

    async fn signal_wait(
        &self,
        wait_id: &str,
        payload: serde_json::Value,
        signal_id: &str,
        now: Timestamp,
    ) -> Result<Signalled> {
        waits::validate_signal_id(signal_id)?;
        let text = canonical_json(&payload);
        let mut state = self.lock();
        let Some(wait) = state.waits.get(wait_id) else {
            return Err(waits::wait_not_found(wait_id));
        };
        let run_terminal = state
            .run(&wait.run_id)
            .is_none_or(|run| run.status.is_terminal());
        let stored = wait.payload.as_ref().map(canonical_json);
        let step = waits::signal_step(
            wait.status,
            wait.outcome,
            wait.signal_id.as_deref(),
            stored.as_deref(),
            signal_id,
            &text,
            run_terminal,
            wait.deadline_at,
            now,
        );
        let Some(wait) = state.waits.get_mut(wait_id) else {
            return Err(waits::wait_not_found(wait_id));
        };
        let disposition = match step {
            SignalStep::Duplicate => SignalDisposition::Duplicate,
            SignalStep::Expired => {
                return Err(Error::WaitExpired {
                    wait_id: wait_id.to_owned(),
                });
            }
            SignalStep::Refused => return Err(waits::cannot_accept(wait_id)),
            SignalStep::TimeOutNow => {
                time_out(wait);
                return Err(Error::WaitExpired {
                    wait_id: wait_id.to_owned(),
                });
            }
            SignalStep::Accept => {
                wait.status = WaitStatus::Resolved;
                wait.outcome = Some(WaitOutcome::Signal);
                wait.payload = Some(serde_json::from_str(&text).unwrap_or(payload));
                wait.signal_id = Some(signal_id.to_owned());
                wait.resolved_at = Some(now);
                SignalDisposition::Accepted
            }
        };
        Ok(Signalled {
            wait: wait.clone().with_timing(true),
            disposition,
        })
    }

    async fn expire_due_waits(&self, now: Timestamp, limit: u64) -> Result<u64> {
        waits::validate_limit(limit)?;
        let mut state = self.lock();
        let mut due: Vec<(Timestamp, String)> = state
            .waits
            .values()
            .filter(|w| waits::overdue(w.status, w.deadline_at, now))
            .filter(|w| {
                state
                    .run(&w.run_id)
                    .is_some_and(|run| !run.status.is_terminal())
            })
            .filter_map(|w| w.deadline_at.map(|d| (d, w.id.clone())))
            .collect();
        due.sort();
        due.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let mut expired = 0;
        for (_, id) in &due {
            if state.expire_if_overdue(id, now) {
                expired += 1;
            }
        }
        Ok(expired)
    }

    async fn get_wait(&self, wait_id: &str) -> Result<Option<DurableWait>> {
        Ok(self
            .lock()
            .waits
            .get(wait_id)
            .map(|w| w.clone().with_timing(true)))
    }

    async fn get_waits(&self, run_id: &str) -> Result<Vec<DurableWait>> {
        let state = self.lock();
        let mut found: Vec<DurableWait> = state
            .waits
            .values()
            .filter(|w| w.run_id == run_id)
            .map(|w| w.clone().with_timing(true))
            .collect();
        found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(found)
    }

    async fn children_settled(&self, _parent_run_id: &str, parent_wait_id: &str) -> Result<bool> {
        let state = self.lock();
        Ok(crate::store::children_settled(
            state
                .runs
                .values()
                .filter(|run| run.parent_wait_id.as_deref() == Some(parent_wait_id))
                .map(|run| run.status),
        ))
    }

    async fn settled_children_waits(&self, limit: u64) -> Result<Vec<String>> {
        let state = self.lock();
        let mut waits: Vec<&DurableWait> = state
            .waits
            .values()
            .filter(|w| {
                w.status == WaitStatus::Pending
                    && w.name.starts_with(crate::store::CHILDREN_WAIT_PREFIX)
                    && w.suspended_at.is_some()
            })
            .filter(|w| {
                crate::store::children_settled(
                    state
                        .runs
                        .values()
                        .filter(|run| run.parent_wait_id.as_deref() == Some(w.id.as_str()))
                        .map(|run| run.status),
                )
            })
            .collect();
        waits.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(waits
            .into_iter()
            .take(limit)
            .map(|w| w.id.clone())
            .collect())
    }

    async fn children_to_cancel(
        &self,
        cancelled_since: Timestamp,
        limit: u64,
    ) -> Result<Vec<String>> {
        let state = self.lock();
        let mut children: Vec<&Run> = state
            .runs
            .values()
            .filter(|run| {
                matches!(
                    run.status,
                    RunStatus::Pending | RunStatus::Leased | RunStatus::Waiting
                )
            })
            .filter(|run| {
                run.parent_run_id
                    .as_ref()
                    .and_then(|parent| state.ids.get(parent))
                    .and_then(|seq| state.runs.get(seq))
                    .is_some_and(|parent| {
                        parent.status == RunStatus::Cancelled
                            && parent.completed_at.is_some_and(|at| at >= cancelled_since)
                    })
            })
            .filter(|run| {
                let wait = run
                    .parent_wait_id
                    .as_ref()
                    .and_then(|id| state.waits.get(id));
                crate::children::cancels_with_parent(wait.and_then(|w| w.metadata.as_ref()))
            })
            .collect();
        children.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(children
            .into_iter()
            .take(limit)
            .map(|run| run.id.clone())
            .collect())
    }

    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool> {
        let mut state = self.lock();
        let Some(run) = state.fenced_mut(fence) else {
            return Ok(false);
        };
        run.progress = progress;
        run.updated_at = now;
        Ok(true)
    }

    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>> {
        let mut state = self.lock();
        // As in SQL: the fence's generation checked on the run the log names.
        if let Some(fence) = fence
            && !state
                .run(&log.run_id)
                .is_some_and(|run| fenced(run, fence.generation))
        {
            return Ok(None);
        }
        let row = Log {
            id: new_id_at(now),
            run_id: log.run_id,
            step_name: log.step_name,
            level: log.level,
            message: log.message,
            data: log.data.filter(|d| !d.is_null()),
            created_at: now,
        };
        state
            .logs
            .entry(row.run_id.clone())
            .or_default()
            .push(row.clone());
        Ok(Some(row))
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> Result<Finished> {
        let mut state = self.lock();
        let landed = match &transition {
            Transition::Wait { wait_id } => state.suspend(fence, wait_id, now)?,
            _ => state.finish_run(fence, transition, now, self.preserve_steps),
        };
        let claimed = match then_claim {
            Some(next) if next.max > 0 => state.claim(
                &next.worker_id,
                now,
                next.lease,
                next.max,
                next.resume_waiting,
            ),
            _ => Vec::new(),
        };
        Ok(Finished { landed, claimed })
    }

    async fn cancel_run(&self, id: &str, now: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        let Some(run) = state.run_mut(id).filter(|run| {
            matches!(
                run.status,
                RunStatus::Pending | RunStatus::Leased | RunStatus::Waiting
            )
        }) else {
            return Ok(false);
        };
        end(run, RunStatus::Cancelled, now);
        state.end_waits(id, WaitStatus::Cancelled, now);
        state.drop_steps(id, self.preserve_steps);
        Ok(true)
    }

    async fn resume_run(&self, id: &str, now: Timestamp) -> Result<Run> {
        let mut state = self.lock();
        let Some(run) = state.run(id) else {
            return Err(resume_not_found(id));
        };
        if run.status != RunStatus::Failed {
            return Err(resume_not_failed(id, run.status));
        }
        if let Some(key) = &run.concurrency_key
            && state.has_pending_with_key(&run.job_name, key, id)
        {
            return Err(resume_key_taken(id, &run.job_name, key));
        }
        let Some(run) = state.run_mut(id) else {
            return Err(resume_not_found(id));
        };
        run.status = RunStatus::Pending;
        run.error = None;
        run.completed_at = None;
        run.lease_owner = None;
        run.lease_expires_at = None;
        run.updated_at = now;
        let resumed = run.clone();
        for wait in state.waits.values_mut() {
            if wait.run_id == id && wait.status == WaitStatus::Closed {
                wait.status = WaitStatus::Pending;
                wait.resolved_at = None;
            }
        }
        Ok(resumed)
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        let mut state = self.lock();
        let terminal = state.run(id).is_some_and(|run| run.status.is_terminal());
        if terminal {
            state.remove(id);
        }
        Ok(terminal)
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        let mut state = self.lock();
        let mut ended: Vec<(Timestamp, String)> = state
            .runs
            .values()
            .filter(|run| run.status.is_terminal())
            .filter_map(|run| {
                run.completed_at
                    .filter(|at| *at < older_than)
                    .map(|at| (at, run.id.clone()))
            })
            .collect();
        ended.sort();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        ended.truncate(limit);
        for (_, id) in &ended {
            state.remove(id);
        }
        Ok(ended.len() as u64)
    }

    async fn release_expired_leases(&self, now: Timestamp) -> Result<Vec<Run>> {
        Ok(self.lock().release_expired_leases(now, self.preserve_steps))
    }

    fn preserves_steps(&self) -> bool {
        self.preserve_steps
    }

    fn with_step_policy(&self, preserve_steps: bool) -> Option<Arc<dyn Store>> {
        Some(Arc::new(MemoryStore {
            state: self.state.clone(),
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
        let mut state = self.lock();
        let stored = match state.schedules.remove(&record.name) {
            Some(old) => crate::schedules::ScheduleRecord {
                next_fire_at: match old.cron == record.cron && old.time_zone == record.time_zone {
                    true => old.next_fire_at,
                    false => record.next_fire_at,
                },
                paused: old.paused,
                last_fired_at: old.last_fired_at,
                created_at: old.created_at,
                updated_at: now,
                ..record
            },
            None => crate::schedules::ScheduleRecord {
                paused: false,
                last_fired_at: None,
                created_at: now,
                updated_at: now,
                ..record
            },
        };
        state.schedules.insert(stored.name.clone(), stored.clone());
        Ok(stored)
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<crate::schedules::ScheduleRecord>> {
        Ok(self.lock().schedules.get(name).cloned())
    }

    async fn list_schedules(&self) -> Result<Vec<crate::schedules::ScheduleRecord>> {
        Ok(self.lock().schedules.values().cloned().collect())
    }

    async fn due_schedules(
        &self,
        now: Timestamp,
        limit: u64,
    ) -> Result<Vec<crate::schedules::ScheduleRecord>> {
        let mut due: Vec<_> = self
            .lock()
            .schedules
            .values()
            .filter(|s| !s.paused && s.next_fire_at <= now)
            .cloned()
            .collect();
        due.sort_by(|a, b| (a.next_fire_at, &a.name).cmp(&(b.next_fire_at, &b.name)));
        due.truncate(limit.min(usize::MAX as u64) as usize);
        Ok(due)
    }

    async fn pause_schedule(
        &self,
        name: &str,
        now: Timestamp,
    ) -> Result<Option<crate::schedules::ScheduleRecord>> {
        let mut state = self.lock();
        Ok(state.schedules.get_mut(name).map(|schedule| {
            if !schedule.paused {
                schedule.paused = true;
                schedule.updated_at = now;
            }
            schedule.clone()
        }))
    }

    async fn resume_schedule(
        &self,
        name: &str,
        next_fire_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<crate::schedules::ScheduleRecord>> {
        let mut state = self.lock();
        Ok(state.schedules.get_mut(name).map(|schedule| {
            if schedule.paused {
                schedule.paused = false;
                schedule.next_fire_at = next_fire_at;
                schedule.updated_at = now;
            }
            schedule.clone()
        }))
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        Ok(self.lock().schedules.remove(name).is_some())
    }

    async fn fire_schedule(
        &self,
        firing: crate::schedules::ScheduleFiring,
        now: Timestamp,
    ) -> Result<Option<Vec<Enqueued>>> {
        let mut state = self.lock();
        let holds = state
            .schedules
            .get(&firing.name)
            .is_some_and(|s| !s.paused && s.next_fire_at == firing.expected);
        if !holds {
            return Ok(None);
        }
        let mut done: Vec<Enqueued> = Vec::with_capacity(firing.runs.len());
        for run in &firing.runs {
            match state.enqueue(run, now) {
                Ok(enqueued) => done.push(enqueued),
                Err(error) => {
                    for enqueued in &done {
                        if enqueued.disposition == Disposition::Created {
                            state.remove(&enqueued.run.id);
                        }
                    }
                    return Err(error);
                }
            }
        }
        if let Some(schedule) = state.schedules.get_mut(&firing.name) {
            schedule.next_fire_at = firing.next;
            if firing.last_fired.is_some() {
                schedule.last_fired_at = firing.last_fired;
            }
            schedule.updated_at = now;
        }
        Ok(Some(done))
    }

    fn admin(&self) -> Option<&dyn RunAdmin> {
        Some(self)
    }
}

#[async_trait]
impl RunAdmin for MemoryStore {
    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        let Some(run) = state.run(id) else {
            return Ok(false);
        };
        // The pending-per-key rule holds for operators' writes too (SQL: a unique index).
        if patch.status == Some(RunStatus::Pending)
            && run.status != RunStatus::Pending
            && let Some(key) = run.concurrency_key.as_deref()
            && state.has_pending_with_key(&run.job_name, key, &run.id)
        {
            return Err(Error::storage(
                "update_run",
                format!(
                    "another run of job \"{}\" with concurrency key \"{key}\" is pending",
                    run.job_name
                ),
            ));
        }
        let Some(run) = state.run_mut(id) else {
            return Ok(false);
        };
        run.updated_at = now;
        if let Some(status) = patch.status {
            run.status = status;
        }
        if let Some(owner) = patch.lease_owner {
            run.lease_owner = owner;
        }
        if let Some(expires) = patch.lease_expires_at {
            run.lease_expires_at = expires;
        }
        if let Some(progress) = patch.progress {
            run.progress = progress;
        }
        if let Some(error) = patch.error {
            run.error = error;
        }
        if let Some(completed_at) = patch.completed_at {
            run.completed_at = completed_at;
        }
        if let Some(input) = patch.input {
            run.input = input;
        }
        Ok(true)
    }
}
