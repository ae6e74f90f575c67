//! Cancellation: in-process `cancel`, a database-level cancel without an in-process event,
//! cancelling pending runs, and what a cancelled execution may (not) write.
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Gate, LIMIT, Recorder, TestDb, backend_tests, count, eventually, within};
use durably::{
    Error, Event, EventKind, EventType, Job, RunFilter, RunStatus, StepContext, StepStatus,
    Timestamp, TriggerOptions, WaitOptions,
};
use futures::StreamExt;
use serde_json::{Value, json};

fn step_cancels(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepCancel {
                run_id, step_name, ..
            } => Some((run_id.clone(), step_name.clone())),
            _ => None,
        })
        .collect()
}

/// A job whose first step is gated and whose second step counts its calls.
struct Gated {
    entered: Gate,
    release: Gate,
    token_seen: Arc<AtomicBool>,
    step2_calls: Arc<AtomicUsize>,
}

impl Gated {
    fn new() -> Self {
        Gated {
            entered: Gate::new(),
            release: Gate::new(),
            token_seen: Arc::new(AtomicBool::new(false)),
            step2_calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// `watch_token`: the step waits on its token and then errors (like a fetch rejecting with
    /// `AbortError`); otherwise it waits on the release gate and returns normally.
    fn job(&self, name: &str, watch_token: bool) -> Job<Value, Value> {
        let entered = self.entered.clone();
        let release = self.release.clone();
        let seen = self.token_seen.clone();
        let calls = self.step2_calls.clone();
        Job::new(name, move |step: StepContext, _: Value| {
            let (entered, release) = (entered.clone(), release.clone());
            let (seen, calls) = (seen.clone(), calls.clone());
            async move {
                step.run("before", |_| async { Ok("stored".to_string()) })
                    .await?;
                step.run("cancellable-step", |token| async move {
                    entered.open();
                    if watch_token {
                        token.cancelled().await;
                        seen.store(true, Ordering::SeqCst);
                        return Err(
                            Error::Job("AbortError: the operation was aborted".into()).into()
                        );
                    }
                    release.wait().await;
                    seen.store(token.is_cancelled(), Ordering::SeqCst);
                    Ok("late result".to_string())
                })
                .await?;
                step.run("step2", |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await?;
                Ok(json!("completed"))
            }
        })
    }
}

async fn cancel_during_a_step_fires_the_token(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let recorder = Recorder::attach(&durably);
    let gated = Gated::new();
    let job = durably.register(gated.job("cancel-token", true)).unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    within("step starts", LIMIT, gated.entered.wait()).await;

    durably.cancel(&id).await.unwrap();
    // Marked cancelled at once, before the worker noticed anything.
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.lease_owner, None);
    eventually("the step sees its token fire", LIMIT, || async {
        gated.token_seen.load(Ordering::SeqCst).then_some(())
    })
    .await;
    within("stop waits for the run", LIMIT, durably.stop()).await;

    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.output, None);
    assert_eq!(run.error, None);
    assert_eq!(gated.step2_calls.load(Ordering::SeqCst), 0);
    let events = recorder.flush(&durably).await;
    assert_eq!(
        step_cancels(&events),
        [(id.clone(), "cancellable-step".to_string())]
    );
    assert_eq!(count(&events, EventType::StepFail), 0);
    assert_eq!(count(&events, EventType::RunCancel), 1);
    assert_eq!(count(&events, EventType::RunFail), 0);
    assert_eq!(count(&events, EventType::RunComplete), 0);
    // preserve_steps is off: the cancel removed the step outputs (SPEC §3); nothing the
    // cancelled execution did afterwards brought any back.
    let steps = durably.get_steps(&id).await.unwrap();
    assert!(steps.is_empty(), "{steps:?}");
}

async fn cancel_while_a_step_ignores_its_token(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let recorder = Recorder::attach(&durably);
    let gated = Gated::new();
    let job = durably.register(gated.job("cancel-gate", false)).unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    within("step starts", LIMIT, gated.entered.wait()).await;

    durably.cancel(&id).await.unwrap();
    gated.release.open();
    within("stop waits for the run", LIMIT, durably.stop()).await;

    assert!(
        gated.token_seen.load(Ordering::SeqCst),
        "token fired before release"
    );
    assert_eq!(gated.step2_calls.load(Ordering::SeqCst), 0);
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.output, None);
    let steps = durably.get_steps(&id).await.unwrap();
    let names: Vec<_> = steps.iter().map(|s| (s.name.as_str(), s.status)).collect();
    assert_eq!(names, [("before", StepStatus::Completed)]);
    let events = recorder.flush(&durably).await;
    assert_eq!(
        step_cancels(&events),
        [(id.clone(), "cancellable-step".to_string())]
    );
    assert_eq!(count(&events, EventType::StepFail), 0);
    assert_eq!(count(&events, EventType::StepComplete), 1, "only `before`");
}

