//! Leases and fencing: recovery from persisted steps, stale owners after a reclaim (two
//! instances on one database), lease renewal (upstream recovery.shared, stale-owner.e2e).
mod common;

use common::Ends;
#[allow(unused_imports)]
use durably::store::ClaimRequest;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Gate, LIMIT, Recorder, TestDb, backend_tests, eventually, terminal, within};
use durably::{
    Durably, EventKind, EventType, Job, RunStatus, StepContext, StepStatus, Timestamp,
    TriggerOptions,
    store::{Fence, NewStep, RunPatch},
};
use serde_json::{Value, json};

/// A gate a job waits on until the test opens it.
/// Records every event of an instance, in emission order.
fn expire_lease() -> RunPatch {
    RunPatch {
        lease_expires_at: Some(Some(Timestamp::now() - Duration::from_secs(5))),
        ..RunPatch::default()
    }
}

fn completed_step(name: &str, index: i64, output: Value) -> NewStep {
    NewStep {
        name: name.into(),
        index,
        status: StepStatus::Completed,
        output: Some(output),
        error: None,
        started_at: Timestamp::now(),
        attempt: None,
    }
}

/// Calls `process_one` on `durably` until it claims something (the lease must expire first).
async fn reclaim(durably: &Durably, worker: &str) {
    eventually("reclaim after the lease expired", LIMIT, || async {
        durably
            .process_one(Some(worker))
            .await
            .expect("process_one")
            .then_some(())
    })
    .await
}

async fn worker_resumes_after_manual_claim_and_expiry(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let step1_calls = Arc::new(AtomicUsize::new(0));
    let step2_calls = Arc::new(AtomicUsize::new(0));
    let (c1, c2) = (step1_calls.clone(), step2_calls.clone());
    let job = durably
        .register(Job::new("recover", move |step: StepContext, _: Value| {
            let (c1, c2) = (c1.clone(), c2.clone());
            async move {
                let first: String = step
                    .run("step1", |_| async move {
                        c1.fetch_add(1, Ordering::SeqCst);
                        Ok("fresh-1".to_string())
                    })
                    .await?;
                let second: String = step
                    .run("step2", |_| async move {
                        c2.fetch_add(1, Ordering::SeqCst);
                        Ok("result-2".to_string())
                    })
                    .await?;
                Ok(json!([first, second]))
            }
        }))
        .unwrap();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let store = durably.store();
    let claimed = store
        .claim(
            &ClaimRequest::new("crashed-worker", LIMIT, 1),
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
    let fence = Fence::of(&claimed[0]);
    let step = store
        .persist_step(
            &fence,
            completed_step("step1", 0, json!("result-1")),
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert!(step.is_some());
    assert!(
        store
            .admin()
            .expect("operator writes")
            .update_run(&id, expire_lease(), Timestamp::now())
            .await
            .unwrap()
    );

    durably.start();
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!(["result-1", "result-2"])));
    assert_eq!(step1_calls.load(Ordering::SeqCst), 0, "step1 replayed");
    assert_eq!(step2_calls.load(Ordering::SeqCst), 1);
    assert_eq!(run.lease_generation, fence.generation + 1);
    assert_eq!(run.lease_owner, None);
    assert_eq!(run.lease_expires_at, None);
    assert_eq!(run.completed_step_count, 2);
    let names: Vec<_> = durably
        .get_steps(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["step1", "step2"]);
    durably.stop().await;
}

