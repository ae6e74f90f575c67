//! The storage seam: one [`Store`] trait owns all persistence.
//!
//! Operations are those of the domain (enqueue, claim, persist a step, renew, finish with a
//! [`Transition`], cancel, delete, purge, query), never SQL. Every write made by a lease holder takes a [`Fence`]
//! and is conditioned on `status = 'leased' AND lease_generation = <fence>` in the same statement,
//! so nothing a stale or crashed worker does can land after another worker took the run over.
//!
//! Backends: [`SqliteStore`] (feature `sqlite`, the default), `PostgresStore` (feature
//! `postgres`) and `LibsqlStore` (feature `libsql`: remote libSQL over HTTP, the SQLite
//! store's SQL). The behaviour suite in `tests/` runs against every backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::attempts::{NewAttempt, StepAttempt};
use crate::error::{Error, Result};
use crate::maintenance::MaintenanceTask;
use crate::overview::{Overview, OverviewWindow, RunCounts};
use crate::run::{
    Coalesce, Disposition, Labels, Log, LogLevel, Progress, Run, RunFilter, RunStatus, Step,
    StepStatus,
};
use crate::schedules::{ScheduleFiring, ScheduleRecord};
use crate::time::Timestamp;
use crate::waits::{DurableWait, NewWait, SignalDisposition};

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "libsql"))]
pub(crate) mod migrations;
pub(crate) mod schema;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;
// The SQLite dialect's statements, shared by the SQLite store and the libSQL store.
#[cfg(any(feature = "sqlite", feature = "libsql"))]
#[path = "sqlite/sql.rs"]
pub(crate) mod sqlite_sql;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PostgresOptions, PostgresStore};

#[cfg(feature = "libsql")]
#[cfg_attr(docsrs, doc(cfg(feature = "libsql")))]
pub mod libsql;
#[cfg(feature = "libsql")]
pub use libsql::{LibsqlOptions, LibsqlStore};

/// Group-commit counters of a store (`SqliteStore::stats`, `PostgresStore::stats`): how
/// many write transactions carried how many writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Write transactions committed (or attempted). On PostgreSQL: group-commit batches only
    /// (step writes and completions; other writes run on their own).
    pub transactions: u64,
    /// Write operations served; `operations / transactions` is the group-commit factor.
    pub operations: u64,
    /// PostgreSQL: statements that renewed leases (each carries the renewals sent while the
    /// one before executed). 0 elsewhere.
    pub lease_renewal_statements: u64,
    /// PostgreSQL: lease renewals those statements carried.
    pub lease_renewals: u64,
}

/// The upstream schema version this library migrates to (upstream's version 4: step attempts,
/// durable waits and their deadlines; durably's own additions are versioned separately, see
/// `docs/architecture.md`).
pub const SCHEMA_VERSION: i64 = 4;

/// A run to insert.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewRun {
    /// The job to run.
    pub job_name: String,
    /// The validated input.
    pub input: Value,
    /// Idempotency key (non-empty).
    pub idempotency_key: Option<String>,
    /// Concurrency key (non-empty).
    pub concurrency_key: Option<String>,
    /// Labels (keys already validated by [`validate_label_key`]).
    pub labels: Labels,
    /// Conflict resolution for the pending-per-key rule.
    pub coalesce: Option<Coalesce>,
    /// A delayed run: not claimable before this time. The run is inserted `waiting` on a new
    /// durable wait named `delay` whose deadline is this time (metadata `{"durably": {"kind":
    /// "delay"}}`), in the same transaction, so that every runtime sharing the database (the
    /// TypeScript one too) resumes it only once the wait is resolved: by its deadline, or
    /// earlier by a signal (an operator's "run now"). `None`, or a time not after `now`: an
    /// ordinary pending run. Never combined with `coalesce` (the caller refuses it).
    pub start_at: Option<Timestamp>,
    /// Debouncing (then `start_at` is the trigger's time plus the period): when a run of the
    /// job with this key is still waiting on its `delay` wait, that run takes this request's
    /// input and its wait's deadline moves to `start_at`, but not beyond its first trigger's
    /// `max_wait` ([`Disposition::Debounced`]); otherwise a delayed run is created whose
    /// `delay` wait's metadata carries the key and that bound ([`debounce_metadata`]). Atomic
    /// against concurrent triggers with the same job and key.
    pub debounce: Option<crate::run::Debounce>,
    /// The claim priority (higher first, 0 by default): claims order claimable runs by
    /// priority, then by age. Stored in durably's own nullable column `rs_priority` (NULL for
    /// 0), which the TypeScript runtime does not read.
    pub priority: i32,
    /// The parent of a child run ([`crate::StepContext::invoke`]), stored in durably's own
    /// nullable column `rs_parent_run_id` ([`Run::parent_run_id`]).
    pub parent_run_id: Option<String>,
    /// The parent's wait that the child's end resolves, stored in `rs_parent_wait_id`
    /// ([`Run::parent_wait_id`]).
    pub parent_wait_id: Option<String>,
    /// The trace context of the code that triggered the run, as a W3C `traceparent` value
    /// (`00-<trace id>-<span id>-<flags>`), stored in durably's own nullable column
    /// `rs_trace_context` ([`Run::trace_context`]): every execution of the run continues that
    /// trace (feature `otel`, docs/observability.md). `None` without the feature or without a
    /// sampled trace; the store keeps it as given and never reads it.
    pub trace_context: Option<String>,
}

