//! The engine: claims runs with leases, executes them, keeps their leases, cancels them, and
//! keeps the database tidy while idle. [`crate::Durably`] is a facade over it.
//!
//! | file | what it owns |
//! |---|---|
//! | `claim_loop.rs` | the worker loop: when to claim, wake-ups, notices, the serverless primitives |
//! | `slots.rs` | a slot's life: claim-ahead, handing the slot on, the trigger hand-off intake |
//! | `held.rs` | a claimed run held before its job starts: registered, its lease kept, given back |
//! | `execute.rs` | executing one run: its job function, recording how it ended |
//! | `lease_keeper.rs` | renewing a lease and noticing its loss |
//! | `cancel.rs` | the cancellation protocol, whichever process cancels |
//! | `children.rs` | child runs: a child's end resolves its parent's wait, cancels cascade |
//! | `backoff.rs` | claims while the store fails |
//! | `maintenance.rs` | the engine's maintenance tasks and their cadence |
//! | `wait_expiry.rs` | resolving durable waits whose deadline passed |
//!
//! Every write the engine makes for a run is fenced by the lease generation it claimed, so a
//! worker that lost its lease (expired and reclaimed elsewhere, or cancelled) cannot overwrite
//! anything: its writes match no row, its cancellation token fires, and `step.run` refuses to
//! start new steps.
//!
//! The engine reaches the async runtime only through [`crate::runtime`].

mod backoff;
mod cancel;
mod children;
mod claim_loop;
mod execute;
mod held;
mod lease_keeper;
mod maintenance;
mod slots;
mod wait_expiry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::{EventBus, EventKind};
use crate::job::RegisteredJob;
use crate::local_queue::ExecutionPermits;
use crate::run::{Disposition, Run};
use crate::runtime;
use crate::step::StepShared;
use crate::store::{Enqueued, NewRun, Store};
use crate::telemetry::metrics::Metrics;

pub(crate) use maintenance::Pass;
pub(crate) use slots::Handed;

/// What the engine needs to know of an instance's configuration (the facade's `Config`
/// says what each means and its default).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) polling_interval: Duration,
    pub(crate) lease_duration: Duration,
    pub(crate) lease_renew_interval: Duration,
    pub(crate) max_concurrent_runs: usize,
    /// Runs in progress at once with a local queue (see `Tuning::local_queue`); at most
    /// `max_concurrent_runs` when no larger.
    pub(crate) local_queue: usize,
    pub(crate) retain_runs: Option<Duration>,
    pub(crate) persist_logs: bool,
    pub(crate) trigger_hand_off: bool,
    pub(crate) claim_ahead_below: Duration,
    pub(crate) attempt_record_delay: Duration,
}

impl Settings {
    /// The most runs a worker keeps in progress at once (each in a slot of its own).
    pub(crate) fn runs_in_progress(&self) -> usize {
        self.max_concurrent_runs.max(self.local_queue)
    }
}

/// How one execution of a claimed run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The run completed.
    Completed,
    /// The run failed.
    Failed,
    /// The run was cancelled while executing.
    Cancelled,
    /// This worker lost the lease; whatever it did after that did not land.
    LeaseLost,
    /// The run awaits a durable wait: it is `waiting`, without lease or slot, until the wait
    /// is resolved and a worker resumes it.
    Suspended,
    /// The worker gave the run back before its job started (it was stopping while the run
    /// waited in its local queue): pending again, for any worker.
    Released,
}

/// The registered jobs, by name, shared by the facade (which registers and triggers them) and
/// the engine (which executes them).
#[derive(Default)]
pub(crate) struct Jobs(RwLock<HashMap<String, Arc<RegisteredJob>>>);

