//! Contract: run priorities ([`NewRun::priority`]). Claims take the claimable runs of higher
//! priority first and the oldest first within a priority, whether a run is pending, holds an
//! expired lease or waits on a resolved wait; a priority never lets a run past a key that an
//! unexpired lease holds.

use super::*;
use crate::store::Transition;
use crate::waits::NewWait;

fn prioritized(job: &str, priority: i32) -> NewRun {
    NewRun {
        priority,
        ..new_run(job, json!({}))
    }
}

async fn claim_ids(store: &Arc<dyn Store>, max: usize, now: Timestamp) -> Vec<String> {
    store
        .claim(&ClaimRequest::new("w", LEASE, max), now)
        .await
        .expect("claim")
        .into_iter()
        .map(|run| run.id)
        .collect()
}

/// Contract: claims take higher priorities first, the oldest first within one, and the
/// priority is stored with the run.
pub async fn claims_take_higher_priority_first_then_the_oldest(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let mut runs = Vec::new();
    for (i, priority) in [0, 5, -3, 5, 0, 7].into_iter().enumerate() {
        let run = enqueue(&store, prioritized("job", priority), t0 + ms(i as u64)).await;
        assert_eq!(run.priority, priority, "returned with its priority");
        assert_eq!(get(&store, &run.id).await.priority, priority, "stored");
        runs.push(run.id);
    }
    let now = t0 + ms(100);
    // One claim call hands them out in claim order; so do single claims.
    let first_three = claim_ids(&store, 3, now).await;
    assert_eq!(
        first_three,
        [runs[5].as_str(), runs[1].as_str(), runs[3].as_str()]
    );
    let mut rest = Vec::new();
    while let Some(run) = claim(&store, "w", now, LEASE).await {
        rest.push(run.id);
    }
    assert_eq!(rest, [runs[0].as_str(), runs[4].as_str(), runs[2].as_str()]);

    // A batch enqueue keeps each run's priority.
    let batch = store
        .enqueue_many(
            vec![
                prioritized("job", -1),
                prioritized("job", 2),
                prioritized("job", 0),
            ],
            now,
        )
        .await
        .expect("enqueue_many");
    let ids: Vec<&str> = batch.iter().map(|e| e.run.id.as_str()).collect();
    assert_eq!(batch[1].run.priority, 2);
    assert_eq!(
        claim_ids(&store, 3, now + ms(1)).await,
        [ids[1], ids[2], ids[0]]
    );
}

/// Contract: an expired lease and a resumable waiting run take their turn by priority too.
pub async fn expired_leases_and_resumable_runs_take_their_turn_by_priority(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    // An old run of priority 0 whose lease expires.
    let abandoned = enqueue(&store, new_run("job", json!({})), t0).await;
    let short = ms(50);
    let held = store
        .claim(&ClaimRequest::new("gone", short, 1), t0)
        .await
        .expect("claim")
        .pop()
        .expect("claimed");
    assert_eq!(held.id, abandoned.id);
    let urgent = enqueue(&store, prioritized("job", 1), t0 + ms(1)).await;
    let expired = t0 + short + ms(10);
    assert_eq!(
        claim_ids(&store, 2, expired).await,
        [urgent.id.as_str(), abandoned.id.as_str()],
        "the newer run of priority 1 before the older expired lease of priority 0"
    );

    // An old run of priority 0 waiting on a resolved wait, and a newer pending run of
    // priority 2: the pending one first.
    let waiter = enqueue(&store, new_run("waiter", json!({})), Timestamp::now()).await;
    let run = claim(&store, "w", Timestamp::now(), LEASE)
        .await
        .expect("claimed");
    assert_eq!(run.id, waiter.id);
    let fence = Fence {
        may_have_waits: true,
        ..Fence::of(&run)
    };
    let wait = store
        .prepare_wait(&fence, NewWait::new("go"), Timestamp::now())
        .await
        .expect("prepare_wait")
        .expect("the lease holds");
    let suspended = store
        .finish_run(
            &fence,
            Transition::Wait {
                wait_id: wait.id.clone(),
            },
            Timestamp::now(),
            None,
        )
        .await
        .expect("suspend");
    assert!(suspended.landed);
    store
        .signal_wait(&wait.id, json!({}), "s1", Timestamp::now())
        .await
        .expect("signal");
    let important = enqueue(&store, prioritized("job", 2), Timestamp::now()).await;
    let claimed = store
        .claim(
            &ClaimRequest {
                resume_waiting: true,
                ..ClaimRequest::new("w", LEASE, 2)
            },
            Timestamp::now(),
        )
        .await
        .expect("claim");
    let ids: Vec<&str> = claimed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [important.id.as_str(), waiter.id.as_str()]);
}

/// Contract: a run of high priority waits for its busy key like any other; when the key frees
/// up, the key's run of highest priority goes first (runs of one key span job names).
pub async fn a_priority_never_passes_a_busy_key(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    // A key of its own: on PostgreSQL a claim only tries a key's advisory lock, which is
    // database-wide, and skips the key while another test's claim holds it.
    let key = format!("priority-{}", ulid::Ulid::new());
    let key = key.as_str();
    let holder = enqueue(&store, keyed("job-a", key), t0).await;
    let running = claim(&store, "w", t0, LEASE).await.expect("claimed");
    assert_eq!(running.id, holder.id);
    let low = enqueue(&store, keyed("job-b", key), t0 + ms(1)).await;
    let high = enqueue(
        &store,
        NewRun {
            priority: 9,
            ..keyed("job-c", key)
        },
        t0 + ms(2),
    )
    .await;
    let free = enqueue(&store, prioritized("job-d", -1), t0 + ms(3)).await;
    let now = t0 + ms(10);
    assert_eq!(
        claim_ids(&store, 3, now).await,
        [free.id.as_str()],
        "the key is held: only the keyless run of priority -1 is claimable"
    );
    assert!(
        store
            .complete_run(&Fence::of(&running), None, now)
            .await
            .expect("complete")
    );
    assert_eq!(
        claim_ids(&store, 3, now).await,
        [high.id.as_str()],
        "one run per key"
    );
    let high_run = get(&store, &high.id).await;
    assert!(
        store
            .complete_run(&Fence::of(&high_run), None, now)
            .await
            .expect("complete")
    );
    assert_eq!(claim_ids(&store, 3, now).await, [low.id.as_str()]);
}
