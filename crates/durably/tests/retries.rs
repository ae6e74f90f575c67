//! Per-step retries (`StepContext::run_retrying` with a `RetryPolicy`): attempts until one
//! succeeds, attempts used up, non-retryable errors, per-attempt timeouts, long delays that
//! suspend the run without a slot, and backoff schedules honoured under a virtual clock.
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestDb, backend_tests, eventually, terminal};
use durably::testing::{MemoryStore, use_virtual_wall_clock};
use durably::{
    AttemptStatus, Durably, Error, Job, NonRetryable, RetryPolicy, RunStatus, StepContext,
    StepOptions, StepStatus, Timestamp, WaitStatus,
};
use serde_json::{Value, json};

/// When each attempt of the `flaky` step started (wall clock), across executions.
type Started = Arc<Mutex<Vec<Timestamp>>>;

/// A step `before`, then `flaky` with `policy`: attempt n fails with `attempt n failed` while
/// n <= `fail_times` (with a `NonRetryable` error when `permanent`); the attempt whose number
/// is in `hang` hangs. Output `{ "attempts": n }`.
fn flaky(
    policy: RetryPolicy,
    timeout: Option<Duration>,
    fail_times: u32,
    permanent: bool,
    hang: Option<u32>,
    started: Started,
    before_ran: Started,
) -> Job<Value, Value> {
    Job::new("flaky", move |step: StepContext, _input: Value| {
        let (policy, started, before_ran) = (policy.clone(), started.clone(), before_ran.clone());
        async move {
            step.run("before", |_| async move {
                before_ran.lock().expect("lock").push(Timestamp::now());
                Ok(())
            })
            .await?;
            let mut options = StepOptions::new().retry(policy);
            if let Some(timeout) = timeout {
                options = options.timeout(timeout);
            }
            let attempts = step
                .run_retrying("flaky", options, |attempt| {
                    let started = started.clone();
                    async move {
                        let n = attempt.number();
                        started.lock().expect("lock").push(Timestamp::now());
                        if hang == Some(n) {
                            std::future::pending::<()>().await;
                        }
                        if n <= fail_times {
                            let message = format!("attempt {n} failed");
                            return Err(if permanent {
                                NonRetryable::new(message).into()
                            } else {
                                message.into()
                            });
                        }
                        Ok(n)
                    }
                })
                .await?;
            Ok(json!({ "attempts": attempts }))
        }
    })
}

fn echo() -> Job<Value, Value> {
    Job::new("echo", |step: StepContext, input: Value| async move {
        step.run("echo", |_| async move { Ok(input) }).await
    })
}

fn count(times: &Started) -> usize {
    times.lock().expect("lock").len()
}

/// Two failed attempts, then a success: the run completes with the third attempt's output,
/// every attempt is recorded with its error, and the step before ran once.
async fn a_failing_step_is_retried_until_an_attempt_succeeds(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let (started, before) = (Started::default(), Started::default());
    let policy = RetryPolicy::constant(5, Duration::from_millis(10));
    let job = durably
        .register(flaky(
            policy,
            None,
            2,
            false,
            None,
            started.clone(),
            before.clone(),
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({ "attempts": 3 })));
    assert_eq!((count(&started), count(&before)), (3, 1));
    let steps = durably.get_steps(&id).await.expect("steps");
    let flaky: Vec<_> = steps.iter().filter(|s| s.name == "flaky").collect();
    assert_eq!(
        flaky.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![
            StepStatus::Failed,
            StepStatus::Failed,
            StepStatus::Completed
        ]
    );
    assert_eq!(flaky[1].error.as_deref(), Some("attempt 2 failed"));
    let attempts = durably.get_step_attempts(&id).await.expect("attempts");
    let flaky: Vec<_> = attempts.iter().filter(|a| a.step_name == "flaky").collect();
    assert_eq!(
        flaky.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![
            AttemptStatus::Failed,
            AttemptStatus::Failed,
            AttemptStatus::Completed
        ]
    );
    durably.stop().await;
}

/// When every attempt fails the run fails with the last attempt's error; the function ran
/// exactly `max_attempts` times.
async fn the_run_fails_with_the_last_error_when_attempts_run_out(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (started, before) = (Started::default(), Started::default());
    let policy = RetryPolicy::exponential(3, Duration::from_millis(5));
    let job = durably
        .register(flaky(
            policy,
            None,
            20,
            false,
            None,
            started.clone(),
            before,
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("attempt 3 failed"));
    assert_eq!(count(&started), 3);
    durably.stop().await;
}

/// A `NonRetryable` error ends the step at its first attempt, whatever the policy.
async fn a_non_retryable_error_is_not_retried(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (started, before) = (Started::default(), Started::default());
    let policy = RetryPolicy::constant(5, Duration::from_millis(5));
    let job = durably
        .register(flaky(policy, None, 20, true, None, started.clone(), before))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("attempt 1 failed"));
    assert_eq!(count(&started), 1);
    durably.stop().await;
}

