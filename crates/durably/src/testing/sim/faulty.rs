//! [`FaultyStore`]: a [`Store`] decorator that injects seeded faults into every call.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::attempts::StepAttempt;
use crate::error::{Error, Result};
use crate::maintenance::MaintenanceTask;
use crate::run::{Log, Progress, Run, RunFilter, Step};
use crate::runtime;
use crate::store::{
    AttemptStart, ClaimRequest, Enqueued, Fence, Finished, NewLog, NewRun, NewStep, RunAdmin,
    Signalled, Store, StoreNotice, Transition,
};
use crate::time::Timestamp;
use crate::waits::{DurableWait, NewWait};

/// The text every injected error carries, so that a test tells injected failures from real
/// ones (a run failed by a fault stores an error containing it).
pub const FAULT_MARKER: &str = "simulated fault";

/// How often [`FaultyStore`] injects each kind of fault: per call, the probability of each
/// kind (the kinds are exclusive; what remains is a call passed through unchanged).
///
/// ```
/// use std::time::Duration;
/// use durably::testing::sim::FaultRates;
///
/// let rates = FaultRates::none().fail_before(0.02).lose_reply(0.01).delay(0.05, Duration::from_millis(300));
/// assert_eq!(rates.fail_before, 0.02);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FaultRates {
    /// The call fails before it reaches the store: nothing is written, an error is returned.
    pub fail_before: f64,
    /// The call is made (a write commits) but its reply is lost: an error is returned.
    pub lose_reply: f64,
    /// The call is delayed by up to [`FaultRates::max_delay`] of (virtual) time, before the
    /// store sees it, after it, or both.
    pub delay: f64,
    /// The longest delay of [`FaultRates::delay`].
    pub max_delay: Duration,
    /// The caller freezes: the call is held for between [`FaultRates::min_freeze`] and
    /// [`FaultRates::max_freeze`] (set them around the lease to reproduce a frozen worker),
    /// before the store sees it or after it committed.
    pub freeze: f64,
    /// The shortest freeze.
    pub min_freeze: Duration,
    /// The longest freeze.
    pub max_freeze: Duration,
}

impl FaultRates {
    /// No faults: every call passes through unchanged.
    pub fn none() -> Self {
        FaultRates {
            fail_before: 0.0,
            lose_reply: 0.0,
            delay: 0.0,
            max_delay: Duration::ZERO,
            freeze: 0.0,
            min_freeze: Duration::ZERO,
            max_freeze: Duration::ZERO,
        }
    }

    /// With calls failing before the store at `rate`.
    pub fn fail_before(mut self, rate: f64) -> Self {
        self.fail_before = rate;
        self
    }

    /// With replies lost after the call at `rate`.
    pub fn lose_reply(mut self, rate: f64) -> Self {
        self.lose_reply = rate;
        self
    }

    /// With calls delayed at `rate`, by up to `max`.
    pub fn delay(mut self, rate: f64, max: Duration) -> Self {
        self.delay = rate;
        self.max_delay = max;
        self
    }

    /// With calls frozen at `rate`, for `min` to `max`.
    pub fn freeze(mut self, rate: f64, min: Duration, max: Duration) -> Self {
        self.freeze = rate;
        self.min_freeze = min;
        self.max_freeze = max.max(min);
        self
    }
}

impl Default for FaultRates {
    fn default() -> Self {
        FaultRates::none()
    }
}

/// How many calls a [`FaultyStore`] (and the views sharing its state) saw, and the faults it
/// injected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultCounts {
    /// Calls seen (faulty or not).
    pub calls: u64,
    /// Calls failed before they reached the store.
    pub failed_before: u64,
    /// Calls made whose reply was lost.
    pub lost_replies: u64,
    /// Calls delayed.
    pub delayed: u64,
    /// Calls frozen (a delay of about a lease).
    pub frozen: u64,
}

impl FaultCounts {
    /// Faults injected, all kinds together.
    pub fn faults(&self) -> u64 {
        self.failed_before + self.lost_replies + self.delayed + self.frozen
    }
}

impl std::ops::AddAssign for FaultCounts {
    fn add_assign(&mut self, other: FaultCounts) {
        self.calls += other.calls;
        self.failed_before += other.failed_before;
        self.lost_replies += other.lost_replies;
        self.delayed += other.delayed;
        self.frozen += other.frozen;
    }
}

