//! The [`Durably`] instance: configuration, job registry, triggering and the run API.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serde_json::Value;

use crate::engine::{Engine, Handed, Settings};
use crate::error::{Error, Result};
use crate::events::{Event, EventBus, EventKind, EventType, Unsubscribe};
use crate::follow::RunSnapshot;
use crate::job::{Job, JobData, JobHandle, RegisteredJob};
use crate::limits::{Limits, check_run_id, check_text};
use crate::run::{
    Disposition, Labels, Log, LogLevel, Progress, Run, RunFilter, RunStatus, Step,
    TriggerAndWaitResult, TriggerOptions, TriggerResult,
};
use crate::store::{Enqueued, NewRun, Store};
use crate::time::Timestamp;

/// Validated configuration of a [`Durably`] instance (upstream option names in parentheses):
/// what it does. How fast it does it is [`Tuning`], in [`Config::tuning`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// How long an idle worker waits before polling again (`pollingIntervalMs`, default 1 s).
    /// A trigger in the same process wakes the worker at once.
    pub polling_interval: Duration,
    /// Lease length at claim and at each renewal (`leaseMs`, default 30 s).
    pub lease_duration: Duration,
    /// How often a running run's lease is renewed (`leaseRenewIntervalMs`, default 5 s).
    pub lease_renew_interval: Duration,
    /// Runs executed at once by the worker (`maxConcurrentRuns`, 1..=1000, default 1).
    pub max_concurrent_runs: usize,
    /// Keep step outputs after a run ends (`preserveSteps`, default `false`). A policy of the
    /// store ([`Store::preserves_steps`]): the builder sets it on the stores it opens, and
    /// reads it from a store it is given.
    pub preserve_steps: bool,
    /// Delete terminal runs this long after they ended (`retainRuns`, default: keep forever).
    pub retain_runs: Option<Duration>,
    /// Store `step.log()` entries (default `true`; upstream needed a plugin).
    pub persist_logs: bool,
    /// Run streams ([`Durably::subscribe`]) follow a run that another process executes by
    /// reading it every `polling_interval` (default `true`). Off where something else relays
    /// other processes' events into this instance (as `durably serve` does), which the
    /// following would repeat.
    pub follow_runs_elsewhere: bool,
    /// Bounds on what one run may carry and one listing may ask ([`Limits`]; its defaults
    /// unless [`DurablyBuilder::limits`] sets others).
    pub limits: Limits,
    /// Speed knobs that change no outcome, only how many writes and wake-ups a run costs
    /// ([`Tuning`]; its defaults unless [`DurablyBuilder::tuning`] sets others).
    pub tuning: Tuning,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            polling_interval: Duration::from_millis(1000),
            lease_duration: Duration::from_millis(30_000),
            lease_renew_interval: Duration::from_millis(5_000),
            max_concurrent_runs: 1,
            preserve_steps: false,
            retain_runs: None,
            persist_logs: true,
            follow_runs_elsewhere: true,
            limits: Limits::default(),
            tuning: Tuning::default(),
        }
    }
}

/// The worker's speed knobs, with the defaults that measured best. None of them changes what
/// happens to a run (every run still executes once per claim, in order, fenced); they change
/// how many database writes and wake-ups it costs, and what the database shows meanwhile.
/// Figures are from `durably bench` on the project's reference machine (2 cores; see
/// `docs/performance.md` and `docs/upstream-compat.md`); leave the defaults unless a
/// measurement of your own says otherwise.
///
/// ```
/// use std::time::Duration;
/// use durably::{Durably, Tuning};
/// let tuning = Tuning::new().claim_ahead_below(Duration::ZERO).trigger_hand_off(false);
/// let durably = Durably::builder().sqlite(":memory:").tuning(tuning).build()?;
/// assert_eq!(durably.config().tuning, tuning);
/// # Ok::<_, durably::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tuning {
    /// Hand triggers to this process's worker while it runs. Default `true`.
    ///
    /// The worker loop enqueues the run and claims for its free slots in the same
    /// transaction, so the run starts after one commit instead of two (batch triggers, and
    /// every trigger while the worker is stopped or backing off, enqueue on their own). Off:
    /// every trigger enqueues on its own and wakes the worker.
    ///
    /// Measured with `durably bench --workload latency`: 3.2–3.4 commits per job instead of
    /// 4.4–4.9 on SQLite, and on PostgreSQL about 10 % less server CPU for 500
    /// trigger-and-waits (0.88–0.96 s against 1.01–1.03 s); the p50 latency is unchanged
    /// within the machine's noise, since the commit it saves costs about as much as the
    /// hand-over between tasks it adds. Where a commit's flush takes milliseconds (PostgreSQL
    /// on real disks), each trigger saves one.
    pub trigger_hand_off: bool,
    /// Claim ahead after a run that executed for less than this. Default 100 ms;
    /// `Duration::ZERO` turns it off.
    ///
    /// The worker slot that ran such a run claims one more run than it needs and holds it
    /// (leased) while the next run executes, so that a run's completion and the next run's
    /// first step share a write. A held run shows as `leased` meanwhile (at most one per
    /// slot); one without a concurrency key goes back to pending once the run ahead of it has
    /// taken this long, so a long run delays at most one run per slot by this much. After a
    /// keyed run nothing is claimed ahead.
    ///
    /// Measured on PostgreSQL in 4 interleaved pairs: one-step jobs from 2,880–3,010 to
    /// 4,300–4,530 jobs/s at concurrency 8 (commits per job 0.34 → 0.14) and from 1,070–1,110
    /// to 1,480–1,570 at concurrency 1; 4 worker processes from 1,700–1,900 to 1,930–2,100;
    /// `steps-10` and latency unchanged within the noise. On SQLite, one-step jobs at
    /// concurrency 1 went from 6,260–6,790 to 6,290–8,300, the rest unchanged. The 100 ms
    /// threshold was not tuned by measurement: it bounds the delay a held run may suffer
    /// behind a slow one, and is far above what the benchmarks' short jobs take.
    pub claim_ahead_below: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            trigger_hand_off: true,
            claim_ahead_below: Duration::from_millis(100),
        }
    }
}

