//! The worker loop and the serverless primitives: start/stop, claim order, concurrency limits,
//! refill and wake-up, concurrency keys, unknown jobs, `process_one` / `process_until_idle`,
//! retention and idle maintenance (upstream worker.shared, concurrency.shared,
//! process-until-idle, purge.shared, coalesce `releaseExpiredLeases`).
mod common;

use durably::store::ClaimRequest;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    Backend, Gate, Instrumented, LIMIT, Recorder, TestDb, backend_tests, eventually, terminal,
    within,
};
use durably::{
    Durably, Event, EventKind, EventType, Job, JobHandle, RunStatus, StepContext, Timestamp,
    TriggerOptions, WaitOptions, store::RunPatch,
};
use serde_json::{Value, json};

/// Shared bookkeeping of the test jobs: an ordered log, the number of runs executing now and
/// the highest number seen at once.
#[derive(Clone, Default)]
struct Tracker {
    log: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicUsize>,
    high_water: Arc<AtomicUsize>,
}

impl Tracker {
    fn enter(&self, label: impl std::fmt::Display) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.high_water.fetch_max(now, Ordering::SeqCst);
        self.log.lock().unwrap().push(format!("start-{label}"));
    }
    fn leave(&self, label: impl std::fmt::Display) {
        self.log.lock().unwrap().push(format!("end-{label}"));
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
    fn high_water(&self) -> usize {
        self.high_water.load(Ordering::SeqCst)
    }
    async fn until_running(&self, n: usize) {
        eventually(&format!("{n} runs executing at once"), LIMIT, || async {
            (self.running() == n).then_some(())
        })
        .await
    }
}

/// A job recording `start-<n>`/`end-<n>` for input `n`; with `gate`, it waits for the gate
/// between the two.
fn tracked_job(name: &str, tracker: &Tracker, gate: Option<&Gate>) -> Job<u64, u64> {
    let tracker = tracker.clone();
    let gate = gate.cloned();
    Job::new(name, move |_: StepContext, n: u64| {
        let (tracker, gate) = (tracker.clone(), gate.clone());
        async move {
            tracker.enter(n);
            match gate {
                Some(gate) => gate.wait().await,
                None => tokio::task::yield_now().await,
            }
            tracker.leave(n);
            Ok(n * 10)
        }
    })
}

fn labels(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn trigger_all(
    job: &JobHandle<u64, u64>,
    inputs: impl IntoIterator<Item = u64>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for n in inputs {
        ids.push(job.trigger(n).await.unwrap().run.id);
    }
    ids
}

async fn status_of(durably: &Durably, id: &str) -> RunStatus {
    durably.get_run(id).await.unwrap().unwrap().status
}

async fn start_picks_up_a_pending_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "pick-up",
            |_: StepContext, input: Value| async move {
                Ok(json!({"echo": input["value"], "result": 123}))
            },
        ))
        .unwrap();
    let triggered = job.trigger(json!({"value": "hello"})).await.unwrap();
    assert_eq!(triggered.run.status, RunStatus::Pending);
    assert!(!durably.is_running());
    durably.start();
    assert!(durably.is_running());
    let run = terminal(&durably, &triggered.run.id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"echo": "hello", "result": 123})));
    assert!(run.started_at.is_some());
    assert!(run.completed_at.is_some());
    durably.stop().await;
    assert!(!durably.is_running());
}

