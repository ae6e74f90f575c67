//! The worker: claims runs with leases, executes them, renews leases, and keeps the database
//! tidy while idle. Also the serverless primitives [`Durably::process_one`] and
//! [`Durably::process_until_idle`].
//!
//! Every write a worker makes for a run is fenced by the lease generation it claimed, so a
//! worker that lost its lease (expired and reclaimed elsewhere, or cancelled) cannot overwrite
//! anything: its writes match no row, its cancellation token fires, and `step.run` refuses to
//! start new steps.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::durably::Durably;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::job::ExecutionError;
use crate::lease::LeaseClock;
use crate::run::{Run, RunStatus, StepStatus};
use crate::step::{AbortReason, StepContext, StepShared};
use crate::store::{
    ClaimRequest, Enqueued, Fence, LEASE_EXPIRED_PENDING_EXISTS, NewRun, StoreNotice,
};
use crate::time::{Timestamp, new_id};

/// How often idle maintenance may purge old runs or checkpoint the WAL.
const MAINTENANCE_CADENCE: Duration = Duration::from_secs(60);
/// How soon idle maintenance tries a checkpoint again after one found the database busy.
const BUSY_CHECKPOINT_RETRY: Duration = Duration::from_secs(30);
/// Runs deleted per retention purge.
const RETENTION_BATCH: u64 = 100;
/// Longest wait between retries after the store failed.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Worker bookkeeping shared by every clone of a [`Durably`].
#[derive(Default)]
pub(crate) struct WorkerState {
    wake: Arc<Notify>,
    /// Open while the worker loop runs (and is not backing off after a store error): a trigger
    /// of this process hands its run to the loop, which enqueues it and claims in one
    /// transaction (see [`WorkerState::hand_off`]).
    intake: Mutex<Option<mpsc::UnboundedSender<HandOff>>>,
    running: Mutex<Option<RunningWorker>>,
    active: Mutex<HashMap<String, Arc<StepShared>>>,
    maintenance: tokio::sync::Mutex<MaintenanceClock>,
}

struct RunningWorker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct MaintenanceClock {
    /// Last expired-lease sweep by the worker loop (at most once per lease period).
    last_release: Option<Instant>,
    last_purge: Option<Instant>,
    last_checkpoint: Option<Instant>,
    /// The last checkpoint could not finish (the database was busy).
    checkpoint_busy: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A trigger handed to the worker loop: the run to enqueue and where its outcome goes.
pub(crate) struct HandOff {
    run: NewRun,
    reply: oneshot::Sender<Result<Enqueued>>,
}

/// What became of a trigger offered to the worker loop.
pub(crate) enum Handed {
    /// The loop took it; its outcome comes on the receiver.
    Taken(oneshot::Receiver<Result<Enqueued>>),
    /// The loop is not waiting: the caller enqueues the run itself.
    Refused(NewRun),
}

impl WorkerState {
    /// Wakes an idle worker at once (a run was triggered in this process).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Hands a trigger to the worker loop if its intake is open: the loop enqueues the run and
    /// claims for its free slots in the same transaction (one commit fewer before the run
    /// starts), announces the run, and answers on the returned receiver. Gives the run back when
    /// the worker is stopped, not running or backing off; the caller then enqueues it itself.
    pub(crate) fn hand_off(&self, run: NewRun) -> Handed {
        let intake = lock(&self.intake);
        let Some(sender) = intake.as_ref() else {
            return Handed::Refused(run);
        };
        let (reply, answer) = oneshot::channel();
        match sender.send(HandOff { run, reply }) {
            Ok(()) => Handed::Taken(answer),
            Err(unsent) => Handed::Refused(unsent.0.run),
        }
    }

    /// Marks a run executing in this process as being cancelled by this process's `cancel`,
    /// which announces it (`run:cancel`); `false` after that cancel failed.
    pub(crate) fn announce_cancel(&self, run_id: &str, announced: bool) {
        let execution = lock(&self.active).get(run_id).cloned();
        if let Some(execution) = execution {
            execution.set_cancel_announced(announced);
        }
    }

    /// Whether the run is executing in this process.
    pub(crate) fn is_executing(&self, run_id: &str) -> bool {
        lock(&self.active).contains_key(run_id)
    }

    /// Fires the cancellation token of a run executing in this process.
    pub(crate) fn cancel_local(&self, run_id: &str) {
        let execution = lock(&self.active).get(run_id).cloned();
        if let Some(execution) = execution {
            execution.abort(AbortReason::Cancelled);
        }
    }
}

/// Aborts a task when dropped (a lease keeper must not outlive its execution).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes a run from the ones executing in this process when dropped.
struct Deregister {
    worker: Arc<crate::durably::Inner>,
    run_id: String,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        lock(&self.worker.worker.active).remove(&self.run_id);
    }
}

/// A claimed run registered as executing here, waiting for its job function to start.
struct Held {
    run: Run,
    /// The lease owner (this worker).
    owner: String,
    step: StepContext,
    shared: Arc<StepShared>,
    active: Deregister,
    /// Renews the lease from the claim on.
    keeper: AbortOnDrop,
    /// Set when its job starts (and `run:leased` is emitted): the keeper announces renewals
    /// from then on.
    started: Arc<std::sync::atomic::AtomicBool>,
}

/// What a job function returned (or how it panicked).
type JobResult =
    std::result::Result<std::result::Result<Value, ExecutionError>, Box<dyn std::any::Any + Send>>;

/// A run whose job function returned; its end is not recorded yet.
struct Returned {
    run: Run,
    fence: Fence,
    shared: Arc<StepShared>,
    result: JobResult,
    started: Instant,
    /// How long the job function ran.
    elapsed: Duration,
    _active: Deregister,
}