/// The outcome of [`Store::enqueue`].
#[derive(Clone, Debug, PartialEq)]
pub struct Enqueued {
    /// The created, idempotent or coalesced run.
    pub run: Run,
    /// How the request was resolved.
    pub disposition: Disposition,
}

/// The lease a worker holds on a run: the fencing token for every write it makes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The leased run.
    pub run_id: String,
    /// The `lease_generation` the worker claimed.
    pub generation: i64,
    /// The run's concurrency key, which the lease holds: when the run ends, the key is free
    /// for the next run waiting for it (a backend may skip that work for a run without one).
    pub concurrency_key: Option<String>,
    /// Whether the run may have pending durable waits: when it completes or fails they are
    /// closed ([`Store::finish_run`]). The engine sets it for a run that was suspended before
    /// or prepared a wait in this execution; a backend may skip that work when it is `false`
    /// (the statements that end most runs then never touch the waits table).
    pub may_have_waits: bool,
}

impl Fence {
    /// The fence of a freshly claimed run.
    pub fn of(run: &Run) -> Self {
        Fence {
            run_id: run.id.clone(),
            generation: run.lease_generation,
            concurrency_key: run.concurrency_key.clone(),
            may_have_waits: run.waiting_on_wait_id.is_some(),
        }
    }
}

/// How a lease holder ends a run ([`Store::finish_run`]). Shaped to grow: a run that retries
/// later, sleeps until a time or waits for a signal will be further transitions that leave the
/// run for later instead of ending it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Transition {
    /// The job returned: the run is `completed` with this output (`None` stores no output).
    Complete {
        /// The job's output.
        output: Option<Value>,
    },
    /// The job failed: the run is `failed` with this error message.
    Fail {
        /// The message stored as the run's error.
        error: String,
    },
    /// The job awaits a pending durable wait (upstream's `suspendRun`, v4 §3.2 step 4): the
    /// run becomes `waiting` on `wait_id`, gives up its lease (owner and expiry cleared, the
    /// generation kept, so every later write of this execution is refused) and with it its
    /// worker slot and concurrency key. Lands only while the fence holds *and* the lease has
    /// not expired at `now`. The wait must be this run's and `pending` or `resolved`, else
    /// [`Error::Conflict`] `Wait is not available for this run` and nothing is written; a
    /// pending wait already past its deadline is first resolved as a timeout (the run is then
    /// claimable at once). The wait's `suspended_at` is set by the first suspension only. The
    /// run is not ending: its steps and logs stay.
    Wait {
        /// The wait the run waits for (`waiting_on_wait_id`).
        wait_id: String,
    },
}

impl Transition {
    /// The run status this transition leads to.
    pub fn status(&self) -> RunStatus {
        match self {
            Transition::Complete { .. } => RunStatus::Completed,
            Transition::Fail { .. } => RunStatus::Failed,
            Transition::Wait { .. } => RunStatus::Waiting,
        }
    }
}

/// What [`Store::signal_wait`] did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Signalled {
    /// The wait as it now stands.
    pub wait: DurableWait,
    /// Whether this signal resolved it or had already.
    pub disposition: SignalDisposition,
}

/// What [`Store::finish_run`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Finished {
    /// Whether the transition landed (`false`: the fence no longer held, nothing was written).
    pub landed: bool,
    /// The runs claimed in the same write (see [`Store::finish_run`]'s `then_claim`).
    pub claimed: Vec<Run>,
}

/// A step row to persist.
#[derive(Clone, Debug, PartialEq)]
pub struct NewStep {
    /// Step name.
    pub name: String,
    /// Step index.
    pub index: i64,
    /// Outcome.
    pub status: StepStatus,
    /// Output of a completed step.
    pub output: Option<Value>,
    /// Error of a failed or cancelled step.
    pub error: Option<String>,
    /// When the step's function started.
    pub started_at: Timestamp,
    /// The attempt this write records the outcome of (`None`: no attempt record, as for a
    /// step written by an older caller).
    pub attempt: Option<NewAttempt>,
}

/// The `started` record of a step attempt whose function is still running
/// ([`Store::begin_step_attempt`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AttemptStart {
    /// The attempt's id.
    pub id: String,
    /// The step's name.
    pub step_name: String,
    /// The step's index.
    pub step_index: i64,
    /// The attempt's metadata.
    pub metadata: Option<Value>,
    /// When the function started.
    pub started_at: Timestamp,
}

impl AttemptStart {
    /// The start of attempt `id` of step `step_name` at `step_index`.
    pub fn new(id: String, step_name: String, step_index: i64, started_at: Timestamp) -> Self {
        AttemptStart {
            id,
            step_name,
            step_index,
            metadata: None,
            started_at,
        }
    }
}

/// A log entry to persist.
#[derive(Clone, Debug, PartialEq)]
pub struct NewLog {
    /// The run writing it.
    pub run_id: String,
    /// The step executing, if any.
    pub step_name: Option<String>,
    /// Severity.
    pub level: LogLevel,
    /// Message.
    pub message: String,
    /// Structured data.
    pub data: Option<Value>,
}

/// A wake-up pushed by a backend that can announce changes made by any process
/// (PostgreSQL `LISTEN/NOTIFY`). See [`Store::notifications`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreNotice {
    /// Runs may have become claimable: a trigger, a released lease or a freed concurrency key
    /// (also sent after the notification channel reconnected, since notices may have been missed).
    RunsAvailable,
    /// A durable wait was resolved (a signal, a deadline) in some process: a waiting run may
    /// be ready to resume (also sent after the notification channel reconnected).
    WaitsResolved,
    /// A run was cancelled (possibly by another process): a worker executing it fires its token.
    RunCancelled {
        /// The cancelled run.
        run_id: String,
    },
    /// The backend lost its connection during an operation and is retrying it (the worker
    /// reports it as `worker:error` with context `storage`).
    StorageFault {
        /// The store operation that failed, e.g. `persist_step`.
        operation: String,
        /// What went wrong.
        error: String,
    },
}

