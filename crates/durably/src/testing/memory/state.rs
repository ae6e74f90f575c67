//! The memory store's operations on its state, each under the one lock ([`MemoryStore`]).

use super::*;

impl State {
    pub(super) fn run(&self, id: &str) -> Option<&Run> {
        self.ids.get(id).and_then(|seq| self.runs.get(seq))
    }

    pub(super) fn run_mut(&mut self, id: &str) -> Option<&mut Run> {
        self.ids.get(id).and_then(|seq| self.runs.get_mut(seq))
    }

    /// The run `fence` names, while the fence holds.
    pub(super) fn fenced_mut(&mut self, fence: &Fence) -> Option<&mut Run> {
        self.run_mut(&fence.run_id)
            .filter(|run| fenced(run, fence.generation))
    }

    /// The oldest pending run of `job_name` with concurrency key `key`.
    pub(super) fn oldest_pending_with_key(&self, job_name: &str, key: &str) -> Option<&Run> {
        self.runs
            .values()
            .filter(|run| {
                run.status == RunStatus::Pending
                    && run.job_name == job_name
                    && run.concurrency_key.as_deref() == Some(key)
            })
            .min_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
    }

    /// The run `coalesce: active` reuses (upstream v4 §7.1): the oldest pending run of the job
    /// and key, else the oldest one leased past `now`, else the oldest waiting one.
    pub(super) fn active_with_key(
        &self,
        job_name: &str,
        key: &str,
        now: Timestamp,
    ) -> Option<&Run> {
        let oldest = |wanted: &dyn Fn(&Run) -> bool| {
            self.runs
                .values()
                .filter(|run| {
                    run.job_name == job_name
                        && run.concurrency_key.as_deref() == Some(key)
                        && wanted(run)
                })
                .min_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
        };
        oldest(&|run| run.status == RunStatus::Pending)
            .or_else(|| oldest(&|run| unexpired_lease(run, now)))
            .or_else(|| oldest(&|run| run.status == RunStatus::Waiting))
    }

    pub(super) fn has_pending_with_key(&self, job_name: &str, key: &str, except: &str) -> bool {
        self.runs.values().any(|run| {
            run.status == RunStatus::Pending
                && run.job_name == job_name
                && run.concurrency_key.as_deref() == Some(key)
                && run.id != except
        })
    }

