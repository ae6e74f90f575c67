//! The `Store` contract (upstream storage.shared.ts, db-semantics.shared.ts,
//! db-concurrency.shared.ts): what every backend must do identically. Each test takes a fresh,
//! migrated store and panics on a violation; [`crate::store_contract_tests!`] turns them into
//! one test each.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    ClaimRequest, Coalesce, Disposition, Error, Fence, Labels, LogLevel, NewLog, NewRun, NewStep,
    Progress, RunFilter, RunPatch, RunStatus, StepStatus, Store, Timestamp,
};

/// Runs `future`, failing the test if it takes longer than `limit` (hang guard).
async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

const LEASE: Duration = Duration::from_secs(30);

fn new_run(job: &str, input: Value) -> NewRun {
    NewRun {
        job_name: job.into(),
        input,
        idempotency_key: None,
        concurrency_key: None,
        labels: Labels::new(),
        coalesce: None,
    }
}

fn keyed(job: &str, key: &str) -> NewRun {
    NewRun {
        concurrency_key: Some(key.into()),
        ..new_run(job, json!({}))
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

async fn enqueue(store: &Arc<dyn Store>, run: NewRun, now: Timestamp) -> crate::Run {
    let enqueued = store.enqueue(run, now).await.expect("enqueue");
    assert_eq!(enqueued.disposition, Disposition::Created);
    enqueued.run
}

async fn claim(
    store: &Arc<dyn Store>,
    worker: &str,
    now: Timestamp,
    lease: Duration,
) -> Option<crate::Run> {
    let mut claimed = store.claim(worker, now, lease, 1).await.expect("claim");
    assert!(claimed.len() <= 1);
    claimed.pop()
}

async fn get(store: &Arc<dyn Store>, id: &str) -> crate::Run {
    store
        .get_run(id)
        .await
        .expect("get_run")
        .unwrap_or_else(|| panic!("run {id} exists"))
}

fn step(
    name: &str,
    index: i64,
    status: StepStatus,
    output: Option<Value>,
    at: Timestamp,
) -> NewStep {
    NewStep {
        name: name.into(),
        index,
        status,
        output,
        error: (status == StepStatus::Failed).then(|| format!("{name} failed")),
        started_at: at,
    }
}

fn log(run_id: &str, message: &str, data: Option<Value>) -> NewLog {
    NewLog {
        run_id: run_id.into(),
        step_name: None,
        level: LogLevel::Info,
        message: message.into(),
        data,
    }
}

fn stale(fence: &Fence) -> Fence {
    Fence {
        run_id: fence.run_id.clone(),
        generation: fence.generation + 1,
    }
}

async fn count_runs(store: &Arc<dyn Store>) -> usize {
    store
        .get_runs(&RunFilter::new())
        .await
        .expect("get_runs")
        .len()
}

/// Contract: enqueue and get run round trip.
pub async fn enqueue_and_get_run_round_trip(store: Arc<dyn Store>) {
    let now = Timestamp::now();
    let input = json!({
        "text": "héllo ✓ 日本 😀 \"quoted\"\n\ttab",
        "nested": {"items": [1, 2.5, -3, null, true], "deep": {"empty": [], "obj": {}}},
        "big": 9_007_199_254_740_991i64,
    });
    let mut labels = Labels::new();
    labels.insert("organizationId".into(), "org_123".into());
    labels.insert("app.kubernetes.io/name".into(), "billing".into());
    let request = NewRun {
        job_name: "test-job".into(),
        input: input.clone(),
        idempotency_key: Some("idem-1".into()),
        concurrency_key: Some("ck-1".into()),
        labels: labels.clone(),
        coalesce: None,
    };
    let created = store.enqueue(request, now).await.expect("enqueue");
    assert_eq!(created.disposition, Disposition::Created);
    let run = created.run;
    assert_eq!(run.job_name, "test-job");
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(run.input, input);
    assert_eq!(run.labels, labels);
    assert_eq!(run.idempotency_key.as_deref(), Some("idem-1"));
    assert_eq!(run.concurrency_key.as_deref(), Some("ck-1"));
    assert_eq!(run.created_at, now);
    assert_eq!(run.updated_at, now);
    assert_eq!(
        (
            run.current_step_index,
            run.completed_step_count,
            run.lease_generation
        ),
        (0, 0, 0)
    );
    assert_eq!(run.progress, None);
    assert_eq!(run.output, None);
    assert_eq!(run.error, None);
    assert_eq!(run.started_at, None);
    assert_eq!(run.completed_at, None);
    assert_eq!(
        get(&store, &run.id).await,
        run,
        "stored exactly as returned"
    );
    assert!(
        store
            .get_run("non-existent-id")
            .await
            .expect("get")
            .is_none()
    );

    // Same idempotency key, other input: the first run, unchanged.
    let again = store
        .enqueue(
            NewRun {
                idempotency_key: Some("idem-1".into()),
                ..new_run("test-job", json!({"other": true}))
            },
            Timestamp::now(),
        )
        .await
        .expect("enqueue");
    assert_eq!(again.disposition, Disposition::Idempotent);
    assert_eq!(again.run, run);
    assert_eq!(count_runs(&store).await, 1);

    // Runs without labels read back `{}`.
    let plain = enqueue(&store, new_run("test-job", json!(null)), now).await;
    assert!(get(&store, &plain.id).await.labels.is_empty());
    assert_eq!(get(&store, &plain.id).await.input, Value::Null);
}

/// Contract: enqueue resolves concurrency keys.
pub async fn enqueue_resolves_concurrency_keys(store: Arc<dyn Store>) {
    let now = Timestamp::now();
    let first = enqueue(&store, keyed("c-job", "ck"), now).await;
    match store.enqueue(keyed("c-job", "ck"), now).await {
        Err(Error::Conflict(message)) => assert!(
            message.contains(
                "A pending run already exists for concurrency key \"ck\" in job \"c-job\""
            ),
            "{message}"
        ),
        other => panic!("expected Error::Conflict, got {other:?}"),
    }
    let coalesced = store
        .enqueue(
            NewRun {
                coalesce: Some(Coalesce::Skip),
                input: json!({"skipped": true}),
                ..keyed("c-job", "ck")
            },
            now,
        )
        .await
        .expect("coalesce");
    assert_eq!(coalesced.disposition, Disposition::Coalesced);
    assert_eq!(coalesced.run, first);
    // Another job, same key: its own pending slot.
    enqueue(&store, keyed("d-job", "ck"), now).await;
    assert_eq!(count_runs(&store).await, 2);

    // Label keys are validated by the store too.
    let mut bad = Labels::new();
    bad.insert("key\"injection".into(), "x".into());
    match store
        .enqueue(
            NewRun {
                labels: bad,
                ..new_run("c-job", json!({}))
            },
            now,
        )
        .await
    {
        Err(Error::Validation(message)) => {
            assert!(message.contains("Invalid label key"), "{message}")
        }
        other => panic!("expected Error::Validation, got {other:?}"),
    }
    assert_eq!(count_runs(&store).await, 2);
}

/// Contract: enqueue many is all or nothing.
pub async fn enqueue_many_is_all_or_nothing(store: Arc<dyn Store>) {
    let now = Timestamp::now();
    assert!(
        store
            .enqueue_many(Vec::new(), now)
            .await
            .expect("empty")
            .is_empty()
    );
    let both = store
        .enqueue_many(
            vec![
                new_run("batch-a", json!({"n": 1})),
                new_run("batch-b", json!({"n": 2})),
            ],
            now,
        )
        .await
        .expect("enqueue_many");
    assert_eq!(both.len(), 2);
    assert!(both.iter().all(|e| e.disposition == Disposition::Created));
    assert_eq!(get(&store, &both[0].run.id).await.input, json!({"n": 1}));
    assert_eq!(get(&store, &both[1].run.id).await.job_name, "batch-b");

    let result = store
        .enqueue_many(
            vec![
                new_run("c-job", json!({"n": 0})),
                keyed("c-job", "ck"),
                keyed("c-job", "ck"),
            ],
            now,
        )
        .await;
    assert!(matches!(result, Err(Error::Conflict(_))), "{result:?}");
    assert_eq!(
        count_runs(&store).await,
        2,
        "the failed batch stored nothing"
    );
}

/// Contract: claim leases the oldest runs.
pub async fn claim_leases_the_oldest_runs(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    assert!(
        store
            .claim("w", t0, LEASE, 5)
            .await
            .expect("claim")
            .is_empty()
    );
    // Inserted newest first: claim order must follow created_at, not insertion order.
    let mut ids = Vec::new();
    for i in (0..5u64).rev() {
        let run = enqueue(&store, new_run("job", json!({"i": i})), t0 + ms(i)).await;
        ids.push((i, run.id));
    }
    ids.sort();
    let now = t0 + ms(1_000);
    let claimed = store.claim("worker-a", now, LEASE, 3).await.expect("claim");
    let claimed_ids: Vec<&str> = claimed.iter().map(|r| r.id.as_str()).collect();
    let oldest: Vec<&str> = ids[..3].iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(claimed_ids, oldest, "the three oldest, oldest first");
    for run in &claimed {
        assert_eq!(run.status, RunStatus::Leased);
        assert_eq!(run.lease_owner.as_deref(), Some("worker-a"));
        assert_eq!(run.lease_generation, 1);
        assert_eq!(run.started_at, Some(now));
        assert_eq!(run.lease_expires_at, Some(now + LEASE));
        assert_eq!(run.updated_at, now);
        assert_eq!(run.completed_step_count, 0);
        assert_eq!(&get(&store, &run.id).await, run, "stored as returned");
    }
    let rest = store
        .claim("worker-b", now, LEASE, 10)
        .await
        .expect("claim");
    assert_eq!(rest.len(), 2);
    assert!(
        store
            .claim("worker-c", now, LEASE, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(
        store
            .claim("worker-c", now, LEASE, 0)
            .await
            .expect("claim")
            .is_empty()
    );
}

/// Contract: an expired lease is reclaimed.
pub async fn an_expired_lease_is_reclaimed(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let run = enqueue(&store, new_run("job", json!({})), t0).await;
    let lease = ms(1_000);
    let first = claim(&store, "worker-a", t0, lease).await.expect("claimed");
    assert!(
        claim(&store, "worker-b", t0 + ms(999), lease)
            .await
            .is_none(),
        "lease still held"
    );
    let later = t0 + ms(1_001);
    let second = claim(&store, "worker-b", later, lease)
        .await
        .expect("reclaimed");
    assert_eq!(second.id, run.id);
    assert_eq!(second.lease_generation, 2);
    assert_eq!(second.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(second.started_at, Some(t0), "first claim time is kept");
    assert_eq!(second.lease_expires_at, Some(later + lease));

    let old = Fence::of(&first);
    let new = Fence::of(&second);
    assert!(
        !store
            .complete_run(&old, Some(json!("a")), later, false)
            .await
            .expect("complete")
    );
    let row = get(&store, &run.id).await;
    assert_eq!(row.status, RunStatus::Leased);
    assert_eq!(row.output, None);
    assert!(
        store
            .complete_run(&new, Some(json!("b")), later, false)
            .await
            .expect("complete")
    );
    assert_eq!(get(&store, &run.id).await.output, Some(json!("b")));
}

/// Contract: a key held by an unexpired lease is skipped.
pub async fn a_key_held_by_an_unexpired_lease_is_skipped(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let a = enqueue(&store, keyed("job-a", "group-1"), t0).await;
    let b = enqueue(&store, keyed("job-b", "group-1"), t0 + ms(1)).await;
    let c = enqueue(&store, new_run("job-c", json!({})), t0 + ms(2)).await;
    let now = t0 + ms(10);
    // One claim call never leases two runs with the same key, even across job names.
    let claimed = store.claim("w1", now, LEASE, 3).await.expect("claim");
    let claimed_ids: Vec<&str> = claimed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(claimed_ids, [a.id.as_str(), c.id.as_str()]);
    assert!(
        claim(&store, "w2", now, LEASE).await.is_none(),
        "b is blocked by a"
    );
    assert!(
        store
            .complete_run(&Fence::of(&claimed[1]), None, now, false)
            .await
            .expect("complete c")
    );

    // Once a's lease expires, a itself is reclaimed first (it is older) and b stays blocked.
    let expired = now + LEASE + ms(1);
    let reclaimed = claim(&store, "w3", expired, LEASE).await.expect("reclaim");
    assert_eq!(reclaimed.id, a.id);
    assert!(claim(&store, "w3", expired, LEASE).await.is_none());

    // When a ends, b becomes claimable.
    assert!(
        store
            .complete_run(&Fence::of(&reclaimed), None, expired, false)
            .await
            .expect("complete")
    );
    let next = claim(&store, "w4", expired, LEASE).await.expect("b");
    assert_eq!(next.id, b.id);
}

/// Contract: renew lease is fenced.
pub async fn renew_lease_is_fenced(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    enqueue(&store, new_run("job", json!({})), t0).await;
    let run = claim(&store, "w", t0, ms(1_000)).await.expect("claimed");
    let fence = Fence::of(&run);

    let renewed_at = t0 + ms(500);
    let expiry = store
        .renew_lease(&fence, renewed_at, ms(60_000))
        .await
        .expect("renew");
    assert_eq!(expiry, Some(renewed_at + ms(60_000)));
    let row = get(&store, &run.id).await;
    assert_eq!(row.lease_expires_at, expiry);
    assert_eq!(row.updated_at, renewed_at);

    assert_eq!(
        store
            .renew_lease(&stale(&fence), renewed_at, ms(90_000))
            .await
            .expect("renew"),
        None
    );
    let unchanged = get(&store, &run.id).await;
    assert_eq!(unchanged.lease_expires_at, expiry);
    assert_eq!(unchanged.lease_generation, 1);

    // An expired lease cannot be revived.
    let after_expiry = renewed_at + ms(60_001);
    assert_eq!(
        store
            .renew_lease(&fence, after_expiry, ms(60_000))
            .await
            .expect("renew"),
        None
    );
    assert_eq!(get(&store, &run.id).await.lease_expires_at, expiry);
}

/// Contract: release lease gives a claimed run back.
pub async fn release_lease_gives_a_claimed_run_back(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let run = enqueue(&store, new_run("job", json!({})), t0).await;
    let claimed = claim(&store, "w", t0, LEASE).await.expect("claimed");
    let fence = Fence::of(&claimed);

    // Fenced: another generation changes nothing.
    let released = store.release_lease(&stale(&fence), t0 + ms(1)).await;
    assert!(!released.expect("release"));
    assert_eq!(get(&store, &run.id).await.status, RunStatus::Leased);

    assert!(
        store
            .release_lease(&fence, t0 + ms(2))
            .await
            .expect("release")
    );
    let row = get(&store, &run.id).await;
    assert_eq!(row.status, RunStatus::Pending);
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert_eq!(row.lease_generation, 1);
    assert_eq!(row.updated_at, t0 + ms(2));
    // Only once; then any worker claims it, under the next generation.
    assert!(
        !store
            .release_lease(&fence, t0 + ms(3))
            .await
            .expect("release")
    );
    let again = claim(&store, "w2", t0 + ms(4), LEASE)
        .await
        .expect("claimed again");
    assert_eq!(
        (again.id.as_str(), again.lease_generation),
        (run.id.as_str(), 2)
    );

    // A cancelled run stays cancelled.
    assert!(
        store
            .cancel_run(&run.id, t0 + ms(5), false)
            .await
            .expect("cancel")
    );
    let released = store.release_lease(&Fence::of(&again), t0 + ms(6)).await;
    assert!(!released.expect("release"));
    assert_eq!(get(&store, &run.id).await.status, RunStatus::Cancelled);

    // A keyed run whose job and key already have a pending run stays leased (the
    // pending-per-key index allows one).
    let first = enqueue(&store, keyed("job", "k"), t0 + ms(7)).await;
    let held = claim(&store, "w", t0 + ms(8), LEASE)
        .await
        .expect("keyed run");
    assert_eq!(held.id, first.id);
    let second = enqueue(&store, keyed("job", "k"), t0 + ms(9)).await;
    let released = store.release_lease(&Fence::of(&held), t0 + ms(10)).await;
    assert!(!released.expect("release"));
    assert_eq!(get(&store, &first.id).await.status, RunStatus::Leased);
    // Without the pending sibling it goes back.
    assert!(
        store
            .cancel_run(&second.id, t0 + ms(11), false)
            .await
            .expect("cancel")
    );
    let released = store.release_lease(&Fence::of(&held), t0 + ms(12)).await;
    assert!(released.expect("release"));
    assert_eq!(get(&store, &first.id).await.status, RunStatus::Pending);
}

/// Contract: persist step is fenced and advances counters.
pub async fn persist_step_is_fenced_and_advances_counters(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    enqueue(&store, new_run("job", json!({})), t0).await;
    let run = claim(&store, "w", t0, LEASE).await.expect("claimed");
    let fence = Fence::of(&run);
    let at = t0 + ms(5);

    let first = store
        .persist_step(
            &fence,
            step(
                "fetch-data",
                0,
                StepStatus::Completed,
                Some(json!({"data": [1, 2, 3]})),
                t0,
            ),
            at,
        )
        .await
        .expect("persist")
        .expect("fence holds");
    assert_eq!(first.run_id, run.id);
    assert_eq!(first.name, "fetch-data");
    assert_eq!(first.index, 0);
    assert_eq!(first.status, StepStatus::Completed);
    assert_eq!(first.output, Some(json!({"data": [1, 2, 3]})));
    assert_eq!(first.started_at, t0);
    assert_eq!(first.completed_at, Some(at));
    let row = get(&store, &run.id).await;
    assert_eq!((row.current_step_index, row.completed_step_count), (1, 1));

    store
        .persist_step(
            &fence,
            step("second", 1, StepStatus::Completed, Some(json!("two")), t0),
            at,
        )
        .await
        .expect("persist")
        .expect("fence holds");
    let row = get(&store, &run.id).await;
    assert_eq!((row.current_step_index, row.completed_step_count), (2, 2));

    // A failed step leaves the counters.
    let failed = store
        .persist_step(&fence, step("third", 2, StepStatus::Failed, None, t0), at)
        .await
        .expect("persist")
        .expect("fence holds");
    assert_eq!(failed.status, StepStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("third failed"));
    let row = get(&store, &run.id).await;
    assert_eq!((row.current_step_index, row.completed_step_count), (2, 2));

    // A stale fence stores nothing.
    assert!(
        store
            .persist_step(
                &stale(&fence),
                step("stale", 3, StepStatus::Completed, Some(json!(1)), t0),
                at
            )
            .await
            .expect("persist")
            .is_none()
    );
    // ... also when a completed step of that name exists: the lease is what is lost.
    assert!(
        store
            .persist_step(
                &stale(&fence),
                step("fetch-data", 3, StepStatus::Completed, Some(json!(1)), t0),
                at
            )
            .await
            .expect("persist")
            .is_none()
    );
    // A second completed step with the same name is refused.
    assert!(
        store
            .persist_step(
                &fence,
                step("fetch-data", 4, StepStatus::Completed, Some(json!(0)), t0),
                at
            )
            .await
            .is_err()
    );
    let steps = store.get_steps(&run.id).await.expect("steps");
    let names: Vec<(&str, i64)> = steps.iter().map(|s| (s.name.as_str(), s.index)).collect();
    assert_eq!(names, [("fetch-data", 0), ("second", 1), ("third", 2)]);
    let row = get(&store, &run.id).await;
    assert_eq!((row.current_step_index, row.completed_step_count), (2, 2));

    let completed = store
        .get_completed_step(&run.id, "fetch-data")
        .await
        .expect("get")
        .expect("found");
    assert_eq!(completed.output, Some(json!({"data": [1, 2, 3]})));
    assert!(
        store
            .get_completed_step(&run.id, "third")
            .await
            .expect("get")
            .is_none(),
        "failed"
    );
    assert!(
        store
            .get_completed_step(&run.id, "unknown")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .get_completed_step("other-run", "fetch-data")
            .await
            .expect("get")
            .is_none()
    );

    // A completed step with no output reads back as None.
    let empty = store
        .persist_step(&fence, step("void", 5, StepStatus::Completed, None, t0), at)
        .await
        .expect("persist")
        .expect("fence holds");
    assert_eq!(empty.output, None);
    assert_eq!(
        store
            .get_completed_step(&run.id, "void")
            .await
            .expect("get")
            .expect("found")
            .output,
        None
    );
}

/// Contract: complete run is fenced.
pub async fn complete_run_is_fenced(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let keep = enqueue(&store, new_run("job", json!({})), t0).await;
    let drop = enqueue(&store, new_run("job", json!({})), t0 + ms(1)).await;
    let claimed = store.claim("w", t0 + ms(2), LEASE, 2).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    let at = t0 + ms(10);
    for run in &claimed {
        store
            .persist_step(
                &Fence::of(run),
                step("s", 0, StepStatus::Completed, Some(json!(1)), t0),
                at,
            )
            .await
            .expect("persist")
            .expect("fence holds");
    }
    let fence_keep = Fence::of(&claimed[0]);
    let fence_drop = Fence::of(&claimed[1]);
    assert_eq!(fence_keep.run_id, keep.id);

    assert!(
        !store
            .complete_run(&stale(&fence_keep), Some(json!({"ok": false})), at, false)
            .await
            .expect("complete")
    );
    let row = get(&store, &keep.id).await;
    assert_eq!(row.status, RunStatus::Leased);
    assert_eq!(row.output, None);
    assert_eq!(row.completed_at, None);

    assert!(
        store
            .complete_run(&fence_keep, Some(json!({"ok": true})), at, false)
            .await
            .expect("complete")
    );
    let row = get(&store, &keep.id).await;
    assert_eq!(row.status, RunStatus::Completed);
    assert_eq!(row.output, Some(json!({"ok": true})));
    assert_eq!(row.error, None);
    assert_eq!(row.completed_at, Some(at));
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert_eq!(
        store.get_steps(&keep.id).await.expect("steps").len(),
        1,
        "steps kept"
    );
    // Terminal: not claimable, not cancellable, not completable again.
    assert!(
        !store
            .complete_run(&fence_keep, Some(json!(2)), at, false)
            .await
            .expect("complete")
    );
    assert!(!store.cancel_run(&keep.id, at, false).await.expect("cancel"));
    assert_eq!(
        get(&store, &keep.id).await.output,
        Some(json!({"ok": true}))
    );

    assert!(
        store
            .complete_run(&fence_drop, None, at, true)
            .await
            .expect("complete")
    );
    assert!(
        store.get_steps(&drop.id).await.expect("steps").is_empty(),
        "steps dropped in the same call"
    );
    assert_eq!(get(&store, &drop.id).await.output, None);
    assert!(
        store
            .claim("w", at + LEASE * 2, LEASE, 5)
            .await
            .expect("claim")
            .is_empty()
    );
}

/// Contract: complete run and claim hands the slot to the oldest claimable run.
pub async fn complete_run_and_claim_hands_the_slot_to_the_oldest_claimable_run(
    store: Arc<dyn Store>,
) {
    let t0 = Timestamp::now();
    let first = enqueue(&store, new_run("job", json!({"n": 1})), t0).await;
    let second = enqueue(&store, new_run("job", json!({"n": 2})), t0 + ms(1)).await;
    let third = enqueue(&store, new_run("job", json!({"n": 3})), t0 + ms(2)).await;
    let running = claim(&store, "w", t0 + ms(3), LEASE)
        .await
        .expect("claimable");
    assert_eq!(running.id, first.id);
    let next = ClaimRequest {
        worker_id: "w2".into(),
        lease: LEASE,
        max: 1,
        frees_key: false,
    };
    let at = t0 + ms(10);

    // The completion lands and the oldest pending run is leased in the same call.
    let (completed, claimed) = store
        .complete_run_and_claim(
            &Fence::of(&running),
            Some(json!({"ok": 1})),
            at,
            true,
            &next,
        )
        .await
        .expect("complete and claim");
    assert!(completed);
    let row = get(&store, &first.id).await;
    assert_eq!(row.status, RunStatus::Completed);
    assert_eq!(row.output, Some(json!({"ok": 1})));
    assert_eq!(claimed.len(), 1);
    let handed = &claimed[0];
    assert_eq!(handed.id, second.id);
    assert_eq!(handed.status, RunStatus::Leased);
    assert_eq!(handed.lease_owner.as_deref(), Some("w2"));
    assert_eq!(handed.lease_generation, 1);
    assert_eq!(handed.lease_expires_at, Some(at + LEASE));
    assert_eq!(handed.input, json!({"n": 2}));
    assert_eq!(get(&store, &second.id).await, *handed);

    // A stale fence completes nothing, but the free slot still claims.
    let (completed, claimed) = store
        .complete_run_and_claim(&stale(&Fence::of(handed)), None, at, true, &next)
        .await
        .expect("complete and claim");
    assert!(!completed);
    assert_eq!(get(&store, &second.id).await.status, RunStatus::Leased);
    assert_eq!(
        claimed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![third.id.as_str()]
    );

    // Nothing left to claim, or nothing asked for: the completion alone.
    let none = ClaimRequest {
        max: 0,
        ..next.clone()
    };
    let (completed, claimed) = store
        .complete_run_and_claim(&Fence::of(handed), None, at, true, &none)
        .await
        .expect("complete");
    assert!(completed && claimed.is_empty());
    let (completed, claimed) = store
        .complete_run_and_claim(
            &Fence::of(&claimed_run(&store, &third.id).await),
            None,
            at,
            true,
            &next,
        )
        .await
        .expect("complete");
    assert!(completed && claimed.is_empty());
    assert_eq!(get(&store, &third.id).await.status, RunStatus::Completed);
}

/// `complete_run_and_claim` around the run it completes: a run waiting for the completed run's
/// concurrency key is claimed in the same call (the worker says the run holds a key,
/// [`ClaimRequest::frees_key`]), and a completed run whose own lease had expired is not claimed
/// back.
/// Contract: complete run and claim hands the freed key to the run waiting for it.
pub async fn complete_run_and_claim_hands_the_freed_key_to_the_run_waiting_for_it(
    store: Arc<dyn Store>,
) {
    let t0 = Timestamp::now();
    // A key of its own: PostgreSQL's key locks are shared by every test on the database.
    let key = format!("freed-{}-{t0}", std::process::id());
    let holder = enqueue(&store, keyed("job", &key), t0).await;
    let running = claim(&store, "w", t0 + ms(1), LEASE)
        .await
        .expect("claimable");
    assert_eq!(running.id, holder.id);
    let waiting = enqueue(&store, keyed("job", &key), t0 + ms(2)).await;
    assert!(
        claim(&store, "w", t0 + ms(3), LEASE).await.is_none(),
        "key held"
    );
    let next = ClaimRequest {
        worker_id: "w".into(),
        lease: LEASE,
        max: 1,
        frees_key: true,
    };
    let at = t0 + ms(10);
    let (completed, claimed) = store
        .complete_run_and_claim(&Fence::of(&running), None, at, true, &next)
        .await
        .expect("complete and claim");
    assert!(completed);
    assert_eq!(
        claimed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![waiting.id.as_str()],
        "the run waiting for the freed key, claimed in the same call"
    );

    // A run whose lease expired before its completion landed: completed, not claimed back.
    let late = enqueue(&store, new_run("job", json!({"late": true})), at).await;
    let short = claim(&store, "w", at + ms(1), ms(5)).await.expect("late");
    assert_eq!(short.id, late.id);
    let after_expiry = at + ms(1000);
    let keyless = ClaimRequest {
        frees_key: false,
        ..next.clone()
    };
    let (completed, claimed) = store
        .complete_run_and_claim(&Fence::of(&short), None, after_expiry, true, &keyless)
        .await
        .expect("complete and claim");
    assert!(completed, "the fence still held");
    assert!(claimed.iter().all(|r| r.id != late.id), "{claimed:?}");
    let row = get(&store, &late.id).await;
    assert_eq!(row.status, RunStatus::Completed);
    assert_eq!(row.lease_generation, short.lease_generation);
}

/// `enqueue_and_claim`: the enqueue and, only when it created a run, a claim of the oldest
/// claimable runs with the same `now`.
/// Contract: enqueue and claim claims only after creating a run.
pub async fn enqueue_and_claim_claims_only_after_creating_a_run(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let next = ClaimRequest {
        worker_id: "w".into(),
        lease: LEASE,
        max: 1,
        frees_key: false,
    };

    // On an empty queue the new run is the one claimed, leased from the same `now`.
    let (enqueued, claimed) = store
        .enqueue_and_claim(new_run("job", json!({"n": 1})), t0, &next)
        .await
        .expect("enqueue and claim");
    assert_eq!(enqueued.disposition, Disposition::Created);
    assert_eq!(enqueued.run.status, RunStatus::Pending);
    assert_eq!(claimed.len(), 1);
    let first = &claimed[0];
    assert_eq!(first.id, enqueued.run.id);
    assert_eq!(first.status, RunStatus::Leased);
    assert_eq!(first.lease_owner.as_deref(), Some("w"));
    assert_eq!(first.lease_generation, 1);
    assert_eq!(first.lease_expires_at, Some(t0 + LEASE));
    assert_eq!(get(&store, &first.id).await, *first);

    // An older pending run goes first; the new one stays pending.
    let older = enqueue(&store, new_run("job", json!({"n": 2})), t0 + ms(1)).await;
    let (enqueued, claimed) = store
        .enqueue_and_claim(new_run("job", json!({"n": 3})), t0 + ms(2), &next)
        .await
        .expect("enqueue and claim");
    let newer = enqueued.run;
    assert_eq!(
        claimed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![older.id.as_str()]
    );
    assert_eq!(get(&store, &newer.id).await.status, RunStatus::Pending);

    // Nothing asked for: only the enqueue.
    let none = ClaimRequest {
        max: 0,
        ..next.clone()
    };
    let (enqueued, claimed) = store
        .enqueue_and_claim(new_run("job", json!({"n": 4})), t0 + ms(3), &none)
        .await
        .expect("enqueue");
    assert_eq!(enqueued.disposition, Disposition::Created);
    assert!(claimed.is_empty());

    // An idempotent or coalesced trigger creates nothing and claims nothing, though runs are
    // claimable.
    let idempotent = NewRun {
        idempotency_key: Some("once".into()),
        ..new_run("job", json!({"n": 5}))
    };
    let (_, claimed) = store
        .enqueue_and_claim(idempotent.clone(), t0 + ms(4), &none)
        .await
        .expect("enqueue");
    assert!(claimed.is_empty());
    let (again, claimed) = store
        .enqueue_and_claim(idempotent, t0 + ms(5), &next)
        .await
        .expect("idempotent");
    assert_eq!(again.disposition, Disposition::Idempotent);
    assert!(claimed.is_empty(), "{claimed:?}");
    enqueue(&store, keyed("keyed-job", "k"), t0 + ms(6)).await;
    let (coalesced, claimed) = store
        .enqueue_and_claim(
            NewRun {
                coalesce: Some(Coalesce::Skip),
                ..keyed("keyed-job", "k")
            },
            t0 + ms(7),
            &next,
        )
        .await
        .expect("coalesce");
    assert_eq!(coalesced.disposition, Disposition::Coalesced);
    assert!(claimed.is_empty(), "{claimed:?}");

    // A rejected trigger fails, claims nothing and writes nothing.
    let before = store.get_runs(&RunFilter::default()).await.expect("runs");
    match store
        .enqueue_and_claim(keyed("keyed-job", "k"), t0 + ms(8), &next)
        .await
    {
        Err(Error::Conflict(_)) => {}
        other => panic!("expected Error::Conflict, got {other:?}"),
    }
    assert_eq!(
        store.get_runs(&RunFilter::default()).await.expect("runs"),
        before
    );
    assert_eq!(get(&store, &newer.id).await.status, RunStatus::Pending);
}

async fn claimed_run(store: &Arc<dyn Store>, id: &str) -> crate::Run {
    let run = get(store, id).await;
    assert_eq!(run.status, RunStatus::Leased);
    run
}

/// Contract: fail run is fenced.
pub async fn fail_run_is_fenced(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let run = enqueue(&store, new_run("job", json!({})), t0).await;
    // Claim with a 1 ms lease, then another worker reclaims: the first fence is stale.
    let first = claim(&store, "worker-a", t0, ms(1)).await.expect("claimed");
    let at = t0 + ms(100);
    let second = claim(&store, "worker-b", at, LEASE)
        .await
        .expect("reclaimed");
    store
        .persist_step(
            &Fence::of(&second),
            step("s", 0, StepStatus::Failed, None, t0),
            at,
        )
        .await
        .expect("persist")
        .expect("fence holds");

    assert!(
        !store
            .fail_run(&Fence::of(&first), "stale failure", at, true)
            .await
            .expect("fail")
    );
    let row = get(&store, &run.id).await;
    assert_eq!(row.status, RunStatus::Leased);
    assert_eq!(row.error, None);
    assert_eq!(row.lease_generation, 2);
    assert_eq!(row.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(row.lease_expires_at, Some(at + LEASE));
    assert_eq!(
        store.get_steps(&run.id).await.expect("steps").len(),
        1,
        "nothing dropped"
    );

    assert!(
        store
            .fail_run(&Fence::of(&second), "step failed", at, false)
            .await
            .expect("fail")
    );
    let row = get(&store, &run.id).await;
    assert_eq!(row.status, RunStatus::Failed);
    assert_eq!(row.error.as_deref(), Some("step failed"));
    assert_eq!(row.completed_at, Some(at));
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert_eq!(store.get_steps(&run.id).await.expect("steps").len(), 1);
    assert!(
        store
            .claim("w", at + LEASE * 2, LEASE, 5)
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(!store.cancel_run(&run.id, at, false).await.expect("cancel"));

    // drop_steps removes steps together with the failure.
    let other = enqueue(&store, new_run("job", json!({})), at).await;
    let leased = claim(&store, "w", at, LEASE).await.expect("claimed");
    assert_eq!(leased.id, other.id);
    store
        .persist_step(
            &Fence::of(&leased),
            step("s", 0, StepStatus::Completed, Some(json!(1)), at),
            at,
        )
        .await
        .expect("persist")
        .expect("fence holds");
    assert!(
        store
            .fail_run(&Fence::of(&leased), "boom", at, true)
            .await
            .expect("fail")
    );
    assert!(store.get_steps(&other.id).await.expect("steps").is_empty());
}

/// Contract: cancel run only cancels active runs.
pub async fn cancel_run_only_cancels_active_runs(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let pending = enqueue(&store, new_run("job", json!({})), t0).await;
    let at = t0 + ms(50);
    assert!(
        store
            .cancel_run(&pending.id, at, false)
            .await
            .expect("cancel")
    );
    let row = get(&store, &pending.id).await;
    assert_eq!(row.status, RunStatus::Cancelled);
    assert_eq!(row.completed_at, Some(at));
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert!(
        store
            .claim("w", at, LEASE, 5)
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(
        !store
            .cancel_run(&pending.id, at, false)
            .await
            .expect("cancel twice")
    );

    let leased_run = enqueue(&store, new_run("job", json!({})), t0 + ms(1)).await;
    let leased = claim(&store, "w", at, LEASE).await.expect("claimed");
    assert_eq!(leased.id, leased_run.id);
    let fence = Fence::of(&leased);
    store
        .persist_step(
            &fence,
            step("s", 0, StepStatus::Completed, Some(json!(1)), at),
            at,
        )
        .await
        .expect("persist")
        .expect("fence holds");
    store
        .append_log(Some(&fence), log(&leased.id, "kept", None), at)
        .await
        .expect("log")
        .expect("fence holds");
    assert!(
        store
            .cancel_run(&leased.id, at, true)
            .await
            .expect("cancel leased")
    );
    let row = get(&store, &leased.id).await;
    assert_eq!(row.status, RunStatus::Cancelled);
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert!(
        store.get_steps(&leased.id).await.expect("steps").is_empty(),
        "drop_steps"
    );
    assert_eq!(
        store.get_logs(&leased.id).await.expect("logs").len(),
        1,
        "logs stay"
    );
    // The former lease holder's writes are refused.
    assert!(
        !store
            .complete_run(&fence, None, at, false)
            .await
            .expect("complete")
    );
    assert!(
        !store
            .update_progress(&fence, None, at)
            .await
            .expect("progress")
    );
    assert_eq!(get(&store, &leased.id).await.status, RunStatus::Cancelled);

    assert!(
        !store
            .cancel_run("missing", at, false)
            .await
            .expect("cancel missing")
    );
}

/// Contract: delete run only deletes terminal runs.
pub async fn delete_run_only_deletes_terminal_runs(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let mut labelled = new_run("job", json!({}));
    labelled.labels.insert("env".into(), "prod".into());
    let run = enqueue(&store, labelled.clone(), t0).await;
    let leased = claim(&store, "w", t0, LEASE).await.expect("claimed");
    let fence = Fence::of(&leased);
    store
        .persist_step(
            &fence,
            step("s", 0, StepStatus::Completed, Some(json!(1)), t0),
            t0,
        )
        .await
        .expect("persist")
        .expect("fence holds");
    store
        .append_log(Some(&fence), log(&run.id, "one", None), t0)
        .await
        .expect("log");

    assert!(
        !store.delete_run(&run.id).await.expect("delete leased"),
        "leased runs stay"
    );
    let pending = enqueue(&store, labelled, t0 + ms(1)).await;
    assert!(
        !store.delete_run(&pending.id).await.expect("delete pending"),
        "pending runs stay"
    );
    assert_eq!(count_runs(&store).await, 2);

    assert!(
        store
            .complete_run(&fence, None, t0, false)
            .await
            .expect("complete")
    );
    assert!(store.delete_run(&run.id).await.expect("delete"));
    assert!(store.get_run(&run.id).await.expect("get").is_none());
    assert!(store.get_steps(&run.id).await.expect("steps").is_empty());
    assert!(store.get_logs(&run.id).await.expect("logs").is_empty());
    let by_label = store
        .get_runs(&RunFilter::new().label("env", "prod"))
        .await
        .expect("filter");
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, pending.id);
    assert!(!store.delete_run(&run.id).await.expect("delete again"));
    assert!(!store.delete_run("missing").await.expect("delete missing"));
}

/// Contract: append log is fenced only when asked.
pub async fn append_log_is_fenced_only_when_asked(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let run = enqueue(&store, new_run("job", json!({})), t0).await;
    let leased = claim(&store, "w", t0, LEASE).await.expect("claimed");
    let fence = Fence::of(&leased);

    let first = store
        .append_log(
            Some(&fence),
            log(&run.id, "first", Some(json!({"order": 1}))),
            t0,
        )
        .await
        .expect("log")
        .expect("lands while leased");
    assert_eq!(first.run_id, run.id);
    assert_eq!(first.message, "first");
    assert_eq!(first.level, LogLevel::Info);
    assert_eq!(first.created_at, t0);
    let mut in_step = log(&run.id, "second", Some(json!({"order": 2})));
    in_step.step_name = Some("step-a".into());
    in_step.level = LogLevel::Warn;
    store
        .append_log(Some(&fence), in_step, t0)
        .await
        .expect("log")
        .expect("lands while leased");
    assert!(
        store
            .append_log(Some(&stale(&fence)), log(&run.id, "stale", None), t0)
            .await
            .expect("log")
            .is_none(),
        "stale generation"
    );
    assert!(
        store
            .complete_run(&fence, None, t0, false)
            .await
            .expect("complete")
    );
    assert!(
        store
            .append_log(Some(&fence), log(&run.id, "after end", None), t0)
            .await
            .expect("log")
            .is_none(),
        "no longer leased"
    );
    let unfenced = store
        .append_log(None, log(&run.id, "unfenced", None), t0 + ms(1))
        .await
        .expect("log");
    assert!(unfenced.is_some(), "without a fence a log always lands");

    let logs = store.get_logs(&run.id).await.expect("logs");
    let summary: Vec<(&str, Option<&str>, LogLevel, Option<Value>)> = logs
        .iter()
        .map(|l| {
            (
                l.message.as_str(),
                l.step_name.as_deref(),
                l.level,
                l.data.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("first", None, LogLevel::Info, Some(json!({"order": 1}))),
            (
                "second",
                Some("step-a"),
                LogLevel::Warn,
                Some(json!({"order": 2}))
            ),
            ("unfenced", None, LogLevel::Info, None),
        ]
    );
    assert!(store.get_logs("missing").await.expect("logs").is_empty());
}

/// Contract: update progress is fenced.
pub async fn update_progress_is_fenced(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let run = enqueue(&store, new_run("job", json!({})), t0).await;
    let leased = claim(&store, "w", t0, LEASE).await.expect("claimed");
    let fence = Fence::of(&leased);
    let progress = Progress {
        current: 2,
        total: Some(10),
        message: Some("working".into()),
    };
    assert!(
        store
            .update_progress(&fence, Some(progress.clone()), t0)
            .await
            .expect("progress")
    );
    assert_eq!(get(&store, &run.id).await.progress, Some(progress.clone()));
    let ignored = Progress {
        current: 9,
        total: None,
        message: None,
    };
    assert!(
        !store
            .update_progress(&stale(&fence), Some(ignored), t0)
            .await
            .expect("stale")
    );
    assert_eq!(get(&store, &run.id).await.progress, Some(progress));
    let bare = Progress {
        current: 50,
        total: None,
        message: None,
    };
    assert!(
        store
            .update_progress(&fence, Some(bare.clone()), t0)
            .await
            .expect("progress")
    );
    assert_eq!(get(&store, &run.id).await.progress, Some(bare));
    assert!(
        store
            .update_progress(&fence, None, t0)
            .await
            .expect("clear")
    );
    assert_eq!(get(&store, &run.id).await.progress, None);
}

/// Contract: release expired leases resets or fails.
pub async fn release_expired_leases_resets_or_fails(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let lone = enqueue(&store, keyed("job", "lone-key"), t0).await;
    let blocked = enqueue(&store, keyed("job", "shared-key"), t0 + ms(1)).await;
    let cross = enqueue(&store, keyed("job", "cross-key"), t0 + ms(2)).await;
    let fresh = enqueue(&store, new_run("job", json!({})), t0 + ms(3)).await;
    let short = ms(100);
    let claimed = store
        .claim("w", t0 + ms(10), short, 3)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let unexpired = claim(&store, "w2", t0 + ms(50), LEASE)
        .await
        .expect("claim fresh");
    assert_eq!(unexpired.id, fresh.id);
    // Now pending runs with the same job+key (shared-key) and another job (cross-key).
    let pending = enqueue(&store, keyed("job", "shared-key"), t0 + ms(20)).await;
    let other_job = enqueue(&store, keyed("other-job", "cross-key"), t0 + ms(21)).await;

    let now = t0 + ms(500);
    let changed = store
        .release_expired_leases(now, false)
        .await
        .expect("release");
    let mut changed_ids: Vec<&str> = changed.iter().map(|r| r.id.as_str()).collect();
    changed_ids.sort();
    let mut expected = vec![lone.id.as_str(), blocked.id.as_str(), cross.id.as_str()];
    expected.sort();
    assert_eq!(changed_ids, expected);

    for id in [&lone.id, &cross.id] {
        let row = get(&store, id).await;
        assert_eq!(row.status, RunStatus::Pending, "{id}");
        assert_eq!(row.lease_owner, None);
        assert_eq!(row.lease_expires_at, None);
        assert_eq!(row.lease_generation, 1, "generation kept");
        assert_eq!(row.started_at, Some(t0 + ms(10)), "started_at kept");
        assert_eq!(row.completed_at, None);
    }
    let failed = get(&store, &blocked.id).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("pending run already exists"),
        "{:?}",
        failed.error
    );
    assert_eq!(failed.completed_at, Some(now));
    assert_eq!(failed.lease_owner, None);
    assert_eq!(get(&store, &pending.id).await.status, RunStatus::Pending);
    assert_eq!(get(&store, &other_job.id).await.status, RunStatus::Pending);
    // The unexpired lease is untouched.
    assert_eq!(get(&store, &fresh.id).await, unexpired);
    assert!(
        store
            .release_expired_leases(now, false)
            .await
            .expect("again")
            .is_empty()
    );
}

/// Two runs of one job+key whose leases both expired: only the older may return to pending
/// (the pending-per-key index allows one); the younger fails. `drop_steps` removes the failed
/// run's steps and nothing else.
/// Contract: release expired leases of one key keeps one pending and drops failed steps.
pub async fn release_expired_leases_of_one_key_keeps_one_pending_and_drops_failed_steps(
    store: Arc<dyn Store>,
) {
    let t0 = Timestamp::now();
    enqueue(&store, keyed("job", "k"), t0).await;
    let older = claim(&store, "w1", t0 + ms(10), ms(100))
        .await
        .expect("claim older");
    let younger = enqueue(&store, keyed("job", "k"), t0 + ms(20)).await;
    // A second worker holds the younger one too (as after a reclaim race), also expired.
    store
        .update_run(
            &younger.id,
            RunPatch {
                status: Some(RunStatus::Leased),
                lease_owner: Some(Some("w2".into())),
                lease_expires_at: Some(Some(t0 + ms(150))),
                ..RunPatch::default()
            },
            t0 + ms(30),
        )
        .await
        .expect("lease younger");
    for (run, generation) in [(&older.id, older.lease_generation), (&younger.id, 0)] {
        let fence = Fence {
            run_id: run.clone(),
            generation,
        };
        store
            .persist_step(
                &fence,
                step("s1", 0, StepStatus::Completed, Some(json!(1)), t0),
                t0 + ms(40),
            )
            .await
            .expect("persist")
            .expect("fenced write lands");
    }

    let changed = store
        .release_expired_leases(t0 + ms(500), true)
        .await
        .expect("release");
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert_eq!(get(&store, &older.id).await.status, RunStatus::Pending);
    let failed = get(&store, &younger.id).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("pending run already exists")
    );
    assert_eq!(store.get_steps(&older.id).await.expect("steps").len(), 1);
    assert!(
        store
            .get_steps(&younger.id)
            .await
            .expect("steps")
            .is_empty()
    );
}

/// Contract: purge runs cascades.
pub async fn purge_runs_cascades(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let mut labelled = new_run("job", json!({}));
    labelled.labels.insert("tier".into(), "gold".into());
    let old = enqueue(&store, labelled.clone(), t0).await;
    let leased = claim(&store, "w", t0, LEASE).await.expect("claimed");
    let fence = Fence::of(&leased);
    store
        .persist_step(
            &fence,
            step("s", 0, StepStatus::Completed, Some(json!(1)), t0),
            t0,
        )
        .await
        .expect("persist")
        .expect("fence holds");
    store
        .append_log(Some(&fence), log(&old.id, "l", None), t0)
        .await
        .expect("log");
    let completed_at = t0 + ms(10);
    assert!(
        store
            .complete_run(&fence, None, completed_at, false)
            .await
            .expect("complete")
    );
    let pending = enqueue(&store, labelled, t0 + ms(1)).await;

    // Strictly before the cutoff.
    assert_eq!(store.purge_runs(completed_at, 100).await.expect("purge"), 0);
    assert_eq!(
        store
            .purge_runs(completed_at + ms(1), 0)
            .await
            .expect("purge"),
        0
    );
    assert_eq!(
        store
            .purge_runs(completed_at + ms(1), 100)
            .await
            .expect("purge"),
        1
    );
    assert!(store.get_run(&old.id).await.expect("get").is_none());
    assert!(store.get_steps(&old.id).await.expect("steps").is_empty());
    assert!(store.get_logs(&old.id).await.expect("logs").is_empty());
    let by_label = store
        .get_runs(&RunFilter::new().label("tier", "gold"))
        .await
        .expect("filter");
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, pending.id);
    let far = t0 + Duration::from_secs(86_400 * 3650);
    assert_eq!(
        store.purge_runs(far, 100).await.expect("purge"),
        0,
        "pending never purged"
    );
}

/// Contract: update run patches fields.
pub async fn update_run_patches_fields(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let run = enqueue(&store, new_run("job", json!({"a": 1})), t0).await;
    let at = t0 + ms(5);
    let progress = Progress {
        current: 1,
        total: Some(2),
        message: None,
    };
    assert!(
        store
            .update_run(
                &run.id,
                RunPatch {
                    status: Some(RunStatus::Leased),
                    lease_owner: Some(Some("manual".into())),
                    lease_expires_at: Some(Some(at + LEASE)),
                    progress: Some(Some(progress.clone())),
                    error: Some(Some("note".into())),
                    completed_at: Some(Some(at)),
                    input: Some(json!({"b": [2]})),
                },
                at,
            )
            .await
            .expect("patch")
    );
    let row = get(&store, &run.id).await;
    assert_eq!(row.status, RunStatus::Leased);
    assert_eq!(row.lease_owner.as_deref(), Some("manual"));
    assert_eq!(row.lease_expires_at, Some(at + LEASE));
    assert_eq!(row.progress, Some(progress));
    assert_eq!(row.error.as_deref(), Some("note"));
    assert_eq!(row.completed_at, Some(at));
    assert_eq!(row.input, json!({"b": [2]}));
    assert_eq!(row.updated_at, at);
    assert_eq!(row.lease_generation, 0, "not touched by a patch");

    // Some(None) clears; absent fields stay.
    let later = at + ms(5);
    assert!(
        store
            .update_run(
                &run.id,
                RunPatch {
                    status: Some(RunStatus::Pending),
                    lease_owner: Some(None),
                    lease_expires_at: Some(None),
                    progress: Some(None),
                    ..RunPatch::default()
                },
                later,
            )
            .await
            .expect("patch")
    );
    let row = get(&store, &run.id).await;
    assert_eq!(row.status, RunStatus::Pending);
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert_eq!(row.progress, None);
    assert_eq!(row.error.as_deref(), Some("note"));
    assert_eq!(row.updated_at, later);
    assert!(
        !store
            .update_run("missing", RunPatch::default(), later)
            .await
            .expect("patch")
    );
}

/// Contract: get runs filters and pages.
pub async fn get_runs_filters_and_pages(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let a1 = enqueue(&store, new_run("job-a", json!(1)), t0).await;
    let a2 = enqueue(&store, new_run("job-a", json!(2)), t0 + ms(1)).await;
    let b = enqueue(&store, new_run("job-b", json!(3)), t0 + ms(2)).await;
    let c = enqueue(&store, new_run("job-c", json!(4)), t0 + ms(3)).await;
    let leased = claim(&store, "w", t0 + ms(5), LEASE).await.expect("claim");
    assert_eq!(leased.id, a1.id);
    assert!(
        store
            .complete_run(&Fence::of(&leased), None, t0 + ms(6), false)
            .await
            .expect("complete")
    );
    let ids = |filter: RunFilter| {
        let store = store.clone();
        async move {
            store
                .get_runs(&filter)
                .await
                .expect("get_runs")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        ids(RunFilter::new()).await,
        [c.id.as_str(), b.id.as_str(), a2.id.as_str(), a1.id.as_str()]
    );
    assert_eq!(
        ids(RunFilter::new().status(RunStatus::Pending)).await.len(),
        3
    );
    assert_eq!(
        ids(RunFilter::new().status(RunStatus::Completed)).await,
        [a1.id.as_str()]
    );
    assert_eq!(
        ids(RunFilter::new().job_name("job-a")).await,
        [a2.id.as_str(), a1.id.as_str()]
    );
    assert_eq!(
        ids(RunFilter::new().job_name("job-a").job_name("job-c")).await,
        [c.id.as_str(), a2.id.as_str(), a1.id.as_str()]
    );
    assert_eq!(
        ids(RunFilter::new()
            .status(RunStatus::Pending)
            .job_name("job-a"))
        .await,
        [a2.id.as_str()]
    );
    let first = ids(RunFilter::new().limit(2)).await;
    let second = ids(RunFilter::new().limit(2).offset(2)).await;
    assert_eq!(first, [c.id.as_str(), b.id.as_str()]);
    assert_eq!(second, [a2.id.as_str(), a1.id.as_str()]);
    assert_eq!(ids(RunFilter::new().offset(3)).await, [a1.id.as_str()]);
    assert!(ids(RunFilter::new().offset(4)).await.is_empty());
    match store
        .get_runs(&RunFilter::new().label("bad key", "x"))
        .await
    {
        Err(Error::Validation(message)) => {
            assert!(message.contains("Invalid label key"), "{message}")
        }
        other => panic!("expected Error::Validation, got {other:?}"),
    }
}

/// Contract: group commit handles many concurrent enqueues.
pub async fn group_commit_handles_many_concurrent_enqueues(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .enqueue(new_run("bulk", json!({"i": i})), Timestamp::now())
                    .await
            })
        })
        .collect();
    let results = within(
        "200 concurrent enqueues",
        Duration::from_secs(30),
        futures::future::join_all(tasks),
    )
    .await;
    let mut ids = HashSet::new();
    for result in results {
        let enqueued = result.expect("task").expect("enqueue");
        assert_eq!(enqueued.disposition, Disposition::Created);
        ids.insert(enqueued.run.id);
    }
    assert_eq!(ids.len(), 200, "distinct ids");
    let stored = store.get_runs(&RunFilter::new()).await.expect("get_runs");
    assert_eq!(stored.len(), 200);
    assert!(stored.iter().all(|r| ids.contains(&r.id)));

    // Concurrent writes where some fail: the failures roll back only themselves.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .enqueue(
                        keyed("bulk", if i % 2 == 0 { "same" } else { "other" }),
                        Timestamp::now(),
                    )
                    .await
            })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let created = results
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(e)) if e.disposition == Disposition::Created))
        .count();
    assert_eq!(created, 2, "one pending run per key");
    assert_eq!(count_runs(&store).await, 202);
}

