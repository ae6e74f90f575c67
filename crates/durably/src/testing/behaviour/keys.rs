//! Behaviour: idempotency keys, concurrency keys and coalescing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::{Coalesce, Disposition, Error, Job, RunFilter, RunStatus, StepContext, TriggerOptions};

fn echo(name: &str) -> Job<u64, u64> {
    Job::new(name, |_: StepContext, n: u64| async move { Ok(n) })
}

/// Behaviour: a trigger with an idempotency key already used by the job returns the existing
/// run unchanged (pending or ended) instead of creating one; another job's key is its own.
pub async fn an_idempotency_key_returns_the_same_run(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let job = durably
        .register(echo("behaviour-idempotent"))
        .expect("register");
    let other = durably
        .register(echo("behaviour-idempotent-other"))
        .expect("register");
    let key = || TriggerOptions::new().idempotency_key("order-7");

    let first = job.trigger_with(1, key()).await.expect("trigger");
    assert_eq!(first.disposition, Disposition::Created);
    assert_eq!(first.run.idempotency_key.as_deref(), Some("order-7"));
    let again = job.trigger_with(2, key()).await.expect("trigger");
    assert_eq!(again.disposition, Disposition::Idempotent);
    assert_eq!(again.run.id, first.run.id);
    assert_eq!(again.run.input, 1, "the existing run, unchanged");
    let elsewhere = other.trigger_with(3, key()).await.expect("trigger");
    assert_eq!(elsewhere.disposition, Disposition::Created);
    assert_ne!(elsewhere.run.id, first.run.id);

    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process"),
        2
    );
    let after = job.trigger_with(4, key()).await.expect("trigger");
    assert_eq!(after.disposition, Disposition::Idempotent);
    assert_eq!(after.run.id, first.run.id);
    assert_eq!(after.run.status, RunStatus::Completed);
    assert_eq!(after.run.output, Some(1));
    let runs = durably
        .get_runs(&RunFilter::new().job_name("behaviour-idempotent"))
        .await
        .expect("get_runs");
    assert_eq!(runs.len(), 1, "one run for the key: {runs:?}");
}

/// The runs of each concurrency key executing now, and the most seen at once.
#[derive(Clone, Default)]
struct Overlap(Arc<std::sync::Mutex<HashMap<String, (usize, usize)>>>);

impl Overlap {
    fn enter(&self, key: &str) {
        let mut keys = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (now, most) = keys.entry(key.to_owned()).or_default();
        *now += 1;
        *most = (*most).max(*now);
    }

    fn leave(&self, key: &str) {
        let mut keys = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((now, _)) = keys.get_mut(key) {
            *now -= 1;
        }
    }

    fn most(&self) -> HashMap<String, usize> {
        let keys = self.0.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .map(|(key, (_, most))| (key.clone(), *most))
            .collect()
    }
}

/// Behaviour: runs sharing a concurrency key (across job names) never execute at once, even with
/// free slots on two started instances (four slots each); every run still completes.
pub async fn runs_sharing_a_concurrency_key_never_overlap(store: Arc<dyn Store>) {
    const JOBS: usize = 4;
    let overlap = Overlap::default();
    let job = |j: usize| {
        let overlap = overlap.clone();
        Job::new(
            format!("behaviour-keyed-{j}"),
            move |_: StepContext, key: String| {
                let overlap = overlap.clone();
                async move {
                    overlap.enter(&key);
                    // Long enough for a second run of the key to start if claims let it.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    overlap.leave(&key);
                    Ok(key)
                }
            },
        )
    };
    let mut instances = Vec::new();
    for _ in 0..2 {
        let durably = instance(&store, |b| b.max_concurrent_runs(4)).await;
        for j in 0..JOBS {
            durably.register(job(j)).expect("register");
        }
        instances.push(durably);
    }
    // One pending run per job and key (a second pending run of a job and key would conflict).
    let mut ids = Vec::new();
    for j in 0..JOBS {
        let handle = instances[0]
            .job::<String, String>(&format!("behaviour-keyed-{j}"))
            .expect("the job's handle");
        for key in ["tenant-a", "tenant-b"] {
            let run = handle
                .trigger_with(key.to_owned(), TriggerOptions::new().concurrency_key(key))
                .await
                .expect("trigger")
                .run;
            ids.push((run.id, key));
        }
    }
    for durably in &instances {
        durably.start();
    }
    let mut runs = Vec::new();
    for (id, key) in &ids {
        runs.push((terminal(&instances[1], id).await, *key));
    }
    for durably in &instances {
        within("stop", durably.stop()).await;
    }
    let most = overlap.most();
    assert_eq!(
        most.get("tenant-a"),
        Some(&1),
        "tenant-a overlapped: {most:?}"
    );
    assert_eq!(
        most.get("tenant-b"),
        Some(&1),
        "tenant-b overlapped: {most:?}"
    );
    for (run, key) in runs {
        assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
        assert_eq!(run.output, Some(json!(key)));
        assert_eq!(run.concurrency_key.as_deref(), Some(key));
    }
}