/// An attempt that outlives its timeout fails (its future dropped) and the next one runs.
async fn an_attempt_past_its_timeout_fails_and_the_next_one_runs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let (started, before) = (Started::default(), Started::default());
    let policy = RetryPolicy::constant(3, Duration::ZERO);
    let timeout = Some(Duration::from_millis(200));
    let job = durably
        .register(flaky(
            policy,
            timeout,
            0,
            false,
            Some(1),
            started.clone(),
            before,
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({ "attempts": 2 })));
    let steps = durably.get_steps(&id).await.expect("steps");
    let failed = steps
        .iter()
        .find(|s| s.status == StepStatus::Failed)
        .expect("the timed-out attempt");
    assert_eq!(
        failed.error.as_deref(),
        Some("step \"flaky\" attempt 1 timed out after 200ms")
    );
    durably.stop().await;
}

/// A delay longer than `suspend_longer_than` suspends the run on a durable timer: `waiting`,
/// no lease, no slot (another run completes on the only slot meanwhile); the timer's wait
/// says why; when it is over the run resumes, its completed step replayed.
async fn a_long_delay_suspends_the_run_without_holding_its_slot(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| {
            b.max_concurrent_runs(1)
                .polling_interval(Duration::from_millis(50))
        })
        .await;
    let (started, before) = (Started::default(), Started::default());
    let policy = RetryPolicy::constant(2, Duration::from_millis(1500))
        .suspend_longer_than(Duration::from_millis(500));
    let job = durably
        .register(flaky(
            policy,
            None,
            1,
            false,
            None,
            started.clone(),
            before.clone(),
        ))
        .expect("register");
    let echo = durably.register(echo()).expect("register echo");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let waiting = eventually("the run waits out its delay", common::LIMIT, || async {
        durably
            .get_run(&id)
            .await
            .expect("get_run")
            .filter(|run| run.status == RunStatus::Waiting)
    })
    .await;
    assert_eq!(waiting.lease_owner, None);
    let waits = durably.get_waits(&id).await.expect("waits");
    assert_eq!(waits.len(), 1);
    assert_eq!(
        (waits[0].name.as_str(), waits[0].status),
        ("retry:flaky:1", WaitStatus::Pending)
    );
    let metadata = waits[0].metadata.clone().expect("metadata");
    assert_eq!(metadata["durably"]["kind"], json!("retry"));
    assert_eq!(metadata["durably"]["error"], json!("attempt 1 failed"));
    let deadline = waits[0].deadline_at.expect("deadline");

    let other = echo.trigger(json!(1)).await.expect("trigger echo").run.id;
    assert_eq!(
        terminal(&durably, &other).await.status,
        RunStatus::Completed
    );

    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({ "attempts": 2 })));
    assert_eq!((count(&started), count(&before)), (2, 1));
    let second = started.lock().expect("lock")[1];
    assert!(
        second >= deadline,
        "the second attempt waited for its delay"
    );
    durably.stop().await;
}

/// A job whose run is retried: a step `before`, then a step `work` failing with `execution n
/// failed` for the first `fail_times` executions.
fn retried_run(
    policy: RetryPolicy,
    fail_times: usize,
    before: Started,
    work: Started,
) -> Job<Value, Value> {
    Job::new("retried", move |step: StepContext, _input: Value| {
        let (before, work) = (before.clone(), work.clone());
        async move {
            step.run("before", |_| async move {
                before.lock().expect("lock").push(Timestamp::now());
                Ok(())
            })
            .await?;
            let n = step
                .run("work", |_| async move {
                    let mut work = work.lock().expect("lock");
                    work.push(Timestamp::now());
                    let n = work.len();
                    if n <= fail_times {
                        return Err(Error::Job(format!("execution {n} failed").into()).into());
                    }
                    Ok(n)
                })
                .await?;
            Ok(json!({ "executions": n }))
        }
    })
    .retry(policy)
}

/// A failed run is executed again from the top after its delay, its completed step replayed;
/// each failed attempt's error stays on its timer (`run-retry:<n>`).
async fn a_failed_run_is_retried_with_its_completed_steps_replayed(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.polling_interval(Duration::from_millis(50)))
        .await;
    let (before, work) = (Started::default(), Started::default());
    let policy = RetryPolicy::constant(3, Duration::from_millis(20));
    let job = durably
        .register(retried_run(policy, 2, before.clone(), work.clone()))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({ "executions": 3 })));
    assert_eq!((count(&before), count(&work)), (1, 3));
    let waits = durably.get_waits(&id).await.expect("waits");
    let errors: Vec<_> = waits
        .iter()
        .map(|w| {
            (
                w.name.clone(),
                w.metadata.clone().expect("metadata")["durably"]["error"].clone(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            ("run-retry:1".to_owned(), json!("execution 1 failed")),
            ("run-retry:2".to_owned(), json!("execution 2 failed")),
        ]
    );
    durably.stop().await;
}

/// When every attempt fails the run fails with the last error, after exactly `max_attempts`
/// executions.
async fn a_retried_run_fails_with_the_last_error_when_its_attempts_run_out(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.polling_interval(Duration::from_millis(50)))
        .await;
    let (before, work) = (Started::default(), Started::default());
    let policy = RetryPolicy::constant(2, Duration::from_millis(20));
    let job = durably
        .register(retried_run(policy, 10, before.clone(), work.clone()))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("execution 2 failed"));
    assert_eq!((count(&before), count(&work)), (1, 2));
    durably.stop().await;
}