/// Contract: concurrent claims have exactly one winner.
pub async fn concurrent_claims_have_exactly_one_winner(store: Arc<dyn Store>) {
    for round in 0..25 {
        let run = enqueue(
            &store,
            new_run("race", json!({"round": round})),
            Timestamp::now(),
        )
        .await;
        let claims: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .claim(&format!("worker-{w}"), Timestamp::now(), LEASE, 1)
                        .await
                })
            })
            .collect();
        let winners: Vec<crate::Run> = futures::future::join_all(claims)
            .await
            .into_iter()
            .flat_map(|r| r.expect("task").expect("claim"))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        assert_eq!(winners[0].id, run.id);
        assert_eq!(winners[0].status, RunStatus::Leased);
        assert_eq!(winners[0].lease_generation, 1);
        assert!(
            store
                .complete_run(&Fence::of(&winners[0]), None, Timestamp::now(), false)
                .await
                .expect("complete")
        );
    }
}

/// Contract: concurrent claims respect concurrency keys.
pub async fn concurrent_claims_respect_concurrency_keys(store: Arc<dyn Store>) {
    for round in 0..10 {
        let t = Timestamp::now();
        let a = enqueue(&store, keyed("same-key-a", "group-1"), t).await;
        let b = enqueue(&store, keyed("same-key-b", "group-1"), t).await;
        let other = enqueue(&store, keyed("other-key", "group-2"), t).await;
        let claims: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .claim(&format!("worker-{w}"), Timestamp::now(), LEASE, 1)
                        .await
                })
            })
            .collect();
        let winners: Vec<crate::Run> = futures::future::join_all(claims)
            .await
            .into_iter()
            .flat_map(|r| r.expect("task").expect("claim"))
            .collect();
        let group_1: Vec<&crate::Run> = winners
            .iter()
            .filter(|r| r.concurrency_key.as_deref() == Some("group-1"))
            .collect();
        assert_eq!(
            winners.len(),
            2,
            "round {round}: one winner per key: {winners:?}"
        );
        assert_eq!(group_1.len(), 1);
        assert_eq!(group_1[0].id, a.id, "the older group-1 run");
        assert!(winners.iter().any(|r| r.id == other.id));
        for winner in &winners {
            assert!(
                store
                    .complete_run(&Fence::of(winner), None, Timestamp::now(), false)
                    .await
                    .expect("complete")
            );
        }
        let drained = claim(&store, "drain", Timestamp::now(), LEASE)
            .await
            .expect("b");
        assert_eq!(drained.id, b.id);
        assert!(
            store
                .complete_run(&Fence::of(&drained), None, Timestamp::now(), false)
                .await
                .expect("complete")
        );
        assert!(
            claim(&store, "drain", Timestamp::now(), LEASE)
                .await
                .is_none()
        );
    }
}
