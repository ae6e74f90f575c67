//! Hostile input (issue 19, items 2 and 3), on every backend: text no backend can store is
//! refused the same way everywhere before any backend sees it, a run's labels and keys are
//! bounded ([`durably::Limits`]), listings take a bounded number of label filters at a cost
//! linear in them, and a listing that outlives its time or its caller is cancelled in the
//! database.
mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestDb, backend_tests, eventually, within};
use durably::{Durably, Error, Job, Labels, Limits, RunFilter, StepContext, TriggerOptions};
use serde_json::{Value, json};

fn echo() -> Job<Value, Value> {
    Job::new("echo", |_step: StepContext, input: Value| async move {
        Ok(input)
    })
}

async fn setup(backend: Backend) -> (TestDb, Durably) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    durably.register(echo()).expect("register");
    (db, durably)
}

fn validation(result: durably::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Validation(message)) => message,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

async fn stored_runs(durably: &Durably) -> usize {
    durably
        .get_runs(&RunFilter::new())
        .await
        .expect("get_runs")
        .len()
}

/// A NUL in a run id is refused with one message on every backend (PostgreSQL used to fail
/// with `invalid byte sequence … 0x00`, SQLite to find nothing).
async fn a_nul_in_a_run_id_is_refused_alike(backend: Backend) {
    let (_db, durably) = setup(backend).await;
    let id = "01J\0X";
    let expected = "Invalid runId: it contains a NUL character (U+0000) at byte 3, which cannot \
                    be stored; remove it";
    assert_eq!(validation(durably.get_run(id).await), expected);
    assert_eq!(validation(durably.get_steps(id).await), expected);
    assert_eq!(validation(durably.get_logs(id).await), expected);
    assert_eq!(validation(durably.cancel(id).await), expected);
    assert_eq!(validation(durably.delete_run(id).await), expected);
    assert_eq!(validation(durably.retrigger(id).await), expected);
    let wait = durably.wait_for_run(id, durably::WaitOptions::new()).await;
    assert_eq!(validation(wait), expected);
}

/// A NUL in a job name, a key, a label key or value is refused before anything is stored.
async fn a_nul_in_a_trigger_is_refused_and_stores_nothing(backend: Backend) {
    let (_db, durably) = setup(backend).await;
    let input = json!({});
    let cases: Vec<(&str, TriggerOptions, &str)> = vec![
        ("ec\0ho", TriggerOptions::new(), "Invalid jobName"),
        (
            "echo",
            TriggerOptions::new().idempotency_key("a\0"),
            "Invalid idempotencyKey",
        ),
        (
            "echo",
            TriggerOptions::new().concurrency_key("\0"),
            "Invalid concurrencyKey",
        ),
        (
            "echo",
            TriggerOptions::new().label("tenant", "ac\0me"),
            "Invalid label \"tenant\"",
        ),
        (
            "echo",
            TriggerOptions::new().label("ten\0ant", "acme"),
            "Invalid label key",
        ),
    ];
    for (job, options, start) in cases {
        let message = validation(
            durably
                .trigger_json(job, input.clone(), options.clone())
                .await,
        );
        assert!(
            message.starts_with(start) && message.contains("NUL"),
            "{job:?} {options:?}: {message}"
        );
        let batch = durably
            .batch_trigger_json(job, vec![(input.clone(), options)])
            .await;
        let message = validation(batch);
        assert!(message.contains("NUL"), "{message}");
    }
    assert_eq!(stored_runs(&durably).await, 0);
}

/// NUL inside JSON input is stored escaped (`\u0000` in JSON text) by every backend and comes
/// back unchanged: input is not refused for it.
async fn a_nul_inside_json_input_round_trips(backend: Backend) {
    let (_db, durably) = setup(backend).await;
    let input = json!({ "text": "a\u{0}b", "\u{0}key": ["\u{0}"] });
    let run = durably
        .trigger_json("echo", input.clone(), TriggerOptions::new())
        .await
        .expect("trigger");
    let stored = durably
        .get_run(&run.run.id)
        .await
        .expect("read")
        .expect("run");
    assert_eq!(stored.input, input);
}

