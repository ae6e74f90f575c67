//! Step attempts (upstream schema version 2): one record per real execution of a step's
//! function. A replayed step (its output read back from its checkpoint) makes none.
//!
//! A step's checkpoint says what a step returned; its attempts say how many times its function
//! ran, under which lease, how each ended, and, for one that never ended, why
//! ([`InterruptionReason`]). Attempts outlive checkpoint cleanup (`preserve_steps: false`) and
//! cancel cleanup, and go only with their run (delete, purge, retention), so a failed run's page
//! still shows which step failed, when and why.
//!
//! When the record is written: an attempt whose function ends within
//! [`Tuning::attempt_record_delay`](crate::Tuning) is written once, with its outcome, in the
//! same transaction as the step's checkpoint (a fast step costs no extra write); a longer one is
//! first recorded as `started` once that delay has passed (while the function keeps running),
//! then finalized with the checkpoint. Upstream writes the `started` row before every function
//! starts; the difference is visible only for a worker that crashes within the delay of a step's
//! start, whose attempt is then not recorded.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::run::{RunStatus, StepStatus};
use crate::step::StepShared;
use crate::store::{AttemptStart, LEASE_EXPIRED_PENDING_EXISTS};
use crate::time::Timestamp;

/// How an attempt stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AttemptStatus {
    /// The function started and no outcome was recorded (still running, or interrupted: see
    /// [`StepAttempt::interruption_reason`]).
    Started,
    /// The function returned and its checkpoint was written.
    Completed,
    /// The function failed or was cancelled.
    Failed,
}

impl AttemptStatus {
    /// The exact string stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Started => "started",
            AttemptStatus::Completed => "completed",
            AttemptStatus::Failed => "failed",
        }
    }

    /// Parses the stored string.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "started" => Some(AttemptStatus::Started),
            "completed" => Some(AttemptStatus::Completed),
            "failed" => Some(AttemptStatus::Failed),
            _ => None,
        }
    }

    /// The attempt status a step outcome records: `completed` for a completed step, `failed`
    /// for a failed or cancelled one.
    pub fn of_step(status: StepStatus) -> Self {
        match status {
            StepStatus::Completed => AttemptStatus::Completed,
            _ => AttemptStatus::Failed,
        }
    }
}

/// Why an attempt left `started` without an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum InterruptionReason {
    /// Its worker lost the lease (crashed, froze or was too slow): another lease took the run.
    LeaseLost,
    /// The run was cancelled.
    Cancelled,
    /// The run ended without this attempt's outcome being recorded.
    Unknown,
}

/// One real execution of a step's function (`GET /attempts?runId=`, `Durably::get_step_attempts`).
///
/// Serializes to upstream's `StepAttempt` JSON (camelCase, upstream's key order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StepAttempt {
    /// ULID.
    pub id: String,
    /// The run.
    pub run_id: String,
    /// The step's name.
    pub step_name: String,
    /// The step's index in this execution.
    pub step_index: i64,
    /// The lease generation the attempt ran under.
    pub lease_generation: i64,
    /// Where it stands.
    pub status: AttemptStatus,
    /// Metadata the step set (JSON), if any.
    pub metadata: Option<Value>,
    /// When the function started.
    pub started_at: Timestamp,
    /// When its outcome was recorded.
    pub completed_at: Option<Timestamp>,
    /// The error of a failed or cancelled attempt.
    pub error: Option<String>,
    /// Why a `started` attempt has no outcome, from the run as it is now (`None` while it may
    /// still be running, and for attempts with an outcome).
    pub interruption_reason: Option<InterruptionReason>,
}

/// The attempt a step write records (see [`crate::store::NewStep::attempt`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct NewAttempt {
    /// The attempt's id (a ULID made when the function started).
    pub id: String,
    /// Whether its `started` row was already written ([`crate::Store::begin_step_attempt`]):
    /// the step write then finalizes that row; otherwise it inserts the whole attempt.
    pub begun: bool,
    /// The attempt's metadata.
    pub metadata: Option<Value>,
}

impl NewAttempt {
    /// An attempt not yet written.
    pub fn new(id: String) -> Self {
        NewAttempt {
            id,
            begun: false,
            metadata: None,
        }
    }
}

/// Options of one step ([`StepContext::run_with`](crate::StepContext::run_with)).
///
/// ```
/// use durably::StepOptions;
/// use serde_json::json;
/// let options = StepOptions::new().metadata(json!({"provider": "stripe"}));
/// assert_eq!(options.metadata, Some(json!({"provider": "stripe"})));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct StepOptions {
    /// The metadata each attempt starts with (JSON; `None`: none).
    pub metadata: Option<Value>,
    /// How often the step is attempted ([`StepContext::run_retrying`](crate::StepContext::run_retrying);
    /// `None`: once).
    pub retry: Option<crate::retry::RetryPolicy>,
    /// Each attempt fails (a retryable error) when it runs longer than this; its function's
    /// future is dropped. `None`: no bound.
    pub timeout: Option<std::time::Duration>,
    /// The number the next attempt runs as (set by the retry loop).
    pub(crate) attempt_number: u32,
}