impl Tuning {
    /// The measured defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`trigger_hand_off`](Self::trigger_hand_off).
    pub fn trigger_hand_off(mut self, hand_off: bool) -> Self {
        self.trigger_hand_off = hand_off;
        self
    }

    /// Sets [`claim_ahead_below`](Self::claim_ahead_below).
    pub fn claim_ahead_below(mut self, below: Duration) -> Self {
        self.claim_ahead_below = below;
        self
    }
}

/// Parses a retention period: a whole number followed by `d` (days), `h` (hours) or `m`
/// (minutes), e.g. `30d`, `12h`, `90m`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(durably::parse_retention("12h").unwrap(), Duration::from_secs(12 * 3600));
/// assert!(durably::parse_retention("30s").is_err());
/// ```
pub fn parse_retention(text: &str) -> Result<Duration> {
    let invalid = || {
        Error::Config(format!(
            "Invalid duration format: \"{text}\". Use a whole number followed by d, h or m, e.g. '30d', '12h', '90m'"
        ))
    };
    let unit = text.chars().last().ok_or_else(invalid)?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let unit_secs = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        _ => return Err(invalid()),
    };
    amount
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(invalid)
}

type LabelsValidator = Arc<dyn Fn(&Labels) -> std::result::Result<(), String> + Send + Sync>;
type PendingJob = Box<dyn FnOnce(&Durably) -> Result<()> + Send>;

/// Builds a [`Durably`] instance; every option is validated by [`build`](Self::build).
///
/// ```
/// # fn example() -> durably::Result<()> {
/// use std::time::Duration;
/// let durably = durably::Durably::builder()
///     .sqlite("app.db")
///     .polling_interval(Duration::from_millis(200))
///     .max_concurrent_runs(8)
///     .retain_runs("30d")
///     .build()?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct DurablyBuilder {
    store: Option<StoreChoice>,
    /// Set by [`DurablyBuilder::preserve_steps`] (`None`: the default, or the given store's).
    preserve_steps: Option<bool>,
    config: Config,
    retain_runs: Option<String>,
    labels_validator: Option<LabelsValidator>,
    jobs: Vec<PendingJob>,
}