async fn stale_step_write_is_refused_after_reclaim(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new("guarded", |_: StepContext, _: Value| async {
            Ok(())
        }))
        .unwrap();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let store = durably.store();
    let a = store
        .claim(&ClaimRequest::new("worker-a", LIMIT, 1), Timestamp::now())
        .await
        .unwrap()
        .remove(0);
    let fence_a = Fence::of(&a);
    assert!(
        store
            .persist_step(
                &fence_a,
                completed_step("guarded-step", 0, json!("a")),
                Timestamp::now()
            )
            .await
            .unwrap()
            .is_some()
    );
    store
        .admin()
        .expect("operator writes")
        .update_run(&id, expire_lease(), Timestamp::now())
        .await
        .unwrap();
    let b = store
        .claim(&ClaimRequest::new("worker-b", LIMIT, 1), Timestamp::now())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(b.id, id);
    assert_eq!(b.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(b.lease_generation, a.lease_generation + 1);
    let fence_b = Fence::of(&b);

    // The stale owner's write lands nowhere; the new owner's does.
    let stale = store
        .persist_step(
            &fence_a,
            completed_step("stale-step", 1, json!("a")),
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert!(stale.is_none());
    assert!(
        !store
            .update_progress(
                &fence_a,
                Some(durably::Progress {
                    current: 9,
                    total: None,
                    message: None
                }),
                Timestamp::now()
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .persist_step(
                &fence_b,
                completed_step("owner-step", 1, json!("b")),
                Timestamp::now()
            )
            .await
            .unwrap()
            .is_some()
    );
    let names: Vec<_> = store
        .get_steps(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["guarded-step", "owner-step"]);
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.progress, None);
    assert_eq!(run.completed_step_count, 2);
}

async fn stale_complete_and_fail_are_refused(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new("fenced-end", |_: StepContext, _: Value| async {
            Ok(())
        }))
        .unwrap();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    let store = durably.store();
    let a = store
        .claim(&ClaimRequest::new("worker-a", LIMIT, 1), Timestamp::now())
        .await
        .unwrap()
        .remove(0);
    store
        .admin()
        .expect("operator writes")
        .update_run(&id, expire_lease(), Timestamp::now())
        .await
        .unwrap();
    let b = store
        .claim(&ClaimRequest::new("worker-b", LIMIT, 1), Timestamp::now())
        .await
        .unwrap()
        .remove(0);
    let (fence_a, fence_b) = (Fence::of(&a), Fence::of(&b));

    assert!(
        !store
            .complete_run(&fence_a, Some(json!("stale")), Timestamp::now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .fail_run(&fence_a, "stale failure", Timestamp::now())
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .renew_lease(&fence_a, Timestamp::now(), LIMIT)
            .await
            .unwrap(),
        None
    );
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Leased);
    assert_eq!(run.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(run.output, None);
    assert_eq!(run.error, None);

    assert!(
        store
            .complete_run(&fence_b, Some(json!("winner")), Timestamp::now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .complete_run(&fence_a, Some(json!("stale")), Timestamp::now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .fail_run(&fence_a, "stale failure", Timestamp::now())
            .await
            .unwrap()
    );
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!("winner")));
    assert_eq!(run.error, None);
    assert_eq!(run.lease_owner, None);
}

/// A (lease 200 ms, renewals every 10 s, so the lease lapses) blocks inside `step-1`; B
/// reclaims and completes; then A is released.
async fn stale_owner_never_starts_the_next_step(backend: Backend) {
    let db = TestDb::new(backend);
    let a = db
        .durably(|b| {
            b.lease_duration(Duration::from_millis(200))
                .lease_renew_interval(Duration::from_secs(10))
        })
        .await;
    let b = db.durably(|b| b.preserve_steps(true)).await;
    let a_events = Recorder::attach(&a);
    let entered = Gate::new();
    let release = Gate::new();
    let a_step1_done = Arc::new(AtomicBool::new(false));
    let a_step2_calls = Arc::new(AtomicUsize::new(0));
    {
        let (entered, release) = (entered.clone(), release.clone());
        let (done, calls) = (a_step1_done.clone(), a_step2_calls.clone());
        a.register(Job::new(
            "stale-owner",
            move |step: StepContext, _: Value| {
                let (entered, release) = (entered.clone(), release.clone());
                let (done, calls) = (done.clone(), calls.clone());
                async move {
                    let inner = step.clone();
                    step.run("step-1", |_| async move {
                        entered.open();
                        release.wait().await;
                        done.store(true, Ordering::SeqCst);
                        // Fenced like every other write: refused after the reclaim.
                        inner.log().info("stale owner inside step-1", None).await?;
                        Ok("stale-1".to_string())
                    })
                    .await?;
                    step.run("step-2", |_| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok("stale-2".to_string())
                    })
                    .await?;
                    Ok(json!({"winner": "stale"}))
                }
            },
        ))
        .unwrap();
    }
    let job_b = b
        .register(Job::new(
            "stale-owner",
            |step: StepContext, _: Value| async move {
                step.run("step-1", |_| async { Ok("reclaimer-1".to_string()) })
                    .await?;
                step.run("step-2", |_| async { Ok("reclaimer-2".to_string()) })
                    .await?;
                Ok(json!({"winner": "reclaimer"}))
            },
        ))
        .unwrap();
    let id = job_b.trigger(json!({})).await.unwrap().run.id;

    let worker_a = {
        let a = a.clone();
        tokio::spawn(async move { a.process_one(Some("worker-a")).await })
    };
    within("A enters step-1", LIMIT, entered.wait()).await;
    reclaim(&b, "worker-b").await;
    let run = b.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"winner": "reclaimer"})));

    release.open();
    let processed = within("A returns", LIMIT, worker_a).await.unwrap().unwrap();
    assert!(processed);
    assert!(a_step1_done.load(Ordering::SeqCst));
    assert_eq!(
        a_step2_calls.load(Ordering::SeqCst),
        0,
        "A never ran step-2"
    );

    let run = b.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"winner": "reclaimer"})));
    assert_eq!(run.error, None);
    assert_eq!(run.lease_owner, None);
    assert_eq!(run.lease_expires_at, None);
    let steps: Vec<_> = b
        .get_steps(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.output))
        .collect();
    assert_eq!(
        steps,
        [
            ("step-1".to_string(), Some(json!("reclaimer-1"))),
            ("step-2".to_string(), Some(json!("reclaimer-2"))),
        ]
    );
    assert!(
        b.get_logs(&id).await.unwrap().is_empty(),
        "A's log did not land"
    );
    let a_seen = a_events.flush(&a).await;
    assert!(
        a_seen.iter().all(|e| !matches!(
            e.event_type(),
            EventType::StepComplete | EventType::RunComplete | EventType::RunFail
        )),
        "the stale owner announced nothing: {a_seen:?}"
    );
}

