//! The simulation's trace, and the store wrapper that writes it: one on the engine's side of a
//! worker's faults (what the engine was told: claims and renewals that reached it, runs it let
//! go), one on the store's side (what landed, checked against the run's fence at that instant).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use durably::store::{
    ClaimRequest, Enqueued, Fence, Finished, NewLog, NewRun, NewStep, RunAdmin, StoreNotice,
    Transition,
};
use durably::{
    DurableWait, Log, Progress, Result, Run, RunFilter, RunStatus, SignalDisposition, Step,
    StepStatus, Store, Timestamp, WaitOutcome, WaitStatus,
};

/// The virtual start of every simulation (wall clock, milliseconds since the epoch).
pub const START: i64 = 1_800_000_000_000;

/// Virtual milliseconds since [`START`].
pub fn at() -> i64 {
    Timestamp::now().as_millis() - START
}

/// One thing that happened, in the order it happened (the simulation runs on one thread).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A claim's reply reached worker `worker`'s engine with this run: its lease counts from
    /// `sent` (the claim's `now`), for `lease` ms.
    Claimed {
        worker: usize,
        run: String,
        generation: i64,
        sent: i64,
        lease: i64,
        at: i64,
    },
    /// A renewal's success reached the engine: the lease counts from `sent` now.
    Renewed {
        worker: usize,
        run: String,
        generation: i64,
        sent: i64,
        at: i64,
    },
    /// The engine sent the run's end or gave the run back: it no longer acts on this lease.
    LetGo {
        worker: usize,
        run: String,
        generation: i64,
        at: i64,
    },
    /// A fenced write of `worker` landed in the store.
    Landed {
        worker: usize,
        operation: &'static str,
        run: String,
        generation: i64,
        at: i64,
    },
    /// A cancel landed: from then on nobody holds the run's lease (the run is terminal).
    CancelLanded { run: String, at: i64 },
    /// A completed step's row landed.
    StepCommitted {
        worker: usize,
        run: String,
        step: String,
        at: i64,
    },
    /// A step's closure started on `worker`.
    StepStarted {
        worker: usize,
        run: String,
        step: String,
        at: i64,
    },
    /// The driver triggered a run (`run`: its id when the trigger answered).
    Triggered {
        worker: usize,
        input: u64,
        run: Option<String>,
        at: i64,
    },
    /// The driver asked for a run's cancellation (whatever came of it).
    CancelRequested { worker: usize, run: String, at: i64 },
    /// A wait was first seen resolved in the store (after a store call that may resolve one):
    /// its outcome and payload (`None` for a timeout).
    WaitResolved {
        run: String,
        wait: String,
        outcome: Option<WaitOutcome>,
        payload: Option<String>,
        signal_id: Option<String>,
        at: i64,
    },
    /// A signal landed in the store (its reply may still be lost on the way back).
    SignalLanded {
        worker: usize,
        wait: String,
        signal_id: String,
        duplicate: bool,
        at: i64,
    },
    /// The driver's signaller sent a signal and got this answer (`accepted`, `duplicate`,
    /// `expired`, `conflict`, `fault` or another error's text).
    SignalAnswered {
        worker: usize,
        run: String,
        wait: String,
        signal_id: String,
        payload: u64,
        answer: String,
        at: i64,
    },
    /// `wait_for` returned to the job (`None`: a timeout; else the signal's payload).
    WaitReturned {
        worker: usize,
        run: String,
        wait: String,
        payload: Option<u64>,
        at: i64,
    },
    /// Something that must never happen, seen as it happened.
    Violation(String),
}

/// A wait as last seen in the store: its status and result.
#[derive(Clone, Debug, PartialEq)]
struct WaitSeen {
    status: WaitStatus,
    outcome: Option<WaitOutcome>,
    payload: Option<String>,
    signal_id: Option<String>,
}

/// The trace of one simulation, shared by every probe, job and the driver.
#[derive(Clone, Default)]
pub struct Trace(
    Arc<Mutex<Vec<Event>>>,
    Arc<Mutex<BTreeMap<String, WaitSeen>>>,
);

