//! Step attempts through the engine (upstream schema v2): one record per real execution of a
//! step's function, none for a replay; a slow step is recorded `started` while it runs; the
//! records outlive the run's checkpoints and say why an attempt never ended.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, LIMIT, TestDb, backend_tests, eventually, terminal};
use durably::{
    AttemptStatus, InterruptionReason, Job, RunStatus, StepAttempt, StepContext, StepOptions,
    Tuning,
};
use serde_json::{Value, json};

fn summary(attempts: &[StepAttempt]) -> Vec<(String, i64, AttemptStatus)> {
    attempts
        .iter()
        .map(|a| (a.step_name.clone(), a.step_index, a.status))
        .collect()
}

/// Two steps, the second failing: one attempt each with its outcome, kept after the run failed
/// (a failed run keeps its checkpoints too, for a resume, whatever the step policy), so a
/// failed run shows which step failed and why.
async fn each_execution_of_a_step_is_one_attempt_kept_after_the_run_ends(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "two-steps",
            |step: StepContext, _input: Value| async move {
                step.run("fetch", |_| async { Ok(1) }).await?;
                step.run("charge", |_| async {
                    Err::<i64, _>(durably::Error::Validation("card declined".into()).into())
                })
                .await?;
                Ok(json!({}))
            },
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    let steps = durably.get_steps(&id).await.expect("steps");
    assert!(
        steps
            .iter()
            .any(|s| s.name == "fetch" && s.status == durably::StepStatus::Completed),
        "checkpoints of a failed run kept for a resume: {steps:?}"
    );
    let attempts = durably.get_step_attempts(&id).await.expect("attempts");
    assert_eq!(
        summary(&attempts),
        [
            ("fetch".to_string(), 0, AttemptStatus::Completed),
            ("charge".to_string(), 1, AttemptStatus::Failed)
        ]
    );
    assert!(
        attempts[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("card declined")),
        "{attempts:?}"
    );
    assert!(attempts.iter().all(|a| a.lease_generation == 1
        && a.completed_at.is_some()
        && a.interruption_reason.is_none()));
    durably.stop().await;
}

