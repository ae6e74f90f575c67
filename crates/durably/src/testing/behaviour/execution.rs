//! Behaviour: executing a job (steps, output, failure, progress and logs), waiting for it,
//! serverless draining, and the step policy.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::{
    Disposition, Error, EventType, Job, LogLevel, Progress, RunFilter, RunStatus, StepContext,
    StepStatus, TriggerOptions, WaitOptions,
};

/// Behaviour: a job's steps are stored as they complete, in order, with their outputs, and the
/// run completes with the job's output.
pub async fn a_job_with_steps_completes_with_its_output(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let (paused, resume) = (Gate::new(), Gate::new());
    let job = {
        let (paused, resume) = (paused.clone(), resume.clone());
        durably
            .register(Job::new(
                "behaviour-steps",
                move |step: StepContext, n: u64| {
                    let (paused, resume) = (paused.clone(), resume.clone());
                    async move {
                        let a = step.run("double", |_| async move { Ok(n * 2) }).await?;
                        let b = step.run("add-one", |_| async move { Ok(a + 1) }).await?;
                        let c = step
                            .run("describe", |_| async move { Ok(format!("{n} -> {b}")) })
                            .await?;
                        paused.open();
                        resume.wait().await;
                        Ok(json!({ "a": a, "b": b, "c": c }))
                    }
                },
            ))
            .expect("register")
    };
    durably.start();
    let triggered = job.trigger(20).await.expect("trigger");
    assert_eq!(triggered.disposition, Disposition::Created);
    let id = triggered.run.id;
    within("the job runs its three steps", paused.wait()).await;

    // While the run executes, its steps are readable whatever the step policy.
    let steps: Vec<_> = durably
        .get_steps(&id)
        .await
        .expect("get_steps")
        .into_iter()
        .map(|s| (s.name, s.index, s.status, s.output))
        .collect();
    assert_eq!(
        steps,
        [
            ("double".into(), 0, StepStatus::Completed, Some(json!(40))),
            ("add-one".into(), 1, StepStatus::Completed, Some(json!(41))),
            (
                "describe".into(),
                2,
                StepStatus::Completed,
                Some(json!("20 -> 41"))
            ),
        ],
        "the steps, in order, with their outputs"
    );
    let leased = run_of(&durably, &id).await;
    assert_eq!(leased.status, RunStatus::Leased);
    assert_eq!(leased.completed_step_count, 3);
    assert_eq!(leased.lease_generation, 1);
    assert!(leased.lease_owner.is_some());

    resume.open();
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(
        run.output,
        Some(json!({ "a": 40, "b": 41, "c": "20 -> 41" }))
    );
    assert_eq!(run.error, None);
    assert_eq!(run.input, json!(20));
    assert_eq!(run.completed_step_count, 3);
    assert_eq!(run.lease_owner, None);
    assert_eq!(run.lease_expires_at, None);
    let (started, completed) = (
        run.started_at.expect("started_at is set"),
        run.completed_at.expect("completed_at is set"),
    );
    assert!(started <= completed);
    let typed = job.get_run(&id).await.expect("get_run").expect("exists");
    assert_eq!(typed.input, 20);
    within("stop", durably.stop()).await;
}

