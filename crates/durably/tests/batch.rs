//! `batch_trigger` (upstream §2.4, job.shared.ts, coalesce.shared.ts): validate every item
//! first, then enqueue all items in one transaction, all or nothing.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestDb, backend_tests, eventually};
use durably::{
    Coalesce, Disposition, Durably, Error, Event, EventKind, Job, Labels, RunFilter, RunStatus,
    StepContext, TriggerOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Count {
    value: i64,
}

fn count(value: i64) -> Count {
    Count { value }
}

fn none() -> TriggerOptions {
    TriggerOptions::new()
}

fn count_job() -> Job<Count, i64> {
    Job::new("batch-job", |_step: StepContext, input: Count| async move {
        Ok(input.value)
    })
    .validate(|input: &Count| {
        if input.value < 1 {
            Err(format!("value must be >= 1, got {}", input.value))
        } else {
            Ok(())
        }
    })
}

async fn all_runs(durably: &Durably) -> Vec<durably::Run> {
    durably.get_runs(&RunFilter::new()).await.expect("get_runs")
}

async fn assert_nothing_stored(durably: &Durably) {
    let runs = all_runs(durably).await;
    assert!(runs.is_empty(), "nothing stored, found {runs:?}");
}

fn validation(result: durably::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Validation(message)) => message,
        other => panic!("expected Error::Validation, got {other:?}"),
    }
}

fn record_events(durably: &Durably) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let _ = durably.on_any(move |event| sink.lock().expect("lock").push(event.clone()));
    seen
}

async fn wait_for_event_of(seen: &Arc<Mutex<Vec<Event>>>, run_id: &str) {
    eventually("event of marker run", Duration::from_secs(5), || {
        let seen = seen.clone();
        let run_id = run_id.to_owned();
        async move {
            seen.lock()
                .expect("lock")
                .iter()
                .any(|e| e.kind.run_id() == Some(run_id.as_str()))
                .then_some(())
        }
    })
    .await;
}

async fn batch_trigger_creates_every_run_in_order(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(count_job()).expect("register");
    let seen = record_events(&durably);
    let results = handle
        .batch_trigger([(count(1), none()), (count(2), none()), (count(3), none())])
        .await
        .expect("batch");
    assert_eq!(results.len(), 3);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.disposition, Disposition::Created);
        assert_eq!(result.run.status, RunStatus::Pending);
        assert_eq!(result.run.input, count(i as i64 + 1), "input order kept");
    }
    let ids: Vec<&str> = results.iter().map(|r| r.run.id.as_str()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let stored = handle.get_runs(RunFilter::new()).await.expect("get_runs");
    assert_eq!(stored.len(), 3);

    // One run:trigger per created item, in input order.
    let marker = handle.trigger(count(100)).await.expect("marker");
    wait_for_event_of(&seen, &marker.run.id).await;
    let triggered: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::RunTrigger { run_id, .. } => Some(run_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        triggered,
        vec![
            ids[0].to_string(),
            ids[1].to_string(),
            ids[2].to_string(),
            marker.run.id.clone()
        ]
    );
}

async fn one_invalid_input_rejects_the_whole_batch(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(count_job()).expect("register");
    let message = validation(
        handle
            .batch_trigger([(count(5), none()), (count(0), none()), (count(3), none())])
            .await,
    );
    assert!(
        message.starts_with("at index 1: Invalid input:"),
        "{message}"
    );
    assert!(message.contains("value must be >= 1, got 0"), "{message}");
    assert_nothing_stored(&durably).await;

    // The first invalid item is reported.
    let message = validation(
        handle
            .batch_trigger([(count(5), none()), (count(3), none()), (count(-1), none())])
            .await,
    );
    assert!(
        message.starts_with("at index 2: Invalid input:"),
        "{message}"
    );

    // Untyped: a missing field.
    let message = validation(
        durably
            .batch_trigger_json(
                "batch-job",
                vec![(json!({"value": 1}), none()), (json!({"nope": 1}), none())],
            )
            .await,
    );
    assert!(
        message.starts_with("at index 1: Invalid input:"),
        "{message}"
    );
    assert!(message.contains("value"), "{message}");
    assert_nothing_stored(&durably).await;
}

