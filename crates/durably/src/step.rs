//! The step context: what a job function receives to run durable steps, report progress and log.
//!
//! `step.run(name, f)` is the heart of durable execution. A completed step's output is stored;
//! when the run executes again (after a crash, a restart or a lost lease) the job function runs
//! from the top and every completed step returns its stored output instead of running again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::attempts::{Attempt, StepOptions};
use crate::error::{BoxError, Error, Result};
use crate::events::{EventBus, EventKind, EventType};
use crate::lease::LeaseClock;
use crate::local_queue::RunPermit;
use crate::parallel::Branches;
use crate::retry::AttemptTimedOut;
use crate::run::{Labels, LogLevel, Progress, RunStatus, StepStatus};
use crate::runtime;
use crate::store::{Fence, NewLog, NewStep, Store};
use crate::telemetry::metrics::{RunMetrics, StepOutcome};
use crate::telemetry::{self, StepEnd};
use crate::time::{Timestamp, new_id};

/// While a fenced write *sent* less than this ago confirmed this worker's ownership (and the
/// lease is provably valid, see [`crate::lease`]), `step.run` skips re-reading the run before a
/// step: the read only looks for a cancellation made by another process (the fence still
/// guards every write; in-process cancellation fires the token at once).
const OWNERSHIP_FRESHNESS: Duration = Duration::from_millis(100);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a run's cancellation token fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AbortReason {
    Cancelled,
    LeaseLost,
}

pub(crate) struct StepShared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) events: EventBus,
    pub(crate) run_id: String,
    pub(crate) job_name: String,
    pub(crate) labels: Labels,
    pub(crate) fence: Fence,
    pub(crate) token: CancellationToken,
    pub(crate) persist_logs: bool,
    /// See `Tuning::attempt_record_delay`.
    attempt_record_delay: Duration,
    abort_reason: Mutex<Option<AbortReason>>,
    /// A `cancel` of this process is announcing the cancellation (`run:cancel`); otherwise the
    /// worker announces a cancellation it finds (made by another process).
    cancel_announced: AtomicBool,
    step_index: AtomicI64,
    /// The step functions running now and, while exactly one runs, its name (the step its
    /// logs are attributed to; `None` while independent ones overlap, as upstream).
    current_step: Mutex<(usize, Option<String>)>,
    /// The steps whose failure was recorded under this lease, by index: the lowest is the step
    /// a `run:fail` names (upstream's `failedStepName`) and wins among a join's failures.
    failed_steps: Mutex<Vec<(i64, String)>>,
    /// Outputs of this run's completed steps by name; `None` until loaded from the store.
    completed: Mutex<Option<HashMap<String, (i64, Value)>>>,
    /// The step names this execution ran, replayed or is running (a failed attempt frees its
    /// name for a retry): a step is identified by its name, so a second use is refused.
    names_in_use: Mutex<HashSet<String>>,
    /// Failed attempts recorded by earlier executions, by step name; `None` until loaded (with
    /// `completed`, or by the first step with a retry policy).
    failed_before: Mutex<Option<HashMap<String, u32>>>,
    /// The run's completed steps when it was claimed: the rows loaded later are at least
    /// these, unless the run ended meanwhile (its rows dropped).
    claimed_completed_steps: i64,
    /// This worker's lease on the run, by its own clock.
    pub(crate) lease: LeaseClock,
    /// Held while a renewal is in flight: one at a time (see [`StepShared::renew_lease`]).
    renewing: tokio::sync::Mutex<()>,
    /// The durable waits of this execution (`crate::waits::step`).
    pub(crate) waits: WaitState,
    /// This execution's metrics (feature `otel`).
    pub(crate) metrics: RunMetrics,
    /// Its turn to execute job code with a local queue (see `crate::local_queue`).
    pub(crate) permit: RunPermit,
}

/// Where an execution stands with durable waits.
#[derive(Default)]
pub(crate) struct WaitState {
    /// The wait this execution asked to be suspended on (upstream's suspension request).
    pub(crate) suspended_on: Mutex<Option<String>>,
    /// The deadline of that wait, if it has one: the engine that suspends the run looks for
    /// expired waits then (see `Engine::wake_at`).
    pub(crate) suspended_until: Mutex<Option<crate::time::Timestamp>>,
    /// A wait operation (`prepare_wait`, `wait_for`) is in progress.
    pub(crate) in_progress: AtomicBool,
    /// This execution prepared a wait: ending the run closes its pending waits.
    pub(crate) prepared: AtomicBool,
}

