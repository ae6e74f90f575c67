//! Child runs (`StepContext::invoke`, `invoke_all`): typed outputs, fan-out and join without a
//! slot held by the waiting parent, a child's failure in the parent's error, cancel cascading,
//! replays that never create a second child, deep chains. On every backend.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, TestDb, backend_tests, terminal, waiting};
use durably::{
    Error, InvokeOptions, Job, JobHandle, RunFilter, RunStatus, StepContext, WaitStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Echo {
    value: u64,
}

/// `echo`: returns its input (`{"value": n}`); fails for 13,013.
fn echo() -> Job<Echo, Echo> {
    Job::new("echo", |step: StepContext, input: Echo| async move {
        step.run("echo", |_| async move {
            match input.value {
                13_013 => Err(Error::Job("unlucky 13".into()).into()),
                _ => Ok(input),
            }
        })
        .await
    })
}

/// `parent`: invokes `children` echo children with values 1..=children, returns their sum.
fn parent(echo: JobHandle<Echo, Echo>, executions: Arc<AtomicUsize>) -> Job<Value, Value> {
    Job::new("parent", move |step: StepContext, input: Value| {
        let echo = echo.clone();
        let executions = executions.clone();
        async move {
            executions.fetch_add(1, Ordering::SeqCst);
            let n = input["children"].as_u64().unwrap_or(0);
            let inputs = (1..=n).map(|value| Echo { value }).collect();
            let outputs = step.invoke_all("echo", &echo, inputs).await?;
            let sum: u64 = outputs.iter().map(|o| o.value).sum();
            Ok(json!({ "sum": sum }))
        }
    })
}

/// One invoke returns the child's typed output; the child names its parent and the parent's
/// wait, is listed among its children, and serializes its link; the parent's wait is the
/// `children:<name>` wait with its metadata.
async fn invoke_returns_the_childs_typed_output(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let echo = durably.register(echo()).expect("register echo");
    let single = durably
        .register(Job::new("single", move |step: StepContext, n: u64| {
            let echo = echo.clone();
            async move {
                let out = step
                    .invoke_with(
                        "one",
                        &echo,
                        Echo { value: n },
                        InvokeOptions::new().label("tenant", "acme"),
                    )
                    .await?;
                Ok(out.value * 10)
            }
        }))
        .expect("register");
    durably.start();
    let id = single.trigger(4).await.expect("trigger").run.id;
    let done = terminal(&durably, &id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!(40)));
    let children = durably.get_children(&id).await.expect("children");
    assert_eq!(children.len(), 1);
    let child = &children[0];
    assert_eq!(child.parent_run_id.as_deref(), Some(id.as_str()));
    assert_eq!(child.job_name, "echo");
    assert_eq!(child.labels.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(
        child.idempotency_key.as_deref(),
        Some(format!("child:{id}:one:0").as_str())
    );
    let waits = durably.get_waits(&id).await.expect("waits");
    assert_eq!(waits.len(), 1);
    assert_eq!(waits[0].name, "children:one");
    assert_eq!(waits[0].status, WaitStatus::Resolved);
    assert_eq!(child.parent_wait_id.as_deref(), Some(waits[0].id.as_str()));
    assert_eq!(
        waits[0].metadata.as_ref().map(|m| &m["durably"]["kind"]),
        Some(&json!("children"))
    );
    let text = serde_json::to_value(child).expect("json");
    assert_eq!(text["parentRunId"], json!(id));
    let parent_text = serde_json::to_value(&done).expect("json");
    assert!(parent_text.get("parentRunId").is_none(), "{parent_text}");
    let listed = durably
        .get_runs(&RunFilter::new().parent_run_id(child.id.clone()))
        .await
        .expect("runs");
    assert!(listed.is_empty());
    durably.stop().await;
}

/// A fan-out of 1,000 children on a worker with one slot completes: the waiting parent never
/// holds the slot. The parent executes a few times only (not once per child).
async fn a_fan_out_of_1000_children_completes_on_one_slot(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(1)).await;
    let echo = durably.register(echo()).expect("register echo");
    let executions = Arc::new(AtomicUsize::new(0));
    let job = durably
        .register(parent(echo, executions.clone()))
        .expect("register parent");
    durably.start();
    let started = Instant::now();
    let id = job
        .trigger(json!({"children": 1000}))
        .await
        .expect("trigger")
        .run
        .id;
    let done = common::eventually("the parent ends", Duration::from_secs(120), || async {
        durably
            .get_run(&id)
            .await
            .expect("get_run")
            .filter(|run| run.status.is_terminal())
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!({"sum": 500_500})));
    let children = durably.get_children(&id).await.expect("children");
    assert_eq!(children.len(), 1000);
    assert!(children.iter().all(|c| c.status == RunStatus::Completed));
    let runs = executions.load(Ordering::SeqCst);
    assert!(runs <= 3, "parent executed {runs} times");
    println!(
        "fan-out of 1,000 children on {backend:?}, one slot: {} ms (parent executed {runs} times)",
        elapsed.as_millis()
    );
    durably.stop().await;
}