impl DurablyBuilder {
    /// Uses an embedded SQLite database at `path` (`":memory:"` for a private in-memory one).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, path: impl AsRef<std::path::Path>) -> Self {
        self.store = Some(StoreChoice::Sqlite(path.as_ref().to_path_buf()));
        self
    }

    /// Uses the PostgreSQL database at `url` with default [`crate::PostgresOptions`]
    /// (connections open on first use; `migrate`/`init` create the schema).
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, url: &str) -> Self {
        self.store = Some(StoreChoice::Postgres(url.to_owned()));
        self
    }

    /// Uses any [`Store`].
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(StoreChoice::Given(Arc::new(store)));
        self
    }

    /// Uses a shared [`Store`].
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(StoreChoice::Given(store));
        self
    }

    /// Idle polling interval (default 1 s).
    pub fn polling_interval(mut self, interval: Duration) -> Self {
        self.config.polling_interval = interval;
        self
    }

    /// Lease length (default 30 s).
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.config.lease_duration = lease;
        self
    }

    /// Lease renewal interval (default 5 s).
    pub fn lease_renew_interval(mut self, interval: Duration) -> Self {
        self.config.lease_renew_interval = interval;
        self
    }

    /// Runs executed at once, 1..=1000 (default 1).
    pub fn max_concurrent_runs(mut self, runs: usize) -> Self {
        self.config.max_concurrent_runs = runs;
        self
    }

    /// Keep step outputs after runs end (default `false`). Sets the policy of the store the
    /// builder opens ([`DurablyBuilder::sqlite`], [`DurablyBuilder::postgres`]); a store given
    /// to [`DurablyBuilder::store`] brings its own (`SqliteOptions::preserve_steps`,
    /// `PostgresOptions::preserve_steps`), and a different one here uses the store's view with
    /// this policy ([`Store::with_step_policy`]), or fails [`build`](Self::build) when the
    /// store has none.
    pub fn preserve_steps(mut self, preserve: bool) -> Self {
        self.preserve_steps = Some(preserve);
        self
    }

    /// Delete terminal runs after a period written `30d`, `12h` or `90m`.
    pub fn retain_runs(mut self, period: impl Into<String>) -> Self {
        self.retain_runs = Some(period.into());
        self
    }

    /// Delete terminal runs after `period`.
    pub fn retain_runs_for(mut self, period: Duration) -> Self {
        self.retain_runs = None;
        self.config.retain_runs = Some(period);
        self
    }

    /// Store `step.log()` entries (default `true`).
    pub fn persist_logs(mut self, persist: bool) -> Self {
        self.config.persist_logs = persist;
        self
    }

    /// The worker's speed knobs (default [`Tuning::default`], the measured defaults).
    pub fn tuning(mut self, tuning: Tuning) -> Self {
        self.config.tuning = tuning;
        self
    }

    /// Shortcut for [`Tuning::trigger_hand_off`]: hand triggers to this process's running
    /// worker, which enqueues and claims in one transaction (default `true`).
    pub fn trigger_hand_off(mut self, hand_off: bool) -> Self {
        self.config.tuning.trigger_hand_off = hand_off;
        self
    }

    /// Shortcut for [`Tuning::claim_ahead_below`]: claim ahead after runs that executed for
    /// less than `below` (default 100 ms; zero turns it off).
    pub fn claim_ahead_below(mut self, below: Duration) -> Self {
        self.config.tuning.claim_ahead_below = below;
        self
    }

    /// Whether run streams follow runs that other processes execute (default `true`; see
    /// [`Config::follow_runs_elsewhere`]).
    pub fn follow_runs_elsewhere(mut self, follow: bool) -> Self {
        self.config.follow_runs_elsewhere = follow;
        self
    }

    /// Bounds on what one run may carry and one listing may ask (default [`Limits::default`]:
    /// 32 label filters, 100 job names per listing; 64 labels per run, 256-byte label keys,
    /// 1 KiB label values, 256-byte idempotency and concurrency keys). Every entry point
    /// (triggers, listings, HTTP, the command line) refuses what exceeds them with
    /// [`Error::Validation`] before the store is touched.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Validates labels passed to triggers; a rejection fails the trigger with
    /// `labels: Invalid input: <message>` and stores nothing.
    pub fn labels_validator(
        mut self,
        validator: impl Fn(&Labels) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.labels_validator = Some(Arc::new(validator));
        self
    }

    /// Registers a job at build time (get its handle later with [`Durably::job`]).
    pub fn job<I: JobData, O: JobData>(mut self, job: Job<I, O>) -> Self {
        self.jobs
            .push(Box::new(move |durably| durably.register(job).map(|_| ())));
        self
    }

    /// Validates the options and creates the instance. No I/O beyond opening the store.
    pub fn build(self) -> Result<Durably> {
        let mut config = self.config;
        if !(1..=1000).contains(&config.max_concurrent_runs) {
            return Err(Error::Validation(format!(
                "max_concurrent_runs must be between 1 and 1000 (got {})",
                config.max_concurrent_runs
            )));
        }
        if config.polling_interval.is_zero() {
            return Err(Error::Validation(
                "polling_interval must be greater than zero".into(),
            ));
        }
        if config.lease_duration.is_zero() || config.lease_renew_interval.is_zero() {
            return Err(Error::Validation(
                "lease_duration and lease_renew_interval must be greater than zero".into(),
            ));
        }
        if let Some(text) = self.retain_runs.filter(|t| !t.is_empty()) {
            config.retain_runs = Some(parse_retention(&text)?);
        }
        let choice = self.store.ok_or_else(|| {
            Error::Config(
                "no store configured: call .sqlite(path), .postgres(url) (feature `postgres`), \
                 .store(store) or .shared_store(store)"
                    .into(),
            )
        })?;
        let store = choice.open(self.preserve_steps)?;
        config.preserve_steps = store.preserves_steps();
        let events = EventBus::default();
        let engine = Engine::new(store.clone(), settings_of(&config), events.clone());
        let durably = Durably {
            inner: Arc::new(Inner {
                store,
                config,
                events,
                engine: Arc::new(engine),
                migrated: tokio::sync::OnceCell::new(),
                labels_validator: self.labels_validator,
            }),
        };
        for register in self.jobs {
            register(&durably)?;
        }
        Ok(durably)
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Config,
    pub(crate) events: EventBus,
    /// Claims, executes and maintains (`src/engine/`).
    pub(crate) engine: Arc<Engine>,
    migrated: tokio::sync::OnceCell<()>,
    labels_validator: Option<LabelsValidator>,
}

