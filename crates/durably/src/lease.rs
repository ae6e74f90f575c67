//! What a worker can prove about its lease on a run, by its own monotonic clock.
//!
//! A lease written by a claim or a renewal sent at instant `S` lasts until `S + lease_duration`:
//! the statement's `now` was taken before it was sent, and any other worker takes the run over
//! only once its own clock passes that time. So the worker may count its lease from the *send*
//! time of the claim or of its last successful renewal, never from when the reply arrived: a
//! reply can come back late (a paused VM, swap, a stalled network, a process stopped with
//! SIGSTOP), after the lease ran out and another worker took the run over.
//!
//! Before a step (and before a held run starts) the worker checks that the lease is still
//! provably valid with a [safety margin](LeaseClock::margin); if not, it renews the lease
//! first (a fenced write: refused when another worker owns the run now), so a frozen worker
//! that wakes up never runs the next step of a run completed elsewhere. What no check can
//! prevent is a freeze *between* the check and the step's first instruction; the margin
//! bounds how late that check may have been made.

use std::sync::Mutex;
use std::time::Duration;

use crate::runtime::Instant;

/// The safety margin of a lease: a fifth of its duration, at most 5 s (6 s would be a fifth of
/// the default 30 s lease). It covers the time between the check and the step's start, and a
/// difference between the clocks of the hosts sharing a database up to that size.
const MAX_MARGIN: Duration = Duration::from_secs(5);

/// The lease of one run held by this worker, as its monotonic clock knows it.
#[derive(Debug)]
pub(crate) struct LeaseClock {
    duration: Duration,
    times: Mutex<LeaseTimes>,
}

#[derive(Debug, Clone, Copy)]
struct LeaseTimes {
    /// Send time of the claim or of the last successful renewal: the lease lasts until this
    /// plus the lease duration.
    granted: Instant,
    /// Send time of the last fenced write that succeeded (the run was ours when it committed).
    confirmed: Instant,
}

impl LeaseClock {
    /// A lease granted by a claim sent at `claim_sent`, lasting `duration`.
    pub(crate) fn new(duration: Duration, claim_sent: Instant) -> Self {
        LeaseClock {
            duration,
            times: Mutex::new(LeaseTimes {
                granted: claim_sent,
                confirmed: claim_sent,
            }),
        }
    }

    fn times(&self) -> LeaseTimes {
        *self
            .times
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut LeaseTimes)) {
        change(
            &mut self
                .times
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    /// The lease's length at claim and at each renewal.
    pub(crate) fn duration(&self) -> Duration {
        self.duration
    }

    /// How long before its end a lease no longer counts as provably valid.
    pub(crate) fn margin(&self) -> Duration {
        (self.duration / 5).min(MAX_MARGIN)
    }

    /// A renewal sent at `sent` succeeded: the lease lasts until `sent + duration` (renewals
    /// answered out of order never shorten it).
    pub(crate) fn renewed(&self, sent: Instant) {
        self.update(|times| {
            times.granted = times.granted.max(sent);
            times.confirmed = times.confirmed.max(sent);
        });
    }

    /// A fenced write sent at `sent` succeeded: the run was this worker's when it committed.
    /// It does not lengthen the lease.
    pub(crate) fn confirmed(&self, sent: Instant) {
        self.update(|times| times.confirmed = times.confirmed.max(sent));
    }

    /// When the lease ends by this worker's clock (another worker may take the run over from
    /// then on).
    pub(crate) fn expires(&self) -> Instant {
        self.times().granted + self.duration
    }

    /// Whether the lease is provably this worker's at `now`, with the safety margin to spare.
    pub(crate) fn is_provably_valid(&self, now: Instant) -> bool {
        now + self.margin() < self.expires()
    }

    /// Whether a fenced write sent less than `window` before `now` succeeded.
    pub(crate) fn confirmed_within(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(self.times().confirmed) < window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_counts_from_the_send_time_not_from_the_reply() {
        let sent = Instant::now();
        let lease = LeaseClock::new(Duration::from_secs(10), sent);
        assert!(lease.is_provably_valid(sent));
        // A reply that arrives 9 s later is inside the margin (2 s): no longer provable.
        assert!(!lease.is_provably_valid(sent + Duration::from_secs(9)));
        assert!(lease.is_provably_valid(sent + Duration::from_millis(7_900)));
        // A write confirms ownership, but does not lengthen the lease.
        lease.confirmed(sent + Duration::from_secs(8));
        assert!(!lease.is_provably_valid(sent + Duration::from_secs(9)));
        assert!(lease.confirmed_within(sent + Duration::from_secs(8), Duration::from_millis(100)));
        // A renewal does, from its own send time; an older renewal answered later changes nothing.
        lease.renewed(sent + Duration::from_secs(5));
        lease.renewed(sent + Duration::from_secs(1));
        assert_eq!(lease.expires(), sent + Duration::from_secs(15));
        assert!(lease.is_provably_valid(sent + Duration::from_secs(12)));
        assert!(!lease.is_provably_valid(sent + Duration::from_secs(13)));
    }

    #[test]
    fn the_margin_is_a_fifth_of_the_lease_and_at_most_five_seconds() {
        let now = Instant::now();
        assert_eq!(
            LeaseClock::new(Duration::from_secs(1), now).margin(),
            Duration::from_millis(200)
        );
        assert_eq!(
            LeaseClock::new(Duration::from_secs(30), now).margin(),
            Duration::from_secs(5)
        );
    }
}