/// A child that fails fails the invoke with an error naming the child run and its error; the
/// parent (which returns it) fails with that message.
async fn a_failing_child_fails_the_parent_naming_it(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(2)).await;
    let echo = durably.register(echo()).expect("register echo");
    let caught = Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = caught.clone();
    let job = durably
        .register(Job::new("fragile", move |step: StepContext, n: u64| {
            let echo = echo.clone();
            let seen = seen.clone();
            async move {
                let inputs = (13_010..13_010 + n).map(|value| Echo { value }).collect();
                let result = step.invoke_all("fan", &echo, inputs).await;
                if let Err(Error::Child { run_id, status, .. }) = &result {
                    *seen.lock().expect("lock") = Some(format!("{run_id}:{status}"));
                }
                result.map(|outputs| outputs.len())
            }
        }))
        .expect("register");
    durably.start();
    let id = job.trigger(5).await.expect("trigger").run.id;
    let done = terminal(&durably, &id).await;
    assert_eq!(done.status, RunStatus::Failed);
    let children = durably.get_children(&id).await.expect("children");
    let failed = children
        .iter()
        .find(|c| c.status == RunStatus::Failed)
        .expect("a failed child");
    let error = done.error.expect("error");
    assert!(error.contains(&failed.id), "{error}");
    assert!(error.contains("unlucky 13"), "{error}");
    assert!(error.contains("\"fan\""), "{error}");
    assert_eq!(
        caught.lock().expect("lock").clone(),
        Some(format!("{}:failed", failed.id))
    );
    durably.stop().await;
}

/// `blocker`: waits for a signal that never comes (a child that stays waiting).
fn blocker() -> Job<Echo, Echo> {
    Job::new("blocker", |step: StepContext, input: Echo| async move {
        let wait = step.prepare_wait("never").await?;
        step.wait_for(&wait).await?;
        Ok(input)
    })
}

/// Registers `blocker` and `middle`, which invokes one `blocker` grandchild and waits on it.
fn register_blocker_and_middle(
    durably: &durably::Durably,
) -> (JobHandle<Echo, Echo>, JobHandle<Echo, Echo>) {
    let blocker = durably.register(blocker()).expect("register blocker");
    let grandchild = blocker.clone();
    let middle = durably
        .register(Job::new("middle", move |step: StepContext, input: Echo| {
            let blocker = grandchild.clone();
            async move { step.invoke("grandchild", &blocker, input).await }
        }))
        .expect("register middle");
    (blocker, middle)
}

/// Cancelling a parent cancels its children and grandchildren (cancel_with_parent by
/// default), but not children invoked with `cancel_with_parent(false)`.
async fn cancelling_a_parent_cascades_to_its_children(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(4)).await;
    let (_, middle) = register_blocker_and_middle(&durably);
    let top = durably
        .register(Job::new("top", move |step: StepContext, _: Value| {
            let middle = middle.clone();
            async move {
                step.invoke_all("kids", &middle, vec![Echo { value: 1 }, Echo { value: 2 }])
                    .await
            }
        }))
        .expect("register top");
    durably.start();
    let id = top.trigger(json!({})).await.expect("trigger").run.id;
    waiting(&durably, &id).await;
    // Two children, each waiting on its own grandchild, which waits for ever.
    let children = common::eventually("children and grandchildren wait", common::LIMIT, || async {
        let children = durably.get_children(&id).await.expect("children");
        let mut grandchildren = Vec::new();
        for child in &children {
            grandchildren.extend(
                durably
                    .get_children(&child.id)
                    .await
                    .expect("grandchildren"),
            );
        }
        let all_waiting = children.len() == 2
            && grandchildren.len() == 2
            && children
                .iter()
                .chain(&grandchildren)
                .all(|r| r.status == RunStatus::Waiting);
        all_waiting.then_some((children, grandchildren))
    })
    .await;
    durably.cancel(&id).await.expect("cancel");
    for run in children.0.iter().chain(&children.1) {
        let ended = terminal(&durably, &run.id).await;
        assert_eq!(ended.status, RunStatus::Cancelled, "{}", run.job_name);
    }
    durably.stop().await;
}

