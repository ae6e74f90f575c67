//! The worker, as the facade shows it: start and stop the background worker, or process runs
//! one at a time (serverless). The work itself is the engine's (`src/engine/`).

use std::time::Duration;

use crate::durably::Durably;
use crate::error::Result;
use crate::time::new_id;

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
        self.inner.engine.start(worker_id.into());
    }

    /// `true` while the background worker runs.
    pub fn is_running(&self) -> bool {
        self.inner.engine.is_running()
    }

    /// Stops the worker gracefully: no new claims; waits for in-flight runs (they are not
    /// cancelled) and any running maintenance. Returns at once if the worker is not running.
    /// [`stop_within`](Self::stop_within) bounds the wait.
    pub async fn stop(&self) {
        self.inner.engine.stop(None).await;
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
        self.inner.engine.stop(Some(grace)).await
    }

    /// Claims and executes one run; `false` when nothing was claimable. No maintenance.
    pub async fn process_one(&self, worker_id: Option<&str>) -> Result<bool> {
        self.inner.engine.process_one(worker_id).await
    }

    /// Processes runs one after another until none is claimable or `max_runs` were processed;
    /// runs idle maintenance once if it stopped because the queue was idle. Returns the number
    /// of runs processed.
    pub async fn process_until_idle(
        &self,
        worker_id: Option<&str>,
        max_runs: Option<usize>,
    ) -> Result<usize> {
        self.inner
            .engine
            .process_until_idle(worker_id, max_runs)
            .await
    }

    /// Idle maintenance: return expired leases to pending (failing those whose job+key already
    /// has a pending run), fire due schedules, finish the children sweep (unsignalled waits,
    /// cancel cascades cut short), apply `retain_runs` (at most once a minute, 100 runs a
    /// time), and checkpoint SQLite's WAL (at most once a minute; 30 s after one that found the
    /// database busy). Errors become `worker:error` events.
    ///
    /// Called directly (and by [`Durably::process_until_idle`](crate::Durably::process_until_idle)) it always sweeps expired leases;
    /// the background worker sweeps at most once per lease period, so an idle worker costs the
    /// database about one claim query per polling interval.
    pub async fn run_idle_maintenance(&self) {
        self.inner
            .engine
            .maintain(crate::engine::Pass::Requested)
            .await;
    }
}
