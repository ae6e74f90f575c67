//! `wait_for_run` and `trigger_and_wait`: settling on completion, failure, cancellation and
//! deletion, timeouts, live progress/log callbacks, and waits across two instances on one
//! database (upstream run-api waits, wait-for-run cross-runtime).
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Gate, Instrumented, LIMIT, TestDb, backend_tests, eventually, within};
use durably::{
    Coalesce, Disposition, Durably, Error, EventType, Job, LogEntry, LogLevel, Progress, RunFilter,
    RunStatus, StepContext, Timestamp, TriggerOptions, WaitOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Input {
    value: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Output {
    result: i64,
}

/// Doubles `value`; a negative value fails the run with `wait-for-run failure`.
fn doubler(name: &str) -> Job<Input, Output> {
    Job::new(name, |step: StepContext, input: Input| async move {
        let result = step
            .run("double", |_| async move { Ok(input.value * 2) })
            .await?;
        if input.value < 0 {
            return Err(Error::Job("wait-for-run failure".into()));
        }
        Ok(Output { result })
    })
}

fn register_doubler(durably: &Durably, name: &str) -> durably::JobHandle<Input, Output> {
    durably.register(doubler(name)).unwrap()
}

async fn wait_for_run_resolves_with_the_completed_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = register_doubler(&durably, "wait-ok");
    durably.start();
    let id = job.trigger(Input { value: 21 }).await.unwrap().run.id;
    let run = within(
        "wait_for_run",
        LIMIT,
        durably.wait_for_run(&id, WaitOptions::new()),
    )
    .await
    .unwrap();
    assert_eq!(run.id, id);
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"result": 42})));
    durably.stop().await;
}