/// A parent cancelled without its cascade (by the TypeScript runtime, or by a process that
/// died right after the parent's cancel; here straight in the store) has its children and
/// grandchildren cancelled by the children sweep of any worker, each announced, while a
/// detached child keeps waiting.
async fn a_cancel_cascade_cut_short_is_finished_by_the_sweep(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(4)).await;
    let (blocker, middle) = register_blocker_and_middle(&durably);
    let top = durably
        .register(Job::new("top", move |step: StepContext, _: Value| {
            let middle = middle.clone();
            async move { step.invoke("kid", &middle, Echo { value: 1 }).await }
        }))
        .expect("register top");
    let detaching = durably
        .register(Job::new("detaching", move |step: StepContext, _: Value| {
            let blocker = blocker.clone();
            async move {
                step.invoke_with(
                    "kept",
                    &blocker,
                    Echo { value: 9 },
                    InvokeOptions::new().cancel_with_parent(false),
                )
                .await
            }
        }))
        .expect("register detaching");
    let events = common::Recorder::attach(&durably);
    durably.start();
    let id = top.trigger(json!({})).await.expect("trigger").run.id;
    let other = detaching.trigger(json!({})).await.expect("trigger").run.id;
    let (kid, kept) = common::eventually("the children wait", common::LIMIT, || async {
        let kid = durably.get_children(&id).await.expect("children").pop()?;
        let kept = durably
            .get_children(&other)
            .await
            .expect("children")
            .pop()?;
        let grandchildren = durably.get_children(&kid.id).await.expect("grandchildren");
        let all_waiting = grandchildren.len() == 1
            && [&kid, &kept, &grandchildren[0]]
                .iter()
                .all(|r| r.status == RunStatus::Waiting);
        all_waiting.then_some((kid, kept))
    })
    .await;
    waiting(&durably, &id).await;
    waiting(&durably, &other).await;
    let grandchild = durably.get_children(&kid.id).await.expect("grandchildren")[0].clone();
    for parent in [&id, &other] {
        assert!(
            db.store
                .cancel_run(parent, durably::Timestamp::now())
                .await
                .expect("cancel in the store")
        );
    }
    durably.run_idle_maintenance().await;
    for run in [&kid, &grandchild] {
        let ended = terminal(&durably, &run.id).await;
        assert_eq!(ended.status, RunStatus::Cancelled, "{}", run.job_name);
    }
    let flushed = events.flush(&durably).await;
    for run in [&kid, &grandchild] {
        assert!(
            flushed.iter().any(|event| matches!(
                &event.kind,
                durably::EventKind::RunCancel { run_id, .. } if run_id == &run.id
            )),
            "run:cancel of {}",
            run.job_name
        );
    }
    let still = durably.get_run(&kept.id).await.expect("get").expect("kept");
    assert_eq!(
        still.status,
        RunStatus::Waiting,
        "the detached child keeps waiting"
    );
    durably.stop().await;
}

/// A child invoked with `cancel_with_parent(false)` survives its parent's cancel.
async fn a_detached_child_survives_the_parents_cancel(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(4)).await;
    let blocker = durably.register(blocker()).expect("register blocker");
    let top = durably
        .register(Job::new("top", move |step: StepContext, _: Value| {
            let blocker = blocker.clone();
            async move {
                step.invoke_with(
                    "detached",
                    &blocker,
                    Echo { value: 1 },
                    InvokeOptions::new().cancel_with_parent(false),
                )
                .await
            }
        }))
        .expect("register top");
    durably.start();
    let id = top.trigger(json!({})).await.expect("trigger").run.id;
    let child = common::eventually("the child waits", common::LIMIT, || async {
        durably
            .get_children(&id)
            .await
            .expect("children")
            .into_iter()
            .find(|c| c.status == RunStatus::Waiting)
    })
    .await;
    waiting(&durably, &id).await;
    durably.cancel(&id).await.expect("cancel");
    assert_eq!(terminal(&durably, &id).await.status, RunStatus::Cancelled);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let still = durably
        .get_run(&child.id)
        .await
        .expect("get")
        .expect("child");
    assert_eq!(still.status, RunStatus::Waiting);
    durably.stop().await;
}

/// Cancelling a child fails its parent's invoke, naming the cancelled child.
async fn cancelling_a_child_fails_the_parents_invoke(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(2)).await;
    let blocker = durably.register(blocker()).expect("register blocker");
    let top = durably
        .register(Job::new("top", move |step: StepContext, _: Value| {
            let blocker = blocker.clone();
            async move { step.invoke("only", &blocker, Echo { value: 1 }).await }
        }))
        .expect("register top");
    durably.start();
    let id = top.trigger(json!({})).await.expect("trigger").run.id;
    let child = common::eventually("the child waits", common::LIMIT, || async {
        durably
            .get_children(&id)
            .await
            .expect("children")
            .into_iter()
            .find(|c| c.status == RunStatus::Waiting)
    })
    .await;
    waiting(&durably, &id).await;
    durably.cancel(&child.id).await.expect("cancel child");
    let done = terminal(&durably, &id).await;
    assert_eq!(done.status, RunStatus::Failed);
    let error = done.error.expect("error");
    assert!(
        error.contains(&child.id) && error.contains("cancelled"),
        "{error}"
    );
    durably.stop().await;
}

