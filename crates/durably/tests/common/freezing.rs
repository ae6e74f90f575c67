//! A store that freezes its caller the way a paused process freezes: once a chosen call has
//! committed, its reply (and every later call of this store) waits until the test thaws it.
//!
//! A worker built on [`Freezing`] then behaves like a worker whose process stopped right after
//! that write (a paused VM, swap, a stalled network): nothing it sends reaches the database
//! while frozen, its lease runs out, and another worker on the *inner* store takes the run over.
//! Unlike a stopped process its timers keep running, but a lease keeper waiting on a frozen
//! renewal cannot act on them either.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durably::maintenance::MaintenanceTask;
use durably::store::{
    ClaimRequest, Enqueued, Fence, Finished, NewLog, NewRun, NewStep, RunAdmin, Store, Transition,
};
use durably::{Log, Progress, Run, RunFilter, Step, StepStatus, Timestamp};

use super::Gate;

/// Which committed write freezes the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trap {
    /// The completed step with this name was persisted.
    StepPersisted(String),
    /// A lease renewal succeeded.
    LeaseRenewed,
    /// A completion claimed runs for its slot (claiming ahead).
    CompletionClaimed,
    /// A claim of the worker loop took runs.
    Claimed,
    /// A read of a run's steps is about to be sent (the store freezes *before* it).
    StepsRead,
}

/// See the module docs.
pub struct Freezing {
    pub inner: Arc<dyn Store>,
    trap: Mutex<Option<Trap>>,
    /// Open once the trap sprang.
    pub frozen: Gate,
    /// Every call waits for this once the trap sprang.
    pub thawed: Gate,
    /// Instead of freezing its callers, the trap stops this whole process with SIGSTOP (for a
    /// child process that another one continues with SIGCONT).
    stop_process: AtomicBool,
    /// Calls between their gate and their return: a process stops only once the others are
    /// done, so that it never stops inside a SQLite write transaction (a real stopped process
    /// holding the file's write lock would block every other process, which no store can
    /// prevent, and is not what these tests are about).
    in_flight: Arc<AtomicUsize>,
}