/// A fault decided for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Pass,
    FailBefore,
    LoseReply,
    /// Held before the store sees the call, and after it answered.
    Hold {
        before: Duration,
        after: Duration,
        frozen: bool,
    },
}

struct Shared {
    rng: Mutex<fastrand::Rng>,
    rates: Mutex<FaultRates>,
    calls: AtomicU64,
    failed_before: AtomicU64,
    lost_replies: AtomicU64,
    delayed: AtomicU64,
    frozen: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A duration drawn uniformly in `min..=max`, in whole milliseconds.
fn draw(rng: &mut fastrand::Rng, min: Duration, max: Duration) -> Duration {
    let (min, max) = (
        min.as_millis() as u64,
        max.as_millis().max(min.as_millis()) as u64,
    );
    Duration::from_millis(rng.u64(min..=max))
}

impl Shared {
    /// Draws the fault of the next call (one draw sequence per call, in call order, so a
    /// single-threaded simulation repeats it for a seed).
    fn plan(&self) -> Plan {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let rates = lock(&self.rates).clone();
        let mut rng = lock(&self.rng);
        let roll = rng.f64();
        let mut bound = rates.fail_before;
        if roll < bound {
            self.failed_before.fetch_add(1, Ordering::Relaxed);
            return Plan::FailBefore;
        }
        bound += rates.lose_reply;
        if roll < bound {
            self.lost_replies.fetch_add(1, Ordering::Relaxed);
            return Plan::LoseReply;
        }
        bound += rates.delay;
        if roll < bound {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            let before = draw(&mut rng, Duration::ZERO, rates.max_delay);
            let after = draw(&mut rng, Duration::ZERO, rates.max_delay);
            // Before, after, or both.
            let (before, after) = match rng.u8(0..3) {
                0 => (before, Duration::ZERO),
                1 => (Duration::ZERO, after),
                _ => (before, after),
            };
            return Plan::Hold {
                before,
                after,
                frozen: false,
            };
        }
        bound += rates.freeze;
        if roll < bound {
            self.frozen.fetch_add(1, Ordering::Relaxed);
            let hold = draw(&mut rng, rates.min_freeze, rates.max_freeze);
            let (before, after) = match rng.bool() {
                true => (hold, Duration::ZERO),
                false => (Duration::ZERO, hold),
            };
            return Plan::Hold {
                before,
                after,
                frozen: true,
            };
        }
        Plan::Pass
    }
}

/// A [`Store`] decorator for deterministic simulation: before each call it draws, from a
/// seeded generator, whether to fail the call before it reaches the store (nothing written),
/// to make the call and lose its reply (a write that commits while its caller sees an error),
/// to delay it (in the runtime's time, so paused time makes it instant) before and/or after
/// the store sees it, to freeze its caller for about a lease (the frozen worker of a paused VM
/// or a stalled network), or to pass it through. Rates are per kind ([`FaultRates`]); counts
/// per kind are kept ([`FaultCounts`]).
///
/// Every [`Store`] method is delegated to the wrapped store, the trait's default methods
/// included (so the wrapped store's own `enqueue_and_claim` or `get_runs_within` is used, one
/// fault for the whole call); with [`FaultRates::none`] it behaves exactly as the wrapped store.
/// Calls that are not round trips (`backend`, `preserves_steps`, `admin`,
/// `maintenance_tasks`, `notifications`) are never faulty; [`Store::with_step_policy`]'s view
/// is faulty too, sharing this store's generator, rates and counts.
///
/// Injected errors are [`Error::Storage`] whose text contains [`FAULT_MARKER`]. A call draws
/// its fault when it starts, so on a single thread (a current-thread runtime) the same seed
/// and the same sequence of calls give the same faults.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::sync::Arc;
/// use durably::Store;
/// use durably::testing::MemoryStore;
/// use durably::testing::sim::{FaultRates, FaultyStore};
///
/// let faulty = FaultyStore::new(Arc::new(MemoryStore::new()), 7, FaultRates::none().fail_before(1.0));
/// assert!(faulty.migrate().await.is_err());
/// assert_eq!(faulty.counts().failed_before, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("backend", &self.inner.backend())
            .field("rates", &*lock(&self.shared.rates))
            .field("counts", &self.counts())
            .finish()
    }
}

