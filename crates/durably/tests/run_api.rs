//! The run API (upstream §1.3, §2.6, §5.4; run-api.shared.ts, recovery.shared.ts,
//! purge.shared.ts): queries, cancel, retrigger, delete, purge, steps and logs.
mod common;

use common::Ends;
#[allow(unused_imports)]
use durably::store::ClaimRequest;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestDb, backend_tests, eventually, within};
use durably::{
    Durably, Error, Event, EventKind, Job, JobHandle, Labels, LogLevel, RunFilter, RunStatus,
    StepContext, StepStatus, Timestamp, TriggerOptions,
    store::{Fence, NewLog, NewStep, RunPatch},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Task {
    value: i64,
    #[serde(default)]
    fail: bool,
}

fn task(value: i64) -> Task {
    Task { value, fail: false }
}

fn failing(value: i64) -> Task {
    Task { value, fail: true }
}

const LEASE: Duration = Duration::from_secs(60);

/// Doubles `value` in a step, logs, and fails afterwards when asked to.
fn task_job() -> Job<Task, i64> {
    Job::new("task", |step: StepContext, input: Task| async move {
        let doubled = step
            .run("double", move |_| async move { Ok(input.value * 2) })
            .await?;
        step.log()
            .info("doubled", json!({ "value": doubled }))
            .await?;
        if input.fail {
            return Err(Error::job("task failed on purpose"));
        }
        Ok(doubled)
    })
}

fn other_job() -> Job<Task, i64> {
    Job::new("other", |_step: StepContext, input: Task| async move {
        Ok(input.value)
    })
}

async fn setup(backend: Backend) -> (TestDb, Durably, JobHandle<Task, i64>) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(task_job()).expect("register");
    (db, durably, handle)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn values(runs: &[durably::Run<Task, i64>]) -> Vec<i64> {
    runs.iter().map(|r| r.input.value).collect()
}

fn conflict(result: durably::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Conflict(message)) => message,
        other => panic!("expected Error::Conflict, got {other:?}"),
    }
}

fn not_found(result: durably::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::NotFound(message)) => message,
        other => panic!("expected Error::NotFound, got {other:?}"),
    }
}

async fn claim_one(durably: &Durably) -> durably::Run {
    let mut claimed = durably
        .store()
        .claim(
            &ClaimRequest::new("test-worker", LEASE, 1),
            Timestamp::now(),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one run claimed");
    claimed.pop().expect("claimed")
}

/// Runs every pending run with the worker's own code path (no background worker).
async fn process_all(durably: &Durably) -> usize {
    within(
        "process_until_idle",
        Duration::from_secs(10),
        durably.process_until_idle(Some("test-worker"), None),
    )
    .await
    .expect("process_until_idle")
}

async fn status_of(durably: &Durably, id: &str) -> RunStatus {
    durably
        .get_run(id)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("run {id} exists"))
        .status
}

fn record_events(durably: &Durably) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let _ = durably.on_any(move |event| sink.lock().expect("lock").push(event.clone()));
    seen
}

/// Waits until an event matching `pick` was delivered and returns all such events.
async fn events_matching(
    seen: &Arc<Mutex<Vec<Event>>>,
    pick: impl Fn(&EventKind) -> bool,
) -> Vec<EventKind> {
    eventually("event delivered", Duration::from_secs(5), || {
        let found: Vec<EventKind> = seen
            .lock()
            .expect("lock")
            .iter()
            .map(|e| e.kind.clone())
            .filter(|k| pick(k))
            .collect();
        async move { (!found.is_empty()).then_some(found) }
    })
    .await
}

async fn get_run_returns_the_run_or_none(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let other = durably.register(other_job()).expect("register other");
    let triggered = handle.trigger(task(21)).await.expect("trigger");
    let run = durably
        .get_run(&triggered.run.id)
        .await
        .expect("read")
        .expect("run");
    assert_eq!(run.id, triggered.run.id);
    assert_eq!(run.job_name, "task");
    assert_eq!(run.input, json!({"value": 21, "fail": false}));
    assert_eq!(run.status, RunStatus::Pending);
    assert!(
        durably
            .get_run("01UNKNOWNRUNID0000000000000")
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        handle
            .get_run("non-existent-id")
            .await
            .expect("read")
            .is_none()
    );

    // A handle only sees its own job's runs.
    let foreign = other.trigger(task(1)).await.expect("trigger other");
    assert!(
        handle
            .get_run(&foreign.run.id)
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        other
            .get_run(&foreign.run.id)
            .await
            .expect("read")
            .is_some()
    );

    // Completed output is readable, typed.
    assert_eq!(process_all(&durably).await, 2);
    let done = handle
        .get_run(&triggered.run.id)
        .await
        .expect("read")
        .expect("run");
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.output, Some(42));
    assert!(done.completed_at.is_some());
    assert!(done.started_at.is_some());
}

