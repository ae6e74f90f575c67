//! [`MemoryStore`]: the whole store in one process's memory, for tests and simulation.

mod state;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::attempts::{AttemptStatus, RunFacts, StepAttempt, interruption_reason};
use crate::error::{Error, Result};
use crate::run::{
    Coalesce, Disposition, Log, Progress, Run, RunFilter, RunStatus, Step, StepStatus,
};
use crate::store::{
    AttemptStart, ClaimRequest, Enqueued, Fence, Finished, LEASE_EXPIRED_PENDING_EXISTS, NewLog,
    NewRun, NewStep, RunAdmin, RunPatch, SCHEMA_VERSION, Signalled, Store, Transition,
    pending_conflict, pending_run, resume_key_taken, resume_not_failed, resume_not_found,
    validate_label_key,
};
use crate::time::{Timestamp, new_id_at};
use crate::waits::{
    self, DurableWait, NewWait, SignalDisposition, SignalStep, WaitOutcome, WaitStatus,
    canonical_json,
};

/// A [`Store`] kept in memory: a fourth backend beside SQLite and PostgreSQL, passing the same
/// exported suites ([`contract`](crate::testing::contract) and
/// [`behaviour`](crate::testing::behaviour)).
///
/// Every operation takes one lock over the whole state and finishes before returning it, so
/// each is atomic (as a transaction is elsewhere) and none waits on anything. It starts no
/// thread, does no I/O and never reads the clock: every time it stores is the `now` its caller
/// passed, which makes it a store for a deterministic simulation of the engine as well as a fast
/// one for tests. Ids are ULIDs made from that `now`, as the SQLite store makes them.
///
/// Runs are claimed by priority, then oldest first (`created_at`, then insertion order), keys resolve as in
/// SQLite (idempotency, then the pending-per-key rule), and every lease holder's write lands
/// only while its [`Fence`] holds. It has no notification channel (workers poll; triggers in
/// the same process wake their worker directly) and no housekeeping of its own. Clones share
/// the state; so does [`Store::with_step_policy`]'s view. The state lives as long as a clone
/// does and is lost with the last one.
///
/// ```
/// use durably::testing::MemoryStore;
/// use durably::{Durably, Job, StepContext, TriggerOptions, WaitOptions};
///
/// # #[tokio::main]
/// # async fn main() -> durably::Result<()> {
/// let durably = Durably::builder().store(MemoryStore::new()).build()?;
/// let double = durably.register(Job::new("double", |step: StepContext, n: u64| async move {
///     let doubled = step.run("double", |_cancel| async move {
///         Ok(n * 2)
///     }).await?;
///     Ok(doubled)
/// }))?;
/// durably.init().await?;
///
/// let done = double
///     .trigger_and_wait(21, TriggerOptions::new(), WaitOptions::new())
///     .await?;
/// assert_eq!(done.output, Some(42));
/// durably.stop().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    preserve_steps: bool,
}

/// Everything the store holds.
#[derive(Default)]
struct State {
    migrated: bool,
    /// Runs by insertion sequence (the claim order's tie-break).
    runs: BTreeMap<u64, Run>,
    /// Run id → insertion sequence.
    ids: HashMap<String, u64>,
    next_seq: u64,
    /// Step rows by run id, in insertion order.
    steps: HashMap<String, Vec<Step>>,
    /// Log entries by run id, in insertion order (a log may name a run that does not exist,
    /// as in the SQL backends).
    logs: HashMap<String, Vec<Log>>,
    /// Step attempts by run id, in insertion order (`interruption_reason` computed on read).
    attempts: HashMap<String, Vec<StepAttempt>>,
    /// Durable waits by id (timing fields computed on read).
    waits: BTreeMap<String, DurableWait>,
    /// `durably_runs.resume_claimed_at` (internal, not on [`Run`]) by run id.
    resume_claimed_at: HashMap<String, Timestamp>,
    schedules: BTreeMap<String, crate::schedules::ScheduleRecord>,
}

impl State {
    /// The overview's counts: runs per status and the oldest pending run.
    fn count_rows(&self) -> crate::overview::OverviewRows {
        let mut rows = crate::overview::OverviewRows::default();
        let mut statuses: BTreeMap<&'static str, i64> = BTreeMap::new();
        for run in self.runs.values() {
            *statuses.entry(run.status.as_str()).or_default() += 1;
            if run.status == RunStatus::Pending
                && rows
                    .oldest_pending
                    .as_ref()
                    .is_none_or(|(id, _, at)| (run.created_at, &run.id) < (*at, id))
            {
                rows.oldest_pending = Some((run.id.clone(), run.job_name.clone(), run.created_at));
            }
        }
        rows.statuses = statuses
            .into_iter()
            .map(|(status, count)| (status.to_owned(), count))
            .collect();
        rows
    }
}

impl MemoryStore {
    /// An empty store with default options (runs that end drop their steps), not yet migrated.
    pub fn new() -> Self {
        Self::with_preserve_steps(false)
    }

    /// An empty store that keeps the step rows of runs that end (`true`) or drops them.
    pub fn with_preserve_steps(preserve_steps: bool) -> Self {
        MemoryStore {
            state: Arc::new(Mutex::new(State::default())),
            preserve_steps,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("MemoryStore");
        out.field("preserve_steps", &self.preserve_steps);
        // Never waits: formatting must not block on (or deadlock with) an operation.
        match self.state.try_lock() {
            Ok(state) => out.field("runs", &state.runs.len()),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                out.field("runs", &p.into_inner().runs.len())
            }
            Err(std::sync::TryLockError::WouldBlock) => out.field("runs", &"<busy>"),
        };
        out.finish()
    }
}

/// Whether the lease `fence` names is still held.
fn fenced(run: &Run, generation: i64) -> bool {
    run.status == RunStatus::Leased && run.lease_generation == generation
}

/// Whether `run` holds its lease at `now`.
fn unexpired_lease(run: &Run, now: Timestamp) -> bool {
    run.status == RunStatus::Leased && run.lease_expires_at.is_some_and(|at| at > now)
}

/// Whether `run`'s lease expired at `now`.
fn expired_lease(run: &Run, now: Timestamp) -> bool {
    run.status == RunStatus::Leased && run.lease_expires_at.is_some_and(|at| at <= now)
}

/// Resolves a pending wait as a timeout at its deadline.
fn time_out(wait: &mut DurableWait) {
    wait.status = WaitStatus::Resolved;
    wait.outcome = Some(WaitOutcome::Timeout);
    wait.resolved_at = wait.deadline_at;
}

/// Clears the lease of a run that ends at `now`.
fn end(run: &mut Run, status: RunStatus, now: Timestamp) {
    run.status = status;
    run.lease_owner = None;
    run.lease_expires_at = None;
    run.completed_at = Some(now);
    run.updated_at = now;
}
