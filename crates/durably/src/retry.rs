//! Retries with backoff: a [`RetryPolicy`] (how many attempts, how they are spaced) and the
//! [`NonRetryable`] marker of an error that no further attempt can fix.
//!
//! A step given a policy ([`StepOptions::retry`](crate::StepOptions::retry)) through
//! [`StepContext::run_retrying`] is invoked again after a failed attempt, until one succeeds,
//! the attempts are used up, or an attempt fails with a [`NonRetryable`] error. Every attempt is
//! recorded ([`crate::attempts`]): a failed attempt is a `failed` step row of its own, so the
//! count survives a crash, a restart and a suspension. A delay up to
//! [`RetryPolicy::suspend_longer_than`] is waited in process; a longer one suspends the run on
//! a timer (a durable wait named `retry:<step>:<attempt>` with only a deadline): the run is
//! `waiting`, holds no lease, no slot and no concurrency key, and any worker resumes it once the
//! delay is over. An operator ends such a backoff early by signalling that wait.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::attempts::{Attempt, StepOptions};
use crate::error::{BoxError, Error, Result};
use crate::runtime;
use crate::step::StepContext;
use crate::waits::{NewWait, WaitResult};

/// How the delay between attempts grows.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// Every delay is the initial delay.
    Constant,
    /// The delay after attempt `n` is `n ×` the initial delay.
    Linear,
    /// The delay after attempt `n` is the initial delay `× factor^(n-1)`.
    Exponential {
        /// The growth factor, at least 1 (2 doubles every delay).
        factor: f64,
    },
}

/// How often a step is attempted and how long it waits between attempts.
///
/// ```
/// use std::time::Duration;
/// use durably::RetryPolicy;
/// // 5 attempts: waits of 1 s, 2 s, 4 s, 8 s between them (each up to 10 % shorter).
/// let policy = RetryPolicy::exponential(5, Duration::from_secs(1))
///     .max_delay(Duration::from_secs(60))
///     .jitter(0.1);
/// assert_eq!(policy.delay_after(3), Duration::from_secs(4));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// The delay after the first failed attempt.
    pub initial_delay: Duration,
    /// How the delay grows from one attempt to the next.
    pub backoff: Backoff,
    /// No delay is longer than this (default: one day).
    pub max_delay: Duration,
    /// A fraction in `0.0..=1.0`: each delay is shortened by up to this fraction at random,
    /// so that retries of many runs do not arrive together (default 0: exact delays).
    pub jitter: f64,
    /// A delay longer than this suspends the run on a durable timer instead of waiting in
    /// process (default 10 s). Inside [`StepContext::all`] a step always waits in process.
    pub suspend_longer_than: Duration,
}

/// The default of [`RetryPolicy::max_delay`].
const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// The default of [`RetryPolicy::suspend_longer_than`].
const DEFAULT_SUSPEND_LONGER_THAN: Duration = Duration::from_secs(10);

impl RetryPolicy {
    /// `max_attempts` attempts with a constant `delay` between them.
    pub fn constant(max_attempts: u32, delay: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            initial_delay: delay,
            backoff: Backoff::Constant,
            max_delay: DEFAULT_MAX_DELAY,
            jitter: 0.0,
            suspend_longer_than: DEFAULT_SUSPEND_LONGER_THAN,
        }
    }

    /// `max_attempts` attempts, the delay after attempt `n` being `n × delay`.
    pub fn linear(max_attempts: u32, delay: Duration) -> Self {
        RetryPolicy {
            backoff: Backoff::Linear,
            ..Self::constant(max_attempts, delay)
        }
    }

    /// `max_attempts` attempts, the delay doubling from `initial_delay` (see
    /// [`factor`](Self::factor)).
    pub fn exponential(max_attempts: u32, initial_delay: Duration) -> Self {
        RetryPolicy {
            backoff: Backoff::Exponential { factor: 2.0 },
            ..Self::constant(max_attempts, initial_delay)
        }
    }

    /// Sets the growth factor of an exponential backoff (any other backoff becomes exponential).
    pub fn factor(mut self, factor: f64) -> Self {
        self.backoff = Backoff::Exponential { factor };
        self
    }

    /// Sets [`max_delay`](Self::max_delay).
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`suspend_longer_than`](Self::suspend_longer_than).
    pub fn suspend_longer_than(mut self, threshold: Duration) -> Self {
        self.suspend_longer_than = threshold;
        self
    }

    /// The delay after failed attempt `attempt` (counted from 1), before jitter: the backoff's
    /// value, at most [`max_delay`](Self::max_delay).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let n = attempt.max(1);
        let base = self.initial_delay.as_secs_f64();
        let seconds = match self.backoff {
            Backoff::Constant => base,
            Backoff::Linear => base * f64::from(n),
            Backoff::Exponential { factor } => base * factor.powi((n - 1).min(1024) as i32),
        };
        let max = self.max_delay.as_secs_f64();
        if !seconds.is_finite() || seconds >= max {
            return self.max_delay;
        }
        Duration::from_secs_f64(seconds.max(0.0))
    }

    /// [`delay_after`](Self::delay_after) shortened at random by up to [`jitter`](Self::jitter).
    pub(crate) fn jittered_delay_after(&self, attempt: u32) -> Duration {
        let delay = self.delay_after(attempt);
        if self.jitter <= 0.0 {
            return delay;
        }
        delay.mul_f64(1.0 - self.jitter.min(1.0) * fastrand::f64())
    }

    /// Refuses what cannot be meant: no attempt at all, a factor below 1, a jitter outside
    /// `0.0..=1.0`.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::Validation(
                "RetryPolicy max_attempts is 0: give at least 1 (the first attempt)".into(),
            ));
        }
        if let Backoff::Exponential { factor } = self.backoff
            && !(factor.is_finite() && factor >= 1.0)
        {
            return Err(Error::Validation(format!(
                "RetryPolicy factor is {factor}: give a finite factor of at least 1.0"
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::Validation(format!(
                "RetryPolicy jitter is {}: give a fraction in 0.0..=1.0",
                self.jitter
            )));
        }
        Ok(())
    }
}

