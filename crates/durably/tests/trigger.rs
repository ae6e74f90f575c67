//! Triggering (upstream §2.2, §2.3, §5.5; job.shared.ts, coalesce.shared.ts): typed handles,
//! input validation, dispositions and their precedence, conflicts, labels, events, registration.
mod common;

use common::Ends;
#[allow(unused_imports)]
use durably::store::ClaimRequest;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, TestDb, backend_tests, eventually};
use durably::{
    Coalesce, Disposition, Durably, Error, Event, EventKind, Job, Labels, RunFilter, RunStatus,
    StepContext, Timestamp, TriggerOptions, store::Fence,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Order {
    id: u64,
    #[serde(default)]
    priority: u32,
}

fn order(id: u64) -> Order {
    Order { id, priority: 0 }
}

fn order_job() -> Job<Order, u64> {
    Job::new("order", |_step: StepContext, input: Order| async move {
        Ok(input.id)
    })
    .validate(|input: &Order| {
        if input.id == 0 {
            Err("id must be positive".into())
        } else {
            Ok(())
        }
    })
}

fn other_job() -> Job<Order, u64> {
    Job::new("other", |_step: StepContext, input: Order| async move {
        Ok(input.id)
    })
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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

fn conflict(result: durably::Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Conflict(message)) => message,
        other => panic!("expected Error::Conflict, got {other:?}"),
    }
}

fn pending_conflict_message(key: &str, job: &str) -> String {
    format!(
        "A pending run already exists for concurrency key \"{key}\" in job \"{job}\". Use coalesce: 'skip', 'queue', or 'active' to return the existing run instead."
    )
}

/// Claims the oldest claimable run through the store (as a worker would).
async fn lease_next(durably: &Durably) -> durably::Run {
    let mut claimed = durably
        .store()
        .claim(
            &ClaimRequest::new("test-worker", Duration::from_secs(60), 1),
            Timestamp::now(),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "one run claimed");
    claimed.pop().expect("claimed")
}

/// Records every event of the instance, in emission order.
fn record_events(durably: &Durably) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let _ = durably.on_any(move |event| sink.lock().expect("lock").push(event.clone()));
    seen
}

async fn trigger_creates_a_pending_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    assert_eq!(handle.name(), "order");
    let result = handle.trigger(order(7)).await.expect("trigger");
    assert_eq!(result.disposition, Disposition::Created);
    let run = &result.run;
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(run.job_name, "order");
    assert_eq!(run.input, order(7));
    assert_eq!(run.lease_generation, 0);
    assert_eq!(run.current_step_index, 0);
    assert_eq!(run.completed_step_count, 0);
    assert_eq!(run.output, None);
    assert_eq!(run.lease_owner, None);
    assert_eq!(run.lease_expires_at, None);
    assert_eq!(run.started_at, None);
    assert!(run.labels.is_empty());
    assert_eq!(run.id.len(), 26, "ULID id");

    let stored = handle
        .get_run(&run.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(&stored, run, "the returned run is what was stored");
    // Upstream wire shape: the run's fields flattened plus `disposition`.
    let wire = serde_json::to_value(&result).expect("json");
    assert_eq!(wire["disposition"], "created");
    assert_eq!(wire["status"], "pending");
    assert_eq!(wire["jobName"], "order");
    assert_eq!(wire["input"], json!({"id": 7, "priority": 0}));
    assert_eq!(wire["labels"], json!({}));
    assert_eq!(wire["leaseGeneration"], 0);

    // Two triggers give distinct ids; two jobs registered side by side both trigger.
    let second = handle.trigger(order(8)).await.expect("trigger");
    assert_ne!(second.run.id, run.id);
    let other = durably.register(other_job()).expect("register other");
    let third = other.trigger(order(9)).await.expect("trigger other");
    assert_eq!(third.disposition, Disposition::Created);
    assert_eq!(all_runs(&durably).await.len(), 3);
}