/// Where the builder's store comes from: opened by [`DurablyBuilder::build`] with the
/// instance's step policy, or given ready.
enum StoreChoice {
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    #[cfg(feature = "postgres")]
    Postgres(String),
    Given(Arc<dyn Store>),
}

impl StoreChoice {
    /// The store, with `preserve_steps` as its step policy when the builder opens it.
    fn open(self, preserve_steps: Option<bool>) -> Result<Arc<dyn Store>> {
        let preserve = preserve_steps.unwrap_or(false);
        Ok(match self {
            #[cfg(feature = "sqlite")]
            StoreChoice::Sqlite(path) => {
                let options = crate::store::SqliteOptions {
                    preserve_steps: preserve,
                    ..Default::default()
                };
                Arc::new(crate::store::SqliteStore::open_with(path, options)?)
            }
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres(url) => {
                let options = crate::store::PostgresOptions {
                    preserve_steps: preserve,
                    ..Default::default()
                };
                Arc::new(crate::store::PostgresStore::connect_with(&url, options)?)
            }
            StoreChoice::Given(store) => match preserve_steps {
                Some(wanted) if wanted != store.preserves_steps() => {
                    store.with_step_policy(wanted).ok_or_else(|| {
                        Error::Config(format!(
                            "preserve_steps({wanted}) differs from the given store's policy \
                         ({}): set it where the store is built \
                         (SqliteOptions::preserve_steps, PostgresOptions::preserve_steps)",
                            store.preserves_steps()
                        ))
                    })?
                }
                _ => store,
            },
        })
    }
}

/// What the engine needs of `config`.
fn settings_of(config: &Config) -> Settings {
    Settings {
        polling_interval: config.polling_interval,
        lease_duration: config.lease_duration,
        lease_renew_interval: config.lease_renew_interval,
        max_concurrent_runs: config.max_concurrent_runs,
        retain_runs: config.retain_runs,
        persist_logs: config.persist_logs,
        trigger_hand_off: config.tuning.trigger_hand_off,
        claim_ahead_below: config.tuning.claim_ahead_below,
    }
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

/// A live log entry passed to [`WaitOptions::on_log`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LogEntry {
    /// Severity.
    pub level: LogLevel,
    /// Message.
    pub message: String,
    /// Structured data.
    pub data: Option<Value>,
    /// The step executing when it was written.
    pub step_name: Option<String>,
}

type ProgressCallback = Arc<dyn Fn(&Progress) + Send + Sync>;
type LogCallback = Arc<dyn Fn(&LogEntry) + Send + Sync>;

/// Options of [`Durably::wait_for_run`] and `trigger_and_wait`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct WaitOptions {
    /// Give up after this long (the run itself is unaffected).
    pub timeout: Option<Duration>,
    /// How often to poll the database for changes made by other processes
    /// (default: the instance's polling interval).
    pub polling_interval: Option<Duration>,
    /// Called for each live `run:progress` of the run.
    pub on_progress: Option<ProgressCallback>,
    /// Called for each live `log:write` of the run.
    pub on_log: Option<LogCallback>,
}

impl std::fmt::Debug for WaitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitOptions")
            .field("timeout", &self.timeout)
            .field("polling_interval", &self.polling_interval)
            .finish_non_exhaustive()
    }
}

impl WaitOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the storage polling interval.
    pub fn polling_interval(mut self, interval: Duration) -> Self {
        self.polling_interval = Some(interval);
        self
    }

    /// Sets the progress callback.
    pub fn on_progress(mut self, callback: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(callback));
        self
    }

    /// Sets the log callback.
    pub fn on_log(mut self, callback: impl Fn(&LogEntry) + Send + Sync + 'static) -> Self {
        self.on_log = Some(Arc::new(callback));
        self
    }
}

/// Information about a registered job, for tools.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobInfo {
    /// The job's name.
    pub name: String,
    /// The JSON Schema of its input, if the job was given one ([`Job::input_schema`]).
    pub input_schema: Option<Value>,
}

impl Durably {
    /// Starts building an instance.
    pub fn builder() -> DurablyBuilder {
        DurablyBuilder {
            store: None,
            preserve_steps: None,
            config: Config::default(),
            retain_runs: None,
            labels_validator: None,
            jobs: Vec::new(),
        }
    }

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

