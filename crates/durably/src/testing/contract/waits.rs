//! Contract: durable waits (upstream schema v3–4, v4 §3–4): prepared once per run and name,
//! fenced, signalled once per signal id, timed out by their deadline (a signal wins only
//! strictly before it), a run suspended on one holds no lease, slot nor key and is resumed by a
//! claim once its wait is resolved; cancel, completion and failure end pending waits.
//!
//! Wait times come from the database's clock (real time on SQLite and PostgreSQL), so these
//! tests pass `Timestamp::now()` and let deadlines of a millisecond pass with short real sleeps.

use super::*;
use crate::store::{Signalled, Transition};
use crate::waits::{DurableWait, NewWait, SignalDisposition, WaitOutcome, WaitResult, WaitStatus};

/// Sleeps long enough for a 1 ms deadline to pass on every clock involved.
async fn let_deadline_pass() {
    tokio::time::sleep(ms(25)).await;
}

async fn leased(store: &Arc<dyn Store>, run: NewRun) -> (crate::Run, Fence) {
    let now = Timestamp::now();
    let created = enqueue(store, run, now).await;
    let mut claimed = store
        .claim(&ClaimRequest::new("w", LEASE, 1), now)
        .await
        .expect("claim");
    let run = claimed.pop().expect("claimed");
    assert_eq!(run.id, created.id);
    // It prepares waits: ending it closes them.
    let fence = Fence {
        may_have_waits: true,
        ..Fence::of(&run)
    };
    (run, fence)
}

async fn prepare(store: &Arc<dyn Store>, fence: &Fence, wait: NewWait) -> DurableWait {
    store
        .prepare_wait(fence, wait, Timestamp::now())
        .await
        .expect("prepare_wait")
        .expect("the lease holds")
}

async fn wait_of(store: &Arc<dyn Store>, id: &str) -> DurableWait {
    store
        .get_wait(id)
        .await
        .expect("get_wait")
        .unwrap_or_else(|| panic!("wait {id} exists"))
}

async fn signal(
    store: &Arc<dyn Store>,
    wait_id: &str,
    payload: Value,
    signal_id: &str,
) -> crate::Result<Signalled> {
    store
        .signal_wait(wait_id, payload, signal_id, Timestamp::now())
        .await
}

async fn suspend(store: &Arc<dyn Store>, fence: &Fence, wait_id: &str) -> crate::Result<bool> {
    let transition = Transition::Wait {
        wait_id: wait_id.to_owned(),
    };
    Ok(store
        .finish_run(fence, transition, Timestamp::now(), None)
        .await?
        .landed)
}

fn message(result: crate::Result<impl std::fmt::Debug>) -> String {
    result.expect_err("an error").to_string()
}

