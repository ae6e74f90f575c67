//! Runs: one execution of a job, and the records that belong to it (steps, logs, progress).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::time::Timestamp;

/// Labels attached to a run at trigger time (`{"tenant": "acme"}`), used to filter runs.
pub type Labels = BTreeMap<String, String>;

/// The lifecycle state of a run. Terminal states never change again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunStatus {
    /// Waiting to be claimed by a worker.
    Pending,
    /// Claimed by a worker that holds a time-limited lease.
    Leased,
    /// Suspended on a durable wait (upstream schema v4): holds no lease, no worker slot and no
    /// concurrency key until the wait resolves and a worker resumes it.
    Waiting,
    /// Finished successfully; `output` is stored.
    Completed,
    /// Finished with an error; `error` is stored.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Pending,
        RunStatus::Leased,
        RunStatus::Waiting,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    /// The exact string stored in the database and sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Leased => "leased",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// `completed`, `failed` or `cancelled`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// `pending` or `leased` (upstream's "active"; a `waiting` run is neither active nor
    /// terminal: "unfinished" is `!is_terminal()`).
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Pending | RunStatus::Leased)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| {
                Error::Validation(format!(
                    "Invalid status: '{text}'. Valid values: pending, leased, completed, failed, cancelled"
                ))
            })
    }
}

/// The last progress a job reported with `step.progress(current, total, message)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done so far.
    #[serde(deserialize_with = "lenient_count")]
    pub current: u64,
    /// Units in total, when known.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_optional_count"
    )]
    pub total: Option<u64>,
    /// A human-readable note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Upstream stores any JS number; read fractional or negative ones without failing.
fn lenient_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = f64::deserialize(deserializer)?;
    Ok(if number.is_finite() && number > 0.0 {
        number as u64
    } else {
        0
    })
}

fn lenient_optional_count<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let number = Option::<f64>::deserialize(deserializer)?;
    Ok(number.map(|n| {
        if n.is_finite() && n > 0.0 {
            n as u64
        } else {
            0
        }
    }))
}

/// Whether a run's priority is the default (0), which its JSON leaves out.
fn is_default_priority(priority: &i32) -> bool {
    *priority == 0
}

/// A run as stored. `I` and `O` are the job's input and output types; the untyped form
/// (`Run`, i.e. `Run<Value, Value>`) is what tools and the HTTP layer use.
///
/// Serializes to the upstream JSON shape (camelCase keys, upstream key order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run<I = Value, O = Value> {
    /// Monotonic ULID.
    pub id: String,
    /// The job this run executes.
    pub job_name: String,
    /// The validated input.
    pub input: I,
    /// Lifecycle state.
    pub status: RunStatus,
    /// Idempotency key given at trigger time.
    pub idempotency_key: Option<String>,
    /// Concurrency key given at trigger time.
    pub concurrency_key: Option<String>,
    /// Step index bookkeeping (upstream semantics; see `completed_step_count` for an exact count).
    pub current_step_index: i64,
    /// Number of completed steps persisted for this run.
    pub completed_step_count: i64,
    /// Last reported progress.
    pub progress: Option<Progress>,
    /// The job's output, once completed.
    pub output: Option<O>,
    /// The error message, once failed.
    pub error: Option<String>,
    /// Labels given at trigger time.
    pub labels: Labels,
    /// Worker holding the lease while `leased`.
    pub lease_owner: Option<String>,
    /// When the current lease expires.
    pub lease_expires_at: Option<Timestamp>,
    /// Fencing token: incremented on every claim.
    pub lease_generation: i64,
    /// The durable wait the run was last suspended on (never cleared: a resumed or finished
    /// run still names its last wait).
    #[serde(default)]
    pub waiting_on_wait_id: Option<String>,
    /// The claim priority given at trigger time: higher first, 0 by default (see
    /// [`TriggerOptions::priority`]). Serialized only when not 0, so an ordinary run keeps
    /// upstream's JSON shape.
    #[serde(default, skip_serializing_if = "is_default_priority")]
    pub priority: i32,
    /// The run that invoked this one as a child run ([`crate::StepContext::invoke`]); `None`
    /// for a run triggered otherwise. Serialized only when set, so other runs keep upstream's
    /// JSON shape. Stored in durably's own column `rs_parent_run_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// The parent's durable wait (`children:<name>`) that this child's end resolves once all
    /// the children of its invoke have ended (durably's own column `rs_parent_wait_id`).
    /// Serialized only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_wait_id: Option<String>,
    /// The trace context of the trigger, as a W3C `traceparent` value (durably's own column
    /// `rs_trace_context`, [`NewRun::trace_context`](crate::store::NewRun::trace_context)):
    /// each execution's `durably.run` span continues that trace (feature `otel`). `None` for a
    /// run triggered without the feature, outside a trace, or by the TypeScript runtime.
    /// Serialized only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<String>,
    /// First claim time.
    pub started_at: Option<Timestamp>,
    /// When the run reached a terminal state.
    pub completed_at: Option<Timestamp>,
    /// Trigger time.
    pub created_at: Timestamp,
    /// Last write time.
    pub updated_at: Timestamp,
}

