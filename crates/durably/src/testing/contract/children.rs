//! Contract: child runs ([`NewRun::parent_run_id`], [`NewRun::parent_wait_id`]). The link is
//! stored and read back, listed per parent ([`RunFilter::parent_run_id`]), and a batch of
//! children keeps it; [`Store::children_settled`] and [`Store::settled_children_waits`] tell
//! when the children of a parent's wait are settled (all completed, or one failed or was
//! cancelled), the latter only for waits a run was suspended on.

use super::*;
use crate::store::{CHILDREN_WAIT_PREFIX, Transition};
use crate::waits::{DurableWait, NewWait};

/// A claimed parent with its prepared `children:fan` wait.
async fn parent_with_wait(store: &Arc<dyn Store>) -> (crate::Run, Fence, DurableWait) {
    let now = Timestamp::now();
    let parent = enqueue(store, new_run("parent", json!({})), now).await;
    let claimed = store
        .claim(&ClaimRequest::new("w", LEASE, 1), now)
        .await
        .expect("claim")
        .pop()
        .expect("claimed");
    assert_eq!(claimed.id, parent.id);
    let fence = Fence {
        may_have_waits: true,
        ..Fence::of(&claimed)
    };
    let wait = store
        .prepare_wait(
            &fence,
            NewWait::new(format!("{CHILDREN_WAIT_PREFIX}fan")),
            Timestamp::now(),
        )
        .await
        .expect("prepare_wait")
        .expect("the lease holds");
    (claimed, fence, wait)
}

fn child(parent: &crate::Run, wait: &DurableWait, i: usize) -> NewRun {
    NewRun {
        idempotency_key: Some(format!("child:{}:fan:{i}", parent.id)),
        parent_run_id: Some(parent.id.clone()),
        parent_wait_id: Some(wait.id.clone()),
        ..new_run("child", json!({ "i": i }))
    }
}

/// Claims every claimable run (the children just enqueued), by id.
async fn claim_all(store: &Arc<dyn Store>) -> std::collections::HashMap<String, crate::Run> {
    store
        .claim(&ClaimRequest::new("w", LEASE, 100), Timestamp::now())
        .await
        .expect("claim")
        .into_iter()
        .map(|run| (run.id.clone(), run))
        .collect()
}

/// Ends the claimed run `id` of `claimed` with `transition`.
async fn end(
    store: &Arc<dyn Store>,
    claimed: &std::collections::HashMap<String, crate::Run>,
    id: &str,
    transition: Transition,
) {
    let run = claimed.get(id).unwrap_or_else(|| panic!("{id} claimed"));
    let landed = store
        .finish_run(&Fence::of(run), transition, Timestamp::now(), None)
        .await
        .expect("finish_run")
        .landed;
    assert!(landed);
}

