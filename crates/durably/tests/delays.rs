//! Delayed runs (`TriggerOptions::start_at` / `delay`): a delayed run waits (`waiting` on a
//! `delay` wait, no lease, no slot) until its start time, then any worker starts it; a signal
//! to its wait starts it at once; a start not in the future starts it as usual.
mod common;

use std::time::Duration;

use common::{Backend, LIMIT, TestDb, backend_tests, eventually, terminal};
use durably::{
    Debounce, Disposition, Error, Job, RunStatus, StepContext, Timestamp, TriggerOptions,
    WaitStatus,
};
use serde_json::{Value, json};

fn stamp() -> Job<Value, Value> {
    Job::new("stamp", |step: StepContext, _input: Value| async move {
        let started = step
            .run("stamp", |_| async move { Ok(Timestamp::now().as_millis()) })
            .await?;
        Ok(json!({ "startedAt": started }))
    })
}

fn started_at(run: &durably::Run) -> i64 {
    run.output
        .as_ref()
        .and_then(|o| o["startedAt"].as_i64())
        .expect("startedAt")
}

/// A delayed run is `waiting` on its `delay` wait until its start, then runs; runs triggered
/// after it without a delay run first.
async fn a_delayed_run_starts_at_its_time_and_not_before(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.polling_interval(Duration::from_millis(50)))
        .await;
    let job = durably.register(stamp()).expect("register");
    durably.start();
    let start_at = Timestamp::now() + Duration::from_millis(800);
    let delayed = job
        .trigger_with(json!({}), TriggerOptions::new().start_at(start_at))
        .await
        .expect("trigger");
    assert_eq!(delayed.run.status, RunStatus::Waiting);
    let stored = durably
        .get_run(&delayed.run.id)
        .await
        .expect("get")
        .expect("run");
    assert_eq!(stored.status, RunStatus::Waiting);
    let waits = durably.get_waits(&delayed.run.id).await.expect("waits");
    assert_eq!(waits.len(), 1);
    assert_eq!(
        (
            waits[0].name.as_str(),
            waits[0].status,
            waits[0].deadline_at
        ),
        ("delay", WaitStatus::Pending, Some(start_at))
    );
    assert_eq!(
        stored.waiting_on_wait_id.as_deref(),
        Some(waits[0].id.as_str())
    );

    let now = job.trigger(json!({})).await.expect("trigger").run.id;
    let first = terminal(&durably, &now).await;
    assert_eq!(first.status, RunStatus::Completed);
    let run = terminal(&durably, &delayed.run.id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert!(
        started_at(&run) >= start_at.as_millis(),
        "started at {} before its start {}",
        started_at(&run),
        start_at.as_millis()
    );
    assert!(started_at(&run) > started_at(&first));
    durably.stop().await;
}

