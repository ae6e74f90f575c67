//! The expiry sweep of durable waits (upstream `expireDueWaits`, v4 §4.7): pending waits
//! whose deadline passed are resolved as timeouts, so the runs waiting on them can resume.
//!
//! The worker loop sweeps at most once per polling interval, busy or idle (a busy worker
//! still resumes timed-out runs on time), and `process_one` before every claim, as upstream's
//! `processOne` does. One sweep per engine at a time; a failure is a `worker:error` with
//! context `wait-expiry` and never stops a claim. The sweep emits no events.
//!
//! Timers: when this engine's worker loop suspends a run on a wait with a deadline (a durable
//! sleep, a wait with a timeout), it also sweeps at that deadline (rounded up to
//! [`TIMER_GRANULARITY_MS`]), and a sweep that resolves waits makes the next claim resume the
//! runs: such a run wakes up on time instead of up to a polling interval late. A run that
//! another process suspended (or that this process suspended before a restart) is resumed
//! within one polling interval after its deadline. Runs that never wait cost nothing: the
//! timers are only read under an uncontended lock at each turn of the loop.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Engine, lock};
use crate::runtime::{self, Instant};
use crate::time::Timestamp;

/// Waits resolved per store call; a full batch is followed by another at once.
const SWEEP_BATCH: u64 = 100;

/// Deadlines this close together share one sweep (a deadline is rounded up to a multiple of
/// this many milliseconds): many runs suspended at once do not make one sweep each.
pub(crate) const TIMER_GRANULARITY_MS: i64 = 5;

/// The deadlines at which the worker loop sweeps (milliseconds since the epoch, rounded up to
/// [`TIMER_GRANULARITY_MS`]), and a notice for the loop when an earlier one was added.
#[derive(Default)]
pub(super) struct Timers {
    deadlines: Mutex<BTreeSet<i64>>,
    changed: Notify,
}

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
                    self.store_failed(&error, "wait-expiry", None);
                    return;
                }
            }
        }
    }

    /// A run was suspended here on a wait with `deadline`: the worker loop (when it runs)
    /// sweeps at that time.
    pub(super) fn wake_at(&self, deadline: Timestamp) {
        if !self.is_running() {
            return;
        }
        let millis = deadline.as_millis();
        let rounded = millis.saturating_add(TIMER_GRANULARITY_MS - 1) / TIMER_GRANULARITY_MS
            * TIMER_GRANULARITY_MS;
        let mut deadlines = lock(&self.timers.deadlines);
        let earliest = deadlines.first().is_none_or(|first| rounded < *first);
        deadlines.insert(rounded);
        drop(deadlines);
        if earliest {
            self.timers.changed.notify_one();
        }
    }

    /// When the earliest timer fires, by the runtime's clock.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        let first = *lock(&self.timers.deadlines).first()?;
        let left = first.saturating_sub(Timestamp::now().as_millis()).max(0);
        Some(runtime::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0)))
    }

    /// Removes the timers that are due; `true` when any was (the loop sweeps now).
    pub(super) fn take_due_timers(&self) -> bool {
        let mut deadlines = lock(&self.timers.deadlines);
        let Some(first) = deadlines.first().copied() else {
            return false;
        };
        let now = Timestamp::now().as_millis();
        if first > now {
            return false;
        }
        *deadlines = deadlines.split_off(&(now + 1));
        true
    }

    /// Resolves when a timer earlier than every other was added (the loop recomputes its
    /// idle wait).
    pub(super) async fn timers_changed(&self) {
        self.timers.changed.notified().await;
    }
}