/// An unfenced partial update of a run, for operators' tools and tests that fabricate states
/// (expire a lease, reset a run to pending). Workers never use it ([`RunAdmin::update_run`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunPatch {
    /// New status.
    pub status: Option<RunStatus>,
    /// New lease owner (`Some(None)` clears).
    pub lease_owner: Option<Option<String>>,
    /// New lease expiry (`Some(None)` clears).
    pub lease_expires_at: Option<Option<Timestamp>>,
    /// New progress (`Some(None)` clears).
    pub progress: Option<Option<Progress>>,
    /// New error (`Some(None)` clears).
    pub error: Option<Option<String>>,
    /// New completion time (`Some(None)` clears).
    pub completed_at: Option<Option<Timestamp>>,
    /// New input (stored as given).
    pub input: Option<Value>,
}

/// A claim made in the same round trip as another write (see [`Store::finish_run`] and
/// [`Store::enqueue_and_claim`]): the claiming worker, the lease to take, and how many runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The worker id written as lease owner.
    pub worker_id: String,
    /// Lease length from the write's `now`.
    pub lease: Duration,
    /// The most runs to claim.
    pub max: usize,
    /// Whether to also resume `waiting` runs whose wait is resolved, as [`Store::claim`]
    /// does. Without it only pending runs and expired leases are claimed, and the statement
    /// never touches the waits table: the engine asks for it when a wait may have been
    /// resolved since its last look (a signal, a notice, the poll), not on every hand-off.
    pub resume_waiting: bool,
}

impl ClaimRequest {
    /// A claim of up to `max` runs for `worker_id`, leased for `lease`, resuming waiting runs
    /// whose wait is resolved (as upstream's claim does).
    pub fn new(worker_id: impl Into<String>, lease: Duration, max: usize) -> Self {
        ClaimRequest {
            worker_id: worker_id.into(),
            lease,
            max,
            resume_waiting: true,
        }
    }
}

/// Operators' writes that bypass the lease protocol ([`Store::admin`]): tools that repair a
/// database by hand, and tests that fabricate states. The engine never calls them.
#[async_trait]
pub trait RunAdmin: Send + Sync {
    /// Unfenced partial update. `false` if the run does not exist.
    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool>;
}

