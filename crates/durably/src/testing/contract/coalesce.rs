//! Contract: coalesce modes `skip`, `queue` and `active` (upstream v4 §7): the disposition
//! table, `active`'s order of preference, batches, and concurrent triggers.

use super::*;
use crate::store::Enqueued;

/// The runs a job already has with the key, before a keyed trigger (the rows of upstream v4
/// §7.1's table).
#[derive(Clone, Copy, Debug)]
enum Existing {
    Nothing,
    /// A completed, a failed and a cancelled run.
    Ended,
    Pending,
    /// Leased, its lease expiring after the trigger.
    Leased,
    /// A leased run, then a pending one.
    LeasedAndPending,
    Waiting,
    /// Leased, its lease expired at the trigger's time.
    ExpiredLease,
    /// Leased without a lease expiry.
    NullLease,
}

/// What a trigger must do.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Created,
    Conflict,
    /// Coalesced onto the existing run at this index.
    Reuse(usize),
}

fn mode_name(mode: Option<Coalesce>) -> &'static str {
    mode.map_or("none", Coalesce::as_str)
}

/// Sets `id`'s status, lease and completion through the operators' writes.
async fn set_state(
    store: &Arc<dyn Store>,
    id: &str,
    status: RunStatus,
    lease_expires_at: Option<Timestamp>,
    now: Timestamp,
) -> crate::Run {
    let ended = status.is_terminal();
    let leased = status == RunStatus::Leased;
    let patch = RunPatch {
        status: Some(status),
        lease_owner: Some(leased.then(|| "contract-worker".to_owned())),
        lease_expires_at: Some(lease_expires_at),
        completed_at: Some(ended.then_some(now)),
        ..RunPatch::default()
    };
    assert!(
        store.update_run(id, patch, now).await.expect("update_run"),
        "run {id} exists"
    );
    get(store, id).await
}

/// Fabricates `existing` for `job` and `key` (runs created one millisecond apart from `t0`),
/// returning the runs in creation order.
async fn fabricate(
    store: &Arc<dyn Store>,
    job: &str,
    key: &str,
    existing: Existing,
    t0: Timestamp,
    trigger_at: Timestamp,
) -> Vec<crate::Run> {
    let mut runs = Vec::new();
    let mut at = t0;
    let mut next = |status: Option<RunStatus>, expires: Option<Timestamp>| {
        at = at + ms(1);
        let created_at = at;
        async move {
            let run = enqueue(store, keyed(job, key), created_at).await;
            match status {
                None => run,
                Some(status) => set_state(store, &run.id, status, expires, created_at).await,
            }
        }
    };
    let live = Some(trigger_at + Duration::from_secs(60));
    match existing {
        Existing::Nothing => {}
        Existing::Ended => {
            for status in [
                RunStatus::Completed,
                RunStatus::Failed,
                RunStatus::Cancelled,
            ] {
                runs.push(next(Some(status), None).await);
            }
        }
        Existing::Pending => runs.push(next(None, None).await),
        Existing::Leased => runs.push(next(Some(RunStatus::Leased), live).await),
        Existing::LeasedAndPending => {
            runs.push(next(Some(RunStatus::Leased), live).await);
            runs.push(next(None, None).await);
        }
        Existing::Waiting => runs.push(next(Some(RunStatus::Waiting), None).await),
        Existing::ExpiredLease => runs.push(next(Some(RunStatus::Leased), Some(trigger_at)).await),
        Existing::NullLease => runs.push(next(Some(RunStatus::Leased), None).await),
    }
    runs
}

/// The runs of `job` with concurrency key `key`.
async fn runs_with_key(store: &Arc<dyn Store>, job: &str, key: &str) -> Vec<crate::Run> {
    store
        .get_runs(&RunFilter::new().job_name(job))
        .await
        .expect("get_runs")
        .into_iter()
        .filter(|run| run.concurrency_key.as_deref() == Some(key))
        .collect()
}