async fn get_runs_filters_by_status_job_and_labels(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let other = durably.register(other_job()).expect("register other");
    let a1 = handle
        .trigger_with(
            task(1),
            TriggerOptions::new().labels(labels(&[("env", "prod"), ("team", "x")])),
        )
        .await
        .expect("a1")
        .run;
    let a2 = handle
        .trigger_with(
            task(2),
            TriggerOptions::new().labels(labels(&[("env", "prod"), ("team", "y")])),
        )
        .await
        .expect("a2")
        .run;
    let b1 = other
        .trigger_with(task(3), TriggerOptions::new().label("env", "dev"))
        .await
        .expect("b1")
        .run;
    // a1 leased, a2 pending, b1 completed.
    assert_eq!(claim_one(&durably).await.id, a1.id);
    assert!(
        durably
            .store()
            .admin()
            .expect("operator writes")
            .update_run(
                &b1.id,
                RunPatch {
                    status: Some(RunStatus::Completed),
                    completed_at: Some(Some(Timestamp::now())),
                    ..RunPatch::default()
                },
                Timestamp::now(),
            )
            .await
            .expect("patch")
    );

    let ids = |runs: Vec<durably::Run>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let get = |filter: RunFilter| {
        let durably = durably.clone();
        async move { ids(durably.get_runs(&filter).await.expect("get_runs")) }
    };
    assert_eq!(
        get(RunFilter::new()).await,
        [b1.id.as_str(), a2.id.as_str(), a1.id.as_str()]
    );
    assert_eq!(
        get(RunFilter::new().status(RunStatus::Pending)).await,
        [a2.id.as_str()]
    );
    assert_eq!(
        get(RunFilter::new().status(RunStatus::Completed)).await,
        [b1.id.as_str()]
    );
    assert_eq!(
        get(RunFilter::new()
            .status(RunStatus::Pending)
            .status(RunStatus::Leased))
        .await,
        [a2.id.as_str(), a1.id.as_str()]
    );
    assert_eq!(
        get(RunFilter::new().statuses([])).await.len(),
        3,
        "an empty status list does not filter"
    );
    assert!(
        get(RunFilter::new().status(RunStatus::Failed))
            .await
            .is_empty()
    );
    assert_eq!(
        get(RunFilter::new().job_name("task")).await,
        [a2.id.as_str(), a1.id.as_str()]
    );
    assert_eq!(
        get(RunFilter::new().job_name("other")).await,
        [b1.id.as_str()]
    );
    assert_eq!(
        get(RunFilter::new().job_name("task").job_name("other"))
            .await
            .len(),
        3
    );
    assert!(get(RunFilter::new().job_name("missing")).await.is_empty());
    assert_eq!(
        get(RunFilter::new().label("env", "prod")).await,
        [a2.id.as_str(), a1.id.as_str()]
    );
    assert_eq!(
        get(RunFilter::new().label("env", "prod").label("team", "x")).await,
        [a1.id.as_str()],
        "every label must match"
    );
    assert!(
        get(RunFilter::new().label("env", "prod").label("team", "z"))
            .await
            .is_empty()
    );
    assert!(
        get(RunFilter::new().label("env", "staging"))
            .await
            .is_empty()
    );
    assert_eq!(
        get(RunFilter::new()
            .status(RunStatus::Pending)
            .job_name("task")
            .label("team", "y"))
        .await,
        [a2.id.as_str()]
    );
    assert!(
        get(RunFilter::new()
            .status(RunStatus::Completed)
            .job_name("task"))
        .await
        .is_empty()
    );
}

async fn get_runs_orders_newest_first_with_an_id_tie_break(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let first = handle.trigger(task(0)).await.expect("first").run;
    // Batch items share one created_at: the id breaks the tie.
    let batch = handle
        .batch_trigger((1..=5).map(|v| (task(v), TriggerOptions::new())))
        .await
        .expect("batch");
    let created = batch[0].run.created_at;
    assert!(
        batch.iter().all(|r| r.run.created_at == created),
        "same millisecond"
    );
    let runs = durably.get_runs(&RunFilter::new()).await.expect("get_runs");
    assert_eq!(runs.len(), 6);
    assert!(
        runs.windows(2)
            .all(|w| (w[0].created_at, &w[0].id) > (w[1].created_at, &w[1].id)),
        "strictly descending by (created_at, id)"
    );
    let batch_part: Vec<&str> = runs[..5].iter().map(|r| r.id.as_str()).collect();
    assert!(
        batch_part.windows(2).all(|w| w[0] > w[1]),
        "same created_at: strictly descending ids {batch_part:?}"
    );
    let typed = handle.get_runs(RunFilter::new()).await.expect("typed");
    assert_eq!(values(&typed), [5, 4, 3, 2, 1, 0]);
    assert_eq!(typed[5].id, first.id);
}