impl StepShared {
    /// Fires the token (first reason wins).
    pub(crate) fn abort(&self, reason: AbortReason) {
        let mut current = self
            .abort_reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.is_none() {
            *current = Some(reason);
        }
        drop(current);
        self.token.cancel();
    }

    pub(crate) fn abort_reason(&self) -> Option<AbortReason> {
        *lock(&self.abort_reason)
    }

    /// Marks (or, after a failed cancel, unmarks) the cancellation as announced by this
    /// process's `cancel`.
    pub(crate) fn set_cancel_announced(&self, announced: bool) {
        self.cancel_announced.store(announced, Ordering::SeqCst);
    }

    /// Whether this process's `cancel` announces the cancellation.
    pub(crate) fn cancel_announced(&self) -> bool {
        self.cancel_announced.load(Ordering::SeqCst)
    }

    /// Makes sure the lease is provably this worker's by its own clock: when it may have run
    /// out (the claim or the last renewal was sent too long ago, e.g. before the process
    /// froze), renews it first. `Err(Cancelled)` / `Err(LeaseLost)` (with the token fired)
    /// when the renewal is refused.
    pub(crate) async fn ensure_lease(&self) -> Result<()> {
        if self.lease.is_provably_valid(runtime::now()) {
            return Ok(());
        }
        let renewing = self.renewing.lock().await;
        // A renewal that was in flight meanwhile (the lease keeper's) may have proved it.
        if self.lease.is_provably_valid(runtime::now()) {
            return Ok(());
        }
        tracing::debug!("lease not provably valid: renewing it before going on");
        let renewed = self.renew_holding(&renewing).await?;
        drop(renewing);
        match renewed {
            Some(_) => Ok(()),
            None => Err(self.error_for(self.refused().await)),
        }
    }

    /// Renews the lease (fenced); on success the lease counts from this renewal's send time.
    /// `None` when the renewal was refused.
    ///
    /// One renewal at a time per lease: two renewals in flight at once may land in the
    /// opposite order of their send times (a request held in the network), and the one that
    /// lands last sets the expiry, possibly the earlier one; the worker, counting from the
    /// later send time, would then believe its lease longer than the store's, and another
    /// worker could take the run over while this one still starts steps. Found by the
    /// deterministic simulation (`tests/simulation`, seed 639).
    pub(crate) async fn renew_lease(&self) -> Result<Option<Timestamp>> {
        let renewing = self.renewing.lock().await;
        self.renew_holding(&renewing).await
    }