async fn in_process_completion_settles_without_polling(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = register_doubler(&durably, "wait-event");
    let id = job.trigger(Input { value: 1 }).await.unwrap().run.id;
    let waiting = {
        let (durably, id) = (durably.clone(), id.clone());
        tokio::spawn(async move {
            durably
                .wait_for_run(
                    &id,
                    WaitOptions::new().polling_interval(Duration::from_secs(60)),
                )
                .await
        })
    };
    durably.start();
    let run = within(
        "settles on the in-process event",
        Duration::from_secs(5),
        waiting,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    let done = within(
        "trigger_and_wait with a 60 s poll",
        Duration::from_secs(5),
        job.trigger_and_wait(
            Input { value: 2 },
            TriggerOptions::new(),
            WaitOptions::new().polling_interval(Duration::from_secs(60)),
        ),
    )
    .await
    .unwrap();
    assert_eq!(done.output, Some(Output { result: 4 }));
    durably.stop().await;
}

async fn failed_run_rejects_with_its_error(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = register_doubler(&durably, "wait-fail");
    durably.start();
    let id = job.trigger(Input { value: -1 }).await.unwrap().run.id;
    let error = within(
        "wait_for_run",
        LIMIT,
        durably.wait_for_run(&id, WaitOptions::new()),
    )
    .await
    .unwrap_err();
    match &error {
        Error::RunFailed { run_id, message } => {
            assert_eq!(run_id, &id);
            assert_eq!(message, "wait-for-run failure");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(error.to_string(), "wait-for-run failure");
    let stored = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(stored.error.as_deref(), Some("wait-for-run failure"));

    let error = within(
        "trigger_and_wait",
        LIMIT,
        job.trigger_and_wait(
            Input { value: -2 },
            TriggerOptions::new(),
            WaitOptions::new(),
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, Error::RunFailed { message, .. } if message == "wait-for-run failure"),
        "{error:?}"
    );
    durably.stop().await;
}

async fn cancel_while_leased_rejects_waits(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    let job = {
        let (entered, gate) = (entered.clone(), gate.clone());
        durably
            .register(Job::new("wait-cancel", move |step: StepContext, n: u64| {
                let (entered, gate) = (entered.clone(), gate.clone());
                async move {
                    step.run("blocked", |token| async move {
                        entered.open();
                        tokio::select! {
                            _ = gate.wait() => {}
                            _ = token.cancelled() => {}
                        }
                        Ok(n)
                    })
                    .await
                }
            }))
            .unwrap()
    };
    durably.start();
    let waiting = {
        let job = job.clone();
        tokio::spawn(async move {
            job.trigger_and_wait(1, TriggerOptions::new(), WaitOptions::new())
                .await
        })
    };
    within("run starts", LIMIT, entered.wait()).await;
    let leased = durably
        .get_runs(&RunFilter::new().status(RunStatus::Leased))
        .await
        .unwrap()
        .remove(0);
    let waiter = {
        let (durably, id) = (durably.clone(), leased.id.clone());
        tokio::spawn(async move { durably.wait_for_run(&id, WaitOptions::new()).await })
    };
    durably.cancel(&leased.id).await.unwrap();
    let from_trigger = within("trigger_and_wait settles", LIMIT, waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(from_trigger.is_cancelled(), "{from_trigger:?}");
    let from_wait = within("wait_for_run settles", LIMIT, waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&from_wait, Error::Cancelled { run_id } if *run_id == leased.id),
        "{from_wait:?}"
    );
    gate.open();
    durably.stop().await;
    let again = durably
        .wait_for_run(&leased.id, WaitOptions::new())
        .await
        .unwrap_err();
    assert!(again.is_cancelled());
}

async fn unknown_run_is_not_found(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let error = durably
        .wait_for_run("01NOSUCHRUN0000000000000000", WaitOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        "Run not found: 01NOSUCHRUN0000000000000000"
    );
}

async fn timeouts_reject_and_leave_the_run_alone(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = register_doubler(&durably, "wait-timeout");
    let id = job.trigger(Input { value: 1 }).await.unwrap().run.id;
    let error = within(
        "wait_for_run times out",
        LIMIT,
        durably.wait_for_run(&id, WaitOptions::new().timeout(Duration::from_millis(80))),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Timeout(_)), "{error:?}");
    assert_eq!(error.to_string(), "waitForRun timeout after 80ms");

    let error = within(
        "wait_for_run with polling times out",
        LIMIT,
        durably.wait_for_run(
            &id,
            WaitOptions::new()
                .timeout(Duration::from_millis(80))
                .polling_interval(Duration::from_millis(30)),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(error.to_string(), "waitForRun timeout after 80ms");

    let error = within(
        "trigger_and_wait times out",
        LIMIT,
        job.trigger_and_wait(
            Input { value: 2 },
            TriggerOptions::new(),
            WaitOptions::new().timeout(Duration::from_millis(100)),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Timeout(_)), "{error:?}");
    assert!(
        error.to_string().starts_with("triggerAndWait timeout"),
        "{error}"
    );
    assert_eq!(error.to_string(), "triggerAndWait timeout after 100ms");

    // Timing out does not touch the runs: both are still pending and run normally.
    let pending = durably
        .get_runs(&RunFilter::new().status(RunStatus::Pending))
        .await
        .unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(durably.process_until_idle(None, None).await.unwrap(), 2);
    let run = durably.wait_for_run(&id, WaitOptions::new()).await.unwrap();
    assert_eq!(run.output, Some(json!({"result": 2})));
}

async fn zero_polling_interval_is_rejected(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = register_doubler(&durably, "wait-zero");
    let id = job.trigger(Input { value: 1 }).await.unwrap().run.id;
    let error = durably
        .wait_for_run(&id, WaitOptions::new().polling_interval(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Validation(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        "pollingIntervalMs must be a positive finite number"
    );
    let error = job
        .trigger_and_wait(
            Input { value: 1 },
            TriggerOptions::new(),
            WaitOptions::new().polling_interval(Duration::ZERO),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Validation(_)), "{error:?}");
}

/// Reports three progress values and three logs, after `gate` opens.
fn reporting_job(name: &str, gate: &Gate) -> Job<Value, Value> {
    let gate = gate.clone();
    Job::new(name, move |step: StepContext, _: Value| {
        let gate = gate.clone();
        async move {
            gate.wait().await;
            step.log().info("Starting", None).await?;
            step.progress(1, Some(3), Some("Step 1")).await?;
            step.run("middle", |_| async { Ok(()) }).await?;
            step.progress(2, Some(3), Some("Step 2")).await?;
            step.log().warn("Almost done", None).await?;
            step.progress(3, Some(3), Some("Done")).await?;
            step.log()
                .error("Something went wrong", json!({"code": 42}))
                .await?;
            Ok(json!("reported"))
        }
    })
}

type Calls<T> = Arc<Mutex<Vec<T>>>;

fn callbacks() -> (WaitOptions, Calls<Progress>, Calls<LogEntry>) {
    let progress: Calls<Progress> = Arc::default();
    let logs: Calls<LogEntry> = Arc::default();
    let options = {
        let (progress, logs) = (progress.clone(), logs.clone());
        WaitOptions::new()
            .on_progress(move |p| progress.lock().unwrap().push(p.clone()))
            .on_log(move |l| logs.lock().unwrap().push(l.clone()))
    };
    (options, progress, logs)
}

fn assert_reported(progress: &Calls<Progress>, logs: &Calls<LogEntry>) {
    let p = |current, message: &str| Progress {
        current,
        total: Some(3),
        message: Some(message.into()),
    };
    assert_eq!(
        *progress.lock().unwrap(),
        [p(1, "Step 1"), p(2, "Step 2"), p(3, "Done")]
    );
    let l = |level, message: &str, data: Option<Value>| (level, message.to_owned(), data, None);
    let logs: Vec<_> = logs
        .lock()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e.level,
                e.message.clone(),
                e.data.clone(),
                e.step_name.clone(),
            )
        })
        .collect();
    assert_eq!(
        logs,
        [
            l(LogLevel::Info, "Starting", None),
            l(LogLevel::Warn, "Almost done", None),
            l(
                LogLevel::Error,
                "Something went wrong",
                Some(json!({"code": 42}))
            ),
        ]
    );
}

async fn wait_callbacks_receive_live_progress_and_logs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let gate = Gate::new();
    gate.open();
    let job = durably.register(reporting_job("reporting", &gate)).unwrap();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let (options, progress, logs) = callbacks();
    let mut waiting = Box::pin(durably.wait_for_run(&id, options));
    // First poll: the wait is registered before the worker starts.
    assert!(futures::poll!(&mut waiting).is_pending());
    durably.start();
    let run = within("wait settles", LIMIT, waiting).await.unwrap();
    assert_eq!(run.output, Some(json!("reported")));
    assert_reported(&progress, &logs);
    durably.stop().await;

    // The run executes entirely while the (registered) wait is not being polled: its first
    // store read may already see `completed`; the callbacks are still owed and delivered.
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let (options, progress, logs) = callbacks();
    let mut waiting = Box::pin(durably.wait_for_run(&id, options));
    assert!(futures::poll!(&mut waiting).is_pending());
    assert!(durably.process_one(None).await.unwrap());
    let run = within("wait settles", LIMIT, waiting).await.unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_reported(&progress, &logs);
    durably.start();

    // trigger_and_wait: the worker of this process may claim and start the run before the
    // trigger call returns; the callbacks still see every progress and log of the run.
    let (options, progress, logs) = callbacks();
    let done = within(
        "trigger_and_wait",
        LIMIT,
        job.trigger_and_wait(json!({}), TriggerOptions::new(), options),
    )
    .await
    .unwrap();
    assert_eq!(done.output, Some(json!("reported")));
    assert_reported(&progress, &logs);
    durably.stop().await;
}

async fn already_finished_runs_settle_at_once(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let gate = Gate::new();
    gate.open();
    let job = durably.register(reporting_job("reporting", &gate)).unwrap();
    let failing = register_doubler(&durably, "already-failed");
    let completed = job.trigger(json!({})).await.unwrap().run.id;
    let failed = failing.trigger(Input { value: -5 }).await.unwrap().run.id;
    let cancelled = job.trigger(json!({})).await.unwrap().run.id;
    durably.cancel(&cancelled).await.unwrap();
    assert_eq!(durably.process_until_idle(None, None).await.unwrap(), 2);

    // A 60 s poll: only the initial read can settle these within the guard.
    let slow = || WaitOptions::new().polling_interval(Duration::from_secs(60));
    let (options, progress, logs) = callbacks();
    let run = within(
        "completed",
        Duration::from_secs(5),
        durably.wait_for_run(
            &completed,
            options.polling_interval(Duration::from_secs(60)),
        ),
    )
    .await
    .unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!("reported")));
    assert!(progress.lock().unwrap().is_empty(), "no replay of progress");
    assert!(logs.lock().unwrap().is_empty(), "no replay of logs");

    for _ in 0..2 {
        let error = within(
            "failed",
            Duration::from_secs(5),
            durably.wait_for_run(&failed, slow()),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&error, Error::RunFailed { message, .. } if message == "wait-for-run failure"),
            "{error:?}"
        );
    }
    let error = within(
        "cancelled",
        Duration::from_secs(5),
        durably.wait_for_run(&cancelled, slow()),
    )
    .await
    .unwrap_err();
    assert!(error.is_cancelled(), "{error:?}");
}

