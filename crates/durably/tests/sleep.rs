//! Durable sleep (`StepContext::sleep`, `sleep_until`): a durable wait with only a deadline.
//! A sleeping run is `waiting` without lease or slot and resumes after its deadline with its
//! completed steps replayed; a replay after the sleep skips it; a signal ends it early.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Backend, LIMIT, Recorder, TestDb, backend_tests, eventually, terminal, waiting, within,
};
use durably::{
    EventType, Job, RunStatus, StepContext, Timestamp, TriggerOptions, WaitOutcome, WaitResult,
    WaitStatus,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// A step before (counted), a sleep of `ms`, a step after (counted).
fn napper(before: Arc<AtomicUsize>, after: Arc<AtomicUsize>) -> Job<Value, Value> {
    Job::new("napper", move |step: StepContext, input: Value| {
        let (before, after) = (before.clone(), after.clone());
        async move {
            let ms = input["ms"].as_u64().unwrap_or(0);
            step.run("before", |_| async move {
                before.fetch_add(1, Ordering::SeqCst);
                Ok(1)
            })
            .await?;
            step.sleep("nap", Duration::from_millis(ms)).await?;
            step.run("after", |_| async move {
                after.fetch_add(1, Ordering::SeqCst);
                Ok(2)
            })
            .await?;
            Ok(json!({ "slept": ms }))
        }
    })
}

/// A sleep suspends the run (`waiting`, no lease, the wait `sleep:nap` visible with its
/// deadline and sleep metadata) and it resumes after the deadline, the step before it replayed.
async fn a_sleep_suspends_the_run_and_it_resumes_after_the_deadline(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (before, after) = (Arc::default(), Arc::default());
    let job = durably
        .register(napper(Arc::clone(&before), Arc::clone(&after)))
        .expect("register");
    durably.start();
    let id = job
        .trigger(json!({ "ms": 600 }))
        .await
        .expect("trigger")
        .run
        .id;
    let asleep = waiting(&durably, &id).await;
    assert_eq!(asleep.lease_owner, None);
    let waits = durably.get_waits(&id).await.expect("waits");
    assert_eq!(waits.len(), 1);
    let wait = &waits[0];
    assert_eq!(wait.name, "sleep:nap");
    assert_eq!(wait.metadata, Some(json!({"durably": {"kind": "sleep"}})));
    let deadline = wait.deadline_at.expect("a sleep has a deadline");
    assert_eq!(deadline.millis_since(wait.created_at), 600);
    assert_eq!(asleep.waiting_on_wait_id.as_deref(), Some(wait.id.as_str()));

    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({ "slept": 600 })));
    assert_eq!(before.load(Ordering::SeqCst), 1, "replayed, not run again");
    assert_eq!(after.load(Ordering::SeqCst), 1);
    let completed = run.completed_at.expect("completed_at");
    assert!(completed >= deadline, "woke before the deadline");
    let woke = durably
        .get_wait(&wait.id)
        .await
        .expect("get_wait")
        .expect("the wait");
    assert_eq!(
        (woke.status, woke.outcome),
        (WaitStatus::Resolved, Some(WaitOutcome::Timeout))
    );
    durably.stop().await;
}