    async fn renew_holding(
        &self,
        _renewing: &tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Option<Timestamp>> {
        let sent = runtime::now();
        let renewed = self
            .store
            .renew_lease(&self.fence, Timestamp::now(), self.lease.duration())
            .await?;
        if renewed.is_some() {
            self.lease.renewed(sent);
        }
        Ok(renewed)
    }

    /// Before a step: `Err` when the run was cancelled or is no longer this worker's. Renews
    /// a lease that is not provably valid; otherwise re-reads the run unless a fenced write
    /// sent less than [`OWNERSHIP_FRESHNESS`] ago proved ownership.
    async fn check_before_step(&self) -> Result<()> {
        if let Some(error) = self.abort_error() {
            return Err(error);
        }
        if !self.lease.is_provably_valid(runtime::now()) {
            // A successful renewal is itself the freshest proof (a cancelled run refuses it).
            return self.ensure_lease().await;
        }
        if self
            .lease
            .confirmed_within(runtime::now(), OWNERSHIP_FRESHNESS)
        {
            return Ok(());
        }
        self.check_in_store().await
    }

    /// Reads the run: `Err` (with the token fired) when it was cancelled or is no longer this
    /// worker's.
    async fn check_in_store(&self) -> Result<()> {
        match self.store.get_run(&self.run_id).await? {
            Some(run) if run.status == RunStatus::Cancelled => {
                self.abort(AbortReason::Cancelled);
                Err(self.error_for(AbortReason::Cancelled))
            }
            Some(run)
                if run.status.is_terminal()
                    || (run.status == RunStatus::Leased
                        && run.lease_generation != self.fence.generation) =>
            {
                self.abort(AbortReason::LeaseLost);
                Err(self.error_for(AbortReason::LeaseLost))
            }
            _ => Ok(()),
        }
    }

    /// The stored index and output of a completed step, loading this run's completed steps
    /// once.
    pub(crate) async fn completed_output(&self, name: &str) -> Result<Option<(i64, Value)>> {
        if let Some(completed) = lock(&self.completed).as_ref() {
            return Ok(completed.get(name).cloned());
        }
        let steps = self.store.get_steps(&self.run_id).await?;
        self.remember_failed_before(&steps);
        let completed: Vec<_> = steps
            .into_iter()
            .filter(|s| s.status == StepStatus::Completed)
            .collect();
        if (completed.len() as i64) < self.claimed_completed_steps {
            // Fewer completed steps than the run had when it was claimed: their rows were
            // dropped because the run ended meanwhile (a cancel by another process, between the
            // last read of the run and this one). Running them again would repeat completed
            // steps: read the run first (an ended run is never leased again, so a run still
            // ours now had all its rows when they were read).
            self.check_in_store().await?;
        }
        let loaded: HashMap<String, (i64, Value)> = completed
            .into_iter()
            .map(|s| (s.name, (s.index, s.output.unwrap_or(Value::Null))))
            .collect();
        let output = loaded.get(name).cloned();
        lock(&self.completed).get_or_insert(loaded);
        Ok(output)
    }

    fn remember_failed_before(&self, steps: &[crate::run::Step]) {
        let mut failed = HashMap::new();
        for step in steps.iter().filter(|s| s.status == StepStatus::Failed) {
            *failed.entry(step.name.clone()).or_insert(0) += 1;
        }
        lock(&self.failed_before).get_or_insert(failed);
    }

    /// How many attempts of step `name` failed in earlier executions of this run (its
    /// `failed` step rows). The first execution of a run reads nothing.
    pub(crate) async fn failed_attempts(&self, name: &str) -> Result<u32> {
        if let Some(failed) = lock(&self.failed_before).as_ref() {
            return Ok(failed.get(name).copied().unwrap_or(0));
        }
        if self.fence.generation <= 1 {
            // Claimed for the first time: no execution before this one.
            lock(&self.failed_before).get_or_insert_with(HashMap::new);
            return Ok(0);
        }
        let steps = self.store.get_steps(&self.run_id).await?;
        self.remember_failed_before(&steps);
        Ok(lock(&self.failed_before)
            .as_ref()
            .and_then(|failed| failed.get(name).copied())
            .unwrap_or(0))
    }

    fn remember_completed(&self, name: &str, index: i64, output: Value) {
        if let Some(completed) = lock(&self.completed).as_mut() {
            completed.entry(name.to_owned()).or_insert((index, output));
        }
    }

    fn record_failed_step(&self, index: i64, name: &str) {
        lock(&self.failed_steps).push((index, name.to_owned()));
    }

    /// The index of the failure recorded under this lease for step `name`, if any.
    fn failed_index(&self, name: &str) -> Option<i64> {
        lock(&self.failed_steps)
            .iter()
            .filter(|(_, failed)| failed == name)
            .map(|(index, _)| *index)
            .min()
    }

    /// The name `run:fail` gives: the lowest-index step whose failure this execution recorded,
    /// or `unknown` when none did (the job failed outside its steps).
    pub(crate) fn failed_step_name(&self) -> String {
        lock(&self.failed_steps)
            .iter()
            .min_by_key(|(index, _)| *index)
            .map_or_else(|| "unknown".to_owned(), |(_, name)| name.clone())
    }

    pub(crate) fn abort_error(&self) -> Option<Error> {
        self.abort_reason().map(|reason| self.error_for(reason))
    }

    /// A fenced write matched no row: finds out why (the run was cancelled, or another worker
    /// owns it), fires the token with that reason and returns it.
    pub(crate) async fn refused(&self) -> AbortReason {
        let cancelled = matches!(
            self.store.get_run(&self.run_id).await,
            Ok(Some(run)) if run.status == RunStatus::Cancelled
        );
        let reason = match cancelled {
            true => AbortReason::Cancelled,
            false => AbortReason::LeaseLost,
        };
        self.abort(reason);
        reason
    }

    pub(crate) fn error_for(&self, reason: AbortReason) -> Error {
        let run_id = self.run_id.clone();
        match reason {
            AbortReason::Cancelled => Error::Cancelled { run_id },
            AbortReason::LeaseLost => Error::LeaseLost { run_id },
        }
    }

    /// The wait this execution is suspended on, once it asked to be.
    pub(crate) fn suspended_on(&self) -> Option<String> {
        lock(&self.waits.suspended_on).clone()
    }

    /// The deadline of the wait this execution is suspended on, if it has one.
    pub(crate) fn suspended_until(&self) -> Option<crate::time::Timestamp> {
        *lock(&self.waits.suspended_until)
    }

    /// `Err(`[`Error::Suspended`]`)` once this execution asked to be suspended: no step
    /// operation starts after that (upstream's rule, even if the job caught the error).
    pub(crate) fn check_not_suspended(&self) -> Result<()> {
        match self.suspended_on() {
            Some(wait_id) => Err(Error::Suspended {
                run_id: self.run_id.clone(),
                wait_id,
            }),
            None => Ok(()),
        }
    }

    /// The number of step functions running now.
    pub(crate) fn steps_in_flight(&self) -> usize {
        lock(&self.current_step).0
    }

    /// Whether this execution prepared a durable wait (ending the run closes its waits).
    pub(crate) fn prepared_waits(&self) -> bool {
        self.waits.prepared.load(Ordering::SeqCst)
    }

    fn current_step_name(&self) -> Option<String> {
        lock(&self.current_step).1.clone()
    }

    /// The error a join of steps ends with (upstream's `step.all` precedence): a lost lease
    /// first, then a cancellation, then, among failed steps, the one with the lowest index
    /// recorded under this lease, else the first error in branch order.
    pub(crate) fn join_error(&self, errors: Vec<Error>) -> Error {
        let position = errors
            .iter()
            .position(|e| matches!(e, Error::LeaseLost { .. }))
            .or_else(|| {
                errors
                    .iter()
                    .position(|e| matches!(e, Error::Cancelled { .. }))
            })
            .or_else(|| {
                errors
                    .iter()
                    .enumerate()
                    .filter_map(|(at, e)| match e {
                        Error::Step { name, .. } => {
                            self.failed_index(name).map(|index| (index, at))
                        }
                        _ => None,
                    })
                    .min()
                    .map(|(_, at)| at)
            })
            .unwrap_or(0);
        errors
            .into_iter()
            .nth(position)
            .unwrap_or_else(|| Error::Job("a join of steps failed without an error".into()))
    }

    fn step_started(&self, name: &str) {
        let mut current = lock(&self.current_step);
        current.0 += 1;
        current.1 = (current.0 == 1).then(|| name.to_owned());
    }

    fn step_ended(&self) {
        let mut current = lock(&self.current_step);
        current.0 = current.0.saturating_sub(1);
        if current.0 == 0 {
            current.1 = None;
        }
    }
}

/// Handed to every job function: durable steps, progress, logs and cancellation.
/// Cheap to clone; clones share the same execution.
#[derive(Clone)]
pub struct StepContext {
    shared: Arc<StepShared>,
    log: StepLog,
}

impl std::fmt::Debug for StepContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("run_id", &self.shared.run_id)
            .finish_non_exhaustive()
    }
}