impl Trace {
    pub fn push(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    /// Compares a wait as the store has it now with how it was last seen: a resolved wait never
    /// changes its result or leaves `resolved`; a cancelled or closed one never changes.
    fn observe(&self, wait: &DurableWait) {
        let seen = WaitSeen {
            status: wait.status,
            outcome: wait.outcome,
            payload: wait.payload.as_ref().map(|payload| payload.to_string()),
            signal_id: wait.signal_id.clone(),
        };
        let before = self.1.lock().unwrap().insert(wait.id.clone(), seen.clone());
        let was = before.as_ref().map(|before| before.status);
        if let Some(before) = &before
            && matches!(
                before.status,
                WaitStatus::Resolved | WaitStatus::Cancelled | WaitStatus::Closed
            )
            && *before != seen
        {
            self.push(Event::Violation(format!(
                "wait {} of run {} changed after it was settled: {before:?} then {seen:?}",
                wait.id, wait.run_id
            )));
        }
        if seen.status == WaitStatus::Resolved && was != Some(WaitStatus::Resolved) {
            self.push(Event::WaitResolved {
                run: wait.run_id.clone(),
                wait: wait.id.clone(),
                outcome: seen.outcome,
                payload: seen.payload,
                signal_id: seen.signal_id,
                at: at(),
            });
        }
    }
}

/// Which side of a worker's faults a probe sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Between the engine and its `FaultyStore`: what the engine sees.
    Engine,
    /// Between the `FaultyStore` and the shared store: what lands.
    Store,
}

/// A store wrapper that records into the trace (see [`Side`]); every call is delegated.
pub struct Probe {
    inner: Arc<dyn Store>,
    side: Side,
    worker: usize,
    worker_id: String,
    trace: Trace,
}

impl Probe {
    pub fn new(inner: Arc<dyn Store>, side: Side, worker: usize, trace: Trace) -> Self {
        Probe {
            inner,
            side,
            worker,
            worker_id: worker_id(worker),
            trace,
        }
    }

    fn claimed(&self, runs: &[Run], sent: Timestamp, lease: Duration) {
        if self.side != Side::Engine {
            return;
        }
        for run in runs {
            self.trace.push(Event::Claimed {
                worker: self.worker,
                run: run.id.clone(),
                generation: run.lease_generation,
                sent: sent.as_millis() - START,
                lease: lease.as_millis() as i64,
                at: at(),
            });
        }
    }

    fn let_go(&self, fence: &Fence) {
        if self.side == Side::Engine {
            self.trace.push(Event::LetGo {
                worker: self.worker,
                run: fence.run_id.clone(),
                generation: fence.generation,
                at: at(),
            });
        }
    }

    /// On the store's side, the run as it is right before a fenced write (the store answers
    /// at once and nothing else runs meanwhile: the same instant as the write).
    async fn before(&self, fence: &Fence) -> Option<Run> {
        match self.side {
            Side::Store => self.inner.get_run(&fence.run_id).await.ok().flatten(),
            Side::Engine => None,
        }
    }

    /// On the store's side, after a call that may change waits: every wait as it stands (see
    /// [`Trace::observe`]), and no waiting run holds a lease.
    async fn observe_waits(&self) {
        if self.side != Side::Store {
            return;
        }
        let Ok(runs) = self.inner.get_runs(&RunFilter::new()).await else {
            return;
        };
        for run in runs {
            if run.status == RunStatus::Waiting
                && (run.lease_owner.is_some() || run.lease_expires_at.is_some())
            {
                self.trace.push(Event::Violation(format!(
                    "run {} is waiting and holds a lease: {:?} until {:?}",
                    run.id, run.lease_owner, run.lease_expires_at
                )));
            }
            for wait in self.inner.get_waits(&run.id).await.unwrap_or_default() {
                self.trace.observe(&wait);
            }
        }
    }

    /// On the store's side, a fenced write that landed: it must have carried the run's
    /// current fence, held by this worker.
    fn landed(&self, operation: &'static str, fence: &Fence, before: Option<Run>) {
        if self.side != Side::Store {
            return;
        }
        let holds = before.as_ref().is_some_and(|run| {
            run.status == RunStatus::Leased
                && run.lease_generation == fence.generation
                && run.lease_owner.as_deref() == Some(self.worker_id.as_str())
        });
        if !holds {
            self.trace.push(Event::Violation(format!(
                "{operation} of worker {} landed without the current fence: fence generation \
                 {} of run {}, the run was {:?}",
                self.worker,
                fence.generation,
                fence.run_id,
                before.map(|run| (run.status, run.lease_generation, run.lease_owner)),
            )));
        }
        self.trace.push(Event::Landed {
            worker: self.worker,
            operation,
            run: fence.run_id.clone(),
            generation: fence.generation,
            at: at(),
        });
    }
}

