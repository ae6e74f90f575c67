//! Following a run through the database: the events that lead from what was last seen of a run
//! to its current state.
//!
//! A run executed by another process emits its events there; a process that only reads the
//! database (a `subscribe` stream on another instance, `durably serve`'s live views) rebuilds
//! them by comparing each read with the last one. This is the one place where that comparison
//! is written.

use serde_json::Value;

use crate::events::EventKind;
use crate::run::{Labels, Progress, Run, RunStatus, Step, StepStatus};

/// What was last seen of a run: enough to tell what changed at the next read.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RunSnapshot {
    /// Its status.
    pub status: RunStatus,
    /// Its progress.
    pub progress: Option<Progress>,
    /// How many of its steps had completed.
    pub completed_steps: i64,
    /// Its job (for the events of a run deleted since).
    pub job_name: String,
    /// Its labels (likewise).
    pub labels: Labels,
}

impl RunSnapshot {
    /// The run as read now.
    pub fn of(run: &Run) -> Self {
        RunSnapshot {
            status: run.status,
            progress: run.progress.clone(),
            completed_steps: run.completed_step_count,
            job_name: run.job_name.clone(),
            labels: run.labels.clone(),
        }
    }

    /// A run as it was when triggered: pending, no progress, no step (for a run first seen
    /// after it had already moved on).
    pub fn triggered(run: &Run) -> Self {
        RunSnapshot {
            status: RunStatus::Pending,
            progress: None,
            completed_steps: 0,
            job_name: run.job_name.clone(),
            labels: run.labels.clone(),
        }
    }

    /// Whether [`changes`](Self::changes) needs the run's steps: steps completed since.
    pub fn needs_steps(&self, run: &Run) -> bool {
        run.completed_step_count > self.completed_steps
    }

    /// The events that lead from this snapshot to `run`, in order: `run:trigger` when a failed
    /// run is active again (resumed), `run:leased` (once a
    /// pending run was claimed or a waiting one resumed), `step:complete` for each step completed since (from `steps`,
    /// the run's steps by index, needed only when [`needs_steps`](Self::needs_steps)),
    /// `run:progress` when its progress changed, `run:waiting` when it suspended, and its end (`run:complete`, `run:fail`,
    /// `run:cancel`) when it reached one.
    pub fn changes(&self, run: &Run, steps: &[Step]) -> Vec<EventKind> {
        let (run_id, job_name, labels) = (&run.id, &run.job_name, &run.labels);
        let mut events = Vec::new();
        // A failed run that is active again was resumed (`Durably::resume`): announced with
        // `run:trigger` for its id, as the resuming process does.
        let reopened = self.status == RunStatus::Failed && !run.status.is_terminal();
        if reopened {
            events.push(EventKind::RunTrigger {
                run_id: run_id.clone(),
                job_name: job_name.clone(),
                input: run.input.clone(),
                labels: labels.clone(),
            });
        }
        // A run cancelled while pending was never leased (no start time).
        let claimed = (self.status == RunStatus::Pending || reopened)
            && run.status != RunStatus::Pending
            && run.started_at.is_some();
        // A waiting run resumed by a worker is leased again.
        let resumed = self.status == RunStatus::Waiting && run.status == RunStatus::Leased;
        if claimed || resumed {
            events.push(EventKind::RunLeased {
                run_id: run_id.clone(),
                job_name: job_name.clone(),
                input: run.input.clone(),
                lease_owner: run.lease_owner.clone().unwrap_or_default(),
                lease_expires_at: run
                    .lease_expires_at
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                labels: labels.clone(),
            });
        }
        if self.needs_steps(run) {
            let already = usize::try_from(self.completed_steps).unwrap_or(0);
            for step in steps
                .iter()
                .filter(|s| s.status == StepStatus::Completed)
                .skip(already)
            {
                events.push(EventKind::StepComplete {
                    run_id: run_id.clone(),
                    job_name: job_name.clone(),
                    step_name: step.name.clone(),
                    step_index: step.index,
                    output: step.output.clone().unwrap_or(Value::Null),
                    duration: step
                        .completed_at
                        .map(|at| at.millis_since(step.started_at))
                        .unwrap_or(0),
                    labels: labels.clone(),
                });
            }
        }
        if let Some(progress) = &run.progress
            && self.progress.as_ref() != Some(progress)
            && run.status != RunStatus::Pending
        {
            events.push(EventKind::RunProgress {
                run_id: run_id.clone(),
                job_name: job_name.clone(),
                progress: progress.clone(),
                labels: labels.clone(),
            });
        }
        if run.status == RunStatus::Waiting && self.status != RunStatus::Waiting {
            events.push(EventKind::RunWaiting {
                run_id: run_id.clone(),
                job_name: job_name.clone(),
                labels: labels.clone(),
                wait_id: run.waiting_on_wait_id.clone().unwrap_or_default(),
            });
        }
        if self.status != run.status
            && let Some(end) = end_event(run)
        {
            events.push(end);
        }
        events
    }
}