/// Checks one trigger's outcome against `want`; `existing` are the runs fabricated before it.
async fn check(
    store: &Arc<dyn Store>,
    what: &str,
    result: crate::Result<Enqueued>,
    want: Want,
    existing: &[crate::Run],
) {
    let (job, key) = match existing.first() {
        Some(run) => (
            run.job_name.clone(),
            run.concurrency_key.clone().unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    };
    match (want, result) {
        (Want::Created, Ok(enqueued)) => {
            assert_eq!(enqueued.disposition, Disposition::Created, "{what}");
            assert_eq!(enqueued.run.status, RunStatus::Pending, "{what}");
            assert!(
                existing.iter().all(|run| run.id != enqueued.run.id),
                "{what}: a new run"
            );
            assert_eq!(get(store, &enqueued.run.id).await, enqueued.run, "{what}");
        }
        (Want::Reuse(index), Ok(enqueued)) => {
            assert_eq!(enqueued.disposition, Disposition::Coalesced, "{what}");
            assert_eq!(enqueued.run, existing[index], "{what}: the run, unchanged");
            assert_eq!(
                get(store, &enqueued.run.id).await,
                existing[index],
                "{what}: stored unchanged"
            );
        }
        (Want::Conflict, Err(Error::Conflict(message))) => assert_eq!(
            message,
            format!(
                "A pending run already exists for concurrency key \"{key}\" in job \"{job}\". Use coalesce: 'skip', 'queue', or 'active' to return the existing run instead."
            ),
            "{what}"
        ),
        (want, got) => panic!("{what}: expected {want:?}, got {got:?}"),
    }
    if !existing.is_empty() {
        let created = usize::from(want == Want::Created);
        assert_eq!(
            runs_with_key(store, &job, &key).await.len(),
            existing.len() + created,
            "{what}: runs of the key"
        );
    }
}

/// Contract: every row of upstream v4 §7.1's disposition table, for no coalesce, `skip`,
/// `queue` and `active`: `skip` and `queue` coalesce onto a pending run only; `active` also
/// onto a leased run whose lease outlives the trigger, or a waiting run; ended runs and expired
/// or missing leases never count; a reused run is returned and stays unchanged.
pub async fn coalesce_modes_follow_the_disposition_table(store: Arc<dyn Store>) {
    use Existing::*;
    use Want::*;
    let t0 = Timestamp::now();
    let trigger_at = t0 + Duration::from_secs(1);
    let modes = [
        None,
        Some(Coalesce::Skip),
        Some(Coalesce::Queue),
        Some(Coalesce::Active),
    ];
    // Per row: the outcome without coalesce, with skip or queue, and with active.
    let table = [
        (Nothing, Created, Created, Created),
        (Ended, Created, Created, Created),
        (Pending, Conflict, Reuse(0), Reuse(0)),
        (Leased, Created, Created, Reuse(0)),
        (LeasedAndPending, Conflict, Reuse(1), Reuse(1)),
        (Waiting, Created, Created, Reuse(0)),
        (ExpiredLease, Created, Created, Created),
        (NullLease, Created, Created, Created),
    ];
    for (existing, plain, skip, active) in table {
        for mode in modes {
            let key = format!("{existing:?}-{}", mode_name(mode));
            let runs = fabricate(&store, "table-job", &key, existing, t0, trigger_at).await;
            let want = match mode {
                None => plain,
                Some(Coalesce::Active) => active,
                Some(_) => skip,
            };
            let request = NewRun {
                coalesce: mode,
                input: json!({"skipped": true}),
                labels: Labels::from([("from".to_owned(), "trigger".to_owned())]),
                ..keyed("table-job", &key)
            };
            let what = format!("{existing:?} with coalesce {}", mode_name(mode));
            let result = store.enqueue(request, trigger_at).await;
            check(&store, &what, result, want, &runs).await;
            if runs.is_empty() {
                let stored = runs_with_key(&store, "table-job", &key).await;
                assert_eq!(stored.len(), 1, "{what}: {stored:?}");
            }
        }
    }
}

/// Contract: `active` reuses the oldest pending run, else the oldest leased one whose lease
/// outlives the trigger, else the oldest waiting one, whatever their ages relative to each
/// other; only runs of the same job; an idempotency key still wins and label keys are still
/// validated first; an `active` trigger handed to `enqueue_and_claim` claims only when it
/// created its run.
pub async fn coalesce_active_prefers_pending_then_leased_then_waiting(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let now = t0 + Duration::from_secs(1);
    let live = Some(now + Duration::from_secs(60));
    let active = |job: &str, key: &str| NewRun {
        coalesce: Some(Coalesce::Active),
        ..keyed(job, key)
    };
    let reused = |enqueued: Enqueued| {
        assert_eq!(enqueued.disposition, Disposition::Coalesced);
        enqueued.run
    };

    // Waiting runs, the oldest first; then leased runs (younger); then a pending one (youngest).
    let w1 = enqueue(&store, keyed("job", "k"), t0).await;
    let w1 = set_state(&store, &w1.id, RunStatus::Waiting, None, t0).await;
    let w2 = enqueue(&store, keyed("job", "k"), t0 + ms(1)).await;
    set_state(&store, &w2.id, RunStatus::Waiting, None, t0 + ms(1)).await;
    let got = reused(
        store
            .enqueue(active("job", "k"), now)
            .await
            .expect("active"),
    );
    assert_eq!(got, w1, "the oldest waiting run");

    let l1 = enqueue(&store, keyed("job", "k"), t0 + ms(2)).await;
    let l1 = set_state(&store, &l1.id, RunStatus::Leased, live, t0 + ms(2)).await;
    let l2 = enqueue(&store, keyed("job", "k"), t0 + ms(3)).await;
    set_state(&store, &l2.id, RunStatus::Leased, live, t0 + ms(3)).await;
    let got = reused(
        store
            .enqueue(active("job", "k"), now)
            .await
            .expect("active"),
    );
    assert_eq!(
        got, l1,
        "a leased run before an older waiting one; the oldest"
    );

    // The same leased run at a time its lease has run out: not reused, a waiting one is.
    let late = now + Duration::from_secs(120);
    let got = reused(store.enqueue(active("job", "k"), late).await.expect("late"));
    assert_eq!(
        got, w1,
        "leases that expired by the trigger's time do not count"
    );

    let p = enqueue(&store, keyed("job", "k"), t0 + ms(4)).await;
    let got = reused(
        store
            .enqueue(active("job", "k"), now)
            .await
            .expect("active"),
    );
    assert_eq!(got, p, "a pending run before older leased and waiting ones");
    assert_eq!(runs_with_key(&store, "job", "k").await.len(), 5);

    // Another job with the same key: never reused.
    let (created, claimed) = store
        .enqueue_and_claim(
            active("other-job", "k"),
            now,
            &ClaimRequest {
                worker_id: "w".into(),
                lease: LEASE,
                max: 0,
                resume_waiting: true,
            },
        )
        .await
        .expect("other job");
    assert_eq!(created.disposition, Disposition::Created);
    assert!(claimed.is_empty());
    assert_eq!(runs_with_key(&store, "other-job", "k").await.len(), 1);

    // An idempotency key wins over `active`, whatever the key's runs.
    let keyed_once = enqueue(
        &store,
        NewRun {
            idempotency_key: Some("once".into()),
            ..keyed("idem-job", "ik")
        },
        t0,
    )
    .await;
    set_state(&store, &keyed_once.id, RunStatus::Completed, None, t0).await;
    let pending = enqueue(&store, keyed("idem-job", "ik"), t0 + ms(1)).await;
    let again = store
        .enqueue(
            NewRun {
                idempotency_key: Some("once".into()),
                ..active("idem-job", "ik")
            },
            now,
        )
        .await
        .expect("idempotent");
    assert_eq!(again.disposition, Disposition::Idempotent);
    assert_eq!(again.run.id, keyed_once.id);
    assert_ne!(again.run.id, pending.id);

    // Label keys are checked before any reuse.
    let mut bad = Labels::new();
    bad.insert("bad key".into(), "x".into());
    match store
        .enqueue(
            NewRun {
                labels: bad,
                ..active("idem-job", "ik")
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

    // enqueue_and_claim: a coalesced `active` trigger claims nothing; a created one claims.
    let next = ClaimRequest {
        worker_id: "w".into(),
        lease: LEASE,
        max: 1,
        resume_waiting: true,
    };
    let (coalesced, claimed) = store
        .enqueue_and_claim(active("idem-job", "ik"), now, &next)
        .await
        .expect("coalesced");
    assert_eq!(coalesced.disposition, Disposition::Coalesced);
    assert_eq!(coalesced.run.id, pending.id);
    assert!(claimed.is_empty(), "{claimed:?}");
}

/// Contract: a batch's items see the ones before them whatever their mode (`active` and
/// `queue` coalesce onto an earlier item's run, `active` onto a run the batch found leased),
/// and a conflict rolls the whole batch back.
pub async fn enqueue_many_coalesces_within_the_batch(store: Arc<dyn Store>) {
    let t0 = Timestamp::now();
    let now = t0 + Duration::from_secs(1);
    let with = |mode: Option<Coalesce>, key: &str, n: u64| NewRun {
        coalesce: mode,
        input: json!({"n": n}),
        ..keyed("batch-job", key)
    };
    let leased = enqueue(&store, keyed("batch-job", "running"), t0).await;
    let leased = set_state(
        &store,
        &leased.id,
        RunStatus::Leased,
        Some(now + Duration::from_secs(60)),
        t0,
    )
    .await;
    let batch = store
        .enqueue_many(
            vec![
                with(Some(Coalesce::Active), "a", 0),
                with(Some(Coalesce::Queue), "a", 1),
                with(Some(Coalesce::Active), "a", 2),
                with(Some(Coalesce::Active), "running", 3),
                with(Some(Coalesce::Queue), "running", 4),
                with(Some(Coalesce::Skip), "running", 5),
                with(None, "b", 6),
            ],
            now,
        )
        .await
        .expect("batch");
    let dispositions: Vec<Disposition> = batch.iter().map(|e| e.disposition).collect();
    use Disposition::{Coalesced, Created};
    assert_eq!(
        dispositions,
        vec![
            Created, Coalesced, Coalesced, Coalesced, Created, Coalesced, Created
        ]
    );
    assert_eq!(batch[1].run.id, batch[0].run.id);
    assert_eq!(batch[2].run.id, batch[0].run.id);
    assert_eq!(batch[3].run, leased, "the leased run, unchanged");
    assert_eq!(batch[5].run.id, batch[4].run.id);
    assert_eq!(batch[4].run.input, json!({"n": 4}));
    assert_eq!(count_runs(&store).await, 4);

    // All or nothing: the conflict of the last item undoes the rest.
    let result = store
        .enqueue_many(
            vec![
                with(Some(Coalesce::Active), "c", 7),
                with(Some(Coalesce::Queue), "a", 8),
                with(None, "a", 9),
            ],
            now,
        )
        .await;
    assert!(matches!(result, Err(Error::Conflict(_))), "{result:?}");
    assert_eq!(
        count_runs(&store).await,
        4,
        "the failed batch stored nothing"
    );
}

/// Contract: concurrent `queue` triggers behind a running run create exactly one pending run
/// and coalesce the rest onto it; concurrent `active` triggers of a key with no run create
/// exactly one, and reuse the running run while there is one.
pub async fn concurrent_coalescing_triggers_create_one_run(store: Arc<dyn Store>) {
    const TRIGGERS: usize = 16;
    let t0 = Timestamp::now();
    let now = t0 + Duration::from_secs(1);
    let leased = enqueue(&store, keyed("race-job", "queued"), t0).await;
    set_state(
        &store,
        &leased.id,
        RunStatus::Leased,
        Some(now + Duration::from_secs(60)),
        t0,
    )
    .await;
    let race = |key: &'static str, mode: Coalesce| {
        let tasks: Vec<_> = (0..TRIGGERS)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let request = NewRun {
                        coalesce: Some(mode),
                        input: json!({"n": i}),
                        ..keyed("race-job", key)
                    };
                    store.enqueue(request, now).await
                })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for task in tasks {
                out.push(task.await.expect("task").expect("enqueue"));
            }
            out
        }
    };

    for (key, mode) in [
        ("queued", Coalesce::Queue),
        ("fresh", Coalesce::Active),
        ("fresh-skip", Coalesce::Skip),
        ("queued", Coalesce::Active),
    ] {
        let results = within(
            "concurrent triggers",
            Duration::from_secs(30),
            race(key, mode),
        )
        .await;
        let created: Vec<&Enqueued> = results
            .iter()
            .filter(|e| e.disposition == Disposition::Created)
            .collect();
        let ids: HashSet<&str> = results.iter().map(|e| e.run.id.as_str()).collect();
        if key == "queued" && mode == Coalesce::Active {
            // The pending run the `queue` round created is reused, never a new one.
            assert!(created.is_empty(), "{key} {mode:?}: {created:?}");
            assert_eq!(ids.len(), 1, "{key} {mode:?}");
            continue;
        }
        assert_eq!(created.len(), 1, "{key} {mode:?}: one created, {results:?}");
        assert_eq!(
            ids.len(),
            1,
            "{key} {mode:?}: every trigger got the created run"
        );
        assert!(
            results
                .iter()
                .all(|e| e.disposition != Disposition::Idempotent)
        );
    }
    assert_eq!(runs_with_key(&store, "race-job", "queued").await.len(), 2);
    assert_eq!(runs_with_key(&store, "race-job", "fresh").await.len(), 1);

    // `active` triggers racing a claimer that moves the key's pending run to leased (and a
    // finisher that ends it): every trigger reuses the run, pending or leased, while it lives;
    // a trigger never misses it in between and creates a second one.
    let first = enqueue(&store, keyed("race-job", "claimed"), now).await;
    let claimer = {
        let store = store.clone();
        let id = first.id.clone();
        tokio::spawn(async move {
            let patch = RunPatch {
                status: Some(RunStatus::Leased),
                lease_owner: Some(Some("claimer".into())),
                lease_expires_at: Some(Some(now + Duration::from_secs(60))),
                ..RunPatch::default()
            };
            store.update_run(&id, patch, now).await.expect("lease")
        })
    };
    let results = within(
        "active triggers racing a claim",
        Duration::from_secs(30),
        race("claimed", Coalesce::Active),
    )
    .await;
    assert!(claimer.await.expect("claimer"));
    assert!(
        results
            .iter()
            .all(|e| e.disposition == Disposition::Coalesced && e.run.id == first.id),
        "{results:?}"
    );
    assert_eq!(runs_with_key(&store, "race-job", "claimed").await.len(), 1);
}