/// Contract: a wait is prepared once per run and name (a replay returns it unchanged, its
/// deadline fixed), only under a live lease, and listed in creation order.
pub async fn waits_are_prepared_once_per_name_under_a_live_lease(store: Arc<dyn Store>) {
    let (run, fence) = leased(&store, new_run("job", json!({}))).await;
    let first = prepare(
        &store,
        &fence,
        NewWait::new("approve")
            .metadata(json!({"b": 1, "a": {"d": 2, "c": 3}}))
            .timeout_ms(60_000),
    )
    .await;
    assert_eq!(first.run_id, run.id);
    assert_eq!(first.name, "approve");
    assert_eq!(first.status, WaitStatus::Pending);
    assert_eq!(first.metadata, Some(json!({"a": {"c": 3, "d": 2}, "b": 1})));
    assert_eq!(
        first
            .deadline_at
            .map(|d| d.as_millis() - first.created_at.as_millis()),
        Some(60_000),
        "the deadline is the creation time plus the timeout"
    );
    assert_eq!(
        (
            first.outcome,
            first.payload.clone(),
            first.signal_id.clone()
        ),
        (None, None, None)
    );
    assert_eq!(
        (
            first.suspended_at,
            first.resolved_at,
            first.first_resumed_at
        ),
        (None, None, None)
    );
    assert_eq!(
        (first.input_wait_ms, first.execution_slot_wait_ms),
        (None, None)
    );

    // A replay: the same wait, whatever it asks now.
    tokio::time::sleep(ms(5)).await;
    let again = prepare(
        &store,
        &fence,
        NewWait::new("approve")
            .metadata(json!("other"))
            .timeout_ms(5),
    )
    .await;
    assert_eq!(again, first);

    let second = prepare(&store, &fence, NewWait::new("second")).await;
    assert_eq!(second.deadline_at, None);
    let listed: Vec<String> = store
        .get_waits(&run.id)
        .await
        .expect("get_waits")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(listed, [first.id.clone(), second.id.clone()]);
    assert_eq!(wait_of(&store, &first.id).await, first);
    assert_eq!(
        store.get_wait("no-such-wait").await.expect("get_wait"),
        None
    );
    assert!(
        store
            .get_waits("no-such-run")
            .await
            .expect("get_waits")
            .is_empty()
    );

    // Bad input: nothing written.
    for bad in [NewWait::new("  "), NewWait::new("x").timeout_ms(0)] {
        let refused = store.prepare_wait(&fence, bad, Timestamp::now()).await;
        assert!(matches!(refused, Err(Error::Validation(_))), "{refused:?}");
    }
    // Only under the lease: a stale fence, an expired lease.
    let stale_prepare = store
        .prepare_wait(&stale(&fence), NewWait::new("late"), Timestamp::now())
        .await
        .expect("prepare_wait");
    assert_eq!(stale_prepare, None);
    let expired = Timestamp::now() + LEASE + ms(1);
    let after_expiry = store
        .prepare_wait(&fence, NewWait::new("late"), expired)
        .await
        .expect("prepare_wait");
    assert_eq!(after_expiry, None);
    assert_eq!(
        store.get_waits(&run.id).await.expect("get_waits").len(),
        2,
        "nothing written"
    );
}

/// Contract: a signal resolves a pending wait once; the same signal again is a duplicate
/// (key order does not matter); any other signal is refused with nothing changed.
pub async fn signals_resolve_a_wait_once_per_signal_id(store: Arc<dyn Store>) {
    let (_, fence) = leased(&store, new_run("job", json!({}))).await;
    let wait = prepare(&store, &fence, NewWait::new("approve").timeout_ms(60_000)).await;

    assert!(matches!(
        signal(&store, &wait.id, json!(1), " ").await,
        Err(Error::Validation(m)) if m == "signalId must be non-empty"
    ));
    let unknown = signal(&store, "no-such-wait", json!(1), "s").await;
    assert!(
        matches!(&unknown, Err(Error::NotFound(m)) if m == "Wait not found: no-such-wait"),
        "{unknown:?}"
    );

    let accepted = signal(&store, &wait.id, json!({"ok": true, "by": "ann"}), "s1")
        .await
        .expect("signal");
    assert_eq!(accepted.disposition, SignalDisposition::Accepted);
    let resolved = accepted.wait;
    assert_eq!(resolved.status, WaitStatus::Resolved);
    assert_eq!(resolved.outcome, Some(WaitOutcome::Signal));
    assert_eq!(resolved.payload, Some(json!({"by": "ann", "ok": true})));
    assert_eq!(resolved.signal_id.as_deref(), Some("s1"));
    assert!(resolved.resolved_at.is_some());
    assert_eq!(wait_of(&store, &wait.id).await, resolved);
    // Never suspended: both durations zero.
    assert_eq!(
        (resolved.input_wait_ms, resolved.execution_slot_wait_ms),
        (Some(0), Some(0))
    );

    let duplicate = signal(&store, &wait.id, json!({"by": "ann", "ok": true}), "s1")
        .await
        .expect("duplicate");
    assert_eq!(duplicate.disposition, SignalDisposition::Duplicate);
    assert_eq!(duplicate.wait, resolved);

    let conflict = format!("Wait cannot accept this signal: {}", wait.id);
    for (payload, signal_id) in [(json!({"ok": false}), "s1"), (json!({"ok": true}), "s2")] {
        let refused = signal(&store, &wait.id, payload, signal_id).await;
        assert!(
            matches!(&refused, Err(Error::Conflict(m)) if *m == conflict),
            "{refused:?}"
        );
    }
    assert_eq!(wait_of(&store, &wait.id).await, resolved, "nothing changed");

    // The job reads the signal's payload; a `null` payload is a value.
    let result = store
        .wait_result(&fence, &wait.id, Timestamp::now())
        .await
        .expect("wait_result")
        .expect("the lease holds");
    assert_eq!(
        result.result(),
        Some(WaitResult::Signal {
            payload: json!({"by": "ann", "ok": true})
        })
    );
    let other = prepare(&store, &fence, NewWait::new("null")).await;
    signal(&store, &other.id, Value::Null, "n")
        .await
        .expect("signal");
    let null = wait_of(&store, &other.id).await;
    assert_eq!(null.payload, Some(Value::Null));
    assert_eq!(
        null.result(),
        Some(WaitResult::Signal {
            payload: Value::Null
        })
    );
}