    /// Registers a job and returns its typed handle. Registering the same definition again
    /// (or a clone of it) returns a handle to the same job; another definition with the same
    /// name is an error.
    pub fn register<I: JobData, O: JobData>(&self, job: Job<I, O>) -> Result<JobHandle<I, O>> {
        let name = job.name().to_owned();
        if name.is_empty() {
            return Err(Error::Config("A job name must not be empty".into()));
        }
        let registered = Arc::new(job.into_registered());
        let current = self.inner.engine.jobs.insert_if_absent(registered.clone());
        if !current.same_definition(&registered) {
            return Err(Error::Config(format!(
                "Job \"{name}\" is already registered with a different definition"
            )));
        }
        Ok(JobHandle::new(self.clone(), &name))
    }

    /// The typed handle of a job registered earlier (e.g. through the builder). Fails if the
    /// name is unknown or registered with other input/output types.
    pub fn job<I: JobData, O: JobData>(&self, name: &str) -> Result<JobHandle<I, O>> {
        let job = self.registered(name)?;
        if job.type_id() != std::any::TypeId::of::<(I, O)>() {
            return Err(Error::Config(format!(
                "Job \"{name}\" is registered with other input/output types"
            )));
        }
        Ok(JobHandle::new(self.clone(), name))
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

    fn registered(&self, name: &str) -> Result<Arc<RegisteredJob>> {
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
        if options.coalesce.is_some() && options.concurrency_key.is_none() {
            return Err(Error::Validation(at(
                "coalesce requires concurrencyKey".into()
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
    /// (see [`Tuning::trigger_hand_off`]).
    async fn enqueue_announced(&self, request: NewRun) -> Result<Enqueued> {
        let _announcing = self.inner.engine.announcing.read().await;
        match self.inner.engine.hand_off(request) {
            Handed::Taken(answer) => answer.await.map_err(|_| {
                Error::storage("enqueue", "the worker stopped before answering the trigger")
            })?,
            Handed::Refused(request) => {
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
    /// [`JobHandle::trigger_with`]). Unknown job → [`Error::NotFound`] `Job not found: <name>`.
    pub async fn trigger_json(
        &self,
        job_name: &str,
        input: Value,
        options: TriggerOptions,
    ) -> Result<TriggerResult> {
        check_text("jobName", job_name)?;
        let job = self.registered(job_name)?;
        let request = self.prepare(&job, input, options, None)?;
        let enqueued = self.enqueue_announced(request).await?;
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
        let _announcing = self.inner.engine.announcing.read().await;
        let enqueued = self
            .inner
            .store
            .enqueue_many(requests.clone(), Timestamp::now())
            .await?;
        Ok(enqueued
            .into_iter()
            .zip(&requests)
            .map(|(enqueued, request)| {
                self.announce(&enqueued, request);
                TriggerResult {
                    run: enqueued.run,
                    disposition: enqueued.disposition,
                }
            })
            .collect())
    }

    /// Triggers a run and waits for it (untyped form of [`JobHandle::trigger_and_wait`]).
    pub async fn trigger_and_wait_json(
        &self,
        job_name: &str,
        input: Value,
        options: TriggerOptions,
        wait: WaitOptions,
    ) -> Result<TriggerAndWaitResult> {
        // With callbacks, listen before the run exists: a worker of this process may start it
        // (and report progress) before the trigger returns. Terminal states need no such care:
        // the wait's first read sees them.
        let early = (wait.on_progress.is_some() || wait.on_log.is_some())
            .then(|| self.inner.events.subscribe_all());
        let triggered = self.trigger_json(job_name, input, options).await?;
        let output = match self
            .wait_inner(&triggered.run.id, wait, "triggerAndWait", false, early)
            .await?
        {
            Settled::Run(run) => run.output,
            Settled::Output(output) => output,
        };
        Ok(TriggerAndWaitResult {
            id: triggered.run.id,
            output,
            disposition: triggered.disposition,
        })
    }

    /// One run, or `None`. An id with a NUL character is [`Error::Validation`] (no backend can
    /// store one).
    pub async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        check_run_id(id)?;
        self.inner.store.get_run(id).await
    }

    /// Runs matching `filter`, newest first. A filter over [`Limits`] (too many labels or job
    /// names, a label key or value too long) or with text no backend can store is
    /// [`Error::Validation`], before any query runs.
    pub async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        self.inner.config.limits.check_filter(filter)?;
        self.inner.store.get_runs(filter).await
    }

    /// [`get_runs`](Self::get_runs) that gives up after `timeout` with [`Error::Timeout`],
    /// cancelling the query in the database (as dropping the future does).
    #[cfg(feature = "http")]
    pub(crate) async fn get_runs_within(
        &self,
        filter: &RunFilter,
        timeout: Duration,
    ) -> Result<Vec<Run>> {
        self.inner.config.limits.check_filter(filter)?;
        self.inner.store.get_runs_within(filter, timeout).await
    }

    /// The persisted steps of a run, by index.
    pub async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        check_run_id(run_id)?;
        self.inner.store.get_steps(run_id).await
    }

    /// The persisted logs of a run, oldest first.
    pub async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        check_run_id(run_id)?;
        self.inner.store.get_logs(run_id).await
    }

    async fn require_run(&self, id: &str) -> Result<Run> {
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
        };
        Ok(self.enqueue_announced(request).await?.run)
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

    /// Waits until a run completes and returns it. A failed run gives [`Error::RunFailed`], a
    /// cancelled one [`Error::Cancelled`], a deleted one [`Error::NotFound`]. Completion in this
    /// process is seen at once; other processes' changes by polling the store.
    pub async fn wait_for_run(&self, run_id: &str, options: WaitOptions) -> Result<Run> {
        match self
            .wait_inner(run_id, options, "waitForRun", true, None)
            .await?
        {
            Settled::Run(run) => Ok(*run),
            Settled::Output(_) => self.require_run(run_id).await,
        }
    }

    /// Waits for a run to settle. With `reread_on_complete` false, an in-process `run:complete`
    /// settles with the event's output instead of reading the run again (the latency path of
    /// `trigger_and_wait`).
    async fn wait_inner(
        &self,
        run_id: &str,
        options: WaitOptions,
        name: &str,
        reread_on_complete: bool,
        early: Option<tokio::sync::mpsc::UnboundedReceiver<Arc<Event>>>,
    ) -> Result<Settled> {
        let interval = options
            .polling_interval
            .unwrap_or(self.inner.config.polling_interval);
        if interval.is_zero() {
            return Err(Error::Validation(
                "pollingIntervalMs must be a positive finite number".into(),
            ));
        }
        // `early` carries every event since before the run was created (filtered below).
        let mut live = early.unwrap_or_else(|| self.inner.events.subscribe_run(run_id));
        let deadline = options.timeout.map(|t| tokio::time::Instant::now() + t);
        let timeout_error = || {
            Error::Timeout(format!(
                "{name} timeout after {}ms",
                options.timeout.unwrap_or_default().as_millis()
            ))
        };
        let settle = |run: Option<Run>| -> Option<Result<Settled>> {
            let run = match run {
                None => return Some(Err(Error::run_not_found(run_id))),
                Some(run) => run,
            };
            match run.status {
                RunStatus::Completed => Some(Ok(Settled::Run(Box::new(run)))),
                RunStatus::Failed => Some(Err(Error::RunFailed {
                    run_id: run.id,
                    message: run.error.unwrap_or_else(|| "Run failed".into()),
                })),
                RunStatus::Cancelled => Some(Err(Error::Cancelled { run_id: run.id })),
                _ => None,
            }
        };
        if let Some(done) = settle(self.get_run(run_id).await?) {
            deliver_queued(&mut live, run_id, &options).await;
            return done;
        }
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep_until_deadline = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = live.recv() => {
                    let Some(event) = event else { continue };
                    if event.kind.run_id() != Some(run_id) {
                        continue;
                    }
                    match &event.kind {
                        EventKind::RunComplete { output, .. } if !reread_on_complete => {
                            let output = (!output.is_null()).then(|| output.clone());
                            return Ok(Settled::Output(output));
                        }
                        EventKind::RunComplete { .. } => {
                            if let Some(done) = settle(self.get_run(run_id).await?) {
                                return done;
                            }
                        }
                        EventKind::RunFail { error, .. } => {
                            return Err(Error::RunFailed { run_id: run_id.to_owned(), message: error.clone() });
                        }
                        EventKind::RunCancel { .. } => {
                            return Err(Error::Cancelled { run_id: run_id.to_owned() });
                        }
                        EventKind::RunDelete { .. } => return Err(Error::run_not_found(run_id)),
                        kind => deliver(kind, &options).await,
                    }
                }
                _ = poll.tick() => {
                    if let Some(done) = settle(self.get_run(run_id).await?) {
                        deliver_queued(&mut live, run_id, &options).await;
                        return done;
                    }
                }
                _ = sleep_until_deadline => return Err(timeout_error()),
            }
        }
    }

    /// How many event streams are open ([`subscribe`](Self::subscribe),
    /// [`subscribe_all`](Self::subscribe_all) and waits in progress); streams already dropped
    /// are pruned first. For leak checks and metrics.
    pub fn open_event_streams(&self) -> usize {
        self.inner.events.open_streams()
    }

    /// A stream of every event emitted from now on (for dashboards and `/runs/subscribe`).
    /// Dropping the stream unsubscribes.
    pub fn subscribe_all(&self) -> impl Stream<Item = Event> + Send + 'static {
        let live = self.inner.events.subscribe_all();
        futures::stream::unfold(live, |mut live| async move {
            let event = live.recv().await?;
            Some(((*event).clone(), live))
        })
    }

    /// A stream of one run's events, as upstream's: it listens from this call on, and when first
    /// polled reads the run's current state. It yields the live events that arrived in between
    /// (in order), then that state as synthetic events with `sequence` 0 (`run:leased` plus
    /// `run:progress` while leased; the terminal event of a finished run), then live events.
    /// A live event may therefore precede or repeat a synthetic one. While no worker of this
    /// process executes the run (another process does), the stream reads it every polling
    /// interval and yields what changed as synthetic events (`run:leased`, `step:complete`,
    /// `run:progress`, the end). It ends after the run's `run:complete`, `run:fail`,
    /// `run:cancel` or `run:delete` (for a cancel made by another process, once the worker
    /// executing the run notices it). Dropping the stream unsubscribes.
    pub fn subscribe(&self, run_id: &str) -> impl Stream<Item = Event> + Send + 'static {
        let live = self.inner.events.subscribe_run(run_id);
        let state = SubscribeState {
            durably: self.clone(),
            run_id: run_id.to_owned(),
            live,
            queued: VecDeque::new(),
            started: false,
            closed: false,
            observed: None,
            rebaseline: false,
            lease_sighted: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            let event = state.next().await?;
            Some((event, state))
        })
    }
}