impl Run {
    /// Converts an untyped run into one with the job's input and output types.
    pub fn into_typed<I: DeserializeOwned, O: DeserializeOwned>(self) -> Result<Run<I, O>> {
        let id = self.id.clone();
        let input = serde_json::from_value(self.input).map_err(|e| {
            Error::Validation(format!(
                "Stored input of run {id} does not match the job's input type: {e}"
            ))
        })?;
        let output = match self.output {
            None | Some(Value::Null) => None,
            Some(value) => Some(serde_json::from_value(value).map_err(|e| {
                Error::Validation(format!(
                    "Stored output of run {id} does not match the job's output type: {e}"
                ))
            })?),
        };
        Ok(Run {
            id: self.id,
            job_name: self.job_name,
            input,
            status: self.status,
            idempotency_key: self.idempotency_key,
            concurrency_key: self.concurrency_key,
            current_step_index: self.current_step_index,
            completed_step_count: self.completed_step_count,
            progress: self.progress,
            output,
            error: self.error,
            labels: self.labels,
            lease_owner: self.lease_owner,
            lease_expires_at: self.lease_expires_at,
            lease_generation: self.lease_generation,
            waiting_on_wait_id: self.waiting_on_wait_id,
            priority: self.priority,
            parent_run_id: self.parent_run_id,
            parent_wait_id: self.parent_wait_id,
            trace_context: self.trace_context,
            started_at: self.started_at,
            completed_at: self.completed_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

impl<I, O> Run<I, O> {
    /// `true` once the run is completed, failed or cancelled.
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// Filter for listing runs. Empty fields do not filter; runs come newest first
/// (`created_at DESC, id DESC`).
///
/// ```
/// use durably::{RunFilter, RunStatus};
/// let filter = RunFilter::new()
///     .status(RunStatus::Pending)
///     .job_name("send-email")
///     .label("tenant", "acme")
///     .limit(20);
/// assert_eq!(filter.statuses, vec![RunStatus::Pending]);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct RunFilter {
    /// Any of these statuses (none = all).
    pub statuses: Vec<RunStatus>,
    /// Any of these job names (none = all).
    pub job_names: Vec<String>,
    /// Every one of these labels must match exactly.
    pub labels: Labels,
    /// At most this many runs.
    pub limit: Option<u64>,
    /// Skip this many runs first (works with or without `limit`).
    pub offset: Option<u64>,
    /// Only the child runs of this parent run ([`Run::parent_run_id`]).
    pub parent_run_id: Option<String>,
    /// Only runs whose id starts with this text (durably's addition; the dashboard's run-id
    /// search). Empty matches every run.
    pub id_prefix: Option<String>,
    /// Only runs created at or after this instant (`created_at >= created_since`; durably's
    /// addition, the dashboard's time range).
    pub created_since: Option<Timestamp>,
    /// Only runs created strictly before this instant (`created_at < created_before`; durably's
    /// addition). With [`RunFilter::created_since`] a half-open range: adjacent ranges share
    /// no run.
    pub created_before: Option<Timestamp>,
}

impl RunFilter {
    /// A filter that matches every run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a status to match.
    pub fn status(mut self, status: RunStatus) -> Self {
        self.statuses.push(status);
        self
    }

    /// Matches any of `statuses` (replaces those added before; none matches every status).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = RunStatus>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// Adds a job name to match.
    pub fn job_name(mut self, name: impl Into<String>) -> Self {
        self.job_names.push(name.into());
        self
    }

    /// Matches any of `names` (replaces those added before; none matches every job).
    pub fn job_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.job_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Requires a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Requires every one of `labels` (replaces those added before).
    pub fn labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    /// Limits the number of runs returned.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Skips runs before returning.
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Only runs whose id starts with `prefix` ([`RunFilter::id_prefix`]).
    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = Some(prefix.into());
        self
    }

    /// Only runs created at or after `since` ([`RunFilter::created_since`]).
    pub fn created_since(mut self, since: Timestamp) -> Self {
        self.created_since = Some(since);
        self
    }

    /// Only runs created strictly before `before` ([`RunFilter::created_before`]).
    pub fn created_before(mut self, before: Timestamp) -> Self {
        self.created_before = Some(before);
        self
    }

    /// Only the child runs of `run_id` ([`Run::parent_run_id`]).
    pub fn parent_run_id(mut self, run_id: impl Into<String>) -> Self {
        self.parent_run_id = Some(run_id.into());
        self
    }
}

/// The state of a persisted step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StepStatus {
    /// The step finished; its output replays on every later execution.
    Completed,
    /// The step's function returned an error.
    Failed,
    /// The step was interrupted by cancellation.
    Cancelled,
}

impl StepStatus {
    /// The exact string stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the stored string.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "completed" => Some(StepStatus::Completed),
            "failed" => Some(StepStatus::Failed),
            "cancelled" => Some(StepStatus::Cancelled),
            _ => None,
        }
    }
}