/// An error that no further attempt can fix (a declined card, invalid input): a step that
/// fails with it is not retried, whatever its [`RetryPolicy`]. It displays as the error it
/// wraps, which is what the step's stored error says.
///
/// ```
/// # async fn job(step: durably::StepContext) -> durably::Result<()> {
/// use std::time::Duration;
/// use durably::{NonRetryable, RetryPolicy, StepOptions};
/// let options = StepOptions::new().retry(RetryPolicy::constant(5, Duration::from_secs(1)));
/// let charged = step
///     .run_retrying("charge", options, |_| async {
///         Err::<(), _>(NonRetryable::new("card declined").into())
///     })
///     .await;
/// assert_eq!(charged.unwrap_err().to_string(), "card declined");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NonRetryable(BoxError);

impl NonRetryable {
    /// Marks `error` as not worth another attempt.
    pub fn new(error: impl Into<BoxError>) -> Self {
        NonRetryable(error.into())
    }

    /// The error it wraps.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl std::fmt::Display for NonRetryable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NonRetryable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<NonRetryable> for Error {
    fn from(error: NonRetryable) -> Self {
        Error::Job(Box::new(error))
    }
}

/// A step's attempt ran longer than its [`StepOptions::timeout`]: the attempt failed (and may be
/// retried); its function's future was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptTimedOut {
    /// The step's name.
    pub step: String,
    /// Which attempt, from 1.
    pub attempt: u32,
    /// The timeout it ran into.
    pub after: Duration,
}

impl std::fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step \"{}\" attempt {} timed out after {:?}",
            self.step, self.attempt, self.after
        )
    }
}

impl std::error::Error for AttemptTimedOut {}

/// Whether `error` (or an error it wraps) is [`NonRetryable`].
pub(crate) fn is_non_retryable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<NonRetryable>() {
            return true;
        }
        if let Some(Error::Job(inner) | Error::Step { source: inner, .. }) =
            error.downcast_ref::<Error>()
            && is_non_retryable(inner.as_ref())
        {
            return true;
        }
        current = error.source();
    }
    false
}