async fn input_is_normalized_by_serde(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    // `priority` is filled in by `#[serde(default)]`; an unknown field is dropped.
    let result = durably
        .trigger_json(
            "order",
            json!({"id": 3, "unknown": true}),
            TriggerOptions::new(),
        )
        .await
        .expect("trigger_json");
    assert_eq!(result.run.input, json!({"id": 3, "priority": 0}));
    let stored = durably
        .get_run(&result.run.id)
        .await
        .expect("read")
        .expect("run");
    assert_eq!(stored.input, json!({"id": 3, "priority": 0}));
    let typed = handle
        .get_run(&result.run.id)
        .await
        .expect("read")
        .expect("run");
    assert_eq!(typed.input, order(3));
}

async fn invalid_input_is_rejected_and_nothing_stored(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");

    let missing = validation(
        durably
            .trigger_json("order", json!({"priority": 1}), TriggerOptions::new())
            .await,
    );
    assert!(missing.starts_with("Invalid input: "), "{missing}");
    assert!(missing.contains("id"), "names the missing field: {missing}");

    let wrong_type = validation(
        durably
            .trigger_json("order", json!({"id": "seven"}), TriggerOptions::new())
            .await,
    );
    assert!(wrong_type.starts_with("Invalid input: "), "{wrong_type}");

    let not_an_object = validation(
        durably
            .trigger_json("order", json!("not an object"), TriggerOptions::new())
            .await,
    );
    assert!(
        not_an_object.starts_with("Invalid input: "),
        "{not_an_object}"
    );

    let rejected = validation(handle.trigger(order(0)).await);
    assert_eq!(rejected, "Invalid input: id must be positive");

    // Even with keys and labels, a rejected input stores nothing.
    let rejected = validation(
        handle
            .trigger_with(
                order(0),
                TriggerOptions::new()
                    .idempotency_key("idem")
                    .concurrency_key("ck")
                    .label("env", "prod"),
            )
            .await,
    );
    assert!(rejected.starts_with("Invalid input: "), "{rejected}");
    assert_nothing_stored(&durably).await;
}

async fn idempotency_key_returns_the_existing_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let first = handle
        .trigger_with(
            order(1),
            TriggerOptions::new()
                .idempotency_key("key-1")
                .label("env", "prod"),
        )
        .await
        .expect("first");
    assert_eq!(first.disposition, Disposition::Created);
    assert_eq!(first.run.idempotency_key.as_deref(), Some("key-1"));

    let second = handle
        .trigger_with(
            order(2),
            TriggerOptions::new()
                .idempotency_key("key-1")
                .label("env", "staging"),
        )
        .await
        .expect("second");
    assert_eq!(second.disposition, Disposition::Idempotent);
    assert_eq!(second.run.id, first.run.id);
    assert_eq!(second.run.input, order(1), "original input");
    assert_eq!(
        second.run.labels,
        labels(&[("env", "prod")]),
        "original labels"
    );
    assert_eq!(all_runs(&durably).await.len(), 1);

    // Still idempotent once the run is terminal: the run is returned as it is now.
    let leased = lease_next(&durably).await;
    assert_eq!(leased.id, first.run.id);
    assert!(
        durably
            .store()
            .complete_run(&Fence::of(&leased), Some(json!(1)), Timestamp::now())
            .await
            .expect("complete")
    );
    let third = handle
        .trigger_with(order(3), TriggerOptions::new().idempotency_key("key-1"))
        .await
        .expect("third");
    assert_eq!(third.disposition, Disposition::Idempotent);
    assert_eq!(third.run.id, first.run.id);
    assert_eq!(third.run.status, RunStatus::Completed);
    assert_eq!(third.run.output, Some(1));
    assert_eq!(third.run.input, order(1));
    assert_eq!(all_runs(&durably).await.len(), 1);
}