/// A persisted step of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// ULID.
    pub id: String,
    /// The run this step belongs to.
    pub run_id: String,
    /// The step's name (its identity within the run).
    pub name: String,
    /// Step index at execution time.
    pub index: i64,
    /// Outcome.
    pub status: StepStatus,
    /// JSON output of a completed step.
    pub output: Option<Value>,
    /// Error message of a failed step.
    pub error: Option<String>,
    /// When the step's function started.
    pub started_at: Timestamp,
    /// When the step row was written.
    pub completed_at: Option<Timestamp>,
}

/// Severity of a log entry written with `step.log()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogLevel {
    /// Informational.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something went wrong.
    Error,
}

impl LogLevel {
    /// The exact string stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// Parses the stored string.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "info" => Some(LogLevel::Info),
            "warn" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }
}

/// A persisted log entry of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Log {
    /// ULID.
    pub id: String,
    /// The run that wrote it.
    pub run_id: String,
    /// The step executing when it was written, if any.
    pub step_name: Option<String>,
    /// Severity.
    pub level: LogLevel,
    /// The message.
    pub message: String,
    /// Structured data attached to the entry.
    pub data: Option<Value>,
    /// When it was written.
    pub created_at: Timestamp,
}

/// How a trigger was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Disposition {
    /// A new run was created.
    Created,
    /// A run with the same job and idempotency key already existed; it is returned unchanged.
    Idempotent,
    /// A run with the same job and concurrency key was reused because a [`Coalesce`] mode was
    /// asked: a pending one, or with [`Coalesce::Active`] a running or waiting one.
    Coalesced,
    /// A delayed run of the same job and debounce key had not started yet
    /// ([`TriggerOptions::debounce`]): it takes this trigger's input and its start moves back.
    Debounced,
}

impl Disposition {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Created => "created",
            Disposition::Idempotent => "idempotent",
            Disposition::Coalesced => "coalesced",
            Disposition::Debounced => "debounced",
        }
    }
}

/// How a keyed trigger reuses a run of the same job and concurrency key instead of creating
/// one (upstream v4 §7). Every mode needs a concurrency key; idempotency keys win over all of
/// them.
///
/// | existing runs of the job and key | no coalesce | `Skip` / `Queue` | `Active` |
/// |---|---|---|---|
/// | none, or only ended ones | created | created | created |
/// | pending | conflict | coalesced (the pending run) | coalesced (the pending run) |
/// | leased (unexpired lease) only | created | created | coalesced (the leased run) |
/// | leased and pending | conflict | coalesced (the pending run) | coalesced (the pending run) |
/// | waiting only | created | created | coalesced (the waiting run) |
/// | leased with an expired lease only | created | created | created |
///
/// ```
/// use durably::Coalesce;
/// assert_eq!("active".parse::<Coalesce>().unwrap(), Coalesce::Active);
/// assert_eq!(Coalesce::Queue.as_str(), "queue");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Coalesce {
    /// Return the oldest pending run of the job and key instead of failing with a conflict.
    Skip,
    /// The same as [`Coalesce::Skip`] (upstream's alias): at most one run queues behind a
    /// running one, later triggers coalesce onto it.
    Queue,
    /// Reuse the run of the job and key that is pending, else running (an unexpired lease),
    /// else waiting, oldest first; create a run only when there is none.
    Active,
}

impl Coalesce {
    /// The wire string (`skip`, `queue`, `active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Coalesce::Skip => "skip",
            Coalesce::Queue => "queue",
            Coalesce::Active => "active",
        }
    }
}

impl FromStr for Coalesce {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "skip" => Ok(Coalesce::Skip),
            "queue" => Ok(Coalesce::Queue),
            "active" => Ok(Coalesce::Active),
            other => Err(Error::Validation(format!(
                "Invalid coalesce value: '{other}'. Valid values: 'skip', 'queue', 'active'"
            ))),
        }
    }
}