/// A's job (no steps) returns after B completed the run: A's completion or failure does not
/// land and the reclaimer's result stays.
async fn stale_result(backend: Backend, a_fails: bool) {
    let db = TestDb::new(backend);
    let a = db
        .durably(|b| {
            b.lease_duration(Duration::from_millis(200))
                .lease_renew_interval(Duration::from_secs(10))
        })
        .await;
    let b = db.durably(|b| b).await;
    let a_events = Recorder::attach(&a);
    let entered = Gate::new();
    let release = Gate::new();
    let executions = Arc::new(AtomicUsize::new(0));
    {
        let (entered, release, executions) = (entered.clone(), release.clone(), executions.clone());
        a.register(Job::new("stale-result", move |_: StepContext, _: Value| {
            let (entered, release) = (entered.clone(), release.clone());
            executions.fetch_add(1, Ordering::SeqCst);
            async move {
                entered.open();
                release.wait().await;
                if a_fails {
                    Err(durably::Error::Job("stale failure".into()))
                } else {
                    Ok(json!({"winner": "stale"}))
                }
            }
        }))
        .unwrap();
    }
    let b_executions = executions.clone();
    let job_b = b
        .register(Job::new("stale-result", move |_: StepContext, _: Value| {
            b_executions.fetch_add(1, Ordering::SeqCst);
            async { Ok(json!({"winner": "reclaimer"})) }
        }))
        .unwrap();
    let id = job_b.trigger(json!({})).await.unwrap().run.id;
    let worker_a = {
        let a = a.clone();
        tokio::spawn(async move { a.process_one(Some("worker-a")).await })
    };
    within("A starts", LIMIT, entered.wait()).await;
    reclaim(&b, "worker-b").await;
    release.open();
    assert!(within("A returns", LIMIT, worker_a).await.unwrap().unwrap());

    let run = b.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"winner": "reclaimer"})));
    assert_eq!(run.error, None);
    assert_eq!(run.lease_owner, None);
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    let a_seen = a_events.flush(&a).await;
    assert!(
        a_seen
            .iter()
            .all(|e| !matches!(e.event_type(), EventType::RunComplete | EventType::RunFail))
    );
}

