//! Contract: operator and maintenance operations: cancel, delete, expired leases, purge,
//! patches and listings.

use super::*;

/// Contract: cancel run only cancels active runs.
pub async fn cancel_run_only_cancels_active_runs(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let pending = enqueue(&store, new_run("job", json!({})), t0).await;
    let at = t0 + ms(50);
    assert!(store.cancel_run(&pending.id, at).await.expect("cancel"));
    let row = get(&store, &pending.id).await;
    assert_eq!(row.status, RunStatus::Cancelled);
    assert_eq!(row.completed_at, Some(at));
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert!(
        store
            .claim(&ClaimRequest::new("w", LEASE, 5), at)
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(
        !store
            .cancel_run(&pending.id, at)
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
            .cancel_run(&leased.id, at)
            .await
            .expect("cancel leased")
    );
    let row = get(&store, &leased.id).await;
    assert_eq!(row.status, RunStatus::Cancelled);
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert!(
        store.get_steps(&leased.id).await.expect("steps").len() == kept(&store, 1),
        "steps dropped with the cancel unless preserved"
    );
    assert_eq!(
        store.get_logs(&leased.id).await.expect("logs").len(),
        1,
        "logs stay"
    );
    // The former lease holder's writes are refused.
    assert!(
        !store
            .complete_run(&fence, None, at)
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
            .cancel_run("missing", at)
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
            .complete_run(&fence, None, t0)
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

/// Contract: release expired leases resets or fails.
pub async fn release_expired_leases_resets_or_fails(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let lone = enqueue(&store, keyed("job", "lone-key"), t0).await;
    let blocked = enqueue(&store, keyed("job", "shared-key"), t0 + ms(1)).await;
    let cross = enqueue(&store, keyed("job", "cross-key"), t0 + ms(2)).await;
    let fresh = enqueue(&store, new_run("job", json!({})), t0 + ms(3)).await;
    let short = ms(100);
    let claimed = store
        .claim(&ClaimRequest::new("w", short, 3), t0 + ms(10))
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
    let changed = store.release_expired_leases(now).await.expect("release");
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
            .release_expired_leases(now)
            .await
            .expect("again")
            .is_empty()
    );
}

/// Two runs of one job+key whose leases both expired: only the older may return to pending
/// (the pending-per-key index allows one); the younger fails. Unless the store preserves steps,
/// the failed run's steps go with it, and nothing else.
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
            concurrency_key: Some("k".into()),
            may_have_waits: false,
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
        .release_expired_leases(t0 + ms(500))
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
    assert_eq!(
        store.get_steps(&younger.id).await.expect("steps").len(),
        kept(&store, 1)
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
            .complete_run(&fence, None, completed_at)
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
            .complete_run(&Fence::of(&leased), None, t0 + ms(6))
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
