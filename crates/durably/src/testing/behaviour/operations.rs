//! Behaviour: operations on runs: cancel (pending and running), retrigger, delete, purge and
//! retention, listings with filters.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::{Error, Job, Labels, RunFilter, RunStatus, StepContext, TriggerOptions, WaitOptions};

/// Behaviour: a pending run that is cancelled ends `cancelled` and never executes; waiting on it
/// gives [`Error::Cancelled`], and cancelling it again conflicts.
pub async fn cancel_of_a_pending_run_ends_it_without_executing(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let job = {
        let calls = calls.clone();
        durably
            .register(Job::new(
                "behaviour-cancel-pending",
                move |_: StepContext, _: Value| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                },
            ))
            .expect("register")
    };
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    durably.cancel(&id).await.expect("cancel");
    let run = run_of(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.lease_owner, None);

    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process"),
        0,
        "nothing to execute"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(run_of(&durably, &id).await.status, RunStatus::Cancelled);
    match durably
        .wait_for_run(&id, WaitOptions::new().timeout(LIMIT))
        .await
    {
        Err(Error::Cancelled { run_id }) => assert_eq!(run_id, id),
        other => panic!("expected Error::Cancelled, got {other:?}"),
    }
    match durably.cancel(&id).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Behaviour: cancelling a running run marks it `cancelled` at once and fires the token its
/// step watches; the step's late result and later steps are never stored, and the run stays
/// cancelled.
pub async fn cancel_of_a_running_run_fires_its_token_and_stops_it(store: Arc<dyn Store>) {
    // Preserving steps when the store can: the steps kept show exactly what landed.
    let preserving = has_preserving_view(&store);
    let durably = instance(&store, |b| match preserving {
        true => b.preserve_steps(true),
        false => b,
    })
    .await;
    let entered = Gate::new();
    let token_fired = Arc::new(AtomicBool::new(false));
    let later_steps = Arc::new(AtomicUsize::new(0));
    let job = {
        let (entered, fired, later) = (entered.clone(), token_fired.clone(), later_steps.clone());
        durably
            .register(Job::new(
                "behaviour-cancel-running",
                move |step: StepContext, _: Value| {
                    let (entered, fired, later) = (entered.clone(), fired.clone(), later.clone());
                    async move {
                        step.run("first", |_| async { Ok(1) }).await?;
                        step.run("wait-for-cancel", |token| async move {
                            entered.open();
                            token.cancelled().await;
                            fired.store(true, Ordering::SeqCst);
                            Ok("late result".to_string())
                        })
                        .await?;
                        step.run("after", |_| async move {
                            later.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .await?;
                        Ok(json!("completed"))
                    }
                },
            ))
            .expect("register")
    };
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    within("the step waiting for the cancel starts", entered.wait()).await;

    durably.cancel(&id).await.expect("cancel");
    let run = run_of(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Cancelled, "marked at once");
    assert_eq!(run.lease_owner, None);
    eventually("the step's token fires", || async {
        token_fired.load(Ordering::SeqCst).then_some(())
    })
    .await;
    within("stop waits for the cancelled execution", durably.stop()).await;

    let run = run_of(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.output, None);
    assert_eq!(run.error, None);
    assert_eq!(run.completed_step_count, 1, "only the first step landed");
    assert_eq!(later_steps.load(Ordering::SeqCst), 0, "no later step ran");
    let steps: Vec<_> = durably
        .get_steps(&id)
        .await
        .expect("get_steps")
        .into_iter()
        .map(|s| (s.name, s.output))
        .collect();
    let expected = match preserving {
        true => vec![("first".to_string(), Some(json!(1)))],
        false => Vec::new(),
    };
    assert_eq!(steps, expected);
    match durably
        .wait_for_run(&id, WaitOptions::new().timeout(LIMIT))
        .await
    {
        Err(Error::Cancelled { run_id }) => assert_eq!(run_id, id),
        other => panic!("expected Error::Cancelled, got {other:?}"),
    }
}

/// Behaviour: `retrigger` of an ended run creates a new pending run with the same job, input,
/// labels and concurrency key, which executes on its own; an active run cannot be retriggered.
pub async fn retrigger_starts_a_new_run_with_the_same_input(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let executions = Arc::new(AtomicUsize::new(0));
    let job = {
        let executions = executions.clone();
        durably
            .register(Job::new(
                "behaviour-retrigger",
                move |_: StepContext, input: Value| {
                    let first = executions.fetch_add(1, Ordering::SeqCst) == 0;
                    async move {
                        match first {
                            true => Err(Error::Job("first attempt fails".into())),
                            false => Ok(json!({ "echo": input })),
                        }
                    }
                },
            ))
            .expect("register")
    };
    let options = TriggerOptions::new()
        .concurrency_key("account-9")
        .label("tenant", "acme");
    let original = job
        .trigger_with(json!({ "n": 9 }), options)
        .await
        .expect("trigger")
        .run;
    assert!(durably.process_one(None).await.expect("process_one"));
    assert_eq!(
        run_of(&durably, &original.id).await.status,
        RunStatus::Failed
    );

    let again = durably.retrigger(&original.id).await.expect("retrigger");
    assert_ne!(again.id, original.id);
    assert_eq!(again.status, RunStatus::Pending);
    assert_eq!(again.job_name, "behaviour-retrigger");
    assert_eq!(again.input, json!({ "n": 9 }));
    assert_eq!(again.concurrency_key.as_deref(), Some("account-9"));
    assert_eq!(
        again.labels,
        Labels::from([("tenant".into(), "acme".into())])
    );
    match durably.retrigger(&again.id).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("expected a conflict retriggering a pending run, got {other:?}"),
    }

    assert!(durably.process_one(None).await.expect("process_one"));
    let done = run_of(&durably, &again.id).await;
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.output, Some(json!({ "echo": { "n": 9 } })));
    let original = run_of(&durably, &original.id).await;
    assert_eq!(
        original.status,
        RunStatus::Failed,
        "the original run is unchanged"
    );
    assert_eq!(original.error.as_deref(), Some("first attempt fails"));
    assert_eq!(executions.load(Ordering::SeqCst), 2);
}