async fn stop_waits_for_in_flight_runs_and_claims_nothing_new(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(2)).await;
    let tracker = Tracker::default();
    let gate = Gate::new();
    let job = durably
        .register(tracked_job("stop-waits", &tracker, Some(&gate)))
        .unwrap();
    durably.start();
    let ids = trigger_all(&job, [1, 2, 3, 4]).await;
    tracker.until_running(2).await;

    let stopping = {
        let durably = durably.clone();
        tokio::spawn(async move { durably.stop().await })
    };
    // stop() has begun (the worker no longer counts as running) but cannot finish while the
    // runs are blocked.
    eventually("stop begins", LIMIT, || async {
        (!durably.is_running()).then_some(())
    })
    .await;
    tokio::task::yield_now().await;
    assert!(!stopping.is_finished());
    for id in &ids[..2] {
        assert_eq!(status_of(&durably, id).await, RunStatus::Leased);
    }
    let releaser = {
        let gate = gate.clone();
        tokio::spawn(async move { gate.open() })
    };
    releaser.await.unwrap();
    within("stop returns after the runs", LIMIT, stopping)
        .await
        .unwrap();
    // Nothing was aborted: both runs finished before stop() returned, and their completions
    // handed no slot on to the runs still pending.
    for id in &ids[..2] {
        assert_eq!(status_of(&durably, id).await, RunStatus::Completed);
    }
    for id in &ids[2..] {
        assert_eq!(status_of(&durably, id).await, RunStatus::Pending);
    }
    assert_eq!(tracker.running(), 0);
    assert_eq!(tracker.log().len(), 4, "two runs: {:?}", tracker.log());

    // Started again, the worker picks them up.
    durably.start();
    for id in &ids[2..] {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    durably.stop().await;
}

/// A job that ignores its token: `stop_within` gives up after the grace period, and the
/// abandoned run is taken over once its lease expires (its lease is no longer renewed), with
/// its completed step replayed, not run again.
async fn stop_within_abandons_runs_that_outlive_the_grace(backend: Backend) {
    let db = TestDb::new(backend);
    let timings = |b: durably::DurablyBuilder| {
        b.lease_duration(Duration::from_millis(600))
            .lease_renew_interval(Duration::from_millis(100))
    };
    let first_steps = Arc::new(AtomicUsize::new(0));
    let (entered, release) = (Gate::new(), Gate::new());
    let job = |durably: &Durably| {
        let (steps, entered, release) = (first_steps.clone(), entered.clone(), release.clone());
        durably
            .register(Job::new("stubborn", move |step: StepContext, _: Value| {
                let (steps, entered, release) = (steps.clone(), entered.clone(), release.clone());
                async move {
                    step.run("first", |_| async move {
                        steps.fetch_add(1, Ordering::SeqCst);
                        Ok(1)
                    })
                    .await?;
                    // Ignores its token: only the gate ends it.
                    step.run("stubborn", |_| async move {
                        entered.open();
                        release.wait().await;
                        Ok(2)
                    })
                    .await?;
                    Ok(json!("done"))
                }
            }))
            .unwrap()
    };
    let durably = db.durably(timings).await;
    let handle = job(&durably);
    durably.start();
    let id = handle.trigger(json!({})).await.unwrap().run.id;
    within("the stubborn step starts", LIMIT, entered.wait()).await;
    let leased = durably.get_run(&id).await.unwrap().unwrap();

    let finished = within(
        "stop_within returns after its grace",
        LIMIT,
        durably.stop_within(Duration::from_millis(200)),
    )
    .await;
    assert!(!finished, "the run was still executing");
    assert!(!durably.is_running());
    assert_eq!(status_of(&durably, &id).await, RunStatus::Leased);

    // Another worker takes the run over once the unrenewed lease expires.
    release.open();
    let other = db.durably(timings).await;
    job(&other);
    other.start();
    let run = terminal(&other, &id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!("done")));
    assert!(run.lease_generation > leased.lease_generation, "taken over");
    assert_eq!(
        first_steps.load(Ordering::SeqCst),
        1,
        "the completed step is replayed"
    );
    other.stop().await;
    // A worker whose runs all finish in time reports so.
    assert!(other.stop_within(Duration::from_millis(10)).await);
}

async fn stop_with_nothing_running_returns_at_once(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.retain_runs("30d")).await;
    // Never started: returns at once.
    within("stop of a stopped worker", LIMIT, durably.stop()).await;
    durably.start();
    within(
        "stop of an idle worker",
        Duration::from_secs(5),
        durably.stop(),
    )
    .await;
    assert!(!durably.is_running());
}

