//! Durable sleep: [`StepContext::sleep`] and [`StepContext::sleep_until`], a durable wait with
//! only a deadline (see `docs/time.md`), and the timer wait they are built on
//! ([`StepContext::timer_wait`], for any code that suspends a run until a deadline).
//!
//! A sleep named `n` is the wait `sleep:n` with metadata `{"durably": {"kind": "sleep"}}` and a
//! timeout of the sleep's duration: while it lasts the run is `waiting` without a lease, a
//! worker slot or its concurrency key; its deadline is fixed at the first preparation, so a
//! replay after it skips it (the wait is resolved as a timeout); a signal sent to the wait ends
//! it early.

use std::time::Duration;

use serde_json::{Value, json};

use super::{NewWait, WaitResult, WaitStatus};
use crate::error::Result;
use crate::step::StepContext;
use crate::time::Timestamp;

/// The prefix of a sleep's wait name: a sleep named `n` is the wait `sleep:n`.
pub const SLEEP_WAIT_PREFIX: &str = "sleep:";

/// The metadata of a sleep's wait, which tells dashboards and the CLI that a run is sleeping
/// (until the wait's deadline) rather than waiting for a signal.
pub fn sleep_metadata() -> Value {
    json!({ "durably": { "kind": "sleep" } })
}

/// A duration in whole milliseconds, rounded up (a timer never fires before its time).
fn ceil_millis(duration: Duration) -> u64 {
    let millis = duration.as_millis();
    let rounded = match duration.subsec_nanos() % 1_000_000 {
        0 => millis,
        _ => millis + 1,
    };
    u64::try_from(rounded).unwrap_or(u64::MAX)
}

impl StepContext {
    /// Sleeps durably for `duration`: the run is suspended (status `waiting`, no lease, no
    /// worker slot, no concurrency key) until then, and any worker resumes it afterwards,
    /// executing the job function again from the top with its completed steps replayed; this
    /// call then returns `Ok(())`. The returned [`crate::Error::Suspended`] must be passed on
    /// with `?`, as for [`StepContext::wait_for`].
    ///
    /// The sleep is the durable wait `sleep:{name}` (metadata `{"durably": {"kind": "sleep"}}`),
    /// prepared with a timeout of `duration` (rounded up to milliseconds): its deadline is
    /// fixed when it is first prepared, so a replay after it returns at once. Give each sleep
    /// of a run its own name (in a loop, e.g. `poll-{i}`). A zero duration returns at once
    /// without a wait.
    ///
    /// A signal sent to the sleep's wait ([`crate::Durably::signal`], `POST /signal`) ends it
    /// early; its payload is ignored. Wake-up: the worker that suspended the run resumes it at
    /// its deadline; any other worker within one polling interval after it.
    ///
    /// Errors as [`StepContext::prepare_wait`]: only between steps; [`crate::Error::Validation`]
    /// for a blank name or a duration above [`super::MAX_TIMEOUT_MS`] milliseconds.
    ///
    /// ```
    /// # async fn job(step: durably::StepContext) -> durably::Result<()> {
    /// use std::time::Duration;
    /// step.run("send-reminder", |_| async { Ok(()) }).await?;
    /// step.sleep("cool-down", Duration::from_secs(3600)).await?;
    /// step.run("send-follow-up", |_| async { Ok(()) }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sleep(&self, name: &str, duration: Duration) -> Result<()> {
        if duration.is_zero() {
            return Ok(());
        }
        self.timer_wait(
            format!("{SLEEP_WAIT_PREFIX}{name}"),
            duration,
            sleep_metadata(),
        )
        .await
        .map(|_| ())
    }

    /// Sleeps durably until `until` (by this process's clock when the sleep is first
    /// prepared): [`StepContext::sleep`] for the time left. A time already past returns at
    /// once without a wait (so does a replay once `until` has passed).
    pub async fn sleep_until(&self, name: &str, until: Timestamp) -> Result<()> {
        let left = until
            .as_millis()
            .saturating_sub(Timestamp::now().as_millis());
        match u64::try_from(left) {
            Ok(left) if left > 0 => self.sleep(name, Duration::from_millis(left)).await,
            _ => Ok(()),
        }
    }

    /// Suspends this run until a deadline: prepares the wait `name` with timeout `timeout` and
    /// `metadata` and waits for it, returning how it ended ([`WaitResult::Timeout`] at the
    /// deadline, [`WaitResult::Signal`] when signalled before). The building block of durable
    /// sleep and of anything else that must resume a run at a time (e.g. a retry's backoff):
    /// the run holds no slot meanwhile, the deadline is fixed at the first preparation, and a
    /// replay after it returns at once from the stored result (no second store call).
    ///
    /// `timeout` is rounded up to milliseconds and must be positive; errors and the
    /// [`crate::Error::Suspended`] to pass on with `?` as [`StepContext::wait_for`].
    pub(crate) async fn timer_wait(
        &self,
        name: String,
        timeout: Duration,
        metadata: Value,
    ) -> Result<WaitResult> {
        let wait = NewWait::new(name)
            .metadata(metadata)
            .timeout_ms(ceil_millis(timeout));
        let prepared = self.prepare_wait(wait).await?;
        if prepared.status == WaitStatus::Resolved
            && let Some(result) = prepared.result()
        {
            return Ok(result);
        }
        self.wait_for(&prepared).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_milliseconds() {
        assert_eq!(ceil_millis(Duration::from_millis(5)), 5);
        assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
        assert_eq!(ceil_millis(Duration::from_micros(1_001)), 2);
        assert_eq!(ceil_millis(Duration::MAX), u64::MAX);
    }
}