/// Pages over runs of every status (ties within one millisecond included) are exactly slices of
/// the full newest-first list, with and without status and label filters.
async fn pages_over_mixed_statuses_are_slices_of_the_full_list(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let store = durably.store().clone();
    // Two batches (each shares one millisecond) and some single triggers in between.
    let mut ids = Vec::new();
    for round in 0..2 {
        let batch = handle
            .batch_trigger((0..6).map(|v| {
                let options =
                    TriggerOptions::new().label("half", if v % 2 == 0 { "even" } else { "odd" });
                (task(round * 10 + v), options)
            }))
            .await
            .expect("batch");
        ids.extend(batch.into_iter().map(|r| r.run.id));
        ids.push(
            handle
                .trigger(task(round * 10 + 9))
                .await
                .expect("trigger")
                .run
                .id,
        );
    }
    // Spread the runs over every status.
    let now = Timestamp::now();
    for (i, id) in ids.iter().enumerate() {
        let patch = match i % 5 {
            0 => None,
            1 => Some(RunStatus::Leased),
            2 => Some(RunStatus::Completed),
            3 => Some(RunStatus::Failed),
            _ => Some(RunStatus::Cancelled),
        };
        if let Some(status) = patch {
            store
                .admin()
                .expect("operator writes")
                .update_run(
                    id,
                    durably::store::RunPatch {
                        status: Some(status),
                        completed_at: Some(status.is_terminal().then_some(now)),
                        ..Default::default()
                    },
                    now,
                )
                .await
                .expect("patch");
        }
    }
    let filters = [
        RunFilter::new(),
        RunFilter::new()
            .status(RunStatus::Pending)
            .status(RunStatus::Completed),
        RunFilter::new().label("half", "odd"),
        RunFilter::new()
            .status(RunStatus::Leased)
            .label("half", "even"),
    ];
    for filter in filters {
        let full: Vec<String> = durably
            .get_runs(&filter)
            .await
            .expect("full list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        let mut sorted = full.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(full, sorted, "newest first by id within ties: {filter:?}");
        for limit in [0u64, 1, 3, 5, 20] {
            for offset in [0u64, 1, 2, 4, 7, 30] {
                let page: Vec<String> = durably
                    .get_runs(&filter.clone().limit(limit).offset(offset))
                    .await
                    .expect("page")
                    .into_iter()
                    .map(|r| r.id)
                    .collect();
                let start = (offset as usize).min(full.len());
                let end = (start + limit as usize).min(full.len());
                assert_eq!(
                    page,
                    full[start..end],
                    "{filter:?} limit {limit} offset {offset}"
                );
            }
        }
    }
}

async fn get_runs_paginates_with_limit_and_offset(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let other = durably.register(other_job()).expect("register other");
    handle
        .batch_trigger((1..=10).map(|v| (task(v), TriggerOptions::new())))
        .await
        .expect("batch");
    other
        .batch_trigger((1..=2).map(|v| (task(100 + v), TriggerOptions::new())))
        .await
        .expect("other batch");
    let page = |filter: RunFilter| {
        let handle = handle.clone();
        async move { values(&handle.get_runs(filter).await.expect("get_runs")) }
    };
    assert_eq!(page(RunFilter::new().limit(3)).await, [10, 9, 8]);
    assert_eq!(page(RunFilter::new().limit(3).offset(0)).await, [10, 9, 8]);
    assert_eq!(page(RunFilter::new().limit(3).offset(3)).await, [7, 6, 5]);
    assert_eq!(page(RunFilter::new().limit(3).offset(9)).await, [1]);
    assert_eq!(
        page(RunFilter::new().offset(2)).await,
        [8, 7, 6, 5, 4, 3, 2, 1],
        "offset without limit"
    );
    assert!(page(RunFilter::new().offset(10)).await.is_empty());
    assert!(page(RunFilter::new().offset(1000)).await.is_empty());
    assert!(page(RunFilter::new().limit(3).offset(50)).await.is_empty());
    assert!(page(RunFilter::new().limit(0)).await.is_empty());
    assert_eq!(page(RunFilter::new().limit(100)).await.len(), 10);
    assert_eq!(page(RunFilter::new().limit(2).offset(1)).await, [9, 8]);

    // Untyped across jobs: the other job's two runs are newest.
    let all = durably
        .get_runs(&RunFilter::new().limit(2).offset(1))
        .await
        .expect("get_runs");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].input["value"], 101);
    assert_eq!(all[1].input["value"], 10);
    // Two pages are disjoint.
    let first = durably
        .get_runs(&RunFilter::new().limit(6))
        .await
        .expect("page 1");
    let second = durably
        .get_runs(&RunFilter::new().limit(6).offset(6))
        .await
        .expect("page 2");
    assert_eq!(first.len(), 6);
    assert_eq!(second.len(), 6);
    assert!(first.iter().all(|a| second.iter().all(|b| a.id != b.id)));
}