async fn idempotency_wins_over_concurrency_conflict_and_coalesce(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let options = TriggerOptions::new()
        .idempotency_key("idem")
        .concurrency_key("ck");
    let first = handle
        .trigger_with(order(1), options.clone())
        .await
        .expect("first");
    assert_eq!(first.disposition, Disposition::Created);

    // Same idempotency key + same concurrency key, no coalesce: idempotent, not a conflict.
    let plain = handle
        .trigger_with(order(2), options.clone())
        .await
        .expect("no conflict");
    assert_eq!(plain.disposition, Disposition::Idempotent);
    assert_eq!(plain.run.id, first.run.id);

    // With coalesce: idempotent, not coalesced.
    let coalesced = handle
        .trigger_with(order(3), options.clone().coalesce(Coalesce::Skip))
        .await
        .expect("no coalesce");
    assert_eq!(coalesced.disposition, Disposition::Idempotent);
    assert_eq!(coalesced.run.id, first.run.id);
    assert_eq!(coalesced.run.input, order(1));

    // A different idempotency key with the same concurrency key coalesces.
    let other = handle
        .trigger_with(
            order(4),
            TriggerOptions::new()
                .idempotency_key("idem-2")
                .concurrency_key("ck")
                .coalesce(Coalesce::Skip),
        )
        .await
        .expect("coalesce");
    assert_eq!(other.disposition, Disposition::Coalesced);
    assert_eq!(other.run.id, first.run.id);
    assert_eq!(all_runs(&durably).await.len(), 1);
}

async fn same_idempotency_key_on_another_job_creates(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let a = durably.register(order_job()).expect("register");
    let b = durably.register(other_job()).expect("register");
    let options = TriggerOptions::new().idempotency_key("shared");
    let first = a.trigger_with(order(1), options.clone()).await.expect("a");
    let second = b.trigger_with(order(1), options.clone()).await.expect("b");
    assert_eq!(first.disposition, Disposition::Created);
    assert_eq!(second.disposition, Disposition::Created);
    assert_ne!(first.run.id, second.run.id);
    assert_eq!(all_runs(&durably).await.len(), 2);
}

async fn second_pending_run_with_the_same_concurrency_key_conflicts(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let first = handle
        .trigger_with(order(1), TriggerOptions::new().concurrency_key("user-1"))
        .await
        .expect("first");
    assert_eq!(first.disposition, Disposition::Created);
    assert_eq!(first.run.concurrency_key.as_deref(), Some("user-1"));
    let message = conflict(
        handle
            .trigger_with(order(2), TriggerOptions::new().concurrency_key("user-1"))
            .await,
    );
    assert_eq!(message, pending_conflict_message("user-1", "order"));
    let runs = all_runs(&durably).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, first.run.id);

    // The untyped entry point gives the same conflict.
    let message = conflict(
        durably
            .trigger_json(
                "order",
                json!({"id": 3}),
                TriggerOptions::new().concurrency_key("user-1"),
            )
            .await,
    );
    assert_eq!(message, pending_conflict_message("user-1", "order"));
}

async fn coalesce_skip_returns_the_existing_pending_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let first = handle
        .trigger_with(
            order(1),
            TriggerOptions::new()
                .concurrency_key("k")
                .label("env", "prod"),
        )
        .await
        .expect("first");
    let second = handle
        .trigger_with(
            order(2),
            TriggerOptions::new()
                .concurrency_key("k")
                .label("env", "staging")
                .coalesce(Coalesce::Skip),
        )
        .await
        .expect("coalesced");
    assert_eq!(second.disposition, Disposition::Coalesced);
    assert_eq!(second.run.id, first.run.id);
    assert_eq!(second.run.input, order(1), "the existing run's input");
    assert_eq!(
        second.run.labels,
        labels(&[("env", "prod")]),
        "existing labels"
    );
    assert_eq!(second.run.status, RunStatus::Pending);
    let runs = all_runs(&durably).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].input, json!({"id": 1, "priority": 0}));
    assert_eq!(runs[0].labels, labels(&[("env", "prod")]));
}