impl FaultyStore {
    /// Wraps `inner`, drawing faults at `rates` from a generator seeded with `seed`.
    pub fn new(inner: Arc<dyn Store>, seed: u64, rates: FaultRates) -> Self {
        FaultyStore {
            inner,
            shared: Arc::new(Shared {
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
                rates: Mutex::new(rates),
                calls: AtomicU64::new(0),
                failed_before: AtomicU64::new(0),
                lost_replies: AtomicU64::new(0),
                delayed: AtomicU64::new(0),
                frozen: AtomicU64::new(0),
            }),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// Changes the rates from the next call on (e.g. [`FaultRates::none`] to let a simulation
    /// settle).
    pub fn set_rates(&self, rates: FaultRates) {
        *lock(&self.shared.rates) = rates;
    }

    /// The calls seen and the faults injected so far, by kind.
    pub fn counts(&self) -> FaultCounts {
        let shared = &self.shared;
        FaultCounts {
            calls: shared.calls.load(Ordering::Relaxed),
            failed_before: shared.failed_before.load(Ordering::Relaxed),
            lost_replies: shared.lost_replies.load(Ordering::Relaxed),
            delayed: shared.delayed.load(Ordering::Relaxed),
            frozen: shared.frozen.load(Ordering::Relaxed),
        }
    }

    /// Makes one call of `operation` (`call` is not polled before the store should see it)
    /// under the fault drawn for it.
    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.shared.plan() {
            Plan::Pass => call.await,
            Plan::FailBefore => Err(fault(operation, "the call failed before the store")),
            Plan::LoseReply => {
                // Whatever the store did stays done; only the answer is lost.
                let _ = call.await;
                Err(fault(operation, "the reply was lost"))
            }
            Plan::Hold {
                before,
                after,
                frozen: _,
            } => {
                if !before.is_zero() {
                    runtime::sleep(before).await;
                }
                let answer = call.await;
                if !after.is_zero() {
                    runtime::sleep(after).await;
                }
                answer
            }
        }
    }
}

fn fault(operation: &'static str, what: &str) -> Error {
    Error::storage(operation, format!("{FAULT_MARKER}: {what}"))
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn migrate(&self) -> Result<()> {
        self.call("migrate", self.inner.migrate()).await
    }

    async fn schema_version(&self) -> Result<i64> {
        self.call("schema_version", self.inner.schema_version())
            .await
    }

    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued> {
        self.call("enqueue", self.inner.enqueue(run, now)).await
    }

    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(Enqueued, Vec<Run>)> {
        let call = self.inner.enqueue_and_claim(run, now, next);
        self.call("enqueue_and_claim", call).await
    }

    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>> {
        self.call("enqueue_many", self.inner.enqueue_many(runs, now))
            .await
    }

    async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        self.call("get_run", self.inner.get_run(id)).await
    }

    async fn run_overview(
        &self,
        now: Timestamp,
        window: crate::overview::OverviewWindow,
    ) -> Result<crate::overview::Overview> {
        self.call("run_overview", self.inner.run_overview(now, window))
            .await
    }

    async fn run_counts(&self, now: Timestamp) -> Result<crate::overview::RunCounts> {
        self.call("run_counts", self.inner.run_counts(now)).await
    }