async fn handle_get_runs_ignores_caller_job_names(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let other = durably.register(other_job()).expect("register other");
    handle.trigger(task(1)).await.expect("task");
    other.trigger(task(2)).await.expect("other");
    let mine = handle
        .get_runs(RunFilter::new().job_name("other"))
        .await
        .expect("get_runs");
    assert_eq!(values(&mine), [1]);
    assert!(mine.iter().all(|r| r.job_name == "task"));
    let theirs = other
        .get_runs(RunFilter::new().job_name("task").job_name("other"))
        .await
        .expect("get_runs");
    assert_eq!(values(&theirs), [2]);
}

async fn cancel_a_pending_run(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let seen = record_events(&durably);
    let run = handle
        .trigger_with(task(1), TriggerOptions::new().label("env", "prod"))
        .await
        .expect("trigger")
        .run;
    within("cancel", Duration::from_secs(5), durably.cancel(&run.id))
        .await
        .expect("cancel");
    let cancelled = durably.get_run(&run.id).await.expect("read").expect("run");
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    assert_eq!(cancelled.lease_owner, None);
    assert_eq!(cancelled.lease_expires_at, None);
    // No longer claimable.
    let claimed = durably
        .store()
        .claim(&ClaimRequest::new("w", LEASE, 10), Timestamp::now())
        .await
        .expect("claim");
    assert!(claimed.is_empty(), "cancelled runs are not claimable");
    assert_eq!(process_all(&durably).await, 0);

    let cancels = events_matching(&seen, |k| matches!(k, EventKind::RunCancel { .. })).await;
    assert_eq!(
        cancels,
        vec![EventKind::RunCancel {
            run_id: run.id.clone(),
            job_name: "task".into(),
            labels: labels(&[("env", "prod")]),
        }]
    );
}

async fn cancel_of_a_terminal_or_unknown_run_fails(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let completed = handle.trigger(task(1)).await.expect("t").run;
    let failed = handle.trigger(failing(2)).await.expect("t").run;
    assert_eq!(process_all(&durably).await, 2);
    assert_eq!(
        status_of(&durably, &completed.id).await,
        RunStatus::Completed
    );
    assert_eq!(status_of(&durably, &failed.id).await, RunStatus::Failed);
    let cancelled = handle.trigger(task(3)).await.expect("t").run;
    durably.cancel(&cancelled.id).await.expect("cancel");

    assert_eq!(
        conflict(durably.cancel(&completed.id).await),
        format!("Cannot cancel completed run: {}", completed.id)
    );
    assert_eq!(
        conflict(durably.cancel(&failed.id).await),
        format!("Cannot cancel failed run: {}", failed.id)
    );
    assert_eq!(
        conflict(durably.cancel(&cancelled.id).await),
        format!("Cannot cancel already cancelled run: {}", cancelled.id)
    );
    assert_eq!(
        not_found(durably.cancel("missing-run").await),
        "Run not found: missing-run"
    );
    assert_eq!(
        status_of(&durably, &completed.id).await,
        RunStatus::Completed
    );
    assert_eq!(status_of(&durably, &failed.id).await, RunStatus::Failed);
    // The store refuses to cancel terminal runs too.
    assert!(
        !durably
            .store()
            .cancel_run(&completed.id, Timestamp::now())
            .await
            .expect("cancel_run")
    );
}