/// A run retry without a delay: the timer's deadline (1 ms) has often passed by the time the
/// failed execution asks to be suspended on it; the run is retried all the same (the next
/// attempt starts at once), never failed early. Many runs, so that some hit that window.
async fn a_run_retry_whose_delay_already_passed_still_runs_the_next_attempt(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.polling_interval(Duration::from_millis(50)))
        .await;
    let executions = Arc::new(Mutex::new(HashMap::<u64, usize>::new()));
    let counted = executions.clone();
    let job = durably
        .register(
            Job::new("retried-at-once", move |step: StepContext, input: Value| {
                let counted = counted.clone();
                async move {
                    let n = input["n"].as_u64().unwrap_or_default();
                    let execution = {
                        let mut counted = counted.lock().expect("lock");
                        let count = counted.entry(n).or_default();
                        *count += 1;
                        *count
                    };
                    step.run("touch", |_| async { Ok(()) }).await?;
                    if execution == 1 {
                        return Err(Error::Job("first execution fails".into()));
                    }
                    Ok(json!({ "executions": execution }))
                }
            })
            .retry(RetryPolicy::constant(2, Duration::ZERO)),
        )
        .expect("register");
    durably.start();
    let mut ids = Vec::new();
    for n in 0..30u64 {
        ids.push(
            job.trigger(json!({ "n": n }))
                .await
                .expect("trigger")
                .run
                .id,
        );
    }
    for id in &ids {
        let run = terminal(&durably, id).await;
        assert_eq!(
            run.status,
            RunStatus::Completed,
            "run {id}: {:?}",
            run.error
        );
        assert_eq!(run.output, Some(json!({ "executions": 2 })));
    }
    durably.stop().await;
}

backend_tests!(
    a_run_retry_whose_delay_already_passed_still_runs_the_next_attempt,
    a_failed_run_is_retried_with_its_completed_steps_replayed,
    a_retried_run_fails_with_the_last_error_when_its_attempts_run_out,
    a_failing_step_is_retried_until_an_attempt_succeeds,
    the_run_fails_with_the_last_error_when_attempts_run_out,
    a_non_retryable_error_is_not_retried,
    an_attempt_past_its_timeout_fails_and_the_next_one_runs,
    a_long_delay_suspends_the_run_without_holding_its_slot,
);

/// Under a virtual clock: the attempts start exactly when the exponential backoff says (in
/// process), and a delay that suspends the run is honoured to within a polling interval.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn backoff_schedules_are_honoured_under_a_virtual_clock() {
    const START: i64 = 1_800_000_000_000;
    use_virtual_wall_clock(Timestamp::from_millis(START));
    let durably = Durably::builder()
        .store(MemoryStore::new())
        .build()
        .expect("build");
    durably.migrate().await.expect("migrate");
    let (started, before) = (Started::default(), Started::default());
    // 1 s, 2 s, 4 s in process; then 60 s (over the 10 s threshold) suspended.
    let policy =
        RetryPolicy::exponential(6, Duration::from_secs(1)).max_delay(Duration::from_secs(60));
    let job = durably
        .register(flaky(policy, None, 5, false, None, started.clone(), before))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = loop {
        let run = durably.get_run(&id).await.expect("get").expect("run");
        if run.status.is_terminal() {
            break run;
        }
        assert!(
            Timestamp::now().as_millis() - START < 600_000,
            "not done within 10 minutes of virtual time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({ "attempts": 6 })));
    let times: Vec<i64> = started
        .lock()
        .expect("lock")
        .iter()
        .map(|t| t.as_millis())
        .collect();
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // In process: exactly the backoff (plus the store's virtual instant writes).
    for (gap, want) in gaps.iter().zip([1_000, 2_000, 4_000, 8_000]) {
        assert!(
            (want..want + 50).contains(gap),
            "gaps {gaps:?}: expected about {want} ms"
        );
    }
    // 16 s > 10 s: suspended, resumed by the expiry sweep within a polling interval (1 s).
    assert!(
        (16_000..16_000 + 1_100).contains(&gaps[4]),
        "gaps {gaps:?}: expected 16 s to within a polling interval"
    );
    durably.stop().await;
}