/// Behaviour: a step that fails fails the run with the step's error text; later steps never
/// run, `run:fail` names the step, and waiting on the run gives [`Error::RunFailed`].
pub async fn a_failing_step_fails_the_run_with_its_error(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let recorder = Recorder::attach(&durably);
    let calls = Counts::new(3);
    let job = {
        let calls = calls.clone();
        durably
            .register(Job::new(
                "behaviour-failing-step",
                move |step: StepContext, _: Value| {
                    let calls = calls.clone();
                    async move {
                        let (c0, c1, c2) = (calls.clone(), calls.clone(), calls.clone());
                        step.run("prepare", |_| async move {
                            c0.hit(0);
                            Ok(1)
                        })
                        .await?;
                        step.run("charge", |_| async move {
                            c1.hit(1);
                            Err::<(), _>(std::io::Error::other("card declined").into())
                        })
                        .await?;
                        step.run("ship", |_| async move {
                            c2.hit(2);
                            Ok(())
                        })
                        .await?;
                        Ok(json!("shipped"))
                    }
                },
            ))
            .expect("register")
    };
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("card declined"));
    assert_eq!(run.output, None);
    assert_eq!(run.lease_owner, None);
    assert_eq!(
        calls.get(),
        [1, 1, 0],
        "prepare and charge ran once; ship never"
    );

    match durably
        .wait_for_run(&id, WaitOptions::new().timeout(LIMIT))
        .await
    {
        Err(Error::RunFailed { run_id, message }) => {
            assert_eq!(run_id, id);
            assert_eq!(message, "card declined");
        }
        other => panic!("expected Error::RunFailed, got {other:?}"),
    }
    within("stop", durably.stop()).await;
    let events = recorder.flush(&durably).await;
    let fails: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::RunFail {
                run_id,
                error,
                failed_step_name,
                ..
            } => Some((run_id.as_str(), error.as_str(), failed_step_name.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(fails, [(id.as_str(), "card declined", "charge")]);
    assert!(
        events
            .iter()
            .all(|e| e.event_type() != EventType::RunComplete),
        "the failed run never completed"
    );
}

/// Behaviour: `trigger_and_wait` returns the job's output, from this instance's worker or from
/// another instance's (seen through the store), and a failure as [`Error::RunFailed`].
pub async fn trigger_and_wait_returns_the_output_or_the_failure(store: Arc<dyn Store>) {
    let job = || {
        Job::new(
            "behaviour-trigger-and-wait",
            |step: StepContext, n: i64| async move {
                let squared = step.run("square", |_| async move { Ok(n * n) }).await?;
                if n < 0 {
                    return Err(Error::Job(format!("negative input {n}").into()));
                }
                Ok(squared + 1)
            },
        )
    };
    let worker = instance(&store, |b| b).await;
    let here = worker.register(job()).expect("register");
    worker.start();
    let done = within(
        "trigger_and_wait on the instance that executes",
        here.trigger_and_wait(6, TriggerOptions::new(), WaitOptions::new()),
    )
    .await
    .expect("the run completes");
    assert_eq!(done.output, Some(37));
    assert_eq!(done.disposition, Disposition::Created);
    let run = run_of(&worker, &done.id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!(37)));

    // An instance without a worker waits for a run the other instance executes.
    let caller = instance(&store, |b| b).await;
    let there = caller.register(job()).expect("register");
    let done = within(
        "trigger_and_wait on an instance without a worker",
        there.trigger_and_wait(7, TriggerOptions::new(), WaitOptions::new()),
    )
    .await
    .expect("the run completes");
    assert_eq!(done.output, Some(50));

    let failed = within(
        "trigger_and_wait of a failing run",
        there.trigger_and_wait(-2, TriggerOptions::new(), WaitOptions::new()),
    )
    .await;
    match failed {
        Err(Error::RunFailed { run_id, message }) => {
            assert_eq!(message, "negative input -2");
            let run = run_of(&caller, &run_id).await;
            assert_eq!(run.status, RunStatus::Failed);
            assert_eq!(run.error.as_deref(), Some("negative input -2"));
        }
        other => panic!("expected Error::RunFailed, got {other:?}"),
    }
    within("stop", worker.stop()).await;
}

/// Behaviour: progress and logs written by a job are stored: the last progress on the run, the
/// logs in order with their level, data and step.
pub async fn progress_and_logs_are_stored(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let job = durably
        .register(Job::new(
            "behaviour-progress-and-logs",
            |step: StepContext, _: Value| async move {
                step.progress(1, Some(2), Some("half")).await?;
                let inner = step.clone();
                step.run("work", |_| async move {
                    inner.log().info("working", json!({ "item": 1 })).await?;
                    Ok(())
                })
                .await?;
                step.progress(2, Some(2), Some("done")).await?;
                step.log().warn("finished with a warning", None).await?;
                Ok(())
            },
        ))
        .expect("register");
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    assert!(durably.process_one(None).await.expect("process_one"));
    let run = run_of(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(
        run.progress,
        Some(Progress {
            current: 2,
            total: Some(2),
            message: Some("done".into()),
        })
    );
    let logs: Vec<_> = durably
        .get_logs(&id)
        .await
        .expect("get_logs")
        .into_iter()
        .map(|l| (l.run_id, l.step_name, l.level, l.message, l.data))
        .collect();
    assert_eq!(
        logs,
        [
            (
                id.clone(),
                Some("work".into()),
                LogLevel::Info,
                "working".into(),
                Some(json!({ "item": 1 }))
            ),
            (
                id.clone(),
                None,
                LogLevel::Warn,
                "finished with a warning".into(),
                None
            ),
        ]
    );
}

/// Behaviour: without a background worker, `process_one` and `process_until_idle` (serverless)
/// drain the queue, each run once.
pub async fn process_one_and_process_until_idle_drain_the_queue(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let calls = Counts::new(5);
    let job = {
        let calls = calls.clone();
        durably
            .register(Job::new(
                "behaviour-serverless",
                move |step: StepContext, i: usize| {
                    let calls = calls.clone();
                    async move {
                        let tripled = step
                            .run("triple", |_| async move {
                                calls.hit(i);
                                Ok(i * 3)
                            })
                            .await?;
                        Ok(tripled)
                    }
                },
            ))
            .expect("register")
    };
    let triggered = job
        .batch_trigger((0..5).map(|i| (i, TriggerOptions::new())))
        .await
        .expect("batch_trigger");
    assert_eq!(triggered.len(), 5);
    let completed = || async {
        durably
            .get_runs(&RunFilter::new().status(RunStatus::Completed))
            .await
            .expect("get_runs")
            .len()
    };

    assert!(
        durably
            .process_one(Some("serverless-1"))
            .await
            .expect("process_one")
    );
    assert_eq!(completed().await, 1);
    assert_eq!(
        durably
            .process_until_idle(Some("serverless-2"), Some(2))
            .await
            .expect("process_until_idle"),
        2,
        "stops at max_runs"
    );
    assert_eq!(completed().await, 3);
    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process_until_idle"),
        2,
        "the rest"
    );
    assert!(
        !durably.process_one(None).await.expect("process_one"),
        "idle"
    );
    assert_eq!(calls.get(), [1; 5], "each run executed once");
    for (i, result) in triggered.iter().enumerate() {
        let run = run_of(&durably, &result.run.id).await;
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.output, Some(json!(i * 3)));
    }
}