impl Jobs {
    /// The job registered under `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<RegisteredJob>> {
        read(&self.0).get(name).cloned()
    }

    /// Every registered name, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.0).keys().cloned().collect();
        names.sort();
        names
    }

    /// Registers `job` unless a job of that name exists; returns the one registered under
    /// its name afterwards (the existing one, or `job`).
    pub(crate) fn insert_if_absent(&self, job: Arc<RegisteredJob>) -> Arc<RegisteredJob> {
        let mut jobs = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        jobs.entry(job.name.clone()).or_insert(job).clone()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The engine of one instance: shared by every clone of its facade.
pub(crate) struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) settings: Settings,
    pub(crate) events: EventBus,
    pub(crate) jobs: Jobs,
    /// The instruments the engine records runs on (feature `otel`; nothing without it).
    pub(crate) metrics: Metrics,
    /// Held shared by triggers from before their insert until their `run:trigger` is emitted;
    /// a worker of this process takes it exclusively before its first event for a run, so a run
    /// is never seen leased before it was seen triggered.
    pub(crate) announcing: tokio::sync::RwLock<()>,
    wake: Arc<Notify>,
    /// Open while the worker loop runs (and is not backing off after a store error): a trigger
    /// of this process hands its run to the loop (see [`Engine::hand_off`]).
    intake: slots::Intake,
    running: Mutex<Option<RunningWorker>>,
    /// The runs executing (or held) in this process, by id.
    active: Mutex<HashMap<String, Arc<StepShared>>>,
    maintenance: maintenance::Maintenance,
    /// When the claims that hand slots on (after a completion, with a trigger) last looked
    /// for waiting runs to resume, and whether one should look now (a wait was resolved).
    resume: Mutex<ResumeLook>,
    /// Held by the expiry sweep of durable waits in flight (one at a time).
    sweeping: tokio::sync::Mutex<()>,
    /// Deadlines of the waits this engine suspended runs on, at which the worker loop sweeps
    /// expired waits (see `wait_expiry.rs`).
    timers: wait_expiry::Timers,
    /// The turns to execute job code with a local queue (`None` without one).
    pub(crate) execution_permits: Option<ExecutionPermits>,
}

/// See [`Engine::take_resume_due`].
struct ResumeLook {
    due: bool,
    last: runtime::Instant,
}

struct RunningWorker {
    stop: CancellationToken,
    task: runtime::Task<()>,
}

