//! Cron schedules: a job triggered at every slot of a cron expression in a time zone, fired
//! exactly once per slot by whichever process sees the slot first, without a leader.
//!
//! A schedule is registered in code ([`DurablyBuilder::schedule`](crate::DurablyBuilder::schedule))
//! or at runtime ([`Durably::schedules`](crate::Durably::schedules)), and kept in the
//! database (`durably_rs_schedules`) with its next slot. Every worker's maintenance fires the
//! due slots: one store operation ([`Store::fire_schedule`](crate::Store::fire_schedule))
//! moves the schedule's next slot on from exactly the slot it read (compare-and-set) and
//! enqueues the slot's run in the same transaction, the run's idempotency key
//! (`schedule:<name>:<slot>`) guarding a second time. See `docs/schedules.md`.
//!
//! ```no_run
//! # async fn example() -> durably::Result<()> {
//! use durably::{CatchUp, Durably, Job, Schedule};
//! use serde_json::json;
//!
//! let report = Job::new("nightly-report", |_step, day: serde_json::Value| async move {
//!     Ok(day)
//! });
//! let durably = Durably::builder()
//!     .sqlite("app.db")
//!     .job(report)
//!     .schedule(
//!         Schedule::new("nightly-report", "0 0 3 * * *", "nightly-report", json!({}))
//!             .time_zone("Europe/Paris")
//!             .catch_up(CatchUp::One),
//!     )
//!     .build()?;
//! durably.init().await?; // migrates, starts the worker: its maintenance fires the slots
//! for schedule in durably.schedules().list().await? {
//!     println!("{} next fires at {}", schedule.name, schedule.next_fire_at);
//! }
//! # Ok(()) }
//! ```

pub(crate) mod scheduler;
pub(crate) mod spec;

use serde_json::Value;

use crate::durably::Durably;
use crate::error::{Error, Result};
use crate::run::{Disposition, Labels, Run};
use crate::store::NewRun;
use crate::telemetry::Parent;
use crate::time::Timestamp;

pub use spec::ON_TIME_TOLERANCE;

/// The label every run created by a schedule carries: the schedule's name
/// (`RunFilter` on it lists a schedule's runs).
pub const SCHEDULE_LABEL: &str = "durably.schedule";
/// The label every run created by a schedule carries: its slot (`2026-03-29T01:00:00.000Z`).
pub const SLOT_LABEL: &str = "durably.schedule.slot";

/// The longest schedule name, in bytes (its runs' idempotency keys embed it).
pub const MAX_NAME_BYTES: usize = 200;

/// What a schedule does about slots it missed (the database was down, no worker ran, or every
/// worker was busy for longer than [`ON_TIME_TOLERANCE`]). On-time slots always fire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatchUp {
    /// Missed slots are skipped: the schedule fires again from now on.
    Skip,
    /// One run stands for all the missed slots (the latest of them). The default: a nightly
    /// report missed during an outage runs once when the workers come back.
    #[default]
    One,
    /// Every missed slot gets its run, up to the `max` latest ones (older ones are skipped).
    All {
        /// The most missed slots that run (at least 1).
        max: u32,
    },
}

impl CatchUp {
    /// The stored form: `skip`, `one`, `all:<max>`.
    pub fn as_text(&self) -> String {
        match self {
            CatchUp::Skip => "skip".into(),
            CatchUp::One => "one".into(),
            CatchUp::All { max } => format!("all:{max}"),
        }
    }

    /// Reads the stored form ([`CatchUp::as_text`]); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "skip" => Some(CatchUp::Skip),
            "one" => Some(CatchUp::One),
            _ => text
                .strip_prefix("all:")
                .and_then(|max| max.parse().ok())
                .filter(|max| *max > 0)
                .map(|max| CatchUp::All { max }),
        }
    }
}

/// A schedule to register: a job, its input and labels, triggered at every slot of a cron
/// expression read in a time zone.
///
/// ```
/// use durably::{CatchUp, Schedule};
/// let schedule = Schedule::new("cleanup", "*/15 * * * *", "cleanup", serde_json::json!({}))
///     .time_zone("America/New_York")
///     .label("team", "ops")
///     .catch_up(CatchUp::Skip);
/// assert_eq!(schedule.time_zone, "America/New_York");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Schedule {
    /// Unique name (at most [`MAX_NAME_BYTES`]).
    pub name: String,
    /// Cron expression: 5 fields (`minute hour day-of-month month day-of-week`), or 6 with
    /// seconds first.
    pub cron: String,
    /// The job each slot triggers (registered on the instance that registers the schedule).
    pub job_name: String,
    /// The input of every run (validated by the job when the schedule is registered).
    pub input: Value,
    /// IANA time zone the expression is read in (default `UTC`).
    pub time_zone: String,
    /// Labels of every run, besides [`SCHEDULE_LABEL`] and [`SLOT_LABEL`].
    pub labels: Labels,
    /// What to do about missed slots (default [`CatchUp::One`]).
    pub catch_up: CatchUp,
}