async fn trigger_and_wait_returns_disposition_and_typed_output(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = register_doubler(&durably, "typed-wait");
    durably.start();
    let done = within(
        "trigger_and_wait",
        LIMIT,
        job.trigger_and_wait(
            Input { value: 21 },
            TriggerOptions::new().idempotency_key("test-key"),
            WaitOptions::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(done.disposition, Disposition::Created);
    assert_eq!(done.output, Some(Output { result: 42 }));
    let run = job.get_run(&done.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.idempotency_key.as_deref(), Some("test-key"));
    assert_eq!(run.output, Some(Output { result: 42 }));
    durably.stop().await;

    // Same idempotency key on the completed run, no worker, 60 s poll: the stored output comes
    // back at once.
    let again = within(
        "idempotent trigger_and_wait",
        Duration::from_secs(5),
        job.trigger_and_wait(
            Input { value: 999 },
            TriggerOptions::new().idempotency_key("test-key"),
            WaitOptions::new().polling_interval(Duration::from_secs(60)),
        ),
    )
    .await
    .unwrap();
    assert_eq!(again.disposition, Disposition::Idempotent);
    assert_eq!(again.id, done.id);
    assert_eq!(again.output, Some(Output { result: 42 }));
}

/// A waits (no worker, polls every 25 ms); B executes the run.
async fn waits_see_another_instances_results(backend: Backend) {
    let db = TestDb::new(backend);
    let a = db.durably(|b| b).await;
    let b = db.durably(|b| b).await;
    let job_a = register_doubler(&a, "cross");
    register_doubler(&b, "cross");
    let poll = || WaitOptions::new().polling_interval(Duration::from_millis(25));

    // wait_for_run: completed.
    let id = job_a.trigger(Input { value: 5 }).await.unwrap().run.id;
    let waiting = {
        let (a, id) = (a.clone(), id.clone());
        tokio::spawn(async move { a.wait_for_run(&id, poll()).await })
    };
    assert!(b.process_one(Some("worker-b")).await.unwrap());
    let run = within("A sees B's completion", LIMIT, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"result": 10})));

    // wait_for_run: failed.
    let id = job_a.trigger(Input { value: -1 }).await.unwrap().run.id;
    let waiting = {
        let (a, id) = (a.clone(), id.clone());
        tokio::spawn(async move { a.wait_for_run(&id, poll()).await })
    };
    assert!(b.process_one(None).await.unwrap());
    let error = within("A sees B's failure", LIMIT, waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, Error::RunFailed { message, .. } if message == "wait-for-run failure"),
        "{error:?}"
    );

    // trigger_and_wait: completed by B.
    let waiting = {
        let job_a = job_a.clone();
        tokio::spawn(async move {
            job_a
                .trigger_and_wait(Input { value: 8 }, TriggerOptions::new(), poll())
                .await
        })
    };
    eventually("B processes A's trigger", LIMIT, || async {
        b.process_one(None).await.unwrap().then_some(())
    })
    .await;
    let done = within("A's trigger_and_wait", LIMIT, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.output, Some(Output { result: 16 }));
    assert_eq!(done.disposition, Disposition::Created);

    // Cancelled by B.
    let id = job_a.trigger(Input { value: 3 }).await.unwrap().run.id;
    let waiting = {
        let (a, id) = (a.clone(), id.clone());
        tokio::spawn(async move { a.wait_for_run(&id, poll()).await })
    };
    b.cancel(&id).await.unwrap();
    let error = within("A sees B's cancel", LIMIT, waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(error.is_cancelled(), "{error:?}");
}