async fn cancel_of_a_leased_run_drops_its_steps_but_keeps_logs(backend: Backend) {
    let db = TestDb::new(backend);
    let dropping = db.durably(|b| b.preserve_steps(false)).await;
    let preserving = db.durably(|b| b.preserve_steps(true)).await;
    let handle = dropping.register(task_job()).expect("register");
    preserving.register(task_job()).expect("register");

    for (durably, keeps_steps) in [(&dropping, false), (&preserving, true)] {
        let run = handle.trigger(task(1)).await.expect("trigger").run;
        let leased = claim_one(durably).await;
        assert_eq!(leased.id, run.id);
        let fence = Fence::of(&leased);
        let now = Timestamp::now();
        durably
            .store()
            .persist_step(
                &fence,
                NewStep {
                    name: "double".into(),
                    index: 0,
                    status: StepStatus::Completed,
                    output: Some(json!(2)),
                    error: None,
                    started_at: now,
                    attempt: None,
                },
                now,
            )
            .await
            .expect("persist")
            .expect("fence holds");
        durably
            .store()
            .append_log(
                Some(&fence),
                NewLog {
                    run_id: run.id.clone(),
                    step_name: Some("double".into()),
                    level: LogLevel::Info,
                    message: "halfway".into(),
                    data: None,
                },
                now,
            )
            .await
            .expect("log")
            .expect("fence holds");

        durably.cancel(&run.id).await.expect("cancel leased");
        let cancelled = durably.get_run(&run.id).await.expect("read").expect("run");
        assert_eq!(cancelled.status, RunStatus::Cancelled);
        assert_eq!(cancelled.lease_owner, None);
        let steps = durably.get_steps(&run.id).await.expect("steps");
        assert_eq!(steps.len(), usize::from(keeps_steps), "steps: {steps:?}");
        let logs = durably.get_logs(&run.id).await.expect("logs");
        assert_eq!(logs.len(), 1, "logs are history and stay");
        assert_eq!(logs[0].message, "halfway");
        // The old lease holder can no longer write.
        assert!(
            !durably
                .store()
                .complete_run(&fence, Some(json!(2)), Timestamp::now())
                .await
                .expect("complete")
        );
        assert_eq!(status_of(durably, &run.id).await, RunStatus::Cancelled);
    }
}

async fn retrigger_creates_a_new_run_from_a_terminal_one(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let seen = record_events(&durably);
    let options = |key: &str| {
        TriggerOptions::new()
            .concurrency_key(key)
            .idempotency_key(format!("idem-{key}"))
            .label("env", "prod")
    };
    let completed = handle
        .trigger_with(task(1), options("a"))
        .await
        .expect("t")
        .run;
    let failed = handle
        .trigger_with(failing(2), options("b"))
        .await
        .expect("t")
        .run;
    assert_eq!(process_all(&durably).await, 2);
    let cancelled = handle
        .trigger_with(task(3), options("c"))
        .await
        .expect("t")
        .run;
    durably.cancel(&cancelled.id).await.expect("cancel");

    for original in [&completed, &failed, &cancelled] {
        let new = within(
            "retrigger",
            Duration::from_secs(5),
            durably.retrigger(&original.id),
        )
        .await
        .expect("retrigger");
        assert_ne!(new.id, original.id);
        assert_eq!(new.status, RunStatus::Pending);
        assert_eq!(new.job_name, "task");
        assert_eq!(
            new.input,
            serde_json::to_value(&original.input).expect("json")
        );
        assert_eq!(new.concurrency_key, original.concurrency_key);
        assert_eq!(new.labels, original.labels);
        assert_eq!(new.idempotency_key, None, "no idempotency key");
        assert_eq!(new.current_step_index, 0);
        assert_eq!(new.lease_generation, 0);
        assert_eq!(new.output, None);
        assert_eq!(new.error, None);
        let stored = durably.get_run(&new.id).await.expect("read").expect("run");
        assert_eq!(stored, new);
        // The original is untouched.
        let old = durably
            .get_run(&original.id)
            .await
            .expect("read")
            .expect("run");
        assert!(old.status.is_terminal());

        let triggers = events_matching(
            &seen,
            |k| matches!(k, EventKind::RunTrigger { run_id, .. } if *run_id == new.id),
        )
        .await;
        assert_eq!(
            triggers,
            vec![EventKind::RunTrigger {
                run_id: new.id.clone(),
                job_name: "task".into(),
                input: new.input.clone(),
                labels: labels(&[("env", "prod")]),
            }]
        );
    }
    // The retriggered failing run fails again; the others complete.
    assert_eq!(process_all(&durably).await, 3);
    let runs = handle
        .get_runs(RunFilter::new().status(RunStatus::Failed))
        .await
        .expect("failed runs");
    assert_eq!(runs.len(), 2);
}