async fn default_concurrency_runs_in_trigger_order(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    assert_eq!(durably.config().max_concurrent_runs, 1);
    let tracker = Tracker::default();
    let job = durably
        .register(tracked_job("ordered", &tracker, None))
        .unwrap();
    let ids = trigger_all(&job, [1, 2, 3]).await;
    durably.start();
    for id in &ids {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    durably.stop().await;
    assert_eq!(
        tracker.log(),
        labels(&["start-1", "end-1", "start-2", "end-2", "start-3", "end-3"])
    );
    assert_eq!(tracker.high_water(), 1);
}

async fn max_concurrent_runs_execute_together(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(3)).await;
    let tracker = Tracker::default();
    let gate = Gate::new();
    let job = durably
        .register(tracked_job("parallel", &tracker, Some(&gate)))
        .unwrap();
    durably.start();
    let ids = trigger_all(&job, [1, 2, 3]).await;
    tracker.until_running(3).await;
    gate.open();
    for id in &ids {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    assert_eq!(tracker.high_water(), 3);
    durably.stop().await;
}

async fn never_more_than_max_concurrent_runs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(2)).await;
    let tracker = Tracker::default();
    let job = {
        let tracker = tracker.clone();
        durably
            .register(Job::new("bounded", move |_: StepContext, n: u64| {
                let tracker = tracker.clone();
                async move {
                    tracker.enter(n);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    tracker.leave(n);
                    Ok(n)
                }
            }))
            .unwrap()
    };
    let ids = trigger_all(&job, 1..=10).await;
    durably.start();
    for id in &ids {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    durably.stop().await;
    assert!(
        tracker.high_water() <= 2,
        "high water {}",
        tracker.high_water()
    );
    assert!(tracker.high_water() >= 1);
    assert_eq!(tracker.log().len(), 20);
}

async fn slots_refill_without_waiting_for_the_poll(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.polling_interval(Duration::from_secs(60)))
        .await;
    let tracker = Tracker::default();
    let job = durably
        .register(tracked_job("refill", &tracker, None))
        .unwrap();
    let ids = trigger_all(&job, [1, 2]).await;
    durably.start();
    within("both runs complete", Duration::from_secs(5), async {
        for id in &ids {
            assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
        }
    })
    .await;
    assert_eq!(
        tracker.log(),
        labels(&["start-1", "end-1", "start-2", "end-2"])
    );
    durably.stop().await;
}

async fn trigger_wakes_an_idle_worker(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.polling_interval(Duration::from_secs(60)))
        .await;
    let job = durably
        .register(Job::new("wake", |_: StepContext, n: u64| async move {
            Ok(n + 1)
        }))
        .unwrap();
    durably.start();
    for n in 0..3 {
        // Give the worker the chance to park on its 60 s poll (the assertion does not depend on it).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let done = within(
            "trigger_and_wait with a 60 s polling interval",
            Duration::from_secs(5),
            job.trigger_and_wait(n, TriggerOptions::new(), WaitOptions::new()),
        )
        .await
        .unwrap();
        assert_eq!(done.output, Some(n + 1));
    }
    durably.stop().await;
}

/// A worker waiting with a free slot takes this process's triggers: it enqueues each run and
/// claims it in one store call, and announces the run before reporting it leased.
async fn triggers_on_a_waiting_worker_are_enqueued_and_claimed_together(backend: Backend) {
    let db = TestDb::new(backend);
    let store = Instrumented::over(db.store.clone());
    let hand_offs = store.hand_offs.clone();
    let durably = Durably::builder()
        .store(store)
        .polling_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    durably.migrate().await.unwrap();
    let job = durably
        .register(Job::new("handed", |_: StepContext, n: u64| async move {
            Ok(n + 1)
        }))
        .unwrap();
    let recorder = Recorder::attach(&durably);
    durably.start();
    let mut ids = Vec::new();
    for n in 0..5 {
        let done = within(
            "trigger_and_wait",
            LIMIT,
            job.trigger_and_wait(n, TriggerOptions::new(), WaitOptions::new()),
        )
        .await
        .unwrap();
        assert_eq!(done.output, Some(n + 1));
        ids.push(done.id);
    }
    durably.stop().await;
    // The first trigger may come before the worker first waits; every later one finds it
    // waiting.
    let handed = hand_offs.load(Ordering::SeqCst);
    assert!(handed >= 4, "{handed} of 5 triggers handed to the worker");
    let mut events = recorder.flush(&durably).await;
    events.sort_by_key(|event| event.sequence);
    for id in &ids {
        let position = |event_type: EventType| {
            events
                .iter()
                .position(|e| e.event_type() == event_type && e.kind.run_id() == Some(id))
                .unwrap_or_else(|| panic!("no {event_type:?} for {id}"))
        };
        assert!(position(EventType::RunTrigger) < position(EventType::RunLeased));
    }
}

