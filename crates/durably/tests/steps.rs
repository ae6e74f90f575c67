//! `step.run` (persist, replay, failure, cancellation-free paths), progress, logs, step
//! retention and the job function's outcome (upstream step.shared, log.shared, run-api progress).
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Backend, LIMIT, Recorder, TestDb, backend_tests, eventually, terminal, within};
use durably::{
    Event, EventKind, EventType, Job, LogLevel, Progress, RunStatus, StepContext, StepStatus,
    Timestamp, store::RunPatch,
};
use serde_json::{Value, json};

/// Records every event of an instance, in emission order.
/// Polls until the run is terminal.
fn step_name(event: &Event) -> Option<&str> {
    match &event.kind {
        EventKind::StepStart { step_name, .. }
        | EventKind::StepComplete { step_name, .. }
        | EventKind::StepFail { step_name, .. }
        | EventKind::StepCancel { step_name, .. } => Some(step_name),
        EventKind::LogWrite { step_name, .. } => step_name.as_deref(),
        _ => None,
    }
}

async fn step_returning_a_value_completes_the_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let job = durably
        .register(Job::new(
            "step-value",
            |step: StepContext, _input: Value| async move {
                let result = step.run("compute", |_| async { Ok(42) }).await?;
                Ok(json!({ "result": result }))
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({ "result": 42 })));
    assert_eq!(run.error, None);
    durably.stop().await;
}

async fn steps_are_stored_in_index_order(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let job = durably
        .register(Job::new(
            "two-steps",
            |step: StepContext, _input: Value| async move {
                step.run("step1", |_| async { Ok("result1".to_string()) })
                    .await?;
                step.run("step2", |_| async { Ok("result2".to_string()) })
                    .await?;
                Ok(())
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    assert_eq!(terminal(&durably, &id).await.status, RunStatus::Completed);
    let steps = durably.get_steps(&id).await.unwrap();
    let summary: Vec<_> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.index, s.status, s.output.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("step1", 0, StepStatus::Completed, Some(json!("result1"))),
            ("step2", 1, StepStatus::Completed, Some(json!("result2"))),
        ]
    );
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.completed_step_count, 2);
    assert_eq!(run.current_step_index, 2);
    durably.stop().await;
}

