//! Durable waits (upstream v4 §3-4): a run that awaits a pending wait is suspended (`waiting`,
//! no lease, no slot, no concurrency key) and resumed by any worker once a signal or its
//! deadline resolves the wait, its completed steps replayed.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, Recorder, TestDb, backend_tests, terminal, waiting};
use durably::{
    Error, EventType, Job, NewWait, RunStatus, SignalDisposition, StepContext, WaitOutcome,
    WaitResult, WaitStatus,
};
use serde_json::{Value, json};

/// The `approval` shape: a step before, one wait, a step after; counts executions of the
/// first step's function.
fn approval(before_ran: Arc<AtomicUsize>, timeout: Option<Duration>) -> Job<Value, Value> {
    Job::new("approval", move |step: StepContext, _input: Value| {
        let before_ran = before_ran.clone();
        async move {
            step.run("before", |_| async move {
                before_ran.fetch_add(1, Ordering::SeqCst);
                Ok(1)
            })
            .await?;
            let mut wait = NewWait::new("approval").metadata(json!({"asks": "ada"}));
            if let Some(timeout) = timeout {
                wait = wait.timeout(timeout);
            }
            let wait = step.prepare_wait(wait).await?;
            let output = match step.wait_for(&wait).await? {
                WaitResult::Signal { payload } => json!({ "signal": payload }),
                WaitResult::Timeout => json!({ "timedOut": true }),
                other => json!(format!("{other:?}")),
            };
            step.run("after", |_| async { Ok(2) }).await?;
            Ok(output)
        }
    })
}

fn echo() -> Job<Value, Value> {
    Job::new("echo", |step: StepContext, input: Value| async move {
        step.run("echo", |_| async move { Ok(input) }).await
    })
}

/// A waiting run holds no lease and no slot (with one slot, another run completes while it
/// waits); a signal resumes it under a new lease, its completed step replayed; the wait
/// records the signal and its timing; the same signal again is a duplicate, another is refused.
async fn a_signal_resumes_a_waiting_run_that_held_no_slot(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(1)).await;
    let before_ran = Arc::new(AtomicUsize::new(0));
    let job = durably
        .register(approval(before_ran.clone(), None))
        .expect("register");
    let echo = durably.register(echo()).expect("register echo");
    let events = Recorder::attach(&durably);
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let suspended = waiting(&durably, &id).await;
    assert_eq!(suspended.lease_owner, None);
    assert_eq!(suspended.lease_expires_at, None);
    let waits = durably.get_waits(&id).await.expect("waits");
    assert_eq!(waits.len(), 1);
    let wait = &waits[0];
    assert_eq!(
        suspended.waiting_on_wait_id.as_deref(),
        Some(wait.id.as_str())
    );
    assert_eq!(
        (wait.status, wait.name.as_str(), wait.metadata.clone()),
        (
            WaitStatus::Pending,
            "approval",
            Some(json!({"asks": "ada"}))
        )
    );
    assert!(wait.suspended_at.is_some());

    // The only slot is free: another run executes while this one waits.
    let other = echo
        .trigger(json!({"x": 1}))
        .await
        .expect("trigger echo")
        .run
        .id;
    assert_eq!(
        terminal(&durably, &other).await.status,
        RunStatus::Completed
    );
    assert_eq!(
        durably.get_run(&id).await.expect("get").map(|r| r.status),
        Some(RunStatus::Waiting)
    );

    let signalled = durably
        .signal(&wait.id, json!({"approved": true}), "sig-1")
        .await
        .expect("signal");
    assert_eq!(signalled.disposition, SignalDisposition::Accepted);
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({"signal": {"approved": true}})));
    assert!(run.lease_generation > suspended.lease_generation);
    assert_eq!(before_ran.load(Ordering::SeqCst), 1, "replayed, not re-run");

    let resolved = durably
        .get_wait(&wait.id)
        .await
        .expect("get_wait")
        .expect("the wait");
    assert_eq!(resolved.status, WaitStatus::Resolved);
    assert_eq!(resolved.outcome, Some(WaitOutcome::Signal));
    assert_eq!(resolved.signal_id.as_deref(), Some("sig-1"));
    assert!(resolved.first_resumed_at.is_some());
    assert!(resolved.input_wait_ms.is_some() && resolved.execution_slot_wait_ms.is_some());

    let again = durably
        .signal(&wait.id, json!({"approved": true}), "sig-1")
        .await
        .expect("duplicate");
    assert_eq!(again.disposition, SignalDisposition::Duplicate);
    let other_signal = durably
        .signal(&wait.id, json!({"approved": false}), "sig-2")
        .await;
    assert!(
        matches!(other_signal, Err(Error::Conflict(_))),
        "{other_signal:?}"
    );

    let events = events.flush(&durably).await;
    let of_run = |kind: EventType| {
        events
            .iter()
            .filter(|e| e.event_type() == kind && e.kind.run_id() == Some(id.as_str()))
            .count()
    };
    assert_eq!(of_run(EventType::RunWaiting), 1);
    assert_eq!(of_run(EventType::RunLeased), 2, "leased, then resumed");
    assert_eq!(of_run(EventType::RunComplete), 1);
    // A suspension records no step attempt: one per executed step function.
    let attempts = durably.get_step_attempts(&id).await.expect("attempts");
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.step_name.as_str())
            .collect::<Vec<_>>(),
        ["before", "after"]
    );
    durably.stop().await;
}