/// The id worker `worker` runs as.
pub fn worker_id(worker: usize) -> String {
    format!("w{worker}")
}

#[async_trait]
impl Store for Probe {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    async fn schema_version(&self) -> Result<i64> {
        self.inner.schema_version().await
    }

    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued> {
        self.inner.enqueue(run, now).await
    }

    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(Enqueued, Vec<Run>)> {
        let answer = self.inner.enqueue_and_claim(run, now, next).await;
        if let Ok((_, runs)) = &answer {
            self.claimed(runs, now, next.lease);
        }
        answer
    }

    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>> {
        self.inner.enqueue_many(runs, now).await
    }

    async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        self.inner.get_run(id).await
    }

    async fn run_overview(
        &self,
        now: Timestamp,
        window: durably::OverviewWindow,
    ) -> Result<durably::Overview> {
        self.inner.run_overview(now, window).await
    }

    async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        self.inner.get_runs(filter).await
    }

    async fn get_runs_within(&self, filter: &RunFilter, timeout: Duration) -> Result<Vec<Run>> {
        self.inner.get_runs_within(filter, timeout).await
    }

    async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        self.inner.get_steps(run_id).await
    }

    async fn get_completed_step(&self, run_id: &str, name: &str) -> Result<Option<Step>> {
        self.inner.get_completed_step(run_id, name).await
    }

    async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        self.inner.get_logs(run_id).await
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Run>> {
        let answer = self.inner.claim(request, now).await;
        if let Ok(runs) = &answer {
            self.claimed(runs, now, request.lease);
        }
        answer
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        let before = self.before(fence).await;
        let answer = self.inner.renew_lease(fence, now, lease).await;
        if let Ok(Some(_)) = &answer {
            self.landed("renew_lease", fence, before);
            if self.side == Side::Engine {
                self.trace.push(Event::Renewed {
                    worker: self.worker,
                    run: fence.run_id.clone(),
                    generation: fence.generation,
                    sent: now.as_millis() - START,
                    at: at(),
                });
            }
        }
        answer
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        self.let_go(fence);
        let before = self.before(fence).await;
        let answer = self.inner.release_lease(fence, now).await;
        if let Ok(true) = answer {
            self.landed("release_lease", fence, before);
        }
        answer
    }

    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>> {
        let before = self.before(fence).await;
        let (name, completed) = (step.name.clone(), step.status == StepStatus::Completed);
        let answer = self.inner.persist_step(fence, step, now).await;
        if let Ok(Some(_)) = &answer {
            self.landed("persist_step", fence, before);
            if completed && self.side == Side::Store {
                self.trace.push(Event::StepCommitted {
                    worker: self.worker,
                    run: fence.run_id.clone(),
                    step: name,
                    at: at(),
                });
            }
        }
        answer
    }

    async fn begin_step_attempt(
        &self,
        fence: &Fence,
        attempt: durably::store::AttemptStart,
        now: Timestamp,
    ) -> Result<bool> {
        let before = self.before(fence).await;
        let answer = self.inner.begin_step_attempt(fence, attempt, now).await;
        if let Ok(true) = answer {
            self.landed("begin_step_attempt", fence, before);
        }
        answer
    }

    async fn set_step_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<serde_json::Value>,
        now: Timestamp,
    ) -> Result<bool> {
        let before = self.before(fence).await;
        let answer = self
            .inner
            .set_step_attempt_metadata(fence, attempt_id, metadata, now)
            .await;
        if let Ok(true) = answer {
            self.landed("set_step_attempt_metadata", fence, before);
        }
        answer
    }

    async fn get_step_attempts(&self, run_id: &str) -> Result<Vec<durably::StepAttempt>> {
        self.inner.get_step_attempts(run_id).await
    }

    async fn prepare_wait(
        &self,
        fence: &Fence,
        wait: durably::waits::NewWait,
        now: Timestamp,
    ) -> Result<Option<durably::DurableWait>> {
        let before = self.before(fence).await;
        let answer = self.inner.prepare_wait(fence, wait, now).await;
        if let Ok(Some(_)) = answer {
            self.landed("prepare_wait", fence, before);
        }
        answer
    }

    async fn wait_result(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<Option<durably::DurableWait>> {
        let before = self.before(fence).await;
        let answer = self.inner.wait_result(fence, wait_id, now).await;
        if let Ok(Some(_)) = answer {
            self.landed("wait_result", fence, before);
        }
        self.observe_waits().await;
        answer
    }

    async fn signal_wait(
        &self,
        wait_id: &str,
        payload: serde_json::Value,
        signal_id: &str,
        now: Timestamp,
    ) -> Result<durably::store::Signalled> {
        let answer = self
            .inner
            .signal_wait(wait_id, payload, signal_id, now)
            .await;
        if let (Ok(signalled), Side::Store) = (&answer, self.side) {
            self.trace.push(Event::SignalLanded {
                worker: self.worker,
                wait: wait_id.to_owned(),
                signal_id: signal_id.to_owned(),
                duplicate: signalled.disposition == SignalDisposition::Duplicate,
                at: at(),
            });
        }
        self.observe_waits().await;
        answer
    }

    async fn expire_due_waits(&self, now: Timestamp, limit: u64) -> Result<u64> {
        let answer = self.inner.expire_due_waits(now, limit).await;
        self.observe_waits().await;
        answer
    }

    async fn get_wait(&self, wait_id: &str) -> Result<Option<durably::DurableWait>> {
        self.inner.get_wait(wait_id).await
    }

    async fn get_waits(&self, run_id: &str) -> Result<Vec<durably::DurableWait>> {
        self.inner.get_waits(run_id).await
    }

    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool> {
        let before = self.before(fence).await;
        let answer = self.inner.update_progress(fence, progress, now).await;
        if let Ok(true) = answer {
            self.landed("update_progress", fence, before);
        }
        answer
    }

    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>> {
        let before = match fence {
            Some(fence) => self.before(fence).await,
            None => None,
        };
        let answer = self.inner.append_log(fence, log, now).await;
        if let (Ok(Some(_)), Some(fence)) = (&answer, fence) {
            self.landed("append_log", fence, before);
        }
        answer
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> Result<Finished> {
        self.let_go(fence);
        let before = self.before(fence).await;
        let answer = self
            .inner
            .finish_run(fence, transition, now, then_claim)
            .await;
        if let Ok(finished) = &answer {
            if finished.landed {
                self.landed("finish_run", fence, before);
            }
            if let Some(next) = then_claim {
                self.claimed(&finished.claimed, now, next.lease);
            }
        }
        self.observe_waits().await;
        answer
    }

    async fn cancel_run(&self, id: &str, now: Timestamp) -> Result<bool> {
        let answer = self.inner.cancel_run(id, now).await;
        if let (Ok(true), Side::Store) = (&answer, self.side) {
            self.trace.push(Event::CancelLanded {
                run: id.to_owned(),
                at: at(),
            });
        }
        self.observe_waits().await;
        answer
    }

    async fn resume_run(&self, id: &str, now: Timestamp) -> Result<Run> {
        self.inner.resume_run(id, now).await
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        self.inner.delete_run(id).await
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        self.inner.purge_runs(older_than, limit).await
    }

    async fn release_expired_leases(&self, now: Timestamp) -> Result<Vec<Run>> {
        self.inner.release_expired_leases(now).await
    }

    fn preserves_steps(&self) -> bool {
        self.inner.preserves_steps()
    }

    fn with_step_policy(&self, preserve_steps: bool) -> Option<Arc<dyn Store>> {
        let view = self.inner.with_step_policy(preserve_steps)?;
        Some(Arc::new(Probe {
            inner: view,
            side: self.side,
            worker: self.worker,
            worker_id: self.worker_id.clone(),
            trace: self.trace.clone(),
        }))
    }

    fn admin(&self) -> Option<&dyn RunAdmin> {
        self.inner.admin()
    }

    fn maintenance_tasks(&self) -> Vec<Arc<dyn durably::maintenance::MaintenanceTask>> {
        self.inner.maintenance_tasks()
    }

    fn notifications(&self) -> Option<tokio::sync::broadcast::Receiver<StoreNotice>> {
        self.inner.notifications()
    }
}
