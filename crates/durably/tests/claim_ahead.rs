//! Claiming ahead: after a short run, a worker slot's completion claims the slot's next run and
//! one more, which the slot holds (leased) while the next run executes. Held runs never execute
//! beside the slot's run, a cancel reaches them, and one without a concurrency key goes back to
//! pending when the run ahead of it turns out long.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Gate, LIMIT, Recorder, TestDb, backend_tests, eventually};
use durably::{Durably, EventType, Job, JobHandle, Run, RunStatus, StepContext, TriggerOptions};

/// What the test job did: the inputs whose job started, whose step executed, and the most job
/// functions running at once.
#[derive(Clone, Default)]
struct Tracker {
    started: Arc<Mutex<Vec<u64>>>,
    stepped: Arc<Mutex<Vec<u64>>>,
    running: Arc<AtomicUsize>,
    high_water: Arc<AtomicUsize>,
}

impl Tracker {
    fn started(&self) -> Vec<u64> {
        self.started.lock().unwrap().clone()
    }
    fn stepped(&self) -> Vec<u64> {
        self.stepped.lock().unwrap().clone()
    }
    async fn until_started(&self, n: u64) {
        eventually(&format!("run {n} started"), LIMIT, || async {
            self.started().contains(&n).then_some(())
        })
        .await
    }
}

/// A job of one step; input 2 waits for `gate` inside its step.
fn job(tracker: &Tracker, gate: &Gate) -> Job<u64, u64> {
    let (tracker, gate) = (tracker.clone(), gate.clone());
    Job::new("ahead", move |step: StepContext, n: u64| {
        let (tracker, gate) = (tracker.clone(), gate.clone());
        async move {
            let now = tracker.running.fetch_add(1, Ordering::SeqCst) + 1;
            tracker.high_water.fetch_max(now, Ordering::SeqCst);
            tracker.started.lock().unwrap().push(n);
            let result = step
                .run("work", |_| async {
                    tracker.stepped.lock().unwrap().push(n);
                    if n == 2 {
                        gate.wait().await;
                    }
                    Ok(n * 10)
                })
                .await;
            tracker.running.fetch_sub(1, Ordering::SeqCst);
            result
        }
    })
}

/// An instance with one slot claiming ahead after runs shorter than `below`, runs 1, 2, 3
/// triggered before its worker starts (3 with `key` as concurrency key), and the worker started.
/// Run 1 is short, so its completion claims 2 and 3; 2 waits for the gate.
async fn three_runs(
    db: &TestDb,
    below: Duration,
    key: Option<&str>,
) -> (Durably, Tracker, Gate, Vec<String>) {
    let durably = db.durably(|b| b.claim_ahead_below(below)).await;
    let (tracker, gate) = (Tracker::default(), Gate::new());
    let handle = durably.register(job(&tracker, &gate)).unwrap();
    let ids = trigger(&handle, key).await;
    durably.start();
    (durably, tracker, gate, ids)
}

async fn trigger(handle: &JobHandle<u64, u64>, key: Option<&str>) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 1..=3u64 {
        let options = match key.filter(|_| n == 3) {
            Some(key) => TriggerOptions::new().concurrency_key(key),
            None => TriggerOptions::new(),
        };
        ids.push(handle.trigger_with(n, options).await.unwrap().run.id);
    }
    ids
}

async fn run(durably: &Durably, id: &str) -> Run {
    durably.get_run(id).await.unwrap().unwrap()
}

async fn terminal(durably: &Durably, id: &str) -> Run {
    eventually("run reaches a terminal state", LIMIT, || async {
        Some(run(durably, id).await).filter(|run| run.status.is_terminal())
    })
    .await
}