/// Contract: a signal at or after the deadline resolves the wait as a timeout (committed) and
/// fails with `WaitExpired`; an overdue wait read by its run is a timeout too.
pub async fn a_deadline_wins_over_a_late_signal(store: Arc<dyn Store>) {
    let (run, fence) = leased(&store, new_run("job", json!({}))).await;
    let short = prepare(&store, &fence, NewWait::new("short").timeout_ms(1)).await;
    let long = prepare(&store, &fence, NewWait::new("long").timeout_ms(600_000)).await;
    let read = prepare(&store, &fence, NewWait::new("read").timeout_ms(1)).await;
    let_deadline_pass().await;

    let late = signal(&store, &short.id, json!(1), "s").await;
    assert!(
        matches!(&late, Err(Error::WaitExpired { wait_id }) if *wait_id == short.id),
        "{late:?}"
    );
    assert_eq!(message(late), format!("Wait expired: {}", short.id));
    let timed_out = wait_of(&store, &short.id).await;
    assert_eq!(timed_out.status, WaitStatus::Resolved);
    assert_eq!(timed_out.outcome, Some(WaitOutcome::Timeout));
    assert_eq!(
        timed_out.resolved_at, timed_out.deadline_at,
        "resolved at its deadline"
    );
    assert_eq!(
        (timed_out.payload.clone(), timed_out.signal_id.clone()),
        (None, None)
    );
    // Once timed out, always expired.
    let again = signal(&store, &short.id, json!(1), "s").await;
    assert!(matches!(again, Err(Error::WaitExpired { .. })), "{again:?}");

    // Before its deadline, a signal wins.
    let won = signal(&store, &long.id, json!(2), "s")
        .await
        .expect("signal");
    assert_eq!(won.disposition, SignalDisposition::Accepted);

    let result = store
        .wait_result(&fence, &read.id, Timestamp::now())
        .await
        .expect("wait_result")
        .expect("the lease holds");
    assert_eq!(result.result(), Some(WaitResult::Timeout));
    assert_eq!(
        wait_of(&store, &read.id).await.outcome,
        Some(WaitOutcome::Timeout)
    );
    assert_eq!(get(&store, &run.id).await.status, RunStatus::Leased);
}