/// B completes then deletes the run before A's next poll: A reports it as missing.
async fn run_deleted_by_another_instance_is_not_found(backend: Backend) {
    let db = TestDb::new(backend);
    let reads = Arc::new(AtomicUsize::new(0));
    // A reads through a counting store so the test knows when A's wait has made its first read
    // (the run still pending); A's next poll is a second away, long after B is done.
    let a = Durably::builder()
        .store(Instrumented {
            reads: reads.clone(),
            hold_enqueue: None,
            open_on_claim: None,
            ..Instrumented::over(db.store.clone())
        })
        .polling_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    a.migrate().await.unwrap();
    let b = db.durably(|b| b).await;
    let job_a = register_doubler(&a, "cross-delete");
    register_doubler(&b, "cross-delete");
    let first_read = |before: usize| {
        let reads = reads.clone();
        async move {
            eventually("A's wait made its first read", LIMIT, || async {
                (reads.load(Ordering::SeqCst) > before).then_some(())
            })
            .await
        }
    };

    let id = job_a.trigger(Input { value: 1 }).await.unwrap().run.id;
    let before = reads.load(Ordering::SeqCst);
    let waiting = {
        let (a, id) = (a.clone(), id.clone());
        tokio::spawn(async move { a.wait_for_run(&id, WaitOptions::new()).await })
    };
    first_read(before).await;
    assert!(b.process_one(None).await.unwrap());
    b.delete_run(&id).await.unwrap();
    let error = within("A's wait settles", LIMIT, waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
    assert_eq!(error.to_string(), format!("Run not found: {id}"));

    // The same through trigger_and_wait (its first get_run is the wait's read).
    let before = reads.load(Ordering::SeqCst);
    let waiting = {
        let job_a = job_a.clone();
        tokio::spawn(async move {
            job_a
                .trigger_and_wait(
                    Input { value: 2 },
                    TriggerOptions::new(),
                    WaitOptions::new(),
                )
                .await
        })
    };
    first_read(before).await;
    let pending = b
        .get_runs(&RunFilter::new().status(RunStatus::Pending))
        .await
        .unwrap()
        .pop()
        .expect("A's trigger is stored");
    assert!(b.process_one(None).await.unwrap());
    b.delete_run(&pending.id).await.unwrap();
    let error = within("A's trigger_and_wait settles", LIMIT, waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
}

async fn delete_in_process_settles_a_wait(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = register_doubler(&durably, "delete-wait");
    let id = job.trigger(Input { value: 1 }).await.unwrap().run.id;
    assert!(
        durably
            .store()
            .cancel_run(&id, Timestamp::now())
            .await
            .unwrap()
    );
    // Waits started now see the cancelled run; a deletion settles any wait as not found.
    let error = durably
        .wait_for_run(&id, WaitOptions::new())
        .await
        .unwrap_err();
    assert!(error.is_cancelled());
    durably.delete_run(&id).await.unwrap();
    let error = durably
        .wait_for_run(&id, WaitOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
}

/// The worker claims the run while `trigger_and_wait` is still inside the trigger (its enqueue
/// committed but has not returned): the callbacks still get everything.
async fn trigger_and_wait_callbacks_see_a_run_started_before_the_trigger_returned(
    backend: Backend,
) {
    let db = TestDb::new(backend);
    // The trigger's enqueue returns only once a worker has claimed the run.
    let claimed = Gate::new();
    let durably = Durably::builder()
        .store(Instrumented {
            reads: Arc::default(),
            hold_enqueue: Some(claimed.clone()),
            open_on_claim: Some(claimed),
            ..Instrumented::over(db.store.clone())
        })
        .polling_interval(Duration::from_millis(10))
        // The race under test is a trigger's own enqueue against the worker's claim.
        .trigger_hand_off(false)
        .build()
        .unwrap();
    durably.migrate().await.unwrap();
    let gate = Gate::new();
    gate.open();
    let job = durably.register(reporting_job("reporting", &gate)).unwrap();
    durably.start();
    let (options, progress, logs) = callbacks();
    let done = within(
        "trigger_and_wait",
        LIMIT,
        job.trigger_and_wait(json!({}), TriggerOptions::new(), options),
    )
    .await
    .unwrap();
    assert_eq!(done.output, Some(json!("reported")));
    assert_reported(&progress, &logs);
    durably.stop().await;
}

/// A worker of this process that claims a run before its trigger has returned does not report
/// it (`run:leased`) before the trigger reported it (`run:trigger`).
async fn run_trigger_is_emitted_before_run_leased_when_the_worker_is_faster(backend: Backend) {
    let db = TestDb::new(backend);
    let claimed = Gate::new();
    let release = Gate::new();
    let durably = Durably::builder()
        .store(Instrumented {
            reads: Arc::default(),
            hold_enqueue: Some(release.clone()),
            open_on_claim: Some(claimed.clone()),
            ..Instrumented::over(db.store.clone())
        })
        .polling_interval(Duration::from_millis(10))
        // The race under test is a trigger's own enqueue against the worker's claim.
        .trigger_hand_off(false)
        .build()
        .unwrap();
    durably.migrate().await.unwrap();
    let gate = Gate::new();
    gate.open();
    let job = durably.register(reporting_job("reporting", &gate)).unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let leased = Gate::new();
    {
        let (order, leased) = (order.clone(), leased.clone());
        durably.on_any(move |event| {
            let kind = event.event_type();
            order.lock().unwrap().push(kind.as_str().to_owned());
            if kind == durably::EventType::RunLeased {
                leased.open();
            }
        });
    }
    durably.start();
    let trigger = tokio::spawn({
        let job = job.clone();
        async move { job.trigger(json!({})).await }
    });
    // Release the trigger once the worker has claimed the run and either reported it leased
    // (the bug) or has had ample time to (bounded, so the correct behaviour cannot hang).
    within("claim", LIMIT, claimed.wait()).await;
    let _ = tokio::time::timeout(Duration::from_millis(300), leased.wait()).await;
    release.open();
    let run = within("trigger", LIMIT, trigger)
        .await
        .unwrap()
        .unwrap()
        .run;
    durably
        .wait_for_run(&run.id, WaitOptions::new().timeout(LIMIT))
        .await
        .unwrap();
    common::eventually("run:complete observed", LIMIT, || async {
        order
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == "run:complete")
            .then_some(())
    })
    .await;
    let order = order.lock().unwrap().clone();
    let position = |t: &str| order.iter().position(|o| o == t).unwrap();
    assert!(
        position("run:trigger") < position("run:leased"),
        "events out of order: {order:?}"
    );
    durably.stop().await;
}

/// `trigger_and_wait` with `coalesce: skip` onto a pending run of the same concurrency key,
/// pending because no worker runs (`busy == false`) or because the only slot is taken
/// (`busy == true`, the trigger goes through the worker's hand-off): it reports `Coalesced`
/// with the pending run's id, settles only once that run ends, and returns that run's output.
/// The skipped input never runs.
async fn coalesced_trigger_and_wait(backend: Backend, busy: bool) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(1)).await;
    let job = register_doubler(&durably, "wait-coalesce");
    let (entered, release) = (Gate::new(), Gate::new());
    let blocker = {
        let (entered, release) = (entered.clone(), release.clone());
        durably
            .register(Job::new("wait-blocker", move |_: StepContext, n: u64| {
                let (entered, release) = (entered.clone(), release.clone());
                async move {
                    entered.open();
                    release.wait().await;
                    Ok(n)
                }
            }))
            .expect("register the blocker")
    };
    let coalesced = Gate::new();
    {
        let coalesced = coalesced.clone();
        durably.on(EventType::RunCoalesced, move |_| coalesced.open());
    }
    if busy {
        durably.start();
        blocker.trigger(1).await.expect("trigger the blocker");
        within("the blocker takes the only slot", LIMIT, entered.wait()).await;
    }

    let first = job
        .trigger_with(
            Input { value: 21 },
            TriggerOptions::new().concurrency_key("k"),
        )
        .await
        .expect("trigger the first run")
        .run;
    assert_eq!(first.status, RunStatus::Pending);
    let waiting = {
        let job = job.clone();
        tokio::spawn(async move {
            job.trigger_and_wait(
                Input { value: 999 },
                TriggerOptions::new()
                    .concurrency_key("k")
                    .coalesce(Coalesce::Skip),
                WaitOptions::new(),
            )
            .await
        })
    };
    within("the trigger coalesces", LIMIT, coalesced.wait()).await;
    let pending = job
        .get_run(&first.id)
        .await
        .expect("get_run")
        .expect("the first run");
    assert_eq!(pending.status, RunStatus::Pending);
    assert!(!waiting.is_finished(), "settled before the run ran");

    match busy {
        true => release.open(),
        false => durably.start(),
    }
    let done = within("trigger_and_wait settles", LIMIT, waiting)
        .await
        .expect("join")
        .expect("trigger_and_wait");
    assert_eq!(done.disposition, Disposition::Coalesced);
    assert_eq!(done.id, first.id);
    assert_eq!(done.output, Some(Output { result: 42 }));
    let runs = job.get_runs(RunFilter::new()).await.expect("get_runs");
    assert_eq!(runs.len(), 1, "the skipped trigger created no run");
    assert_eq!(runs[0].input, Input { value: 21 });
    assert_eq!(runs[0].status, RunStatus::Completed);
    release.open();
    durably.stop().await;
}