/// How far a held run got.
enum Execution {
    /// Ended without its job function returning a result to record.
    Ended(Outcome),
    /// Its job function returned.
    Returned(Box<Returned>),
}

/// A recorded end, with the runs claimed in the same write.
struct Ended {
    outcome: Outcome,
    claimed: Vec<Run>,
    /// When the claim of `claimed` was sent: their leases count from then.
    claim_sent: Instant,
    /// A completion whose claim looked for runs: fewer than asked means nothing more was
    /// claimable.
    looked: bool,
}

/// The output of a future that may be absent (then pending forever, for `select!`).
async fn pending_or<F: std::future::Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Whether a slot holds a run that may go back to pending (one without a concurrency key).
fn releasable(held: &std::collections::VecDeque<Held>) -> bool {
    held.iter().any(|held| held.run.concurrency_key.is_none())
}

/// The tracing span of one run's execution.
fn run_span(run: &Run) -> tracing::Span {
    tracing::info_span!(
        "durably.run",
        run_id = %run.id,
        job = %run.job_name,
        generation = run.lease_generation
    )
}

/// How one execution of a claimed run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The run completed.
    Completed,
    /// The run failed.
    Failed,
    /// The run was cancelled while executing.
    Cancelled,
    /// This worker lost the lease; whatever it did after that did not land.
    LeaseLost,
}

impl Durably {
    /// Migrates the schema, then starts the worker.
    pub async fn init(&self) -> Result<()> {
        self.migrate().await?;
        self.start();
        Ok(())
    }

    /// Starts the background worker (no-op if it is already running). Requires a tokio runtime.
    pub fn start(&self) {
        self.start_as(format!("worker_{}", new_id()));
    }

    /// Starts the background worker with a fixed worker id (the lease owner it writes).
    pub fn start_as(&self, worker_id: impl Into<String>) {
        let mut running = lock(&self.inner.worker.running);
        if running.is_some() {
            return;
        }
        let stop = CancellationToken::new();
        let worker_id = worker_id.into();
        let span = tracing::info_span!("durably.worker", worker_id = %worker_id);
        let task = tokio::spawn(
            self.clone()
                .worker_loop(worker_id, stop.clone())
                .instrument(span),
        );
        *running = Some(RunningWorker { stop, task });
    }

    /// `true` while the background worker runs.
    pub fn is_running(&self) -> bool {
        lock(&self.inner.worker.running).is_some()
    }

    /// Stops the worker gracefully: no new claims; waits for in-flight runs (they are not
    /// cancelled) and any running maintenance. Returns at once if the worker is not running.
    /// [`stop_within`](Self::stop_within) bounds the wait.
    pub async fn stop(&self) {
        if let Some(worker) = self.stop_claiming()
            && let Err(error) = worker.task.await
        {
            tracing::error!(%error, "durably worker task ended abnormally");
        }
    }

