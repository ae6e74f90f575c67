//! The expiry sweep of durable waits (upstream `expireDueWaits`, v4 §4.7): pending waits
//! whose deadline passed are resolved as timeouts, so the runs waiting on them can resume.
//!
//! The worker loop sweeps at most once per polling interval, busy or idle (a busy worker
//! still resumes timed-out runs on time), and `process_one` before every claim, as upstream's
//! `processOne` does. One sweep per engine at a time; a failure is a `worker:error` with
//! context `wait-expiry` and never stops a claim. The sweep emits no events.

use super::Engine;
use crate::time::Timestamp;

/// Waits resolved per store call; a full batch is followed by another at once.
const SWEEP_BATCH: u64 = 100;

impl Engine {
    /// Resolves every overdue wait as a timeout; when any was, the next claim resumes
    /// waiting runs (and an idle worker wakes for it).
    pub(super) async fn expire_due_waits(&self) {
        // Concurrent callers share the sweep in flight.
        let Ok(_sweeping) = self.sweeping.try_lock() else {
            return;
        };
        loop {
            match self
                .store
                .expire_due_waits(Timestamp::now(), SWEEP_BATCH)
                .await
            {
                Ok(resolved) => {
                    if resolved > 0 {
                        tracing::debug!(resolved, "durable waits timed out");
                        self.resume_waiting_runs();
                    }
                    if resolved < SWEEP_BATCH {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "the expiry sweep of durable waits failed");
                    self.worker_error(error.to_string(), "wait-expiry", None);
                    return;
                }
            }
        }
    }
}
