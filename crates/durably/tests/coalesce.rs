//! `coalesce: 'queue'` and `coalesce: 'active'` (upstream v4 §7) through the public API on
//! every backend: validation, the disposition table with a real worker, events, batches,
//! `trigger_and_wait`, and concurrent triggers from several stores sharing one database.
//! (The store-level table, row by row, is the exported contract's
//! `coalesce_modes_follow_the_disposition_table`.)
mod common;

#[allow(unused_imports)]
use common::Ends;
use durably::store::ClaimRequest;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestDb, backend_tests, within};
use durably::store::{NewRun, RunPatch};
use durably::{
    Coalesce, Disposition, Durably, Error, Event, EventKind, Job, RunFilter, RunStatus,
    SqliteStore, StepContext, Store, Timestamp, TriggerOptions,
};
use serde_json::{Value, json};
use tokio::sync::watch;

const MODES: [Coalesce; 3] = [Coalesce::Skip, Coalesce::Queue, Coalesce::Active];

/// A job that runs until its gate opens, returning its input.
fn gated_job(gate: watch::Receiver<bool>) -> Job<u64, u64> {
    Job::new("gated", move |_: StepContext, n: u64| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok(n)
        }
    })
}

fn keyed(key: &str) -> TriggerOptions {
    TriggerOptions::new().concurrency_key(key)
}

fn validation(result: durably::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Validation(message)) => message,
        other => panic!("expected Error::Validation, got {other:?}"),
    }
}

async fn all_runs(durably: &Durably) -> Vec<durably::Run> {
    durably.get_runs(&RunFilter::new()).await.expect("get_runs")
}

fn record_events(durably: &Durably) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let _ = durably.on_any(move |event| sink.lock().expect("lock").push(event.clone()));
    seen
}

/// Polls until the run `id` has `status`.
async fn reaches(durably: &Durably, id: &str, status: RunStatus) -> durably::Run {
    common::eventually(
        &format!("run {id} is {status}"),
        Duration::from_secs(20),
        || async {
            durably
                .get_run(id)
                .await
                .expect("get_run")
                .filter(|run| run.status == status)
        },
    )
    .await
}

async fn every_mode_is_parsed_and_validated(backend: Backend) {
    for (text, mode) in [
        ("skip", Coalesce::Skip),
        ("queue", Coalesce::Queue),
        ("active", Coalesce::Active),
    ] {
        assert_eq!(text.parse::<Coalesce>().expect("parse"), mode);
        assert_eq!(mode.as_str(), text);
        assert_eq!(serde_json::to_value(mode).expect("json"), json!(text));
        assert_eq!(
            serde_json::from_value::<Coalesce>(json!(text)).expect("json"),
            mode
        );
    }
    for bad in ["invalid", "Active", "", "queue "] {
        assert_eq!(
            validation(bad.parse::<Coalesce>()),
            format!("Invalid coalesce value: '{bad}'. Valid values: 'skip', 'queue', 'active'")
        );
    }

    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (_open, gate) = watch::channel(false);
    let handle = durably.register(gated_job(gate)).expect("register");
    for mode in MODES {
        for options in [
            TriggerOptions::new().coalesce(mode),
            TriggerOptions::new().idempotency_key("i").coalesce(mode),
            keyed("").coalesce(mode),
        ] {
            assert_eq!(
                validation(handle.trigger_with(1, options.clone()).await),
                "coalesce requires concurrencyKey",
                "{mode:?} {options:?}"
            );
        }
        // In a batch, with the item's index; nothing stored.
        let message = validation(
            handle
                .batch_trigger([
                    (1, keyed("k").coalesce(mode)),
                    (2, TriggerOptions::new().coalesce(mode)),
                ])
                .await,
        );
        assert_eq!(message, "coalesce requires concurrencyKey at index 1");
    }
    assert!(all_runs(&durably).await.is_empty());
}