/// Signalling a delayed run's wait starts it at once ("run now").
async fn a_signal_starts_a_delayed_run_at_once(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.polling_interval(Duration::from_millis(50)))
        .await;
    let job = durably.register(stamp()).expect("register");
    durably.start();
    let delayed = job
        .trigger_with(
            json!({}),
            TriggerOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .expect("trigger")
        .run;
    let wait = delayed.waiting_on_wait_id.clone().expect("a delay wait");
    durably
        .signal(&wait, Value::Null, "run-now")
        .await
        .expect("signal");
    let run = terminal(&durably, &delayed.id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    durably.stop().await;
}

/// A start that is not in the future is an ordinary pending run; a delay with coalesce is
/// refused and stores nothing; idempotency keys hold for delayed runs.
async fn delays_validate_and_respect_idempotency(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably.register(stamp()).expect("register");
    let past = job
        .trigger_with(
            json!({}),
            TriggerOptions::new().start_at(Timestamp::now() - Duration::from_secs(5)),
        )
        .await
        .expect("trigger");
    assert_eq!(past.run.status, RunStatus::Pending);
    let refused = job
        .trigger_with(
            json!({}),
            TriggerOptions::new()
                .delay(Duration::from_secs(60))
                .concurrency_key("k")
                .coalesce(durably::Coalesce::Skip),
        )
        .await;
    assert!(
        matches!(&refused, Err(Error::Validation(m)) if m.contains("delayed run")),
        "{refused:?}"
    );
    let options = TriggerOptions::new()
        .delay(Duration::from_secs(60))
        .idempotency_key("once");
    let first = job
        .trigger_with(json!({}), options.clone())
        .await
        .expect("first");
    let second = job.trigger_with(json!({}), options).await.expect("second");
    assert_eq!(second.run.id, first.run.id);
    assert_eq!(second.disposition, durably::Disposition::Idempotent);
    let all = durably.get_runs(&Default::default()).await.expect("runs");
    assert_eq!(all.len(), 2);
    // Two delayed runs with one concurrency key: not pending, so no pending-per-key conflict.
    for _ in 0..2 {
        job.trigger_with(
            json!({}),
            TriggerOptions::new()
                .delay(Duration::from_secs(60))
                .concurrency_key("tenant-1"),
        )
        .await
        .expect("delayed with a key");
    }
    let waiting = eventually("four runs stored", LIMIT, || async {
        let runs = durably.get_runs(&Default::default()).await.expect("runs");
        (runs.len() == 4).then_some(runs)
    })
    .await;
    assert_eq!(
        waiting
            .iter()
            .filter(|r| r.status == RunStatus::Waiting)
            .count(),
        3
    );
}

/// 100 concurrent triggers with one debounce key make one run (the period, 30 s, is far longer
/// than the triggers take even on a loaded machine), with one of their inputs; signalled, it
/// starts; the next trigger after it started makes a new run.
async fn concurrent_debounced_triggers_make_one_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.polling_interval(Duration::from_millis(50)))
        .await;
    let job = durably.register(stamp()).expect("register");
    durably.start();
    let period = Duration::from_secs(30);
    let mut triggers = tokio::task::JoinSet::new();
    for n in 0..100 {
        let job = job.clone();
        triggers.spawn(async move {
            job.trigger_with(
                json!({ "n": n }),
                TriggerOptions::new().debounce(Debounce::new("doc-1", period)),
            )
            .await
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut dispositions = std::collections::BTreeMap::new();
    while let Some(joined) = triggers.join_next().await {
        let triggered = joined.expect("join").expect("trigger");
        ids.insert(triggered.run.id.clone());
        *dispositions
            .entry(triggered.disposition.as_str())
            .or_insert(0) += 1;
    }
    assert_eq!(ids.len(), 1, "{dispositions:?}");
    assert_eq!(
        dispositions,
        std::collections::BTreeMap::from([("created", 1), ("debounced", 99)])
    );
    let id = ids.into_iter().next().expect("one run");
    let waits = durably.get_waits(&id).await.expect("waits");
    assert_eq!(waits.len(), 1, "one delay wait, moved: {waits:?}");
    durably
        .signal(&waits[0].id, Value::Null, "run-now")
        .await
        .expect("run now");
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    let n = run.input["n"].as_i64().expect("an input of the triggers");
    assert!((0..100).contains(&n));
    let next = job
        .trigger_with(
            json!({ "n": 100 }),
            TriggerOptions::new().debounce(Debounce::new("doc-1", period)),
        )
        .await
        .expect("trigger");
    assert_eq!(next.disposition, Disposition::Created);
    assert_ne!(next.run.id, id);
    durably.stop().await;
}

/// A debounced run's start moves back with each trigger, but never beyond `max_wait` after the
/// first trigger.
async fn a_debounced_start_never_passes_the_maximum_wait(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably.register(stamp()).expect("register");
    let debounce = Debounce::new("k", Duration::from_secs(60)).max_wait(Duration::from_secs(90));
    let first_at = Timestamp::now();
    let first = job
        .trigger_with(
            json!({ "n": 1 }),
            TriggerOptions::new().debounce(debounce.clone()),
        )
        .await
        .expect("first");
    let deadline = |run_id: String| {
        let durably = durably.clone();
        async move {
            durably.get_waits(&run_id).await.expect("waits")[0]
                .deadline_at
                .expect("deadline")
        }
    };
    let first_deadline = deadline(first.run.id.clone()).await;
    assert!(first_deadline >= first_at + Duration::from_secs(60));
    let second = job
        .trigger_with(json!({ "n": 2 }), TriggerOptions::new().debounce(debounce))
        .await
        .expect("second");
    assert_eq!(
        (second.run.id.as_str(), second.disposition),
        (first.run.id.as_str(), Disposition::Debounced)
    );
    assert_eq!(second.run.input, json!({ "n": 2 }));
    let moved = deadline(first.run.id.clone()).await;
    assert!(moved >= first_deadline, "moved back, not forward");
    assert!(
        moved <= first_at + Duration::from_secs(91),
        "within max_wait of the first trigger: {moved:?}"
    );
    // Other keys and other jobs' runs are not touched.
    let other = job
        .trigger_with(
            json!({ "n": 3 }),
            TriggerOptions::new().debounce(Debounce::new("other", Duration::from_secs(60))),
        )
        .await
        .expect("other key");
    assert_eq!(other.disposition, Disposition::Created);
    let refused = job
        .trigger_with(
            json!({}),
            TriggerOptions::new().debounce(Debounce::new("k", Duration::ZERO)),
        )
        .await;
    assert!(matches!(refused, Err(Error::Validation(_))), "{refused:?}");
}

/// A batch trigger takes delays and debounce like single triggers, in one transaction: a
/// delayed run, a second debounced trigger of a key that debounces onto the first, a run that
/// starts now; a batch refused by the store (a pending-per-key conflict) stores none of them.
async fn batch_triggers_take_delays_and_debounce_all_or_nothing(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably.register(stamp()).expect("register");
    let debounced =
        || TriggerOptions::new().debounce(Debounce::new("doc-1", Duration::from_secs(60)));
    let results = job
        .batch_trigger(vec![
            (
                json!({"n": 1}),
                TriggerOptions::new().delay(Duration::from_secs(60)),
            ),
            (json!({"n": 2}), debounced()),
            (json!({"n": 3}), debounced()),
            (
                json!({"n": 4}),
                TriggerOptions::new().concurrency_key("now"),
            ),
        ])
        .await
        .expect("batch");
    let dispositions: Vec<Disposition> = results.iter().map(|r| r.disposition).collect();
    assert_eq!(
        dispositions,
        [
            Disposition::Created,
            Disposition::Created,
            Disposition::Debounced,
            Disposition::Created
        ]
    );
    assert_eq!(results[0].run.status, RunStatus::Waiting);
    assert_eq!(results[1].run.status, RunStatus::Waiting);
    assert_eq!(
        results[2].run.id, results[1].run.id,
        "debounced onto the first"
    );
    assert_eq!(results[3].run.status, RunStatus::Pending);
    let stored = durably
        .get_run(&results[1].run.id)
        .await
        .expect("get")
        .expect("run");
    assert_eq!(stored.input, json!({"n": 3}), "the last trigger's input");
    for result in &results[..2] {
        let waits = durably.get_waits(&result.run.id).await.expect("waits");
        assert_eq!(waits.len(), 1);
        assert_eq!(
            (waits[0].name.as_str(), waits[0].status),
            ("delay", WaitStatus::Pending)
        );
    }

    // All or nothing: the second run of key `now` conflicts with the pending one, so neither
    // the delayed run before it is stored.
    let before = durably.get_runs(&Default::default()).await.expect("runs");
    let refused = job
        .batch_trigger(vec![
            (
                json!({"n": 5}),
                TriggerOptions::new().delay(Duration::from_secs(60)),
            ),
            (
                json!({"n": 6}),
                TriggerOptions::new().concurrency_key("now"),
            ),
        ])
        .await;
    assert!(matches!(&refused, Err(Error::Conflict(_))), "{refused:?}");
    let after = durably.get_runs(&Default::default()).await.expect("runs");
    assert_eq!(after.len(), before.len(), "nothing stored");
}

backend_tests!(
    batch_triggers_take_delays_and_debounce_all_or_nothing,
    concurrent_debounced_triggers_make_one_run,
    a_debounced_start_never_passes_the_maximum_wait,
    a_delayed_run_starts_at_its_time_and_not_before,
    a_signal_starts_a_delayed_run_at_once,
    delays_validate_and_respect_idempotency,
);
