//! Contract: the lease holder's fenced writes: steps, progress, logs, completion and failure.

use super::*;

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
    let claimed = store
        .claim(&ClaimRequest::new("w", LEASE, 2), t0 + ms(2))
        .await
        .expect("claim");
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
            .complete_run(&stale(&fence_keep), Some(json!({"ok": false})), at)
            .await
            .expect("complete")
    );
    let row = get(&store, &keep.id).await;
    assert_eq!(row.status, RunStatus::Leased);
    assert_eq!(row.output, None);
    assert_eq!(row.completed_at, None);

    assert!(
        store
            .complete_run(&fence_keep, Some(json!({"ok": true})), at)
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
        kept(&store, 1),
        "steps kept only by a store that preserves them"
    );
    // Terminal: not claimable, not cancellable, not completable again.
    assert!(
        !store
            .complete_run(&fence_keep, Some(json!(2)), at)
            .await
            .expect("complete")
    );
    assert!(!store.cancel_run(&keep.id, at).await.expect("cancel"));
    assert_eq!(
        get(&store, &keep.id).await.output,
        Some(json!({"ok": true}))
    );

    assert!(
        store
            .complete_run(&fence_drop, None, at)
            .await
            .expect("complete")
    );
    assert!(
        store.get_steps(&drop.id).await.expect("steps").len() == kept(&store, 1),
        "steps dropped in the same call unless preserved"
    );
    assert_eq!(get(&store, &drop.id).await.output, None);
    assert!(
        store
            .claim(&ClaimRequest::new("w", LEASE, 5), at + LEASE * 2)
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
        resume_waiting: true,
    };
    let at = t0 + ms(10);

    // The completion lands and the oldest pending run is leased in the same call.
    let (completed, claimed) = store
        .complete_run_and_claim(&Fence::of(&running), Some(json!({"ok": 1})), at, &next)
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
        .complete_run_and_claim(&stale(&Fence::of(handed)), None, at, &next)
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
        resume_waiting: true,
        ..next.clone()
    };
    let (completed, claimed) = store
        .complete_run_and_claim(&Fence::of(handed), None, at, &none)
        .await
        .expect("complete");
    assert!(completed && claimed.is_empty());
    let (completed, claimed) = store
        .complete_run_and_claim(
            &Fence::of(&claimed_run(&store, &third.id).await),
            None,
            at,
            &next,
        )
        .await
        .expect("complete");
    assert!(completed && claimed.is_empty());
    assert_eq!(get(&store, &third.id).await.status, RunStatus::Completed);
}

/// `complete_run_and_claim` around the run it completes: a run waiting for the completed run's
/// concurrency key is claimed in the same call (the fence carries the run's key,
/// [`Fence::concurrency_key`]), and a completed run whose own lease had expired is not claimed
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
        resume_waiting: true,
    };
    let at = t0 + ms(10);
    let (completed, claimed) = store
        .complete_run_and_claim(&Fence::of(&running), None, at, &next)
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
    let keyless = next.clone();
    let (completed, claimed) = store
        .complete_run_and_claim(&Fence::of(&short), None, after_expiry, &keyless)
        .await
        .expect("complete and claim");
    assert!(completed, "the fence still held");
    assert!(claimed.iter().all(|r| r.id != late.id), "{claimed:?}");
    let row = get(&store, &late.id).await;
    assert_eq!(row.status, RunStatus::Completed);
    assert_eq!(row.lease_generation, short.lease_generation);
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
            .fail_run(&Fence::of(&first), "stale failure", at)
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
            .fail_run(&Fence::of(&second), "step failed", at)
            .await
            .expect("fail")
    );
    let row = get(&store, &run.id).await;
    assert_eq!(row.status, RunStatus::Failed);
    assert_eq!(row.error.as_deref(), Some("step failed"));
    assert_eq!(row.completed_at, Some(at));
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_expires_at, None);
    assert_eq!(
        store.get_steps(&run.id).await.expect("steps").len(),
        1,
        "a failed run keeps its steps for a resume, whatever the step policy"
    );
    assert!(
        store
            .claim(&ClaimRequest::new("w", LEASE, 5), at + LEASE * 2)
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(!store.cancel_run(&run.id, at).await.expect("cancel"));

    // Even a store that does not preserve steps keeps them with the failure (for a resume).
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
            .fail_run(&Fence::of(&leased), "boom", at)
            .await
            .expect("fail")
    );
    assert_eq!(store.get_steps(&other.id).await.expect("steps").len(), 1);
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
            .complete_run(&fence, None, t0)
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