async fn retrigger_of_an_active_run_conflicts(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let leased = handle.trigger(task(1)).await.expect("t").run;
    assert_eq!(claim_one(&durably).await.id, leased.id);
    let pending = handle.trigger(task(2)).await.expect("t").run;
    assert_eq!(
        conflict(durably.retrigger(&pending.id).await),
        format!("Cannot retrigger pending run: {}", pending.id)
    );
    assert_eq!(
        conflict(durably.retrigger(&leased.id).await),
        format!("Cannot retrigger leased run: {}", leased.id)
    );
    assert_eq!(
        not_found(durably.retrigger("missing-run").await),
        "Run not found: missing-run"
    );
    assert_eq!(
        durably
            .get_runs(&RunFilter::new())
            .await
            .expect("runs")
            .len(),
        2
    );
}

async fn retrigger_of_a_job_unknown_to_this_instance_is_not_found(backend: Backend) {
    let db = TestDb::new(backend);
    let a = db.durably(|b| b).await;
    let b = db.durably(|b| b).await;
    let handle = a.register(task_job()).expect("register on a");
    b.register(other_job()).expect("register on b");
    let run = handle.trigger(task(1)).await.expect("trigger").run;
    a.cancel(&run.id).await.expect("cancel");
    assert_eq!(not_found(b.retrigger(&run.id).await), "Unknown job: task");
    assert_eq!(a.get_runs(&RunFilter::new()).await.expect("runs").len(), 1);
    // Instance a knows the job.
    let new = a.retrigger(&run.id).await.expect("retrigger on a");
    assert_eq!(new.status, RunStatus::Pending);
}

async fn retrigger_validates_the_stored_input_again(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let run = handle.trigger(task(1)).await.expect("t").run;
    let store = durably.store();
    assert!(
        store
            .admin()
            .expect("operator writes")
            .update_run(
                &run.id,
                RunPatch {
                    status: Some(RunStatus::Failed),
                    completed_at: Some(Some(Timestamp::now())),
                    input: Some(json!({"name": "Alice"})),
                    ..RunPatch::default()
                },
                Timestamp::now(),
            )
            .await
            .expect("patch")
    );
    match durably.retrigger(&run.id).await {
        Err(Error::Validation(message)) => {
            let prefix = format!("Cannot retrigger run {}: Invalid input:", run.id);
            assert!(message.starts_with(&prefix), "{message}");
            assert!(message.contains("value"), "{message}");
        }
        other => panic!("expected Error::Validation, got {other:?}"),
    }
    assert_eq!(
        durably
            .get_runs(&RunFilter::new())
            .await
            .expect("runs")
            .len(),
        1,
        "nothing new stored"
    );

    // A stored input that still parses is normalized by the current definition.
    store
        .admin()
        .expect("operator writes")
        .update_run(
            &run.id,
            RunPatch {
                input: Some(json!({"value": 5, "legacy": true})),
                ..RunPatch::default()
            },
            Timestamp::now(),
        )
        .await
        .expect("patch");
    let new = durably.retrigger(&run.id).await.expect("retrigger");
    assert_eq!(new.input, json!({"value": 5, "fail": false}));
}