/// All persistence of durably. Implementations must be safe to share between tasks and
/// processes: the database is the source of truth.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short backend name (`sqlite`, `postgres`, `libsql`) for reports.
    fn backend(&self) -> &'static str;

    /// Creates the schema if needed. Idempotent and safe when called concurrently.
    async fn migrate(&self) -> Result<()>;

    /// The highest applied schema version (0 before `migrate`).
    async fn schema_version(&self) -> Result<i64>;

    /// Inserts a pending run, resolving idempotency and concurrency keys (upstream §5.5 and
    /// v4 §7.1), in this order: an existing run with the same job and idempotency key wins
    /// (`idempotent`, whatever its status); then label keys are validated; then, with
    /// [`Coalesce::Active`], the oldest pending run of the same job and concurrency key, else the
    /// oldest leased one whose lease expires after `now`, else the oldest waiting one, is
    /// returned unchanged (`coalesced`). Otherwise a pending run is inserted (`created`) unless
    /// the job and key already have one: that one is returned (`coalesced`) with any
    /// [`Coalesce`] mode, and [`Error::Conflict`] is returned without one. The decision is taken
    /// atomically: concurrent enqueues never leave two pending runs of a job and key, nor create
    /// a run an `Active` enqueue would have reused.
    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued>;

    /// [`Store::enqueue`], then, if that created a run, [`Store::claim`] of up to `next.max`
    /// runs with the same `now`: a trigger handed to the worker loop starts the oldest
    /// claimable run (usually the new one) without a second commit. Returns the enqueue's
    /// result and the runs claimed. An idempotent or coalesced enqueue claims nothing, and a
    /// rejected one fails with nothing written.
    ///
    /// The default makes the two calls one after the other and reports a failed claim as
    /// nothing claimed (the worker looks again at its next poll); a backend may do both in one
    /// transaction.
    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(Enqueued, Vec<Run>)> {
        let enqueued = self.enqueue(run, now).await?;
        if next.max == 0 || enqueued.disposition != Disposition::Created {
            return Ok((enqueued, Vec::new()));
        }
        let claimed = match self.claim(next, now).await {
            Ok(runs) => runs,
            Err(error) => {
                tracing::warn!(%error, "claim after enqueue failed");
                Vec::new()
            }
        };
        Ok((enqueued, claimed))
    }

    /// Enqueues every run in one transaction, in order, each seeing the ones before it.
    /// All or nothing: one conflict rolls the whole batch back.
    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>>;

    /// One run by id.
    async fn get_run(&self, id: &str) -> Result<Option<Run>>;

    /// Runs matching `filter`, newest first (`created_at DESC, id DESC`). The cost of the query
    /// grows linearly with the number of label filters (callers bound them: [`crate::Limits`]).
    /// Dropping the returned future cancels the query in the database.
    async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;

    /// [`Store::get_runs`] for a caller that will not wait longer than `timeout` (the HTTP API):
    /// after it, the query is cancelled in the database and the call fails with
    /// [`Error::Timeout`]. The default drops [`Store::get_runs`]'s future after `timeout`; a
    /// backend may also bound the query on the server (PostgreSQL: `statement_timeout`).
    async fn get_runs_within(&self, filter: &RunFilter, timeout: Duration) -> Result<Vec<Run>> {
        match crate::runtime::timeout(timeout, self.get_runs(filter)).await {
            Some(runs) => runs,
            None => Err(read_timeout("get_runs", timeout)),
        }
    }

    /// How the queues are doing at `now` ([`crate::overview`]): runs per status over all time
    /// and the oldest pending run (cheap: both through the status indexes), and for `window`
    /// the runs that completed or failed per bucket and per job, with each job's queue latency
    /// (creation, or the end of a delayed run's delay, to first start) and run duration (first
    /// start to end) at the 50th and 95th percentiles. Counts are exact; the percentiles are
    /// computed in Rust from the newest [`crate::overview::OVERVIEW_SAMPLE`] runs that ended in
    /// the window, read by one bounded query (no backend needs a percentile function).
    /// Read-only.
    async fn run_overview(&self, now: Timestamp, window: OverviewWindow) -> Result<Overview>;

    /// Runs per status and the oldest pending run at `now`: the two cheap reads of
    /// [`Store::run_overview`] only (through the status indexes), for gauges read at every
    /// metrics scrape. The default takes them from a whole overview; the backends of this
    /// crate read only these.
    async fn run_counts(&self, now: Timestamp) -> Result<RunCounts> {
        let overview = self.run_overview(now, OverviewWindow::LastHour).await?;
        Ok(RunCounts::from(&overview))
    }

    /// Steps of a run ordered by index.
    async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>>;

    /// The completed step of a run with this name, if any.
    async fn get_completed_step(&self, run_id: &str, name: &str) -> Result<Option<Step>>;

    /// Logs of a run in the order they were written.
    async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>>;

    /// Claims up to `max` runs for `worker_id`, oldest first (by creation): pending runs,
    /// `waiting` runs whose wait (`waiting_on_wait_id`) is resolved, and runs whose lease
    /// expired, skipping any run whose concurrency key is held by another unexpired lease.
    /// Each claim increments `lease_generation` and sets the lease to `now + lease`. Resuming a
    /// waiting run also records, at the database's time, when it was first claimed after its
    /// suspension (kept by later reclaims), and gives its resolved wait that time as
    /// `first_resumed_at` unless it has one.
    async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> Result<Vec<Run>>;

    /// Extends a lease that is still held and unexpired; returns the new expiry, or `None` if
    /// the lease is lost.
    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>>;

    /// Gives back a run this worker claimed but has not started: back to `pending` with its
    /// lease cleared, if the fence still holds and no other run of its job and concurrency key
    /// is pending (the pending-per-key index allows one). `false` when nothing changed.
    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool>;

    /// Persists a step row if the fence still holds (a completed step also advances the run's
    /// step counters). `None` means the lease is lost and nothing was written.
    ///
    /// With [`NewStep::attempt`], the same transaction records the attempt's outcome
    /// (`completed` for a completed step, `failed` otherwise): it inserts the whole attempt, or,
    /// when the attempt was begun, finalizes its `started` row; a begun attempt that is no
    /// longer `started` under this generation refuses the whole write (`None`).
    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>>;

    /// Records that a step's function started (a `started` attempt under the fence's
    /// generation), only while the fence holds and the lease has not expired at `now`.
    /// `false`: nothing written. The step's write ([`Store::persist_step`] with
    /// [`NewStep::attempt`] marked begun) later records its outcome.
    async fn begin_step_attempt(
        &self,
        fence: &Fence,
        attempt: AttemptStart,
        now: Timestamp,
    ) -> Result<bool>;

    /// Replaces the metadata of a `started` attempt (no merge), only while the fence holds,
    /// the lease has not expired at `now` and the attempt is still `started` under the fence's
    /// generation. `false`: nothing written.
    async fn set_step_attempt_metadata(
        &self,
        fence: &Fence,
        attempt_id: &str,
        metadata: Option<Value>,
        now: Timestamp,
    ) -> Result<bool>;

    /// The step attempts of a run, oldest first (`started_at`, then id), each with its
    /// interruption reason as the run stands now; empty for an unknown run.
    async fn get_step_attempts(&self, run_id: &str) -> Result<Vec<StepAttempt>>;

    /// Prepares the durable wait `wait.name` of the fenced run (upstream `prepareWait`, v4
    /// §4.1), in one transaction: only while the fence holds and the lease has not expired at
    /// `now` (`None` otherwise, nothing written). A wait of that run and name that already
    /// exists is returned unchanged (a replay: same id, same deadline; the metadata and
    /// timeout given now are ignored). Otherwise a `pending` wait is inserted, created at the
    /// database's time, its deadline that time plus [`NewWait::timeout_ms`] (fixed from then
    /// on), its metadata stored as canonical JSON ([`crate::waits::canonical_json`]).
    /// [`Error::Validation`] for a blank name, a bad timeout or a deadline beyond the date
    /// range ([`NewWait::validate`]).
    async fn prepare_wait(
        &self,
        fence: &Fence,
        wait: NewWait,
        now: Timestamp,
    ) -> Result<Option<DurableWait>>;

    /// The wait `wait_id` as the fenced run awaits it (upstream `getWaitResultForRun`, v4
    /// §4.2), in one transaction guarded like [`Store::prepare_wait`] (`None`: the lease does
    /// not hold). A pending wait whose deadline has passed (database time) is resolved as a
    /// timeout first. Returns it `resolved` ([`DurableWait::result`] is what the job gets) or
    /// still `pending` (the run should suspend: [`Transition::Wait`]). Errors, nothing
    /// written: [`Error::Validation`] `Wait does not belong to this run` for an unknown wait or
    /// another run's; [`Error::Conflict`] `Wait is already closed: <id>` for a cancelled or
    /// closed one.
    async fn wait_result(
        &self,
        fence: &Fence,
        wait_id: &str,
        now: Timestamp,
    ) -> Result<Option<DurableWait>>;

    /// Signals the wait `wait_id` (upstream `signalWaitDetailed`, v4 §4.3), unfenced (any
    /// process), in one transaction that locks the run before the wait, deciding in upstream's
    /// order: [`Error::Validation`] `signalId must be non-empty`; [`Error::NotFound`] `Wait not
    /// found: <id>`; the same signal id with an identical canonical payload that already
    /// resolved it → [`SignalDisposition::Duplicate`], unchanged (even after the deadline, a
    /// cancel or the run's end); a wait resolved by its deadline → [`Error::WaitExpired`]; a
    /// wait that is not pending, or whose run ended → [`Error::Conflict`] `Wait cannot accept
    /// this signal: <id>`; at or after its deadline (database time) the wait is resolved as a
    /// timeout, that is **committed**, then [`Error::WaitExpired`]; otherwise the wait is
    /// resolved with the canonical payload and the signal id at the database's time
    /// ([`SignalDisposition::Accepted`]). A signal wins only strictly before the deadline. It
    /// does not wake a worker by itself: the next claim takes the run.
    async fn signal_wait(
        &self,
        wait_id: &str,
        payload: Value,
        signal_id: &str,
        now: Timestamp,
    ) -> Result<Signalled>;

    /// Resolves as timeouts up to `limit` pending waits whose deadline has passed (upstream
    /// `expireDueWaits`, v4 §4.7), earliest deadline first, each in its own transaction that
    /// locks its run first and checks again with a fresh database time; waits of runs that are
    /// missing or ended are skipped. Also expires prepared waits no run is suspended on.
    /// Returns how many were resolved. The SQL backends compare deadlines with the database's
    /// clock; `now` is the clock of a backend without one (`durably::testing::MemoryStore`, feature `testing`).
    async fn expire_due_waits(&self, now: Timestamp, limit: u64) -> Result<u64>;

    /// One wait by id (`None` when unknown).
    async fn get_wait(&self, wait_id: &str) -> Result<Option<DurableWait>>;

    /// The waits of a run in `created_at`, then id, order (empty for an unknown run).
    async fn get_waits(&self, run_id: &str) -> Result<Vec<DurableWait>>;

    /// Whether the children of the parent's wait `parent_wait_id` (the child runs of
    /// `parent_run_id` whose [`Run::parent_wait_id`] it is; see [`crate::StepContext::invoke`])
    /// are settled: one of them failed or was cancelled, or none is pending, leased or
    /// waiting. Read-only. The default reads the parent's children through
    /// [`Store::get_runs`]; the SQL backends answer from an index of the children by wait and
    /// status, in time independent of the number of children.
    async fn children_settled(&self, parent_run_id: &str, parent_wait_id: &str) -> Result<bool> {
        let children = self
            .get_runs(&RunFilter::new().parent_run_id(parent_run_id))
            .await?;
        Ok(children_settled(
            children
                .iter()
                .filter(|run| run.parent_wait_id.as_deref() == Some(parent_wait_id))
                .map(|run| run.status),
        ))
    }

    /// Up to `limit` ids of pending waits named `children:*` ([`CHILDREN_WAIT_PREFIX`]) on
    /// which their run has been suspended (`suspended_at` set, so its children exist) and whose
    /// children are settled ([`Store::children_settled`]): the waits a crash left unsignalled
    /// between a child's end and the signal. Read-only; the engine's maintenance signals them.
    /// The default finds none (a backend without the query relies on the children's ends).
    async fn settled_children_waits(&self, limit: u64) -> Result<Vec<String>> {
        let _ = limit;
        Ok(Vec::new())
    }

    /// Up to `limit` ids of unfinished children (pending, leased or waiting) whose parent run
    /// was cancelled at or after `cancelled_since` (its `completed_at`; the engine passes the
    /// epoch on its first look, then a time shortly before its previous look) and which are
    /// cancelled with it: the wait of their invoke
    /// ([`Run::parent_wait_id`]) is gone or its metadata does not say `"cancelWithParent":
    /// false` (see [`crate::children`]). These are the cascades a crash cut short, or that a
    /// cancel made by the TypeScript runtime never started. Oldest first; read-only, the
    /// engine's maintenance cancels them. The default finds none (a backend without the query
    /// relies on the cancelling process).
    async fn children_to_cancel(
        &self,
        cancelled_since: Timestamp,
        limit: u64,
    ) -> Result<Vec<String>> {
        let _ = (cancelled_since, limit);
        Ok(Vec::new())
    }

    /// Stores progress (or clears it with `None`) if the fence still holds.
    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool>;

    /// Appends a log entry. With a fence, only while the lease is held.
    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>>;

    /// Applies `transition` to a leased run if the fence still holds (`landed: false`, nothing
    /// written, otherwise). A run that completes drops its step rows in the same transaction
    /// unless the store preserves them ([`Store::preserves_steps`]); a run that fails keeps
    /// them whatever the policy, so that [`Store::resume_run`] can replay its completed steps
    /// (they go when the run is resumed and then ends, deleted or purged); a completion also frees the run's
    /// concurrency key ([`Fence::concurrency_key`]) for the next run waiting for it. A run that
    /// completes or fails closes its pending waits (`closed`, resolved at `now`) when
    /// [`Fence::may_have_waits`] says it may have some. [`Transition::Wait`] suspends the run instead (see there; it may fail with
    /// [`Error::Conflict`]).
    ///
    /// With `then_claim`, the same write also claims up to `max` runs ([`Store::claim`] with
    /// the same `now`, resuming waiting runs only with [`ClaimRequest::resume_waiting`]), so a worker hands the slot of a finished run straight to the next one.
    /// The worker takes fewer runs than `max` as "nothing else was claimable": it claims again
    /// only when woken (a trigger, a [`StoreNotice`], its poll). A backend whose claim here may
    /// leave claimable runs behind sends [`StoreNotice::RunsAvailable`]. A backend may claim in
    /// a second call after the transition (a failed claim is then reported as nothing claimed).
    async fn finish_run(
        &self,
        fence: &Fence,
        transition: Transition,
        now: Timestamp,
        then_claim: Option<&ClaimRequest>,
    ) -> Result<Finished>;

    /// Cancels a pending, leased or waiting run; `false` if it is missing or already terminal.
    /// Any process may cancel (unfenced); its step rows go unless the store preserves them. Its
    /// pending waits become `cancelled` (resolved at `now`) in the same transaction; resolved
    /// waits keep their result.
    async fn cancel_run(&self, id: &str, now: Timestamp) -> Result<bool>;

    /// Resumes a failed run (an operator's write, unfenced, like [`Store::cancel_run`]): in one
    /// transaction the run goes back to `pending` under its own id, its error, `completed_at`
    /// and lease owner and expiry cleared. Its `lease_generation` is kept (the next claim
    /// increments it, so a worker still holding a fence from before the failure stays fenced
    /// out), and so are `started_at` (when the run first started), its progress, labels and
    /// the wait it last waited on. Its step rows stay: a failed run keeps them (see
    /// [`Store::finish_run`]), so the next execution replays the completed steps instead of
    /// executing them. Its waits that its failure `closed` go back to `pending` (resolved time
    /// cleared) so the replay's `wait_for` waits again; one whose deadline passed meanwhile is
    /// then expired as usual ([`Store::expire_due_waits`], or at once when the run suspends on
    /// it). A backend with a wake-up channel announces the pending run
    /// ([`StoreNotice::RunsAvailable`]).
    ///
    /// Returns the run as it now stands. Errors: [`Error::NotFound`] for an unknown id;
    /// [`Error::Conflict`] when the run is not `failed` (naming its status), or when it has a
    /// concurrency key and its job already has a pending run with that key (one pending run per
    /// job and key); nothing is written then.
    async fn resume_run(&self, id: &str, now: Timestamp) -> Result<Run>;

    /// Deletes a terminal run with its step attempts, waits, steps, logs and labels; `false` if
    /// it is missing or not terminal.
    async fn delete_run(&self, id: &str) -> Result<bool>;

    /// Deletes up to `limit` terminal runs completed before `older_than` (oldest first), with
    /// their step attempts, waits, steps, logs and labels. Returns how many were deleted.
    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64>;

    /// Returns expired leases to `pending`, or fails them (error
    /// `Lease expired; pending run already exists`) when their job+key already has a pending
    /// run or an older expired lease that goes back instead (the pending-per-key index allows
    /// one). The step rows of the runs failed here go unless the store preserves them (unlike a
    /// failure through [`Store::finish_run`]; resuming such a run executes it from the start). Runs that have ever
    /// prepared a durable wait are left alone (v4 §3.4): they stay leased until a claim takes
    /// them. Returns the runs changed, with their new state.
    async fn release_expired_leases(&self, now: Timestamp) -> Result<Vec<Run>>;

    /// Whether step rows outlive the run they belong to (upstream's `preserveSteps`), a policy
    /// set when the store is built (`SqliteOptions::preserve_steps`,
    /// `PostgresOptions::preserve_steps`). `false`: a run that completes or is cancelled loses
    /// its steps' outputs (a failed run keeps them for [`Store::resume_run`]).
    fn preserves_steps(&self) -> bool;

    /// This store with the other step policy, sharing its connections (for instances of one
    /// process that differ only in it). `None` (the default): the backend offers no such view;
    /// set the policy where the store is built.
    fn with_step_policy(&self, preserve_steps: bool) -> Option<Arc<dyn Store>> {
        let _ = preserve_steps;
        None
    }

    /// Operators' unfenced writes, for a backend that offers them (`None` by default).
    fn admin(&self) -> Option<&dyn RunAdmin> {
        None
    }

    /// The backend's own housekeeping, which an idle worker runs beside its own maintenance
    /// (SQLite: truncating the write-ahead log). None by default.
    fn maintenance_tasks(&self) -> Vec<Arc<dyn MaintenanceTask>> {
        Vec::new()
    }

    /// Wake-ups announced by any process sharing the database, for idle workers: `None` when the
    /// backend has no such channel (SQLite: workers poll, and triggers in the same process wake
    /// the worker directly). Each call returns a new receiver; notices may be coalesced or, after
    /// a reconnect, replaced by one [`StoreNotice::RunsAvailable`], so they are hints, never the
    /// source of truth.
    fn notifications(&self) -> Option<tokio::sync::broadcast::Receiver<StoreNotice>> {
        None
    }

    /// Whether the backend keeps cron schedules (`durably_rs_schedules`; see
    /// [`crate::schedules`]). `false` by default: the schedule operations below then fail with
    /// [`Error::Config`], and workers on the store do not look for due slots.
    fn keeps_schedules(&self) -> bool {
        false
    }

    /// Creates the schedule `record`, or replaces the definition of the one of that name (job,
    /// cron, time zone, input, labels, catch-up), keeping its `paused`, `last_fired_at` and
    /// `created_at`, and its `next_fire_at` unless the cron expression or the time zone changed
    /// (then `record.next_fire_at`). Returns the schedule as stored.
    async fn upsert_schedule(
        &self,
        record: ScheduleRecord,
        now: Timestamp,
    ) -> Result<ScheduleRecord> {
        let _ = (record, now);
        Err(no_schedules(self.backend()))
    }

    /// One schedule by name.
    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRecord>> {
        let _ = name;
        Err(no_schedules(self.backend()))
    }

    /// Every schedule, by name.
    async fn list_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        Err(no_schedules(self.backend()))
    }

    /// Up to `limit` schedules that are not paused and whose `next_fire_at` is at or before
    /// `now`, earliest first.
    async fn due_schedules(&self, now: Timestamp, limit: u64) -> Result<Vec<ScheduleRecord>> {
        let _ = (now, limit);
        Err(no_schedules(self.backend()))
    }

    /// Pauses a schedule (`None` when unknown); pausing a paused one changes nothing.
    async fn pause_schedule(&self, name: &str, now: Timestamp) -> Result<Option<ScheduleRecord>> {
        let _ = (name, now);
        Err(no_schedules(self.backend()))
    }

    /// Resumes a paused schedule with `next_fire_at` as its next slot (`None` when unknown); a
    /// schedule that is not paused is returned unchanged.
    async fn resume_schedule(
        &self,
        name: &str,
        next_fire_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<ScheduleRecord>> {
        let _ = (name, next_fire_at, now);
        Err(no_schedules(self.backend()))
    }

    /// Deletes a schedule (never its runs); `false` when unknown.
    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let _ = name;
        Err(no_schedules(self.backend()))
    }

    /// Fires slots of a schedule, in one transaction: only if the schedule exists, is not
    /// paused and its `next_fire_at` is still exactly [`ScheduleFiring::expected`], moves it to
    /// [`ScheduleFiring::next`] (and `last_fired_at` to [`ScheduleFiring::last_fired`] when
    /// given) and enqueues [`ScheduleFiring::runs`] in order as [`Store::enqueue_many`] does
    /// (each run's idempotency key makes a slot's second run impossible even if the schedule
    /// was reset). `None`: the compare-and-set failed (another process fired these slots, or the
    /// schedule was paused, changed or deleted) and nothing was written. A run the enqueue
    /// rejects rolls the whole firing back.
    async fn fire_schedule(
        &self,
        firing: ScheduleFiring,
        now: Timestamp,
    ) -> Result<Option<Vec<Enqueued>>> {
        let _ = (firing, now);
        Err(no_schedules(self.backend()))
    }
}