/// The table of upstream v4 §7.1 with a real worker holding the leased run, for every mode
/// and without one, and the `status` of each `run:coalesced`.
async fn dispositions_follow_the_table_with_a_running_run(backend: Backend) {
    let db = TestDb::new(backend);
    // A slot for each mode's running run.
    let durably = db.durably(|b| b.max_concurrent_runs(8)).await;
    let events = record_events(&durably);
    let (open, gate) = watch::channel(false);
    let handle = durably.register(gated_job(gate)).expect("register");
    durably.start();

    let mut coalesced_statuses = Vec::new();
    for mode in [
        None,
        Some(Coalesce::Skip),
        Some(Coalesce::Queue),
        Some(Coalesce::Active),
    ] {
        let key = format!("key-{mode:?}");
        let options = || match mode {
            Some(mode) => keyed(&key).coalesce(mode),
            None => keyed(&key),
        };
        // Nothing yet: created.
        let first = handle.trigger_with(1, options()).await.expect("first");
        assert_eq!(first.disposition, Disposition::Created, "{mode:?}");
        // Pending (the worker may take it at once: then it is the leased row below).
        let running = reaches(&durably, &first.run.id, RunStatus::Leased).await;

        // Valid leased only.
        let second = handle.trigger_with(2, options()).await.expect("second");
        match mode {
            Some(Coalesce::Active) => {
                assert_eq!(second.disposition, Disposition::Coalesced);
                assert_eq!(second.run.id, running.id);
                assert_eq!(second.run.status, RunStatus::Leased);
                coalesced_statuses.push(RunStatus::Leased);
                // Nothing trails it yet: `queue` does.
                let trailing = handle
                    .trigger_with(3, keyed(&key).coalesce(Coalesce::Queue))
                    .await
                    .expect("queue");
                assert_eq!(trailing.disposition, Disposition::Created);
            }
            _ => {
                assert_eq!(second.disposition, Disposition::Created, "{mode:?}");
                assert_eq!(second.run.status, RunStatus::Pending);
            }
        }
        // Leased and pending.
        let third = handle.trigger_with(4, options()).await;
        match mode {
            None => assert!(matches!(third, Err(Error::Conflict(_))), "{third:?}"),
            Some(_) => {
                let third = third.expect("coalesced");
                assert_eq!(third.disposition, Disposition::Coalesced, "{mode:?}");
                assert_eq!(third.run.status, RunStatus::Pending, "{mode:?}");
                assert_ne!(third.run.id, running.id);
                coalesced_statuses.push(RunStatus::Pending);
            }
        }
        let runs: Vec<_> = all_runs(&durably)
            .await
            .into_iter()
            .filter(|run| run.concurrency_key.as_deref() == Some(key.as_str()))
            .collect();
        assert_eq!(
            runs.len(),
            2,
            "{mode:?}: one running, one pending: {runs:?}"
        );
    }

    open.send_replace(true);
    common::eventually("every run ends", Duration::from_secs(20), || async {
        all_runs(&durably)
            .await
            .iter()
            .all(|run| run.status.is_terminal())
            .then_some(())
    })
    .await;
    within("stop", Duration::from_secs(10), durably.stop()).await;
    // Only ended runs: every mode creates.
    for mode in MODES {
        let key = format!("key-{:?}", Some(mode));
        let after = handle
            .trigger_with(5, keyed(&key).coalesce(mode))
            .await
            .expect("after");
        assert_eq!(after.disposition, Disposition::Created, "{mode:?}");
    }

    let seen: Vec<RunStatus> = events
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::RunCoalesced { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(seen, coalesced_statuses);
    let wire = events
        .lock()
        .expect("lock")
        .iter()
        .find(|event| {
            matches!(
                &event.kind,
                EventKind::RunCoalesced {
                    status: RunStatus::Leased,
                    ..
                }
            )
        })
        .map(|event| serde_json::to_string(event).expect("json"))
        .expect("a coalesced event onto the leased run");
    let value: Value = serde_json::from_str(&wire).expect("json");
    assert_eq!(value["status"], "leased");
    // Upstream's field order (v4 §8.1).
    let positions: Vec<usize> = [
        "type",
        "runId",
        "jobName",
        "status",
        "labels",
        "skippedInput",
        "skippedLabels",
        "timestamp",
        "sequence",
    ]
    .iter()
    .map(|field| {
        wire.find(&format!("\"{field}\":"))
            .unwrap_or_else(|| panic!("{field} in {wire}"))
    })
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{wire}");
    assert_eq!(value.as_object().expect("object").len(), 9, "{wire}");
}

/// A waiting run (fabricated through `Store::admin`) is reused by `active` only; a leased run
/// whose lease expired, or one without a lease expiry, by no mode; runs of another job never.
async fn active_reuses_waiting_runs_but_not_expired_leases_nor_other_jobs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (_open, gate) = watch::channel(false);
    let handle = durably.register(gated_job(gate)).expect("register");
    let other = durably
        .register(Job::new(
            "other",
            |_: StepContext, n: u64| async move { Ok(n) },
        ))
        .expect("register");
    let admin = db.store.admin().expect("admin");
    let set = |id: String, status: RunStatus, expires: Option<Timestamp>| {
        let admin = &admin;
        async move {
            let patch = RunPatch {
                status: Some(status),
                lease_owner: Some((status == RunStatus::Leased).then(|| "gone".to_owned())),
                lease_expires_at: Some(expires),
                ..RunPatch::default()
            };
            assert!(
                admin
                    .update_run(&id, patch, Timestamp::now())
                    .await
                    .expect("update_run")
            );
        }
    };

    let waiting = handle.trigger_with(1, keyed("w")).await.expect("w");
    set(waiting.run.id.clone(), RunStatus::Waiting, None).await;
    let reused = handle
        .trigger_with(2, keyed("w").coalesce(Coalesce::Active))
        .await
        .expect("active");
    assert_eq!(reused.disposition, Disposition::Coalesced);
    assert_eq!(reused.run.id, waiting.run.id);
    assert_eq!(reused.run.status, RunStatus::Waiting);
    assert_eq!(reused.run.input, 1);
    // Another job with the same key: its own run.
    let elsewhere = other
        .trigger_with(3, keyed("w").coalesce(Coalesce::Active))
        .await
        .expect("other job");
    assert_eq!(elsewhere.disposition, Disposition::Created);
    for mode in [Coalesce::Queue, Coalesce::Skip] {
        let created = handle
            .trigger_with(4, keyed(&format!("w-{mode:?}")).coalesce(mode))
            .await
            .expect("created");
        assert_eq!(created.disposition, Disposition::Created);
    }

    let past = Timestamp::now() - Duration::from_secs(5);
    for (key, expires) in [("expired", Some(past)), ("no-expiry", None)] {
        let run = handle.trigger_with(5, keyed(key)).await.expect("run");
        set(run.run.id.clone(), RunStatus::Leased, expires).await;
        for mode in [None, Some(Coalesce::Queue), Some(Coalesce::Active)] {
            // Each mode creates; the run it created then pends, so use a fresh job-key pair.
            let fresh_key = format!("{key}-{mode:?}");
            let fresh = handle
                .trigger_with(6, keyed(&fresh_key))
                .await
                .expect("run");
            set(fresh.run.id.clone(), RunStatus::Leased, expires).await;
            let options = match mode {
                Some(mode) => keyed(&fresh_key).coalesce(mode),
                None => keyed(&fresh_key),
            };
            let created = handle.trigger_with(7, options).await.expect("created");
            assert_eq!(created.disposition, Disposition::Created, "{key} {mode:?}");
            assert_ne!(created.run.id, fresh.run.id);
        }
        let active = handle
            .trigger_with(8, keyed(key).coalesce(Coalesce::Active))
            .await
            .expect("active");
        assert_eq!(active.disposition, Disposition::Created, "{key}");
    }
}