async fn database_level_cancel_is_noticed_at_the_fenced_write(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let recorder = Recorder::attach(&durably);
    let gated = Gated::new();
    let job = durably.register(gated.job("db-cancel", false)).unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    within("step starts", LIMIT, gated.entered.wait()).await;
    let stream = durably.subscribe(&id);

    // Another process cancels: this process hears of it only through the store.
    assert!(
        durably
            .store()
            .cancel_run(&id, Timestamp::now())
            .await
            .unwrap()
    );
    gated.release.open();
    // The worker that finds the cancellation announces it, so the run's stream ends.
    let streamed: Vec<Event> = within("the run's stream ends", LIMIT, stream.collect()).await;
    assert_eq!(
        streamed.last().map(Event::event_type),
        Some(EventType::RunCancel),
        "{streamed:?}"
    );
    within("stop waits for the run", LIMIT, durably.stop()).await;

    // Whether the token fired depends on the backend (PostgreSQL forwards cancels to workers
    // with NOTIFY; SQLite has no such channel): the outcome below is the same either way.
    assert_eq!(gated.step2_calls.load(Ordering::SeqCst), 0);
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.output, None);
    let steps = durably.get_steps(&id).await.unwrap();
    assert!(
        steps
            .iter()
            .all(|s| s.name != "cancellable-step" || s.status != StepStatus::Completed),
        "{steps:?}"
    );
    assert_eq!(steps.len(), 1, "only `before` is stored: {steps:?}");
    let events = recorder.flush(&durably).await;
    // SPEC §3: exactly once (upstream emitted it twice here).
    assert_eq!(
        step_cancels(&events),
        [(id.clone(), "cancellable-step".to_string())]
    );
    assert_eq!(count(&events, EventType::StepFail), 0);
    assert_eq!(count(&events, EventType::RunFail), 0);
    assert_eq!(count(&events, EventType::RunComplete), 0);
    assert_eq!(count(&events, EventType::RunCancel), 1, "announced once");
}

async fn cancel_while_pending_rejects_waits(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "pending-cancel",
            |_: StepContext, _: Value| async { Ok(json!("never")) },
        ))
        .unwrap();

    // wait_for_run on a pending run, then cancel.
    let id = job.trigger(json!({"n": 1})).await.unwrap().run.id;
    let waiter = {
        let (durably, id) = (durably.clone(), id.clone());
        tokio::spawn(async move { durably.wait_for_run(&id, WaitOptions::new()).await })
    };
    durably.cancel(&id).await.unwrap();
    let error = within("wait_for_run settles", LIMIT, waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, Error::Cancelled { run_id } if *run_id == id),
        "{error:?}"
    );
    assert_eq!(error.to_string(), format!("Run was cancelled: {id}"));
    // And every later wait on it.
    let again = durably
        .wait_for_run(&id, WaitOptions::new())
        .await
        .unwrap_err();
    assert!(again.is_cancelled());

    // trigger_and_wait on a pending run that gets cancelled.
    let waiter = {
        let job = job.clone();
        tokio::spawn(async move {
            job.trigger_and_wait(json!({"n": 2}), TriggerOptions::new(), WaitOptions::new())
                .await
        })
    };
    let pending = eventually("second run is pending", LIMIT, || async {
        durably
            .get_runs(&RunFilter::new().status(RunStatus::Pending))
            .await
            .unwrap()
            .pop()
    })
    .await;
    durably.cancel(&pending.id).await.unwrap();
    let error = within("trigger_and_wait settles", LIMIT, waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert!(error.is_cancelled(), "{error:?}");
    let run = durably.get_run(&pending.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(run.completed_at.is_some());
}

/// Cancels `id` through this process's `cancel` or, as another process would, in the store
/// alone (no in-process event).
async fn cancel_from(durably: &durably::Durably, id: &str, in_process: bool) {
    if in_process {
        durably.cancel(id).await.unwrap();
    } else {
        assert!(
            durably
                .store()
                .cancel_run(id, Timestamp::now())
                .await
                .unwrap()
        );
    }
}

/// A job that ignores its token and keeps reporting after its run was cancelled: progress and
/// log calls return the cancellation, and nothing they report is stored or emitted.
async fn reports_after_a_cancel(backend: Backend, in_process: bool) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let recorder = Recorder::attach(&durably);
    let (entered, release) = (Gate::new(), Gate::new());
    let results = Arc::new(Mutex::new(Vec::<String>::new()));
    let job = {
        let (entered, release, results) = (entered.clone(), release.clone(), results.clone());
        durably
            .register(Job::new(
                "reports-after-cancel",
                move |step: StepContext, _: Value| {
                    let (entered, release) = (entered.clone(), release.clone());
                    let results = results.clone();
                    async move {
                        step.progress(1, Some(3), None).await?;
                        entered.open();
                        release.wait().await;
                        let outcome = |r: durably::Result<()>| match r {
                            Ok(()) => "ok".to_string(),
                            Err(e) => e.to_string(),
                        };
                        let progress = step.progress(2, Some(3), Some("after")).await;
                        let log = step.log().info("after the cancel", None).await;
                        results
                            .lock()
                            .unwrap()
                            .extend([outcome(progress), outcome(log)]);
                        Ok(json!("done"))
                    }
                },
            ))
            .unwrap()
    };
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    within("job starts", LIMIT, entered.wait()).await;
    cancel_from(&durably, &id, in_process).await;
    release.open();
    within("stop waits for the run", LIMIT, durably.stop()).await;

    let refused = format!("Run was cancelled: {id}");
    assert_eq!(*results.lock().unwrap(), [refused.clone(), refused]);
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(
        run.progress.map(|p| p.current),
        Some(1),
        "the later progress is not stored"
    );
    let logs = durably.get_logs(&id).await.unwrap();
    assert!(logs.is_empty(), "{logs:?}");
    let events = recorder.flush(&durably).await;
    assert_eq!(count(&events, EventType::RunProgress), 1, "{events:?}");
    assert_eq!(count(&events, EventType::LogWrite), 0, "{events:?}");
}