impl StepOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`metadata`](Self::metadata).
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets [`retry`](Self::retry).
    pub fn retry(mut self, policy: crate::retry::RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub(crate) fn attempt_number(mut self, number: u32) -> Self {
        self.attempt_number = number;
        self
    }
}

/// The attempt a step's function runs as ([`StepContext::run_with`](crate::StepContext::run_with)):
/// its id, the run's cancellation token, and metadata the function can record while it runs
/// (a provider's request id, how far it got), stored on the attempt and kept with it.
#[derive(Clone)]
pub struct Attempt {
    inner: Arc<AttemptInner>,
}

struct AttemptInner {
    shared: Arc<StepShared>,
    id: String,
    number: u32,
    step_name: String,
    index: i64,
    started_at: Timestamp,
    /// What the store holds of the attempt; held across its writes, one at a time.
    state: tokio::sync::Mutex<AttemptState>,
    /// The last metadata stored (read without waiting for a write in flight).
    stored_metadata: std::sync::Mutex<Option<Value>>,
}

struct AttemptState {
    /// Its `started` row exists.
    begun: bool,
    /// Its outcome was written: nothing changes it any more.
    finalized: bool,
    metadata: Option<Value>,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("id", &self.inner.id)
            .field("step", &self.inner.step_name)
            .field("index", &self.inner.index)
            .finish_non_exhaustive()
    }
}

impl Attempt {
    pub(crate) fn new(
        shared: Arc<StepShared>,
        id: String,
        step_name: &str,
        index: i64,
        started_at: Timestamp,
        metadata: Option<Value>,
        number: u32,
    ) -> Self {
        Attempt {
            inner: Arc::new(AttemptInner {
                shared,
                id,
                number: number.max(1),
                step_name: step_name.to_owned(),
                index,
                started_at,
                stored_metadata: std::sync::Mutex::new(metadata.clone()),
                state: tokio::sync::Mutex::new(AttemptState {
                    begun: false,
                    finalized: false,
                    metadata,
                }),
            }),
        }
    }

    /// The attempt's id (a ULID), as [`StepAttempt::id`] reads it back.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Which attempt of its step this is, from 1 (see
    /// [`StepContext::run_retrying`](crate::StepContext::run_retrying); always 1 for a step
    /// without a retry policy).
    pub fn number(&self) -> u32 {
        self.inner.number
    }

    /// The run's cancellation token: fires when the run is cancelled or this worker loses its
    /// lease.
    pub fn token(&self) -> CancellationToken {
        self.inner.shared.token.clone()
    }

    /// The metadata last stored for this attempt (a copy).
    pub fn metadata(&self) -> Option<Value> {
        self.inner
            .stored_metadata
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the attempt's metadata (no merge) and returns once it is stored, fenced by
    /// this worker's lease. Errors: [`Error::Cancelled`] or [`Error::LeaseLost`] when the run
    /// must stop (nothing written), [`Error::Conflict`] once the attempt's outcome was recorded.
    ///
    /// ```
    /// # async fn job(step: durably::StepContext) -> durably::Result<()> {
    /// use durably::StepOptions;
    /// use serde_json::json;
    /// let charged = step
    ///     .run_with("charge", StepOptions::new(), |attempt| async move {
    ///         let request_id = "req_123"; // from the payment provider
    ///         attempt.set_metadata(json!({"requestId": request_id})).await?;
    ///         Ok(true)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_metadata(&self, metadata: Value) -> Result<()> {
        let inner = &self.inner;
        let shared = &inner.shared;
        if let Some(error) = shared.abort_error() {
            return Err(error);
        }
        let mut state = inner.state.lock().await;
        if state.finalized {
            return Err(Error::Conflict(format!(
                "Step attempt is already finalized: {}",
                inner.id
            )));
        }
        let written = if state.begun {
            shared
                .store
                .set_step_attempt_metadata(
                    &shared.fence,
                    &inner.id,
                    Some(metadata.clone()),
                    Timestamp::now(),
                )
                .await?
        } else {
            // Not recorded yet (a step shorter than the record delay so far): the metadata is
            // stored with its `started` row now.
            let mut start = self.start();
            start.metadata = Some(metadata.clone());
            let begun = shared
                .store
                .begin_step_attempt(&shared.fence, start, Timestamp::now())
                .await?;
            state.begun = begun;
            begun
        };
        if !written {
            let reason = shared.refused().await;
            return Err(shared.error_for(reason));
        }
        state.metadata = Some(metadata.clone());
        *inner
            .stored_metadata
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(metadata);
        Ok(())
    }