impl Schedule {
    /// A schedule named `name` triggering `job_name` with `input` at every slot of `cron` in
    /// UTC.
    pub fn new(
        name: impl Into<String>,
        cron: impl Into<String>,
        job_name: impl Into<String>,
        input: Value,
    ) -> Self {
        Schedule {
            name: name.into(),
            cron: cron.into(),
            job_name: job_name.into(),
            input,
            time_zone: "UTC".into(),
            labels: Labels::new(),
            catch_up: CatchUp::default(),
        }
    }

    /// Reads the expression in this IANA time zone (`Europe/Paris`).
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = zone.into();
        self
    }

    /// Replaces the labels of the runs.
    pub fn labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    /// Adds one label to the runs.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the catch-up policy.
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }
}

/// A schedule as stored: its definition and where it stands.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ScheduleRecord {
    /// Unique name.
    pub name: String,
    /// The job each slot triggers.
    pub job_name: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone it is read in.
    pub time_zone: String,
    /// The input of every run.
    pub input: Value,
    /// The labels of every run (besides the schedule's own).
    pub labels: Labels,
    /// The catch-up policy.
    pub catch_up: CatchUp,
    /// A paused schedule fires nothing.
    pub paused: bool,
    /// The next slot to fire.
    pub next_fire_at: Timestamp,
    /// The latest slot fired, if any.
    pub last_fired_at: Option<Timestamp>,
    /// When the schedule was first stored.
    pub created_at: Timestamp,
    /// When it last changed (definition, pause, firing).
    pub updated_at: Timestamp,
}

impl ScheduleRecord {
    /// A schedule stored at `now`, not paused and never fired, with no labels and the default
    /// catch-up policy, next firing at `next_fire_at` (for stores written outside this crate,
    /// which read rows into it; set the other fields after).
    pub fn new(
        name: impl Into<String>,
        job_name: impl Into<String>,
        cron: impl Into<String>,
        time_zone: impl Into<String>,
        input: Value,
        next_fire_at: Timestamp,
        now: Timestamp,
    ) -> Self {
        ScheduleRecord {
            name: name.into(),
            job_name: job_name.into(),
            cron: cron.into(),
            time_zone: time_zone.into(),
            input,
            labels: Labels::new(),
            catch_up: CatchUp::default(),
            paused: false,
            next_fire_at,
            last_fired_at: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// One firing of a schedule for [`Store::fire_schedule`](crate::Store::fire_schedule): move
/// the schedule's `next_fire_at` from `expected` to `next` and enqueue `runs`, all or nothing.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ScheduleFiring {
    /// The schedule.
    pub name: String,
    /// The `next_fire_at` the firing read: the firing lands only if it is still that.
    pub expected: Timestamp,
    /// The new `next_fire_at`.
    pub next: Timestamp,
    /// The latest slot fired, stored as `last_fired_at` (`None`: keep the stored one).
    pub last_fired: Option<Timestamp>,
    /// The runs of the slots fired (each with its idempotency key).
    pub runs: Vec<NewRun>,
}

impl ScheduleFiring {
    /// A firing of `name` from `expected` to `next` enqueueing `runs`.
    pub fn new(
        name: impl Into<String>,
        expected: Timestamp,
        next: Timestamp,
        last_fired: Option<Timestamp>,
        runs: Vec<NewRun>,
    ) -> Self {
        ScheduleFiring {
            name: name.into(),
            expected,
            next,
            last_fired,
            runs,
        }
    }
}

/// The run a schedule's slot created (or found, when its idempotency key already had one).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FiredSlot {
    /// The schedule.
    pub schedule: String,
    /// The slot.
    pub slot: Timestamp,
    /// The slot's run.
    pub run: Run,
    /// `Created`, or `Idempotent` when the slot's run existed already.
    pub disposition: Disposition,
}

/// The idempotency key of a slot's run: `schedule:<name>:<slot>`.
pub fn slot_idempotency_key(name: &str, slot: Timestamp) -> String {
    format!("schedule:{name}:{slot}")
}

/// The error of an operation on a schedule that does not exist.
pub(crate) fn schedule_not_found(name: &str) -> Error {
    Error::NotFound(format!(
        "Schedule not found: {name} (list the schedules with durably.schedules().list(), or \
         register it with upsert)"
    ))
}

/// The schedules of an instance ([`Durably::schedules`](crate::Durably::schedules)): register,
/// list, pause, resume and delete them at runtime. Every call first stores the schedules
/// registered in code, if not done yet.
///
/// Its operations read the engine's clock (`Timestamp::now`), or the instant given to
/// [`Schedules::at`].
#[derive(Clone, Debug)]
pub struct Schedules {
    durably: Durably,
    at: Option<Timestamp>,
}

impl Durably {
    /// The schedules of this instance's database.
    pub fn schedules(&self) -> Schedules {
        Schedules {
            durably: self.clone(),
            at: None,
        }
    }
}

impl Schedules {
    /// These operations with `now` as the time (next slots, pauses, firings): for tests that
    /// control the clock and for callers that bring their own (a serverless tick).
    ///
    /// ```no_run
    /// # async fn example(durably: durably::Durably) -> durably::Result<()> {
    /// let noon = durably::Timestamp::parse("2026-06-01T12:00:00Z").expect("time");
    /// let fired = durably.schedules().at(noon).fire_due().await?;
    /// # Ok(()) }
    /// ```
    pub fn at(mut self, now: Timestamp) -> Self {
        self.at = Some(now);
        self
    }