/// Calls the wait's `on_progress` / `on_log` callback for a live event of its run.
async fn deliver(kind: &EventKind, options: &WaitOptions) {
    match kind {
        EventKind::RunProgress { progress, .. } => {
            if let Some(callback) = &options.on_progress {
                let callback = callback.clone();
                let progress = progress.clone();
                crate::events::call_guarded(async move { callback(&progress) }).await;
            }
        }
        EventKind::LogWrite {
            level,
            message,
            data,
            step_name,
            ..
        } => {
            if let Some(callback) = &options.on_log {
                let callback = callback.clone();
                let entry = LogEntry {
                    level: *level,
                    message: message.clone(),
                    data: data.clone(),
                    step_name: step_name.clone(),
                };
                crate::events::call_guarded(async move { callback(&entry) }).await;
            }
        }
        _ => {}
    }
}

/// A wait settled by reading the store: the events emitted since it subscribed may still be
/// queued (the run can finish before the read runs). Their callbacks are owed: call them first.
async fn deliver_queued(
    live: &mut tokio::sync::mpsc::UnboundedReceiver<Arc<Event>>,
    run_id: &str,
    options: &WaitOptions,
) {
    if options.on_progress.is_none() && options.on_log.is_none() {
        return;
    }
    while let Ok(event) = live.try_recv() {
        if event.kind.run_id() == Some(run_id) {
            deliver(&event.kind, options).await;
        }
    }
}

