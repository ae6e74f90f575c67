//! Durable waits inside a job function: [`StepContext::prepare_wait`] and
//! [`StepContext::wait_for`] (upstream v4 §4.1-4.2), and the suspension request that the
//! engine hands off when the job function has returned (§3.2, `src/engine/execute.rs`).

use std::sync::atomic::Ordering;

use super::{DurableWait, NewWait, WaitResult};
use crate::error::{Error, Result};
use crate::runtime;
use crate::step::{StepContext, StepShared};
use crate::time::Timestamp;

/// A wait operation in progress: `step.run` refuses to start meanwhile; ends when dropped.
struct WaitOperation<'a>(&'a StepShared);

impl<'a> WaitOperation<'a> {
    /// Upstream's checks, in its order: the run must go on (cancelled, lease lost or
    /// suspended: that error), and be at a sequential boundary: no step function running and
    /// no other wait operation in progress.
    fn begin(shared: &'a StepShared) -> Result<Self> {
        if let Some(error) = shared.abort_error() {
            return Err(error);
        }
        shared.check_not_suspended()?;
        if shared.steps_in_flight() > 0 || shared.waits.in_progress.swap(true, Ordering::SeqCst) {
            return Err(Error::Validation(
                "Durable waits require a sequential job boundary, outside step callbacks".into(),
            ));
        }
        Ok(WaitOperation(shared))
    }
}

impl Drop for WaitOperation<'_> {
    fn drop(&mut self) {
        self.0.waits.in_progress.store(false, Ordering::SeqCst);
    }
}

impl StepContext {
    /// Prepares the durable wait `wait` of this run (a name, optional metadata and timeout)
    /// and returns it, with the id a signal addresses ([`crate::Durably::signal`],
    /// `POST /signal`). Preparing is durable and idempotent by name: when the run executes
    /// again (a replay after a resume, a crash or a restart) the same wait comes back, with
    /// the deadline fixed at its first preparation; the metadata and timeout given then are
    /// ignored. Give each wait of a run its own name (in a loop, e.g. `approval-{i}`).
    ///
    /// Only between steps: while a step function runs (e.g. in a [`StepContext::all`]) or
    /// another wait operation is in progress it is [`Error::Validation`]. Errors as for
    /// `step.run` when the run was cancelled or the lease lost, and [`Error::Validation`] for
    /// a blank name, a zero timeout or metadata that is not plain JSON.
    ///
    /// ```
    /// # async fn job(step: durably::StepContext) -> durably::Result<serde_json::Value> {
    /// use std::time::Duration;
    /// use durably::{NewWait, WaitResult};
    /// use serde_json::json;
    /// let wait = step
    ///     .prepare_wait(NewWait::new("approval").timeout(Duration::from_secs(24 * 3600)))
    ///     .await?;
    /// // Tell a person where to answer: the wait's id is what a signal names.
    /// let link = format!("/approve/{}", wait.id);
    /// step.run("ask", |_| async move { Ok(link) }).await?;
    /// match step.wait_for(&wait).await? {
    ///     WaitResult::Signal { payload } => Ok(payload),
    ///     WaitResult::Timeout => Ok(json!({"timedOut": true})),
    ///     _ => Ok(serde_json::Value::Null),
    /// }
    /// # }
    /// ```
    pub async fn prepare_wait(&self, wait: impl Into<NewWait>) -> Result<DurableWait> {
        let wait = wait.into();
        let shared = self.shared();
        let _operation = WaitOperation::begin(shared)?;
        wait.validate()?;
        shared.ensure_lease().await?;
        let sent = runtime::now();
        let prepared = shared
            .store
            .prepare_wait(&shared.fence, wait, Timestamp::now())
            .await?;
        match prepared {
            Some(prepared) => {
                shared.lease.confirmed(sent);
                shared.waits.prepared.store(true, Ordering::SeqCst);
                Ok(prepared)
            }
            None => Err(shared.error_for(shared.refused().await)),
        }
    }

    /// Waits for the durable wait `wait` (prepared by this run) to be resolved: by a signal,
    /// whose payload it returns, or by its deadline ([`WaitResult::Timeout`]).
    ///
    /// A wait that is already resolved returns at once. Otherwise this returns
    /// [`Error::Suspended`], which the job function should return (`?`): the run is then
    /// suspended (status `waiting`) without holding a lease, a worker slot or its
    /// concurrency key, and any worker resumes it once the wait is resolved, executing the job
    /// function again from the top with its completed steps replayed; this call then returns
    /// the result. Errors: [`Error::Validation`] for a wait of another run (or between steps,
    /// as [`StepContext::prepare_wait`]); [`Error::Conflict`] for a wait already closed or
    /// cancelled.
    pub async fn wait_for(&self, wait: &DurableWait) -> Result<WaitResult> {
        let shared = self.shared();
        let operation = WaitOperation::begin(shared)?;
        shared.ensure_lease().await?;
        let sent = runtime::now();
        let current = shared
            .store
            .wait_result(&shared.fence, &wait.id, Timestamp::now())
            .await?;
        let Some(current) = current else {
            return Err(shared.error_for(shared.refused().await));
        };
        shared.lease.confirmed(sent);
        if let Some(result) = current.result() {
            return Ok(result);
        }
        // Still pending: ask to be suspended. From now on every step operation of this
        // execution refuses to start (upstream's rule).
        tracing::debug!(wait_id = %current.id, "suspending on a pending wait");
        *crate::engine::lock(&shared.waits.suspended_until) = current.deadline_at;
        *crate::engine::lock(&shared.waits.suspended_on) = Some(current.id.clone());
        drop(operation);
        Err(Error::Suspended {
            run_id: shared.run_id.clone(),
            wait_id: current.id,
        })
    }

    /// Asks to be suspended on `wait` although it is already resolved (durably's own timers:
    /// a run retry whose delay passed before the failed execution could suspend). The run
    /// leaves this execution as for a pending wait and is claimable at once (the store's
    /// suspension accepts a resolved wait), so the next execution starts fresh.
    pub(crate) fn suspend_on_resolved(&self, wait: &DurableWait) -> Error {
        let shared = self.shared();
        *crate::engine::lock(&shared.waits.suspended_until) = wait.deadline_at;
        *crate::engine::lock(&shared.waits.suspended_on) = Some(wait.id.clone());
        Error::Suspended {
            run_id: shared.run_id.clone(),
            wait_id: wait.id.clone(),
        }
    }
}