async fn option_errors_name_the_item_index(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(count_job()).expect("register");
    let message = validation(
        handle
            .batch_trigger([
                (count(1), none()),
                (count(2), none().concurrency_key("k")),
                (count(3), none().coalesce(Coalesce::Skip)),
            ])
            .await,
    );
    assert_eq!(message, "coalesce requires concurrencyKey at index 2");

    let message = validation(
        handle
            .batch_trigger([(count(1), none()), (count(2), none().idempotency_key(""))])
            .await,
    );
    assert!(message.contains("idempotencyKey"), "{message}");
    assert!(message.ends_with(" at index 1"), "{message}");

    let message = validation(
        handle
            .batch_trigger([(count(1), none().concurrency_key("")), (count(2), none())])
            .await,
    );
    assert!(message.contains("concurrencyKey"), "{message}");
    assert!(message.ends_with(" at index 0"), "{message}");

    // An invalid label key (checked by the store) also stores nothing.
    let message = validation(
        handle
            .batch_trigger([
                (count(1), none().label("ok", "1")),
                (count(2), none().label("bad key", "2")),
            ])
            .await,
    );
    assert!(message.contains("Invalid label key"), "{message}");
    assert_nothing_stored(&durably).await;
}

async fn labels_validator_errors_name_the_item_index(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| {
            b.labels_validator(|labels: &Labels| {
                if labels.contains_key("env") {
                    Ok(())
                } else {
                    Err("env is required".into())
                }
            })
        })
        .await;
    let handle = durably.register(count_job()).expect("register");
    let message = validation(
        handle
            .batch_trigger([
                (count(1), none().label("env", "prod")),
                (count(2), none().label("organizationId", "org_1")),
            ])
            .await,
    );
    assert_eq!(message, "labels at index 1: Invalid input: env is required");
    assert_nothing_stored(&durably).await;

    // Items without labels are not validated.
    let results = handle
        .batch_trigger([(count(1), none().label("env", "prod")), (count(2), none())])
        .await
        .expect("valid batch");
    assert_eq!(results.len(), 2);
}

async fn a_conflict_rolls_back_the_whole_batch(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(count_job()).expect("register");
    let message = match handle
        .batch_trigger([
            (count(1), none()),
            (count(2), none().concurrency_key("same")),
            (count(3), none().concurrency_key("same")),
        ])
        .await
    {
        Err(Error::Conflict(message)) => message,
        other => panic!("expected Error::Conflict, got {other:?}"),
    };
    assert_eq!(
        message,
        "A pending run already exists for concurrency key \"same\" in job \"batch-job\". Use coalesce: 'skip', 'queue', or 'active' to return the existing run instead."
    );
    assert_nothing_stored(&durably).await;

    // A conflict with a run stored before the batch rolls back the batch's earlier items.
    let existing = handle
        .trigger_with(count(9), none().concurrency_key("held"))
        .await
        .expect("existing");
    assert!(matches!(
        handle
            .batch_trigger([
                (count(1), none()),
                (count(2), none().concurrency_key("held"))
            ])
            .await,
        Err(Error::Conflict(_))
    ));
    let runs = all_runs(&durably).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, existing.run.id);
}

async fn items_coalesce_onto_earlier_items_of_the_same_batch(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(count_job()).expect("register");
    let skip = |key: &str| none().concurrency_key(key).coalesce(Coalesce::Skip);
    let results = handle
        .batch_trigger([(count(1), skip("k")), (count(2), skip("k"))])
        .await
        .expect("batch");
    let dispositions: Vec<Disposition> = results.iter().map(|r| r.disposition).collect();
    assert_eq!(dispositions, [Disposition::Created, Disposition::Coalesced]);
    assert_eq!(results[0].run.id, results[1].run.id);
    assert_eq!(results[1].run.input, count(1), "the existing run");
    assert_eq!(all_runs(&durably).await.len(), 1);
}