/// Behaviour: `delete_run` removes an ended run with its logs (an active one conflicts);
/// `purge_runs` removes ended runs that ended before the cutoff, never active ones.
pub async fn delete_run_and_purge_runs_remove_ended_runs(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let job = durably
        .register(Job::new(
            "behaviour-delete",
            |step: StepContext, n: u64| async move {
                step.log().info(format!("run {n}"), None).await?;
                Ok(n)
            },
        ))
        .expect("register");
    let mut ended = Vec::new();
    for n in 0..3 {
        ended.push(job.trigger(n).await.expect("trigger").run.id);
    }
    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process"),
        3
    );
    let pending = job.trigger(3).await.expect("trigger").run.id;

    match durably.delete_run(&pending).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("expected a conflict deleting a pending run, got {other:?}"),
    }
    assert_eq!(run_of(&durably, &pending).await.status, RunStatus::Pending);
    assert_eq!(
        durably.get_logs(&ended[0]).await.expect("get_logs").len(),
        1
    );
    durably.delete_run(&ended[0]).await.expect("delete_run");
    assert!(durably.get_run(&ended[0]).await.expect("get_run").is_none());
    assert!(
        durably
            .get_logs(&ended[0])
            .await
            .expect("get_logs")
            .is_empty()
    );
    match durably.delete_run(&ended[0]).await {
        Err(Error::NotFound(_)) => {}
        other => panic!("expected not found deleting a deleted run, got {other:?}"),
    }

    let now = Timestamp::now();
    backdate(&store, &ended[1], now - Duration::from_secs(2 * 3600)).await;
    assert_eq!(
        durably
            .purge_runs(now - Duration::from_secs(3600), None)
            .await
            .expect("purge_runs"),
        1,
        "only the run that ended two hours ago"
    );
    assert!(durably.get_run(&ended[1]).await.expect("get_run").is_none());
    assert!(
        durably
            .get_logs(&ended[1])
            .await
            .expect("get_logs")
            .is_empty()
    );
    assert_eq!(
        run_of(&durably, &ended[2]).await.status,
        RunStatus::Completed
    );

    assert_eq!(
        durably
            .purge_runs(Timestamp::now() + Duration::from_secs(60), Some(10))
            .await
            .expect("purge_runs"),
        1,
        "the other ended run, not the pending one"
    );
    assert!(durably.get_run(&ended[2]).await.expect("get_run").is_none());
    assert_eq!(run_of(&durably, &pending).await.status, RunStatus::Pending);
}