/// The event that announces a finished run's end (`None` while it is active): `run:complete`
/// with its output and how long it ran, `run:fail` with its error, or `run:cancel`.
pub fn end_event(run: &Run) -> Option<EventKind> {
    let (run_id, job_name, labels) = (run.id.clone(), run.job_name.clone(), run.labels.clone());
    match run.status {
        RunStatus::Completed => {
            let start = run.started_at.unwrap_or(run.created_at);
            let end = run.completed_at.unwrap_or(run.updated_at);
            Some(EventKind::RunComplete {
                run_id,
                job_name,
                output: run.output.clone().unwrap_or(Value::Null),
                duration: end.millis_since(start),
                labels,
            })
        }
        RunStatus::Failed => Some(EventKind::RunFail {
            run_id,
            job_name,
            error: run.error.clone().unwrap_or_else(|| "Unknown error".into()),
            failed_step_name: String::new(),
            labels,
        }),
        RunStatus::Cancelled => Some(EventKind::RunCancel {
            run_id,
            job_name,
            labels,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::events::EventType;
    use crate::time::Timestamp;

    fn pending() -> Run {
        let now = Timestamp::now();
        Run {
            id: "run-1".into(),
            job_name: "job".into(),
            input: json!({}),
            status: RunStatus::Pending,
            idempotency_key: None,
            concurrency_key: None,
            current_step_index: 0,
            completed_step_count: 0,
            progress: None,
            output: None,
            error: None,
            labels: Labels::new(),
            lease_owner: None,
            lease_expires_at: None,
            lease_generation: 0,
            waiting_on_wait_id: None,
            priority: 0,
            parent_run_id: None,
            parent_wait_id: None,
            trace_context: None,
            started_at: None,
            completed_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn step(name: &str, index: i64) -> Step {
        let started_at = Timestamp::now();
        Step {
            id: format!("step-{index}"),
            run_id: "run-1".into(),
            name: name.into(),
            index,
            status: StepStatus::Completed,
            output: Some(json!(index)),
            error: None,
            started_at,
            completed_at: Some(started_at + Duration::from_millis(7)),
        }
    }

    fn types(events: &[EventKind]) -> Vec<EventType> {
        events.iter().map(EventKind::event_type).collect()
    }

    #[test]
    fn a_run_that_ran_to_its_end_between_two_reads() {
        let before = RunSnapshot::of(&pending());
        let mut run = pending();
        let started = Timestamp::now();
        run.status = RunStatus::Completed;
        run.started_at = Some(started);
        run.completed_at = Some(started + Duration::from_millis(40));
        run.completed_step_count = 2;
        run.progress = Some(Progress {
            current: 2,
            total: Some(2),
            message: None,
        });
        run.output = Some(json!("done"));
        assert!(before.needs_steps(&run));
        let events = before.changes(&run, &[step("a", 0), step("b", 1)]);
        assert_eq!(
            types(&events),
            [
                EventType::RunLeased,
                EventType::StepComplete,
                EventType::StepComplete,
                EventType::RunProgress,
                EventType::RunComplete
            ]
        );
        match &events[4] {
            EventKind::RunComplete {
                output, duration, ..
            } => {
                assert_eq!(output, &json!("done"));
                assert_eq!(*duration, 40);
            }
            other => panic!("{other:?}"),
        }
        // Read again: nothing changed, nothing to say.
        assert!(RunSnapshot::of(&run).changes(&run, &[]).is_empty());
    }

    #[test]
    fn a_resumed_run_is_triggered_again_then_leased() {
        let mut run = pending();
        run.status = RunStatus::Failed;
        run.started_at = Some(Timestamp::now());
        run.error = Some("boom".into());
        let failed = RunSnapshot::of(&run);
        let mut resumed = run.clone();
        resumed.status = RunStatus::Pending;
        resumed.error = None;
        assert_eq!(
            types(&failed.changes(&resumed, &[])),
            [EventType::RunTrigger]
        );
        // Resumed and claimed between two reads.
        resumed.status = RunStatus::Leased;
        assert_eq!(
            types(&failed.changes(&resumed, &[])),
            [EventType::RunTrigger, EventType::RunLeased]
        );
        // Still failed: nothing.
        assert!(failed.changes(&run, &[]).is_empty());
    }

    #[test]
    fn a_run_cancelled_while_pending_was_never_leased() {
        let before = RunSnapshot::of(&pending());
        let mut run = pending();
        run.status = RunStatus::Cancelled;
        assert_eq!(types(&before.changes(&run, &[])), [EventType::RunCancel]);
    }

    #[test]
    fn only_the_steps_completed_since_are_reported() {
        let mut run = pending();
        run.status = RunStatus::Leased;
        run.started_at = Some(Timestamp::now());
        run.completed_step_count = 1;
        let before = RunSnapshot::of(&run);
        run.completed_step_count = 2;
        let events = before.changes(&run, &[step("a", 0), step("b", 1)]);
        match events.as_slice() {
            [
                EventKind::StepComplete {
                    step_name,
                    duration,
                    ..
                },
            ] => {
                assert_eq!(step_name, "b");
                assert_eq!(*duration, 7);
            }
            other => panic!("{other:?}"),
        }
    }
}
