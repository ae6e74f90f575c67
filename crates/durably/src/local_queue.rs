//! The local queue ([`Tuning::local_queue`](crate::Tuning::local_queue)): a worker keeps more
//! claimed runs in progress than `max_concurrent_runs`, and at most `max_concurrent_runs` of
//! them execute job code at once.
//!
//! A run holds an execution permit while its job function runs and gives it back while it
//! waits for a completed step's checkpoint to become durable, so that another run executes
//! meanwhile and the checkpoints of many runs share one commit. After the commit the run
//! waits for a permit again before its job function goes on (first come, first served with
//! the runs starting). A step's result is still durable before the job continues: only the
//! waiting is shared.
//!
//! Without a local queue (the default) no permit exists: a run's slot is the limit, as
//! upstream's `maxConcurrentRuns`.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The execution permits of one worker: `max_concurrent_runs` of them.
pub(crate) type ExecutionPermits = Arc<Semaphore>;

/// One run's execution permit, when the worker has a local queue.
#[derive(Default)]
pub(crate) struct RunPermit {
    permits: Option<ExecutionPermits>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl RunPermit {
    /// A run's permit among `permits` (none: no local queue, nothing to wait for).
    pub(crate) fn among(permits: Option<ExecutionPermits>) -> Self {
        RunPermit {
            permits,
            held: Mutex::new(None),
        }
    }

    /// Waits for a permit, unless this run holds one (or the worker has no local queue).
    pub(crate) async fn enter(&self) {
        let Some(permits) = &self.permits else {
            return;
        };
        if self.held().is_some() {
            return;
        }
        // The semaphore is never closed; were it, the run would go on without a permit.
        if let Ok(permit) = permits.clone().acquire_owned().await {
            let mut held = self.held();
            if held.is_none() {
                *held = Some(permit);
            }
        }
    }

    /// Gives the permit back (the job function returned).
    pub(crate) fn leave(&self) {
        self.held().take();
    }

    /// Awaits `write` without the permit, then waits for one again if it held one.
    pub(crate) async fn parked<F: std::future::Future>(&self, write: F) -> F::Output {
        if self.permits.is_none() {
            return write.await;
        }
        let given_back = self.held().take().is_some();
        let output = write.await;
        if given_back {
            self.enter().await;
        }
        output
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
