//! Which timer a wait is, read from the metadata durably's own code gives the waits it creates
//! (`{"durably": {"kind": …}}`), and how to say why a run waiting on it is not running and when
//! it will: the one place the HTTP API, the CLI and the dashboard take this text from.

use serde_json::Value;

use super::{DurableWait, WaitStatus};
use crate::time::Timestamp;

/// The kind of a timer wait: a wait with only a deadline, created by durably itself for a
/// delayed run, a retry backoff or a durable sleep. Any other wait waits for a signal (an
/// approval, a webhook).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimerKind {
    /// A delayed run not started yet (`TriggerOptions::delay` / `start_at`; wait `delay`).
    Delay,
    /// A step's retry backoff (`StepContext::run_retrying`; wait `retry:<step>:<n>`).
    StepRetry {
        /// The step that failed.
        step: String,
        /// How many attempts of the step failed so far.
        failed_attempts: u64,
        /// The policy's attempt limit.
        max_attempts: u64,
        /// The last attempt's error.
        error: Option<String>,
    },
    /// The whole run's retry backoff (`Job::retry`; wait `run-retry:<n>`).
    RunRetry {
        /// The run attempt that failed (the next is this plus one).
        failed_attempt: u64,
        /// The policy's attempt limit.
        max_attempts: u64,
        /// The failed attempt's error.
        error: Option<String>,
    },
    /// A durable sleep (wait `sleep:<name>`).
    Sleep,
}

impl TimerKind {
    /// The timer kind of `wait`, from its metadata (`None`: a wait for a signal).
    pub fn of(wait: &DurableWait) -> Option<TimerKind> {
        let meta = wait.metadata.as_ref()?.get("durably")?;
        let number = |key: &str| meta.get(key).and_then(Value::as_u64).unwrap_or(0);
        let error = meta
            .get("error")
            .and_then(Value::as_str)
            .map(ToOwned::to_owned);
        match meta.get("kind").and_then(Value::as_str)? {
            "delay" => Some(TimerKind::Delay),
            "retry" => Some(TimerKind::StepRetry {
                step: meta
                    .get("step")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                failed_attempts: number("failedAttempts"),
                max_attempts: number("maxAttempts"),
                error,
            }),
            "run-retry" => Some(TimerKind::RunRetry {
                failed_attempt: number("failedAttempt"),
                max_attempts: number("maxAttempts"),
                error,
            }),
            "sleep" => Some(TimerKind::Sleep),
            _ => None,
        }
    }

    /// Whether waking the run retries something (a step or the run) rather than starting or
    /// continuing it: the dashboard's "Retry now" rather than "Run now".
    pub fn is_retry(&self) -> bool {
        matches!(
            self,
            TimerKind::StepRetry { .. } | TimerKind::RunRetry { .. }
        )
    }

    /// A few words for a list: `delayed`, `retry 2/5`, `run retry 2/3`, `sleeping`.
    pub fn short(&self) -> String {
        match self {
            TimerKind::Delay => "delayed".into(),
            TimerKind::StepRetry {
                failed_attempts,
                max_attempts,
                ..
            } => format!("retry {}/{max_attempts}", failed_attempts + 1),
            TimerKind::RunRetry {
                failed_attempt,
                max_attempts,
                ..
            } => format!("run retry {}/{max_attempts}", failed_attempt + 1),
            TimerKind::Sleep => "sleeping".into(),
        }
    }

