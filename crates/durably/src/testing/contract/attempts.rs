//! Contract: step attempts (upstream schema v2): written with a step's outcome or begun first,
//! fenced, read back with their interruption reason, deleted only with their run.

use super::*;
use crate::attempts::{AttemptStatus, InterruptionReason, NewAttempt};
use crate::store::AttemptStart;

fn with_attempt(mut step: NewStep, id: &str, begun: bool) -> NewStep {
    let mut attempt = NewAttempt::new(id.into());
    attempt.begun = begun;
    step.attempt = Some(attempt);
    step
}

/// Contract: an attempt is recorded with its step's outcome (inserted whole, or begun and
/// finalized), fenced by the lease, and read back oldest first.
pub async fn step_attempts_are_recorded_with_their_outcome_and_fenced(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let created = enqueue(&store, new_run("job", json!({})), t0).await;
    assert!(
        store
            .get_step_attempts(&created.id)
            .await
            .expect("attempts")
            .is_empty()
    );
    let run = claim(&store, "w", t0, LEASE).await.expect("claimed");
    let fence = Fence::of(&run);

    // A fast step: one write with its outcome.
    let done = with_attempt(
        step("fast", 0, StepStatus::Completed, Some(json!(1)), t0),
        "attempt-a",
        false,
    );
    store
        .persist_step(&fence, done, t0 + ms(1))
        .await
        .expect("persist")
        .expect("fence holds");

    // A slow step: begun while it runs (only under an unexpired lease), then failed.
    let expired = t0 + LEASE + ms(1);
    let late = AttemptStart::new("attempt-late".into(), "slow".into(), 1, t0);
    assert!(
        !store
            .begin_step_attempt(&fence, late, expired)
            .await
            .expect("begin"),
        "an expired lease begins no attempt"
    );
    let start = AttemptStart::new("attempt-b".into(), "slow".into(), 1, t0 + ms(2));
    assert!(
        store
            .begin_step_attempt(&fence, start, t0 + ms(2))
            .await
            .expect("begin")
    );
    // Its metadata is replaced while it runs, only under the lease.
    let metadata = Some(json!({"requestId": "r-1"}));
    assert!(
        store
            .set_step_attempt_metadata(&fence, "attempt-b", metadata.clone(), t0 + ms(2))
            .await
            .expect("set metadata")
    );
    assert!(
        !store
            .set_step_attempt_metadata(&fence, "attempt-b", None, expired)
            .await
            .expect("set metadata"),
        "not after the lease expired"
    );
    let attempts = store.get_step_attempts(&run.id).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1].status, AttemptStatus::Started);
    assert_eq!(attempts[1].metadata, metadata);
    assert_eq!(attempts[1].interruption_reason, None, "still running");
    let failed = with_attempt(
        step("slow", 1, StepStatus::Failed, None, t0 + ms(2)),
        "attempt-b",
        true,
    );
    store
        .persist_step(&fence, failed, t0 + ms(3))
        .await
        .expect("persist")
        .expect("fence holds");

    let attempts = store.get_step_attempts(&run.id).await.expect("attempts");
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a.id.as_str(),
                a.step_name.as_str(),
                a.step_index,
                a.lease_generation,
                a.status,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("attempt-a", "fast", 0, 1, AttemptStatus::Completed),
            ("attempt-b", "slow", 1, 1, AttemptStatus::Failed)
        ]
    );
    assert_eq!(attempts[0].started_at, t0);
    assert_eq!(attempts[0].completed_at, Some(t0 + ms(1)));
    assert_eq!(attempts[1].error.as_deref(), Some("slow failed"));
    assert!(attempts.iter().all(|a| a.interruption_reason.is_none()));

    // A finalized attempt's metadata is final, and it cannot be finalized again: the whole
    // write is refused.
    assert!(
        !store
            .set_step_attempt_metadata(&fence, "attempt-b", None, t0 + ms(3))
            .await
            .expect("set metadata")
    );
    assert_eq!(
        store.get_step_attempts(&run.id).await.expect("attempts")[1].metadata,
        metadata
    );
    let again = with_attempt(
        step("slow", 2, StepStatus::Completed, Some(json!(2)), t0),
        "attempt-b",
        true,
    );
    assert_eq!(
        store
            .persist_step(&fence, again, t0 + ms(4))
            .await
            .expect("persist"),
        None
    );
    assert_eq!(
        store.get_steps(&run.id).await.expect("steps").len(),
        2,
        "nothing written"
    );

    // A stale fence writes no attempt.
    let stale = Fence {
        generation: fence.generation - 1,
        ..fence.clone()
    };
    let start = AttemptStart::new("attempt-stale".into(), "x".into(), 3, t0);
    assert!(
        !store
            .begin_step_attempt(&stale, start, t0 + ms(5))
            .await
            .expect("begin")
    );
    let stale_step = with_attempt(
        step("x", 3, StepStatus::Completed, None, t0),
        "attempt-stale-2",
        false,
    );
    assert_eq!(
        store
            .persist_step(&stale, stale_step, t0 + ms(5))
            .await
            .expect("persist"),
        None
    );
    assert_eq!(
        store
            .get_step_attempts(&run.id)
            .await
            .expect("attempts")
            .len(),
        2
    );
    assert!(
        store
            .get_step_attempts("no-such-run")
            .await
            .expect("attempts")
            .is_empty()
    );
}

/// Contract: a `started` attempt's interruption reason follows the run (lease lost to a
/// takeover, cancelled), attempts survive the end of their run and go with its deletion.
pub async fn step_attempts_explain_interruptions_and_go_only_with_their_run(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    enqueue(&store, new_run("job", json!({})), t0).await;
    let first = claim(&store, "w1", t0, ms(100)).await.expect("claimed");
    let start = AttemptStart::new("attempt-1".into(), "work".into(), 0, t0);
    assert!(
        store
            .begin_step_attempt(&Fence::of(&first), start, t0)
            .await
            .expect("begin")
    );
    // The worker freezes; another takes the run over.
    let later = t0 + ms(200);
    let second = claim(&store, "w2", later, LEASE).await.expect("taken over");
    assert_eq!(second.id, first.id);
    let attempts = store.get_step_attempts(&first.id).await.expect("attempts");
    assert_eq!(
        attempts[0].interruption_reason,
        Some(InterruptionReason::LeaseLost)
    );
    let start = AttemptStart::new("attempt-2".into(), "work".into(), 0, later);
    assert!(
        store
            .begin_step_attempt(&Fence::of(&second), start, later)
            .await
            .expect("begin")
    );
    assert!(
        store
            .cancel_run(&first.id, later + ms(1))
            .await
            .expect("cancel")
    );
    let attempts = store.get_step_attempts(&first.id).await.expect("attempts");
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.interruption_reason)
            .collect::<Vec<_>>(),
        [
            Some(InterruptionReason::LeaseLost),
            Some(InterruptionReason::Cancelled)
        ]
    );
    // Cancel cleanup drops steps, never attempts; deleting the run drops them.
    assert!(store.delete_run(&first.id).await.expect("delete"));
    assert!(
        store
            .get_step_attempts(&first.id)
            .await
            .expect("attempts")
            .is_empty()
    );
}