impl StepContext {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn Store>,
        events: EventBus,
        run_id: String,
        job_name: String,
        labels: Labels,
        fence: Fence,
        lease: LeaseClock,
        start_index: i64,
        completed_steps: i64,
        persist_logs: bool,
        attempt_record_delay: Duration,
        metrics: RunMetrics,
        permit: RunPermit,
    ) -> Self {
        let shared = Arc::new(StepShared {
            store,
            events,
            run_id,
            job_name,
            labels,
            fence,
            token: CancellationToken::new(),
            persist_logs,
            attempt_record_delay,
            abort_reason: Mutex::new(None),
            cancel_announced: AtomicBool::new(false),
            step_index: AtomicI64::new(start_index),
            current_step: Mutex::new((0, None)),
            failed_steps: Mutex::new(Vec::new()),
            // A run claimed with no completed step has nothing to replay: skip the lookups.
            completed: Mutex::new((completed_steps == 0).then(HashMap::new)),
            names_in_use: Mutex::new(HashSet::new()),
            failed_before: Mutex::new(None),
            claimed_completed_steps: completed_steps,
            lease,
            renewing: tokio::sync::Mutex::new(()),
            waits: WaitState::default(),
            metrics,
            permit,
        });
        StepContext {
            log: StepLog {
                shared: shared.clone(),
            },
            shared,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<StepShared> {
        &self.shared
    }

    /// The id of the run being executed.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The name of the job being executed.
    pub fn job_name(&self) -> &str {
        &self.shared.job_name
    }

    /// The run's labels.
    pub fn labels(&self) -> &Labels {
        &self.shared.labels
    }

    /// The run's cancellation token: fires when the run is cancelled or this worker loses its
    /// lease. Long-running code should watch it (`token.cancelled().await`).
    pub fn token(&self) -> CancellationToken {
        self.shared.token.clone()
    }

    /// Structured logs of this run: `step.log().info("message", None).await?`.
    pub fn log(&self) -> &StepLog {
        &self.log
    }

    /// `true` once the run should stop: it was cancelled, or this worker lost its lease (the
    /// [`token`](Self::token) fired).
    pub fn is_cancelled(&self) -> bool {
        self.shared.token.is_cancelled()
    }

    /// `Err(`[`Error::Cancelled`]`)` or `Err(`[`Error::LeaseLost`]`)` once the run should stop,
    /// `Ok(())` otherwise: `step.check_cancelled()?` between two pieces of work outside steps.
    /// Also `Err(`[`Error::Suspended`]`)` once the run asked to be suspended on a durable wait.
    pub fn check_cancelled(&self) -> Result<()> {
        match self.shared.abort_error() {
            Some(error) => Err(error),
            None => self.shared.check_not_suspended(),
        }
    }

    fn emit(&self, kind: EventKind) {
        self.shared.events.emit(kind);
    }

    /// Runs a durable step. If a step with this `name` completed in an earlier execution of this
    /// run, its stored output is returned and `f` does not run. Otherwise `f` runs with the run's
    /// cancellation token and its output is stored, fenced by this worker's lease.
    ///
    /// Errors: [`Error::Cancelled`] / [`Error::LeaseLost`] when the run must stop (nothing is
    /// written), or [`Error::Step`] carrying the step's name and `f`'s own error after the
    /// failed step was recorded (its message is the step's stored error, and the run's when the
    /// job returns it).
    ///
    /// ```
    /// # async fn job(step: durably::StepContext) -> durably::Result<()> {
    /// match step.run("charge", |_| async { Err::<(), _>("card declined".into()) }).await {
    ///     Err(durably::Error::Step { name, source }) => {
    ///         assert_eq!((name.as_str(), source.to_string().as_str()), ("charge", "card declined"));
    ///     }
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn run<T, F, Fut>(&self, name: &str, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = crate::StepResult<T>>,
    {
        self.run_with(name, StepOptions::new(), |attempt| f(attempt.token()))
            .await
    }

    /// [`run`](Self::run) with options, its function given the [`Attempt`] it runs as: the
    /// cancellation token ([`Attempt::token`]) and metadata it can record while it runs
    /// ([`Attempt::set_metadata`]), kept with the attempt ([`crate::attempts`]).
    ///
    /// ```
    /// # async fn job(step: durably::StepContext) -> durably::Result<()> {
    /// use durably::StepOptions;
    /// use serde_json::json;
    /// let receipt = step
    ///     .run_with("send-invoice", StepOptions::new().metadata(json!({"channel": "email"})), |attempt| async move {
    ///         attempt.set_metadata(json!({"channel": "email", "messageId": "m-1"})).await?;
    ///         Ok("sent".to_string())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_with<T, F, Fut>(&self, name: &str, options: StepOptions, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Attempt) -> Fut,
        Fut: Future<Output = crate::StepResult<T>>,
    {
        let shared = &self.shared;
        if let Some(error) = shared.abort_error() {
            return Err(error);
        }
        shared.check_not_suspended()?;
        if shared.waits.in_progress.load(Ordering::SeqCst) {
            return Err(Error::Validation(
                "Cannot start a step during wait preparation or suspension".into(),
            ));
        }
        let mut name_in_use = NameInUse::take(shared, name)?;
        shared.check_before_step().await?;
        if let Some((saved_index, stored)) = shared.completed_output(name).await? {
            // Upstream's rule: a replay moves the next index past the saved one, never back.
            shared
                .step_index
                .fetch_max(saved_index + 1, Ordering::SeqCst);
            name_in_use.keep();
            return serde_json::from_value(stored).map_err(|e| {
                Error::Validation(format!(
                    "Stored output of step \"{name}\" of run {} does not match the step's type: {e}",
                    shared.run_id
                ))
            });
        }
        // The lookup may have read the store (the first step after a takeover): a worker that
        // froze meanwhile must prove its lease again before the closure runs.
        shared.ensure_lease().await?;
        // The token may have fired while this call awaited the store (a cancel of this
        // process): a step never starts after it.
        if let Some(error) = shared.abort_error() {
            return Err(error);
        }

        // Upstream v4: every executed attempt consumes an index, a failed one too.
        let index = shared.step_index.fetch_add(1, Ordering::SeqCst);
        let started_at = Timestamp::now();
        let started = runtime::now();
        let attempt = Attempt::new(
            shared.clone(),
            new_id(),
            name,
            index,
            started_at,
            options.metadata,
            options.attempt_number,
        );
        let recorded_first = shared.attempt_record_delay.is_zero();
        // Upstream's order: the `started` row commits before the function starts.
        if recorded_first && !attempt.begin().await? {
            return Err(self.write_refused(name, index).await);
        }
        shared
            .events
            .emit_if_observed(EventType::StepStart, &shared.run_id, || {
                EventKind::StepStart {
                    run_id: shared.run_id.clone(),
                    job_name: shared.job_name.clone(),
                    step_name: name.to_owned(),
                    step_index: index,
                    labels: shared.labels.clone(),
                }
            });
        shared.step_started(name);
        let span = telemetry::step_span(name, index, attempt.number());
        let function =
            bounded(f(attempt.clone()), options.timeout, name, &attempt).instrument(span.clone());
        let result = if recorded_first {
            function.await
        } else {
            let mut function = std::pin::pin!(function);
            tokio::select! {
                biased;
                result = &mut function => result,
                () = runtime::sleep(shared.attempt_record_delay) => {
                    // Still running: record the attempt as started while it goes on.
                    let (result, begun) = futures::join!(function, attempt.begin());
                    match begun {
                        Ok(_) => {}
                        Err(error) => tracing::warn!(
                            run_id = %shared.run_id, step = name, %error,
                            "could not record the step attempt as started"
                        ),
                    }
                    result
                }
            }
        };
        shared.step_ended();
        shared.metrics.step_attempt(
            started.elapsed(),
            step_outcome(&result, shared.abort_reason()),
        );

        let failure: BoxError = match result {
            Ok(value) => match shared.abort_error() {
                Some(abort) => abort.into(),
                None => {
                    let output = serde_json::to_value(&value).map_err(|e| {
                        Error::Validation(format!(
                            "Output of step \"{name}\" cannot be stored as JSON: {e}"
                        ))
                    })?;
                    let step = |record| NewStep {
                        name: name.to_owned(),
                        index,
                        status: StepStatus::Completed,
                        output: Some(output.clone()),
                        error: None,
                        started_at,
                        attempt: Some(record),
                    };
                    let sent = runtime::now();
                    // With a local queue another run executes while this one waits.
                    let persisted = shared
                        .permit
                        .parked(attempt.finalize(async |record| {
                            shared
                                .store
                                .persist_step(&shared.fence, step(record), Timestamp::now())
                                .await
                        }))
                        .await?;
                    return match persisted {
                        Some(_) => {
                            telemetry::step_ended(&span, StepEnd::Completed);
                            name_in_use.keep();
                            shared.lease.confirmed(sent);
                            shared.remember_completed(name, index, output.clone());
                            let duration = started.elapsed().as_millis() as u64;
                            shared.events.emit_if_observed(
                                EventType::StepComplete,
                                &shared.run_id,
                                || EventKind::StepComplete {
                                    run_id: shared.run_id.clone(),
                                    job_name: shared.job_name.clone(),
                                    step_name: name.to_owned(),
                                    step_index: index,
                                    output,
                                    duration,
                                    labels: shared.labels.clone(),
                                },
                            );
                            Ok(value)
                        }
                        None => Err(self.write_refused(name, index).await),
                    };
                }
            },
            Err(error) => error,
        };

        if shared.abort_reason() == Some(AbortReason::LeaseLost) {
            return Err(shared.error_for(AbortReason::LeaseLost));
        }
        let cancelled = shared.abort_reason() == Some(AbortReason::Cancelled);
        let step = |record| NewStep {
            name: name.to_owned(),
            index,
            status: if cancelled {
                StepStatus::Cancelled
            } else {
                StepStatus::Failed
            },
            output: None,
            error: Some(failure.to_string()),
            started_at,
            attempt: Some(record),
        };
        let persisted = attempt
            .finalize(async |record| {
                shared
                    .store
                    .persist_step(&shared.fence, step(record), Timestamp::now())
                    .await
            })
            .await?;
        match persisted {
            None => Err(self.write_refused(name, index).await),
            Some(_) if cancelled => {
                telemetry::step_ended(&span, StepEnd::Cancelled);
                self.emit_step_cancel(name, index);
                Err(shared.error_for(AbortReason::Cancelled))
            }
            Some(_) => {
                let error_type = match failure.downcast_ref::<AttemptTimedOut>() {
                    Some(_) => "timeout",
                    None => "_OTHER",
                };
                telemetry::step_ended(
                    &span,
                    StepEnd::Failed {
                        error_type,
                        message: &failure,
                    },
                );
                shared.record_failed_step(index, name);
                self.emit(EventKind::StepFail {
                    error: failure.to_string(),
                    run_id: shared.run_id.clone(),
                    job_name: shared.job_name.clone(),
                    step_name: name.to_owned(),
                    step_index: index,
                    labels: shared.labels.clone(),
                });
                Err(Error::Step {
                    name: name.to_owned(),
                    source: failure,
                })
            }
        }
    }

    fn emit_step_cancel(&self, name: &str, index: i64) {
        let shared = &self.shared;
        self.emit(EventKind::StepCancel {
            run_id: shared.run_id.clone(),
            job_name: shared.job_name.clone(),
            step_name: name.to_owned(),
            step_index: index,
            labels: shared.labels.clone(),
        });
    }

    /// Runs several steps concurrently and joins them (upstream's `step.all`): a tuple of step
    /// futures (up to eight, each with its own output type) or a `Vec` of them (a fan-out).
    /// Every branch runs to its end, even after another failed; the outputs come back in
    /// branch order. The error, when any branch failed: a lost lease first, then a
    /// cancellation, then the failed step with the lowest index, else the first in branch
    /// order. Each branch is an ordinary step (its own name, replay, attempt and fencing); the
    /// worker slot stays held for the whole join.
    ///
    /// ```
    /// # async fn job(step: durably::StepContext) -> durably::Result<()> {
    /// let (user, orders) = step
    ///     .all((
    ///         step.run("load-user", |_| async { Ok("ada".to_string()) }),
    ///         step.run("load-orders", |_| async { Ok(vec![1, 2, 3]) }),
    ///     ))
    ///     .await?;
    /// let totals: Vec<u32> = step
    ///     .all(
    ///         orders
    ///             .iter()
    ///             .map(|id| {
    ///                 let (step, name, id) = (step.clone(), format!("total-{id}"), *id);
    ///                 async move { step.run(&name, |_| async move { Ok(id * 10) }).await }
    ///             })
    ///             .collect::<Vec<_>>(),
    ///     )
    ///     .await?;
    /// # let _ = (user, totals); Ok(()) }
    /// ```
    pub async fn all<B: Branches>(&self, branches: B) -> Result<B::Output> {
        branches
            .settle()
            .await
            .map_err(|errors| self.shared.join_error(errors))
    }

    /// A fenced step write matched no row: the run was cancelled, or another worker owns it.
    async fn write_refused(&self, name: &str, index: i64) -> Error {
        let reason = self.shared.refused().await;
        if reason == AbortReason::Cancelled {
            self.emit_step_cancel(name, index);
        }
        self.shared.error_for(reason)
    }

    /// Reports progress: stored on the run (fenced by the lease, in order with the run's other
    /// writes) and emitted as `run:progress`.
    ///
    /// Once the run was cancelled or this worker lost its lease, nothing is written or emitted
    /// and the call returns [`Error::Cancelled`] or [`Error::LeaseLost`], as `step.run` does.
    pub async fn progress(
        &self,
        current: u64,
        total: Option<u64>,
        message: Option<&str>,
    ) -> Result<()> {
        let shared = &self.shared;
        if let Some(reason) = shared.abort_reason() {
            return Err(shared.error_for(reason));
        }
        let progress = Progress {
            current,
            total,
            message: message.map(str::to_owned),
        };
        let sent = runtime::now();
        let written = shared
            .store
            .update_progress(&shared.fence, Some(progress.clone()), Timestamp::now())
            .await;
        match written {
            Ok(true) => shared.lease.confirmed(sent),
            Ok(false) => return Err(shared.error_for(shared.refused().await)),
            // A failed write is reported; the event still goes out, as upstream's does.
            Err(_) => {}
        }
        self.emit(EventKind::RunProgress {
            run_id: shared.run_id.clone(),
            job_name: shared.job_name.clone(),
            progress,
            labels: shared.labels.clone(),
        });
        written.map(|_| ())
    }
}

/// Structured logs of a run: emitted as `log:write` and stored (unless disabled with
/// [`DurablyBuilder::persist_logs`](crate::DurablyBuilder::persist_logs)).
#[derive(Clone)]
pub struct StepLog {
    shared: Arc<StepShared>,
}

impl std::fmt::Debug for StepLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepLog").finish_non_exhaustive()
    }
}