/// A run enqueued while the worker's only slot is finishing (its completion written, the slot
/// not yet free) starts as soon as the slot frees, not at the next poll.
async fn a_run_triggered_while_the_last_slot_finishes_starts_without_the_poll(backend: Backend) {
    let db = TestDb::new(backend);
    let completion = Gate::new();
    let durably = Durably::builder()
        .store(Instrumented {
            hold_completion: Some((json!(1), completion.clone())),
            ..Instrumented::over(db.store.clone())
        })
        .polling_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    durably.migrate().await.unwrap();
    let job = durably
        .register(Job::new(
            "quick",
            |_: StepContext, n: u64| async move { Ok(n) },
        ))
        .unwrap();
    durably.start();
    // A first run settles the worker into waiting.
    let warm = within(
        "trigger_and_wait",
        LIMIT,
        job.trigger_and_wait(0, TriggerOptions::new(), WaitOptions::new()),
    )
    .await
    .unwrap();
    assert_eq!(warm.output, Some(0));
    let first = job.trigger(1).await.unwrap().run.id;
    // Its completion, and the claim that came with it (which found nothing), are written.
    eventually("the first run is completed", LIMIT, || async {
        let run = durably.get_run(&first).await.unwrap()?;
        (run.status == RunStatus::Completed).then_some(())
    })
    .await;
    let second = job.trigger(2).await.unwrap().run.id;
    completion.open();
    let done = terminal(&durably, &second).await;
    assert_eq!(done.status, RunStatus::Completed);
    durably.stop().await;
}

/// A stopped worker takes no triggers: the run is enqueued on its own and stays pending.
async fn a_trigger_after_stop_is_only_enqueued(backend: Backend) {
    let db = TestDb::new(backend);
    let store = Instrumented::over(db.store.clone());
    let hand_offs = store.hand_offs.clone();
    let durably = Durably::builder().store(store).build().unwrap();
    durably.migrate().await.unwrap();
    let job = durably
        .register(Job::new(
            "later",
            |_: StepContext, n: u64| async move { Ok(n) },
        ))
        .unwrap();
    durably.start();
    let warm = job
        .trigger_and_wait(1, TriggerOptions::new(), WaitOptions::new())
        .await
        .unwrap();
    assert_eq!(warm.output, Some(1));
    durably.stop().await;
    let before = hand_offs.load(Ordering::SeqCst);
    let run = job.trigger(2).await.unwrap().run;
    assert_eq!(hand_offs.load(Ordering::SeqCst), before);
    let stored = durably.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Pending);
    assert_eq!(stored.lease_generation, 0);
}

async fn same_concurrency_key_runs_one_at_a_time(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(3)).await;
    let tracker = Tracker::default();
    let gate = Gate::new();
    let job = durably
        .register(tracked_job("keyed", &tracker, Some(&gate)))
        .unwrap();
    durably.start();
    let key = || TriggerOptions::new().concurrency_key("user-123");
    let first = job.trigger_with(1, key()).await.unwrap().run.id;
    tracker.until_running(1).await;
    let second = job.trigger_with(2, key()).await.unwrap();
    assert_eq!(second.run.status, RunStatus::Pending);
    let second = second.run.id;

    // The key is held by the first run's lease: nobody can claim the second one.
    assert!(!durably.process_one(Some("probe")).await.unwrap());
    assert_eq!(status_of(&durably, &first).await, RunStatus::Leased);
    assert_eq!(status_of(&durably, &second).await, RunStatus::Pending);
    assert_eq!(tracker.running(), 1);

    gate.open();
    assert_eq!(
        terminal(&durably, &first).await.status,
        RunStatus::Completed
    );
    assert_eq!(
        terminal(&durably, &second).await.status,
        RunStatus::Completed
    );
    assert_eq!(
        tracker.log(),
        labels(&["start-1", "end-1", "start-2", "end-2"])
    );
    assert_eq!(tracker.high_water(), 1);
    durably.stop().await;
}