/// Contract: a run reads only its own waits, under a live lease.
pub async fn wait_results_are_fenced_and_only_for_the_run_s_own_waits(store: Arc<dyn Store>) {
    let (_, fence_a) = leased(&store, new_run("a", json!({}))).await;
    let (_, fence_b) = leased(&store, new_run("b", json!({}))).await;
    let wait_b = prepare(&store, &fence_b, NewWait::new("x")).await;
    for id in [wait_b.id.as_str(), "no-such-wait"] {
        let refused = store.wait_result(&fence_a, id, Timestamp::now()).await;
        assert!(
            matches!(&refused, Err(Error::Validation(m)) if m == "Wait does not belong to this run"),
            "{refused:?}"
        );
    }
    let pending = store
        .wait_result(&fence_b, &wait_b.id, Timestamp::now())
        .await
        .expect("wait_result")
        .expect("the lease holds");
    assert_eq!(pending.status, WaitStatus::Pending);
    assert_eq!(pending.result(), None);
    let stale_read = store
        .wait_result(&stale(&fence_b), &wait_b.id, Timestamp::now())
        .await
        .expect("wait_result");
    assert_eq!(stale_read, None);
    // Suspending on another run's wait: refused, nothing written.
    let refused = suspend(&store, &fence_a, &wait_b.id).await;
    assert!(
        matches!(&refused, Err(Error::Conflict(m)) if m == "Wait is not available for this run"),
        "{refused:?}"
    );
    assert_eq!(get(&store, &fence_a.run_id).await.status, RunStatus::Leased);
}

/// Contract: a suspended run is `waiting`, holds no lease nor key, keeps its steps, refuses
/// its old fence, and is claimed again (generation + 1) only once its wait is resolved and
/// its key is free; the first resume is recorded once.
pub async fn a_suspended_run_holds_no_lease_and_resumes_once_resolved(store: Arc<dyn Store>) {
    let (run, fence) = leased(&store, keyed("job", "k")).await;
    let t = Timestamp::now();
    store
        .persist_step(
            &fence,
            step("one", 0, StepStatus::Completed, Some(json!(1)), t),
            t,
        )
        .await
        .expect("persist")
        .expect("fence holds");
    let wait = prepare(&store, &fence, NewWait::new("approve")).await;
    assert!(
        !suspend(&store, &stale(&fence), &wait.id)
            .await
            .expect("suspend")
    );
    assert!(suspend(&store, &fence, &wait.id).await.expect("suspend"));

    let waiting = get(&store, &run.id).await;
    assert_eq!(waiting.status, RunStatus::Waiting);
    assert_eq!(
        waiting.waiting_on_wait_id.as_deref(),
        Some(wait.id.as_str())
    );
    assert_eq!(
        (waiting.lease_owner.clone(), waiting.lease_expires_at),
        (None, None)
    );
    assert_eq!(waiting.lease_generation, run.lease_generation);
    assert_eq!(waiting.completed_at, None);
    assert_eq!(
        store.get_steps(&run.id).await.expect("steps").len(),
        1,
        "not ended"
    );
    let suspended = wait_of(&store, &wait.id).await;
    assert!(suspended.suspended_at.is_some());
    // The old execution's writes are refused.
    let late = step("two", 1, StepStatus::Completed, None, Timestamp::now());
    assert_eq!(
        store
            .persist_step(&fence, late, Timestamp::now())
            .await
            .expect("persist"),
        None
    );
    assert!(!suspend(&store, &fence, &wait.id).await.expect("suspend"));

    // Pending wait: nothing to claim; the key is free for another run of it.
    let now = Timestamp::now();
    assert!(
        store
            .claim(&ClaimRequest::new("w", LEASE, 5), now)
            .await
            .expect("claim")
            .is_empty()
    );
    let other = enqueue(&store, keyed("job", "k"), now).await;
    let (other_run, other_fence) = {
        let mut claimed = store
            .claim(&ClaimRequest::new("w", LEASE, 5), now)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        let run = claimed.pop().expect("claimed");
        assert_eq!(run.id, other.id);
        let fence = Fence::of(&run);
        (run, fence)
    };

    // Resolved, but the key is held: still waiting.
    signal(&store, &wait.id, json!("yes"), "s")
        .await
        .expect("signal");
    let now = Timestamp::now();
    assert!(
        store
            .claim(&ClaimRequest::new("w", LEASE, 5), now)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(get(&store, &run.id).await.status, RunStatus::Waiting);
    assert!(
        store
            .complete_run(&other_fence, None, now)
            .await
            .expect("complete")
    );
    assert_eq!(other_run.status, RunStatus::Leased);

    // Key free: resumed under a new generation.
    let mut resumed = store
        .claim(&ClaimRequest::new("w2", LEASE, 5), now)
        .await
        .expect("claim");
    assert_eq!(resumed.len(), 1);
    let resumed = resumed.pop().expect("claimed");
    assert_eq!(resumed.id, run.id);
    assert_eq!(resumed.status, RunStatus::Leased);
    assert_eq!(resumed.lease_generation, run.lease_generation + 1);
    assert_eq!(resumed.lease_owner.as_deref(), Some("w2"));
    assert_eq!(
        resumed.waiting_on_wait_id.as_deref(),
        Some(wait.id.as_str())
    );
    assert_eq!(resumed.started_at, run.started_at, "started_at kept");
    let after = wait_of(&store, &wait.id).await;
    let first_resumed = after.first_resumed_at.expect("first resume recorded");
    assert!(after.input_wait_ms.is_some());
    assert!(after.execution_slot_wait_ms.is_some());
    assert_eq!(after.suspended_at, suspended.suspended_at, "set once");

    // A reclaim after its lease expired keeps the first resume.
    let later = Timestamp::now() + LEASE + ms(1);
    let reclaimed = store
        .claim(&ClaimRequest::new("w3", LEASE, 5), later)
        .await
        .expect("claim");
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].lease_generation, run.lease_generation + 2);
    assert_eq!(
        wait_of(&store, &wait.id).await.first_resumed_at,
        Some(first_resumed)
    );
    // Its wait gives the signal's payload at once.
    let result = store
        .wait_result(&Fence::of(&reclaimed[0]), &wait.id, later)
        .await
        .expect("wait_result")
        .expect("the lease holds");
    assert_eq!(
        result.result(),
        Some(WaitResult::Signal {
            payload: json!("yes")
        })
    );
}