async fn stale_success_does_not_overwrite_reclaimer(backend: Backend) {
    stale_result(backend, false).await;
}

async fn stale_failure_does_not_overwrite_reclaimer(backend: Backend) {
    stale_result(backend, true).await;
}

async fn step_polling_its_token_observes_lease_loss(backend: Backend) {
    let db = TestDb::new(backend);
    let a = db
        .durably(|b| {
            b.lease_duration(Duration::from_millis(200))
                .lease_renew_interval(Duration::from_secs(10))
        })
        .await;
    let b = db.durably(|b| b).await;
    let observed = Arc::new(AtomicBool::new(false));
    let after_step = Arc::new(AtomicBool::new(false));
    {
        let (observed, after_step) = (observed.clone(), after_step.clone());
        a.register(Job::new(
            "token-loss",
            move |step: StepContext, _: Value| {
                let (observed, after_step) = (observed.clone(), after_step.clone());
                async move {
                    let result = step
                        .run("watch-token", |token| async move {
                            token.cancelled().await;
                            observed.store(true, Ordering::SeqCst);
                            Err::<(), _>("aborted by token".into())
                        })
                        .await;
                    let error = result.expect_err("the step reports the loss");
                    assert!(error.is_lease_lost(), "{error}");
                    assert!(step.is_cancelled());
                    assert!(step.check_cancelled().unwrap_err().is_lease_lost());
                    after_step.store(true, Ordering::SeqCst);
                    Err::<Value, _>(error)
                }
            },
        ))
        .unwrap();
    }
    let job_b = b
        .register(Job::new("token-loss", |_: StepContext, _: Value| async {
            Ok(json!({"winner": "reclaimer"}))
        }))
        .unwrap();
    let id = job_b.trigger(json!({})).await.unwrap().run.id;
    let worker_a = {
        let a = a.clone();
        tokio::spawn(async move { a.process_one(Some("worker-a")).await })
    };
    eventually("A's step observes the token", LIMIT, || async {
        observed.load(Ordering::SeqCst).then_some(())
    })
    .await;
    assert!(within("A returns", LIMIT, worker_a).await.unwrap().unwrap());
    assert!(after_step.load(Ordering::SeqCst));
    // Nothing was written by A: the run is still leased (expired) with no step row.
    let run = a.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Leased);
    assert!(a.get_steps(&id).await.unwrap().is_empty());

    reclaim(&b, "worker-b").await;
    let run = b.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"winner": "reclaimer"})));
}

async fn lease_is_renewed_while_a_step_runs(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| {
            b.lease_duration(Duration::from_millis(1_000))
                .lease_renew_interval(Duration::from_millis(100))
        })
        .await;
    let recorder = Recorder::attach(&durably);
    let renewals = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let renewals = renewals.clone();
        durably.on(EventType::RunLeaseRenewed, move |event| {
            if let EventKind::RunLeaseRenewed {
                lease_expires_at, ..
            } = &event.kind
            {
                renewals.lock().unwrap().push(lease_expires_at.clone());
            }
        });
    }
    let entered = Gate::new();
    let release = Gate::new();
    let token_fired = Arc::new(AtomicBool::new(false));
    let job = {
        let (entered, release, fired) = (entered.clone(), release.clone(), token_fired.clone());
        durably
            .register(Job::new("renewing", move |step: StepContext, _: Value| {
                let (entered, release, fired) = (entered.clone(), release.clone(), fired.clone());
                async move {
                    step.run("long", |token| async move {
                        entered.open();
                        release.wait().await;
                        fired.store(token.is_cancelled(), Ordering::SeqCst);
                        Ok("done".to_string())
                    })
                    .await?;
                    Ok(json!("finished"))
                }
            }))
            .unwrap()
    };
    durably.start();
    let id = job.trigger(json!({})).await.unwrap().run.id;
    within("step starts", LIMIT, entered.wait()).await;
    let first = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(first.status, RunStatus::Leased);
    let initial_expiry = first.lease_expires_at.expect("leased run has an expiry");

    // Twelve renewals at 100 ms: the step has outlived the original 1 s lease (long enough
    // that a loaded machine's pauses do not expire it between two renewals).
    eventually("twelve lease renewals", LIMIT, || async {
        (renewals.lock().unwrap().len() >= 12).then_some(())
    })
    .await;
    let current = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(current.status, RunStatus::Leased);
    assert!(current.lease_expires_at.unwrap() > initial_expiry);
    let last_renewal = renewals.lock().unwrap().last().cloned().unwrap();
    assert!(Timestamp::parse(&last_renewal).unwrap() > initial_expiry);
    release.open();

    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!("finished")));
    assert_eq!(
        run.lease_generation, first.lease_generation,
        "never reclaimed"
    );
    assert!(!token_fired.load(Ordering::SeqCst));
    durably.stop().await;
    let events = recorder.flush(&durably).await;
    assert!(
        events
            .iter()
            .all(|e| e.event_type() != EventType::WorkerError),
        "{events:?}"
    );
    let renewed_for_run = events
        .iter()
        .filter(|e| e.event_type() == EventType::RunLeaseRenewed)
        .all(|e| e.kind.run_id() == Some(id.as_str()));
    assert!(renewed_for_run);
}