async fn concurrency_key_excludes_across_job_names(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(3)).await;
    let tracker = Tracker::default();
    let gate = Gate::new();
    let job_a = durably
        .register(tracked_job("key-job-a", &tracker, Some(&gate)))
        .unwrap();
    let job_b = durably
        .register(tracked_job("key-job-b", &tracker, None))
        .unwrap();
    durably.start();
    let key = || TriggerOptions::new().concurrency_key("shared");
    let a = job_a.trigger_with(1, key()).await.unwrap().run.id;
    tracker.until_running(1).await;
    let b = job_b.trigger_with(2, key()).await.unwrap().run.id;
    assert!(!durably.process_one(Some("probe")).await.unwrap());
    assert_eq!(status_of(&durably, &b).await, RunStatus::Pending);

    gate.open();
    assert_eq!(terminal(&durably, &a).await.status, RunStatus::Completed);
    assert_eq!(terminal(&durably, &b).await.status, RunStatus::Completed);
    assert_eq!(
        tracker.log(),
        labels(&["start-1", "end-1", "start-2", "end-2"])
    );
    durably.stop().await;
}

async fn different_concurrency_keys_run_in_parallel(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.max_concurrent_runs(2)).await;
    let tracker = Tracker::default();
    let gate = Gate::new();
    let job = durably
        .register(tracked_job("multi-key", &tracker, Some(&gate)))
        .unwrap();
    durably.start();
    let a = job
        .trigger_with(1, TriggerOptions::new().concurrency_key("user-A"))
        .await
        .unwrap()
        .run
        .id;
    let b = job
        .trigger_with(2, TriggerOptions::new().concurrency_key("user-B"))
        .await
        .unwrap()
        .run
        .id;
    let c = job.trigger(3).await.unwrap().run.id;
    tracker.until_running(2).await;
    // The third run (no key) waits for a free slot.
    assert_eq!(status_of(&durably, &c).await, RunStatus::Pending);
    gate.open();
    for id in [&a, &b, &c] {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    assert_eq!(tracker.high_water(), 2);
    durably.stop().await;
}