/// Contract: suspending on an overdue wait times it out first: the run is claimable at once.
pub async fn suspending_on_an_overdue_wait_times_it_out(store: Arc<dyn Store>) {
    let (run, fence) = leased(&store, new_run("job", json!({}))).await;
    let wait = prepare(&store, &fence, NewWait::new("soon").timeout_ms(1)).await;
    let_deadline_pass().await;
    // The slot the suspension frees claims in the same call: the run itself, resumable now.
    let next = ClaimRequest {
        worker_id: "w".into(),
        lease: LEASE,
        max: 5,
        resume_waiting: true,
    };
    let transition = Transition::Wait {
        wait_id: wait.id.clone(),
    };
    let finished = store
        .finish_run(&fence, transition, Timestamp::now(), Some(&next))
        .await
        .expect("suspend");
    assert!(finished.landed);
    let timed_out = wait_of(&store, &wait.id).await;
    assert_eq!(timed_out.outcome, Some(WaitOutcome::Timeout));
    assert!(timed_out.suspended_at.is_some());
    let claimed = finished.claimed;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, run.id);
    assert_eq!(claimed[0].lease_generation, run.lease_generation + 1);
    assert!(wait_of(&store, &wait.id).await.first_resumed_at.is_some());
}

/// Contract: the expiry sweep times out overdue pending waits (of live runs), earliest first,
/// at most `limit`, and refuses a zero limit.
pub async fn expire_due_waits_times_out_overdue_waits(store: Arc<dyn Store>) {
    let refused = store.expire_due_waits(Timestamp::now(), 0).await;
    assert!(
        matches!(&refused, Err(Error::Validation(m)) if m == "limit must be a positive safe integer"),
        "{refused:?}"
    );
    let mut waits = Vec::new();
    let mut runs = Vec::new();
    for job in ["a", "b", "c"] {
        let (run, fence) = leased(&store, new_run(job, json!({}))).await;
        // Long enough that the suspension lands before it (the run stays waiting).
        let timeout = if job == "c" { 600_000 } else { 200 };
        let wait = prepare(&store, &fence, NewWait::new("w").timeout_ms(timeout)).await;
        assert!(suspend(&store, &fence, &wait.id).await.expect("suspend"));
        waits.push(wait);
        runs.push(run);
        tokio::time::sleep(ms(2)).await;
    }
    tokio::time::sleep(ms(250)).await;
    assert_eq!(
        store
            .expire_due_waits(Timestamp::now(), 1)
            .await
            .expect("expire"),
        1
    );
    assert_eq!(
        wait_of(&store, &waits[0].id).await.outcome,
        Some(WaitOutcome::Timeout)
    );
    assert_eq!(
        wait_of(&store, &waits[1].id).await.status,
        WaitStatus::Pending
    );
    assert_eq!(
        store
            .expire_due_waits(Timestamp::now(), 100)
            .await
            .expect("expire"),
        1
    );
    assert_eq!(
        wait_of(&store, &waits[1].id).await.outcome,
        Some(WaitOutcome::Timeout)
    );
    assert_eq!(
        wait_of(&store, &waits[2].id).await.status,
        WaitStatus::Pending
    );
    let mut claimed: Vec<String> = store
        .claim(&ClaimRequest::new("w", LEASE, 5), Timestamp::now())
        .await
        .expect("claim")
        .into_iter()
        .map(|r| r.id)
        .collect();
    claimed.sort();
    let mut expected = vec![runs[0].id.clone(), runs[1].id.clone()];
    expected.sort();
    assert_eq!(claimed, expected);
}