/// The engine that suspended a run sweeps at its deadline: with a polling interval far longer
/// than the sleep, the run still wakes up about on time.
async fn the_suspending_engine_wakes_the_run_at_its_deadline(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.polling_interval(Duration::from_secs(30)))
        .await;
    let job = durably
        .register(napper(Arc::default(), Arc::default()))
        .expect("register");
    durably.start();
    let id = job
        .trigger(json!({ "ms": 300 }))
        .await
        .expect("trigger")
        .run
        .id;
    // Well under the polling interval: only the timer can have resumed it.
    let run = within("the sleep ends", Duration::from_secs(10), async {
        loop {
            let run = durably.get_run(&id).await.expect("get_run");
            if let Some(run) = run.filter(|run| run.status.is_terminal()) {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    let wait = &durably.get_waits(&id).await.expect("waits")[0];
    let deadline = wait.deadline_at.expect("deadline");
    let resumed = wait.first_resumed_at.expect("resumed");
    assert!(resumed >= deadline);
    assert!(
        resumed.millis_since(deadline) < 5_000,
        "woke {} ms late",
        resumed.millis_since(deadline)
    );
    durably.stop().await;
}

/// A replay after a sleep skips it: the run sleeps, then waits for a signal; the signal's
/// resume replays the sleep (resolved as a timeout) without suspending on it again.
async fn a_replay_after_the_sleep_skips_it(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let between = Arc::new(AtomicUsize::new(0));
    let counted = between.clone();
    let job = durably
        .register(Job::new(
            "sleep-then-wait",
            move |step: StepContext, _input: Value| {
                let counted = counted.clone();
                async move {
                    step.sleep("short", Duration::from_millis(100)).await?;
                    step.run("between", |_| async move {
                        counted.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await?;
                    let wait = step.prepare_wait("go").await?;
                    let result = step.wait_for(&wait).await?;
                    Ok(json!({ "signalled": matches!(result, WaitResult::Signal { .. }) }))
                }
            },
        ))
        .expect("register");
    let events = Recorder::attach(&durably);
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let go = eventually("the run waits for `go`", LIMIT, || async {
        let waits = durably.get_waits(&id).await.expect("waits");
        let run = durably.get_run(&id).await.expect("get_run")?;
        let go = waits.into_iter().find(|wait| wait.name == "go")?;
        (run.status == RunStatus::Waiting && run.waiting_on_wait_id.as_deref() == Some(&go.id))
            .then_some(go)
    })
    .await;
    durably
        .signal(&go.id, json!(null), "go-1")
        .await
        .expect("signal");
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({ "signalled": true })));
    assert_eq!(between.load(Ordering::SeqCst), 1);
    let events = events.flush(&durably).await;
    assert_eq!(
        common::count(&events, EventType::RunWaiting),
        2,
        "suspended once on the sleep and once on `go`, not again on the sleep"
    );
    durably.stop().await;
}

/// A signal sent to a sleep's wait ends the sleep early (an operator's "run now").
async fn a_signal_ends_a_sleep_early(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let after = Arc::new(AtomicUsize::new(0));
    let job = durably
        .register(napper(Arc::default(), after.clone()))
        .expect("register");
    durably.start();
    let id = job
        .trigger(json!({ "ms": 3_600_000 }))
        .await
        .expect("trigger")
        .run
        .id;
    let asleep = waiting(&durably, &id).await;
    let wait_id = asleep.waiting_on_wait_id.expect("asleep on its wait");
    durably
        .signal(&wait_id, json!({"wake": true}), "run-now")
        .await
        .expect("signal");
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(after.load(Ordering::SeqCst), 1);
    let wait = durably
        .get_wait(&wait_id)
        .await
        .expect("get_wait")
        .expect("wait");
    assert_eq!(wait.outcome, Some(WaitOutcome::Signal));
    durably.stop().await;
}

/// 1,000 runs sleeping 200 ms on one worker with one slot all complete: a sleeping run holds
/// no slot (otherwise the second would only start after the first woke, and so on).
async fn a_thousand_sleeping_runs_share_one_slot(backend: Backend) {
    const RUNS: usize = 1000;
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(1)).await;
    let job = durably
        .register(napper(Arc::default(), Arc::default()))
        .expect("register");
    let completed = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let _listener = {
        let (completed, all_done) = (completed.clone(), all_done.clone());
        durably.on(EventType::RunComplete, move |_| {
            if completed.fetch_add(1, Ordering::SeqCst) + 1 == RUNS {
                all_done.notify_one();
            }
        })
    };
    let waiting_seen = Arc::new(AtomicUsize::new(0));
    let _on_waiting = {
        let waiting_seen = waiting_seen.clone();
        durably.on(EventType::RunWaiting, move |_| {
            waiting_seen.fetch_add(1, Ordering::SeqCst);
        })
    };
    job.batch_trigger((0..RUNS).map(|_| (json!({ "ms": 200 }), TriggerOptions::new())))
        .await
        .expect("batch trigger");
    durably.start();
    // Generous: 1,000 sleeps of 200 ms back to back would take 200 s.
    within(
        "every sleeping run completes",
        Duration::from_secs(120),
        async {
            if completed.load(Ordering::SeqCst) < RUNS {
                all_done.notified().await;
            }
        },
    )
    .await;
    // Nearly every run suspended (one whose deadline passed before it awaited its sleep, on a
    // loaded machine, completes without suspending: that is allowed).
    let suspended = waiting_seen.load(Ordering::SeqCst);
    assert!(suspended >= RUNS * 9 / 10, "only {suspended} runs slept");
    durably.stop().await;
}

/// A zero sleep and a sleep until a time already past return at once, without a wait.
async fn a_zero_sleep_returns_at_once(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "no-nap",
            |step: StepContext, _input: Value| async move {
                step.sleep("zero", Duration::ZERO).await?;
                step.sleep_until("past", Timestamp::now() - Duration::from_secs(1))
                    .await?;
                Ok(json!("awake"))
            },
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!("awake")));
    assert!(durably.get_waits(&id).await.expect("waits").is_empty());
    durably.stop().await;
}

backend_tests!(
    a_sleep_suspends_the_run_and_it_resumes_after_the_deadline,
    the_suspending_engine_wakes_the_run_at_its_deadline,
    a_replay_after_the_sleep_skips_it,
    a_signal_ends_a_sleep_early,
    a_thousand_sleeping_runs_share_one_slot,
    a_zero_sleep_returns_at_once,
);