async fn a_leased_run_does_not_count_as_pending(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let keyed = || TriggerOptions::new().concurrency_key("k");
    let first = handle.trigger_with(order(1), keyed()).await.expect("first");
    let leased = lease_next(&durably).await;
    assert_eq!(leased.id, first.run.id);
    assert_eq!(leased.status, RunStatus::Leased);

    let second = handle
        .trigger_with(order(2), keyed())
        .await
        .expect("second");
    assert_eq!(second.disposition, Disposition::Created);
    assert_eq!(second.run.status, RunStatus::Pending);
    assert_ne!(second.run.id, first.run.id);

    let message = conflict(handle.trigger_with(order(3), keyed()).await);
    assert_eq!(message, pending_conflict_message("k", "order"));
    // Coalescing onto the pending one (not the leased one).
    let third = handle
        .trigger_with(order(3), keyed().coalesce(Coalesce::Skip))
        .await
        .expect("coalesce");
    assert_eq!(third.disposition, Disposition::Coalesced);
    assert_eq!(third.run.id, second.run.id);
    assert_eq!(all_runs(&durably).await.len(), 2);
}

async fn different_keys_and_unkeyed_runs_never_conflict(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let other = durably.register(other_job()).expect("register");
    let a = handle
        .trigger_with(order(1), TriggerOptions::new().concurrency_key("key-1"))
        .await
        .expect("key-1");
    let b = handle
        .trigger_with(order(2), TriggerOptions::new().concurrency_key("key-2"))
        .await
        .expect("key-2");
    assert_eq!(a.disposition, Disposition::Created);
    assert_eq!(b.disposition, Disposition::Created);
    assert_ne!(a.run.id, b.run.id);
    // The pending-per-key rule is per job: another job may use the same key.
    let c = other
        .trigger_with(order(3), TriggerOptions::new().concurrency_key("key-1"))
        .await
        .expect("other job, same key");
    assert_eq!(c.disposition, Disposition::Created);
    for i in 0..3 {
        let unkeyed = handle.trigger(order(10 + i)).await.expect("unkeyed");
        assert_eq!(unkeyed.disposition, Disposition::Created);
    }
    assert_eq!(all_runs(&durably).await.len(), 6);
}

async fn coalesce_requires_a_concurrency_key(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let message = validation(
        handle
            .trigger_with(order(1), TriggerOptions::new().coalesce(Coalesce::Skip))
            .await,
    );
    assert_eq!(message, "coalesce requires concurrencyKey");
    let message = validation(
        durably
            .trigger_json(
                "order",
                json!({"id": 1}),
                TriggerOptions::new()
                    .idempotency_key("idem")
                    .coalesce(Coalesce::Skip),
            )
            .await,
    );
    assert_eq!(message, "coalesce requires concurrencyKey");
    assert_nothing_stored(&durably).await;
}

async fn invalid_coalesce_value_is_rejected(_backend: Backend) {
    assert_eq!("skip".parse::<Coalesce>().expect("skip"), Coalesce::Skip);
    match "invalid".parse::<Coalesce>() {
        Err(Error::Validation(message)) => assert_eq!(
            message,
            "Invalid coalesce value: 'invalid'. Valid values: 'skip', 'queue', 'active'"
        ),
        other => panic!("expected Error::Validation, got {other:?}"),
    }
    assert!(serde_json::from_value::<Coalesce>(json!("invalid")).is_err());
    assert_eq!(
        serde_json::from_value::<Coalesce>(json!("skip")).expect("skip"),
        Coalesce::Skip
    );
}

async fn empty_keys_are_rejected(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let message = validation(
        handle
            .trigger_with(order(1), TriggerOptions::new().idempotency_key(""))
            .await,
    );
    assert!(message.contains("idempotencyKey"), "{message}");
    let message = validation(
        handle
            .trigger_with(order(1), TriggerOptions::new().concurrency_key(""))
            .await,
    );
    assert!(message.contains("concurrencyKey"), "{message}");
    let message = validation(
        handle
            .trigger_with(
                order(1),
                TriggerOptions::new()
                    .concurrency_key("")
                    .coalesce(Coalesce::Skip),
            )
            .await,
    );
    assert!(message.contains("concurrencyKey"), "{message}");
    assert_nothing_stored(&durably).await;
}