/// Contract: children keep their link through `enqueue_many` (and an idempotent replay of the
/// batch returns the same runs), are listed per parent, and other runs have no link.
pub async fn children_are_linked_and_listed_per_parent(store: Arc<dyn Store>) {
    let (parent, _fence, wait) = parent_with_wait(&store).await;
    let batch: Vec<NewRun> = (0..3).map(|i| child(&parent, &wait, i)).collect();
    let created = store
        .enqueue_many(batch.clone(), Timestamp::now())
        .await
        .expect("enqueue_many");
    for run in &created {
        assert_eq!(run.disposition, Disposition::Created);
        assert_eq!(run.run.parent_run_id.as_deref(), Some(parent.id.as_str()));
        assert_eq!(run.run.parent_wait_id.as_deref(), Some(wait.id.as_str()));
        let stored = get(&store, &run.run.id).await;
        assert_eq!(stored.parent_run_id.as_deref(), Some(parent.id.as_str()));
        assert_eq!(stored.parent_wait_id.as_deref(), Some(wait.id.as_str()));
    }
    let again = store
        .enqueue_many(batch, Timestamp::now())
        .await
        .expect("enqueue_many again");
    for (first, second) in created.iter().zip(&again) {
        assert_eq!(second.disposition, Disposition::Idempotent);
        assert_eq!(second.run.id, first.run.id);
    }
    let listed = store
        .get_runs(&RunFilter::new().parent_run_id(parent.id.clone()))
        .await
        .expect("get_runs");
    let mut listed: Vec<String> = listed.into_iter().map(|run| run.id).collect();
    listed.sort();
    let mut expected: Vec<String> = created.iter().map(|e| e.run.id.clone()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let parent_now = get(&store, &parent.id).await;
    assert_eq!(parent_now.parent_run_id, None);
    assert_eq!(parent_now.parent_wait_id, None);
    let none = store
        .get_runs(
            &RunFilter::new()
                .parent_run_id(parent.id.clone())
                .status(RunStatus::Completed),
        )
        .await
        .expect("get_runs");
    assert!(none.is_empty());
}

/// Contract: the children of a wait are settled once all completed, or as soon as one failed
/// (or was cancelled); the sweep's query lists a settled wait only once its run was suspended
/// on it, and no longer once it is resolved.
pub async fn children_settle_when_all_end_or_one_fails(store: Arc<dyn Store>) {
    let (parent, fence, wait) = parent_with_wait(&store).await;
    let children = store
        .enqueue_many(
            (0..3).map(|i| child(&parent, &wait, i)).collect(),
            Timestamp::now(),
        )
        .await
        .expect("enqueue_many");
    let settled = || store.children_settled(&parent.id, &wait.id);
    assert!(!settled().await.expect("settled"), "three pending children");
    let transition = Transition::Wait {
        wait_id: wait.id.clone(),
    };
    let suspended = store
        .finish_run(&fence, transition, Timestamp::now(), None)
        .await
        .expect("suspend")
        .landed;
    assert!(suspended);
    let claimed = claim_all(&store).await;
    assert!(
        store
            .settled_children_waits(10)
            .await
            .expect("sweep")
            .is_empty()
    );
    end(
        &store,
        &claimed,
        &children[0].run.id,
        Transition::Complete {
            output: Some(json!(1)),
        },
    )
    .await;
    assert!(!settled().await.expect("settled"), "two unfinished");
    end(
        &store,
        &claimed,
        &children[1].run.id,
        Transition::Fail {
            error: "boom".into(),
        },
    )
    .await;
    assert!(settled().await.expect("settled"), "a failure settles them");
    let swept = store.settled_children_waits(10).await.expect("sweep");
    assert_eq!(swept, vec![wait.id.clone()]);
    store
        .signal_wait(&wait.id, Value::Null, "children", Timestamp::now())
        .await
        .expect("signal");
    assert!(
        store
            .settled_children_waits(10)
            .await
            .expect("sweep")
            .is_empty(),
        "a resolved wait is not listed"
    );
}

/// Contract: a wait all of whose children completed is settled; a cancelled child settles too.
pub async fn children_settle_when_all_complete_or_one_is_cancelled(store: Arc<dyn Store>) {
    let (parent, _fence, wait) = parent_with_wait(&store).await;
    let children = store
        .enqueue_many(
            (0..2).map(|i| child(&parent, &wait, i)).collect(),
            Timestamp::now(),
        )
        .await
        .expect("enqueue_many");
    let claimed = claim_all(&store).await;
    for enqueued in &children {
        end(
            &store,
            &claimed,
            &enqueued.run.id,
            Transition::Complete { output: None },
        )
        .await;
    }
    assert!(
        store
            .children_settled(&parent.id, &wait.id)
            .await
            .expect("settled")
    );
    let (other, _fence, other_wait) = parent_with_wait(&store).await;
    let others = store
        .enqueue_many(
            (0..2).map(|i| child(&other, &other_wait, i)).collect(),
            Timestamp::now(),
        )
        .await
        .expect("enqueue_many");
    assert!(
        !store
            .children_settled(&other.id, &other_wait.id)
            .await
            .expect("settled")
    );
    assert!(
        store
            .cancel_run(&others[1].run.id, Timestamp::now())
            .await
            .expect("cancel")
    );
    assert!(
        store
            .children_settled(&other.id, &other_wait.id)
            .await
            .expect("settled")
    );
}

/// Contract: once a parent is cancelled, its unfinished children are listed to be cancelled
/// with it, oldest first, except those of an invoke whose wait says `"cancelWithParent":
/// false`; ended children and the children of a parent that is not cancelled are not.
pub async fn children_of_a_cancelled_parent_are_listed_to_cancel(store: Arc<dyn Store>) {
    let (parent, fence, wait) = parent_with_wait(&store).await;
    let detached_wait = store
        .prepare_wait(
            &fence,
            NewWait::new(format!("{CHILDREN_WAIT_PREFIX}detached"))
                .metadata(crate::children::children_metadata("child", 1, false)),
            Timestamp::now(),
        )
        .await
        .expect("prepare_wait")
        .expect("the lease holds");
    let children = store
        .enqueue_many(
            (0..3).map(|i| child(&parent, &wait, i)).collect(),
            Timestamp::now(),
        )
        .await
        .expect("enqueue_many");
    let detached = enqueue(
        &store,
        NewRun {
            parent_run_id: Some(parent.id.clone()),
            parent_wait_id: Some(detached_wait.id.clone()),
            ..new_run("child", json!({ "detached": true }))
        },
        Timestamp::now(),
    )
    .await;
    let claimed = claim_all(&store).await;
    assert!(claimed.contains_key(&detached.id));
    end(
        &store,
        &claimed,
        &children[0].run.id,
        Transition::Complete { output: None },
    )
    .await;
    let listed = || store.children_to_cancel(Timestamp::from_millis(0), 10);
    assert!(
        listed().await.expect("children_to_cancel").is_empty(),
        "the parent is not cancelled"
    );
    assert!(
        store
            .cancel_run(&parent.id, Timestamp::now())
            .await
            .expect("cancel parent")
    );
    let expected: Vec<String> = children[1..].iter().map(|e| e.run.id.clone()).collect();
    assert_eq!(listed().await.expect("children_to_cancel"), expected);
    let cancelled_at = get(&store, &parent.id)
        .await
        .completed_at
        .expect("a cancelled run has completed_at");
    assert_eq!(
        store
            .children_to_cancel(cancelled_at, 10)
            .await
            .expect("since the cancel"),
        expected,
        "a parent cancelled at `cancelled_since` counts"
    );
    assert!(
        store
            .children_to_cancel(cancelled_at + std::time::Duration::from_millis(1), 10)
            .await
            .expect("after the cancel")
            .is_empty(),
        "a parent cancelled before `cancelled_since` does not"
    );
    assert_eq!(
        store
            .children_to_cancel(Timestamp::from_millis(0), 1)
            .await
            .expect("limit 1"),
        expected[..1].to_vec()
    );
    for id in &expected {
        assert!(
            store
                .cancel_run(id, Timestamp::now())
                .await
                .expect("cancel")
        );
    }
    assert!(
        listed().await.expect("children_to_cancel").is_empty(),
        "cancelled children and the detached one are not listed"
    );
}