/// A NUL in a listing's job name or label filter is refused, as are more filters than
/// `Limits::max_label_filters` / `max_job_name_filters`.
async fn hostile_listings_are_refused(backend: Backend) {
    let (_db, durably) = setup(backend).await;
    let message = validation(durably.get_runs(&RunFilter::new().job_name("e\0")).await);
    assert!(message.starts_with("Invalid jobName"), "{message}");
    let message = validation(durably.get_runs(&RunFilter::new().label("k", "\0")).await);
    assert!(
        message.starts_with("Invalid label filter \"k\""),
        "{message}"
    );
    let mut filter = RunFilter::new();
    for i in 0..33 {
        filter = filter.label(format!("k{i}"), "v");
    }
    let message = validation(durably.get_runs(&filter).await);
    assert_eq!(
        message,
        "Too many label filters: 33 given; a query may combine at most 32 \
         (Limits::max_label_filters): filter on fewer labels"
    );
    let mut filter = RunFilter::new();
    for i in 0..101 {
        filter = filter.job_name(format!("job-{i}"));
    }
    let message = validation(durably.get_runs(&filter).await);
    assert!(message.contains("max_job_name_filters"), "{message}");
    // A lower limit is honoured.
    let db = TestDb::new(backend);
    let strict = db
        .durably(|b| b.limits(Limits::new().max_label_filters(1)))
        .await;
    let filter = RunFilter::new().label("a", "1").label("b", "2");
    assert!(validation(strict.get_runs(&filter).await).contains("at most 1"));
}