async fn trigger_and_wait_coalesced_onto_a_pending_run_returns_its_output(backend: Backend) {
    coalesced_trigger_and_wait(backend, false).await
}

async fn trigger_and_wait_coalesced_while_the_worker_is_busy_returns_its_output(backend: Backend) {
    coalesced_trigger_and_wait(backend, true).await
}

backend_tests!(
    wait_for_run_resolves_with_the_completed_run,
    in_process_completion_settles_without_polling,
    failed_run_rejects_with_its_error,
    cancel_while_leased_rejects_waits,
    unknown_run_is_not_found,
    timeouts_reject_and_leave_the_run_alone,
    zero_polling_interval_is_rejected,
    wait_callbacks_receive_live_progress_and_logs,
    already_finished_runs_settle_at_once,
    trigger_and_wait_returns_disposition_and_typed_output,
    waits_see_another_instances_results,
    run_deleted_by_another_instance_is_not_found,
    delete_in_process_settles_a_wait,
    trigger_and_wait_callbacks_see_a_run_started_before_the_trigger_returned,
    run_trigger_is_emitted_before_run_leased_when_the_worker_is_faster,
    trigger_and_wait_coalesced_onto_a_pending_run_returns_its_output,
    trigger_and_wait_coalesced_while_the_worker_is_busy_returns_its_output,
);