    /// Stops the worker like [`stop`](Self::stop), but waits at most `grace` for the runs in
    /// flight. Runs still executing then are abandoned as a crash abandons them: their
    /// executions are dropped, their leases are no longer renewed, and once a lease expires
    /// (`lease_duration`) any worker takes the run over, replaying its completed steps.
    /// Returns `true` when everything finished within `grace`.
    ///
    /// ```no_run
    /// # async fn example(durably: durably::Durably) {
    /// use std::time::Duration;
    /// if !durably.stop_within(Duration::from_secs(30)).await {
    ///     eprintln!("some runs did not finish in time; another worker will resume them");
    /// }
    /// # }
    /// ```
    pub async fn stop_within(&self, grace: Duration) -> bool {
        let Some(mut worker) = self.stop_claiming() else {
            return true;
        };
        match tokio::time::timeout(grace, &mut worker.task).await {
            Ok(Err(error)) if !error.is_cancelled() => {
                tracing::error!(%error, "durably worker task ended abnormally");
                true
            }
            Ok(_) => true,
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "runs still executing at the end of the grace period are abandoned"
                );
                worker.task.abort();
                let _ = worker.task.await;
                false
            }
        }
    }

    /// Fires the worker's stop token and takes it out of the running state.
    fn stop_claiming(&self) -> Option<RunningWorker> {
        // Fire the token before the worker stops counting as running, so whoever sees
        // `is_running() == false` knows no new claims will be made.
        let mut running = lock(&self.inner.worker.running);
        if let Some(worker) = running.as_ref() {
            worker.stop.cancel();
        }
        running.take()
    }

    async fn worker_loop(self, worker_id: String, stop: CancellationToken) {
        let config = self.inner.config.clone();
        let wake = self.inner.worker.wake.clone();
        let mut in_flight: JoinSet<bool> = JoinSet::new();
        // Wake-ups from other processes (PostgreSQL LISTEN/NOTIFY); `None` for backends that
        // only poll.
        let mut notices = self.inner.store.notifications();
        // Triggers of this process handed to the loop (see `WorkerState::hand_off`).
        let (intake_sender, mut intake) = mpsc::unbounded_channel::<HandOff>();
        let mut handed: Vec<HandOff> = Vec::new();
        let mut claimable = Claimable::default();
        // While the store fails: no claim before this (see `Backoff`).
        let mut backoff = Backoff::default();
        loop {
            if stop.is_cancelled() {
                break;
            }
            // Reap every finished run first: `len()` counts finished-but-unjoined tasks, and
            // undercounting free slots would claim one run per round trip.
            if reap(&mut in_flight, &mut claimable) {
                backoff.retry_soon();
            }
            handed.extend(std::iter::from_fn(|| intake.try_recv().ok()));
            if !handed.is_empty() {
                self.take_hand_offs(
                    std::mem::take(&mut handed),
                    &worker_id,
                    &stop,
                    &mut in_flight,
                    &mut claimable,
                )
                .await;
                continue;
            }
            let free = config.max_concurrent_runs.saturating_sub(in_flight.len());
            if free > 0 && backoff.allows_claim() && claimable.should_claim() {
                let sent = Instant::now();
                let claimed = self
                    .inner
                    .store
                    .claim(&worker_id, Timestamp::now(), config.lease_duration, free)
                    .await;
                match claimed {
                    Ok(runs) if !runs.is_empty() => {
                        backoff = Backoff::default();
                        if runs.len() < free {
                            claimable.found_nothing_more();
                        }
                        self.start_runs(runs, sent, &worker_id, &stop, &mut in_flight);
                        continue;
                    }
                    Ok(_) => {
                        backoff = Backoff::default();
                        claimable.found_nothing_more();
                        if in_flight.is_empty() {
                            self.idle_maintenance(false).await;
                        }
                    }
                    Err(error) => {
                        let wait = backoff.failed();
                        tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "claim failed");
                        self.worker_error(error.to_string(), "claim", None);
                    }
                }
            }
            // While the store fails the loop backs off, and triggers enqueue themselves.
            let hand_off = config.trigger_hand_off && !backoff.is_failing();
            self.set_intake(hand_off.then(|| intake_sender.clone()));
            let now = tokio::time::Instant::now();
            let next_look = match backoff.retry_at() {
                Some(at) if at > now => at,
                _ => now + config.polling_interval,
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(ended) = in_flight.join_next(), if !in_flight.is_empty() => {
                    backoff.retry_soon();
                    claimable.slot_ended(ended);
                }
                // A wake-up comes after a write that succeeded: the store answers again.
                _ = wake.notified() => {
                    backoff.retry_soon();
                    claimable.look_again();
                }
                notice = next_notice(&mut notices), if notices.is_some() => {
                    if self.handle_notices(notice, &mut notices) {
                        backoff.retry_soon();
                    }
                    claimable.look_again();
                }
                Some(hand_off) = intake.recv() => handed.push(hand_off),
                _ = tokio::time::sleep_until(next_look) => claimable.look_again()
            }
        }
        // Closed: every hand-off was sent before, and is enqueued here (a stopping worker
        // claims nothing new).
        self.set_intake(None);
        handed.extend(std::iter::from_fn(|| intake.try_recv().ok()));
        if !handed.is_empty() {
            self.take_hand_offs(handed, &worker_id, &stop, &mut in_flight, &mut claimable)
                .await;
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// Opens (`Some`) or closes the intake of hand-offs.
    fn set_intake(&self, sender: Option<mpsc::UnboundedSender<HandOff>>) {
        *lock(&self.inner.worker.intake) = sender;
    }

    /// Starts each run of a claim sent at `sent` in a slot of its own.
    fn start_runs(
        &self,
        runs: Vec<Run>,
        sent: Instant,
        worker_id: &str,
        stop: &CancellationToken,
        in_flight: &mut JoinSet<bool>,
    ) {
        for run in runs {
            let durably = self.clone();
            let owner = worker_id.to_owned();
            let stop = stop.clone();
            in_flight.spawn(async move { durably.execute_in_slot(run, sent, &owner, &stop).await });
        }
    }

    /// Enqueues handed-off triggers, all at once. The first also claims for the free slots in
    /// its own transaction, so on an idle worker a trigger's run starts after one commit
    /// instead of two. Each run is announced before its trigger is answered (and so before any
    /// of its own events: see `announcing`); then the claimed runs start.
    async fn take_hand_offs(
        &self,
        handed: Vec<HandOff>,
        worker_id: &str,
        stop: &CancellationToken,
        in_flight: &mut JoinSet<bool>,
        claimable: &mut Claimable,
    ) {
        let config = &self.inner.config;
        reap(in_flight, claimable);
        // A stopping worker claims nothing new; the runs are only enqueued.
        let free = match stop.is_cancelled() {
            true => 0,
            false => config.max_concurrent_runs.saturating_sub(in_flight.len()),
        };
        let (sent, now) = (Instant::now(), Timestamp::now());
        let store = &self.inner.store;
        let outcomes = futures::future::join_all(handed.iter().enumerate().map(|(i, hand_off)| {
            let next = ClaimRequest {
                worker_id: worker_id.to_owned(),
                lease: config.lease_duration,
                max: if i == 0 { free } else { 0 },
                frees_key: false,
            };
            async move {
                store
                    .enqueue_and_claim(hand_off.run.clone(), now, &next)
                    .await
            }
        }))
        .await;
        // One hand-off, whose store call (so its claim) went through.
        let looked = handed.len() == 1 && outcomes.iter().all(|outcome| outcome.is_ok());
        let mut claimed = Vec::new();
        for (hand_off, outcome) in handed.into_iter().zip(outcomes) {
            let answer = outcome.map(|(enqueued, runs)| {
                // No wake: this loop claims next.
                self.announce_without_wake(&enqueued, &hand_off.run);
                claimed.extend(runs);
                enqueued
            });
            let _ = hand_off.reply.send(answer);
        }
        if looked && free > 0 {
            // That claim was a full look, after every enqueue.
            *claimable = Claimable::default();
            if claimed.len() < free {
                claimable.found_nothing_more();
            }
        } else {
            // Runs were enqueued that no claim has looked for.
            claimable.look_again();
        }
        self.start_runs(claimed, sent, worker_id, stop, in_flight);
    }

    /// Applies a notice and every other one already queued: cancels fire the run's token if it
    /// executes here; anything else just lets the loop claim again. Returns whether one of them
    /// came from the database (a run became available or was cancelled), which then answers.
    fn handle_notices(
        &self,
        first: std::result::Result<StoreNotice, broadcast::error::RecvError>,
        notices: &mut Option<broadcast::Receiver<StoreNotice>>,
    ) -> bool {
        let mut from_database = false;
        let mut next = Some(first);
        while let Some(notice) = next.take() {
            match notice {
                Ok(StoreNotice::RunCancelled { run_id }) => {
                    from_database = true;
                    self.inner.worker.cancel_local(&run_id);
                }
                Ok(StoreNotice::StorageFault { operation, error }) => {
                    tracing::warn!(%operation, %error, "storage fault; the store retries");
                    self.worker_error(format!("{operation}: {error}"), "storage", None);
                }
                Ok(StoreNotice::RunsAvailable) => from_database = true,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    *notices = None;
                    return from_database;
                }
            }
            next = notices
                .as_mut()
                .and_then(|receiver| match receiver.try_recv() {
                    Ok(notice) => Some(Ok(notice)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Some(Err(broadcast::error::RecvError::Lagged(n)))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Some(Err(broadcast::error::RecvError::Closed))
                    }
                    Err(broadcast::error::TryRecvError::Empty) => None,
                });
        }
        from_database
    }

    fn worker_error(&self, error: String, context: &str, run_id: Option<&str>) {
        self.inner.events.emit(EventKind::WorkerError {
            error,
            context: context.to_owned(),
            run_id: run_id.map(str::to_owned),
        });
    }

    /// Claims and executes one run; `false` when nothing was claimable. No maintenance.
    pub async fn process_one(&self, worker_id: Option<&str>) -> Result<bool> {
        let worker_id = worker_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("worker_{}", new_id()));
        let config = &self.inner.config;
        let sent = Instant::now();
        let mut claimed = self
            .inner
            .store
            .claim(&worker_id, Timestamp::now(), config.lease_duration, 1)
            .await?;
        match claimed.pop() {
            Some(run) => {
                self.execute(run, sent, &worker_id).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Processes runs one after another until none is claimable or `max_runs` were processed;
    /// runs idle maintenance once if it stopped because the queue was idle. Returns the number
    /// of runs processed.
    pub async fn process_until_idle(
        &self,
        worker_id: Option<&str>,
        max_runs: Option<usize>,
    ) -> Result<usize> {
        let worker_id = worker_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("worker_{}", new_id()));
        let mut processed = 0;
        loop {
            if max_runs.is_some_and(|max| processed >= max) {
                return Ok(processed);
            }
            if !self.process_one(Some(&worker_id)).await? {
                break;
            }
            processed += 1;
        }
        self.run_idle_maintenance().await;
        Ok(processed)
    }

    /// Idle maintenance: return expired leases to pending (failing those whose job+key already
    /// has a pending run), apply `retain_runs` (at most once a minute, 100 runs a time), and
    /// checkpoint SQLite's WAL (at most once a minute; 30 s after one that found the database
    /// busy). Errors become `worker:error` events.
    ///
    /// Called directly (and by [`Durably::process_until_idle`]) it always sweeps expired leases;
    /// the background worker sweeps at most once per lease period, so an idle worker costs the
    /// database about one claim query per polling interval.
    pub async fn run_idle_maintenance(&self) {
        self.idle_maintenance(true).await;
    }

    async fn idle_maintenance(&self, always_release: bool) {
        let mut clock = self.inner.worker.maintenance.lock().await;
        let store = &self.inner.store;
        let release_due = always_release
            || clock
                .last_release
                .is_none_or(|at| at.elapsed() >= self.inner.config.lease_duration);
        let released = if release_due {
            clock.last_release = Some(Instant::now());
            Some(
                store
                    .release_expired_leases(Timestamp::now(), !self.inner.config.preserve_steps)
                    .await,
            )
        } else {
            None
        };
        match released {
            None => {}
            Some(Ok(changed)) => {
                for run in changed {
                    tracing::info!(run_id = %run.id, status = %run.status, "expired lease released");
                    if run.status == RunStatus::Failed {
                        self.inner.events.emit(EventKind::RunFail {
                            run_id: run.id,
                            job_name: run.job_name,
                            error: LEASE_EXPIRED_PENDING_EXISTS.to_owned(),
                            failed_step_name: "unknown".into(),
                            labels: run.labels,
                        });
                    }
                }
            }
            Some(Err(error)) => self.worker_error(error.to_string(), "idle-maintenance", None),
        }
        if let Some(retain) = self.inner.config.retain_runs
            && clock
                .last_purge
                .is_none_or(|at| at.elapsed() >= MAINTENANCE_CADENCE)
        {
            clock.last_purge = Some(Instant::now());
            let cutoff = Timestamp::now() - retain;
            if let Err(error) = store.purge_runs(cutoff, RETENTION_BATCH).await {
                self.worker_error(error.to_string(), "idle-maintenance", None);
            }
        }
        let checkpoint_cadence = match clock.checkpoint_busy {
            true => BUSY_CHECKPOINT_RETRY,
            false => MAINTENANCE_CADENCE,
        };
        if clock
            .last_checkpoint
            .is_none_or(|at| at.elapsed() >= checkpoint_cadence)
        {
            clock.last_checkpoint = Some(Instant::now());
            match store.checkpoint().await {
                Ok(finished) => clock.checkpoint_busy = !finished,
                Err(error) => self.worker_error(error.to_string(), "wal-checkpoint", None),
            }
        }
    }

    /// Executes one run, claimed by a claim sent at `sent`, to its end (upstream §4.3).
    pub(crate) async fn execute(&self, run: Run, sent: Instant, worker_id: &str) -> Outcome {
        let span = run_span(&run);
        let held = self.hold(run, sent, worker_id);
        match self.run_job(held).instrument(span.clone()).await {
            Execution::Ended(outcome) => outcome,
            Execution::Returned(returned) => {
                let ending = self.record_end(returned, worker_id, 0);
                ending.instrument(span).await.outcome
            }
        }
    }

    /// Executes a claimed run in one of the worker's slots, then the runs claimed with each
    /// completion, until one finishes with nothing left to claim or the worker is stopping (a
    /// stopping worker claims nothing new, but executes the runs it holds).
    ///
    /// The slot is free for the next run as soon as a job function returns: the completion is
    /// written while the next run executes, so the next run's first step and the completion
    /// share a write. For that the slot *claims ahead* (see [`Config::claim_ahead_below`]):
    /// after a run that executed for less than `claim_ahead_below`, its completion claims one
    /// run more than the slot needs at once, and the slot holds it (leased, its lease renewed)
    /// until the run executing returns. At most one run per slot is held; a held run without
    /// a concurrency key goes back to pending once the run executing has taken
    /// `claim_ahead_below` (it may be long), so that an idle worker takes it.
    ///
    /// Returns `true` when the slot ends *quietly*: its last completion's claim found nothing,
    /// so nothing was claimable a moment ago.
    ///
    /// [`Config::claim_ahead_below`]: crate::Config::claim_ahead_below
    async fn execute_in_slot(
        &self,
        run: Run,
        sent: Instant,
        worker_id: &str,
        stop: &CancellationToken,
    ) -> bool {
        let claim_ahead_below = self.inner.config.claim_ahead_below;
        let mut held = std::collections::VecDeque::from([self.hold(run, sent, worker_id)]);
        let mut ending: Option<futures::future::BoxFuture<'_, Ended>> = None;
        let mut quiet = false;
        let mut take = |ended: Ended, held: &mut std::collections::VecDeque<Held>| {
            quiet = ended.looked && ended.claimed.is_empty();
            let sent = ended.claim_sent;
            let claimed = ended.claimed.into_iter();
            held.extend(claimed.map(|run| self.hold(run, sent, worker_id)));
        };
        loop {
            let Some(next) = held.pop_front() else {
                match ending.take() {
                    Some(end) => {
                        take(end.await, &mut held);
                        continue;
                    }
                    None => break,
                }
            };
            let span = run_span(&next.run);
            let execution = self.run_job(next).instrument(span.clone());
            let mut execution = std::pin::pin!(execution);
            let release_at = tokio::time::Instant::now() + claim_ahead_below;
            let execution = loop {
                tokio::select! {
                    ended = pending_or(&mut ending), if ending.is_some() => {
                        ending = None;
                        take(ended, &mut held);
                    }
                    execution = &mut execution => break execution,
                    _ = tokio::time::sleep_until(release_at), if releasable(&held) => {
                        for run in std::mem::take(&mut held) {
                            match run.run.concurrency_key {
                                None => self.release_held(run),
                                Some(_) => held.push_back(run),
                            }
                        }
                    }
                }
            };
            if let Some(end) = ending.take() {
                take(end.await, &mut held);
            }
            let Execution::Returned(returned) = execution else {
                continue;
            };
            // One run to execute next, plus one held ahead after a short execution of a run
            // without a concurrency key. After a keyed run the slot does not claim ahead: in a
            // queue of keyed runs, runs held ahead hold their keys, which other slots could
            // run meanwhile (measured: `keyed-1step` on SQLite, 8 slots and 8 keys, 450 jobs/s
            // claiming ahead, 3,400 without).
            let short = returned.elapsed < claim_ahead_below;
            let wanted: usize = match short && returned.run.concurrency_key.is_none() {
                true => 2,
                false => 1,
            };
            let claim = match stop.is_cancelled() {
                true => 0,
                false => wanted.saturating_sub(held.len()),
            };
            let end = self.record_end(returned, worker_id, claim);
            ending = Some(Box::pin(end.instrument(span)));
        }
        quiet
    }

    /// Registers a run, claimed by a claim sent at `sent`, as executing here before its job
    /// starts (a `cancel` meanwhile fires its token, as for a run already executing) and keeps
    /// its lease from now on.
    fn hold(&self, run: Run, sent: Instant, worker_id: &str) -> Held {
        let config = &self.inner.config;
        let step = StepContext::new(
            self.inner.store.clone(),
            self.inner.events.clone(),
            run.id.clone(),
            run.job_name.clone(),
            run.labels.clone(),
            Fence::of(&run),
            LeaseClock::new(config.lease_duration, sent),
            run.current_step_index,
            run.completed_step_count,
            config.persist_logs,
        );
        let shared = step.shared().clone();
        lock(&self.inner.worker.active).insert(run.id.clone(), shared.clone());
        // Also when the execution is dropped midway (`stop_within` abandoning it).
        let active = Deregister {
            worker: self.inner.clone(),
            run_id: run.id.clone(),
        };
        let lease_owner = run
            .lease_owner
            .clone()
            .unwrap_or_else(|| worker_id.to_owned());
        let span = run_span(&run);
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let keeper = AbortOnDrop(tokio::spawn(
            self.clone()
                .keep_lease(shared.clone(), lease_owner.clone(), started.clone())
                .instrument(span),
        ));
        Held {
            run,
            owner: lease_owner,
            started,
            step,
            shared,
            active,
            keeper,
        }
    }

    /// Gives a held run back (to pending, in the background), so that any worker may take it;
    /// wakes this process's worker, whose idle slots may.
    fn release_held(&self, held: Held) {
        let Held {
            run,
            shared,
            active,
            keeper,
            ..
        } = held;
        // No renewal of a lease being given back.
        drop(keeper);
        let span = run_span(&run);
        let durably = self.clone();
        let release = async move {
            let released = durably
                .inner
                .store
                .release_lease(&shared.fence, Timestamp::now())
                .await;
            drop(active);
            match released {
                Ok(true) => {
                    tracing::debug!("held run released: the run executing in its slot is long");
                    durably.inner.worker.wake();
                }
                // Cancelled or taken over meanwhile: nothing of it to give back.
                Ok(false) => {}
                Err(error) => {
                    // Not started here: its lease expires and any worker takes it over.
                    durably.worker_error(error.to_string(), "lease-release", Some(&run.id));
                }
            }
        };
        tokio::spawn(release.instrument(span));
    }

    /// Runs a held run's job function until it returns (or ends the run at once: an unknown
    /// job, a run cancelled or lost while it was held).
    async fn run_job(&self, held: Held) -> Execution {
        let store = &self.inner.store;
        let drop_steps = !self.inner.config.preserve_steps;
        tracing::debug!("claimed");
        // Let triggers of this process that are still announcing their runs finish first.
        drop(self.inner.announcing.write().await);
        let Held {
            run,
            owner,
            step,
            shared,
            active,
            keeper,
            started: announced,
        } = held;
        // A run held (claimed ahead) while this process froze may have lost its lease: it
        // starts only while its lease is provably valid (renewed first otherwise).
        if shared.abort_reason().is_none()
            && let Err(error) = shared.ensure_lease().await
            && shared.abort_reason().is_none()
        {
            // The renewal itself failed (the store did not answer): not started here; its
            // lease expires and any worker takes it over.
            self.worker_error(error.to_string(), "lease-renewal", Some(&run.id));
            return Execution::Ended(Outcome::LeaseLost);
        }
        match shared.abort_reason() {
            Some(AbortReason::Cancelled) => {
                tracing::info!("run cancelled before it started");
                self.announce_cancel_found(&run, &shared);
                return Execution::Ended(Outcome::Cancelled);
            }
            Some(AbortReason::LeaseLost) => return Execution::Ended(Outcome::LeaseLost),
            None => {}
        }
        let fence = shared.fence.clone();

        let Some(job) = self.registered_job(&run.job_name) else {
            let error = format!("Unknown job: {}", run.job_name);
            tracing::warn!(%error, "cannot execute run");
            // SPEC §3: without preserve_steps, step outputs go at any terminal state (a run
            // reclaimed from a process that had the job may carry steps).
            let outcome = match store
                .fail_run(&fence, &error, Timestamp::now(), drop_steps)
                .await
            {
                Ok(true) => {
                    self.inner.events.emit(EventKind::RunFail {
                        run_id: run.id,
                        job_name: run.job_name,
                        error,
                        failed_step_name: "unknown".into(),
                        labels: run.labels,
                    });
                    Outcome::Failed
                }
                Ok(false) => Outcome::LeaseLost,
                Err(e) => {
                    self.worker_error(e.to_string(), "run-failure", Some(&run.id));
                    Outcome::LeaseLost
                }
            };
            return Execution::Ended(outcome);
        };

        let started = Instant::now();
        self.inner.events.emit(EventKind::RunLeased {
            run_id: run.id.clone(),
            job_name: run.job_name.clone(),
            input: run.input.clone(),
            lease_owner: owner,
            lease_expires_at: run
                .lease_expires_at
                .unwrap_or_else(Timestamp::now)
                .to_string(),
            labels: run.labels.clone(),
        });
        announced.store(true, std::sync::atomic::Ordering::SeqCst);

        let result = AssertUnwindSafe((job.execute)(step, run.input.clone()))
            .catch_unwind()
            .await;
        drop(keeper);
        // The run stays among the active ones until its end is recorded, so that a `cancel` of
        // this process meanwhile marks it as announced (see `announce_cancel_found`).
        Execution::Returned(Box::new(Returned {
            run,
            fence,
            shared,
            result,
            started,
            elapsed: started.elapsed(),
            _active: active,
        }))
    }

    /// Records how an execution ended (completed, failed, cancelled or lost); a completion
    /// also claims up to `claim` runs in the same write.
    async fn record_end(&self, returned: Box<Returned>, worker_id: &str, claim: usize) -> Ended {
        let Returned {
            run,
            fence,
            shared,
            result,
            started,
            _active: active,
            ..
        } = *returned;
        let claim_sent = Instant::now();
        let (outcome, claimed) = self
            .finish(&run, &fence, &shared, result, started, worker_id, claim)
            .await;
        drop(active);
        Ended {
            looked: claim > 0 && outcome == Outcome::Completed,
            outcome,
            claimed,
            claim_sent,
        }
    }

    /// Records how an execution ended: completed, failed, cancelled or lost.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        run: &Run,
        fence: &Fence,
        shared: &StepShared,
        result: std::result::Result<
            std::result::Result<Value, ExecutionError>,
            Box<dyn std::any::Any + Send>,
        >,
        started: Instant,
        worker_id: &str,
        claim: usize,
    ) -> (Outcome, Vec<Run>) {
        let drop_steps = !self.inner.config.preserve_steps;
        let failure = match result {
            Ok(Ok(output)) if shared.abort_reason() != Some(AbortReason::Cancelled) => {
                return self
                    .finish_completed(run, fence, shared, output, started, worker_id, claim)
                    .await;
            }
            Ok(Ok(_)) => None,
            Ok(Err(ExecutionError::Job(error))) => match error.downcast_ref::<Error>() {
                Some(Error::Cancelled { .. }) | Some(Error::LeaseLost { .. }) => None,
                _ => Some(error.to_string()),
            },
            Ok(Err(ExecutionError::Message(message))) => Some(message),
            Err(panic) => Some(format!("Job panicked: {}", panic_text(&*panic))),
        };
        let outcome = match (failure, shared.abort_reason()) {
            (_, Some(AbortReason::Cancelled)) => {
                tracing::info!("run cancelled while executing");
                self.announce_cancel_found(run, shared);
                Outcome::Cancelled
            }
            (_, Some(AbortReason::LeaseLost)) | (None, None) => {
                tracing::warn!("lease lost; execution abandoned");
                Outcome::LeaseLost
            }
            (Some(message), None) => {
                self.finish_failed(run, fence, shared, message, drop_steps)
                    .await
            }
        };
        (outcome, Vec::new())
    }

    /// Emits `run:cancel` for a cancellation this worker found in the store, unless this
    /// process's own `cancel` announces it: a cancel made by another process then still ends
    /// this process's listeners' view of the run and its `subscribe` streams.
    fn announce_cancel_found(&self, run: &Run, shared: &StepShared) {
        if !shared.cancel_announced() {
            self.inner.events.emit(EventKind::RunCancel {
                run_id: run.id.clone(),
                job_name: run.job_name.clone(),
                labels: run.labels.clone(),
            });
        }
    }

    /// A completion or failure that the fence refused: the run was cancelled meanwhile, or
    /// another worker holds it now (reported as `worker:error` under `context`).
    async fn refused(
        &self,
        run: &Run,
        shared: &StepShared,
        context: &'static str,
        message: String,
    ) -> Outcome {
        let current = self.inner.store.get_run(&run.id).await;
        if let Ok(Some(current)) = current
            && current.status == RunStatus::Cancelled
        {
            tracing::info!("run cancelled before its end was recorded");
            self.announce_cancel_found(run, shared);
            return Outcome::Cancelled;
        }
        tracing::warn!("{message}");
        self.worker_error(message, context, None);
        Outcome::LeaseLost
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_completed(
        &self,
        run: &Run,
        fence: &Fence,
        shared: &StepShared,
        output: Value,
        started: Instant,
        worker_id: &str,
        claim: usize,
    ) -> (Outcome, Vec<Run>) {
        let drop_steps = !self.inner.config.preserve_steps;
        let stored = (!output.is_null()).then(|| output.clone());
        let store = &self.inner.store;
        let now = Timestamp::now();
        let completed = match claim {
            1.. => {
                let next = ClaimRequest {
                    worker_id: worker_id.to_owned(),
                    lease: self.inner.config.lease_duration,
                    max: claim,
                    frees_key: run.concurrency_key.is_some(),
                };
                store
                    .complete_run_and_claim(fence, stored, now, drop_steps, &next)
                    .await
            }
            0 => store
                .complete_run(fence, stored, now, drop_steps)
                .await
                .map(|completed| (completed, Vec::new())),
        };
        let (completed, claimed) = match completed {
            Ok((completed, claimed)) => (Ok(completed), claimed),
            Err(error) => (Err(error), Vec::new()),
        };
        let outcome = match completed {
            Ok(true) => {
                tracing::debug!("completed");
                self.inner.events.emit(EventKind::RunComplete {
                    run_id: run.id.clone(),
                    job_name: run.job_name.clone(),
                    output,
                    duration: started.elapsed().as_millis() as u64,
                    labels: run.labels.clone(),
                });
                Outcome::Completed
            }
            Ok(false) => {
                let message = format!("Lease lost before completing run {}", run.id);
                self.refused(run, shared, "run-completion", message).await
            }
            Err(error) => {
                tracing::error!(%error, "could not record completion");
                self.worker_error(error.to_string(), "run-completion", Some(&run.id));
                Outcome::LeaseLost
            }
        };
        (outcome, claimed)
    }

    async fn finish_failed(
        &self,
        run: &Run,
        fence: &Fence,
        shared: &StepShared,
        message: String,
        drop_steps: bool,
    ) -> Outcome {
        let store = &self.inner.store;
        let failed_step_name = store
            .get_steps(&run.id)
            .await
            .ok()
            .and_then(|steps| {
                steps
                    .into_iter()
                    .find(|s| s.status == StepStatus::Failed)
                    .map(|s| s.name)
            })
            .unwrap_or_else(|| "unknown".into());
        match store
            .fail_run(fence, &message, Timestamp::now(), drop_steps)
            .await
        {
            Ok(true) => {
                tracing::info!(error = %message, "failed");
                self.inner.events.emit(EventKind::RunFail {
                    run_id: run.id.clone(),
                    job_name: run.job_name.clone(),
                    error: message,
                    failed_step_name,
                    labels: run.labels.clone(),
                });
                Outcome::Failed
            }
            Ok(false) => {
                let message = format!("Lease lost before recording failure for run {}", run.id);
                self.refused(run, shared, "run-failure", message).await
            }
            Err(error) => {
                tracing::error!(%error, "could not record failure");
                self.worker_error(error.to_string(), "run-failure", Some(&run.id));
                Outcome::LeaseLost
            }
        }
    }

    /// Renews the lease every `lease_renew_interval`, and fires the run's token with
    /// `LeaseLost` when the lease ends by this worker's clock (counted from the send time of
    /// the claim or of the last successful renewal, so a reply that comes back late never
    /// lengthens it) or a renewal is refused.
    async fn keep_lease(
        self,
        shared: Arc<StepShared>,
        owner: String,
        started: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let config = &self.inner.config;
        let store = &self.inner.store;
        loop {
            // Renewals made before a step (see `StepShared::ensure_lease`) move it too.
            let deadline = tokio::time::Instant::from_std(shared.lease.expires());
            tokio::select! {
                _ = shared.token.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    if Instant::now() < shared.lease.expires() {
                        continue;
                    }
                    tracing::warn!("lease deadline passed without renewal");
                    shared.abort(AbortReason::LeaseLost);
                    return;
                }
                _ = tokio::time::sleep(config.lease_renew_interval) => {}
            }
            let sent = Instant::now();
            match store
                .renew_lease(&shared.fence, Timestamp::now(), config.lease_duration)
                .await
            {
                Ok(Some(expires)) => {
                    shared.lease.renewed(sent);
                    if Instant::now() >= shared.lease.expires() {
                        // Answered after the lease it set had run out: another worker may
                        // hold the run by now.
                        tracing::warn!("lease renewal answered too late: ownership lost");
                        shared.abort(AbortReason::LeaseLost);
                        return;
                    }
                    // A held run's renewals are not announced before its `run:leased`.
                    if !started.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    self.inner.events.emit(EventKind::RunLeaseRenewed {
                        run_id: shared.run_id.clone(),
                        job_name: shared.job_name.clone(),
                        lease_owner: owner.clone(),
                        lease_expires_at: expires.to_string(),
                        labels: shared.labels.clone(),
                    });
                }
                Ok(None) => {
                    let cancelled = matches!(
                        store.get_run(&shared.run_id).await,
                        Ok(Some(run)) if run.status == RunStatus::Cancelled
                    );
                    if cancelled {
                        shared.abort(AbortReason::Cancelled);
                    } else {
                        tracing::warn!("lease renewal refused: ownership lost");
                        shared.abort(AbortReason::LeaseLost);
                        self.worker_error(
                            format!("Lease renewal lost ownership for run {}", shared.run_id),
                            "lease-renewal",
                            Some(&shared.run_id),
                        );
                    }
                    return;
                }
                Err(error) => {
                    self.worker_error(error.to_string(), "lease-renewal", Some(&shared.run_id));
                }
            }
        }
    }
}