/// The [`Error::Config`] of a schedule operation on a backend that keeps none.
fn no_schedules(backend: &str) -> Error {
    Error::Config(format!(
        "the {backend} store keeps no schedules: use the SQLite, PostgreSQL or memory store for \
         cron schedules"
    ))
}

/// The [`Error::Timeout`] of a read that a caller bounded (see [`Store::get_runs_within`]).
pub fn read_timeout(operation: &str, timeout: Duration) -> Error {
    Error::Timeout(format!(
        "{operation} was cancelled after {} ms, the time allowed to one read: narrow the query \
         (a status, a jobName or fewer label filters) or allow reads longer",
        timeout.as_millis()
    ))
}

/// Upstream's label-key rule: `^[a-zA-Z0-9\-_./]+$`.
pub fn validate_label_key(key: &str) -> Result<()> {
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if valid {
        Ok(())
    } else {
        Err(Error::Validation(format!(
            "Invalid label key \"{key}\": must contain only alphanumeric characters, dashes, underscores, dots, and slashes"
        )))
    }
}

#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "libsql",
    feature = "testing"
))]
/// The conflict error for a second pending run with the same job and concurrency key.
pub(crate) fn pending_conflict(job_name: &str, key: &str) -> Error {
    Error::Conflict(format!(
        "A pending run already exists for concurrency key \"{key}\" in job \"{job_name}\". Use coalesce: 'skip', 'queue', or 'active' to return the existing run instead."
    ))
}