async fn mixed_keys_coalesce_only_onto_their_own_key(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(count_job()).expect("register");
    let seen = record_events(&durably);
    let results = handle
        .batch_trigger([
            (
                count(1),
                none().concurrency_key("key-1").coalesce(Coalesce::Skip),
            ),
            (count(2), none().concurrency_key("key-2")),
            (
                count(3),
                none()
                    .concurrency_key("key-1")
                    .coalesce(Coalesce::Skip)
                    .label("env", "staging"),
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
            Disposition::Coalesced
        ]
    );
    assert_eq!(results[2].run.id, results[0].run.id);
    assert_ne!(results[1].run.id, results[0].run.id);
    assert_eq!(all_runs(&durably).await.len(), 2);

    let marker = handle.trigger(count(100)).await.expect("marker");
    wait_for_event_of(&seen, &marker.run.id).await;
    let events: Vec<EventKind> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|e| e.kind.clone())
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(
        matches!(&events[0], EventKind::RunTrigger { run_id, .. } if *run_id == results[0].run.id)
    );
    assert!(
        matches!(&events[1], EventKind::RunTrigger { run_id, .. } if *run_id == results[1].run.id)
    );
    assert_eq!(
        events[2],
        EventKind::RunCoalesced {
            run_id: results[0].run.id.clone(),
            job_name: "batch-job".into(),
            status: RunStatus::Pending,
            labels: Labels::new(),
            skipped_input: json!({"value": 3}),
            skipped_labels: [("env".to_string(), "staging".to_string())].into(),
        }
    );
}

async fn repeated_idempotency_key_in_a_batch_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(count_job()).expect("register");
    let results = handle
        .batch_trigger([
            (count(1), none().idempotency_key("same")),
            (count(2), none().idempotency_key("same")),
        ])
        .await
        .expect("batch");
    assert_eq!(results[0].disposition, Disposition::Created);
    assert_eq!(results[1].disposition, Disposition::Idempotent);
    assert_eq!(results[1].run.id, results[0].run.id);
    assert_eq!(results[1].run.input, count(1));
    // And against runs stored before the batch.
    let again = handle
        .batch_trigger([
            (count(3), none().idempotency_key("same")),
            (count(4), none()),
        ])
        .await
        .expect("batch");
    assert_eq!(again[0].disposition, Disposition::Idempotent);
    assert_eq!(again[0].run.id, results[0].run.id);
    assert_eq!(again[1].disposition, Disposition::Created);
    assert_eq!(all_runs(&durably).await.len(), 2);
}

async fn an_empty_batch_returns_nothing(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(count_job()).expect("register");
    let results = handle.batch_trigger(Vec::new()).await.expect("empty batch");
    assert!(results.is_empty());
    let results = durably
        .batch_trigger_json("batch-job", Vec::new())
        .await
        .expect("empty json batch");
    assert!(results.is_empty());
    assert_nothing_stored(&durably).await;
}

async fn per_item_options_are_persisted(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(count_job()).expect("register");
    let results = handle
        .batch_trigger([
            (count(1), none().idempotency_key("key-a")),
            (count(2), none().concurrency_key("group-1")),
            (count(3), none().label("tenant", "acme")),
        ])
        .await
        .expect("batch");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].run.idempotency_key.as_deref(), Some("key-a"));
    assert_eq!(results[1].run.concurrency_key.as_deref(), Some("group-1"));
    assert_eq!(
        results[2].run.labels.get("tenant").map(String::as_str),
        Some("acme")
    );
    for result in &results {
        let stored = handle
            .get_run(&result.run.id)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(stored, result.run, "stored as returned");
    }
    let by_label = durably
        .get_runs(&RunFilter::new().label("tenant", "acme"))
        .await
        .expect("filter");
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, results[2].run.id);
}

async fn batch_trigger_json_normalizes_inputs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    durably.register(count_job()).expect("register");
    let results = durably
        .batch_trigger_json(
            "batch-job",
            vec![
                (json!({"value": 1, "extra": "dropped"}), none()),
                (json!({"value": 2}), none().concurrency_key("k")),
            ],
        )
        .await
        .expect("batch");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].run.input, json!({"value": 1}));
    assert_eq!(results[1].run.input, json!({"value": 2}));
    assert_eq!(results[1].run.concurrency_key.as_deref(), Some("k"));
    assert!(
        results
            .iter()
            .all(|r| r.disposition == Disposition::Created)
    );
    let stored = durably
        .get_run(&results[0].run.id)
        .await
        .expect("read")
        .expect("run");
    assert_eq!(stored.input, json!({"value": 1}));
}

backend_tests!(
    batch_trigger_creates_every_run_in_order,
    one_invalid_input_rejects_the_whole_batch,
    option_errors_name_the_item_index,
    labels_validator_errors_name_the_item_index,
    a_conflict_rolls_back_the_whole_batch,
    items_coalesce_onto_earlier_items_of_the_same_batch,
    mixed_keys_coalesce_only_onto_their_own_key,
    repeated_idempotency_key_in_a_batch_is_idempotent,
    an_empty_batch_returns_nothing,
    per_item_options_are_persisted,
    batch_trigger_json_normalizes_inputs,
);