/// A wait's deadline resumes the run with a timeout (the expiry sweep resolves it); a signal
/// after the deadline is refused as expired.
async fn a_deadline_resumes_the_run_with_a_timeout(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(approval(Arc::default(), Some(Duration::from_millis(300))))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({"timedOut": true})));
    let wait = durably.get_waits(&id).await.expect("waits").remove(0);
    assert_eq!(wait.outcome, Some(WaitOutcome::Timeout));
    assert_eq!(
        wait.resolved_at, wait.deadline_at,
        "resolved at its deadline"
    );
    let late = durably.signal(&wait.id, json!(1), "late").await;
    assert!(matches!(late, Err(Error::WaitExpired { .. })), "{late:?}");
    durably.stop().await;
}

/// A wait signalled before the job awaits it returns at once: no suspension, no
/// `run:waiting`, both timing durations zero.
async fn a_wait_resolved_before_it_is_awaited_returns_at_once(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (ids, mut wait_ids) = tokio::sync::mpsc::unbounded_channel::<String>();
    let signalled = Arc::new(tokio::sync::Notify::new());
    let job = durably
        .register(Job::new("early", {
            let signalled = signalled.clone();
            move |step: StepContext, _input: Value| {
                let (ids, signalled) = (ids.clone(), signalled.clone());
                async move {
                    let wait = step.prepare_wait("early").await?;
                    let _ = ids.send(wait.id.clone());
                    step.run("until-signalled", |_| async move {
                        signalled.notified().await;
                        Ok(())
                    })
                    .await?;
                    let result = step.wait_for(&wait).await?;
                    Ok(serde_json::to_value(result).expect("json"))
                }
            }
        }))
        .expect("register");
    let events = Recorder::attach(&durably);
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let wait_id = wait_ids.recv().await.expect("the wait id");
    durably
        .signal(&wait_id, json!("early bird"), "s")
        .await
        .expect("signal");
    signalled.notify_one();
    let run = terminal(&durably, &id).await;
    assert_eq!(
        run.output,
        Some(json!({"type": "signal", "payload": "early bird"})),
        "{:?}",
        run.error
    );
    let wait = durably
        .get_wait(&wait_id)
        .await
        .expect("get")
        .expect("wait");
    assert_eq!(wait.suspended_at, None);
    assert_eq!(
        (wait.input_wait_ms, wait.execution_slot_wait_ms),
        (Some(0), Some(0))
    );
    let events = events.flush(&durably).await;
    assert_eq!(common::count(&events, EventType::RunWaiting), 0);
    durably.stop().await;
}