impl StepContext {
    /// Runs a durable step with retries: `f` is invoked once per attempt (it must be callable
    /// again, hence `FnMut`), until an attempt succeeds, the [`RetryPolicy`] of `options` is
    /// used up (then this returns the last attempt's [`Error::Step`]), or an attempt fails with
    /// a [`NonRetryable`] error. Without a policy it is [`run_with`](Self::run_with).
    ///
    /// Each attempt is recorded (a failed attempt is a `failed` step row, with its error, and a
    /// `step:fail` event), and counts across executions: after a crash or a restart the step
    /// goes on with the attempt after the last recorded one. Between attempts it waits the
    /// policy's delay, in process up to [`RetryPolicy::suspend_longer_than`], else suspended on
    /// a durable timer (the call returns [`Error::Suspended`], which the job returns with `?`;
    /// the run resumes when the delay is over). A [`StepOptions::timeout`] bounds each attempt.
    ///
    /// ```
    /// # async fn job(step: durably::StepContext) -> durably::Result<()> {
    /// use std::time::Duration;
    /// use durably::{RetryPolicy, StepOptions};
    /// let options = StepOptions::new()
    ///     .retry(RetryPolicy::exponential(5, Duration::from_millis(200)))
    ///     .timeout(Duration::from_secs(30));
    /// let page: String = step
    ///     .run_retrying("fetch", options, |attempt| async move {
    ///         // A flaky call; `attempt.number()` is 1, 2, …
    ///         if attempt.number() < 2 {
    ///             Err("503 from upstream".into())
    ///         } else {
    ///             Ok("<html>".to_string())
    ///         }
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_retrying<T, F, Fut>(
        &self,
        name: &str,
        options: StepOptions,
        mut f: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = crate::StepResult<T>>,
    {
        let Some(policy) = options.retry.clone() else {
            return self.run_with(name, options, f).await;
        };
        policy.validate()?;
        if self.shared().completed_output(name).await?.is_some() {
            // Completed in an earlier execution: replayed, whatever failed before.
            return self.run_with(name, options, f).await;
        }
        let max = policy.max_attempts;
        // Failed attempts recorded by earlier executions (a crash, a restart, a suspension for
        // a long delay): the series goes on after the last one. A step whose attempts were all
        // used up (its run failed, then was resumed) starts a fresh series.
        let mut failed_total = self.shared().failed_attempts(name).await?;
        let mut number = failed_total % max + 1;
        if number > 1 {
            // The delay after that failure: a durable timer comes back as it was (over, or
            // still running); an in-process delay is waited again.
            let delay = policy.jittered_delay_after(number - 1);
            self.back_off(name, (failed_total, number - 1), delay, &policy, None)
                .await?;
        }
        loop {
            let attempt_options = options.clone().attempt_number(number);
            let error = match self.run_with(name, attempt_options, &mut f).await {
                Ok(value) => return Ok(value),
                Err(error @ Error::Step { .. }) => error,
                Err(other) => return Err(other),
            };
            failed_total += 1;
            if number >= max || is_non_retryable(&error) {
                return Err(error);
            }
            let delay = policy.jittered_delay_after(number);
            tracing::debug!(step = name, attempt = number, ?delay, %error, "step attempt failed; retrying");
            self.back_off(name, (failed_total, number), delay, &policy, Some(&error))
                .await?;
            number += 1;
        }
    }

    /// Waits `delay` after a failed attempt of step `name` (`failed`: the failed attempts over
    /// the run's life, and within the current series): in process, or suspended on a durable
    /// timer when the delay is long and the run is at a sequential boundary (the timer's name
    /// counts failed attempts over the run's life, so each delay has its own; its metadata
    /// counts them within the series, so that it reads "attempt n+1 of max").
    async fn back_off(
        &self,
        name: &str,
        (failed_total, failed_in_series): (u32, u32),
        delay: Duration,
        policy: &RetryPolicy,
        error: Option<&Error>,
    ) -> Result<()> {
        let shared = self.shared();
        if delay.is_zero() {
            return Ok(());
        }
        if delay > policy.suspend_longer_than && shared.steps_in_flight() == 0 {
            let wait = NewWait::new(format!("retry:{name}:{failed_total}"))
                .timeout(delay)
                .metadata(json!({
                    "durably": {
                        "kind": "retry",
                        "step": name,
                        "failedAttempts": failed_in_series,
                        "maxAttempts": policy.max_attempts,
                        "error": error.map(ToString::to_string),
                    }
                }));
            let wait = self.prepare_wait(wait).await?;
            return match self.wait_for(&wait).await? {
                // Over, or ended early by an operator's signal.
                WaitResult::Timeout | WaitResult::Signal { .. } => Ok(()),
            };
        }
        let token = shared.token.clone();
        tokio::select! {
            () = runtime::sleep(delay) => Ok(()),
            () = token.cancelled() => Err(shared
                .abort_error()
                .unwrap_or_else(|| Error::Cancelled { run_id: shared.run_id.clone() })),
        }
    }
}

/// The wait-name prefix of a run's retry timers (`run-retry:<failed attempt>`).
const RUN_RETRY: &str = "run-retry:";

/// After the job function of a run with a retry policy failed with `error`: suspends the run
/// on a timer until its next attempt is due and returns [`Error::Suspended`] (the engine then
/// suspends the run), or returns `error` itself when it is not retried (attempts used up, a
/// [`NonRetryable`] error, a cancellation, a lost lease, a suspension).
pub(crate) async fn after_run_failure(
    step: &StepContext,
    policy: &RetryPolicy,
    error: BoxError,
) -> BoxError {
    if let Some(Error::Cancelled { .. } | Error::LeaseLost { .. } | Error::Suspended { .. }) =
        error.downcast_ref::<Error>()
    {
        return error;
    }
    if policy.validate().is_err() || is_non_retryable(error.as_ref()) {
        return error;
    }
    let shared = step.shared();
    let failed_before = match shared.store.get_waits(&shared.run_id).await {
        Ok(waits) => waits
            .iter()
            .filter(|wait| wait.name.starts_with(RUN_RETRY))
            .count() as u32,
        Err(read) => {
            tracing::warn!(run_id = %shared.run_id, %read, "could not count the run's attempts; not retrying");
            return error;
        }
    };
    let attempt = failed_before + 1;
    if attempt >= policy.max_attempts {
        return error;
    }
    // A timer even for no delay: the next attempt is a fresh execution, under a new lease.
    let delay = policy
        .jittered_delay_after(attempt)
        .max(Duration::from_millis(1));
    let message = error.to_string();
    let wait = NewWait::new(format!("{RUN_RETRY}{attempt}"))
        .timeout(delay)
        .metadata(json!({
            "durably": {
                "kind": "run-retry",
                "failedAttempt": attempt,
                "maxAttempts": policy.max_attempts,
                "error": message,
            }
        }));
    // The failed execution ends suspended on the retry's timer. A timer already resolved (its
    // deadline passed before this execution asked to be suspended, a short delay; or a "retry
    // now" signal came first) is suspended on all the same: the next attempt then starts at
    // once, as a fresh execution under a new lease.
    let suspension: Result<Error> = async {
        let wait = step.prepare_wait(wait).await?;
        Ok(match step.wait_for(&wait).await {
            Err(error) => error,
            Ok(_) => step.suspend_on_resolved(&wait),
        })
    }
    .await;
    match suspension {
        Ok(suspension @ Error::Suspended { .. }) => {
            tracing::info!(attempt, ?delay, error = %message, "run failed; retrying after the delay");
            Box::new(suspension)
        }
        Ok(other) | Err(other) => {
            tracing::warn!(run_id = %shared.run_id, error = %other, "could not schedule the run's next attempt");
            error
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_grow_as_documented_and_stop_at_the_maximum() {
        let second = Duration::from_secs(1);
        let constant = RetryPolicy::constant(5, second);
        assert_eq!(
            (1..=4).map(|n| constant.delay_after(n)).collect::<Vec<_>>(),
            vec![second; 4]
        );
        let linear = RetryPolicy::linear(5, second);
        assert_eq!(linear.delay_after(3), 3 * second);
        let exponential = RetryPolicy::exponential(20, second).max_delay(60 * second);
        assert_eq!(
            (1..=8)
                .map(|n| exponential.delay_after(n).as_secs())
                .collect::<Vec<_>>(),
            vec![1, 2, 4, 8, 16, 32, 60, 60]
        );
        let tripling = RetryPolicy::exponential(5, second).factor(3.0);
        assert_eq!(tripling.delay_after(3), 9 * second);
        // Huge exponents saturate at the maximum instead of overflowing.
        assert_eq!(exponential.delay_after(u32::MAX), 60 * second);
    }

    #[test]
    fn jitter_only_shortens_delays_within_its_fraction() {
        let policy = RetryPolicy::constant(3, Duration::from_secs(10)).jitter(0.5);
        for _ in 0..1000 {
            let delay = policy.jittered_delay_after(1);
            assert!(delay <= Duration::from_secs(10) && delay >= Duration::from_secs(5));
        }
    }

    #[test]
    fn meaningless_policies_are_refused_with_the_value() {
        let zero = RetryPolicy::constant(0, Duration::ZERO).validate();
        assert!(matches!(zero, Err(Error::Validation(m)) if m.contains("max_attempts is 0")));
        let shrinking = RetryPolicy::exponential(3, Duration::from_secs(1))
            .factor(0.5)
            .validate();
        assert!(matches!(shrinking, Err(Error::Validation(m)) if m.contains("factor is 0.5")));
        let jitter = RetryPolicy::constant(3, Duration::ZERO)
            .jitter(2.0)
            .validate();
        assert!(matches!(jitter, Err(Error::Validation(m)) if m.contains("jitter is 2")));
    }

    #[test]
    fn non_retryable_is_found_through_durably_errors() {
        let marked: BoxError = Box::new(NonRetryable::new("card declined"));
        assert!(is_non_retryable(marked.as_ref()));
        let as_job: Error = NonRetryable::new("card declined").into();
        assert!(is_non_retryable(&as_job));
        let as_step = Error::Step {
            name: "charge".into(),
            source: Box::new(as_job),
        };
        assert!(is_non_retryable(&as_step));
        assert_eq!(as_step.to_string(), "card declined");
        let plain = Error::Step {
            name: "charge".into(),
            source: "timeout".into(),
        };
        assert!(!is_non_retryable(&plain));
    }
}