async fn reports_after_an_in_process_cancel_are_refused(backend: Backend) {
    reports_after_a_cancel(backend, true).await
}

async fn reports_after_a_database_cancel_are_refused(backend: Backend) {
    reports_after_a_cancel(backend, false).await
}

/// The job function (no steps) returns after its run was cancelled.
async fn cancelled_result(backend: Backend, in_process: bool) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let recorder = Recorder::attach(&durably);
    let entered = Gate::new();
    let release = Gate::new();
    let job = {
        let (entered, release) = (entered.clone(), release.clone());
        durably
            .register(Job::new(
                "cancelled-result",
                move |_: StepContext, _: Value| {
                    let (entered, release) = (entered.clone(), release.clone());
                    async move {
                        entered.open();
                        release.wait().await;
                        Ok(json!({"written": true}))
                    }
                },
            ))
            .unwrap()
    };
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    within("job starts", LIMIT, entered.wait()).await;
    cancel_from(&durably, &id, in_process).await;
    release.open();
    within("stop waits for the run", LIMIT, durably.stop()).await;
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.output, None);
    assert_eq!(run.error, None);
    let events = recorder.flush(&durably).await;
    assert_eq!(count(&events, EventType::RunComplete), 0);
    assert_eq!(count(&events, EventType::RunFail), 0);
    // Announced once: by `cancel`, or by the worker that found the cancel made elsewhere (a
    // refused completion of a cancelled run is no worker error).
    assert_eq!(count(&events, EventType::RunCancel), 1, "{events:?}");
    assert_eq!(count(&events, EventType::WorkerError), 0, "{events:?}");
}

async fn cancelled_run_result_is_not_written(backend: Backend) {
    cancelled_result(backend, true).await;
}

async fn database_cancelled_run_result_is_not_written(backend: Backend) {
    cancelled_result(backend, false).await;
}

async fn terminal_runs_cannot_be_cancelled(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "terminal-cancel",
            |_: StepContext, _: Value| async { Ok(json!(1)) },
        ))
        .unwrap();
    durably.start();
    let done = job
        .trigger_and_wait(json!({}), TriggerOptions::new(), WaitOptions::new())
        .await
        .unwrap();
    durably.stop().await;
    let error = durably.cancel(&done.id).await.unwrap_err();
    assert!(matches!(error, Error::Conflict(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("Cannot cancel completed run: {}", done.id)
    );
    assert!(
        !durably
            .store()
            .cancel_run(&done.id, Timestamp::now())
            .await
            .unwrap()
    );
    let run = durably.get_run(&done.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!(1)));
}