    /// Upstream §5.5: idempotency first, then label keys, then the pending-per-key rule.
    pub(super) fn enqueue(&mut self, request: &NewRun, now: Timestamp) -> Result<Enqueued> {
        if let Some(key) = &request.idempotency_key
            && let Some(run) = self.runs.values().find(|run| {
                run.job_name == request.job_name && run.idempotency_key.as_ref() == Some(key)
            })
        {
            return Ok(Enqueued {
                run: run.clone(),
                disposition: Disposition::Idempotent,
            });
        }
        for key in request.labels.keys() {
            validate_label_key(key)?;
        }
        // A delayed run is not pending: neither the pending-per-key rule nor coalescing applies.
        let delayed = request.start_at.filter(|at| *at > now);
        if let (Some(debounce), Some(start_at)) = (&request.debounce, delayed)
            && let Some(run) = self.debounce_onto(request, &debounce.key, start_at, now)
        {
            return Ok(Enqueued {
                run,
                disposition: Disposition::Debounced,
            });
        }
        if let Some(key) = &request.concurrency_key
            && delayed.is_none()
            && let Some(existing) = match request.coalesce {
                Some(Coalesce::Active) => self.active_with_key(&request.job_name, key, now),
                _ => self.oldest_pending_with_key(&request.job_name, key),
            }
        {
            return match request.coalesce {
                Some(_) => Ok(Enqueued {
                    run: existing.clone(),
                    disposition: Disposition::Coalesced,
                }),
                None => Err(pending_conflict(&request.job_name, key)),
            };
        }
        let mut run = pending_run(new_id_at(now), request, now);
        if let Some(start_at) = delayed {
            let wait = DurableWait {
                id: new_id_at(now),
                run_id: run.id.clone(),
                name: crate::store::DELAY_WAIT.to_owned(),
                metadata: Some(crate::store::new_delay_metadata(request, now)),
                status: WaitStatus::Pending,
                payload: None,
                signal_id: None,
                created_at: now,
                deadline_at: Some(start_at),
                outcome: None,
                suspended_at: Some(now),
                resolved_at: None,
                first_resumed_at: None,
                input_wait_ms: None,
                execution_slot_wait_ms: None,
            };
            run = crate::store::delayed_run(run, wait.id.clone());
            self.waits.insert(wait.id.clone(), wait);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ids.insert(run.id.clone(), seq);
        self.runs.insert(seq, run.clone());
        Ok(Enqueued {
            run,
            disposition: Disposition::Created,
        })
    }

    /// See `NewRun::debounce`: the run of the job and key still waiting for its start takes
    /// the request's input, its start moved to `start_at` (not beyond its bound).
    pub(super) fn debounce_onto(
        &mut self,
        request: &NewRun,
        key: &str,
        start_at: Timestamp,
        now: Timestamp,
    ) -> Option<Run> {
        let (seq, wait_id) = self
            .runs
            .iter()
            .filter(|(_, run)| run.job_name == request.job_name && run.status == RunStatus::Waiting)
            .find_map(|(seq, run)| {
                let wait = self.waits.get(run.waiting_on_wait_id.as_deref()?)?;
                let debounced = wait.status == WaitStatus::Pending
                    && wait.name == crate::store::DELAY_WAIT
                    && wait.metadata.as_ref()?["durably"]["debounce"]["key"].as_str() == Some(key);
                debounced.then(|| (*seq, wait.id.clone()))
            })?;
        let wait = self.waits.get_mut(&wait_id)?;
        wait.deadline_at = Some(crate::store::debounced_start(
            wait.metadata.as_ref(),
            start_at,
        ));
        let run = self.runs.get_mut(&seq)?;
        run.input = request.input.clone();
        run.updated_at = now;
        Some(run.clone())
    }

    /// Removes a run and everything it owns.
    pub(super) fn remove(&mut self, id: &str) {
        if let Some(seq) = self.ids.remove(id) {
            self.runs.remove(&seq);
        }
        self.attempts.remove(id);
        self.waits.retain(|_, wait| wait.run_id != id);
        self.resume_claimed_at.remove(id);
        self.steps.remove(id);
        self.logs.remove(id);
    }

    /// The first claimable run's sequence in claim order (higher priority, then older, then
    /// inserted earlier): pending (or, when `expired_leases`, leased with an
    /// expired lease) and its concurrency key not held by another unexpired lease.
    pub(super) fn next_claimable(
        &self,
        now: Timestamp,
        expired_leases: bool,
        resume: bool,
    ) -> Option<u64> {
        let held: HashSet<&str> = self
            .runs
            .values()
            .filter(|run| unexpired_lease(run, now))
            .filter_map(|run| run.concurrency_key.as_deref())
            .collect();
        self.runs
            .iter()
            .filter(|(_, run)| {
                run.status == RunStatus::Pending
                    || (expired_leases && expired_lease(run, now))
                    || (resume && self.resumable(run))
            })
            // A candidate never holds an unexpired lease itself, so any holder is another run.
            .filter(|(_, run)| {
                run.concurrency_key
                    .as_deref()
                    .is_none_or(|key| !held.contains(key))
            })
            .min_by_key(|(seq, run)| (std::cmp::Reverse(run.priority), run.created_at, **seq))
            .map(|(seq, _)| *seq)
    }

    pub(super) fn claim(
        &mut self,
        worker_id: &str,
        now: Timestamp,
        lease: Duration,
        max: usize,
        resume: bool,
    ) -> Vec<Run> {
        let expires = now + lease;
        // Claiming never makes another lease expire, so one check serves the whole claim.
        let expired_leases = self.runs.values().any(|run| expired_lease(run, now));
        let mut claimed = Vec::new();
        while claimed.len() < max {
            let Some(seq) = self.next_claimable(now, expired_leases, resume) else {
                break;
            };
            let Some(run) = self.runs.get_mut(&seq) else {
                break;
            };
            if run.status == RunStatus::Waiting {
                self.resume_claimed_at.entry(run.id.clone()).or_insert(now);
            }
            run.status = RunStatus::Leased;
            run.lease_owner = Some(worker_id.to_owned());
            run.lease_expires_at = Some(expires);
            run.lease_generation += 1;
            run.started_at = run.started_at.or(Some(now));
            run.updated_at = now;
            let run = run.clone();
            if let (Some(wait_id), Some(resumed)) = (
                run.waiting_on_wait_id.as_deref(),
                self.resume_claimed_at.get(&run.id).copied(),
            ) && let Some(wait) = self.waits.get_mut(wait_id)
                && wait.status == WaitStatus::Resolved
                && wait.first_resumed_at.is_none()
            {
                wait.first_resumed_at = Some(resumed);
            }
            claimed.push(run);
        }
        claimed
    }

    /// Whether `run` waits on a wait that is resolved (claimable, v4 §3.3).
    pub(super) fn resumable(&self, run: &Run) -> bool {
        run.status == RunStatus::Waiting
            && run
                .waiting_on_wait_id
                .as_deref()
                .and_then(|id| self.waits.get(id))
                .is_some_and(|wait| wait.status == WaitStatus::Resolved)
    }

    /// Whether `run_id` has ever prepared a wait.
    pub(super) fn has_waits(&self, run_id: &str) -> bool {
        self.waits.values().any(|wait| wait.run_id == run_id)
    }

    /// Ends the pending waits of a run that ends (`cancelled` or `closed`) at `now`.
    pub(super) fn end_waits(&mut self, run_id: &str, status: WaitStatus, now: Timestamp) {
        for wait in self.waits.values_mut() {
            if wait.run_id == run_id && wait.status == WaitStatus::Pending {
                wait.status = status;
                wait.resolved_at = Some(now);
            }
        }
    }

    /// The run `fence` names while the fence holds and its lease is unexpired at `now`.
    pub(super) fn live_lease(&self, fence: &Fence, now: Timestamp) -> bool {
        self.run(&fence.run_id)
            .is_some_and(|run| fenced(run, fence.generation) && unexpired_lease(run, now))
    }

    /// Resolves `wait_id` as a timeout if it is pending and overdue at `now`.
    pub(super) fn expire_if_overdue(&mut self, wait_id: &str, now: Timestamp) -> bool {
        match self.waits.get_mut(wait_id) {
            Some(wait) if waits::overdue(wait.status, wait.deadline_at, now) => {
                time_out(wait);
                true
            }
            _ => false,
        }
    }

    /// Suspends the fenced run on `wait_id` ([`Transition::Wait`]).
    pub(super) fn suspend(&mut self, fence: &Fence, wait_id: &str, now: Timestamp) -> Result<bool> {
        if !self.live_lease(fence, now) {
            return Ok(false);
        }
        match self.waits.get(wait_id) {
            Some(wait)
                if wait.run_id == fence.run_id
                    && matches!(wait.status, WaitStatus::Pending | WaitStatus::Resolved) => {}
            _ => return Err(waits::not_available()),
        }
        self.expire_if_overdue(wait_id, now);
        if let Some(wait) = self.waits.get_mut(wait_id) {
            wait.suspended_at = wait.suspended_at.or(Some(now));
        }
        self.resume_claimed_at.remove(&fence.run_id);
        let Some(run) = self.run_mut(&fence.run_id) else {
            return Ok(false);
        };
        run.status = RunStatus::Waiting;
        run.waiting_on_wait_id = Some(wait_id.to_owned());
        run.lease_owner = None;
        run.lease_expires_at = None;
        run.updated_at = now;
        Ok(true)
    }

    /// Drops a run's step rows unless the store preserves them.
    pub(super) fn drop_steps(&mut self, run_id: &str, preserve_steps: bool) {
        if !preserve_steps {
            self.steps.remove(run_id);
        }
    }

    pub(super) fn finish_run(
        &mut self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        preserve_steps: bool,
    ) -> bool {
        let Some(run) = self.fenced_mut(fence) else {
            return false;
        };
        match transition {
            Transition::Complete { output } => {
                run.output = output.filter(|o| !o.is_null());
                run.error = None;
                end(run, RunStatus::Completed, now);
            }
            Transition::Fail { error } => {
                run.error = Some(error);
                end(run, RunStatus::Failed, now);
            }
            // Handled by `suspend`.
            Transition::Wait { .. } => return false,
        }
        self.end_waits(&fence.run_id, WaitStatus::Closed, now);
        // A failed run keeps its steps for a resume (`Store::resume_run`).
        let failed = self
            .run(&fence.run_id)
            .is_some_and(|run| run.status == RunStatus::Failed);
        if !failed {
            self.drop_steps(&fence.run_id, preserve_steps);
        }
        true
    }

    pub(super) fn release_expired_leases(
        &mut self,
        now: Timestamp,
        preserve_steps: bool,
    ) -> Vec<Run> {
        // Phase 1: an expired lease cannot go back to pending when its job+key already has a
        // pending run, or an older expired lease of the same job+key goes back instead (the
        // pending-per-key rule allows one): fail it.
        let blocked: Vec<u64> = self
            .runs
            .iter()
            .filter(|(_, run)| expired_lease(run, now) && !self.has_waits(&run.id))
            .filter(|(_, run)| {
                let Some(key) = run.concurrency_key.as_deref() else {
                    return false;
                };
                self.has_pending_with_key(&run.job_name, key, &run.id)
                    || self.runs.values().any(|older| {
                        expired_lease(older, now)
                            && !self.has_waits(&older.id)
                            && older.job_name == run.job_name
                            && older.concurrency_key.as_deref() == Some(key)
                            && (older.created_at, &older.id) < (run.created_at, &run.id)
                    })
            })
            .map(|(seq, _)| *seq)
            .collect();
        let mut changed = Vec::new();
        for seq in blocked {
            if let Some(run) = self.runs.get_mut(&seq) {
                run.error = Some(LEASE_EXPIRED_PENDING_EXISTS.to_owned());
                end(run, RunStatus::Failed, now);
                changed.push(run.clone());
            }
        }
        for run in &changed {
            self.drop_steps(&run.id, preserve_steps);
        }
        // Phase 2: the rest go back to pending.
        let waited: HashSet<String> = self.waits.values().map(|w| w.run_id.clone()).collect();
        for run in self.runs.values_mut() {
            if expired_lease(run, now) && !waited.contains(&run.id) {
                run.status = RunStatus::Pending;
                run.lease_owner = None;
                run.lease_expires_at = None;
                run.updated_at = now;
                changed.push(run.clone());
            }
        }
        changed
    }
}