/// An idempotency key beats every coalesce mode, whatever the key's runs are.
async fn idempotency_beats_every_mode(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (_open, gate) = watch::channel(false);
    let handle = durably.register(gated_job(gate)).expect("register");
    let first = handle
        .trigger_with(1, keyed("k").idempotency_key("once"))
        .await
        .expect("first");
    for mode in MODES {
        let again = handle
            .trigger_with(2, keyed("k").idempotency_key("once").coalesce(mode))
            .await
            .expect("again");
        assert_eq!(again.disposition, Disposition::Idempotent, "{mode:?}");
        assert_eq!(again.run.id, first.run.id);
        assert_eq!(again.run.input, 1);
    }
    // Another idempotency key on the same concurrency key coalesces.
    let other = handle
        .trigger_with(
            3,
            keyed("k")
                .idempotency_key("other")
                .coalesce(Coalesce::Active),
        )
        .await
        .expect("other");
    assert_eq!(other.disposition, Disposition::Coalesced);
    assert_eq!(other.run.id, first.run.id);
    assert_eq!(all_runs(&durably).await.len(), 1);
}

/// Batches: items coalesce onto earlier items and onto a running run (`active`), events follow
/// the commit, and a conflict anywhere rolls every item back and emits nothing.
async fn batches_coalesce_and_stay_all_or_nothing(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let events = record_events(&durably);
    let (open, gate) = watch::channel(false);
    let handle = durably.register(gated_job(gate)).expect("register");
    durably.start();
    let running = handle
        .trigger_with(1, keyed("busy"))
        .await
        .expect("running");
    reaches(&durably, &running.run.id, RunStatus::Leased).await;

    let results = handle
        .batch_trigger([
            (2, keyed("busy").coalesce(Coalesce::Active)),
            (3, keyed("busy").coalesce(Coalesce::Queue)),
            (4, keyed("busy").coalesce(Coalesce::Active)),
            (5, keyed("fresh").coalesce(Coalesce::Active)),
            (6, keyed("fresh").coalesce(Coalesce::Active)),
        ])
        .await
        .expect("batch");
    let got: Vec<(Disposition, u64)> = results
        .iter()
        .map(|r| (r.disposition, r.run.input))
        .collect();
    use Disposition::{Coalesced, Created};
    assert_eq!(got[0], (Coalesced, 1), "onto the running run");
    assert_eq!(results[0].run.id, running.run.id);
    assert_eq!(got[1], (Created, 3));
    assert_eq!(got[2], (Coalesced, 3), "onto the pending item before it");
    assert_eq!(got[3], (Created, 5));
    assert_eq!(got[4], (Coalesced, 5));

    let before = all_runs(&durably).await.len();
    let result = handle
        .batch_trigger([
            (7, keyed("new").coalesce(Coalesce::Active)),
            (8, keyed("busy").coalesce(Coalesce::Active)),
            (9, keyed("busy")),
        ])
        .await;
    match result {
        Err(Error::Conflict(message)) => assert!(
            message.contains("Use coalesce: 'skip', 'queue', or 'active'"),
            "{message}"
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(all_runs(&durably).await.len(), before, "nothing stored");
    // Every event emitted so far has been delivered once a sentinel emitted now is.
    let sentinel = durably.emit(EventKind::WorkerError {
        error: "flush".into(),
        context: "coalesce-test-flush".into(),
        run_id: None,
    });
    common::eventually(
        "the events are delivered",
        Duration::from_secs(20),
        || async {
            events
                .lock()
                .expect("lock")
                .iter()
                .any(|e| e.sequence == sentinel.sequence)
                .then_some(())
        },
    )
    .await;
    let trigger_events: Vec<String> = events
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::RunTrigger { run_id, .. } => Some(format!("trigger {run_id}")),
            EventKind::RunCoalesced { run_id, .. } => Some(format!("coalesced {run_id}")),
            _ => None,
        })
        .collect();
    let mut expected = vec![format!("trigger {}", running.run.id)];
    for result in &results {
        expected.push(match result.disposition {
            Disposition::Created => format!("trigger {}", result.run.id),
            _ => format!("coalesced {}", result.run.id),
        });
    }
    assert_eq!(
        trigger_events, expected,
        "the batch's events in item order; the rolled-back batch emits nothing"
    );
    open.send_replace(true);
    within("stop", Duration::from_secs(10), durably.stop()).await;
}

