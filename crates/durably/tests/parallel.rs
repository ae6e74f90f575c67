//! Parallel steps (`StepContext::all`, upstream's `step.all`): branches run at once, join
//! all-settled, come back typed and in order, replay like any step, and fail with upstream's
//! precedence.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Backend, TestDb, backend_tests, terminal};
use durably::{Error, Job, RunStatus, StepContext};
use serde_json::{Value, json};
use tokio::sync::Barrier;

/// Two branches of different types run at the same time (each waits for the other at a
/// barrier, which a sequential execution would never pass), the outputs come back as a typed
/// tuple, and a fan-out over a `Vec` keeps branch order; every branch is a step of its own.
async fn branches_run_at_once_and_join_typed(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let job = durably
        .register(Job::new(
            "parallel",
            |step: StepContext, _input: Value| async move {
                let barrier = Arc::new(Barrier::new(2));
                let (left, right) = (barrier.clone(), barrier);
                let (name, count) = step
                    .all((
                        step.run("name", |_| async move {
                            left.wait().await;
                            Ok("ada".to_string())
                        }),
                        step.run("count", |_| async move {
                            right.wait().await;
                            Ok(3u32)
                        }),
                    ))
                    .await?;
                let squares: Vec<u32> = step
                    .all(
                        (1..=count)
                            .map(|i| {
                                let step = step.clone();
                                async move {
                                    step.run(&format!("square-{i}"), |_| async move { Ok(i * i) })
                                        .await
                                }
                            })
                            .collect::<Vec<_>>(),
                    )
                    .await?;
                Ok(json!({ "name": name, "squares": squares }))
            },
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(
        run.output,
        Some(json!({ "name": "ada", "squares": [1, 4, 9] }))
    );
    let steps = durably.get_steps(&id).await.expect("steps");
    let mut indexes: Vec<i64> = steps.iter().map(|s| s.index).collect();
    indexes.sort_unstable();
    assert_eq!(
        indexes,
        [0, 1, 2, 3, 4],
        "each branch consumed its own index"
    );
    durably.stop().await;
}

/// Every branch settles before the join fails; the error is the failed step with the lowest
/// index, not the first to fail in time.
async fn a_failed_join_waits_for_every_branch_and_names_the_lowest_failed_step(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let slow_ran = Arc::new(AtomicUsize::new(0));
    let ran = slow_ran.clone();
    let job = durably
        .register(Job::new(
            "failing-join",
            move |step: StepContext, _input: Value| {
                let ran = ran.clone();
                async move {
                    let joined = step
                        .all((
                            step.run("first", |_| async {
                                // Fails after the third branch failed.
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                Err::<(), _>("first failed".into())
                            }),
                            step.run("middle", |_| async move {
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                                ran.fetch_add(1, Ordering::SeqCst);
                                Ok(2)
                            }),
                            step.run("last", |_| async { Err::<(), _>("last failed".into()) }),
                        ))
                        .await;
                    match joined {
                        Err(Error::Step { name, .. }) => Ok(json!(name)),
                        other => Ok(json!(format!("unexpected {other:?}"))),
                    }
                }
            },
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.output, Some(json!("first")), "{:?}", run.error);
    assert_eq!(
        slow_ran.load(Ordering::SeqCst),
        1,
        "the slow sibling settled before the join returned"
    );
    durably.stop().await;
}

backend_tests!(
    branches_run_at_once_and_join_typed,
    a_failed_join_waits_for_every_branch_and_names_the_lowest_failed_step,
);