/// Whether the worker loop has to claim: after a look that found nothing more to claim (a
/// claim that took fewer runs than it could, or a slot that ended quietly), the loop does not
/// claim again until something may have changed that: a trigger's wake, a notice, the poll, or
/// a slot that ended otherwise.
#[derive(Default)]
struct Claimable {
    nothing_more: bool,
    look_again: bool,
}

impl Claimable {
    fn found_nothing_more(&mut self) {
        self.nothing_more = true;
    }

    fn look_again(&mut self) {
        self.look_again = true;
    }

    /// Notes how a slot ended: quietly (`true`), or otherwise (failed, cancelled, lease lost,
    /// stopped, panicked), which frees a slot without having looked for the next run.
    fn slot_ended(&mut self, ended: std::result::Result<bool, tokio::task::JoinError>) {
        match ended {
            Ok(true) => self.found_nothing_more(),
            _ => self.look_again(),
        }
    }

    /// Whether to claim now; the claim is the next look, so this starts over.
    fn should_claim(&mut self) -> bool {
        let skip = self.nothing_more && !self.look_again;
        *self = Claimable::default();
        !skip
    }
}

/// Joins every finished slot, noting how each ended; returns whether any had.
fn reap(in_flight: &mut JoinSet<bool>, claimable: &mut Claimable) -> bool {
    let mut any = false;
    while let Some(ended) = in_flight.try_join_next() {
        claimable.slot_ended(ended);
        any = true;
    }
    any
}