/// Behaviour: with `retain_runs`, idle maintenance deletes ended runs older than the period and
/// keeps the others.
pub async fn retention_deletes_ended_runs_older_than_the_period(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b.retain_runs("1h")).await;
    let job = durably
        .register(Job::new(
            "behaviour-retention",
            |_: StepContext, n: u64| async move { Ok(n) },
        ))
        .expect("register");
    let old = job.trigger(1).await.expect("trigger").run.id;
    let recent = job.trigger(2).await.expect("trigger").run.id;
    // `process_one` runs no maintenance.
    assert!(durably.process_one(None).await.expect("process_one"));
    assert!(durably.process_one(None).await.expect("process_one"));
    backdate(
        &store,
        &old,
        Timestamp::now() - Duration::from_secs(2 * 3600),
    )
    .await;
    assert!(durably.get_run(&old).await.expect("get_run").is_some());

    // Idle: nothing to execute, then maintenance once.
    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process"),
        0
    );
    assert!(
        durably.get_run(&old).await.expect("get_run").is_none(),
        "the run that ended two hours ago was deleted"
    );
    assert_eq!(run_of(&durably, &recent).await.status, RunStatus::Completed);
}

/// Behaviour: `get_runs` filters by labels (all must match), job name and status, lists newest
/// first, and pages with limit and offset.
pub async fn get_runs_filters_by_labels_job_and_status(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let a = durably
        .register(Job::new(
            "behaviour-list-a",
            |_: StepContext, n: u64| async move { Ok(n) },
        ))
        .expect("register");
    let b = durably
        .register(Job::new(
            "behaviour-list-b",
            |_: StepContext, n: u64| async move { Ok(n) },
        ))
        .expect("register");
    let trigger = |handle: &crate::JobHandle<u64, u64>, n: u64, labels: &[(&str, &str)]| {
        let handle = handle.clone();
        let mut options = TriggerOptions::new();
        for (key, value) in labels {
            options = options.label(*key, *value);
        }
        async move {
            handle
                .trigger_with(n, options)
                .await
                .expect("trigger")
                .run
                .id
        }
    };
    let a1 = trigger(&a, 1, &[("tenant", "acme"), ("tier", "gold")]).await;
    let a2 = trigger(&a, 2, &[("tenant", "acme"), ("tier", "free")]).await;
    let a3 = trigger(&a, 3, &[("tenant", "globex")]).await;
    let b1 = trigger(&b, 4, &[("tenant", "acme")]).await;
    durably.cancel(&a3).await.expect("cancel");

    let ids = |filter: RunFilter| {
        let durably = durably.clone();
        async move {
            let runs = durably.get_runs(&filter).await.expect("get_runs");
            let order: Vec<_> = runs.iter().map(|r| (r.created_at, r.id.clone())).collect();
            let mut newest_first = order.clone();
            newest_first.sort_by(|x, y| y.cmp(x));
            assert_eq!(order, newest_first, "newest first for {filter:?}");
            runs.into_iter().map(|r| r.id).collect::<Vec<_>>()
        }
    };
    let set = |ids: &[&String]| ids.iter().map(|id| (*id).clone()).collect::<HashSet<_>>();
    let as_set = |ids: Vec<String>| ids.into_iter().collect::<HashSet<_>>();

    let acme = ids(RunFilter::new().label("tenant", "acme")).await;
    assert_eq!(as_set(acme), set(&[&a1, &a2, &b1]));
    assert_eq!(
        ids(RunFilter::new()
            .label("tenant", "acme")
            .label("tier", "gold"))
        .await,
        std::slice::from_ref(&a1)
    );
    assert_eq!(
        as_set(
            ids(RunFilter::new()
                .job_name("behaviour-list-a")
                .label("tenant", "acme"))
            .await
        ),
        set(&[&a1, &a2])
    );
    assert_eq!(
        ids(RunFilter::new().status(RunStatus::Cancelled)).await,
        std::slice::from_ref(&a3)
    );
    assert_eq!(
        as_set(
            ids(RunFilter::new()
                .status(RunStatus::Pending)
                .job_names(["behaviour-list-a", "behaviour-list-b"]))
            .await
        ),
        set(&[&a1, &a2, &b1])
    );
    assert!(
        ids(RunFilter::new().label("tenant", "initech"))
            .await
            .is_empty(),
        "no run has that label"
    );
    assert!(
        ids(RunFilter::new().label("region", "acme"))
            .await
            .is_empty(),
        "a value under another key does not match"
    );

    let all = ids(RunFilter::new()).await;
    assert_eq!(as_set(all.clone()), set(&[&a1, &a2, &a3, &b1]));
    assert_eq!(ids(RunFilter::new().limit(2)).await, all[..2]);
    assert_eq!(ids(RunFilter::new().limit(2).offset(1)).await, all[1..3]);
    assert_eq!(ids(RunFilter::new().limit(10).offset(3)).await, all[3..]);
}