async fn unknown_job_fails_the_run(backend: Backend) {
    let db = TestDb::new(backend);
    let a = db.durably(|b| b).await;
    let b = db.durably(|b| b).await;
    let job = a
        .register(Job::new("ghost", |_: StepContext, _: Value| async {
            Ok(())
        }))
        .unwrap();
    let fails = Arc::new(Mutex::new(Vec::<Event>::new()));
    let leased = Arc::new(Mutex::new(Vec::<Event>::new()));
    {
        let fails = fails.clone();
        b.on(EventType::RunFail, move |e| {
            fails.lock().unwrap().push(e.clone())
        });
        let leased = leased.clone();
        b.on(EventType::RunLeased, move |e| {
            leased.lock().unwrap().push(e.clone())
        });
    }
    let id = job.trigger(json!({})).await.unwrap().run.id;
    assert!(
        b.process_one(None).await.unwrap(),
        "processed, whatever the outcome"
    );
    // Upstream v4: leased like any run (announced), then failed.
    let leased = eventually("run:leased is emitted", LIMIT, || async {
        let seen = leased.lock().unwrap().clone();
        (!seen.is_empty()).then_some(seen)
    })
    .await;
    assert_eq!(leased.len(), 1);
    assert!(
        matches!(&leased[0].kind, EventKind::RunLeased { run_id, .. } if *run_id == id),
        "{leased:?}"
    );
    let run = b.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("Unknown job: ghost"));
    assert_eq!(run.lease_owner, None);
    let fails = eventually("run:fail is emitted (SPEC §3 #17)", LIMIT, || async {
        let seen = fails.lock().unwrap().clone();
        (!seen.is_empty()).then_some(seen)
    })
    .await;
    assert_eq!(fails.len(), 1);
    match &fails[0].kind {
        EventKind::RunFail {
            run_id,
            job_name,
            error,
            ..
        } => {
            assert_eq!(run_id, &id);
            assert_eq!(job_name, "ghost");
            assert_eq!(error, "Unknown job: ghost");
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn process_one_on_an_empty_queue(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    assert!(!durably.process_one(None).await.unwrap());
    assert!(!durably.process_one(Some("named")).await.unwrap());
    assert_eq!(durably.process_until_idle(None, None).await.unwrap(), 0);
}

async fn process_until_idle_respects_max_runs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let tracker = Tracker::default();
    let job = durably
        .register(tracked_job("serverless", &tracker, None))
        .unwrap();
    let ids = trigger_all(&job, [1, 2, 3]).await;
    let first = durably
        .process_until_idle(Some("invocation-a"), Some(2))
        .await
        .unwrap();
    assert_eq!(first, 2);
    assert_eq!(
        tracker.log(),
        labels(&["start-1", "end-1", "start-2", "end-2"])
    );
    let statuses = [
        status_of(&durably, &ids[0]).await,
        status_of(&durably, &ids[1]).await,
        status_of(&durably, &ids[2]).await,
    ];
    assert_eq!(
        statuses,
        [
            RunStatus::Completed,
            RunStatus::Completed,
            RunStatus::Pending
        ]
    );
    assert_eq!(durably.process_until_idle(None, Some(0)).await.unwrap(), 0);
    assert_eq!(
        durably
            .process_until_idle(Some("invocation-b"), None)
            .await
            .unwrap(),
        1
    );
    for id in &ids {
        assert_eq!(status_of(&durably, id).await, RunStatus::Completed);
    }
    assert_eq!(tracker.log().len(), 6);
}

async fn two_instances_split_a_backlog(backend: Backend) {
    let db = TestDb::new(backend);
    let a = db.durably(|b| b).await;
    let b = db.durably(|b| b).await;
    let tracker = Tracker::default();
    let job = a.register(tracked_job("split", &tracker, None)).unwrap();
    b.register(tracked_job("split", &tracker, None)).unwrap();
    let ids = trigger_all(&job, [1, 2, 3, 4]).await;
    let (from_a, from_b) = tokio::join!(
        a.process_until_idle(None, Some(4)),
        b.process_until_idle(None, Some(4))
    );
    assert_eq!(from_a.unwrap() + from_b.unwrap(), 4);
    let mut started: Vec<_> = tracker
        .log()
        .into_iter()
        .filter(|l| l.starts_with("start-"))
        .collect();
    started.sort();
    assert_eq!(
        started,
        labels(&["start-1", "start-2", "start-3", "start-4"])
    );
    for id in &ids {
        assert_eq!(status_of(&a, id).await, RunStatus::Completed);
    }
}

async fn retention_purges_old_terminal_runs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.retain_runs("1m")).await;
    let job = durably
        .register(Job::new("retained", |_: StepContext, n: u64| async move {
            Ok(n)
        }))
        .unwrap();
    let old = job.trigger(1).await.unwrap().run.id;
    let fresh = job.trigger(2).await.unwrap().run.id;
    // process_one does no maintenance.
    assert!(durably.process_one(None).await.unwrap());
    assert!(durably.process_one(None).await.unwrap());
    let backdate = RunPatch {
        completed_at: Some(Some(Timestamp::now() - Duration::from_secs(120))),
        ..RunPatch::default()
    };
    assert!(
        durably
            .store()
            .admin()
            .expect("operator writes")
            .update_run(&old, backdate, Timestamp::now())
            .await
            .unwrap()
    );
    assert!(durably.get_run(&old).await.unwrap().is_some());
    assert_eq!(durably.process_until_idle(None, None).await.unwrap(), 0);
    assert!(durably.get_run(&old).await.unwrap().is_none(), "purged");
    let kept = durably.get_run(&fresh).await.unwrap().unwrap();
    assert_eq!(kept.status, RunStatus::Completed);
}