/// `trigger_and_wait` coalesced onto a running run waits for that run's output.
async fn trigger_and_wait_with_active_waits_for_the_running_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let events = record_events(&durably);
    let (open, gate) = watch::channel(false);
    let handle = durably.register(gated_job(gate)).expect("register");
    durably.start();
    let running = handle.trigger_with(41, keyed("k")).await.expect("running");
    reaches(&durably, &running.run.id, RunStatus::Leased).await;
    let waiting = {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle
                .trigger_and_wait(1, keyed("k").coalesce(Coalesce::Active), Default::default())
                .await
        })
    };
    // The trigger coalesced (no new run) before the gate opens.
    common::eventually("the coalesced trigger", Duration::from_secs(20), || async {
        events
            .lock()
            .expect("lock")
            .iter()
            .any(|e| matches!(e.kind, EventKind::RunCoalesced { .. }))
            .then_some(())
    })
    .await;
    assert_eq!(all_runs(&durably).await.len(), 1);
    open.send_replace(true);
    let done = within("trigger_and_wait", Duration::from_secs(20), waiting)
        .await
        .expect("task")
        .expect("trigger_and_wait");
    assert_eq!(done.id, running.run.id);
    assert_eq!(done.output, Some(41));
    assert_eq!(done.disposition, Disposition::Coalesced);
    assert_eq!(all_runs(&durably).await.len(), 1);
    within("stop", Duration::from_secs(10), durably.stop()).await;
}