impl StepLog {
    /// Writes an `info` entry; `data` is any JSON value or `None`.
    pub async fn info(
        &self,
        message: impl Into<String>,
        data: impl Into<Option<Value>>,
    ) -> Result<()> {
        self.write(LogLevel::Info, message.into(), data.into())
            .await
    }

    /// Writes a `warn` entry.
    pub async fn warn(
        &self,
        message: impl Into<String>,
        data: impl Into<Option<Value>>,
    ) -> Result<()> {
        self.write(LogLevel::Warn, message.into(), data.into())
            .await
    }

    /// Writes an `error` entry.
    pub async fn error(
        &self,
        message: impl Into<String>,
        data: impl Into<Option<Value>>,
    ) -> Result<()> {
        self.write(LogLevel::Error, message.into(), data.into())
            .await
    }

    /// Writes an entry at `level`, attributed to the step currently executing (if any).
    ///
    /// Once the run was cancelled or this worker lost its lease, nothing is written or emitted
    /// and the call returns [`Error::Cancelled`] or [`Error::LeaseLost`].
    pub async fn write(&self, level: LogLevel, message: String, data: Option<Value>) -> Result<()> {
        let shared = &self.shared;
        if let Some(reason) = shared.abort_reason() {
            return Err(shared.error_for(reason));
        }
        let step_name = shared.current_step_name();
        let written = if shared.persist_logs {
            let log = NewLog {
                run_id: shared.run_id.clone(),
                step_name: step_name.clone(),
                level,
                message: message.clone(),
                data: data.clone(),
            };
            match shared
                .store
                .append_log(Some(&shared.fence), log, Timestamp::now())
                .await
            {
                Ok(Some(_)) => Ok(()),
                Ok(None) => return Err(shared.error_for(shared.refused().await)),
                // A failed write is reported; the event still goes out.
                Err(error) => Err(error),
            }
        } else {
            Ok(())
        };
        shared.events.emit(EventKind::LogWrite {
            run_id: shared.run_id.clone(),
            job_name: shared.job_name.clone(),
            labels: shared.labels.clone(),
            step_name,
            level,
            message,
            data,
        });
        written
    }
}

