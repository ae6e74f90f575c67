//! The [`Durably`](crate::Durably) instance: the job registry, triggering and the run API. Its other faces have
//! files of their own: building it (`builder.rs`), its configuration (`config.rs`), job handles
//! (`handle.rs`), waiting for runs (`wait.rs`), event streams (`subscribe.rs`) and the worker
//! (`worker.rs`, over the engine).

use std::sync::Arc;

use serde_json::Value;

use crate::attempts::StepAttempt;
use crate::config::Config;
use crate::engine::{Engine, Handed};
use crate::error::{Error, Result};
use crate::events::{Event, EventBus, EventKind, EventType, Unsubscribe};
use crate::job::RegisteredJob;
use crate::limits::{check_run_id, check_text};
use crate::run::{
    Disposition, Labels, Log, Run, RunFilter, RunStatus, Step, TriggerOptions, TriggerResult,
};
use crate::store::{Enqueued, NewRun, Signalled, Store};
use crate::telemetry::{Parent, Trigger};
use crate::time::Timestamp;
use crate::waits::{DurableWait, SignalDisposition, TimerKind};

pub(crate) type LabelsValidator =
    Arc<dyn Fn(&Labels) -> std::result::Result<(), String> + Send + Sync>;

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Config,
    pub(crate) events: EventBus,
    /// Claims, executes and maintains (`src/engine/`).
    pub(crate) engine: Arc<Engine>,
    pub(crate) migrated: tokio::sync::OnceCell<()>,
    pub(crate) labels_validator: Option<LabelsValidator>,
    /// Cron schedules: those registered in code, and the firing of due slots.
    pub(crate) scheduler: Arc<crate::schedules::scheduler::Scheduler>,
}

/// A durably instance: the job registry, the run API, events and the worker.
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Durably {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Durably {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durably")
            .field("config", &self.inner.config)
            .field("backend", &self.inner.store.backend())
            .finish_non_exhaustive()
    }
}

/// Information about a registered job, for tools.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobInfo {
    /// The job's name.
    pub name: String,
    /// The JSON Schema of its input, if the job was given one ([`Job::input_schema`](crate::Job::input_schema)).
    pub input_schema: Option<Value>,
}

impl Durably {
    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The store (for tools and tests; the run API below is the usual way in).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Creates or upgrades the schema. Idempotent; concurrent callers share one migration.
    pub async fn migrate(&self) -> Result<()> {
        self.inner
            .migrated
            .get_or_try_init(|| self.inner.store.migrate())
            .await
            .map(|_| ())
    }

    /// Names of all registered jobs, sorted.
    pub fn job_names(&self) -> Vec<String> {
        self.inner.engine.jobs.names()
    }

    /// Information about a registered job, or `None`.
    pub fn get_job(&self, name: &str) -> Option<JobInfo> {
        self.registered_job(name).map(|job| JobInfo {
            name: job.name.clone(),
            input_schema: job.input_schema.clone(),
        })
    }

    pub(crate) fn registered_job(&self, name: &str) -> Option<Arc<RegisteredJob>> {
        self.inner.engine.jobs.get(name)
    }

    pub(crate) fn registered(&self, name: &str) -> Result<Arc<RegisteredJob>> {
        self.registered_job(name)
            .ok_or_else(|| Error::NotFound(format!("Job not found: {name}")))
    }