/// Another store on the same database (a second process's view): a SQLite file opened again,
/// a second PostgreSQL pool; the in-memory database has only its own store.
fn second_store(db: &TestDb) -> Arc<dyn Store> {
    match db.backend {
        Backend::SqliteFile => Arc::new(
            SqliteStore::open(db.path.as_ref().expect("path")).expect("open the file again"),
        ),
        Backend::SqliteMemory => db.store.clone(),
        Backend::Postgres => Arc::new(common::postgres_store(db.schema.as_ref().expect("schema"))),
    }
}

/// Concurrent triggers from two stores: `queue` behind a running run creates exactly one run,
/// `active` with a running run creates none, `active` with nothing creates exactly one; and
/// `active` triggers racing claims that lease the pending run never create a second run.
async fn concurrent_triggers_from_several_stores(backend: Backend) {
    const TASKS: usize = 24;
    let db = TestDb::new(backend);
    db.store.migrate().await.expect("migrate");
    let stores = [db.store.clone(), second_store(&db)];
    let request = |key: &str, mode: Coalesce, n: usize| NewRun {
        job_name: "race".into(),
        input: json!(n),
        idempotency_key: None,
        concurrency_key: Some(key.into()),
        labels: Default::default(),
        coalesce: Some(mode),
        ..Default::default()
    };
    let race = |key: &'static str, mode: Coalesce| {
        let tasks: Vec<_> = (0..TASKS)
            .map(|n| {
                let store = stores[n % 2].clone();
                let request = request(key, mode, n);
                tokio::spawn(async move { store.enqueue(request, Timestamp::now()).await })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for task in tasks {
                out.push(task.await.expect("task").expect("enqueue"));
            }
            out
        }
    };
    let lease = Duration::from_secs(60);

    // A running run of "q" and of "a".
    for key in ["q", "a"] {
        let run = stores[0]
            .enqueue(request(key, Coalesce::Skip, 0), Timestamp::now())
            .await
            .expect("enqueue");
        let claimed = stores[0]
            .claim(&ClaimRequest::new("w", lease, 1), Timestamp::now())
            .await
            .expect("claim");
        assert_eq!(claimed[0].id, run.run.id);
    }
    let created = |results: &[durably::store::Enqueued]| {
        results
            .iter()
            .filter(|e| e.disposition == Disposition::Created)
            .count()
    };
    let queued = within("queue", Duration::from_secs(30), race("q", Coalesce::Queue)).await;
    assert_eq!(created(&queued), 1, "{queued:?}");
    let trailing: Vec<&str> = queued.iter().map(|e| e.run.id.as_str()).collect();
    assert!(
        trailing.windows(2).all(|w| w[0] == w[1]),
        "all onto one run"
    );

    let active = within(
        "active",
        Duration::from_secs(30),
        race("a", Coalesce::Active),
    )
    .await;
    assert_eq!(created(&active), 0, "{active:?}");
    assert!(active.iter().all(|e| e.run.status == RunStatus::Leased));

    let fresh = within(
        "fresh",
        Duration::from_secs(30),
        race("f", Coalesce::Active),
    )
    .await;
    assert_eq!(created(&fresh), 1, "{fresh:?}");

    // Claimers on both stores lease whatever is claimable while `active` triggers race them;
    // the one run of key "c" is pending, then leased: always reused.
    let first = stores[1]
        .enqueue(request("c", Coalesce::Active, 0), Timestamp::now())
        .await
        .expect("enqueue");
    assert_eq!(first.disposition, Disposition::Created);
    let claimers: Vec<_> = stores
        .iter()
        .map(|store| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let _ = store
                        .claim(&ClaimRequest::new("claimer", lease, 4), Timestamp::now())
                        .await;
                }
            })
        })
        .collect();
    let raced = within(
        "active vs claims",
        Duration::from_secs(30),
        race("c", Coalesce::Active),
    )
    .await;
    for claimer in claimers {
        claimer.await.expect("claimer");
    }
    assert_eq!(created(&raced), 0, "{raced:?}");
    assert!(raced.iter().all(|e| e.run.id == first.run.id));
    let runs: Vec<Value> = db
        .store
        .get_runs(&RunFilter::new())
        .await
        .expect("get_runs")
        .into_iter()
        .filter(|run| run.concurrency_key.as_deref() == Some("c"))
        .map(|run| json!(run.id))
        .collect();
    assert_eq!(runs, vec![json!(first.run.id)]);
}