    async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        self.call("get_runs", self.inner.get_runs(filter)).await
    }

    async fn get_runs_within(&self, filter: &RunFilter, timeout: Duration) -> Result<Vec<Run>> {
        let call = self.inner.get_runs_within(filter, timeout);
        self.call("get_runs", call).await
    }

    async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        self.call("get_steps", self.inner.get_steps(run_id)).await
    }

    async fn get_completed_step(&self, run_id: &str, name: &str) -> Result<Option<Step>> {
        let call = self.inner.get_completed_step(run_id, name);
        self.call("get_completed_step", call).await
    }

    async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        self.call("get_logs", self.inner.get_logs(run_id)).await
    }

    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Run>> {
        let call = self.inner.claim(request, now);
        self.call("claim", call).await
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        let call = self.inner.renew_lease(fence, now, lease);
        self.call("renew_lease", call).await
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        let call = self.inner.release_lease(fence, now);
        self.call("release_lease", call).await
    }

    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>> {
        let call = self.inner.persist_step(fence, step, now);
        self.call("persist_step", call).await
    }

    async fn begin_step_attempt(
        &self,
        fence: &Fence,
        attempt: AttemptStart,
        now: Timestamp,
    ) -> Result<bool> {
        let call = self.inner.begin_step_attempt(fence, attempt, now);
        self.call("begin_step_attempt", call).await
    }

    async fn set_step_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<serde_json::Value>,
        now: Timestamp,
    ) -> Result<bool> {
        let call = self
            .inner
            .set_step_attempt_metadata(fence, attempt_id, metadata, now);
        self.call("set_step_attempt_metadata", call).await
    }

    async fn get_step_attempts(&self, run_id: &str) -> Result<Vec<StepAttempt>> {
        let call = self.inner.get_step_attempts(run_id);
        self.call("get_step_attempts", call).await
    }

    async fn prepare_wait(
        &self,
        fence: &Fence,
        wait: NewWait,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        let call = self.inner.prepare_wait(fence, wait, now);
        self.call("prepare_wait", call).await
    }

    async fn wait_result(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<Option<DurableWait>> {
        let call = self.inner.wait_result(fence, wait_id, now);
        self.call("wait_result", call).await
    }

    async fn signal_wait(
        &self,
        wait_id: &str,
        payload: serde_json::Value,
        signal_id: &str,
        now: Timestamp,
    ) -> Result<Signalled> {
        let call = self.inner.signal_wait(wait_id, payload, signal_id, now);
        self.call("signal_wait", call).await
    }

    async fn expire_due_waits(&self, now: Timestamp, limit: u64) -> Result<u64> {
        let call = self.inner.expire_due_waits(now, limit);
        self.call("expire_due_waits", call).await
    }

    async fn get_wait(&self, wait_id: &str) -> Result<Option<DurableWait>> {
        let call = self.inner.get_wait(wait_id);
        self.call("get_wait", call).await
    }

    async fn get_waits(&self, run_id: &str) -> Result<Vec<DurableWait>> {
        let call = self.inner.get_waits(run_id);
        self.call("get_waits", call).await
    }

    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool> {
        let call = self.inner.update_progress(fence, progress, now);
        self.call("update_progress", call).await
    }

    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>> {
        let call = self.inner.append_log(fence, log, now);
        self.call("append_log", call).await
    }

    async fn finish_run(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> Result<Finished> {
        let call = self.inner.finish_run(fence, transition, now, then_claim);
        self.call("finish_run", call).await
    }

    async fn cancel_run(&self, id: &str, now: Timestamp) -> Result<bool> {
        self.call("cancel_run", self.inner.cancel_run(id, now))
            .await
    }

    async fn resume_run(&self, id: &str, now: Timestamp) -> Result<Run> {
        self.call("resume_run", self.inner.resume_run(id, now))
            .await
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        self.call("delete_run", self.inner.delete_run(id)).await
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        let call = self.inner.purge_runs(older_than, limit);
        self.call("purge_runs", call).await
    }

    async fn release_expired_leases(&self, now: Timestamp) -> Result<Vec<Run>> {
        let call = self.inner.release_expired_leases(now);
        self.call("release_expired_leases", call).await
    }

    fn preserves_steps(&self) -> bool {
        self.inner.preserves_steps()
    }

    fn with_step_policy(&self, preserve_steps: bool) -> Option<Arc<dyn Store>> {
        let view = self.inner.with_step_policy(preserve_steps)?;
        Some(Arc::new(FaultyStore {
            inner: view,
            shared: self.shared.clone(),
        }))
    }

    fn admin(&self) -> Option<&dyn RunAdmin> {
        self.inner.admin()
    }

    fn maintenance_tasks(&self) -> Vec<Arc<dyn MaintenanceTask>> {
        self.inner.maintenance_tasks()
    }

    fn notifications(&self) -> Option<tokio::sync::broadcast::Receiver<StoreNotice>> {
        self.inner.notifications()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;

    fn new_run() -> NewRun {
        NewRun {
            job_name: "job".into(),
            input: serde_json::json!(1),
            idempotency_key: None,
            concurrency_key: None,
            labels: Default::default(),
            coalesce: None,
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_lost_reply_commits_and_a_failure_before_writes_nothing() {
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        memory.migrate().await.expect("migrate");
        let now = Timestamp::from_millis(1_800_000_000_000);
        let lost = FaultyStore::new(memory.clone(), 1, FaultRates::none().lose_reply(1.0));
        assert!(lost.enqueue(new_run(), now).await.is_err());
        let failed = FaultyStore::new(memory.clone(), 1, FaultRates::none().fail_before(1.0));
        let error = failed.enqueue(new_run(), now).await.expect_err("fails");
        assert!(error.to_string().contains(FAULT_MARKER), "{error}");
        let runs = memory.get_runs(&RunFilter::new()).await.expect("runs");
        assert_eq!(runs.len(), 1, "only the call whose reply was lost wrote");
        assert_eq!(lost.counts().lost_replies, 1);
        assert_eq!(failed.counts().failed_before, 1);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_freeze_holds_the_call_in_virtual_time_and_the_same_seed_repeats() {
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let rates = FaultRates::none().freeze(1.0, Duration::from_secs(5), Duration::from_secs(9));
        let held = |seed| {
            let faulty = FaultyStore::new(memory.clone(), seed, rates.clone());
            async move {
                let started = tokio::time::Instant::now();
                for _ in 0..5 {
                    faulty.schema_version().await.expect("answered");
                }
                (started.elapsed(), faulty.counts())
            }
        };
        let (first, counts) = held(3).await;
        assert_eq!(counts.frozen, 5);
        assert!(first >= Duration::from_secs(25) && first <= Duration::from_secs(45));
        assert_eq!(held(3).await.0, first);
    }

    /// The calls of durable waits go through the faults too (prepare, result, signal, expiry
    /// sweep, suspension): with every call failing before the store, each is refused and
    /// nothing is written.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_calls_of_durable_waits_are_faulty_too() {
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        memory.migrate().await.expect("migrate");
        let now = Timestamp::from_millis(1_800_000_000_000);
        let next = ClaimRequest::new("w", Duration::from_secs(5), 1);
        let (_, claimed) = memory
            .enqueue_and_claim(new_run(), now, &next)
            .await
            .expect("claimed");
        let fence = Fence::of(&claimed[0]);
        let wait = memory
            .prepare_wait(&fence, NewWait::new("w").timeout_ms(1), now)
            .await
            .expect("prepared")
            .expect("leased");
        let failing = FaultyStore::new(memory.clone(), 5, FaultRates::none().fail_before(1.0));
        let faulty = |result: Result<()>| {
            let error = result.expect_err("a fault");
            assert!(error.to_string().contains(FAULT_MARKER), "{error}");
        };
        let later = Timestamp::from_millis(now.as_millis() + 10);
        faulty(
            failing
                .prepare_wait(&fence, NewWait::new("x"), now)
                .await
                .map(drop),
        );
        faulty(failing.wait_result(&fence, &wait.id, now).await.map(drop));
        faulty(
            failing
                .signal_wait(&wait.id, serde_json::json!(1), "s", now)
                .await
                .map(drop),
        );
        faulty(failing.expire_due_waits(later, 10).await.map(drop));
        let suspend = Transition::Wait {
            wait_id: wait.id.clone(),
        };
        faulty(
            failing
                .finish_run(&fence, suspend, now, None)
                .await
                .map(drop),
        );
        assert_eq!(failing.counts().failed_before, 5);
        let stored = memory
            .get_wait(&wait.id)
            .await
            .expect("read")
            .expect("wait");
        assert_eq!(stored.status, crate::waits::WaitStatus::Pending);
        assert_eq!(
            memory.get_waits(&fence.run_id).await.expect("waits").len(),
            1
        );
        let run = memory
            .get_run(&fence.run_id)
            .await
            .expect("read")
            .expect("run");
        assert_eq!(run.status, crate::run::RunStatus::Leased);
        // A lost reply commits: the sweep resolves the overdue wait, its caller sees an error.
        let lost = FaultyStore::new(memory.clone(), 5, FaultRates::none().lose_reply(1.0));
        faulty(lost.expire_due_waits(later, 10).await.map(drop));
        let stored = memory
            .get_wait(&wait.id)
            .await
            .expect("read")
            .expect("wait");
        assert_eq!(stored.status, crate::waits::WaitStatus::Resolved);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn without_faults_every_call_passes_through() {
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let faulty = FaultyStore::new(memory.clone(), 9, FaultRates::none());
        faulty.migrate().await.expect("migrate");
        let now = Timestamp::from_millis(1_800_000_000_000);
        let next = ClaimRequest {
            worker_id: "w".into(),
            lease: Duration::from_secs(5),
            max: 1,
            resume_waiting: true,
        };
        let (_, claimed) = faulty
            .enqueue_and_claim(new_run(), now, &next)
            .await
            .expect("enqueue and claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(faulty.backend(), memory.backend());
        assert!(faulty.admin().is_some());
        let view = faulty.with_step_policy(true).expect("a view");
        assert!(view.preserves_steps());
        view.get_run(&claimed[0].id).await.expect("read");
        let counts = faulty.counts();
        assert_eq!((counts.calls, counts.faults()), (3, 0));
    }
}
