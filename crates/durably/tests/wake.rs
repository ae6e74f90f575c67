//! `Durably::wake` ("run now" / "retry now", issue 22 item 8): a run waiting on a timer (a
//! delay, a retry backoff) starts or continues at once; a run waiting for a signal, a run not
//! waiting and an unknown run are refused, nothing changed. On SQLite and PostgreSQL.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Backend, TestDb, backend_tests, terminal, waiting};
use durably::{
    Error, Job, NewWait, RetryPolicy, RunStatus, StepContext, StepOptions, TimerKind,
    TriggerOptions, WaitStatus,
};
use serde_json::{Value, json};

fn echo() -> Job<Value, Value> {
    Job::new("echo", |step: StepContext, input: Value| async move {
        step.run("echo", |_| async move { Ok(input) }).await
    })
}

/// Step `charge` fails its first attempt, then succeeds; retried after an hour, the backoff
/// suspending the run on a timer.
fn charge(attempts: Arc<AtomicU32>) -> Job<Value, Value> {
    Job::new("charge", move |step: StepContext, _input: Value| {
        let attempts = attempts.clone();
        async move {
            let policy = RetryPolicy::constant(2, Duration::from_secs(3600))
                .suspend_longer_than(Duration::from_millis(1));
            let n = step
                .run_retrying("charge", StepOptions::new().retry(policy), |attempt| {
                    let attempts = attempts.clone();
                    async move {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        match attempt.number() {
                            1 => Err(Error::Job("card declined".into()).into()),
                            n => Ok(n),
                        }
                    }
                })
                .await?;
            Ok(json!({ "attempt": n }))
        }
    })
}

fn approval() -> Job<Value, Value> {
    Job::new("approval", |step: StepContext, _input: Value| async move {
        let wait = step.prepare_wait(NewWait::new("approval")).await?;
        step.wait_for(&wait).await?;
        Ok(Value::Null)
    })
}

/// A run delayed by an hour, woken, starts at once and completes; its delay wait was
/// resolved by the signal `wake`.
async fn a_woken_delayed_run_starts_now(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably.register(echo()).expect("register");
    durably.start();
    let run = job
        .trigger_with(
            json!({"v": 1}),
            TriggerOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .expect("trigger")
        .run;
    let woken = durably.wake(&run.id).await.expect("wake");
    assert_eq!(woken.id, run.id);
    let done = terminal(&durably, &run.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!({"v": 1})));
    let waits = durably.get_waits(&run.id).await.expect("waits");
    assert_eq!(waits.len(), 1);
    assert_eq!(waits[0].status, WaitStatus::Resolved);
    assert_eq!(waits[0].signal_id.as_deref(), Some("wake"));
    durably.stop().await;
}

/// A run in an hour-long step-retry backoff, woken, runs its next attempt now.
async fn a_woken_retry_backoff_runs_the_next_attempt_now(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let attempts = Arc::new(AtomicU32::new(0));
    let job = durably
        .register(charge(attempts.clone()))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let suspended = waiting(&durably, &id).await;
    let waits = durably.get_waits(&id).await.expect("waits");
    let timer = waits
        .iter()
        .find(|w| Some(&w.id) == suspended.waiting_on_wait_id.as_ref())
        .expect("the wait it waits on");
    let kind = TimerKind::of(timer).expect("a timer");
    assert!(kind.is_retry());
    assert_eq!(kind.short(), "retry 2/2");
    let why = durably::waits::why_waiting(timer);
    assert!(
        why.starts_with("step charge: attempt 2 of 2 at ") && why.contains("card declined"),
        "{why}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    durably.wake(&id).await.expect("wake");
    let done = terminal(&durably, &id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!({"attempt": 2})));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    durably.stop().await;
}

/// A run whose first execution failed, in an hour-long run-retry backoff (`Job::retry`),
/// woken, runs its second attempt now and completes.
async fn a_woken_run_retry_runs_the_next_attempt_now(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let executions = Arc::new(AtomicU32::new(0));
    let counted = executions.clone();
    let job = durably
        .register(
            Job::new("flaky", move |_step: StepContext, _input: Value| {
                let counted = counted.clone();
                async move {
                    match counted.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(Error::Job("service down".into())),
                        n => Ok(json!({ "execution": n + 1 })),
                    }
                }
            })
            .retry(RetryPolicy::constant(3, Duration::from_secs(3600))),
        )
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let suspended = waiting(&durably, &id).await;
    let waits = durably.get_waits(&id).await.expect("waits");
    let timer = waits
        .iter()
        .find(|w| Some(&w.id) == suspended.waiting_on_wait_id.as_ref())
        .expect("the wait it waits on");
    let why = durably::waits::why_waiting(timer);
    assert!(
        why.starts_with("run attempt 2 of 3 at ") && why.ends_with("last error: service down"),
        "{why}"
    );

    durably.wake(&id).await.expect("wake");
    let done = terminal(&durably, &id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!({"execution": 2})));
    durably.stop().await;
}

/// A run waiting for a signal, a completed run and an unknown run are refused; the waiting
/// run's wait stays pending.
async fn wake_refuses_runs_not_waiting_on_a_timer(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let approval = durably.register(approval()).expect("register");
    let echo = durably.register(echo()).expect("register echo");
    durably.start();
    let id = approval.trigger(json!({})).await.expect("trigger").run.id;
    waiting(&durably, &id).await;
    match durably.wake(&id).await {
        Err(Error::Conflict(message)) => assert!(
            message.contains("signal approval") && message.contains("signal that wait"),
            "{message}"
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let waits = durably.get_waits(&id).await.expect("waits");
    assert_eq!(waits[0].status, WaitStatus::Pending);
    assert_eq!(
        durably
            .get_run(&id)
            .await
            .expect("get")
            .expect("run")
            .status,
        RunStatus::Waiting
    );

    let done = echo.trigger(json!(1)).await.expect("trigger").run.id;
    assert_eq!(terminal(&durably, &done).await.status, RunStatus::Completed);
    match durably.wake(&done).await {
        Err(Error::Conflict(message)) => {
            assert!(
                message.contains("completed") && message.contains(&done),
                "{message}"
            )
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        durably.wake("01J0000000000000000000UNKNOWN").await,
        Err(Error::NotFound(_))
    ));
    durably.stop().await;
}

backend_tests!(
    a_woken_delayed_run_starts_now,
    a_woken_retry_backoff_runs_the_next_attempt_now,
    a_woken_run_retry_runs_the_next_attempt_now,
    wake_refuses_runs_not_waiting_on_a_timer,
);