async fn labels_are_stored_and_returned(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let wanted = labels(&[
        ("organizationId", "org_123"),
        ("env", "prod"),
        ("app.kubernetes.io/name", "billing"),
    ]);
    let result = handle
        .trigger_with(order(1), TriggerOptions::new().labels(wanted.clone()))
        .await
        .expect("trigger");
    assert_eq!(result.run.labels, wanted);
    let stored = handle
        .get_run(&result.run.id)
        .await
        .expect("read")
        .expect("run");
    assert_eq!(stored.labels, wanted);
    let unlabelled = handle.trigger(order(2)).await.expect("trigger");
    assert!(unlabelled.run.labels.is_empty(), "labels default to {{}}");

    let found = durably
        .get_runs(&RunFilter::new().label("app.kubernetes.io/name", "billing"))
        .await
        .expect("filter");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, result.run.id);
}

async fn invalid_label_keys_are_rejected(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    for key in ["invalid key", "key\"injection", "", "semi;colon", "ünicode"] {
        let message = validation(
            handle
                .trigger_with(order(1), TriggerOptions::new().label(key, "v"))
                .await,
        );
        assert!(message.contains("Invalid label key"), "{key:?}: {message}");
        assert!(
            message.contains(&format!("\"{key}\"")),
            "names the key: {message}"
        );
    }
    assert_nothing_stored(&durably).await;
    // Filters with an invalid key are rejected the same way.
    let message = validation(
        durably
            .get_runs(&RunFilter::new().label("invalid key", "v"))
            .await,
    );
    assert!(message.contains("Invalid label key"), "{message}");
}

async fn labels_validator_rejects_bad_labels(backend: Backend) {
    let db = TestDb::new(backend);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let durably = db
        .durably(move |b| {
            b.labels_validator(move |labels: &Labels| {
                counter.fetch_add(1, Ordering::SeqCst);
                match labels.get("env").map(String::as_str) {
                    Some("prod") | Some("staging") => Ok(()),
                    Some(other) => Err(format!("env must be prod or staging, got {other}")),
                    None => Err("env is required".into()),
                }
            })
        })
        .await;
    let handle = durably.register(order_job()).expect("register");

    let message = validation(
        handle
            .trigger_with(
                order(1),
                TriggerOptions::new().label("organizationId", "org_1"),
            )
            .await,
    );
    assert_eq!(message, "labels: Invalid input: env is required");
    let message = validation(
        handle
            .trigger_with(order(1), TriggerOptions::new().label("env", "dev"))
            .await,
    );
    assert!(message.starts_with("labels: Invalid input: "), "{message}");
    assert!(message.contains("dev"), "{message}");
    assert_nothing_stored(&durably).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Omitted labels are not validated (upstream quirk 7).
    let unlabelled = handle.trigger(order(2)).await.expect("no labels");
    assert_eq!(unlabelled.disposition, Disposition::Created);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "validator not consulted");

    let valid = handle
        .trigger_with(
            order(3),
            TriggerOptions::new()
                .label("env", "prod")
                .label("organizationId", "org_1"),
        )
        .await
        .expect("valid labels");
    assert_eq!(
        valid.run.labels,
        labels(&[("env", "prod"), ("organizationId", "org_1")])
    );
    assert_eq!(all_runs(&durably).await.len(), 2);
}

