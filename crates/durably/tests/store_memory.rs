//! Both exported suites (`durably::testing::contract` and `durably::testing::behaviour`) on
//! `durably::testing::MemoryStore`: a new backend is "implement `Store`, call the suites".

use durably::store::ClaimRequest;
use std::sync::Arc;
use std::time::Duration;

use durably::store::{NewRun, SCHEMA_VERSION};
use durably::testing::MemoryStore;
use durably::{Disposition, Labels, RunStatus, Store, Timestamp};
use serde_json::json;

/// A fresh, migrated in-memory store with default options.
async fn fresh() -> ((), Arc<dyn Store>) {
    let store = MemoryStore::new();
    store.migrate().await.expect("migrate");
    ((), Arc::new(store))
}

durably::store_contract_tests!(fresh);
durably::store_behaviour_tests!(fresh);

// ---- What only this backend promises ----

fn new_run(job: &str) -> NewRun {
    NewRun {
        job_name: job.into(),
        input: json!({}),
        idempotency_key: None,
        concurrency_key: None,
        labels: Labels::new(),
        coalesce: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_memory_store_names_itself_and_migrates() {
    let store = MemoryStore::new();
    assert_eq!(store.backend(), "memory");
    assert_eq!(store.schema_version().await.expect("version"), 0);
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate again");
    assert_eq!(
        store.schema_version().await.expect("version"),
        SCHEMA_VERSION
    );
    assert!(store.notifications().is_none(), "workers poll");
    assert!(store.maintenance_tasks().is_empty());
    assert!(store.admin().is_some());
    assert!(format!("{store:?}").contains("MemoryStore"));
}

#[tokio::test]
async fn clones_and_policy_views_share_one_state() {
    let store = MemoryStore::new();
    let clone = store.clone();
    let view = store.with_step_policy(true).expect("a view");
    assert!(view.preserves_steps());
    assert!(!store.preserves_steps());
    let now = Timestamp::from_millis(1_000);
    let run = store.enqueue(new_run("job"), now).await.expect("enqueue");
    assert_eq!(run.disposition, Disposition::Created);
    assert_eq!(run.run.created_at, now, "the caller's time, not the clock");
    assert!(clone.get_run(&run.run.id).await.expect("get").is_some());
    let claimed = view
        .claim(&ClaimRequest::new("w", Duration::from_secs(1), 1), now)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let seen = clone.get_run(&run.run.id).await.expect("get").expect("run");
    assert_eq!(seen.status, RunStatus::Leased);
    assert_eq!(seen.lease_expires_at, Some(now + Duration::from_secs(1)));
}