async fn idle_maintenance_releases_expired_leases(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new("released", |_: StepContext, n: u64| async move {
            Ok(n * 2)
        }))
        .unwrap();
    let id = job.trigger(21).await.unwrap().run.id;
    let store = durably.store();
    let claimed = store
        .claim(&ClaimRequest::new("crashed", LIMIT, 1), Timestamp::now())
        .await
        .unwrap()
        .remove(0);
    let expire = RunPatch {
        lease_expires_at: Some(Some(Timestamp::now() - Duration::from_secs(5))),
        ..RunPatch::default()
    };
    store
        .admin()
        .expect("operator writes")
        .update_run(&id, expire, Timestamp::now())
        .await
        .unwrap();
    durably.run_idle_maintenance().await;
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(run.lease_owner, None);
    assert_eq!(run.lease_expires_at, None);
    assert_eq!(run.lease_generation, claimed.lease_generation);
    assert_eq!(run.error, None);
    // And it runs normally afterwards.
    assert!(durably.process_one(None).await.unwrap());
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!(42)));
}

async fn expired_lease_with_pending_sibling_fails(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let fails = Arc::new(Mutex::new(Vec::<Event>::new()));
    {
        let fails = fails.clone();
        durably.on(EventType::RunFail, move |e| {
            fails.lock().unwrap().push(e.clone())
        });
    }
    let job = durably
        .register(Job::new("sibling", |_: StepContext, n: u64| async move {
            Ok(n)
        }))
        .unwrap();
    let key = || TriggerOptions::new().concurrency_key("k");
    let leased = job.trigger_with(1, key()).await.unwrap().run.id;
    let store = durably.store();
    store
        .claim(&ClaimRequest::new("crashed", LIMIT, 1), Timestamp::now())
        .await
        .unwrap();
    let pending = job.trigger_with(2, key()).await.unwrap().run.id;
    let expire = RunPatch {
        lease_expires_at: Some(Some(Timestamp::now() - Duration::from_secs(5))),
        ..RunPatch::default()
    };
    store
        .admin()
        .expect("operator writes")
        .update_run(&leased, expire, Timestamp::now())
        .await
        .unwrap();
    durably.run_idle_maintenance().await;

    let failed = durably.get_run(&leased).await.unwrap().unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some("Lease expired; pending run already exists")
    );
    assert_eq!(failed.lease_owner, None);
    assert_eq!(status_of(&durably, &pending).await, RunStatus::Pending);
    let fails = eventually("run:fail for the released run", LIMIT, || async {
        let seen = fails.lock().unwrap().clone();
        (!seen.is_empty()).then_some(seen)
    })
    .await;
    assert_eq!(fails.len(), 1);
    match &fails[0].kind {
        EventKind::RunFail { run_id, error, .. } => {
            assert_eq!(run_id, &leased);
            assert_eq!(error, "Lease expired; pending run already exists");
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn start_twice_is_a_no_op(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let owners = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let owners = owners.clone();
        durably.on(EventType::RunLeased, move |e| {
            if let EventKind::RunLeased { lease_owner, .. } = &e.kind {
                owners.lock().unwrap().push(lease_owner.clone());
            }
        });
    }
    let job = durably
        .register(Job::new(
            "twice",
            |_: StepContext, n: u64| async move { Ok(n) },
        ))
        .unwrap();
    durably.start_as("first-worker");
    durably.start_as("second-worker");
    durably.start();
    assert!(durably.is_running());
    for n in 0..2 {
        let done = within(
            "run",
            LIMIT,
            job.trigger_and_wait(n, TriggerOptions::new(), WaitOptions::new()),
        )
        .await
        .unwrap();
        assert_eq!(done.output, Some(n));
    }
    let owners = eventually("two run:leased events", LIMIT, || async {
        let seen = owners.lock().unwrap().clone();
        (seen.len() == 2).then_some(seen)
    })
    .await;
    assert_eq!(owners, ["first-worker", "first-worker"]);
    durably.stop().await;
    assert!(!durably.is_running());
}

async fn stop_then_start_again(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new("restart", |_: StepContext, n: u64| async move {
            Ok(n)
        }))
        .unwrap();
    durably.start();
    let first = within(
        "first run",
        LIMIT,
        job.trigger_and_wait(1, TriggerOptions::new(), WaitOptions::new()),
    )
    .await
    .unwrap();
    assert_eq!(first.output, Some(1));
    durably.stop().await;
    assert!(!durably.is_running());

    let id = job.trigger(2).await.unwrap().run.id;
    assert_eq!(status_of(&durably, &id).await, RunStatus::Pending);
    durably.start();
    assert!(durably.is_running());
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!(2)));
    durably.stop().await;
}