fn two_steps_then(name: &str) -> Job<bool, String> {
    Job::new(name, |step: StepContext, fail: bool| async move {
        let first = step
            .run("first", |_| async { Ok("one".to_string()) })
            .await?;
        let second = step
            .run("second", |_| async move {
                match fail {
                    true => Err("second step failed".into()),
                    false => Ok("two".to_string()),
                }
            })
            .await?;
        Ok(format!("{first}+{second}"))
    })
}

/// Behaviour: with default options, a run that completes drops its steps; a run that fails
/// keeps them, so that `Durably::resume` can replay them.
pub async fn default_options_drop_the_steps_of_an_ended_run(store: Arc<dyn Store>) {
    assert!(
        !store.preserves_steps(),
        "the suite's store has default options"
    );
    let durably = instance(&store, |b| b).await;
    assert!(!durably.config().preserve_steps);
    let job = durably
        .register(two_steps_then("behaviour-drop-steps"))
        .expect("register");
    let ok = job.trigger(false).await.expect("trigger").run.id;
    let failed = job.trigger(true).await.expect("trigger").run.id;
    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process"),
        2
    );

    let ok = run_of(&durably, &ok).await;
    assert_eq!(ok.status, RunStatus::Completed);
    assert_eq!(ok.output, Some(json!("one+two")));
    assert_eq!(ok.completed_step_count, 2, "both steps were written");
    let failed = run_of(&durably, &failed).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("second step failed"));
    let steps = durably.get_steps(&ok.id).await.expect("get_steps");
    assert!(steps.is_empty(), "steps of a completed run kept: {steps:?}");
    let steps = durably.get_steps(&failed.id).await.expect("get_steps");
    assert!(
        steps
            .iter()
            .any(|step| step.name == "first" && step.status == StepStatus::Completed),
        "the failed run keeps its completed step: {steps:?}"
    );
}

/// Behaviour: an instance on the store's view that preserves steps
/// (`DurablyBuilder::preserve_steps(true)`) keeps the steps of completed and failed runs.
/// Passes trivially for a store without such a view.
pub async fn a_preserving_view_keeps_the_steps_of_ended_runs(store: Arc<dyn Store>) {
    if !has_preserving_view(&store) {
        return;
    }
    let durably = instance(&store, |b| b.preserve_steps(true)).await;
    assert!(durably.config().preserve_steps);
    assert!(durably.store().preserves_steps());
    let job = durably
        .register(two_steps_then("behaviour-keep-steps"))
        .expect("register");
    let ok = job.trigger(false).await.expect("trigger").run.id;
    let failed = job.trigger(true).await.expect("trigger").run.id;
    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process"),
        2
    );

    let summary = |steps: Vec<crate::Step>| -> Vec<_> {
        steps
            .into_iter()
            .map(|s| (s.name, s.index, s.status, s.output, s.error))
            .collect()
    };
    let ok_steps = summary(durably.get_steps(&ok).await.expect("get_steps"));
    assert_eq!(
        ok_steps,
        [
            (
                "first".into(),
                0,
                StepStatus::Completed,
                Some(json!("one")),
                None
            ),
            (
                "second".into(),
                1,
                StepStatus::Completed,
                Some(json!("two")),
                None
            ),
        ]
    );
    let failed_steps = summary(durably.get_steps(&failed).await.expect("get_steps"));
    assert_eq!(
        failed_steps,
        [
            (
                "first".into(),
                0,
                StepStatus::Completed,
                Some(json!("one")),
                None
            ),
            (
                "second".into(),
                1,
                StepStatus::Failed,
                None,
                Some("second step failed".into())
            ),
        ]
    );
    // An instance on the default store reads the same rows: the policy is the writer's.
    let reader = instance(&store, |b| b).await;
    assert_eq!(reader.get_steps(&ok).await.expect("get_steps").len(), 2);
}