/// Contract: cancel ends a waiting run and cancels its pending waits (resolved ones keep their
/// result, and their signal stays a duplicate); completion and failure close pending waits.
pub async fn cancel_complete_and_fail_end_pending_waits(store: Arc<dyn Store>) {
    let (waiting, fence) = leased(&store, new_run("a", json!({}))).await;
    let done = prepare(&store, &fence, NewWait::new("done")).await;
    let open = prepare(&store, &fence, NewWait::new("open")).await;
    signal(&store, &done.id, json!(1), "s")
        .await
        .expect("signal");
    let resolved = wait_of(&store, &done.id).await;
    assert!(suspend(&store, &fence, &open.id).await.expect("suspend"));
    assert!(
        store
            .cancel_run(&waiting.id, Timestamp::now())
            .await
            .expect("cancel")
    );
    assert_eq!(get(&store, &waiting.id).await.status, RunStatus::Cancelled);
    let cancelled = wait_of(&store, &open.id).await;
    assert_eq!(cancelled.status, WaitStatus::Cancelled);
    assert_eq!(cancelled.outcome, None);
    assert!(cancelled.resolved_at.is_some());
    assert_eq!(wait_of(&store, &done.id).await, resolved, "kept its result");
    let refused = signal(&store, &open.id, json!(1), "s").await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    let duplicate = signal(&store, &done.id, json!(1), "s")
        .await
        .expect("duplicate");
    assert_eq!(duplicate.disposition, SignalDisposition::Duplicate);
    // A cancelled run is not claimable, whatever its waits.
    assert!(
        store
            .claim(&ClaimRequest::new("w", LEASE, 5), Timestamp::now())
            .await
            .expect("claim")
            .is_empty()
    );

    let (_, complete_fence) = leased(&store, new_run("b", json!({}))).await;
    let closed_by_completion = prepare(&store, &complete_fence, NewWait::new("x")).await;
    assert!(
        store
            .complete_run(&complete_fence, None, Timestamp::now())
            .await
            .expect("complete")
    );
    let (_, fail_fence) = leased(&store, new_run("c", json!({}))).await;
    let closed_by_failure = prepare(&store, &fail_fence, NewWait::new("x")).await;
    assert!(
        store
            .fail_run(&fail_fence, "boom", Timestamp::now())
            .await
            .expect("fail")
    );
    // An operator puts the completed run back under its lease: its closed wait cannot be
    // awaited nor suspended on.
    let back = RunPatch {
        status: Some(RunStatus::Leased),
        lease_expires_at: Some(Some(Timestamp::now() + LEASE)),
        ..RunPatch::default()
    };
    assert!(
        store
            .update_run(&complete_fence.run_id, back, Timestamp::now())
            .await
            .expect("update_run")
    );
    let closed = store
        .wait_result(&complete_fence, &closed_by_completion.id, Timestamp::now())
        .await;
    let expected = format!("Wait is already closed: {}", closed_by_completion.id);
    assert!(
        matches!(&closed, Err(Error::Conflict(m)) if *m == expected),
        "{closed:?}"
    );
    let refused = suspend(&store, &complete_fence, &closed_by_completion.id).await;
    assert!(
        matches!(&refused, Err(Error::Conflict(m)) if m == "Wait is not available for this run"),
        "{refused:?}"
    );
    for id in [&closed_by_completion.id, &closed_by_failure.id] {
        let closed = wait_of(&store, id).await;
        assert_eq!(closed.status, WaitStatus::Closed);
        assert_eq!(closed.outcome, None);
        assert!(closed.resolved_at.is_some());
        let refused = signal(&store, id, json!(1), "s").await;
        assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    }
}