async fn events_follow_the_disposition(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let handle = durably.register(order_job()).expect("register");
    let seen = record_events(&durably);

    let created = durably
        .trigger_json(
            "order",
            json!({"id": 1}),
            TriggerOptions::new()
                .concurrency_key("k")
                .label("env", "prod"),
        )
        .await
        .expect("created");
    let coalesced = handle
        .trigger_with(
            order(2),
            TriggerOptions::new()
                .concurrency_key("k")
                .coalesce(Coalesce::Skip),
        )
        .await
        .expect("coalesced");
    assert_eq!(coalesced.disposition, Disposition::Coalesced);
    let coalesced_with_labels = handle
        .trigger_with(
            order(3),
            TriggerOptions::new()
                .concurrency_key("k")
                .label("env", "staging")
                .coalesce(Coalesce::Skip),
        )
        .await
        .expect("coalesced");
    assert_eq!(coalesced_with_labels.disposition, Disposition::Coalesced);
    let idem = handle
        .trigger_with(order(4), TriggerOptions::new().idempotency_key("i"))
        .await
        .expect("created");
    let again = handle
        .trigger_with(order(5), TriggerOptions::new().idempotency_key("i"))
        .await
        .expect("idempotent");
    assert_eq!(again.disposition, Disposition::Idempotent);
    // A marker: once its event arrived, every earlier event has arrived too.
    let marker = handle.trigger(order(99)).await.expect("marker");
    let marker_id = marker.run.id.clone();
    eventually("marker event", Duration::from_secs(5), || {
        let seen = seen.clone();
        let marker_id = marker_id.clone();
        async move {
            seen.lock()
                .expect("lock")
                .iter()
                .any(|e| e.kind.run_id() == Some(marker_id.as_str()))
                .then_some(())
        }
    })
    .await;

    let events = seen.lock().expect("lock").clone();
    let triggers: Vec<&EventKind> = events
        .iter()
        .map(|e| &e.kind)
        .filter(|k| matches!(k, EventKind::RunTrigger { .. }))
        .collect();
    assert_eq!(
        triggers.len(),
        3,
        "created, idempotency-created, marker: {triggers:?}"
    );
    assert_eq!(
        triggers[0],
        &EventKind::RunTrigger {
            run_id: created.run.id.clone(),
            job_name: "order".into(),
            input: json!({"id": 1, "priority": 0}),
            labels: labels(&[("env", "prod")]),
        }
    );
    assert_eq!(triggers[1].run_id(), Some(idem.run.id.as_str()));
    assert_eq!(triggers[2].run_id(), Some(marker_id.as_str()));

    let coalesces: Vec<&EventKind> = events
        .iter()
        .map(|e| &e.kind)
        .filter(|k| matches!(k, EventKind::RunCoalesced { .. }))
        .collect();
    assert_eq!(
        coalesces,
        vec![
            &EventKind::RunCoalesced {
                run_id: created.run.id.clone(),
                job_name: "order".into(),
                status: RunStatus::Pending,
                labels: labels(&[("env", "prod")]),
                skipped_input: json!({"id": 2, "priority": 0}),
                skipped_labels: Labels::new(),
            },
            &EventKind::RunCoalesced {
                run_id: created.run.id.clone(),
                job_name: "order".into(),
                status: RunStatus::Pending,
                labels: labels(&[("env", "prod")]),
                skipped_input: json!({"id": 3, "priority": 0}),
                skipped_labels: labels(&[("env", "staging")]),
            },
        ]
    );
    // Wire form of the coalesced event.
    let wire = serde_json::to_value(
        events
            .iter()
            .find(|e| matches!(e.kind, EventKind::RunCoalesced { .. }))
            .expect("coalesced event"),
    )
    .expect("json");
    assert_eq!(wire["type"], "run:coalesced");
    assert_eq!(wire["skippedInput"], json!({"id": 2, "priority": 0}));
    assert_eq!(wire["skippedLabels"], json!({}));
    assert_eq!(events.len(), 5, "no other events: {events:?}");
    // Sequences increase in emission order.
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
}

