//! Contract: trace contexts ([`NewRun::trace_context`]). A run's trace context is stored as
//! given by every way of enqueueing it (one run, keyed or not, a batch with and without keys,
//! an enqueue that claims), and comes back with the run on every claim: the first, and the one
//! that takes the run over after its lease was given back, so that each execution of the run
//! continues the trigger's trace.

use super::*;

/// A `traceparent` value whose span id ends in `n`.
fn traceparent(n: u8) -> String {
    format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902{n:02x}-01")
}

fn traced(job: &str, n: u8) -> NewRun {
    NewRun {
        trace_context: Some(traceparent(n)),
        ..new_run(job, json!({ "n": n }))
    }
}

pub async fn a_stored_trace_context_comes_back_on_claim(store: Arc<dyn Store>) {
    let now = Timestamp::now();
    let one = enqueue(&store, traced("traced", 1), now).await;
    assert_eq!(one.trace_context, Some(traceparent(1)));
    let keyed = enqueue(
        &store,
        NewRun {
            concurrency_key: Some("k".into()),
            idempotency_key: Some("i".into()),
            ..traced("traced", 2)
        },
        now,
    )
    .await;
    // A batch without keys (one statement over arrays on PostgreSQL) and one with keys.
    let plain = store
        .enqueue_many(vec![traced("traced", 3), traced("traced", 4)], now)
        .await
        .expect("enqueue_many");
    let with_keys = store
        .enqueue_many(
            vec![NewRun {
                idempotency_key: Some("j".into()),
                ..traced("traced", 5)
            }],
            now,
        )
        .await
        .expect("enqueue_many with keys");
    let untraced = enqueue(&store, new_run("untraced", json!({})), now).await;
    assert_eq!(untraced.trace_context, None);

    let mut expected: Vec<(String, Option<String>)> = vec![
        (one.id.clone(), Some(traceparent(1))),
        (keyed.id.clone(), Some(traceparent(2))),
        (plain[0].run.id.clone(), Some(traceparent(3))),
        (plain[1].run.id.clone(), Some(traceparent(4))),
        (with_keys[0].run.id.clone(), Some(traceparent(5))),
        (untraced.id.clone(), None),
    ];
    for (id, context) in &expected {
        let stored = store.get_run(id).await.expect("get_run").expect("stored");
        assert_eq!(&stored.trace_context, context, "get_run of {id}");
    }

    // An enqueue that claims in the same write hands the context to its claim.
    let (enqueued, claimed_at_once) = store
        .enqueue_and_claim(traced("traced", 6), now, &ClaimRequest::new("w", LEASE, 1))
        .await
        .expect("enqueue_and_claim");
    assert_eq!(enqueued.run.trace_context, Some(traceparent(6)));
    for run in &claimed_at_once {
        if run.id == enqueued.run.id {
            assert_eq!(run.trace_context, Some(traceparent(6)));
        }
    }
    if claimed_at_once.iter().all(|run| run.id != enqueued.run.id) {
        expected.push((enqueued.run.id.clone(), Some(traceparent(6))));
    }
    let claimed = store
        .claim(&ClaimRequest::new("w", LEASE, 100), Timestamp::now())
        .await
        .expect("claim");
    let mut claimed_ids = HashSet::new();
    for run in claimed.iter().chain(&claimed_at_once) {
        claimed_ids.insert(run.id.clone());
    }
    for (id, _) in &expected {
        assert!(claimed_ids.contains(id), "run {id} claimed");
    }
    for run in &claimed {
        let context = expected
            .iter()
            .find(|(id, _)| id == &run.id)
            .map(|(_, context)| context.clone());
        assert_eq!(
            Some(run.trace_context.clone()),
            context,
            "claim of {}",
            run.id
        );
    }

    // Given back and taken again (as after a crash): the next execution reads it too.
    let first = claimed
        .iter()
        .chain(&claimed_at_once)
        .find(|run| run.id == one.id)
        .expect("the first run claimed");
    assert!(
        store
            .release_lease(&Fence::of(first), Timestamp::now())
            .await
            .expect("release_lease")
    );
    let again = store
        .claim(&ClaimRequest::new("other", LEASE, 1), Timestamp::now())
        .await
        .expect("claim again");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, one.id);
    assert_eq!(again[0].lease_generation, first.lease_generation + 1);
    assert_eq!(again[0].trace_context, Some(traceparent(1)));
}