/// An attempt's function, failing with [`AttemptTimedOut`] (its future dropped) when it runs
/// longer than `timeout`.
/// How a step attempt whose function returned `result` ended, for its metrics.
fn step_outcome<T, E>(
    result: &std::result::Result<T, E>,
    abort: Option<AbortReason>,
) -> StepOutcome {
    match (abort, result) {
        (Some(AbortReason::LeaseLost), _) => StepOutcome::LeaseLost,
        (Some(AbortReason::Cancelled), _) => StepOutcome::Cancelled,
        (None, Ok(_)) => StepOutcome::Completed,
        (None, Err(_)) => StepOutcome::Failed,
    }
}

async fn bounded<T, E: Into<BoxError>>(
    function: impl Future<Output = std::result::Result<T, E>>,
    timeout: Option<Duration>,
    step: &str,
    attempt: &Attempt,
) -> std::result::Result<T, BoxError> {
    let Some(timeout) = timeout else {
        return function.await.map_err(Into::into);
    };
    tokio::select! {
        result = function => result.map_err(Into::into),
        () = runtime::sleep(timeout) => Err(Box::new(AttemptTimedOut {
            step: step.to_owned(),
            attempt: attempt.number(),
            after: timeout,
        })),
    }
}

/// A step name taken by one call of [`StepContext::run_with`] in this execution: released when
/// the call ends without the step completing (a failed attempt may be retried under its name),
/// kept once it completed or replayed.
struct NameInUse<'a> {
    shared: &'a StepShared,
    name: &'a str,
    kept: bool,
}

impl<'a> NameInUse<'a> {
    /// Takes `name`, or refuses a name this execution already ran, replayed or is running.
    fn take(shared: &'a StepShared, name: &'a str) -> Result<Self> {
        if !lock(&shared.names_in_use).insert(name.to_owned()) {
            return Err(Error::Validation(format!(
                "Step name \"{name}\" is used twice in one execution of run {}: a step is \
                 identified by its name, so a second call would return the first one's stored \
                 output. Give each call its own name (in a loop: format!(\"{name}-{{i}}\"))",
                shared.run_id
            )));
        }
        Ok(NameInUse {
            shared,
            name,
            kept: false,
        })
    }

    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for NameInUse<'_> {
    fn drop(&mut self) {
        if !self.kept {
            lock(&self.shared.names_in_use).remove(self.name);
        }
    }
}