impl Engine {
    /// An engine over `store`; nothing runs until [`Engine::start`].
    pub(crate) fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        events: EventBus,
        mut tasks: Vec<Arc<dyn crate::maintenance::MaintenanceTask>>,
        metrics: Metrics,
    ) -> Arc<Self> {
        tasks.extend(metrics.counts_task(&store));
        Arc::new_cyclic(|engine| {
            let maintenance =
                maintenance::Maintenance::new(engine, &store, &settings, &events, tasks);
            Engine::with(store, settings, events, maintenance, metrics)
        })
    }

    fn with(
        store: Arc<dyn Store>,
        settings: Settings,
        events: EventBus,
        maintenance: maintenance::Maintenance,
        metrics: Metrics,
    ) -> Self {
        let execution_permits = (settings.local_queue > settings.max_concurrent_runs)
            .then(|| crate::local_queue::Turns::new(settings.max_concurrent_runs));
        Engine {
            execution_permits,
            store,
            settings,
            events,
            jobs: Jobs::default(),
            metrics,
            announcing: tokio::sync::RwLock::new(()),
            wake: Arc::default(),
            intake: slots::Intake::default(),
            running: Mutex::new(None),
            active: Mutex::new(HashMap::new()),
            maintenance,
            resume: Mutex::new(ResumeLook {
                due: true,
                last: runtime::now(),
            }),
            sweeping: tokio::sync::Mutex::new(()),
            timers: wait_expiry::Timers::default(),
        }
    }

    /// A wait may have been resolved (a signal of this process, the expiry sweep, a notice):
    /// the next claim resumes waiting runs, and an idle worker wakes to make it.
    pub(crate) fn resume_waiting_runs(&self) {
        self.resume_look_due();
        self.wake();
    }

    /// The next claim resumes waiting runs (the poll's, for waits resolved elsewhere).
    pub(crate) fn resume_look_due(&self) {
        lock(&self.resume).due = true;
    }

    /// Whether the next claim that hands a slot on also resumes waiting runs: when a wait may
    /// have been resolved since the last such look, and at least once per polling interval
    /// (waits resolved by other processes without a notice, e.g. on SQLite), so a busy worker
    /// whose slots pass from run to run does not leave resumed runs behind its backlog.
    /// Otherwise its claims never read the waits table.
    pub(crate) fn take_resume_due(&self) -> bool {
        let mut look = lock(&self.resume);
        let now = runtime::now();
        if look.due || now.saturating_duration_since(look.last) >= self.settings.polling_interval {
            look.due = false;
            look.last = now;
            return true;
        }
        false
    }

    /// Runs a claim took: one that resumed a waiting run (it carries the wait it waited on)
    /// may have left others behind, so the next claim looks again.
    pub(crate) fn claimed(&self, runs: Vec<Run>) -> Vec<Run> {
        self.metrics.claimed(&runs);
        if runs.iter().any(|run| run.waiting_on_wait_id.is_some()) {
            lock(&self.resume).due = true;
        }
        runs
    }

    /// Wakes an idle worker at once (a run was triggered in this process).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts the worker loop as `worker_id` (no-op if it runs already).
    pub(crate) fn start(self: &Arc<Self>, worker_id: String) {
        let mut running = lock(&self.running);
        if running.is_some() {
            return;
        }
        let stop = CancellationToken::new();
        let span = tracing::info_span!("durably.worker", worker_id = %worker_id);
        let task = runtime::spawn_in(span, self.clone().worker_loop(worker_id, stop.clone()));
        *running = Some(RunningWorker { stop, task });
    }

    /// `true` while the worker loop runs.
    pub(crate) fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Stops claiming and waits for the runs in flight (at most `grace`, when given: the runs
    /// still executing then are dropped, as a crash drops them). `true` when everything
    /// finished in time (or nothing ran).
    pub(crate) async fn stop(&self, grace: Option<Duration>) -> bool {
        // Fire the token before the worker stops counting as running, so whoever sees
        // `is_running() == false` knows no new claims will be made.
        let worker = {
            let mut running = lock(&self.running);
            if let Some(worker) = running.as_ref() {
                worker.stop.cancel();
            }
            running.take()
        };
        let Some(worker) = worker else {
            return true;
        };
        let finished = worker.task.join_within(grace).await;
        if !finished {
            tracing::warn!(
                ?grace,
                "runs still executing at the end of the grace period are abandoned"
            );
        }
        finished
    }

    /// Whether the run is executing in this process.
    pub(crate) fn is_executing(&self, run_id: &str) -> bool {
        lock(&self.active).contains_key(run_id)
    }

    /// Emits `run:trigger` for a new run or `run:coalesced` for a coalesced one.
    pub(crate) fn announce(&self, enqueued: &Enqueued, request: &NewRun) {
        let run = &enqueued.run;
        match enqueued.disposition {
            Disposition::Created => {
                self.metrics.run_triggered(&run.job_name);
                self.events.emit(EventKind::RunTrigger {
                    run_id: run.id.clone(),
                    job_name: run.job_name.clone(),
                    input: request.input.clone(),
                    labels: run.labels.clone(),
                });
            }
            Disposition::Coalesced => {
                self.events.emit(EventKind::RunCoalesced {
                    run_id: run.id.clone(),
                    job_name: run.job_name.clone(),
                    status: run.status,
                    labels: run.labels.clone(),
                    skipped_input: request.input.clone(),
                    skipped_labels: request.labels.clone(),
                });
            }
            Disposition::Idempotent | Disposition::Debounced => {}
        }
    }

    /// A store call of the engine failed while `context` (the `worker:error` context, and
    /// the metrics' store operation).
    fn store_failed(&self, error: &crate::Error, context: &str, run_id: Option<&str>) {
        self.metrics.store_error(context);
        self.worker_error(error.to_string(), context, run_id);
    }

    fn worker_error(&self, error: String, context: &str, run_id: Option<&str>) {
        self.events.emit(EventKind::WorkerError {
            error,
            context: context.to_owned(),
            run_id: run_id.map(str::to_owned),
        });
    }
}