async fn steps_persisted_before_lease_loss_remain(backend: Backend) {
    let db = TestDb::new(backend);
    let a = db
        .durably(|b| {
            b.lease_duration(Duration::from_millis(200))
                .lease_renew_interval(Duration::from_secs(10))
        })
        .await;
    let b = db.durably(|b| b.preserve_steps(true)).await;
    let lost = Arc::new(AtomicBool::new(false));
    {
        let lost = lost.clone();
        a.register(Job::new(
            "keep-steps",
            move |step: StepContext, _: Value| {
                let lost = lost.clone();
                async move {
                    step.run("step1", |_| async { Ok("result-1".to_string()) })
                        .await?;
                    step.run("step2", |token| async move {
                        token.cancelled().await;
                        lost.store(true, Ordering::SeqCst);
                        Ok("never stored".to_string())
                    })
                    .await?;
                    Ok(json!("stale"))
                }
            },
        ))
        .unwrap();
    }
    let b_step1_calls = Arc::new(AtomicUsize::new(0));
    let job_b = {
        let calls = b_step1_calls.clone();
        b.register(Job::new(
            "keep-steps",
            move |step: StepContext, _: Value| {
                let calls = calls.clone();
                async move {
                    let first: String = step
                        .run("step1", |_| async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            Ok("recomputed".to_string())
                        })
                        .await?;
                    step.run("step2", |_| async { Ok("result-2".to_string()) })
                        .await?;
                    Ok(json!({"step1": first}))
                }
            },
        ))
        .unwrap()
    };
    let id = job_b
        .trigger_with(json!({}), TriggerOptions::new())
        .await
        .unwrap()
        .run
        .id;
    let worker_a = {
        let a = a.clone();
        tokio::spawn(async move { a.process_one(Some("worker-a")).await })
    };
    eventually("A loses its lease in step2", LIMIT, || async {
        lost.load(Ordering::SeqCst).then_some(())
    })
    .await;
    assert!(within("A returns", LIMIT, worker_a).await.unwrap().unwrap());
    let steps = a.get_steps(&id).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].name, "step1");
    assert_eq!(steps[0].status, StepStatus::Completed);
    assert_eq!(steps[0].output, Some(json!("result-1")));
    assert_eq!(
        a.get_run(&id).await.unwrap().unwrap().status,
        RunStatus::Leased
    );

    reclaim(&b, "worker-b").await;
    let run = b.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"step1": "result-1"})));
    assert_eq!(b_step1_calls.load(Ordering::SeqCst), 0);
}

backend_tests!(
    worker_resumes_after_manual_claim_and_expiry,
    stale_step_write_is_refused_after_reclaim,
    stale_complete_and_fail_are_refused,
    stale_owner_never_starts_the_next_step,
    stale_success_does_not_overwrite_reclaimer,
    stale_failure_does_not_overwrite_reclaimer,
    step_polling_its_token_observes_lease_loss,
    lease_is_renewed_while_a_step_runs,
    steps_persisted_before_lease_loss_remain,
);
