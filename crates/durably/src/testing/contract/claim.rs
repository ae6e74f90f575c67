//! Contract: claims, leases, renewals and releases, and concurrent claimers.

use super::*;

/// Contract: claim leases the oldest runs.
pub async fn claim_leases_the_oldest_runs(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    assert!(
        store
            .claim(&ClaimRequest::new("w", LEASE, 5), t0)
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
    let claimed = store
        .claim(&ClaimRequest::new("worker-a", LEASE, 3), now)
        .await
        .expect("claim");
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
        .claim(&ClaimRequest::new("worker-b", LEASE, 10), now)
        .await
        .expect("claim");
    assert_eq!(rest.len(), 2);
    assert!(
        store
            .claim(&ClaimRequest::new("worker-c", LEASE, 10), now)
            .await
            .expect("claim")
            .is_empty()
    );
    assert!(
        store
            .claim(&ClaimRequest::new("worker-c", LEASE, 0), now)
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
            .complete_run(&old, Some(json!("a")), later)
            .await
            .expect("complete")
    );
    let row = get(&store, &run.id).await;
    assert_eq!(row.status, RunStatus::Leased);
    assert_eq!(row.output, None);
    assert!(
        store
            .complete_run(&new, Some(json!("b")), later)
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
    let claimed = store
        .claim(&ClaimRequest::new("w1", LEASE, 3), now)
        .await
        .expect("claim");
    let claimed_ids: Vec<&str> = claimed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(claimed_ids, [a.id.as_str(), c.id.as_str()]);
    assert!(
        claim(&store, "w2", now, LEASE).await.is_none(),
        "b is blocked by a"
    );
    assert!(
        store
            .complete_run(&Fence::of(&claimed[1]), None, now)
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
            .complete_run(&Fence::of(&reclaimed), None, expired)
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
    assert!(store.cancel_run(&run.id, t0 + ms(5)).await.expect("cancel"));
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
            .cancel_run(&second.id, t0 + ms(11))
            .await
            .expect("cancel")
    );
    let released = store.release_lease(&Fence::of(&held), t0 + ms(12)).await;
    assert!(released.expect("release"));
    assert_eq!(get(&store, &first.id).await.status, RunStatus::Pending);
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
                        .claim(
                            &ClaimRequest::new(format!("worker-{w}"), LEASE, 1),
                            Timestamp::now(),
                        )
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
                .complete_run(&Fence::of(&winners[0]), None, Timestamp::now())
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
                        .claim(
                            &ClaimRequest::new(format!("worker-{w}"), LEASE, 1),
                            Timestamp::now(),
                        )
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
                    .complete_run(&Fence::of(winner), None, Timestamp::now())
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
                .complete_run(&Fence::of(&drained), None, Timestamp::now())
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