    /// Checks a trigger's options and input (upstream §2.3 steps 1–3) and builds the row.
    fn prepare(
        &self,
        job: &RegisteredJob,
        input: Value,
        options: TriggerOptions,
        index: Option<usize>,
    ) -> Result<NewRun> {
        let at = |message: String| match index {
            Some(i) => format!("{message} at index {i}"),
            None => message,
        };
        if options.coalesce.is_some()
            && options.concurrency_key.as_deref().is_none_or(str::is_empty)
        {
            return Err(Error::Validation(at(
                "coalesce requires concurrencyKey".into()
            )));
        }
        let mut start_at = options.start_at;
        if let Some(debounce) = &options.debounce {
            if start_at.is_some() || options.coalesce.is_some() {
                return Err(Error::Validation(at(
                    "debounce sets the run's start itself: drop startAt/delay and coalesce".into(),
                )));
            }
            if debounce.key.is_empty() {
                return Err(Error::Validation(at(
                    "debounce key must not be empty".into()
                )));
            }
            if debounce.period.is_zero() {
                return Err(Error::Validation(at(format!(
                    "debounce period of key \"{}\" is 0: give a period of at least 1 ms",
                    debounce.key
                ))));
            }
            start_at = Some(Timestamp::now() + debounce.period);
        }
        if options.start_at.is_some() && options.coalesce.is_some() {
            return Err(Error::Validation(at(
                "coalesce does not apply to a delayed run (startAt): a delayed run is not pending; \
                 drop one of the two"
                    .into(),
            )));
        }
        if options.idempotency_key.as_deref() == Some("") {
            return Err(Error::Validation(at(
                "idempotencyKey must not be empty".into()
            )));
        }
        if options.concurrency_key.as_deref() == Some("") {
            return Err(Error::Validation(at(
                "concurrencyKey must not be empty".into()
            )));
        }
        self.inner
            .config
            .limits
            .check_trigger(&job.name, &options, &at)?;
        let input = job.parse_input(input).map_err(|e| match index {
            Some(i) => Error::Validation(format!("at index {i}: {e}")),
            None => e,
        })?;
        if let (Some(validator), Some(labels)) = (&self.inner.labels_validator, &options.labels) {
            validator(labels).map_err(|e| {
                Error::Validation(match index {
                    Some(i) => format!("labels at index {i}: Invalid input: {e}"),
                    None => format!("labels: Invalid input: {e}"),
                })
            })?;
        }
        Ok(NewRun {
            job_name: job.name.clone(),
            input,
            idempotency_key: options.idempotency_key,
            concurrency_key: options.concurrency_key,
            labels: options.labels.unwrap_or_default(),
            coalesce: options.coalesce,
            start_at,
            debounce: options.debounce,
            priority: options.priority,
            parent_run_id: None,
            parent_wait_id: None,
            trace_context: None,
        })
    }

    /// Emits the trigger's event and wakes this process's worker for a new run.
    fn announce(&self, enqueued: &Enqueued, request: &NewRun) {
        self.inner.engine.announce(enqueued, request);
        if enqueued.disposition == Disposition::Created {
            self.inner.engine.wake();
        }
    }

    /// Enqueues one run and announces it, before any event of the run itself. The running
    /// worker of this process, if any, enqueues it and claims for its free slots in one commit
    /// (see [`Tuning::trigger_hand_off`](crate::Tuning::trigger_hand_off)).
    pub(crate) async fn enqueue_announced(&self, request: NewRun) -> Result<Enqueued> {
        self.enqueue_announced_under(request, &Parent::current())
            .await
    }

    /// [`Durably::enqueue_announced`] in a `durably.trigger` span under `parent`, whose trace
    /// context the run keeps (see `crate::telemetry`).
    pub(crate) async fn enqueue_announced_under(
        &self,
        mut request: NewRun,
        parent: &Parent,
    ) -> Result<Enqueued> {
        let trigger = Trigger::start(&request.job_name, 1, parent);
        request.trace_context = trigger.trace_context().or(request.trace_context);
        let enqueued = trigger.around(self.enqueue_handed_off(request)).await;
        trigger.ended(enqueued.as_ref().map(std::slice::from_ref));
        enqueued
    }

    async fn enqueue_handed_off(&self, request: NewRun) -> Result<Enqueued> {
        let _announcing = self.inner.engine.announcing.read().await;
        match self.inner.engine.hand_off(request) {
            Handed::Taken(answer) => answer.await.map_err(|_| {
                Error::storage("enqueue", "the worker stopped before answering the trigger")
            })?,
            Handed::Refused(request) => {
                let request = *request;
                let enqueued = self
                    .inner
                    .store
                    .enqueue(request.clone(), Timestamp::now())
                    .await?;
                self.announce(&enqueued, &request);
                Ok(enqueued)
            }
        }
    }

    /// Triggers a run of the job named `job_name` with a JSON input (the untyped form of
    /// [`JobHandle::trigger_with`](crate::JobHandle::trigger_with)). Unknown job → [`Error::NotFound`](crate::Error::NotFound) `Job not found: <name>`.
    pub async fn trigger_json(
        &self,
        job_name: &str,
        input: Value,
        options: TriggerOptions,
    ) -> Result<TriggerResult> {
        self.trigger_json_under(job_name, input, options, &Parent::current())
            .await
    }