#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "libsql",
    feature = "testing"
))]
/// The [`Error::NotFound`] of [`Store::resume_run`] for an unknown run.
pub(crate) fn resume_not_found(id: &str) -> Error {
    Error::NotFound(format!(
        "Run \"{id}\" not found: there is nothing to resume (check the run id; a deleted or purged run cannot be resumed)"
    ))
}

#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "libsql",
    feature = "testing"
))]
/// The [`Error::Conflict`] of [`Store::resume_run`] for a run that is not `failed`.
pub(crate) fn resume_not_failed(id: &str, status: RunStatus) -> Error {
    Error::Conflict(format!(
        "Run \"{id}\" is {status}, not failed: only a failed run can be resumed (retrigger it to start a new run instead)",
        status = status.as_str()
    ))
}

#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "libsql",
    feature = "testing"
))]
/// The [`Error::Conflict`] of [`Store::resume_run`] when the run's job and concurrency key
/// already have a pending run.
pub(crate) fn resume_key_taken(id: &str, job_name: &str, key: &str) -> Error {
    Error::Conflict(format!(
        "Run \"{id}\" cannot be resumed: job \"{job_name}\" already has a pending run with concurrency key \"{key}\" (one pending run per key); resume it once that run has started"
    ))
}

/// The order in which claims take claimable runs: higher [`Run::priority`] first, then older
/// (`created_at`), then by id.
pub fn claim_order(a: &Run, b: &Run) -> std::cmp::Ordering {
    (std::cmp::Reverse(a.priority), a.created_at, &a.id).cmp(&(
        std::cmp::Reverse(b.priority),
        b.created_at,
        &b.id,
    ))
}