    /// Why a run waiting on this timer is not running and when it will, e.g. `delayed until
    /// 2026-…`, `step charge: attempt 3 of 5 at …, last error: …`, `run attempt 2 of 3 at …,
    /// last error: …`, `sleeping until …`.
    pub fn describe(&self, deadline: Option<Timestamp>) -> String {
        let at = deadline.map_or_else(|| "an unknown time".to_owned(), |d| d.to_string());
        let last_error = |error: &Option<String>| match error {
            Some(error) => format!(", last error: {error}"),
            None => String::new(),
        };
        match self {
            TimerKind::Delay => format!("delayed until {at}"),
            TimerKind::StepRetry {
                step,
                failed_attempts,
                max_attempts,
                error,
            } => format!(
                "step {step}: attempt {} of {max_attempts} at {at}{}",
                failed_attempts + 1,
                last_error(error)
            ),
            TimerKind::RunRetry {
                failed_attempt,
                max_attempts,
                error,
            } => format!(
                "run attempt {} of {max_attempts} at {at}{}",
                failed_attempt + 1,
                last_error(error)
            ),
            TimerKind::Sleep => format!("sleeping until {at}"),
        }
    }
}

/// Why a run waiting on `wait` is not running and when it will: the timer's
/// [`TimerKind::describe`], or for a wait for a signal `waiting for the signal <name>` (with
/// `, or until <deadline>` when it has one); a wait no longer pending says it was resolved
/// and the run resumes at the next claim.
pub fn why_waiting(wait: &DurableWait) -> String {
    if wait.status != WaitStatus::Pending {
        return format!(
            "wait {} is {}: the run resumes at the next claim of a worker",
            wait.name,
            wait.status.as_str()
        );
    }
    match TimerKind::of(wait) {
        Some(kind) => kind.describe(wait.deadline_at),
        None => match wait.deadline_at {
            Some(deadline) => format!(
                "waiting for the signal {} (or until {deadline}, when it times out)",
                wait.name
            ),
            None => format!("waiting for the signal {}", wait.name),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wait(name: &str, metadata: Option<Value>, deadline: Option<i64>) -> DurableWait {
        DurableWait {
            id: "w".into(),
            run_id: "r".into(),
            name: name.into(),
            metadata,
            status: WaitStatus::Pending,
            payload: None,
            signal_id: None,
            created_at: Timestamp::from_millis(0),
            deadline_at: deadline.map(Timestamp::from_millis),
            outcome: None,
            suspended_at: None,
            resolved_at: None,
            first_resumed_at: None,
            input_wait_ms: None,
            execution_slot_wait_ms: None,
        }
    }

    #[test]
    fn timers_are_read_from_their_metadata_and_described() {
        let delay = wait(
            "delay",
            Some(json!({"durably": {"kind": "delay"}})),
            Some(0),
        );
        assert_eq!(TimerKind::of(&delay), Some(TimerKind::Delay));
        assert_eq!(
            why_waiting(&delay),
            "delayed until 1970-01-01T00:00:00.000Z"
        );
        let retry = wait(
            "retry:charge:2",
            Some(
                json!({"durably": {"kind": "retry", "step": "charge", "failedAttempts": 2,
                "maxAttempts": 5, "error": "boom"}}),
            ),
            Some(0),
        );
        let kind = TimerKind::of(&retry).expect("a timer");
        assert!(kind.is_retry());
        assert_eq!(kind.short(), "retry 3/5");
        assert_eq!(
            why_waiting(&retry),
            "step charge: attempt 3 of 5 at 1970-01-01T00:00:00.000Z, last error: boom"
        );
        let run_retry = wait(
            "run-retry:1",
            Some(
                json!({"durably": {"kind": "run-retry", "failedAttempt": 1, "maxAttempts": 3,
                "error": "down"}}),
            ),
            Some(0),
        );
        assert_eq!(
            why_waiting(&run_retry),
            "run attempt 2 of 3 at 1970-01-01T00:00:00.000Z, last error: down"
        );
        let sleep = wait(
            "sleep:nap",
            Some(json!({"durably": {"kind": "sleep"}})),
            None,
        );
        assert_eq!(why_waiting(&sleep), "sleeping until an unknown time");
        let approval = wait("approval", Some(json!({"asks": "ada"})), None);
        assert_eq!(TimerKind::of(&approval), None);
        assert_eq!(why_waiting(&approval), "waiting for the signal approval");
        let other = wait("x", Some(json!({"durably": {"kind": "future"}})), None);
        assert_eq!(TimerKind::of(&other), None);
    }
}