    /// [`Durably::trigger_json`] whose trigger span is a child of `parent` (an HTTP caller's
    /// `traceparent`).
    pub(crate) async fn trigger_json_under(
        &self,
        job_name: &str,
        input: Value,
        options: TriggerOptions,
        parent: &Parent,
    ) -> Result<TriggerResult> {
        check_text("jobName", job_name)?;
        let job = self.registered(job_name)?;
        let request = self.prepare(&job, input, options, None)?;
        let enqueued = self.enqueue_announced_under(request, parent).await?;
        Ok(TriggerResult {
            run: enqueued.run,
            disposition: enqueued.disposition,
        })
    }

    /// Triggers many runs of one job in one transaction. Every item is validated first; any
    /// invalid item or conflict stores nothing.
    pub async fn batch_trigger_json(
        &self,
        job_name: &str,
        items: Vec<(Value, TriggerOptions)>,
    ) -> Result<Vec<TriggerResult>> {
        check_text("jobName", job_name)?;
        let job = self.registered(job_name)?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let requests = items
            .into_iter()
            .enumerate()
            .map(|(i, (input, options))| self.prepare(&job, input, options, Some(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(self
            .enqueue_many_announced(requests)
            .await?
            .into_iter()
            .map(|enqueued| TriggerResult {
                run: enqueued.run,
                disposition: enqueued.disposition,
            })
            .collect())
    }

    /// Enqueues `requests` in one transaction and announces each, in order.
    /// In one `durably.trigger` span, whose trace context every run keeps.
    async fn enqueue_many_announced(&self, mut requests: Vec<NewRun>) -> Result<Vec<Enqueued>> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        let trigger = Trigger::start(&first.job_name, requests.len(), &Parent::current());
        if let Some(context) = trigger.trace_context() {
            for request in &mut requests {
                request.trace_context = Some(context.clone());
            }
        }
        let enqueued = trigger
            .around(async {
                let _announcing = self.inner.engine.announcing.read().await;
                let enqueued = self
                    .inner
                    .store
                    .enqueue_many(requests.clone(), Timestamp::now())
                    .await?;
                for (enqueued, request) in enqueued.iter().zip(&requests) {
                    self.announce(enqueued, request);
                }
                Ok(enqueued)
            })
            .await;
        trigger.ended(enqueued.as_deref());
        enqueued
    }

    /// Triggers the children of an invoke in one transaction (idempotent by their keys), linked
    /// to `parent_run_id` and its wait `parent_wait_id` (see `crate::children`); returns their
    /// runs as they stand, in order.
    pub(crate) async fn trigger_children(
        &self,
        job_name: &str,
        items: Vec<(Value, TriggerOptions)>,
        parent_run_id: &str,
        parent_wait_id: &str,
    ) -> Result<Vec<Run>> {
        let job = self.registered(job_name)?;
        let requests = items
            .into_iter()
            .enumerate()
            .map(|(i, (input, options))| {
                let mut request = self.prepare(&job, input, options, Some(i))?;
                request.parent_run_id = Some(parent_run_id.to_owned());
                request.parent_wait_id = Some(parent_wait_id.to_owned());
                Ok(request)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self
            .enqueue_many_announced(requests)
            .await?
            .into_iter()
            .map(|enqueued| enqueued.run)
            .collect())
    }

    /// The child runs of `run_id` ([`StepContext::invoke`](crate::StepContext::invoke)),
    /// newest first: [`Durably::get_runs`] with [`RunFilter::parent_run_id`].
    pub async fn get_children(&self, run_id: &str) -> Result<Vec<Run>> {
        check_run_id(run_id)?;
        self.inner
            .store
            .get_runs(&RunFilter::new().parent_run_id(run_id))
            .await
    }

    /// One run, or `None`. An id with a NUL character is [`Error::Validation`](crate::Error::Validation) (no backend can
    /// store one).
    pub async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        check_run_id(id)?;
        self.inner.store.get_run(id).await
    }

    /// Runs matching `filter`, newest first. A filter over [`Limits`](crate::Limits) (too many labels or job
    /// names, a label key or value too long) or with text no backend can store is
    /// [`Error::Validation`](crate::Error::Validation), before any query runs.
    pub async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        self.inner.config.limits.check_filter(filter)?;
        self.inner.store.get_runs(filter).await
    }

    /// [`get_runs`](Self::get_runs) that gives up after `timeout` with [`Error::Timeout`](crate::Error::Timeout),
    /// cancelling the query in the database (as dropping the future does).
    #[cfg(feature = "http")]
    pub(crate) async fn get_runs_within(
        &self,
        filter: &RunFilter,
        timeout: std::time::Duration,
    ) -> Result<Vec<Run>> {
        self.inner.config.limits.check_filter(filter)?;
        self.inner.store.get_runs_within(filter, timeout).await
    }

    /// The persisted steps of a run, by index.
    pub async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        check_run_id(run_id)?;
        self.inner.store.get_steps(run_id).await
    }