/// How a wait ended successfully.
enum Settled {
    /// The completed run, as read from the store.
    Run(Box<Run>),
    /// The output carried by the in-process `run:complete` event.
    Output(Option<Value>),
}

struct SubscribeState {
    durably: Durably,
    run_id: String,
    live: tokio::sync::mpsc::UnboundedReceiver<Arc<Event>>,
    queued: VecDeque<Event>,
    started: bool,
    closed: bool,
    /// The run as last read from the store, while another process executes it (`None`: not
    /// seen yet, or executing here, whose events arrive live).
    observed: Option<RunSnapshot>,
    /// The run executed here since the last read: the next read is only a starting point.
    rebaseline: bool,
    /// A read found the pending run leased (announced when the next read confirms it).
    lease_sighted: bool,
}

const SUBSCRIBED_TYPES: [EventType; 10] = [
    EventType::RunLeased,
    EventType::RunComplete,
    EventType::RunFail,
    EventType::RunCancel,
    EventType::RunDelete,
    EventType::RunProgress,
    EventType::StepStart,
    EventType::StepComplete,
    EventType::StepFail,
    EventType::LogWrite,
];

/// An event a run stream makes up from the store (`sequence` 0, as upstream's current-state
/// events).
fn synthetic_event(kind: EventKind) -> Event {
    Event {
        kind,
        timestamp: Timestamp::now(),
        sequence: 0,
    }
}

fn ends_stream(event_type: EventType) -> bool {
    matches!(
        event_type,
        EventType::RunComplete | EventType::RunFail | EventType::RunCancel | EventType::RunDelete
    )
}