/// The next notice, for `select!` (pending forever without a channel).
async fn next_notice(
    notices: &mut Option<broadcast::Receiver<StoreNotice>>,
) -> std::result::Result<StoreNotice, broadcast::error::RecvError> {
    match notices {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// The worker loop's claims while the store fails: after the n-th failure in a row the next
/// claim waits 100 ms × 2ⁿ (at most [`MAX_BACKOFF`]), unless the store shows it answers again
/// first (a wake-up after a trigger's write, a notice from the database) or a slot ends (its
/// writes are over, and a slot is free): then the claim is retried at once, though never sooner
/// than [`EARLIEST_RETRY`] after the failure, so a stream of these while claims keep failing
/// costs at most one claim per that much.
#[derive(Default)]
struct Backoff {
    /// Failed claims in a row.
    failures: u32,
    /// When the last claim failed (`None`: not failing).
    failed_at: Option<tokio::time::Instant>,
    /// Whether a sign that the store answers came since.
    answered: bool,
}

/// The shortest wait between two claims while claims fail.
const EARLIEST_RETRY: Duration = Duration::from_millis(100);

impl Backoff {
    /// Notes a failed claim; returns how long until the next one.
    fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.failed_at = Some(tokio::time::Instant::now());
        self.answered = false;
        self.wait()
    }

    fn wait(&self) -> Duration {
        let full = Duration::from_millis(100u64.saturating_mul(1u64 << self.failures.min(16)));
        match self.answered {
            true => EARLIEST_RETRY,
            false => full.min(MAX_BACKOFF),
        }
    }

    fn is_failing(&self) -> bool {
        self.failed_at.is_some()
    }

    /// When the next claim may go out (`None`: at once, not failing).
    fn retry_at(&self) -> Option<tokio::time::Instant> {
        self.failed_at.map(|at| at + self.wait())
    }

    fn allows_claim(&self) -> bool {
        self.retry_at()
            .is_none_or(|at| tokio::time::Instant::now() >= at)
    }

    /// Retry the claim as soon as allowed (the store answered, or a slot ended).
    fn retry_soon(&mut self) {
        self.answered = true;
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