#[cfg(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "libsql",
    feature = "testing"
))]
/// The row a newly created run starts as: `request` stored under `id` at `now`.
pub(crate) fn pending_run(id: String, request: &NewRun, now: Timestamp) -> Run {
    Run {
        id,
        job_name: request.job_name.clone(),
        input: request.input.clone(),
        status: RunStatus::Pending,
        idempotency_key: request.idempotency_key.clone(),
        concurrency_key: request.concurrency_key.clone(),
        current_step_index: 0,
        completed_step_count: 0,
        progress: None,
        output: None,
        error: None,
        labels: request.labels.clone(),
        lease_owner: None,
        lease_expires_at: None,
        lease_generation: 0,
        waiting_on_wait_id: None,
        priority: request.priority,
        parent_run_id: request.parent_run_id.clone(),
        parent_wait_id: request.parent_wait_id.clone(),
        trace_context: request.trace_context.clone(),
        started_at: None,
        completed_at: None,
        created_at: now,
        updated_at: now,
    }
}

/// The prefix of the wait on which a parent waits for the children of one invoke: an invoke
/// named `n` waits on `children:n` ([`crate::StepContext::invoke`]).
pub const CHILDREN_WAIT_PREFIX: &str = "children:";

/// Whether children with these statuses are settled: one failed or was cancelled, or none is
/// pending, leased or waiting (see [`Store::children_settled`]).
pub fn children_settled(statuses: impl IntoIterator<Item = RunStatus>) -> bool {
    let mut unfinished = false;
    for status in statuses {
        match status {
            RunStatus::Failed | RunStatus::Cancelled => return true,
            RunStatus::Completed => {}
            _ => unfinished = true,
        }
    }
    !unfinished
}