    /// The step attempts of a run, oldest first: one per real execution of a step's function
    /// (a replayed step makes none), kept until the run is deleted (see [`crate::attempts`]).
    pub async fn get_step_attempts(&self, run_id: &str) -> Result<Vec<StepAttempt>> {
        check_run_id(run_id)?;
        self.inner.store.get_step_attempts(run_id).await
    }

    /// The durable waits of a run, oldest first (empty for an unknown run): what it waits for
    /// now, what it waited for before and how each was resolved ([`crate::waits`]).
    pub async fn get_waits(&self, run_id: &str) -> Result<Vec<DurableWait>> {
        check_run_id(run_id)?;
        self.inner.store.get_waits(run_id).await
    }

    /// One durable wait by id (`None` when unknown).
    pub async fn get_wait(&self, wait_id: &str) -> Result<Option<DurableWait>> {
        check_text("waitId", wait_id)?;
        self.inner.store.get_wait(wait_id).await
    }

    /// Signals the durable wait `wait_id` with `payload` (upstream `signal`, v4 §4.3): the
    /// wait is resolved and its run, if it is waiting on it, is resumed by the next claim of
    /// any worker (this process's at once, PostgreSQL's through `NOTIFY`, other SQLite
    /// processes within their polling interval).
    ///
    /// Idempotent per `signal_id`: the same signal (same id, same payload up to key order)
    /// again gives [`SignalDisposition::Duplicate`] and changes nothing, even after the run
    /// ended. Errors, nothing written: [`Error::Validation`] for a blank `signal_id`;
    /// [`Error::NotFound`] for an unknown wait; [`Error::WaitExpired`] once its deadline passed
    /// (a signal wins only strictly before it); [`Error::Conflict`] when the wait was resolved
    /// by another signal, cancelled or closed, or its run ended.
    ///
    /// ```no_run
    /// # async fn approve(durably: durably::Durably, wait_id: &str) -> durably::Result<()> {
    /// use serde_json::json;
    /// let signalled = durably.signal(wait_id, json!({"approved": true}), "approval-42").await?;
    /// println!("{:?}", signalled.disposition);
    /// # Ok(()) }
    /// ```
    pub async fn signal(
        &self,
        wait_id: &str,
        payload: Value,
        signal_id: &str,
    ) -> Result<Signalled> {
        check_text("waitId", wait_id)?;
        check_text("signalId", signal_id)?;
        let signalled = self
            .inner
            .store
            .signal_wait(wait_id, payload, signal_id, Timestamp::now())
            .await?;
        if signalled.disposition == SignalDisposition::Accepted {
            self.inner.engine.resume_waiting_runs();
        }
        Ok(signalled)
    }