/// A run left behind by a process that had the job (one step stored, lease expired) is
/// reclaimed by a process without it: it fails with `Unknown job`, and with preserve_steps
/// off its step outputs go too (SPEC §3: removed at any terminal state).
async fn unknown_job_failure_drops_steps(backend: Backend) {
    let db = TestDb::new(backend);
    let a = db.durably(|b| b).await;
    let b = db.durably(|b| b).await;
    assert!(!b.config().preserve_steps);
    let job = a
        .register(Job::new("half-done", |_: StepContext, _: Value| async {
            Ok(())
        }))
        .unwrap();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let store = a.store();
    let claimed = store
        .claim(&ClaimRequest::new("crashed", LIMIT, 1), Timestamp::now())
        .await
        .unwrap()
        .remove(0);
    let step = durably::store::NewStep {
        name: "step1".into(),
        index: 0,
        status: durably::StepStatus::Completed,
        output: Some(json!("kept?")),
        error: None,
        started_at: Timestamp::now(),
        attempt: None,
    };
    assert!(
        store
            .persist_step(&durably::store::Fence::of(&claimed), step, Timestamp::now())
            .await
            .unwrap()
            .is_some()
    );
    let expire = RunPatch {
        lease_expires_at: Some(Some(Timestamp::now() - Duration::from_secs(5))),
        ..RunPatch::default()
    };
    store
        .admin()
        .expect("operator writes")
        .update_run(&id, expire, Timestamp::now())
        .await
        .unwrap();
    assert!(b.process_one(None).await.unwrap());
    let run = b.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("Unknown job: half-done"));
    // A failed run keeps its completed steps, for a resume by a worker that knows the job.
    let steps = b.get_steps(&id).await.unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].output, Some(json!("kept?")));
}

backend_tests!(
    start_picks_up_a_pending_run,
    stop_waits_for_in_flight_runs_and_claims_nothing_new,
    stop_within_abandons_runs_that_outlive_the_grace,
    stop_with_nothing_running_returns_at_once,
    default_concurrency_runs_in_trigger_order,
    max_concurrent_runs_execute_together,
    never_more_than_max_concurrent_runs,
    slots_refill_without_waiting_for_the_poll,
    trigger_wakes_an_idle_worker,
    triggers_on_a_waiting_worker_are_enqueued_and_claimed_together,
    a_run_triggered_while_the_last_slot_finishes_starts_without_the_poll,
    a_trigger_after_stop_is_only_enqueued,
    same_concurrency_key_runs_one_at_a_time,
    concurrency_key_excludes_across_job_names,
    different_concurrency_keys_run_in_parallel,
    unknown_job_fails_the_run,
    unknown_job_failure_drops_steps,
    process_one_on_an_empty_queue,
    process_until_idle_respects_max_runs,
    two_instances_split_a_backlog,
    retention_purges_old_terminal_runs,
    idle_maintenance_releases_expired_leases,
    expired_lease_with_pending_sibling_fails,
    start_twice_is_a_no_op,
    stop_then_start_again,
);