/// A parent executed again after it triggered its children and before they ended (its
/// execution abandoned: here it is marked failed and resumed, as after a crash) finds the same
/// children through their idempotency keys: never a second one. It then completes with their
/// outputs once they end.
async fn a_replay_never_creates_a_second_child(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(4)).await;
    let blocker = durably.register(blocker()).expect("register blocker");
    let executions = Arc::new(AtomicUsize::new(0));
    let counted = executions.clone();
    let top = durably
        .register(Job::new("top", move |step: StepContext, _: Value| {
            let blocker = blocker.clone();
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let inputs = vec![Echo { value: 1 }, Echo { value: 2 }, Echo { value: 3 }];
                let outputs = step.invoke_all("kids", &blocker, inputs).await?;
                Ok(outputs.iter().map(|o| o.value).sum::<u64>())
            }
        }))
        .expect("register top");
    durably.start();
    let id = top.trigger(json!({})).await.expect("trigger").run.id;
    waiting(&durably, &id).await;
    let children = common::eventually("children wait", common::LIMIT, || async {
        let children = durably.get_children(&id).await.expect("children");
        (children.len() == 3 && children.iter().all(|c| c.status == RunStatus::Waiting))
            .then_some(children)
    })
    .await;
    // The parent executes again from the top while its children still run.
    let admin = db.store.admin().expect("admin");
    admin
        .update_run(
            &id,
            durably::store::RunPatch {
                status: Some(RunStatus::Failed),
                error: Some(Some("simulated crash".into())),
                ..Default::default()
            },
            durably::Timestamp::now(),
        )
        .await
        .expect("patch");
    durably.resume(&id).await.expect("resume");
    common::eventually(
        "the parent executes again and waits",
        common::LIMIT,
        || async {
            let run = durably.get_run(&id).await.expect("get").expect("run");
            (executions.load(Ordering::SeqCst) >= 2 && run.status == RunStatus::Waiting)
                .then_some(())
        },
    )
    .await;
    assert_eq!(durably.get_children(&id).await.expect("children").len(), 3);
    for child in &children {
        let waits = durably.get_waits(&child.id).await.expect("waits");
        durably
            .signal(&waits[0].id, json!(null), "go")
            .await
            .expect("signal");
    }
    let done = terminal(&durably, &id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!(6)));
    assert_eq!(
        durably.get_children(&id).await.expect("children").len(),
        3,
        "no second child"
    );
    let all = durably
        .get_runs(&RunFilter::new().job_name("blocker"))
        .await
        .expect("runs");
    assert_eq!(all.len(), 3);
    durably.stop().await;
}

/// parent → child → grandchild: each waits for the next without a slot (one slot).
async fn a_deep_chain_completes_on_one_slot(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(1)).await;
    let echo = durably.register(echo()).expect("register echo");
    let middle = durably
        .register(Job::new("middle", move |step: StepContext, n: u64| {
            let echo = echo.clone();
            async move {
                let out = step.invoke("leaf", &echo, Echo { value: n }).await?;
                Ok(out.value + 1)
            }
        }))
        .expect("register middle");
    let top = durably
        .register(Job::new("top", move |step: StepContext, n: u64| {
            let middle = middle.clone();
            async move {
                let out = step.invoke("mid", &middle, n).await?;
                Ok(out * 2)
            }
        }))
        .expect("register top");
    durably.start();
    let id = top.trigger(20).await.expect("trigger").run.id;
    let done = terminal(&durably, &id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!(42)));
    let child = &durably.get_children(&id).await.expect("children")[0];
    let grandchild = &durably
        .get_children(&child.id)
        .await
        .expect("grandchildren")[0];
    assert_eq!(grandchild.parent_run_id.as_deref(), Some(child.id.as_str()));
    assert_eq!(grandchild.output, Some(json!({"value": 20})));
    durably.stop().await;
}

backend_tests!(
    invoke_returns_the_childs_typed_output,
    a_fan_out_of_1000_children_completes_on_one_slot,
    a_failing_child_fails_the_parent_naming_it,
    cancelling_a_parent_cascades_to_its_children,
    a_cancel_cascade_cut_short_is_finished_by_the_sweep,
    a_detached_child_survives_the_parents_cancel,
    cancelling_a_child_fails_the_parents_invoke,
    a_replay_never_creates_a_second_child,
    a_deep_chain_completes_on_one_slot,
);
