//! Contract: enqueues, idempotency and concurrency keys, batches, enqueue-and-claim.

use super::*;

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
        ..Default::default()
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

/// `enqueue_and_claim`: the enqueue and, only when it created a run, a claim of the oldest
/// claimable runs with the same `now`.
/// Contract: enqueue and claim claims only after creating a run.
pub async fn enqueue_and_claim_claims_only_after_creating_a_run(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let next = ClaimRequest {
        worker_id: "w".into(),
        lease: LEASE,
        max: 1,
        resume_waiting: true,
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
        resume_waiting: true,
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