/// Behaviour: `coalesce: skip` returns the pending run of the job and key instead of a
/// conflict; without it a second pending run conflicts; once the run left `pending`, the key is
/// free again.
pub async fn coalesce_skip_returns_the_pending_run(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let job = durably
        .register(echo("behaviour-coalesce"))
        .expect("register");
    let keyed = || TriggerOptions::new().concurrency_key("user-1");
    let skip = || keyed().coalesce(Coalesce::Skip);

    let first = job.trigger_with(1, keyed()).await.expect("trigger");
    assert_eq!(first.disposition, Disposition::Created);
    let coalesced = job.trigger_with(2, skip()).await.expect("trigger");
    assert_eq!(coalesced.disposition, Disposition::Coalesced);
    assert_eq!(coalesced.run.id, first.run.id);
    assert_eq!(coalesced.run.input, 1, "the pending run, unchanged");
    match job.trigger_with(3, keyed()).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Another key and another job are not affected.
    let other_key = job
        .trigger_with(4, TriggerOptions::new().concurrency_key("user-2"))
        .await
        .expect("trigger");
    assert_eq!(other_key.disposition, Disposition::Created);

    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process"),
        2
    );
    let run = run_of(&durably, &first.run.id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!(1)));
    let next = job.trigger_with(5, skip()).await.expect("trigger");
    assert_eq!(
        next.disposition,
        Disposition::Created,
        "nothing pending to coalesce with"
    );
    assert_ne!(next.run.id, first.run.id);
    let runs = durably
        .get_runs(&RunFilter::new().job_name("behaviour-coalesce"))
        .await
        .expect("get_runs");
    assert_eq!(runs.len(), 3, "{runs:?}");
}

/// Behaviour: `coalesce: active` reuses the run of the job and key that is running (its
/// `run:coalesced` event says `leased`), then the pending run a `queue` trigger put behind it,
/// and a waiting run; `queue` creates one run behind a running one and coalesces onto it;
/// once every run ended, `active` creates.
pub async fn coalesce_active_reuses_the_running_run(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let recorder = Recorder::attach(&durably);
    let (entered, release) = (Gate::new(), Gate::new());
    let job = {
        let (entered, release) = (entered.clone(), release.clone());
        durably
            .register(Job::new(
                "behaviour-coalesce-active",
                move |_: StepContext, n: u64| {
                    let (entered, release) = (entered.clone(), release.clone());
                    async move {
                        entered.open();
                        release.wait().await;
                        Ok(n)
                    }
                },
            ))
            .expect("register")
    };
    let keyed = || TriggerOptions::new().concurrency_key("doc-1");
    let with = |mode: Coalesce| keyed().coalesce(mode);

    durably.start();
    let first = job.trigger_with(1, keyed()).await.expect("trigger");
    assert_eq!(first.disposition, Disposition::Created);
    within("the first run starts", entered.wait()).await;

    let active = job
        .trigger_with(2, with(Coalesce::Active))
        .await
        .expect("active");
    assert_eq!(active.disposition, Disposition::Coalesced);
    assert_eq!(active.run.id, first.run.id);
    assert_eq!(active.run.status, RunStatus::Leased);
    assert_eq!(active.run.input, 1, "the running run, unchanged");

    let queued = job
        .trigger_with(3, with(Coalesce::Queue))
        .await
        .expect("queue");
    assert_eq!(queued.disposition, Disposition::Created, "one run behind");
    assert_eq!(queued.run.status, RunStatus::Pending);
    for mode in [Coalesce::Queue, Coalesce::Skip, Coalesce::Active] {
        let again = job.trigger_with(4, with(mode)).await.expect("coalesce");
        assert_eq!(again.disposition, Disposition::Coalesced, "{mode:?}");
        assert_eq!(again.run.id, queued.run.id, "{mode:?}: the pending run");
        assert_eq!(again.run.status, RunStatus::Pending);
    }

    release.open();
    for id in [&first.run.id, &queued.run.id] {
        let run = terminal(&durably, id).await;
        assert_eq!(run.status, RunStatus::Completed);
    }
    within("stop", durably.stop()).await;
    let after = job
        .trigger_with(5, with(Coalesce::Active))
        .await
        .expect("active");
    assert_eq!(after.disposition, Disposition::Created, "every run ended");

    // A waiting run (fabricated: no wait record) is reused by `active` only.
    let admin = store
        .admin()
        .expect("this behaviour test fabricates states through `Store::admin`");
    let patch = crate::store::RunPatch {
        status: Some(RunStatus::Waiting),
        lease_owner: Some(None),
        lease_expires_at: Some(None),
        ..Default::default()
    };
    assert!(
        admin
            .update_run(&after.run.id, patch, crate::Timestamp::now())
            .await
            .expect("update_run")
    );
    let waiting = job
        .trigger_with(6, with(Coalesce::Active))
        .await
        .expect("active");
    assert_eq!(waiting.disposition, Disposition::Coalesced);
    assert_eq!(waiting.run.id, after.run.id);
    assert_eq!(waiting.run.status, RunStatus::Waiting);
    let behind = job
        .trigger_with(7, with(Coalesce::Queue))
        .await
        .expect("queue");
    assert_eq!(behind.disposition, Disposition::Created);

    let statuses: Vec<(String, RunStatus, serde_json::Value)> = recorder
        .flush(&durably)
        .await
        .into_iter()
        .filter_map(|event| match event.kind {
            crate::EventKind::RunCoalesced {
                run_id,
                status,
                skipped_input,
                ..
            } => Some((run_id, status, skipped_input)),
            _ => None,
        })
        .collect();
    let (a, q, w) = (&first.run.id, &queued.run.id, &after.run.id);
    assert_eq!(
        statuses,
        vec![
            (a.clone(), RunStatus::Leased, json!(2)),
            (q.clone(), RunStatus::Pending, json!(4)),
            (q.clone(), RunStatus::Pending, json!(4)),
            (q.clone(), RunStatus::Pending, json!(4)),
            (w.clone(), RunStatus::Waiting, json!(6)),
        ]
    );
}