/// Another process cancels the run (no in-process event) while the job is between two steps.
/// `settle`: how long the job stays between the steps after the cancel.
async fn cancel_between_steps(backend: Backend, settle: Duration) -> (String, Vec<Event>, usize) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let recorder = Recorder::attach(&durably);
    let (entered, release) = (Gate::new(), Gate::new());
    let step2_calls = Arc::new(AtomicUsize::new(0));
    let outcome = Arc::new(Mutex::new(None::<String>));
    let job = {
        let (entered, release) = (entered.clone(), release.clone());
        let (calls, outcome) = (step2_calls.clone(), outcome.clone());
        durably
            .register(Job::new(
                "between-steps",
                move |step: StepContext, _: Value| {
                    let (entered, release) = (entered.clone(), release.clone());
                    let (calls, outcome) = (calls.clone(), outcome.clone());
                    async move {
                        step.run("step1", |_| async { Ok(1) }).await?;
                        entered.open();
                        release.wait().await;
                        let result = step
                            .run("step2", |_| async move {
                                calls.fetch_add(1, Ordering::SeqCst);
                                Ok(2)
                            })
                            .await;
                        *outcome.lock().unwrap() = Some(match &result {
                            Ok(_) => "ok".to_string(),
                            Err(e) => e.to_string(),
                        });
                        result?;
                        Ok(json!("completed"))
                    }
                },
            ))
            .unwrap()
    };
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    within("step1 done", LIMIT, entered.wait()).await;
    assert!(
        durably
            .store()
            .cancel_run(&id, Timestamp::now())
            .await
            .unwrap()
    );
    if !settle.is_zero() {
        tokio::time::sleep(settle).await;
    }
    release.open();
    within("stop waits for the run", LIMIT, durably.stop()).await;

    // Whatever the timing: the run stays cancelled, step2's result is not stored and
    // `step.run` reports the cancellation.
    assert_eq!(
        outcome.lock().unwrap().clone(),
        Some(format!("Run was cancelled: {id}"))
    );
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.output, None);
    let names: Vec<_> = durably
        .get_steps(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["step1"]);
    let events = recorder.flush(&durably).await;
    assert_eq!(count(&events, EventType::StepFail), 0);
    assert_eq!(count(&events, EventType::RunComplete), 0);
    assert_eq!(
        count(&events, EventType::RunCancel),
        1,
        "the worker announces the cancel it found"
    );
    (id, events, step2_calls.load(Ordering::SeqCst))
}

/// The cancel has been in the database for a while when the job reaches `step.run("step2")`:
/// the pre-step read sees it (upstream §3.1 step 2) and step2's body never runs.
async fn database_level_cancel_between_steps_stops_the_next_step(backend: Backend) {
    let (_, events, step2_calls) = cancel_between_steps(backend, Duration::from_millis(500)).await;
    assert_eq!(step2_calls, 0, "step2 never ran");
    let started: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepStart { step_name, .. } => Some(step_name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["step1"]);
    assert_eq!(
        count(&events, EventType::StepCancel),
        0,
        "nothing was interrupted"
    );
}

/// The job reaches `step.run("step2")` right after the cancel. The worker may skip the pre-step
/// read while its last fenced write is recent, so step2's body may run once; its result is
/// refused and reported with exactly one `step:cancel`.
async fn database_level_cancel_right_before_a_step_is_refused(backend: Backend) {
    let (id, events, step2_calls) = cancel_between_steps(backend, Duration::ZERO).await;
    assert!(step2_calls <= 1);
    let expected: Vec<(String, String)> = if step2_calls == 1 {
        vec![(id.clone(), "step2".to_string())]
    } else {
        Vec::new()
    };
    assert_eq!(step_cancels(&events), expected);
}

backend_tests!(
    reports_after_an_in_process_cancel_are_refused,
    reports_after_a_database_cancel_are_refused,
    cancel_during_a_step_fires_the_token,
    cancel_while_a_step_ignores_its_token,
    database_level_cancel_is_noticed_at_the_fenced_write,
    cancel_while_pending_rejects_waits,
    cancelled_run_result_is_not_written,
    database_cancelled_run_result_is_not_written,
    terminal_runs_cannot_be_cancelled,
    database_level_cancel_between_steps_stops_the_next_step,
    database_level_cancel_right_before_a_step_is_refused,
);