/// The name of a delayed run's wait ([`NewRun::start_at`]).
pub const DELAY_WAIT: &str = "delay";

/// The metadata of a delayed run's wait: `{"durably": {"kind": "delay"}}`.
pub fn delay_metadata() -> Value {
    serde_json::json!({ "durably": { "kind": "delay" } })
}

/// The metadata of a debounced run's `delay` wait: the key, and the latest start in
/// milliseconds since the epoch (`null`: none).
pub fn debounce_metadata(key: &str, not_after: Option<Timestamp>) -> Value {
    serde_json::json!({ "durably": { "kind": "delay", "debounce": {
        "key": key,
        "notAfter": not_after.map(Timestamp::as_millis),
    } } })
}

/// The new start of a debounced run whose `delay` wait has `metadata`, for a trigger asking
/// for `wanted`: `wanted`, but not after the wait's `notAfter`.
pub(crate) fn debounced_start(metadata: Option<&Value>, wanted: Timestamp) -> Timestamp {
    let not_after = metadata
        .and_then(|m| m["durably"]["debounce"]["notAfter"].as_i64())
        .map(Timestamp::from_millis);
    match not_after {
        Some(bound) if bound < wanted => bound,
        _ => wanted,
    }
}

/// The metadata of a new delayed run's wait: a debounced one's, or the plain one.
pub(crate) fn new_delay_metadata(request: &NewRun, now: Timestamp) -> Value {
    match &request.debounce {
        Some(debounce) => debounce_metadata(
            &debounce.key,
            debounce.max_wait.map(|max_wait| now + max_wait),
        ),
        None => delay_metadata(),
    }
}

/// `run` (just inserted) as a delayed run waiting on `wait_id`.
pub(crate) fn delayed_run(run: Run, wait_id: String) -> Run {
    Run {
        status: RunStatus::Waiting,
        waiting_on_wait_id: Some(wait_id),
        ..run
    }
}

/// Error text stored when an expired lease cannot return to pending.
pub(crate) const LEASE_EXPIRED_PENDING_EXISTS: &str = "Lease expired; pending run already exists";

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "libsql"))]
/// Parses stored labels JSON leniently (upstream may store non-string values).
pub(crate) fn parse_labels(text: &str) -> Labels {
    match serde_json::from_str::<serde_json::Map<String, Value>>(text) {
        Ok(map) => map
            .into_iter()
            .map(|(key, value)| {
                let value = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (key, value)
            })
            .collect(),
        Err(_) => Labels::new(),
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "libsql"))]
/// Parses an optional JSON column: NULL, empty text or JSON `null` reads as `None`.
pub(crate) fn parse_optional_json(text: Option<String>) -> Option<Value> {
    match text {
        Some(text) if !text.is_empty() => match serde_json::from_str(&text) {
            Ok(Value::Null) | Err(_) => None,
            Ok(value) => Some(value),
        },
        _ => None,
    }
}
