//! Building an instance: [`DurablyBuilder`](crate::DurablyBuilder) validates every option, opens the store with the
//! instance's step policy, and starts nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Tuning, parse_retention};
use crate::durably::{Durably, Inner, LabelsValidator};
use crate::engine::{Engine, Settings};
use crate::error::{Error, Result};
use crate::events::EventBus;
use crate::job::{Job, JobData};
use crate::limits::Limits;
use crate::maintenance::MaintenanceTask;
use crate::run::Labels;
use crate::schedules::Schedule;
use crate::schedules::scheduler::{Scheduler, SchedulerTask};
use crate::store::Store;
use crate::time::Timestamp;

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
            schedules: Vec::new(),
            metrics: None,
        }
    }
}

type PendingJob = Box<dyn FnOnce(&Durably) -> Result<()> + Send>;

/// Builds a [`Durably`](crate::Durably) instance; every option is validated by [`build`](Self::build).
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
    /// Set by [`DurablyBuilder::preserve_steps`](crate::DurablyBuilder::preserve_steps) (`None`: the default, or the given store's).
    preserve_steps: Option<bool>,
    config: Config,
    retain_runs: Option<String>,
    labels_validator: Option<LabelsValidator>,
    jobs: Vec<PendingJob>,
    schedules: Vec<Schedule>,
    /// Set by `meter_provider` (feature `otel`); `None`: the global provider.
    metrics: Option<crate::telemetry::metrics::Metrics>,
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

    /// Uses the remote libSQL database at `url` (`libsql://…` for Turso, `https://…`,
    /// `http://…`) with `auth_token` (`None`: no token, or the URL's `authToken=`), through
    /// [`crate::store::LibsqlStore`] (no request until the first operation; `migrate`/`init`
    /// create the schema).
    #[cfg(feature = "libsql")]
    pub fn libsql(mut self, url: &str, auth_token: Option<String>) -> Self {
        self.store = Some(StoreChoice::Libsql(url.to_owned(), auth_token));
        self
    }

    /// Uses any [`Store`](crate::Store).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(StoreChoice::Given(Arc::new(store)));
        self
    }

    /// Uses a shared [`Store`](crate::Store).
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

    /// Keep step outputs after runs complete or are cancelled (default `false`; failed runs keep
    /// them anyway, for [`Durably::resume`](crate::Durably::resume)). Sets the policy of the store the
    /// builder opens (`sqlite`, `postgres`); a store given to [`store`](Self::store) brings its
    /// own (`SqliteOptions::preserve_steps`, `PostgresOptions::preserve_steps`), and a different
    /// one here uses the store's view with this policy
    /// ([`Store::with_step_policy`](crate::Store::with_step_policy)), or fails
    /// [`build`](Self::build) when the store has none.
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

    /// The worker's speed knobs (default [`Tuning::default`](crate::Tuning::default), the measured defaults).
    pub fn tuning(mut self, tuning: Tuning) -> Self {
        self.config.tuning = tuning;
        self
    }

    /// Shortcut for [`Tuning::trigger_hand_off`](crate::Tuning::trigger_hand_off): hand triggers to this process's running
    /// worker, which enqueues and claims in one transaction (default `true`).
    pub fn trigger_hand_off(mut self, hand_off: bool) -> Self {
        self.config.tuning.trigger_hand_off = hand_off;
        self
    }

    /// Sets [`Tuning::local_queue`](crate::Tuning::local_queue): up to `runs` runs in
    /// progress, of which `max_concurrent_runs` execute job code at once.
    pub fn local_queue(mut self, runs: usize) -> Self {
        self.config.tuning.local_queue = Some(runs);
        self
    }

    /// Shortcut for [`Tuning::claim_ahead_below`](crate::Tuning::claim_ahead_below): claim ahead after runs that executed for
    /// less than `below` (default 100 ms; zero turns it off).
    pub fn claim_ahead_below(mut self, below: Duration) -> Self {
        self.config.tuning.claim_ahead_below = below;
        self
    }

    /// Whether run streams follow runs that other processes execute (default `true`; see
    /// [`Config::follow_runs_elsewhere`](crate::Config::follow_runs_elsewhere)).
    pub fn follow_runs_elsewhere(mut self, follow: bool) -> Self {
        self.config.follow_runs_elsewhere = follow;
        self
    }

    /// Bounds on what one run may carry and one listing may ask (default [`Limits::default`](crate::Limits::default):
    /// 32 label filters, 100 job names per listing; 64 labels per run, 256-byte label keys,
    /// 1 KiB label values, 256-byte idempotency and concurrency keys). Every entry point
    /// (triggers, listings, HTTP, the command line) refuses what exceeds them with
    /// [`Error::Validation`](crate::Error::Validation) before the store is touched.
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

    /// Registers a job at build time (get its handle later with [`Durably::job`](crate::Durably::job)).
    pub fn job<I: JobData, O: JobData>(mut self, job: Job<I, O>) -> Self {
        self.jobs
            .push(Box::new(move |durably| durably.register(job).map(|_| ())));
        self
    }

    /// Registers a cron schedule at build time ([`crate::schedules`]): validated by
    /// [`build`](Self::build) (cron expression, time zone, a job registered on this builder,
    /// its input, labels), stored by the instance's first maintenance pass or schedule call.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedules.push(schedule);
        self
    }

    /// Records the engine's metrics (runs triggered, started, completed, failed, cancelled,
    /// run, step and queue durations, lease losses and reclaims, claims, store errors; the
    /// repository's `docs/observability.md` lists them) on `provider`'s meter `durably`.
    /// Without this call they go to OpenTelemetry's global provider as it is when
    /// [`build`](Self::build) runs (a no-op until one is installed with
    /// `opentelemetry::global::set_meter_provider`).
    ///
    /// ```
    /// # fn example() -> durably::Result<()> {
    /// // opentelemetry_sdk's provider, with the reader of your exporter (OTLP, Prometheus…).
    /// let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    /// let durably = durably::Durably::builder()
    ///     .sqlite(":memory:")
    ///     .meter_provider(&provider)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "otel")]
    pub fn meter_provider(mut self, provider: &dyn opentelemetry::metrics::MeterProvider) -> Self {
        self.metrics = Some(crate::telemetry::metrics::Metrics::from_provider(provider));
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
        if let Some(runs) = config.tuning.local_queue
            && !(1..=10_000).contains(&runs)
        {
            return Err(Error::Validation(format!(
                "tuning.local_queue must be between 1 and 10000 runs (got {runs}); \
                 None keeps max_concurrent_runs runs in progress"
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
        let scheduler = Arc::new(Scheduler::new(store.clone()));
        let mut tasks: Vec<Arc<dyn MaintenanceTask>> = Vec::new();
        if store.keeps_schedules() {
            tasks.push(Arc::new(SchedulerTask(scheduler.clone())));
        }
        let metrics = self.metrics.unwrap_or_default();
        let engine = Engine::new(
            store.clone(),
            settings_of(&config),
            events.clone(),
            tasks,
            metrics,
        );
        scheduler.attach(&engine);
        let durably = Durably {
            inner: Arc::new(Inner {
                store,
                config,
                events,
                engine,
                scheduler: scheduler.clone(),
                migrated: tokio::sync::OnceCell::new(),
                labels_validator: self.labels_validator,
            }),
        };
        for register in self.jobs {
            register(&durably)?;
        }
        if !self.schedules.is_empty() && !durably.store().keeps_schedules() {
            return Err(Error::Config(format!(
                "the {} store keeps no schedules: register schedules on a SQLite, PostgreSQL or \
                 memory store",
                durably.store().backend()
            )));
        }
        for schedule in self.schedules {
            scheduler.add_code_schedule(durably.validate_schedule(schedule, Timestamp::now())?)?;
        }
        Ok(durably)
    }
}

/// Where the builder's store comes from: opened by [`DurablyBuilder::build`](crate::DurablyBuilder::build) with the
/// instance's step policy, or given ready.
enum StoreChoice {
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    #[cfg(feature = "postgres")]
    Postgres(String),
    /// A URL and an auth token.
    #[cfg(feature = "libsql")]
    Libsql(String, Option<String>),
    Given(Arc<dyn Store>),
}

impl StoreChoice {
    /// The store, with `preserve_steps` as its step policy when the builder opens it.
    fn open(self, preserve_steps: Option<bool>) -> Result<Arc<dyn Store>> {
        let preserve = preserve_steps.unwrap_or(false);
        Ok(match self {
            #[cfg(feature = "sqlite")]
            StoreChoice::Sqlite(path) => {
                let options = crate::store::SqliteOptions::default().preserve_steps(preserve);
                Arc::new(crate::store::SqliteStore::open_with(path, options)?)
            }
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres(url) => {
                let options = crate::store::PostgresOptions::default().preserve_steps(preserve);
                Arc::new(crate::store::PostgresStore::connect_with(&url, options)?)
            }
            #[cfg(feature = "libsql")]
            StoreChoice::Libsql(url, auth_token) => {
                let mut options = crate::store::LibsqlOptions::default().preserve_steps(preserve);
                options.auth_token = auth_token;
                Arc::new(crate::store::LibsqlStore::open(&url, options)?)
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
        local_queue: config.tuning.local_queue.unwrap_or(0),
        retain_runs: config.retain_runs,
        persist_logs: config.persist_logs,
        trigger_hand_off: config.tuning.trigger_hand_off,
        claim_ahead_below: config.tuning.claim_ahead_below,
        attempt_record_delay: config.tuning.attempt_record_delay,
    }
}