/// Cancelling a waiting run cancels its pending wait; a signal then is refused.
async fn cancelling_a_waiting_run_cancels_its_wait(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(approval(Arc::default(), None))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = waiting(&durably, &id).await;
    let wait_id = run.waiting_on_wait_id.expect("waits on a wait");
    let refused = durably.delete_run(&id).await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    durably.cancel(&id).await.expect("cancel");
    let wait = durably
        .get_wait(&wait_id)
        .await
        .expect("get")
        .expect("wait");
    assert_eq!(wait.status, WaitStatus::Cancelled);
    let late = durably.signal(&wait_id, json!(1), "s").await;
    assert!(matches!(late, Err(Error::Conflict(_))), "{late:?}");
    assert_eq!(
        durably.get_run(&id).await.expect("get").map(|r| r.status),
        Some(RunStatus::Cancelled)
    );
    durably.stop().await;
}

/// A waiting run does not hold its concurrency key: a run with the same key executes
/// meanwhile; the waiting one resumes after its signal.
async fn a_waiting_run_frees_its_concurrency_key(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(approval(Arc::default(), None))
        .expect("register");
    let echo = durably.register(echo()).expect("register echo");
    durably.start();
    let keyed = durably::TriggerOptions::new().concurrency_key("k");
    let id = job
        .trigger_with(json!({}), keyed.clone())
        .await
        .expect("trigger")
        .run
        .id;
    let wait_id = waiting(&durably, &id)
        .await
        .waiting_on_wait_id
        .expect("wait id");
    let other = echo
        .trigger_with(json!(2), keyed)
        .await
        .expect("trigger echo")
        .run
        .id;
    assert_eq!(
        terminal(&durably, &other).await.status,
        RunStatus::Completed
    );
    durably
        .signal(&wait_id, json!("go"), "s")
        .await
        .expect("signal");
    assert_eq!(terminal(&durably, &id).await.status, RunStatus::Completed);
    durably.stop().await;
}