/// The cap's number of label filters answers fast and right: only runs carrying every label
/// match, whatever else they carry. (The bound only guards against hangs.)
async fn the_cap_of_label_filters_answers_fast(backend: Backend) {
    let (_db, durably) = setup(backend).await;
    let labels = |n: usize, odd: bool| -> Labels {
        (0..n)
            .map(|i| {
                (
                    format!("k{i}"),
                    format!("v{}", if odd && i == 31 { 1 } else { 0 }),
                )
            })
            .collect()
    };
    let mut items = Vec::new();
    for i in 0..200 {
        let options = TriggerOptions::new().labels(labels(40, i % 2 == 1));
        items.push((json!({ "i": i }), options));
    }
    durably
        .batch_trigger_json("echo", items)
        .await
        .expect("batch");
    let mut filter = RunFilter::new();
    for (key, value) in labels(32, false) {
        filter = filter.label(key, value);
    }
    let started = Instant::now();
    let all = within(
        "32 label filters",
        Duration::from_secs(10),
        durably.get_runs(&filter),
    )
    .await
    .expect("listing");
    let page = durably
        .get_runs(&filter.clone().limit(7).offset(3))
        .await
        .expect("page");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(all.len(), 100, "the even runs carry every filtered label");
    assert!(
        all.iter()
            .all(|run| run.input["i"].as_i64().unwrap() % 2 == 0)
    );
    assert_eq!(
        page.iter().map(|r| &r.id).collect::<Vec<_>>(),
        all[3..10].iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    // Statuses repeated many times count once.
    let mut repeated = filter.clone().limit(5);
    for _ in 0..1000 {
        repeated = repeated.status(durably::RunStatus::Pending);
    }
    let runs = durably
        .get_runs(&repeated)
        .await
        .expect("repeated statuses");
    assert_eq!(runs.len(), 5);
}

/// What one run may carry is bounded the same way on every backend, and a refused trigger or
/// batch stores nothing.
async fn run_bounds_are_enforced(backend: Backend) {
    let (_db, durably) = setup(backend).await;
    let many: Labels = (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let message = validation(
        durably
            .trigger_json("echo", json!({}), TriggerOptions::new().labels(many))
            .await,
    );
    assert_eq!(
        message,
        "labels: 65 labels given; a run may carry at most 64 (Limits::max_labels_per_run): put \
         the rest in the input"
    );
    let message = validation(
        durably
            .trigger_json(
                "echo",
                json!({}),
                TriggerOptions::new().label("k", "x".repeat(1025)),
            )
            .await,
    );
    assert!(message.contains("max_label_value_bytes"), "{message}");
    let message = validation(
        durably
            .trigger_json(
                "echo",
                json!({}),
                TriggerOptions::new().label("k".repeat(257), "v"),
            )
            .await,
    );
    assert!(message.contains("max_label_key_bytes"), "{message}");
    let message = validation(
        durably
            .trigger_json(
                "echo",
                json!({}),
                TriggerOptions::new().idempotency_key("x".repeat(257)),
            )
            .await,
    );
    assert!(message.contains("max_key_bytes"), "{message}");
    // A batch names the item and stores none of its items.
    let items = vec![
        (json!({}), TriggerOptions::new()),
        (
            json!({}),
            TriggerOptions::new().concurrency_key("x".repeat(300)),
        ),
    ];
    let message = validation(durably.batch_trigger_json("echo", items).await);
    assert!(message.ends_with("at index 1"), "{message}");
    assert_eq!(stored_runs(&durably).await, 0);
    // At the bounds, everything is stored.
    let full: Labels = (0..64)
        .map(|i| (format!("{i:0>256}"), "v".repeat(1024)))
        .collect();
    let options = TriggerOptions::new()
        .labels(full.clone())
        .idempotency_key("i".repeat(256))
        .concurrency_key("c".repeat(256));
    let run = durably
        .trigger_json("echo", json!({}), options)
        .await
        .expect("a run at the bounds");
    assert_eq!(run.run.labels, full);
    // Other limits are honoured.
    let db = TestDb::new(backend);
    let strict = db
        .durably(|b| b.limits(Limits::new().max_labels_per_run(1).max_key_bytes(4)))
        .await;
    strict.register(echo()).expect("register");
    let two = TriggerOptions::new().label("a", "1").label("b", "2");
    assert!(validation(strict.trigger_json("echo", json!({}), two).await).contains("at most 1"));
    let key = TriggerOptions::new().idempotency_key("12345");
    assert!(validation(strict.trigger_json("echo", json!({}), key).await).contains("4 bytes"));
}

backend_tests!(
    a_nul_in_a_run_id_is_refused_alike,
    a_nul_in_a_trigger_is_refused_and_stores_nothing,
    a_nul_inside_json_input_round_trips,
    hostile_listings_are_refused,
    the_cap_of_label_filters_answers_fast,
    run_bounds_are_enforced,
);

/// PostgreSQL: a listing blocked in the database (here by a lock another session holds) is
/// cancelled there when its future is dropped, and `get_runs_within` gives up with
/// `Error::Timeout` after its time, its statement gone from `pg_stat_activity` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn postgres_reads_abandoned_or_timed_out_are_cancelled() {
    let db = TestDb::new(Backend::Postgres);
    let durably = db.durably(|b| b).await;
    let schema = db.schema.clone().expect("schema");
    let lock = common::RunsTableLock::take(&schema).await;
    let blocked = || lock.blocked();
    let filter = RunFilter::new().label("tenant", "acme");

    // 1. A caller that goes away: its statement is cancelled in the database.
    let reader = durably.clone();
    let listing = tokio::spawn(async move { reader.get_runs(&filter).await });
    eventually(
        "the listing to wait for the lock",
        common::LIMIT,
        || async { (blocked().await == 1).then_some(()) },
    )
    .await;
    listing.abort();
    eventually(
        "the abandoned listing's statement to end",
        common::LIMIT,
        || async { (blocked().await == 0).then_some(()) },
    )
    .await;

    // 2. A bounded listing: `Error::Timeout` after its time, and nothing left running.
    let started = Instant::now();
    let timed_out = durably
        .store()
        .get_runs_within(&RunFilter::new(), Duration::from_millis(300))
        .await;
    match timed_out {
        Err(Error::Timeout(message)) => {
            assert!(message.contains("cancelled after 300 ms"), "{message}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually("no statement left waiting", common::LIMIT, || async {
        (blocked().await == 0).then_some(())
    })
    .await;
    lock.release().await;
    // The pool still serves reads.
    assert!(durably.get_runs(&RunFilter::new()).await.is_ok());
}
