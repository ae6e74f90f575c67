//! Contract: resuming a failed run ([`Store::resume_run`]): the run goes back to `pending`
//! under its own id with its completed steps (a failed run keeps them whatever the step
//! policy) and the waits its failure closed; only a failed run, atomically, fenced against the
//! worker that held it before.

use super::*;
use crate::waits::{NewWait, WaitOutcome, WaitStatus};

/// A run of `job` claimed by `worker` at `now` with one completed step `s`, then failed.
async fn failed_with_a_step(store: &Arc<dyn Store>, run: NewRun, now: Timestamp) -> crate::Run {
    let created = enqueue(store, run, now).await;
    let leased = claim(store, "worker-a", now, LEASE).await.expect("claimed");
    assert_eq!(leased.id, created.id);
    store
        .persist_step(
            &Fence::of(&leased),
            step("s", 0, StepStatus::Completed, Some(json!(1)), now),
            now,
        )
        .await
        .expect("persist")
        .expect("fence holds");
    assert!(
        store
            .fail_run(&Fence::of(&leased), "boom", now)
            .await
            .expect("fail")
    );
    leased
}

fn conflict_text(result: crate::Result<crate::Run>) -> String {
    match result {
        Err(Error::Conflict(message)) => message,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Contract: a failed run goes back to `pending` under its own id: error, completion and lease
/// cleared, `lease_generation` and `started_at` kept, its completed steps kept (even by a store
/// that does not preserve steps); the next claim takes it under a new generation, so the
/// worker that held it before the failure stays fenced out.
pub async fn resume_run_puts_a_failed_run_back_to_pending(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let leased = failed_with_a_step(&store, new_run("job", json!({"n": 1})), t0).await;
    let failed = get(&store, &leased.id).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(
        store.get_steps(&leased.id).await.expect("steps").len(),
        1,
        "a failed run keeps its steps whatever the step policy"
    );

    let at = t0 + ms(50);
    let resumed = store.resume_run(&leased.id, at).await.expect("resume");
    assert_eq!(
        resumed,
        get(&store, &leased.id).await,
        "returns the stored row"
    );
    assert_eq!(resumed.id, leased.id);
    assert_eq!(resumed.status, RunStatus::Pending);
    assert_eq!(resumed.error, None);
    assert_eq!(resumed.output, None);
    assert_eq!(resumed.completed_at, None);
    assert_eq!(resumed.lease_owner, None);
    assert_eq!(resumed.lease_expires_at, None);
    assert_eq!(resumed.lease_generation, leased.lease_generation);
    assert_eq!(resumed.started_at, failed.started_at, "first start kept");
    assert_eq!(resumed.input, json!({"n": 1}));
    assert_eq!(resumed.updated_at, at);
    assert_eq!(resumed.created_at, failed.created_at);
    let replayable = store
        .get_completed_step(&leased.id, "s")
        .await
        .expect("get_completed_step")
        .expect("the completed step is there to replay");
    assert_eq!(replayable.output, Some(json!(1)));

    // Resuming again: it is pending now.
    let again = conflict_text(store.resume_run(&leased.id, at).await);
    assert!(
        again.contains(&leased.id) && again.contains("pending"),
        "{again}"
    );

    let reclaimed = claim(&store, "worker-b", at, LEASE)
        .await
        .expect("the resumed run is claimable");
    assert_eq!(reclaimed.id, leased.id);
    assert_eq!(reclaimed.lease_generation, leased.lease_generation + 1);
    // The worker that held it before the failure is fenced out.
    assert!(
        store
            .persist_step(
                &Fence::of(&leased),
                step("late", 1, StepStatus::Completed, None, at),
                at,
            )
            .await
            .expect("persist")
            .is_none()
    );
    assert!(
        !store
            .complete_run(&Fence::of(&leased), None, at)
            .await
            .expect("complete")
    );
    // The new holder completes it: the steps go as for any completion.
    assert!(
        store
            .complete_run(&Fence::of(&reclaimed), Some(json!("done")), at)
            .await
            .expect("complete")
    );
    let done = get(&store, &leased.id).await;
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.output, Some(json!("done")));
    assert_eq!(
        store.get_steps(&leased.id).await.expect("steps").len(),
        kept(&store, 1)
    );
}

/// Contract: only a failed run is resumed: pending, leased, completed and cancelled runs are a
/// conflict naming the run and its status, and nothing changes; an unknown id is not found; a
/// run whose job and concurrency key already have a pending run is a conflict until that run
/// leaves `pending`. Deleting a failed run removes the steps it kept.
pub async fn resume_run_refuses_runs_that_are_not_failed(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let unknown = store.resume_run("no-such-run", t0).await;
    match unknown {
        Err(Error::NotFound(message)) => assert!(message.contains("no-such-run"), "{message}"),
        other => panic!("expected not found, got {other:?}"),
    }

    // One pending run per job and key: a resume waits until the other one has started.
    let keyed_failed = failed_with_a_step(&store, keyed("k-job", "k"), t0).await;
    let blocker = enqueue(&store, keyed("k-job", "k"), t0 + ms(1)).await;
    let message = conflict_text(store.resume_run(&keyed_failed.id, t0 + ms(2)).await);
    assert!(
        message.contains(&keyed_failed.id) && message.contains("\"k\""),
        "{message}"
    );
    assert_eq!(
        get(&store, &keyed_failed.id).await.status,
        RunStatus::Failed
    );
    let started = claim(&store, "w", t0 + ms(3), LEASE)
        .await
        .expect("claimed");
    assert_eq!(started.id, blocker.id);
    let resumed = store
        .resume_run(&keyed_failed.id, t0 + ms(4))
        .await
        .expect("the key has no pending run any more");
    assert_eq!(resumed.status, RunStatus::Pending);
    assert!(
        store
            .complete_run(&Fence::of(&started), None, t0 + ms(5))
            .await
            .expect("complete")
    );
    let completed = get(&store, &blocker.id).await;
    let again = claim(&store, "w", t0 + ms(6), LEASE)
        .await
        .expect("claimed");
    assert_eq!(again.id, keyed_failed.id);
    assert!(
        store
            .fail_run(&Fence::of(&again), "boom again", t0 + ms(7))
            .await
            .expect("fail")
    );

    // A failed run that is deleted takes its kept steps with it.
    let other = failed_with_a_step(&store, new_run("del", json!({})), t0 + ms(8)).await;
    assert!(store.delete_run(&other.id).await.expect("delete"));
    assert!(store.get_steps(&other.id).await.expect("steps").is_empty());

    let cancelled = enqueue(&store, new_run("gone", json!({})), t0 + ms(9)).await;
    assert!(
        store
            .cancel_run(&cancelled.id, t0 + ms(9))
            .await
            .expect("cancel")
    );
    enqueue(&store, new_run("busy", json!({})), t0 + ms(10)).await;
    let running = claim(&store, "w", t0 + ms(10), LEASE)
        .await
        .expect("claimed");
    let pending = enqueue(&store, new_run("queued", json!({})), t0 + ms(11)).await;

    for (id, status) in [
        (&completed.id, RunStatus::Completed),
        (&cancelled.id, RunStatus::Cancelled),
        (&running.id, RunStatus::Leased),
        (&pending.id, RunStatus::Pending),
    ] {
        let before = get(&store, id).await;
        assert_eq!(before.status, status);
        let message = conflict_text(store.resume_run(id, t0 + ms(12)).await);
        assert!(
            message.contains(id.as_str()) && message.contains(status.as_str()),
            "{message}"
        );
        assert_eq!(get(&store, id).await, before, "nothing changed");
    }
}

/// Contract: the waits a failure closed go back to `pending` when the run is resumed (resolved
/// time cleared, so the replay's wait waits again); resolved waits keep their result; a
/// reopened wait whose deadline passed meanwhile is expired by the sweep as usual.
pub async fn resume_run_reopens_the_waits_its_failure_closed(store: Arc<dyn Store>) {
    let now = Timestamp::now();
    let created = enqueue(&store, new_run("job", json!({})), now).await;
    let leased = claim(&store, "w", now, LEASE).await.expect("claimed");
    assert_eq!(leased.id, created.id);
    let fence = Fence {
        may_have_waits: true,
        ..Fence::of(&leased)
    };
    let prepare = |wait: NewWait| {
        let (store, fence) = (store.clone(), fence.clone());
        async move {
            store
                .prepare_wait(&fence, wait, Timestamp::now())
                .await
                .expect("prepare_wait")
                .expect("the lease holds")
        }
    };
    let open = prepare(NewWait::new("open")).await;
    let done = prepare(NewWait::new("done")).await;
    let due = prepare(NewWait::new("due").timeout(ms(1))).await;
    store
        .signal_wait(&done.id, json!(1), "s", Timestamp::now())
        .await
        .expect("signal");
    let resolved = store.get_wait(&done.id).await.expect("get").expect("wait");
    assert!(
        store
            .fail_run(&fence, "boom", Timestamp::now())
            .await
            .expect("fail")
    );
    let closed = store.get_wait(&open.id).await.expect("get").expect("wait");
    assert_eq!(closed.status, WaitStatus::Closed);

    // The short deadline passes while the run is failed.
    tokio::time::sleep(ms(25)).await;
    store
        .resume_run(&leased.id, Timestamp::now())
        .await
        .expect("resume");
    let reopened = store.get_wait(&open.id).await.expect("get").expect("wait");
    assert_eq!(reopened.status, WaitStatus::Pending);
    assert_eq!(reopened.resolved_at, None);
    assert_eq!(reopened.outcome, None);
    assert_eq!(reopened.name, "open");
    assert_eq!(
        store.get_wait(&done.id).await.expect("get").expect("wait"),
        resolved,
        "a resolved wait keeps its result"
    );
    let due_now = store.get_wait(&due.id).await.expect("get").expect("wait");
    assert_eq!(due_now.status, WaitStatus::Pending);
    assert!(
        store
            .expire_due_waits(Timestamp::now(), 10)
            .await
            .expect("sweep")
            >= 1
    );
    let expired = store.get_wait(&due.id).await.expect("get").expect("wait");
    assert_eq!(expired.status, WaitStatus::Resolved);
    assert_eq!(expired.outcome, Some(WaitOutcome::Timeout));
    assert_eq!(
        store
            .get_wait(&open.id)
            .await
            .expect("get")
            .expect("wait")
            .status,
        WaitStatus::Pending,
        "a wait without a deadline stays pending"
    );

    // The replay finds the reopened wait by name and can suspend on it.
    let reclaimed = claim(&store, "w2", Timestamp::now(), LEASE)
        .await
        .expect("claimed");
    assert_eq!(reclaimed.id, leased.id);
    let fence = Fence {
        may_have_waits: true,
        ..Fence::of(&reclaimed)
    };
    let again = store
        .prepare_wait(&fence, NewWait::new("open"), Timestamp::now())
        .await
        .expect("prepare_wait")
        .expect("the lease holds");
    assert_eq!(again.id, open.id);
    let suspended = store
        .finish_run(
            &fence,
            crate::store::Transition::Wait {
                wait_id: open.id.clone(),
            },
            Timestamp::now(),
            None,
        )
        .await
        .expect("suspend");
    assert!(suspended.landed);
    assert_eq!(get(&store, &leased.id).await.status, RunStatus::Waiting);
}