/// Contract: maintenance leaves an expired lease of a run that prepared a wait alone (a claim
/// takes it back directly); deleting or purging a run deletes its waits.
pub async fn runs_with_waits_skip_lease_release_and_lose_their_waits_with_them(
    store: Arc<dyn Store>,
) {
    let (run, fence) = leased(&store, new_run("job", json!({}))).await;
    let wait = prepare(&store, &fence, NewWait::new("w")).await;
    let expired = Timestamp::now() + LEASE + ms(1);
    let released = store
        .release_expired_leases(expired)
        .await
        .expect("release");
    assert!(released.is_empty(), "{released:?}");
    assert_eq!(get(&store, &run.id).await.status, RunStatus::Leased);
    let reclaimed = store
        .claim(&ClaimRequest::new("w2", LEASE, 1), expired)
        .await
        .expect("claim");
    assert_eq!(reclaimed.len(), 1);
    let fence = Fence::of(&reclaimed[0]);
    assert!(
        store
            .complete_run(&fence, None, expired)
            .await
            .expect("complete")
    );
    assert!(store.delete_run(&run.id).await.expect("delete"));
    assert_eq!(store.get_wait(&wait.id).await.expect("get_wait"), None);
    assert!(
        store
            .get_waits(&run.id)
            .await
            .expect("get_waits")
            .is_empty()
    );

    let (purged, fence) = leased(&store, new_run("job", json!({}))).await;
    let purged_wait = prepare(&store, &fence, NewWait::new("w")).await;
    let now = Timestamp::now();
    assert!(store.fail_run(&fence, "boom", now).await.expect("fail"));
    assert_eq!(store.purge_runs(now + ms(1), 10).await.expect("purge"), 1);
    assert_eq!(
        store.get_wait(&purged_wait.id).await.expect("get_wait"),
        None
    );
    assert!(store.get_run(&purged.id).await.expect("get_run").is_none());
}

/// Contract: concurrent signals with different ids: exactly one is accepted, the others are
/// refused, and the wait holds the winner's payload.
pub async fn concurrent_signals_have_exactly_one_winner(store: Arc<dyn Store>) {
    let (_, fence) = leased(&store, new_run("job", json!({}))).await;
    let wait = prepare(&store, &fence, NewWait::new("approve").timeout_ms(600_000)).await;
    let signals = (0..8).map(|n| {
        let store = store.clone();
        let id = wait.id.clone();
        async move { signal(&store, &id, json!(n), &format!("s{n}")).await }
    });
    let results = within(
        "concurrent signals",
        Duration::from_secs(30),
        futures::future::join_all(signals),
    )
    .await;
    let winners: Vec<&Signalled> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, Error::Conflict(_))),
        "{results:?}"
    );
    let stored = wait_of(&store, &wait.id).await;
    assert_eq!(stored.payload, winners[0].wait.payload);
    assert_eq!(stored.signal_id, winners[0].wait.signal_id);
}