async fn trigger_json_on_an_unknown_job_is_not_found(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    match durably
        .trigger_json("nope", json!({}), TriggerOptions::new())
        .await
    {
        Err(Error::NotFound(message)) => assert_eq!(message, "Job not found: nope"),
        other => panic!("expected Error::NotFound, got {other:?}"),
    }
    match durably
        .batch_trigger_json("nope", vec![(json!({}), TriggerOptions::new())])
        .await
    {
        Err(Error::NotFound(message)) => assert_eq!(message, "Job not found: nope"),
        other => panic!("expected Error::NotFound, got {other:?}"),
    }
    assert_nothing_stored(&durably).await;
}

async fn registration_rejects_a_different_definition_with_the_same_name(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = order_job();
    let handle = durably.register(job.clone()).expect("register");
    // The same definition (a clone) again: fine, same job.
    let again = durably.register(job.clone()).expect("same definition");
    assert_eq!(again.name(), handle.name());
    // Another definition with the same name: rejected, the first stays registered.
    match durably.register(order_job()) {
        Err(Error::Config(message)) => {
            assert!(
                message.contains("already registered with a different definition"),
                "{message}"
            );
            assert!(message.contains("\"order\""), "{message}");
        }
        other => panic!("expected Error::Config, got {other:?}"),
    }
    let different_types = Job::new(
        "order",
        |_s: StepContext, input: Value| async move { Ok(input) },
    );
    assert!(matches!(
        durably.register(different_types),
        Err(Error::Config(_))
    ));
    assert_eq!(durably.job_names(), vec!["order".to_string()]);
    let triggered = again.trigger(order(1)).await.expect("still triggerable");
    assert_eq!(triggered.disposition, Disposition::Created);

    // Through the builder the same rule applies at build time.
    match db.builder().job(order_job()).job(order_job()).build() {
        Err(Error::Config(message)) => assert!(
            message.contains("already registered with a different definition"),
            "{message}"
        ),
        other => panic!("expected Error::Config, got {other:?}"),
    }
    let job = order_job();
    db.builder()
        .job(job.clone())
        .job(job)
        .build()
        .expect("same definition twice");
    // An empty job name is rejected.
    let unnamed = Job::new("", |_s: StepContext, input: Value| async move { Ok(input) });
    assert!(matches!(durably.register(unnamed), Err(Error::Config(_))));
}

async fn typed_handles_are_looked_up_by_name_and_types(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.job(order_job())).await;
    let handle = durably.job::<Order, u64>("order").expect("typed handle");
    let result = handle.trigger(order(5)).await.expect("trigger");
    assert_eq!(result.run.input, order(5));
    assert!(durably.get_job("order").is_some());
    assert!(durably.get_job("missing").is_none());

    match durably.job::<Value, Value>("order") {
        Err(Error::Config(message)) => assert!(message.contains("order"), "{message}"),
        other => panic!("expected Error::Config, got {other:?}"),
    }
    assert!(durably.job::<Order, String>("order").is_err());
    match durably.job::<Order, u64>("missing") {
        Err(Error::NotFound(message)) => assert_eq!(message, "Job not found: missing"),
        other => panic!("expected Error::NotFound, got {other:?}"),
    }
}

backend_tests!(
    trigger_creates_a_pending_run,
    input_is_normalized_by_serde,
    invalid_input_is_rejected_and_nothing_stored,
    idempotency_key_returns_the_existing_run,
    idempotency_wins_over_concurrency_conflict_and_coalesce,
    same_idempotency_key_on_another_job_creates,
    second_pending_run_with_the_same_concurrency_key_conflicts,
    coalesce_skip_returns_the_existing_pending_run,
    a_leased_run_does_not_count_as_pending,
    different_keys_and_unkeyed_runs_never_conflict,
    coalesce_requires_a_concurrency_key,
    invalid_coalesce_value_is_rejected,
    empty_keys_are_rejected,
    labels_are_stored_and_returned,
    invalid_label_keys_are_rejected,
    labels_validator_rejects_bad_labels,
    events_follow_the_disposition,
    trigger_json_on_an_unknown_job_is_not_found,
    registration_rejects_a_different_definition_with_the_same_name,
    typed_handles_are_looked_up_by_name_and_types,
);