    fn now(&self) -> Timestamp {
        self.at.unwrap_or_else(Timestamp::now)
    }

    fn scheduler(&self) -> &scheduler::Scheduler {
        &self.durably.inner.scheduler
    }

    async fn ready(&self) -> Result<()> {
        self.durably.migrate().await?;
        self.scheduler().register_code_schedules(self.now()).await
    }

    /// Creates the schedule, or replaces its definition (job, input, labels, catch-up, cron,
    /// time zone). Its pause and its last firing are kept; its next slot too, unless the cron
    /// expression or time zone changed (then it is the first slot after now). Invalid values
    /// (cron, time zone, an unknown job, an input the job refuses, label keys) are
    /// [`Error::Validation`] or [`Error::NotFound`] naming the value, and nothing is stored.
    pub async fn upsert(&self, schedule: Schedule) -> Result<ScheduleRecord> {
        let now = self.now();
        let record = self.durably.validate_schedule(schedule, now)?;
        self.ready().await?;
        self.durably.store().upsert_schedule(record, now).await
    }

    /// One schedule, or `None`.
    pub async fn get(&self, name: &str) -> Result<Option<ScheduleRecord>> {
        self.ready().await?;
        self.durably.store().get_schedule(name).await
    }

    /// Every schedule, by name.
    pub async fn list(&self) -> Result<Vec<ScheduleRecord>> {
        self.ready().await?;
        self.durably.store().list_schedules().await
    }

    /// Pauses a schedule: it fires nothing until resumed. [`Error::NotFound`] for an unknown
    /// name.
    pub async fn pause(&self, name: &str) -> Result<ScheduleRecord> {
        self.ready().await?;
        self.durably
            .store()
            .pause_schedule(name, self.now())
            .await?
            .ok_or_else(|| schedule_not_found(name))
    }

    /// Resumes a paused schedule from the first slot after now: slots that passed while it was
    /// paused are skipped, whatever its catch-up policy (a pause is a decision, not an outage).
    /// A schedule that is not paused is returned unchanged. [`Error::NotFound`] for an unknown
    /// name.
    pub async fn resume(&self, name: &str) -> Result<ScheduleRecord> {
        self.ready().await?;
        let store = self.durably.store();
        let record = store
            .get_schedule(name)
            .await?
            .ok_or_else(|| schedule_not_found(name))?;
        let now = self.now();
        let spec = spec::Spec::parse(&record.name, &record.cron, &record.time_zone)?;
        store
            .resume_schedule(name, spec.next_after(now)?, now)
            .await?
            .ok_or_else(|| schedule_not_found(name))
    }

    /// Deletes a schedule (its runs stay); `false` when there was none. A schedule registered
    /// in code comes back when an instance registering it starts again.
    pub async fn delete(&self, name: &str) -> Result<bool> {
        self.ready().await?;
        self.durably.store().delete_schedule(name).await
    }

    /// Triggers a run of the schedule now, outside its slots ("run now"): a run of its job with
    /// its input and labels, labelled [`SCHEDULE_LABEL`] (no [`SLOT_LABEL`], no idempotency key:
    /// every call is a new run). The schedule itself is untouched (its next slot, its last
    /// firing, its pause: a paused schedule can be triggered). [`Error::NotFound`] for an
    /// unknown name.
    ///
    /// The job need not be registered on this instance (the schedule was checked against it
    /// when registered): an operator's process without job code (`durably serve`, the CLI)
    /// enqueues the run for the application's workers.
    pub async fn trigger_now(&self, name: &str) -> Result<Run> {
        self.trigger_now_under(name, &Parent::current()).await
    }