/// A run resumed after its worker lost the lease replays its completed step (no new attempt)
/// and executes the rest under the new generation; the lost worker's `started` attempt says
/// `lease-lost`.
async fn a_replayed_step_makes_no_attempt_and_an_abandoned_one_says_lease_lost(backend: Backend) {
    let db = TestDb::new(backend);
    let executions = Arc::new(AtomicUsize::new(0));
    let job = || {
        let executions = executions.clone();
        Job::new("resumable", move |step: StepContext, _input: Value| {
            let executions = executions.clone();
            async move {
                step.run("first", |_| async { Ok(1) }).await?;
                step.run("second", |_| async move {
                    if executions.fetch_add(1, Ordering::SeqCst) == 0 {
                        // The first execution hangs here until it is abandoned.
                        std::future::pending::<()>().await;
                    }
                    Ok(2)
                })
                .await?;
                Ok(json!("done"))
            }
        })
    };
    let configure = |b: durably::DurablyBuilder| {
        b.lease_duration(Duration::from_millis(500))
            .tuning(Tuning::new().attempt_record_delay(Duration::from_millis(10)))
    };
    let lost = db.durably(configure).await;
    let handle = lost.register(job()).expect("register");
    lost.start();
    let id = handle.trigger(json!({})).await.expect("trigger").run.id;
    // The hanging step is recorded as started while it runs.
    eventually("the slow step's attempt is recorded", LIMIT, || async {
        let attempts = lost.get_step_attempts(&id).await.expect("attempts");
        (attempts.len() == 2 && attempts[1].status == AttemptStatus::Started).then_some(())
    })
    .await;
    assert!(
        !lost.stop_within(Duration::ZERO).await,
        "the run was abandoned, not finished"
    );

    let rescuer = db.durably(configure).await;
    rescuer.register(job()).expect("register");
    rescuer.start();
    let run = terminal(&rescuer, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    let attempts = rescuer.get_step_attempts(&id).await.expect("attempts");
    assert_eq!(
        summary(&attempts),
        [
            ("first".to_string(), 0, AttemptStatus::Completed),
            ("second".to_string(), 1, AttemptStatus::Started),
            ("second".to_string(), 1, AttemptStatus::Completed)
        ],
        "the first step replayed without an attempt"
    );
    assert_eq!(
        attempts[1].interruption_reason,
        Some(InterruptionReason::LeaseLost)
    );
    assert!(attempts[2].lease_generation > attempts[1].lease_generation);
    rescuer.stop().await;
}

/// With `attempt_record_delay` zero, as upstream, the `started` row exists before the function
/// runs.
async fn a_zero_delay_records_the_attempt_before_the_function_starts(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.tuning(Tuning::new().attempt_record_delay(Duration::ZERO)))
        .await;
    let reader = durably.clone();
    let job = durably
        .register(Job::new(
            "recorded-first",
            move |step: StepContext, _input: Value| {
                let reader = reader.clone();
                async move {
                    let run_id = step.run_id().to_owned();
                    let seen = step
                        .run("look", |_| async move {
                            let attempts = reader.get_step_attempts(&run_id).await?;
                            Ok(attempts
                                .iter()
                                .map(|a| a.status.as_str().to_owned())
                                .collect::<Vec<_>>())
                        })
                        .await?;
                    Ok(json!(seen))
                }
            },
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.output, Some(json!(["started"])));
    let attempts = durably.get_step_attempts(&id).await.expect("attempts");
    assert_eq!(
        summary(&attempts),
        [("look".to_string(), 0, AttemptStatus::Completed)]
    );
    durably.stop().await;
}

/// Metadata given in the step's options starts each attempt; metadata the function sets is
/// stored before `set_metadata` returns (even within the record delay) and kept with the
/// attempt after the run ends.
async fn attempt_metadata_is_stored_while_the_step_runs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let reader = durably.clone();
    let job = durably
        .register(Job::new(
            "with-metadata",
            move |step: StepContext, _input: Value| {
                let reader = reader.clone();
                async move {
                    let run_id = step.run_id().to_owned();
                    let seen = step
                        .run_with(
                            "charge",
                            StepOptions::new().metadata(json!({"provider": "acme"})),
                            |attempt| async move {
                                assert_eq!(attempt.metadata(), Some(json!({"provider": "acme"})));
                                attempt
                                    .set_metadata(json!({"provider": "acme", "requestId": "r-1"}))
                                    .await?;
                                let stored = reader.get_step_attempts(&run_id).await?;
                                Ok(stored[0].metadata.clone())
                            },
                        )
                        .await?;
                    step.run_with(
                        "notify",
                        StepOptions::new().metadata(json!({"channel": "email"})),
                        |_| async { Ok(()) },
                    )
                    .await?;
                    Ok(json!({ "seen": seen }))
                }
            },
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(
        run.output,
        Some(json!({"seen": {"provider": "acme", "requestId": "r-1"}})),
        "stored before set_metadata returned"
    );
    let attempts = durably.get_step_attempts(&id).await.expect("attempts");
    let metadata: Vec<_> = attempts.iter().map(|a| a.metadata.clone()).collect();
    assert_eq!(
        metadata,
        [
            Some(json!({"provider": "acme", "requestId": "r-1"})),
            Some(json!({"channel": "email"}))
        ]
    );
    durably.stop().await;
}

backend_tests!(
    each_execution_of_a_step_is_one_attempt_kept_after_the_run_ends,
    a_replayed_step_makes_no_attempt_and_an_abandoned_one_says_lease_lost,
    a_zero_delay_records_the_attempt_before_the_function_starts,
    attempt_metadata_is_stored_while_the_step_runs,
);