/// One call in flight (see [`Freezing::in_flight`]).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Freezing {
    /// Passes everything through to `inner` until a trap is [armed](Self::arm) and springs.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Freezing {
            inner,
            trap: Mutex::new(None),
            frozen: Gate::new(),
            thawed: Gate::new(),
            stop_process: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The trap stops this process with SIGSTOP right after the write committed (its reply is
    /// processed once another process sends SIGCONT) instead of freezing the store's callers.
    pub fn stop_process_on_trap(&self) {
        self.stop_process.store(true, Ordering::SeqCst);
    }

    /// The next write matching `trap` freezes the store once it committed.
    pub fn arm(&self, trap: Trap) {
        *self.trap.lock().expect("trap") = Some(trap);
    }

    /// Lets every waiting call (and the trapped reply) go on.
    pub fn thaw(&self) {
        self.thawed.open();
    }

    /// Before a call: while frozen, nothing reaches the database. The call counts as in
    /// flight until the returned guard drops.
    async fn gate(&self) -> InFlight {
        loop {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let call = InFlight(self.in_flight.clone());
            if !self.frozen.is_open() || self.thawed.is_open() {
                return call;
            }
            drop(call);
            self.thawed.wait().await;
        }
    }

    /// After a call committed (or before one is sent): springs the trap if `hit`, then waits
    /// until thawed.
    async fn after(&self, hit: bool) {
        if hit {
            let sprang = self.trap.lock().expect("trap").take().is_some();
            if sprang && self.stop_process.load(Ordering::SeqCst) {
                // No new call starts; the calls already sent (this one included) finish.
                self.frozen.open();
                let drained = tokio::time::timeout(Duration::from_secs(30), async {
                    while self.in_flight.load(Ordering::SeqCst) > 1 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
                .await;
                assert!(drained.is_ok(), "store calls still in flight after 30 s");
                // `raise` stops the calling thread before it returns (an external `kill`
                // would let this thread run on for a moment), then the whole process.
                // SAFETY: raising a signal has no memory-safety preconditions.
                let raised = unsafe { libc::raise(libc::SIGSTOP) };
                assert_eq!(raised, 0, "SIGSTOP itself");
                self.thaw();
                return;
            }
            if sprang {
                self.frozen.open();
            }
        }
        // A stopping process lets a finished call return (the next one waits at its gate), so
        // that the calls in flight drain.
        if self.frozen.is_open() && !self.stop_process.load(Ordering::SeqCst) {
            self.thawed.wait().await;
        }
    }

    fn armed(&self, trap: &Trap) -> bool {
        self.trap.lock().expect("trap").as_ref() == Some(trap)
    }
}

#[async_trait::async_trait]
impl Store for Freezing {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn migrate(&self) -> durably::Result<()> {
        let _call = self.gate().await;
        self.inner.migrate().await
    }
    async fn schema_version(&self) -> durably::Result<i64> {
        let _call = self.gate().await;
        self.inner.schema_version().await
    }
    async fn enqueue(&self, run: NewRun, now: Timestamp) -> durably::Result<Enqueued> {
        let _call = self.gate().await;
        let enqueued = self.inner.enqueue(run, now).await;
        self.after(false).await;
        enqueued
    }
    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> durably::Result<(Enqueued, Vec<Run>)> {
        let _call = self.gate().await;
        let done = self.inner.enqueue_and_claim(run, now, next).await;
        let hit = self.armed(&Trap::Claimed) && matches!(&done, Ok((_, runs)) if !runs.is_empty());
        self.after(hit).await;
        done
    }
    async fn enqueue_many(
        &self,
        runs: Vec<NewRun>,
        now: Timestamp,
    ) -> durably::Result<Vec<Enqueued>> {
        let _call = self.gate().await;
        let done = self.inner.enqueue_many(runs, now).await;
        self.after(false).await;
        done
    }
    async fn get_run(&self, id: &str) -> durably::Result<Option<Run>> {
        let _call = self.gate().await;
        let run = self.inner.get_run(id).await;
        self.after(false).await;
        run
    }
    async fn run_overview(
        &self,
        now: Timestamp,
        window: durably::OverviewWindow,
    ) -> durably::Result<durably::Overview> {
        let _call = self.gate().await;
        self.inner.run_overview(now, window).await
    }
    async fn get_runs(&self, filter: &RunFilter) -> durably::Result<Vec<Run>> {
        let _call = self.gate().await;
        self.inner.get_runs(filter).await
    }
    async fn get_steps(&self, run_id: &str) -> durably::Result<Vec<Step>> {
        let _call = self.gate().await;
        let hit = self.armed(&Trap::StepsRead);
        self.after(hit).await;
        let steps = self.inner.get_steps(run_id).await;
        self.after(false).await;
        steps
    }
    async fn get_completed_step(&self, run_id: &str, name: &str) -> durably::Result<Option<Step>> {
        let _call = self.gate().await;
        self.inner.get_completed_step(run_id, name).await
    }
    async fn get_logs(&self, run_id: &str) -> durably::Result<Vec<Log>> {
        let _call = self.gate().await;
        self.inner.get_logs(run_id).await
    }
    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> durably::Result<Vec<Run>> {
        let _call = self.gate().await;
        let claimed = self.inner.claim(request, now).await;
        let hit = self.armed(&Trap::Claimed) && matches!(&claimed, Ok(runs) if !runs.is_empty());
        self.after(hit).await;
        claimed
    }
    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> durably::Result<Option<Timestamp>> {
        let _call = self.gate().await;
        let renewed = self.inner.renew_lease(fence, now, lease).await;
        let hit = self.armed(&Trap::LeaseRenewed) && matches!(renewed, Ok(Some(_)));
        self.after(hit).await;
        renewed
    }
    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> durably::Result<bool> {
        let _call = self.gate().await;
        let released = self.inner.release_lease(fence, now).await;
        self.after(false).await;
        released
    }
    async fn begin_step_attempt(
        &self,
        fence: &Fence,
        attempt: durably::store::AttemptStart,
        now: Timestamp,
    ) -> durably::Result<bool> {
        let _call = self.gate().await;
        self.inner.begin_step_attempt(fence, attempt, now).await
    }

    async fn set_step_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<serde_json::Value>,
        now: Timestamp,
    ) -> durably::Result<bool> {
        let _call = self.gate().await;
        self.inner
            .set_step_attempt_metadata(fence, attempt_id, metadata, now)
            .await
    }

    async fn get_step_attempts(&self, run_id: &str) -> durably::Result<Vec<durably::StepAttempt>> {
        let _call = self.gate().await;
        self.inner.get_step_attempts(run_id).await
    }

    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> durably::Result<Option<Step>> {
        let _call = self.gate().await;
        let trap = Trap::StepPersisted(step.name.clone());
        let completed = step.status == StepStatus::Completed;
        let persisted = self.inner.persist_step(fence, step, now).await;
        let hit = completed && self.armed(&trap) && matches!(persisted, Ok(Some(_)));
        self.after(hit).await;
        persisted
    }
    async fn prepare_wait(
        &self,
        fence: &Fence,
        wait: durably::waits::NewWait,
        now: Timestamp,
    ) -> durably::Result<Option<durably::DurableWait>> {
        let _call = self.gate().await;
        self.inner.prepare_wait(fence, wait, now).await
    }

    async fn wait_result(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> durably::Result<Option<durably::DurableWait>> {
        let _call = self.gate().await;
        self.inner.wait_result(fence, wait_id, now).await
    }

    async fn signal_wait(
        &self,
        wait_id: &str,
        payload: serde_json::Value,
        signal_id: &str,
        now: Timestamp,
    ) -> durably::Result<durably::store::Signalled> {
        let _call = self.gate().await;
        self.inner
            .signal_wait(wait_id, payload, signal_id, now)
            .await
    }

    async fn expire_due_waits(&self, now: Timestamp, limit: u64) -> durably::Result<u64> {
        let _call = self.gate().await;
        self.inner.expire_due_waits(now, limit).await
    }

    async fn get_wait(&self, wait_id: &str) -> durably::Result<Option<durably::DurableWait>> {
        let _call = self.gate().await;
        self.inner.get_wait(wait_id).await
    }

    async fn get_waits(&self, run_id: &str) -> durably::Result<Vec<durably::DurableWait>> {
        let _call = self.gate().await;
        self.inner.get_waits(run_id).await
    }

    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> durably::Result<bool> {
        let _call = self.gate().await;
        let updated = self.inner.update_progress(fence, progress, now).await;
        self.after(false).await;
        updated
    }
    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> durably::Result<Option<Log>> {
        let _call = self.gate().await;
        let appended = self.inner.append_log(fence, log, now).await;
        self.after(false).await;
        appended
    }
    async fn finish_run(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> durably::Result<Finished> {
        let _call = self.gate().await;
        let done = self
            .inner
            .finish_run(fence, transition, now, then_claim)
            .await;
        let hit = self.armed(&Trap::CompletionClaimed)
            && matches!(&done, Ok(finished) if finished.landed && !finished.claimed.is_empty());
        self.after(hit).await;
        done
    }
    async fn cancel_run(&self, id: &str, now: Timestamp) -> durably::Result<bool> {
        let _call = self.gate().await;
        self.inner.cancel_run(id, now).await
    }
    async fn resume_run(&self, id: &str, now: Timestamp) -> durably::Result<Run> {
        let _call = self.gate().await;
        self.inner.resume_run(id, now).await
    }
    async fn delete_run(&self, id: &str) -> durably::Result<bool> {
        let _call = self.gate().await;
        self.inner.delete_run(id).await
    }
    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> durably::Result<u64> {
        let _call = self.gate().await;
        self.inner.purge_runs(older_than, limit).await
    }
    async fn release_expired_leases(&self, now: Timestamp) -> durably::Result<Vec<Run>> {
        let _call = self.gate().await;
        let released = self.inner.release_expired_leases(now).await;
        self.after(false).await;
        released
    }
    fn preserves_steps(&self) -> bool {
        self.inner.preserves_steps()
    }
    fn admin(&self) -> Option<&dyn RunAdmin> {
        self.inner.admin()
    }
    fn maintenance_tasks(&self) -> Vec<Arc<dyn MaintenanceTask>> {
        self.inner.maintenance_tasks()
    }
    fn notifications(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<durably::store::StoreNotice>> {
        self.inner.notifications()
    }
}