impl SubscribeState {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.closed {
                return None;
            }
            if !self.started {
                self.started = true;
                let current = self.durably.get_run(&self.run_id).await;
                // Live events that arrived since `subscribe` come first, as if delivered when
                // they happened (upstream §7); one that ends the stream makes the current state
                // moot.
                while let Ok(event) = self.live.try_recv() {
                    let event_type = event.event_type();
                    if SUBSCRIBED_TYPES.contains(&event_type) {
                        self.queued.push_back((*event).clone());
                        if ends_stream(event_type) {
                            self.closed = true;
                            break;
                        }
                    }
                }
                if self.closed {
                    continue;
                }
                match current {
                    Ok(Some(run)) => {
                        if self.durably.inner.config.follow_runs_elsewhere {
                            self.observed = Some(RunSnapshot::of(&run));
                        }
                        self.queue_current_state(run);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(run_id = %self.run_id, %error, "subscribe could not read the run");
                        self.closed = true;
                    }
                }
                continue;
            }
            // A run that another process executes: its events never reach this one, so the
            // stream reads the store after each polling interval without a live event.
            let event = match self.observed.is_some() {
                true => {
                    let every = self.durably.inner.config.polling_interval;
                    tokio::select! {
                        event = self.live.recv() => event?,
                        () = tokio::time::sleep(every) => {
                            self.follow().await;
                            continue;
                        }
                    }
                }
                false => self.live.recv().await?,
            };
            let event_type = event.event_type();
            if !SUBSCRIBED_TYPES.contains(&event_type) {
                continue;
            }
            if ends_stream(event_type) {
                self.closed = true;
            }
            return Some((*event).clone());
        }
    }

    /// Reads the run and queues, as synthetic events, what changed since it was last read:
    /// its lease, newly completed steps, progress, its end (or deletion), unless it is
    /// executing in this process, whose own events arrive live.
    async fn follow(&mut self) {
        if self.durably.inner.engine.is_executing(&self.run_id) {
            // Its events arrived live: once it is no longer here (another worker may take it
            // over), the next read is only a new starting point.
            self.rebaseline = true;
            return;
        }
        let store = &self.durably.inner.store;
        let run = match store.get_run(&self.run_id).await {
            Ok(Some(run)) => run,
            Ok(None) => {
                self.closed = true;
                if let Some(seen) = self.observed.take() {
                    self.queued.push_back(synthetic_event(EventKind::RunDelete {
                        run_id: self.run_id.clone(),
                        job_name: seen.job_name,
                        labels: seen.labels,
                    }));
                }
                return;
            }
            Err(error) => {
                tracing::debug!(run_id = %self.run_id, %error, "subscribe could not follow the run");
                return;
            }
        };
        let before = self.observed.replace(RunSnapshot::of(&run));
        let Some(before) = before.filter(|_| !std::mem::take(&mut self.rebaseline)) else {
            return;
        };
        if before.status == RunStatus::Pending
            && run.status == RunStatus::Leased
            && !std::mem::replace(&mut self.lease_sighted, true)
        {
            // A worker of this process may have claimed it a moment ago and not be executing
            // it yet (its events then come live): announced if still so at the next read.
            self.observed = Some(before);
            return;
        }
        let steps = match before.needs_steps(&run) {
            true => store.get_steps(&run.id).await.unwrap_or_default(),
            false => Vec::new(),
        };
        for kind in before.changes(&run, &steps) {
            if ends_stream(kind.event_type()) {
                self.closed = true;
            }
            self.queued.push_back(synthetic_event(kind));
        }
    }

    fn queue_current_state(&mut self, run: Run) {
        let synthetic = synthetic_event;
        let (run_id, job_name, labels) = (run.id.clone(), run.job_name.clone(), run.labels.clone());
        match run.status {
            RunStatus::Leased => {
                self.queued.push_back(synthetic(EventKind::RunLeased {
                    run_id: run_id.clone(),
                    job_name: job_name.clone(),
                    input: run.input,
                    lease_owner: run.lease_owner.unwrap_or_default(),
                    lease_expires_at: run
                        .lease_expires_at
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                    labels: labels.clone(),
                }));
                if let Some(progress) = run.progress {
                    self.queued.push_back(synthetic(EventKind::RunProgress {
                        run_id,
                        job_name,
                        progress,
                        labels,
                    }));
                }
            }
            RunStatus::Completed => {
                self.queued.push_back(synthetic(EventKind::RunComplete {
                    run_id,
                    job_name,
                    output: run.output.unwrap_or(Value::Null),
                    duration: 0,
                    labels,
                }));
                self.closed = true;
            }
            RunStatus::Failed => {
                self.queued.push_back(synthetic(EventKind::RunFail {
                    run_id,
                    job_name,
                    error: run.error.unwrap_or_else(|| "Unknown error".into()),
                    failed_step_name: String::new(),
                    labels,
                }));
                self.closed = true;
            }
            RunStatus::Cancelled => {
                self.queued.push_back(synthetic(EventKind::RunCancel {
                    run_id,
                    job_name,
                    labels,
                }));
                self.closed = true;
            }
            RunStatus::Pending => {}
        }
    }
}