    /// The persisted logs of a run, oldest first.
    pub async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        check_run_id(run_id)?;
        self.inner.store.get_logs(run_id).await
    }

    pub(crate) async fn require_run(&self, id: &str) -> Result<Run> {
        self.get_run(id)
            .await?
            .ok_or_else(|| Error::run_not_found(id))
    }

    async fn status_changed(&self, id: &str, action: &str) -> Error {
        match self.get_run(id).await {
            Ok(Some(run)) => Error::Conflict(format!(
                "Cannot {action} run {id}: status changed to {}",
                run.status
            )),
            Ok(None) => Error::run_not_found(id),
            Err(error) => error,
        }
    }

    /// Creates a new pending run with the same job, input, concurrency key and labels as a
    /// terminal run (the input is validated again against the job's current definition).
    pub async fn retrigger(&self, run_id: &str) -> Result<Run> {
        let run = self.require_run(run_id).await?;
        match run.status {
            RunStatus::Pending | RunStatus::Leased => {
                return Err(Error::Conflict(format!(
                    "Cannot retrigger {} run: {run_id}",
                    run.status
                )));
            }
            RunStatus::Waiting => {
                return Err(Error::Conflict(format!(
                    "Cannot retrigger waiting run: {run_id}; cancel it first"
                )));
            }
            _ => {}
        }
        let job = self
            .registered_job(&run.job_name)
            .ok_or_else(|| Error::NotFound(format!("Unknown job: {}", run.job_name)))?;
        let input = job
            .parse_input(run.input)
            .map_err(|e| Error::Validation(format!("Cannot retrigger run {run_id}: {e}")))?;
        let request = NewRun {
            job_name: run.job_name,
            input,
            idempotency_key: None,
            concurrency_key: run.concurrency_key,
            labels: run.labels,
            coalesce: None,
            priority: run.priority,
            ..Default::default()
        };
        Ok(self.enqueue_announced(request).await?.run)
    }

    /// Resumes a failed run from where it failed: the run goes back to `pending` under its own
    /// id ([`Store::resume_run`](crate::store::Store::resume_run)) and its next execution
    /// replays the steps it completed before the failure instead of executing them again
    /// (their side effects happen once), then executes the step that failed and the rest. A
    /// failed run keeps its completed steps for this even when steps are not preserved; waits
    /// its failure closed are pending again. Unlike [`Durably::retrigger`], no new run is
    /// created and the input is not validated again (the run continues with the input it has).
    ///
    /// Wakes this process's idle worker and emits `run:trigger` for the run's id (upstream's
    /// event shape, so subscribers see the run pending again); PostgreSQL also wakes the
    /// workers of other processes. Returns the run as it now stands (`pending`).
    ///
    /// Errors: [`Error::NotFound`](crate::Error::NotFound) for an unknown run id;
    /// [`Error::Conflict`](crate::Error::Conflict) when the run is not `failed` (nothing
    /// changes), or when its job already has a pending run with the same concurrency key;
    /// [`Error::Validation`](crate::Error::Validation) for an empty id or one with a NUL
    /// character.
    pub async fn resume(&self, run_id: &str) -> Result<Run> {
        check_run_id(run_id)?;
        // Announced before any event of the resumed execution (see `enqueue_announced`).
        let _announcing = self.inner.engine.announcing.read().await;
        let run = self
            .inner
            .store
            .resume_run(run_id, Timestamp::now())
            .await?;
        self.inner.events.emit(EventKind::RunTrigger {
            run_id: run.id.clone(),
            job_name: run.job_name.clone(),
            input: run.input.clone(),
            labels: run.labels.clone(),
        });
        self.inner.engine.wake();
        Ok(run)
    }

    /// Wakes a run waiting on a timer ("run now" / "retry now"): a delayed run starts now, a
    /// run in a step's or its own retry backoff runs its next attempt now, a sleeping run
    /// continues now. The timer wait the run is `waiting` on (a [`TimerKind`]) is signalled
    /// with a `null` payload and the signal id `wake`, and the run is resumed at once, as
    /// [`Durably::signal`] does. Returns the run as it stood just after the signal.
    ///
    /// Errors, nothing written: [`Error::NotFound`](crate::Error::NotFound) for an unknown
    /// run; [`Error::Conflict`](crate::Error::Conflict) when the run is not `waiting` (the
    /// message names its status), when it waits for a signal rather than a timer (signal that
    /// wait instead: `Durably::signal`, `POST /signal`, `durably signal`), or when its timer
    /// was already resolved (the run resumes at the next claim); [`Error::Validation`](crate::Error::Validation)
    /// for an empty id or one with a NUL character. A timer whose deadline passed just before
    /// the signal is not an error: the run is due anyway.
    pub async fn wake(&self, run_id: &str) -> Result<Run> {
        let run = self.require_run(run_id).await?;
        if run.status != RunStatus::Waiting {
            return Err(Error::Conflict(format!(
                "Cannot wake {} run: {run_id}; only a waiting run waits for a timer",
                run.status
            )));
        }
        let wait = match &run.waiting_on_wait_id {
            Some(wait_id) => self.get_wait(wait_id).await?,
            None => None,
        };
        let Some(wait) = wait else {
            return Err(Error::Conflict(format!(
                "Cannot wake run {run_id}: it names no wait it waits on"
            )));
        };
        if TimerKind::of(&wait).is_none() {
            return Err(Error::Conflict(format!(
                "Cannot wake run {run_id}: it waits for the signal {} (wait {}), not a timer; signal that wait instead",
                wait.name, wait.id
            )));
        }
        if wait.status != crate::waits::WaitStatus::Pending {
            return Err(Error::Conflict(format!(
                "Cannot wake run {run_id}: its timer {} is already {}; the run resumes at the next claim of a worker",
                wait.name,
                wait.status.as_str()
            )));
        }
        match self.signal(&wait.id, Value::Null, "wake").await {
            Ok(_) | Err(Error::WaitExpired { .. }) => {}
            Err(error) => return Err(error),
        }
        self.require_run(run_id).await
    }

    /// Cancels a pending or leased run. A leased run is marked cancelled at once; its worker
    /// stops cooperatively (its token fires and none of its later writes land).
    pub async fn cancel(&self, run_id: &str) -> Result<()> {
        let run = self.require_run(run_id).await?;
        match run.status {
            RunStatus::Completed | RunStatus::Failed => {
                return Err(Error::Conflict(format!(
                    "Cannot cancel {} run: {run_id}",
                    run.status
                )));
            }
            RunStatus::Cancelled => {
                return Err(Error::Conflict(format!(
                    "Cannot cancel already cancelled run: {run_id}"
                )));
            }
            _ => {}
        }
        if !self.inner.engine.cancel(&run).await? {
            return Err(self.status_changed(run_id, "cancel").await);
        }
        Ok(())
    }

    /// Deletes a terminal run with its steps, logs and labels.
    pub async fn delete_run(&self, run_id: &str) -> Result<()> {
        let run = self.require_run(run_id).await?;
        if run.status == RunStatus::Waiting {
            return Err(Error::Conflict(format!(
                "Cannot delete waiting run: {run_id}; cancel it first"
            )));
        }
        if run.status.is_active() {
            return Err(Error::Conflict(format!(
                "Cannot delete {} run: {run_id}",
                run.status
            )));
        }
        if !self.inner.store.delete_run(run_id).await? {
            return Err(self.status_changed(run_id, "delete").await);
        }
        self.inner.events.emit(EventKind::RunDelete {
            run_id: run.id,
            job_name: run.job_name,
            labels: run.labels,
        });
        Ok(())
    }

    /// Deletes up to `limit` (default 500) terminal runs that ended before `older_than`.
    /// Returns how many were deleted. Emits no events.
    pub async fn purge_runs(&self, older_than: Timestamp, limit: Option<u64>) -> Result<u64> {
        self.inner
            .store
            .purge_runs(older_than, limit.unwrap_or(500))
            .await
    }

    /// Calls `listener` for every event of type `event_type` (on its own task: a slow or
    /// panicking listener never stalls the worker). Requires a tokio runtime.
    pub fn on(
        &self,
        event_type: EventType,
        listener: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Unsubscribe {
        self.inner.events.on(Some(event_type), Arc::new(listener))
    }

    /// Calls `listener` for every event.
    pub fn on_any(&self, listener: impl Fn(&Event) + Send + Sync + 'static) -> Unsubscribe {
        self.inner.events.on(None, Arc::new(listener))
    }

    /// Sets the handler told about listeners that panicked (a later call replaces it).
    pub fn on_error(&self, handler: impl Fn(&str, &Event) + Send + Sync + 'static) {
        self.inner.events.set_on_error(Arc::new(handler));
    }

    /// Emits an arbitrary event (stamped with timestamp and sequence); returns it.
    pub fn emit(&self, kind: EventKind) -> Event {
        (*self.inner.events.emit(kind)).clone()
    }
}
