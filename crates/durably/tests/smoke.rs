//! End-to-end smoke test: trigger, execute with the worker, read back.
mod common;

use std::time::Duration;

use common::{Backend, TestDb, backend_tests, within};
use durably::{Job, RunStatus, StepContext, TriggerOptions, WaitOptions};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Add {
    a: i64,
    b: i64,
}

async fn a_job_runs_steps_and_completes(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let add = durably
        .register(Job::new(
            "add",
            |step: StepContext, input: Add| async move {
                let a = step.run("a", |_| async move { Ok(input.a) }).await?;
                let b = step.run("b", |_| async move { Ok(input.b) }).await?;
                step.progress(2, Some(2), Some("done")).await?;
                step.log()
                    .info("added", serde_json::json!({"sum": a + b}))
                    .await?;
                Ok(a + b)
            },
        ))
        .expect("register");
    durably.start();
    let result = within(
        "trigger_and_wait",
        Duration::from_secs(10),
        add.trigger_and_wait(
            Add { a: 2, b: 40 },
            TriggerOptions::new(),
            WaitOptions::new(),
        ),
    )
    .await
    .expect("run completes");
    assert_eq!(result.output, Some(42));
    let run = add
        .get_run(&result.id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.completed_step_count, 2);
    assert_eq!(run.progress.as_ref().map(|p| p.current), Some(2));
    let steps = durably.get_steps(&result.id).await.expect("steps");
    assert_eq!(
        steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let logs = durably.get_logs(&result.id).await.expect("logs");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].data, Some(serde_json::json!({"sum": 42})));
    durably.stop().await;
}

backend_tests!(a_job_runs_steps_and_completes);