    fn start(&self) -> AttemptStart {
        let inner = &self.inner;
        AttemptStart::new(
            inner.id.clone(),
            inner.step_name.clone(),
            inner.index,
            inner.started_at,
        )
    }

    /// Records the attempt as `started` (with its metadata) unless it already is: `false` when
    /// the fence or the lease no longer holds.
    pub(crate) async fn begin(&self) -> Result<bool> {
        let shared = &self.inner.shared;
        let mut state = self.inner.state.lock().await;
        if state.begun || state.finalized {
            return Ok(true);
        }
        let mut start = self.start();
        start.metadata = state.metadata.clone();
        let begun = shared
            .store
            .begin_step_attempt(&shared.fence, start, Timestamp::now())
            .await?;
        state.begun = begun;
        Ok(begun)
    }

    /// Writes the attempt's outcome with `write` (the step's checkpoint write, given the
    /// attempt record), holding off metadata writes meanwhile.
    pub(crate) async fn finalize<T>(
        &self,
        write: impl AsyncFnOnce(NewAttempt) -> Result<T>,
    ) -> Result<T> {
        let mut state = self.inner.state.lock().await;
        let record = NewAttempt {
            id: self.inner.id.clone(),
            begun: state.begun,
            metadata: state.metadata.clone(),
        };
        let result = write(record).await;
        state.finalized = true;
        result
    }
}

/// The run as an attempt's interruption reason needs it.
#[derive(Clone, Debug)]
pub(crate) struct RunFacts<'a> {
    pub(crate) status: RunStatus,
    pub(crate) lease_generation: i64,
    pub(crate) error: Option<&'a str>,
}

/// Upstream's read-time rule (§5.3): only a `started` attempt has a reason; `lease-lost` if its
/// generation is older than the run's, or the run is pending, or it failed because its expired
/// lease could not go back to pending; else `cancelled` for a cancelled run; else `unknown` for
/// a finished run; else none (still running under its lease, or the run is waiting).
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "testing")),
    allow(dead_code)
)]
pub(crate) fn interruption_reason(
    status: AttemptStatus,
    generation: i64,
    run: Option<RunFacts<'_>>,
) -> Option<InterruptionReason> {
    if status != AttemptStatus::Started {
        return None;
    }
    let run = run?;
    let lease_lost = generation < run.lease_generation
        || run.status == RunStatus::Pending
        || (run.status == RunStatus::Failed && run.error == Some(LEASE_EXPIRED_PENDING_EXISTS));
    if lease_lost {
        return Some(InterruptionReason::LeaseLost);
    }
    match run.status {
        RunStatus::Cancelled => Some(InterruptionReason::Cancelled),
        RunStatus::Completed | RunStatus::Failed => Some(InterruptionReason::Unknown),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(status: RunStatus, lease_generation: i64, error: Option<&str>) -> RunFacts<'_> {
        RunFacts {
            status,
            lease_generation,
            error,
        }
    }

    #[test]
    fn interruption_reasons_follow_upstreams_rule() {
        use InterruptionReason::*;
        let started = AttemptStatus::Started;
        assert_eq!(
            interruption_reason(started, 1, Some(facts(RunStatus::Leased, 2, None))),
            Some(LeaseLost)
        );
        assert_eq!(
            interruption_reason(started, 1, Some(facts(RunStatus::Pending, 1, None))),
            Some(LeaseLost)
        );
        assert_eq!(
            interruption_reason(
                started,
                1,
                Some(facts(
                    RunStatus::Failed,
                    1,
                    Some(LEASE_EXPIRED_PENDING_EXISTS)
                ))
            ),
            Some(LeaseLost)
        );
        assert_eq!(
            interruption_reason(started, 1, Some(facts(RunStatus::Cancelled, 1, None))),
            Some(Cancelled)
        );
        assert_eq!(
            interruption_reason(started, 1, Some(facts(RunStatus::Failed, 1, Some("boom")))),
            Some(Unknown)
        );
        assert_eq!(
            interruption_reason(started, 1, Some(facts(RunStatus::Leased, 1, None))),
            None
        );
        assert_eq!(
            interruption_reason(started, 1, Some(facts(RunStatus::Waiting, 1, None))),
            None
        );
        assert_eq!(
            interruption_reason(
                AttemptStatus::Failed,
                1,
                Some(facts(RunStatus::Pending, 3, None))
            ),
            None
        );
    }
}