    /// [`Schedules::trigger_now`] with the run's trigger span under `parent` (an HTTP caller's
    /// `traceparent`, see `crate::telemetry`).
    pub(crate) async fn trigger_now_under(&self, name: &str, parent: &Parent) -> Result<Run> {
        self.ready().await?;
        let record = self
            .durably
            .store()
            .get_schedule(name)
            .await?
            .ok_or_else(|| schedule_not_found(name))?;
        let request = triggered_run(&record);
        let run = self
            .durably
            .enqueue_announced_under(request, parent)
            .await?
            .run;
        tracing::info!(schedule = %record.name, run_id = %run.id, "schedule triggered now");
        Ok(run)
    }

    /// Fires every schedule's slots due now, as every worker's maintenance does (once a
    /// second while idle): safe from any number of processes at once, each slot is fired once.
    /// Returns the slots this call fired (their runs are announced and this process's worker
    /// woken).
    pub async fn fire_due(&self) -> Result<Vec<FiredSlot>> {
        self.ready().await?;
        self.scheduler().fire_due(self.now()).await
    }
}

/// The run of [`Schedules::trigger_now`]: the schedule's job, input and labels, with
/// [`SCHEDULE_LABEL`] and without a slot or an idempotency key.
fn triggered_run(schedule: &ScheduleRecord) -> NewRun {
    let mut labels = schedule.labels.clone();
    labels.insert(SCHEDULE_LABEL.into(), schedule.name.clone());
    NewRun {
        job_name: schedule.job_name.clone(),
        input: schedule.input.clone(),
        labels,
        ..Default::default()
    }
}

impl Durably {
    /// Checks a schedule against this instance (its cron, time zone, job, input and labels)
    /// and builds its row, next slot after `now`.
    pub(crate) fn validate_schedule(
        &self,
        schedule: Schedule,
        now: Timestamp,
    ) -> Result<ScheduleRecord> {
        let Schedule {
            name,
            cron,
            job_name,
            input,
            time_zone,
            labels,
            catch_up,
        } = schedule;
        if name.trim().is_empty() {
            return Err(Error::Validation(
                "Schedule name must not be empty: give every schedule a unique name".into(),
            ));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(Error::Validation(format!(
                "Schedule name \"{name}\" is longer than {MAX_NAME_BYTES} bytes: shorten it"
            )));
        }
        crate::limits::check_text("schedule name", &name)?;
        if catch_up == (CatchUp::All { max: 0 }) {
            return Err(Error::Validation(format!(
                "Catch-up All {{ max: 0 }} of schedule \"{name}\" would run nothing: use \
                 CatchUp::Skip, or a max of at least 1"
            )));
        }
        let spec = spec::Spec::parse(&name, &cron, &time_zone)?;
        let job = self.registered_job(&job_name).ok_or_else(|| {
            Error::NotFound(format!(
                "Job not found: {job_name} (schedule \"{name}\" triggers it): register the job \
                 on this instance before scheduling it"
            ))
        })?;
        let input = job.parse_input(input).map_err(|error| {
            Error::Validation(format!(
                "Schedule \"{name}\" for job \"{job_name}\": {error}"
            ))
        })?;
        let mut run_labels = labels.clone();
        run_labels.insert(SCHEDULE_LABEL.into(), name.clone());
        run_labels.insert(SLOT_LABEL.into(), now.to_string());
        for key in run_labels.keys() {
            crate::store::validate_label_key(key)?;
        }
        let options = crate::run::TriggerOptions {
            idempotency_key: Some(slot_idempotency_key(&name, now)),
            labels: Some(run_labels),
            ..Default::default()
        };
        self.inner
            .config
            .limits
            .check_trigger(&job_name, &options, &|message| {
                format!("Schedule \"{name}\": {message}")
            })?;
        if let (Some(validator), Some(labels)) = (&self.inner.labels_validator, &options.labels) {
            validator(labels).map_err(|e| {
                Error::Validation(format!("Schedule \"{name}\": labels: Invalid input: {e}"))
            })?;
        }
        Ok(ScheduleRecord {
            next_fire_at: spec.next_after(now)?,
            name,
            job_name,
            cron,
            time_zone,
            input,
            labels,
            catch_up,
            paused: false,
            last_fired_at: None,
            created_at: now,
            updated_at: now,
        })
    }
}
