//! The worker loop's claims while the store fails: exponential backoff, cut short by signs
//! that the store answers again.

use std::time::Duration;

use crate::runtime::{self, Instant};

/// Longest wait between retries after the store failed.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The worker loop's claims while the store fails: after the n-th failure in a row the next
/// claim waits 100 ms × 2ⁿ (at most [`MAX_BACKOFF`]), unless the store shows it answers again
/// first (a wake-up after a trigger's write, a notice from the database) or a slot ends (its
/// writes are over, and a slot is free): then the claim is retried at once, though never sooner
/// than [`EARLIEST_RETRY`] after the failure, so a stream of these while claims keep failing
/// costs at most one claim per that much.
#[derive(Default)]
pub(super) struct Backoff {
    /// Failed claims in a row.
    failures: u32,
    /// When the last claim failed (`None`: not failing).
    failed_at: Option<Instant>,
    /// Whether a sign that the store answers came since.
    answered: bool,
}

/// The shortest wait between two claims while claims fail.
const EARLIEST_RETRY: Duration = Duration::from_millis(100);

impl Backoff {
    /// Notes a failed claim; returns how long until the next one.
    pub(super) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.failed_at = Some(runtime::now());
        self.answered = false;
        self.wait()
    }

    fn wait(&self) -> Duration {
        let full = Duration::from_millis(100u64.saturating_mul(1u64 << self.failures.min(16)));
        match self.answered {
            true => EARLIEST_RETRY,
            false => full.min(MAX_BACKOFF),
        }
    }

    pub(super) fn is_failing(&self) -> bool {
        self.failed_at.is_some()
    }

    /// When the next claim may go out (`None`: at once, not failing).
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.failed_at.map(|at| at + self.wait())
    }

    pub(super) fn allows_claim(&self) -> bool {
        self.retry_at().is_none_or(|at| runtime::now() >= at)
    }

    /// Retry the claim as soon as allowed (the store answered, or a slot ended).
    pub(super) fn retry_soon(&mut self) {
        self.answered = true;
    }
}