/// Once a run asked to be suspended, every step operation of that execution refuses with
/// the suspension, and the run is suspended even if its job swallowed the error and
/// returned normally. Preparing a wait while a step function runs is refused.
async fn a_suspension_stops_the_execution_whatever_the_job_returns(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    // What the first execution's early preparation got (a replay finds the slow step
    // completed, so nothing runs beside the preparation then).
    let boundaries = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = boundaries.clone();
    let job = durably
        .register(Job::new(
            "stubborn",
            move |step: StepContext, _input: Value| {
                let seen = seen.clone();
                async move {
                    let in_flight = step
                        .all((
                            step.run("slow", |_| async {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                Ok(())
                            }),
                            async { step.prepare_wait("too-early").await.map(|_| ()) },
                        ))
                        .await;
                    seen.lock().expect("lock").push(match in_flight {
                        Err(Error::Validation(message)) => message,
                        other => format!("{other:?}"),
                    });
                    let wait = step.prepare_wait("w").await?;
                    match step.wait_for(&wait).await {
                        // Resumed after the signal.
                        Ok(result) => return Ok(json!(result)),
                        Err(Error::Suspended { .. }) => {}
                        Err(other) => return Err(other),
                    }
                    let refused = step.run("after", |_| async { Ok(1) }).await;
                    assert!(
                        matches!(refused, Err(Error::Suspended { .. })),
                        "{refused:?}"
                    );
                    assert!(step.check_cancelled().is_err());
                    // Swallowed: the run is suspended anyway.
                    Ok(json!("swallowed the suspension"))
                }
            },
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = waiting(&durably, &id).await;
    assert_eq!(run.output, None);
    let waits = durably.get_waits(&id).await.expect("waits");
    assert_eq!(
        waits.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        ["w"],
        "the refused preparation stored nothing"
    );
    assert_eq!(
        boundaries.lock().expect("lock").first().map(String::as_str),
        Some("Durable waits require a sequential job boundary, outside step callbacks")
    );
    durably
        .signal(&waits[0].id, json!(null), "s")
        .await
        .expect("signal");
    let run = terminal(&durably, &id).await;
    assert_eq!(
        run.output,
        Some(json!({"type": "signal", "payload": null})),
        "{:?}",
        run.error
    );
    durably.stop().await;
}

/// A signal sent by another instance on the same database (no worker of its own) resumes a
/// run waiting in this one: on PostgreSQL through `NOTIFY`, on SQLite within a polling
/// interval.
async fn a_signal_from_another_instance_resumes_the_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(approval(Arc::default(), None))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let wait_id = waiting(&durably, &id)
        .await
        .waiting_on_wait_id
        .expect("wait id");
    let other = db.durably(|b| b).await;
    other
        .signal(&wait_id, json!({"from": "elsewhere"}), "s")
        .await
        .expect("signal");
    let run = terminal(&durably, &id).await;
    assert_eq!(run.output, Some(json!({"signal": {"from": "elsewhere"}})));
    durably.stop().await;
}

/// Signals racing the deadline: many callers signal the same wait, with different signal
/// ids, around its deadline while the expiry sweep runs. At most one signal is accepted; the
/// wait's outcome agrees with what the callers were told (the accepted signal's payload, or a
/// timeout when every caller was refused), and so does the run's output.
async fn signals_racing_the_deadline_have_one_outcome(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(approval(Arc::default(), Some(Duration::from_millis(400))))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let wait_id = waiting(&durably, &id)
        .await
        .waiting_on_wait_id
        .expect("wait id");
    let deadline = durably
        .get_wait(&wait_id)
        .await
        .expect("get")
        .and_then(|w| w.deadline_at)
        .expect("a deadline");
    // Start the callers shortly before the deadline (by the wall clock the deadline was set
    // with), each one a few milliseconds after the previous.
    let lead = (deadline.as_millis() - durably::Timestamp::now().as_millis() - 30).max(0);
    tokio::time::sleep(Duration::from_millis(lead as u64)).await;
    let mut callers = tokio::task::JoinSet::new();
    for n in 0..12u64 {
        let (durably, wait_id) = (durably.clone(), wait_id.clone());
        callers.spawn(async move {
            tokio::time::sleep(Duration::from_millis(n * 5)).await;
            let answer = durably
                .signal(&wait_id, json!({ "caller": n }), &format!("caller-{n}"))
                .await;
            (n, answer)
        });
    }
    let mut accepted = Vec::new();
    while let Some(joined) = callers.join_next().await {
        let (n, answer) = joined.expect("caller");
        match answer {
            Ok(signalled) => {
                assert_eq!(signalled.disposition, SignalDisposition::Accepted);
                accepted.push(n);
            }
            Err(Error::WaitExpired { .. } | Error::Conflict(_)) => {}
            Err(other) => panic!("caller {n}: unexpected {other:?}"),
        }
    }
    assert!(accepted.len() <= 1, "accepted by {accepted:?}");
    let run = terminal(&durably, &id).await;
    let wait = durably
        .get_wait(&wait_id)
        .await
        .expect("get")
        .expect("wait");
    match accepted.first() {
        Some(n) => {
            assert_eq!(wait.outcome, Some(WaitOutcome::Signal));
            assert_eq!(wait.signal_id, Some(format!("caller-{n}")));
            assert!(wait.resolved_at < wait.deadline_at, "won strictly before");
            assert_eq!(run.output, Some(json!({"signal": {"caller": n}})));
        }
        None => {
            assert_eq!(wait.outcome, Some(WaitOutcome::Timeout));
            assert_eq!(run.output, Some(json!({"timedOut": true})));
        }
    }
    durably.stop().await;
}

backend_tests!(
    a_signal_resumes_a_waiting_run_that_held_no_slot,
    a_deadline_resumes_the_run_with_a_timeout,
    a_wait_resolved_before_it_is_awaited_returns_at_once,
    cancelling_a_waiting_run_cancels_its_wait,
    a_waiting_run_frees_its_concurrency_key,
    a_suspension_stops_the_execution_whatever_the_job_returns,
    a_signal_from_another_instance_resumes_the_run,
    signals_racing_the_deadline_have_one_outcome,
);