async fn resumed_run_replays_completed_steps(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let recorder = Recorder::attach(&durably);
    let step1_calls = Arc::new(AtomicUsize::new(0));
    let step2_calls = Arc::new(AtomicUsize::new(0));
    let (c1, c2) = (step1_calls.clone(), step2_calls.clone());
    let job = durably
        .register(Job::new(
            "resume",
            move |step: StepContext, _input: Value| {
                let (c1, c2) = (c1.clone(), c2.clone());
                async move {
                    let first = step
                        .run("step1", |_| async move {
                            let call = c1.fetch_add(1, Ordering::SeqCst) + 1;
                            Ok(format!("computed-call-{call}"))
                        })
                        .await?;
                    step.run("step2", |_| async move {
                        if c2.fetch_add(1, Ordering::SeqCst) == 0 {
                            Err("step2 fails the first time".into())
                        } else {
                            Ok(())
                        }
                    })
                    .await?;
                    Ok(json!({ "step1Result": first }))
                }
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let failed = terminal(&durably, &id).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("step2 fails the first time"));
    assert_eq!(step1_calls.load(Ordering::SeqCst), 1);
    assert_eq!(step2_calls.load(Ordering::SeqCst), 1);

    let reset = RunPatch {
        status: Some(RunStatus::Pending),
        ..RunPatch::default()
    };
    assert!(
        durably
            .store()
            .admin()
            .expect("operator writes")
            .update_run(&id, reset, Timestamp::now())
            .await
            .unwrap()
    );
    let run = eventually("resumed run completes", LIMIT, || async {
        durably
            .get_run(&id)
            .await
            .unwrap()
            .filter(|r| r.status == RunStatus::Completed)
    })
    .await;
    assert_eq!(
        run.output,
        Some(json!({ "step1Result": "computed-call-1" }))
    );
    assert_eq!(step1_calls.load(Ordering::SeqCst), 1, "step1 replayed");
    assert_eq!(step2_calls.load(Ordering::SeqCst), 2);
    assert_eq!(run.completed_step_count, 2);

    // Replayed steps emit nothing: step1 started and completed exactly once over both attempts.
    let events = recorder.flush(&durably).await;
    let count = |t: EventType, name: &str| {
        events
            .iter()
            .filter(|e| e.event_type() == t && step_name(e) == Some(name))
            .count()
    };
    assert_eq!(count(EventType::StepStart, "step1"), 1);
    assert_eq!(count(EventType::StepComplete, "step1"), 1);
    assert_eq!(count(EventType::StepStart, "step2"), 2);
    assert_eq!(count(EventType::StepFail, "step2"), 1);
    assert_eq!(count(EventType::StepComplete, "step2"), 1);
    durably.stop().await;
}

/// A step is identified by its name: a second `step.run` with a name this execution already
/// used is refused (upstream silently returns the first step's output), its function never
/// runs, and the run fails with a message that names the step and says what to do.
async fn a_step_name_used_twice_in_one_execution_fails_the_run_naming_it(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let recorder = Recorder::attach(&durably);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let job = durably
        .register(Job::new(
            "dupes",
            move |step: StepContext, _input: Value| {
                let counter = counter.clone();
                async move {
                    let c = counter.clone();
                    let a = step
                        .run("same", |_| async move {
                            c.fetch_add(1, Ordering::SeqCst);
                            Ok("one".to_string())
                        })
                        .await?;
                    let b = step
                        .run("same", |_| async move {
                            counter.fetch_add(1, Ordering::SeqCst);
                            Ok("two".to_string())
                        })
                        .await?;
                    Ok(json!({ "a": a, "b": b }))
                }
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        run.error.as_deref(),
        Some(
            format!(
                "Step name \"same\" is used twice in one execution of run {id}: a step is \
                 identified by its name, so a second call would return the first one's stored \
                 output. Give each call its own name (in a loop: format!(\"same-{{i}}\"))"
            )
            .as_str()
        )
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "second fn never ran");
    assert_eq!(durably.get_steps(&id).await.unwrap().len(), 1);
    assert_eq!(recorder.of(&durably, EventType::StepStart).await.len(), 1);
    durably.stop().await;
}

async fn each_executed_step_emits_one_start_and_one_complete(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let recorder = Recorder::attach(&durably);
    let job = durably
        .register(Job::new(
            "step-events",
            |step: StepContext, _input: Value| async move {
                step.run("myStep", |_| async { Ok("hello".to_string()) })
                    .await?;
                step.run("other", |_| async { Ok(7) }).await?;
                Ok(())
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    assert_eq!(terminal(&durably, &id).await.status, RunStatus::Completed);
    durably.stop().await;
    let events = recorder.flush(&durably).await;
    let starts: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepStart {
                run_id,
                job_name,
                step_name,
                step_index,
                ..
            } => Some((
                run_id.clone(),
                job_name.as_str(),
                step_name.as_str(),
                *step_index,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        starts,
        [
            (id.clone(), "step-events", "myStep", 0),
            (id.clone(), "step-events", "other", 1),
        ]
    );
    let completes: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepComplete {
                run_id,
                step_name,
                step_index,
                output,
                ..
            } => Some((
                run_id.clone(),
                step_name.as_str(),
                *step_index,
                output.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        completes,
        [
            (id.clone(), "myStep", 0, json!("hello")),
            (id.clone(), "other", 1, json!(7)),
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.event_type(), EventType::StepFail | EventType::StepCancel))
    );
}

async fn failing_step_fails_the_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let recorder = Recorder::attach(&durably);
    let job = durably
        .register(Job::new(
            "step-fail",
            |step: StepContext, _input: Value| async move {
                step.run("ok-step", |_| async { Ok(1) }).await?;
                let error = step
                    .run("failing-step", |_| async {
                        Err::<(), _>(std::io::Error::other("intentional error").into())
                    })
                    .await
                    .unwrap_err();
                // The step's own error, typed, without parsing messages.
                match &error {
                    durably::Error::Step { name, source } => {
                        assert_eq!(name, "failing-step");
                        assert!(source.downcast_ref::<std::io::Error>().is_some());
                    }
                    other => panic!("expected Error::Step, got {other:?}"),
                }
                Err::<(), _>(error)
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("intentional error"));
    assert_eq!(run.output, None);

    let steps = durably.get_steps(&id).await.unwrap();
    let failed: Vec<_> = steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].name, "failing-step");
    assert_eq!(failed[0].error.as_deref(), Some("intentional error"));
    assert_eq!(failed[0].output, None);

    durably.stop().await;
    let events = recorder.flush(&durably).await;
    let step_fails: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepFail {
                error, step_name, ..
            } => Some((step_name.as_str(), error.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(step_fails, [("failing-step", "intentional error")]);
    assert!(
        events
            .iter()
            .all(|e| e.event_type() != EventType::StepCancel)
    );
    let run_fails: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::RunFail {
                run_id,
                error,
                failed_step_name,
                ..
            } => Some((run_id.clone(), error.as_str(), failed_step_name.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        run_fails,
        [(id.clone(), "intentional error", "failing-step")]
    );
}

/// Upstream v4: every executed step consumes an index, a failed one too, and `run:fail` names
/// the lowest-index step that failed under this lease (not the last one).
async fn failed_steps_consume_an_index_and_run_fail_names_the_first(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let recorder = Recorder::attach(&durably);
    let job = durably
        .register(Job::new(
            "recovering",
            |step: StepContext, _input: Value| async move {
                // The job carries on after a failed step, then fails at a later one.
                let _ = step
                    .run("flaky", |_| async { Err::<(), _>("first try".into()) })
                    .await;
                step.run("fallback", |_| async { Ok(1) }).await?;
                step.run("final", |_| async { Err::<(), _>("gave up".into()) })
                    .await?;
                Ok(())
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    let steps = durably.get_steps(&id).await.unwrap();
    let indexes: Vec<_> = steps.iter().map(|s| (s.name.as_str(), s.index)).collect();
    assert_eq!(indexes, [("flaky", 0), ("fallback", 1), ("final", 2)]);
    durably.stop().await;
    let events = recorder.flush(&durably).await;
    let named: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::RunFail {
                failed_step_name, ..
            } => Some(failed_step_name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(named, ["flaky"]);
}

async fn only_failing_step_is_recorded_as_failed(backend: Backend) {
    // Upstream: a single throwing step → exactly one step row, `failed`, with the error.
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let job = durably
        .register(Job::new(
            "single-fail",
            |step: StepContext, _input: Value| async move {
                step.run("boom", |_| async { Err::<(), _>("Step failed!".into()) })
                    .await?;
                Ok(())
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.as_deref().unwrap().contains("Step failed!"));
    let steps = durably.get_steps(&id).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].status, StepStatus::Failed);
    assert!(steps[0].error.as_deref().unwrap().contains("Step failed!"));
    durably.stop().await;
}

async fn progress_events_in_order_and_last_is_stored(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let recorder = Recorder::attach(&durably);
    let job = durably
        .register(Job::new(
            "progress-test",
            |step: StepContext, _input: Value| async move {
                step.progress(1, Some(3), Some("Step 1 of 3")).await?;
                step.progress(2, Some(3), Some("Step 2 of 3")).await?;
                step.progress(3, Some(3), Some("Complete")).await?;
                Ok(())
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed);
    let expected = |c, m: &str| Progress {
        current: c,
        total: Some(3),
        message: Some(m.to_string()),
    };
    assert_eq!(run.progress, Some(expected(3, "Complete")));
    durably.stop().await;
    let progress: Vec<_> = recorder
        .of(&durably, EventType::RunProgress)
        .await
        .into_iter()
        .map(|e| match e.kind {
            EventKind::RunProgress {
                run_id,
                job_name,
                progress,
                ..
            } => (run_id, job_name, progress),
            _ => unreachable!(),
        })
        .collect();
    let tuple = |c, m| (id.clone(), "progress-test".to_string(), expected(c, m));
    assert_eq!(
        progress,
        [
            tuple(1, "Step 1 of 3"),
            tuple(2, "Step 2 of 3"),
            tuple(3, "Complete")
        ]
    );
}

async fn progress_with_current_only_is_stored_as_current_only(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "progress-partial",
            |step: StepContext, input: Value| async move {
                match input["mode"].as_str() {
                    Some("current") => step.progress(50, None, None).await?,
                    Some("total") => step.progress(75, Some(100), None).await?,
                    _ => {
                        step.progress(25, Some(100), Some("Processing items..."))
                            .await?
                    }
                }
                Ok(())
            },
        ))
        .unwrap();
    durably.start();
    let mut stored = Vec::new();
    for mode in ["current", "total", "all"] {
        let id = job.trigger(json!({ "mode": mode })).await.unwrap().run.id;
        let run = terminal(&durably, &id).await;
        assert_eq!(run.status, RunStatus::Completed);
        stored.push(run.progress.expect("progress stored"));
    }
    assert_eq!(
        stored,
        [
            Progress {
                current: 50,
                total: None,
                message: None
            },
            Progress {
                current: 75,
                total: Some(100),
                message: None
            },
            Progress {
                current: 25,
                total: Some(100),
                message: Some("Processing items...".into())
            },
        ]
    );
    // The wire form omits the absent fields (`{"current":50}`).
    assert_eq!(
        serde_json::to_value(&stored[0]).unwrap(),
        json!({"current": 50})
    );
    durably.stop().await;
}

fn logging_job() -> Job<Value, ()> {
    Job::new("logger", |step: StepContext, _input: Value| async move {
        step.log().info("Outside step", None).await?;
        let inner = step.clone();
        step.run("my-step", |_| async move {
            inner
                .log()
                .warn("Inside step", json!({"itemId": 123, "status": "active"}))
                .await?;
            Ok(())
        })
        .await?;
        step.log().error("After step", json!({"code": 42})).await?;
        Ok(())
    })
}

type LogTuple = (LogLevel, String, Option<Value>, Option<String>);

fn expected_logs() -> Vec<LogTuple> {
    vec![
        (LogLevel::Info, "Outside step".into(), None, None),
        (
            LogLevel::Warn,
            "Inside step".into(),
            Some(json!({"itemId": 123, "status": "active"})),
            Some("my-step".into()),
        ),
        (
            LogLevel::Error,
            "After step".into(),
            Some(json!({"code": 42})),
            None,
        ),
    ]
}

fn log_events(events: &[Event], id: &str) -> Vec<LogTuple> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::LogWrite {
                run_id,
                level,
                message,
                data,
                step_name,
                ..
            } => {
                assert_eq!(run_id, id);
                Some((*level, message.clone(), data.clone(), step_name.clone()))
            }
            _ => None,
        })
        .collect()
}

async fn logs_have_levels_data_and_step_attribution(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let recorder = Recorder::attach(&durably);
    let job = durably.register(logging_job()).unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    assert_eq!(terminal(&durably, &id).await.status, RunStatus::Completed);
    durably.stop().await;
    let events = recorder.flush(&durably).await;
    assert_eq!(log_events(&events, &id), expected_logs());

    // Persisted by default, in order, with the same attribution (and kept after completion
    // although preserve_steps is off: logs are history).
    let stored: Vec<LogTuple> = durably
        .get_logs(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|l| {
            assert_eq!(l.run_id, id);
            (l.level, l.message, l.data, l.step_name)
        })
        .collect();
    assert_eq!(stored, expected_logs());
}

async fn persist_logs_false_emits_but_stores_nothing(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.persist_logs(false)).await;
    let recorder = Recorder::attach(&durably);
    let job = durably.register(logging_job()).unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    assert_eq!(terminal(&durably, &id).await.status, RunStatus::Completed);
    durably.stop().await;
    let events = recorder.flush(&durably).await;
    assert_eq!(log_events(&events, &id), expected_logs());
    assert!(durably.get_logs(&id).await.unwrap().is_empty());
}

fn step_and_log_job() -> Job<Value, ()> {
    Job::new("retention", |step: StepContext, input: Value| async move {
        step.log().info("started", None).await?;
        step.run("s1", |_| async { Ok(1) }).await?;
        if input["fail"] == json!(true) {
            return Err(durably::Error::Job("asked to fail".into()));
        }
        Ok(())
    })
}

async fn steps_are_dropped_by_default_but_logs_kept(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    assert!(!durably.config().preserve_steps);
    let job = durably.register(step_and_log_job()).unwrap();
    durably.start();
    let ok = job.trigger(json!({})).await.unwrap().run.id;
    let failed = job.trigger(json!({"fail": true})).await.unwrap().run.id;
    assert_eq!(terminal(&durably, &ok).await.status, RunStatus::Completed);
    let failed_run = terminal(&durably, &failed).await;
    assert_eq!(failed_run.status, RunStatus::Failed);
    assert_eq!(failed_run.error.as_deref(), Some("asked to fail"));
    assert!(
        durably.get_steps(&ok).await.unwrap().is_empty(),
        "steps of the completed run"
    );
    assert_eq!(
        durably.get_steps(&failed).await.unwrap().len(),
        1,
        "a failed run keeps its steps, for a resume"
    );
    for id in [&ok, &failed] {
        let logs = durably.get_logs(id).await.unwrap();
        assert_eq!(logs.len(), 1, "logs of {id} are kept");
        assert_eq!(logs[0].message, "started");
    }
    // The counters still tell how many steps completed.
    let run = durably.get_run(&ok).await.unwrap().unwrap();
    assert_eq!(run.completed_step_count, 1);
    durably.stop().await;
}

async fn preserve_steps_keeps_steps(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let job = durably.register(step_and_log_job()).unwrap();
    durably.start();
    let ok = job.trigger(json!({})).await.unwrap().run.id;
    let failed = job.trigger(json!({"fail": true})).await.unwrap().run.id;
    assert_eq!(terminal(&durably, &ok).await.status, RunStatus::Completed);
    assert_eq!(terminal(&durably, &failed).await.status, RunStatus::Failed);
    for id in [&ok, &failed] {
        let steps = durably.get_steps(id).await.unwrap();
        assert_eq!(steps.len(), 1, "steps of {id}");
        assert_eq!(steps[0].name, "s1");
        assert_eq!(steps[0].output, Some(json!(1)));
        assert_eq!(durably.get_logs(id).await.unwrap().len(), 1);
    }
    durably.stop().await;
}

async fn invalid_output_fails_the_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(
            Job::new(
                "validated-output",
                |_step: StepContext, n: i64| async move { Ok(n) },
            )
            .validate_output(|n: &i64| {
                if *n >= 0 {
                    Ok(())
                } else {
                    Err("must not be negative".into())
                }
            }),
        )
        .unwrap();
    durably.start();
    let bad = job.trigger(-1).await.unwrap().run.id;
    let good = job.trigger(5).await.unwrap().run.id;
    let bad_run = terminal(&durably, &bad).await;
    assert_eq!(bad_run.status, RunStatus::Failed);
    let error = bad_run.error.unwrap();
    assert!(error.starts_with("Invalid output: "), "{error}");
    assert!(error.contains("must not be negative"), "{error}");
    assert_eq!(bad_run.output, None);
    let good_run = terminal(&durably, &good).await;
    assert_eq!(good_run.status, RunStatus::Completed);
    assert_eq!(good_run.output, Some(json!(5)));
    durably.stop().await;
}

async fn panicking_job_fails_and_worker_continues(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "maybe-panic",
            |step: StepContext, input: Value| async move {
                if input["panic"] == json!(true) {
                    step.run("before-panic", |_| async { Ok(()) }).await?;
                    panic!("kaboom");
                }
                Ok(json!("fine"))
            },
        ))
        .unwrap();
    durably.start();
    let panicking = job.trigger(json!({"panic": true})).await.unwrap().run.id;
    let next = job.trigger(json!({"panic": false})).await.unwrap().run.id;
    let run = terminal(&durably, &panicking).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(error.starts_with("Job panicked"), "{error}");
    assert!(error.contains("kaboom"), "{error}");
    let next_run = terminal(&durably, &next).await;
    assert_eq!(next_run.status, RunStatus::Completed);
    assert_eq!(next_run.output, Some(json!("fine")));
    assert!(durably.is_running());
    // And it keeps going after that.
    let third = job.trigger(json!({})).await.unwrap().run.id;
    assert_eq!(
        terminal(&durably, &third).await.status,
        RunStatus::Completed
    );
    durably.stop().await;
}

async fn step_context_exposes_run_id_and_a_live_token(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "context",
            |step: StepContext, _input: Value| async move {
                let aborted_in_step = step
                    .run("check", |token| async move { Ok(token.is_cancelled()) })
                    .await?;
                step.check_cancelled()?;
                Ok(json!({
                    "runId": step.run_id(),
                    "jobName": step.job_name(),
                    "abortedInStep": aborted_in_step,
                    "aborted": step.is_cancelled() || step.token().is_cancelled(),
                }))
            },
        ))
        .unwrap();
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let run = within("run", LIMIT, terminal(&durably, &id)).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(
        run.output,
        Some(json!({
            "runId": id,
            "jobName": "context",
            "abortedInStep": false,
            "aborted": false,
        }))
    );
    durably.stop().await;
}

backend_tests!(
    failed_steps_consume_an_index_and_run_fail_names_the_first,
    step_returning_a_value_completes_the_run,
    steps_are_stored_in_index_order,
    resumed_run_replays_completed_steps,
    a_step_name_used_twice_in_one_execution_fails_the_run_naming_it,
    each_executed_step_emits_one_start_and_one_complete,
    failing_step_fails_the_run,
    only_failing_step_is_recorded_as_failed,
    progress_events_in_order_and_last_is_stored,
    progress_with_current_only_is_stored_as_current_only,
    logs_have_levels_data_and_step_attribution,
    persist_logs_false_emits_but_stores_nothing,
    steps_are_dropped_by_default_but_logs_kept,
    preserve_steps_keeps_steps,
    invalid_output_fails_the_run,
    panicking_job_fails_and_worker_continues,
    step_context_exposes_run_id_and_a_live_token,
);