/// Options of a trigger.
///
/// ```
/// use durably::TriggerOptions;
/// let options = TriggerOptions::new()
///     .idempotency_key("order-42")
///     .concurrency_key("customer-7")
///     .label("tenant", "acme");
/// assert_eq!(options.idempotency_key.as_deref(), Some("order-42"));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct TriggerOptions {
    /// A second trigger with the same job and key returns the first run (`idempotent`).
    pub idempotency_key: Option<String>,
    /// At most one pending run per job and key; at most one leased run per key across jobs.
    pub concurrency_key: Option<String>,
    /// Labels stored with the run.
    pub labels: Option<Labels>,
    /// Which existing run of the job and concurrency key to reuse (requires a concurrency key).
    pub coalesce: Option<Coalesce>,
    /// A delayed run: not started before this time. Until then the run is `waiting` on a
    /// durable wait named `delay` (no lease, no slot); signalling that wait starts it at once.
    /// A time not in the future starts the run as usual. Not with `coalesce`.
    pub start_at: Option<Timestamp>,
    /// Debounces triggers of this job by a key (see [`Debounce`]). Not with `start_at` or
    /// `coalesce`.
    pub debounce: Option<Debounce>,
    /// The claim priority: workers claim runs of higher priority first, and the oldest
    /// first within a priority (see [`priority`](Self::priority)). 0 by default.
    pub priority: i32,
}

/// Debouncing: a run starts `period` after the *last* trigger of its job and key, with the
/// input of that trigger. A trigger with the same job and key while the run has not started
/// yet replaces its input and moves its start to `period` from now (disposition
/// [`Disposition::Debounced`]), but never beyond `max_wait` after the first trigger. Once the
/// run has started, the next trigger creates a new debounced run.
///
/// ```
/// use std::time::Duration;
/// use durably::{Debounce, TriggerOptions};
/// // Re-index a document 5 s after its last edit, at most 1 min after its first.
/// let options = TriggerOptions::new().debounce(
///     Debounce::new("doc-42", Duration::from_secs(5)).max_wait(Duration::from_secs(60)),
/// );
/// # let _ = options;
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Debounce {
    /// The key triggers are debounced by (with the job's name).
    pub key: String,
    /// How long after the last trigger the run starts.
    pub period: std::time::Duration,
    /// The latest start, counted from the first trigger (`None`: no bound).
    pub max_wait: Option<std::time::Duration>,
}

impl Debounce {
    /// Debounces by `key`, starting `period` after the last trigger.
    pub fn new(key: impl Into<String>, period: std::time::Duration) -> Self {
        Debounce {
            key: key.into(),
            period,
            max_wait: None,
        }
    }

    /// Sets [`max_wait`](Self::max_wait).
    pub fn max_wait(mut self, max_wait: std::time::Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }
}

impl TriggerOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the concurrency key.
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels
            .get_or_insert_with(Labels::new)
            .insert(key.into(), value.into());
        self
    }

    /// Replaces all labels.
    pub fn labels(mut self, labels: Labels) -> Self {
        self.labels = Some(labels);
        self
    }

    /// Sets the coalesce mode.
    pub fn coalesce(mut self, coalesce: Coalesce) -> Self {
        self.coalesce = Some(coalesce);
        self
    }

    /// Starts the run no earlier than `start_at` (see [`start_at`](Self::start_at)).
    pub fn start_at(mut self, start_at: Timestamp) -> Self {
        self.start_at = Some(start_at);
        self
    }

    /// Starts the run no earlier than `delay` from now.
    ///
    /// ```
    /// use std::time::Duration;
    /// use durably::TriggerOptions;
    /// let options = TriggerOptions::new().delay(Duration::from_secs(3600));
    /// assert!(options.start_at.is_some());
    /// ```
    pub fn delay(self, delay: std::time::Duration) -> Self {
        self.start_at(Timestamp::now() + delay)
    }

    /// Sets [`debounce`](Self::debounce).
    pub fn debounce(mut self, debounce: Debounce) -> Self {
        self.debounce = Some(debounce);
        self
    }

    /// Claims this run before every claimable run of lower priority (0 is the default;
    /// negative values run after it). Within a priority, the oldest run goes first. A
    /// priority never preempts a running run, and never lets a run past a busy concurrency
    /// key: among the runs of one key, the highest priority starts when the key frees up.
    ///
    /// ```
    /// use durably::TriggerOptions;
    /// let urgent = TriggerOptions::new().priority(10);
    /// let background = TriggerOptions::new().priority(-10);
    /// assert!(urgent.priority > background.priority);
    /// ```
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
}

/// The result of a trigger: the run plus how the trigger was resolved.
/// Serializes flat, as upstream: all run fields plus `disposition`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TriggerResult<I = Value, O = Value> {
    /// The created, idempotent or coalesced run.
    #[serde(flatten)]
    pub run: Run<I, O>,
    /// How the trigger was resolved.
    pub disposition: Disposition,
}

/// The result of `trigger_and_wait`: the run id, its output and the trigger's disposition.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TriggerAndWaitResult<O = Value> {
    /// The run that was waited for.
    pub id: String,
    /// Its output.
    pub output: Option<O>,
    /// How the trigger was resolved.
    pub disposition: Disposition,
}