async fn a_short_run_claims_the_next_one_ahead(backend: Backend) {
    let db = TestDb::new(backend);
    let (durably, tracker, gate, ids) = three_runs(&db, Duration::from_secs(10), None).await;
    tracker.until_started(2).await;
    // Run 1's completion claimed 2 and 3 together: 3 is leased, held, not started.
    let held = run(&durably, &ids[2]).await;
    assert_eq!(held.status, RunStatus::Leased);
    assert_eq!(tracker.started(), vec![1, 2]);
    gate.open();
    for id in &ids {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    assert_eq!(tracker.started(), vec![1, 2, 3]);
    assert_eq!(tracker.stepped(), vec![1, 2, 3]);
    assert_eq!(tracker.high_water.load(Ordering::SeqCst), 1);
    // Held, then executed under the lease it was claimed with.
    assert_eq!(run(&durably, &ids[2]).await.lease_generation, 1);
    durably.stop().await;
}

async fn claiming_ahead_off_claims_only_the_next_run(backend: Backend) {
    let db = TestDb::new(backend);
    let (durably, tracker, gate, ids) = three_runs(&db, Duration::ZERO, None).await;
    tracker.until_started(2).await;
    // Run 1's completion claimed 2 alone, and the one slot is busy: nothing else claims.
    assert_eq!(run(&durably, &ids[2]).await.status, RunStatus::Pending);
    gate.open();
    for id in &ids {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    assert_eq!(tracker.high_water.load(Ordering::SeqCst), 1);
    durably.stop().await;
}

async fn a_held_run_cancelled_before_it_starts_never_executes(backend: Backend) {
    let db = TestDb::new(backend);
    let (durably, tracker, gate, ids) = three_runs(&db, Duration::from_secs(10), None).await;
    let recorder = Recorder::attach(&durably);
    tracker.until_started(2).await;
    assert_eq!(run(&durably, &ids[2]).await.status, RunStatus::Leased);
    durably.cancel(&ids[2]).await.unwrap();
    gate.open();
    assert_eq!(
        terminal(&durably, &ids[1]).await.status,
        RunStatus::Completed
    );
    assert_eq!(
        terminal(&durably, &ids[2]).await.status,
        RunStatus::Cancelled
    );
    durably.stop().await;
    assert_eq!(tracker.started(), vec![1, 2]);
    let events = recorder.flush(&durably).await;
    let of_held = |event_type: EventType| {
        let held = |e: &&durably::Event| e.kind.run_id() == Some(ids[2].as_str());
        events
            .iter()
            .filter(held)
            .filter(|e| e.event_type() == event_type)
            .count()
    };
    assert_eq!(of_held(EventType::RunCancel), 1, "{events:#?}");
    assert_eq!(of_held(EventType::RunLeased), 0, "{events:#?}");
}

async fn a_held_run_goes_back_when_the_run_ahead_is_long(backend: Backend) {
    let db = TestDb::new(backend);
    let below = Duration::from_millis(200);
    let (durably, tracker, gate, ids) = three_runs(&db, below, None).await;
    tracker.until_started(2).await;
    // Run 2 outlasts the bound: 3 goes back to pending, and another instance executes it
    // while 2 still runs.
    eventually("the held run is given back", LIMIT, || async {
        let held = run(&durably, &ids[2]).await;
        (held.status == RunStatus::Pending).then_some(())
    })
    .await;
    let other = db.durably(|b| b).await;
    other.register(job(&tracker, &gate)).unwrap();
    assert!(other.process_one(Some("other")).await.unwrap());
    let done = run(&durably, &ids[2]).await;
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.lease_generation, 2);
    assert_eq!(run(&durably, &ids[1]).await.status, RunStatus::Leased);
    gate.open();
    assert_eq!(
        terminal(&durably, &ids[1]).await.status,
        RunStatus::Completed
    );
    durably.stop().await;
    assert_eq!(tracker.stepped(), vec![1, 2, 3]);
}

async fn a_held_run_with_a_concurrency_key_stays_with_its_slot(backend: Backend) {
    let db = TestDb::new(backend);
    let below = Duration::from_millis(100);
    let renew = Duration::from_millis(40);
    let durably = db
        .durably(|b| b.claim_ahead_below(below).lease_renew_interval(renew))
        .await;
    let recorder = Recorder::attach(&durably);
    let (tracker, gate) = (Tracker::default(), Gate::new());
    let handle = durably.register(job(&tracker, &gate)).unwrap();
    let ids = trigger(&handle, Some("k")).await;
    durably.start();
    tracker.until_started(2).await;
    // Past the bound, a keyed run is not given back: going back to pending could collide with
    // a pending run of its key triggered meanwhile.
    tokio::time::sleep(below * 3).await;
    gate.open();
    let keyed = terminal(&durably, &ids[2]).await;
    assert_eq!(keyed.status, RunStatus::Completed);
    assert_eq!(keyed.lease_generation, 1, "claimed once");
    assert_eq!(tracker.stepped(), vec![1, 2, 3]);
    durably.stop().await;
    // Its lease was renewed while it waited, but renewals are announced only after its
    // `run:leased`.
    let events = recorder.flush(&durably).await;
    let of_keyed: Vec<EventType> = events
        .iter()
        .filter(|e| e.kind.run_id() == Some(ids[2].as_str()))
        .map(|e| e.event_type())
        .filter(|t| matches!(t, EventType::RunLeased | EventType::RunLeaseRenewed))
        .collect();
    assert_eq!(
        of_keyed.first(),
        Some(&EventType::RunLeased),
        "{of_keyed:?}"
    );
}

/// After a run with a concurrency key the slot claims no run ahead: in a queue of keyed runs a
/// held run would hold its key while other slots could run it. Runs 1, 2 and 3 have keys of
/// their own; run 1 is short, and while run 2 executes in the one slot, run 3 stays pending.
async fn a_keyed_run_claims_nothing_ahead(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.claim_ahead_below(Duration::from_secs(10)))
        .await;
    let (tracker, gate) = (Tracker::default(), Gate::new());
    let handle = durably.register(job(&tracker, &gate)).unwrap();
    let mut ids = Vec::new();
    for n in 1..=3u64 {
        let options = TriggerOptions::new().concurrency_key(format!("k{n}"));
        ids.push(handle.trigger_with(n, options).await.unwrap().run.id);
    }
    durably.start();
    tracker.until_started(2).await;
    assert_eq!(run(&durably, &ids[2]).await.status, RunStatus::Pending);
    gate.open();
    for id in &ids {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    assert_eq!(tracker.stepped(), vec![1, 2, 3]);
    durably.stop().await;
}

backend_tests!(
    a_keyed_run_claims_nothing_ahead,
    a_short_run_claims_the_next_one_ahead,
    claiming_ahead_off_claims_only_the_next_run,
    a_held_run_cancelled_before_it_starts_never_executes,
    a_held_run_goes_back_when_the_run_ahead_is_long,
    a_held_run_with_a_concurrency_key_stays_with_its_slot,
);