backend_tests!(
    every_mode_is_parsed_and_validated,
    dispositions_follow_the_table_with_a_running_run,
    active_reuses_waiting_runs_but_not_expired_leases_nor_other_jobs,
    idempotency_beats_every_mode,
    batches_coalesce_and_stay_all_or_nothing,
    trigger_and_wait_with_active_waits_for_the_running_run,
    concurrent_triggers_from_several_stores,
);

/// PostgreSQL (upstream v4 §7.2): an `active` enqueue waits for its key's advisory lock and
/// decides after it, seeing what the holder committed; a keyed batch waits for its keys' locks
/// before its first insert; a plain keyed enqueue takes no lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn postgres_active_and_keyed_batches_take_the_key_locks() {
    let db = TestDb::new(Backend::Postgres);
    db.store.migrate().await.expect("migrate");
    let schema = db.schema.clone().expect("schema");
    let (holder, connection) =
        tokio_postgres::connect(&common::postgres_url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(connection);
    holder
        .batch_execute(&format!(
            "SET search_path TO \"{schema}\"; BEGIN; SELECT pg_advisory_xact_lock(hashtext('k'))"
        ))
        .await
        .expect("take the key's lock");
    let request = |mode: Option<Coalesce>, n: u64| NewRun {
        job_name: "locked".into(),
        input: json!(n),
        idempotency_key: None,
        concurrency_key: Some("k".into()),
        labels: Default::default(),
        coalesce: mode,
        ..Default::default()
    };

    let active = {
        let store = db.store.clone();
        let request = request(Some(Coalesce::Active), 1);
        tokio::spawn(async move { store.enqueue(request, Timestamp::now()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !active.is_finished(),
        "the active enqueue waits for the key's lock"
    );
    // Queued behind the active enqueue (PostgreSQL grants a lock's waiters in order).
    let batch = {
        let store = db.store.clone();
        let items = vec![request(None, 2)];
        tokio::spawn(async move { store.enqueue_many(items, Timestamp::now()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !batch.is_finished(),
        "the keyed batch waits for the key's lock"
    );
    assert!(!active.is_finished(), "the active enqueue still waits");

    // The lock's holder leases a run of the key and commits: the waiting `active` enqueue
    // reuses it (its decision follows the lock).
    holder
        .batch_execute(
            "INSERT INTO durably_runs (id, job_name, input, status, concurrency_key, labels, \
               current_step_index, completed_step_count, lease_generation, lease_owner, \
               lease_expires_at, created_at, updated_at) \
             VALUES ('01HOLDERRUN0000000000000000', 'locked', '0', 'leased', 'k', '{}', 0, 0, 1, \
               'holder', '2999-01-01T00:00:00.000Z', '2000-01-01T00:00:00.000Z', \
               '2000-01-01T00:00:00.000Z'); COMMIT",
        )
        .await
        .expect("commit the holder's run");
    let active = within("active", Duration::from_secs(10), active)
        .await
        .expect("task")
        .expect("active");
    assert_eq!(active.disposition, Disposition::Coalesced);
    assert_eq!(active.run.id, "01HOLDERRUN0000000000000000");
    assert_eq!(active.run.status, RunStatus::Leased);
    let batch = within("batch", Duration::from_secs(10), batch)
        .await
        .expect("task")
        .expect("batch");
    assert_eq!(batch[0].disposition, Disposition::Created);
}