async fn retrigger_conflicts_with_a_pending_run_of_the_same_key(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let keyed = || TriggerOptions::new().concurrency_key("group");
    let first = handle.trigger_with(task(1), keyed()).await.expect("a").run;
    durably.cancel(&first.id).await.expect("cancel");
    let pending = handle.trigger_with(task(2), keyed()).await.expect("b").run;
    assert_eq!(
        conflict(durably.retrigger(&first.id).await),
        "A pending run already exists for concurrency key \"group\" in job \"task\". Use coalesce: 'skip', 'queue', or 'active' to return the existing run instead."
    );
    let runs = durably.get_runs(&RunFilter::new()).await.expect("runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].id, pending.id);
}

async fn delete_removes_a_terminal_run_with_everything_it_owns(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let handle = durably.register(task_job()).expect("register");
    let seen = record_events(&durably);
    let completed = handle
        .trigger_with(task(1), TriggerOptions::new().label("env", "prod"))
        .await
        .expect("t")
        .run;
    let failed = handle
        .trigger_with(failing(2), TriggerOptions::new().label("env", "prod"))
        .await
        .expect("t")
        .run;
    assert_eq!(process_all(&durably).await, 2);
    let cancelled = handle
        .trigger_with(task(3), TriggerOptions::new().label("env", "prod"))
        .await
        .expect("t")
        .run;
    durably.cancel(&cancelled.id).await.expect("cancel");
    let kept = handle
        .trigger_with(task(4), TriggerOptions::new().label("env", "prod"))
        .await
        .expect("t")
        .run;

    assert_eq!(
        durably.get_steps(&completed.id).await.expect("steps").len(),
        1
    );
    assert_eq!(
        durably.get_logs(&completed.id).await.expect("logs").len(),
        1
    );
    assert_eq!(durably.get_steps(&failed.id).await.expect("steps").len(), 1);

    for run in [&completed, &failed, &cancelled] {
        within(
            "delete",
            Duration::from_secs(5),
            durably.delete_run(&run.id),
        )
        .await
        .expect("delete");
        assert!(durably.get_run(&run.id).await.expect("read").is_none());
        assert!(durably.get_steps(&run.id).await.expect("steps").is_empty());
        assert!(durably.get_logs(&run.id).await.expect("logs").is_empty());
        let deleted = events_matching(
            &seen,
            |k| matches!(k, EventKind::RunDelete { run_id, .. } if *run_id == run.id),
        )
        .await;
        assert_eq!(
            deleted,
            vec![EventKind::RunDelete {
                run_id: run.id.clone(),
                job_name: "task".into(),
                labels: labels(&[("env", "prod")]),
            }]
        );
        assert_eq!(
            not_found(durably.delete_run(&run.id).await),
            format!("Run not found: {}", run.id)
        );
    }
    let by_label = durably
        .get_runs(&RunFilter::new().label("env", "prod"))
        .await
        .expect("filter");
    assert_eq!(by_label.len(), 1, "only the pending run is still found");
    assert_eq!(by_label[0].id, kept.id);
}

async fn delete_of_an_active_or_unknown_run_fails(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let leased = handle.trigger(task(1)).await.expect("t").run;
    assert_eq!(claim_one(&durably).await.id, leased.id);
    let pending = handle.trigger(task(2)).await.expect("t").run;
    assert_eq!(
        conflict(durably.delete_run(&pending.id).await),
        format!("Cannot delete pending run: {}", pending.id)
    );
    assert_eq!(
        conflict(durably.delete_run(&leased.id).await),
        format!("Cannot delete leased run: {}", leased.id)
    );
    assert_eq!(
        not_found(durably.delete_run("missing-run").await),
        "Run not found: missing-run"
    );
    assert_eq!(status_of(&durably, &pending.id).await, RunStatus::Pending);
    assert_eq!(status_of(&durably, &leased.id).await, RunStatus::Leased);
}

async fn backdate(durably: &Durably, id: &str, completed_at: Timestamp) {
    assert!(
        durably
            .store()
            .admin()
            .expect("operator writes")
            .update_run(
                id,
                RunPatch {
                    completed_at: Some(Some(completed_at)),
                    ..RunPatch::default()
                },
                Timestamp::now(),
            )
            .await
            .expect("patch")
    );
}

async fn purge_runs_deletes_old_terminal_runs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let handle = durably.register(task_job()).expect("register");
    let completed = handle.trigger(task(1)).await.expect("t").run;
    let failed = handle.trigger(failing(2)).await.expect("t").run;
    assert_eq!(process_all(&durably).await, 2);
    let cancelled = handle.trigger(task(3)).await.expect("t").run;
    durably.cancel(&cancelled.id).await.expect("cancel");
    let leased = handle.trigger(task(4)).await.expect("t").run;
    assert_eq!(claim_one(&durably).await.id, leased.id);
    let pending = handle.trigger(task(5)).await.expect("t").run;

    // A cutoff in the past purges nothing.
    let past = Timestamp::now() - Duration::from_secs(60);
    assert_eq!(durably.purge_runs(past, None).await.expect("purge"), 0);
    assert_eq!(
        durably
            .get_runs(&RunFilter::new())
            .await
            .expect("runs")
            .len(),
        5
    );

    let future = Timestamp::now() + Duration::from_secs(60);
    assert_eq!(durably.purge_runs(future, None).await.expect("purge"), 3);
    let left = durably.get_runs(&RunFilter::new()).await.expect("runs");
    let left: Vec<&str> = left.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        left,
        [pending.id.as_str(), leased.id.as_str()],
        "active runs stay"
    );
    for run in [&completed, &failed, &cancelled] {
        assert!(durably.get_run(&run.id).await.expect("read").is_none());
        assert!(durably.get_steps(&run.id).await.expect("steps").is_empty());
        assert!(durably.get_logs(&run.id).await.expect("logs").is_empty());
    }
    // Active runs are never purged, whatever the cutoff.
    let far = Timestamp::now() + Duration::from_secs(86_400 * 365);
    assert_eq!(durably.purge_runs(far, None).await.expect("purge"), 0);
}

async fn purge_runs_respects_the_cutoff_and_limit_oldest_first(backend: Backend) {
    let (_db, durably, handle) = setup(backend).await;
    let now = Timestamp::now();
    let mut old = Vec::new();
    for (i, hours) in [3u64, 2, 1].into_iter().enumerate() {
        let run = handle.trigger(task(i as i64)).await.expect("t").run;
        durably.cancel(&run.id).await.expect("cancel");
        backdate(
            &durably,
            &run.id,
            now - Duration::from_secs(hours * 3600 + 60),
        )
        .await;
        old.push(run.id);
    }
    let recent = handle.trigger(task(9)).await.expect("t").run;
    durably.cancel(&recent.id).await.expect("cancel");

    let cutoff = now - Duration::from_secs(30 * 60);
    assert_eq!(durably.purge_runs(cutoff, Some(2)).await.expect("purge"), 2);
    assert!(
        durably.get_run(&old[0]).await.expect("read").is_none(),
        "oldest first"
    );
    assert!(durably.get_run(&old[1]).await.expect("read").is_none());
    assert!(durably.get_run(&old[2]).await.expect("read").is_some());
    assert_eq!(durably.purge_runs(cutoff, Some(2)).await.expect("purge"), 1);
    assert!(durably.get_run(&old[2]).await.expect("read").is_none());
    assert_eq!(durably.purge_runs(cutoff, Some(2)).await.expect("purge"), 0);
    assert!(
        durably.get_run(&recent.id).await.expect("read").is_some(),
        "completed after the cutoff"
    );
    assert_eq!(durably.purge_runs(now, Some(0)).await.expect("purge"), 0);
}

async fn steps_and_logs_of_a_run_are_readable(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let job = Job::new("two-steps", |step: StepContext, input: Task| async move {
        step.log().info("outside", None).await?;
        let a = step
            .run("first", |_| async move {
                Ok(json!({"items": [1, 2, 3], "meta": {"nested": true}}))
            })
            .await?;
        let b = step
            .run("second", move |_| async move { Ok(input.value + 1) })
            .await?;
        step.log().warn("after", json!({"b": b})).await?;
        Ok(json!({"a": a, "b": b}))
    });
    let handle = durably.register(job).expect("register");
    let run = handle.trigger(task(41)).await.expect("trigger").run;
    assert!(durably.get_steps(&run.id).await.expect("steps").is_empty());
    assert_eq!(process_all(&durably).await, 1);
    let steps = durably.get_steps(&run.id).await.expect("steps");
    let summary: Vec<(&str, i64, StepStatus)> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.index, s.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("first", 0, StepStatus::Completed),
            ("second", 1, StepStatus::Completed)
        ]
    );
    assert_eq!(
        steps[0].output,
        Some(json!({"items": [1, 2, 3], "meta": {"nested": true}}))
    );
    assert_eq!(steps[1].output, Some(json!(42)));
    assert!(
        steps
            .iter()
            .all(|s| s.run_id == run.id && s.completed_at.is_some())
    );

    let logs = durably.get_logs(&run.id).await.expect("logs");
    let summary: Vec<(LogLevel, &str, Option<&str>)> = logs
        .iter()
        .map(|l| (l.level, l.message.as_str(), l.step_name.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (LogLevel::Info, "outside", None),
            (LogLevel::Warn, "after", None)
        ]
    );
    assert_eq!(logs[0].data, None);
    assert_eq!(logs[1].data, Some(json!({"b": 42})));

    assert!(
        durably
            .get_steps("missing-run")
            .await
            .expect("steps")
            .is_empty()
    );
    assert!(
        durably
            .get_logs("missing-run")
            .await
            .expect("logs")
            .is_empty()
    );
}

backend_tests!(
    get_run_returns_the_run_or_none,
    get_runs_filters_by_status_job_and_labels,
    get_runs_orders_newest_first_with_an_id_tie_break,
    get_runs_paginates_with_limit_and_offset,
    pages_over_mixed_statuses_are_slices_of_the_full_list,
    handle_get_runs_ignores_caller_job_names,
    cancel_a_pending_run,
    cancel_of_a_terminal_or_unknown_run_fails,
    cancel_of_a_leased_run_drops_its_steps_but_keeps_logs,
    retrigger_creates_a_new_run_from_a_terminal_one,
    retrigger_of_an_active_run_conflicts,
    retrigger_of_a_job_unknown_to_this_instance_is_not_found,
    retrigger_validates_the_stored_input_again,
    retrigger_conflicts_with_a_pending_run_of_the_same_key,
    delete_removes_a_terminal_run_with_everything_it_owns,
    delete_of_an_active_or_unknown_run_fails,
    purge_runs_deletes_old_terminal_runs,
    purge_runs_respects_the_cutoff_and_limit_oldest_first,
    steps_and_logs_of_a_run_are_readable,
);
