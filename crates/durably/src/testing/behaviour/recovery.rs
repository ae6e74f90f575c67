//! Behaviour: recovery and fencing. A run whose worker is gone is taken over and replays its
//! completed steps; a worker that lost its lease lands nothing; several instances on one store
//! execute each run once.

use crate::store::ClaimRequest;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::store::{Fence, NewStep};
use crate::{Error, EventType, Job, RunFilter, RunStatus, StepContext, StepStatus, TriggerOptions};

/// Short leases renewed often: a worker that stops renewing loses its run within 400 ms.
fn short_leases(builder: DurablyBuilder) -> DurablyBuilder {
    builder
        .lease_duration(Duration::from_millis(400))
        .lease_renew_interval(Duration::from_millis(100))
}

/// A long lease, renewed rarely: a worker that believes it holds its run for the whole test
/// (the store's fence is then all that stops it after a takeover).
fn long_leases(builder: DurablyBuilder) -> DurablyBuilder {
    builder
        .lease_duration(Duration::from_secs(120))
        .lease_renew_interval(Duration::from_secs(60))
}

/// Expires the lease of run `id` in the store ([`Store::admin`]), as if its worker froze for
/// longer than the lease: the worker itself does not know.
async fn expire_lease(store: &Arc<dyn Store>, id: &str) {
    let patch = RunPatch {
        lease_expires_at: Some(Some(Timestamp::now() - Duration::from_secs(5))),
        ..RunPatch::default()
    };
    let admin = store
        .admin()
        .expect("this behaviour test fabricates states through `Store::admin`");
    assert!(
        admin
            .update_run(id, patch, Timestamp::now())
            .await
            .expect("update_run"),
        "run {id} exists"
    );
}

/// Calls `process_one` on `durably` until it claims something (a lease must expire first).
async fn take_over(durably: &Durably, worker: &str) {
    eventually("a takeover once the lease expired", || async {
        durably
            .process_one(Some(worker))
            .await
            .expect("process_one")
            .then_some(())
    })
    .await
}

/// Behaviour: a worker abandons a run in the middle of a step (`stop_within(Duration::ZERO)`,
/// as a crash would); once its lease expires another instance takes the run over, replays the
/// completed step without executing it again, runs the interrupted step again and completes.
pub async fn an_abandoned_run_is_taken_over_without_rerunning_completed_steps(
    store: Arc<dyn Store>,
) {
    let first_calls = Arc::new(AtomicUsize::new(0));
    let second_calls = Arc::new(AtomicUsize::new(0));
    let entered = Gate::new();
    let job = || {
        let (first_calls, second_calls, entered) =
            (first_calls.clone(), second_calls.clone(), entered.clone());
        Job::new(
            "behaviour-abandoned",
            move |step: StepContext, base: u64| {
                let (first_calls, second_calls, entered) =
                    (first_calls.clone(), second_calls.clone(), entered.clone());
                async move {
                    let first = step
                        .run("first", |_| async move {
                            first_calls.fetch_add(1, Ordering::SeqCst);
                            Ok(base + 1)
                        })
                        .await?;
                    let second = step
                        .run("second", |_| async move {
                            if second_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                                // The first execution hangs here until it is abandoned.
                                entered.open();
                                std::future::pending::<()>().await;
                            }
                            Ok(first * 10)
                        })
                        .await?;
                    Ok(json!({ "first": first, "second": second }))
                }
            },
        )
    };
    let lost = instance(&store, short_leases).await;
    let handle = lost.register(job()).expect("register");
    lost.start();
    let id = handle.trigger(4).await.expect("trigger").run.id;
    within("the first execution enters the second step", entered.wait()).await;
    let leased = run_of(&lost, &id).await;
    assert_eq!(leased.status, RunStatus::Leased);
    assert_eq!(leased.completed_step_count, 1);
    assert!(
        !within("stop_within(0)", lost.stop_within(Duration::ZERO)).await,
        "the run was abandoned, not finished"
    );
    assert_eq!(run_of(&lost, &id).await.status, RunStatus::Leased);

    let rescuer = instance(&store, short_leases).await;
    rescuer.register(job()).expect("register");
    rescuer.start();
    let run = terminal(&rescuer, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({ "first": 5, "second": 50 })));
    assert!(
        run.lease_generation > leased.lease_generation,
        "taken over under a new lease"
    );
    assert_eq!(
        first_calls.load(Ordering::SeqCst),
        1,
        "the completed step was replayed, not executed again"
    );
    assert_eq!(
        second_calls.load(Ordering::SeqCst),
        2,
        "the interrupted step ran again"
    );
    within("stop", rescuer.stop()).await;
}

/// Behaviour: a run left by a lost worker (claimed, one step stored, lease expired; fabricated
/// through the store and [`Store::admin`]) resumes from the stored step: its stored output is
/// what the job gets back, and the step does not execute again.
pub async fn an_expired_lease_resumes_from_the_stored_steps(store: Arc<dyn Store>) {
    let durably = instance(&store, |b| b).await;
    let fetch_calls = Arc::new(AtomicUsize::new(0));
    let save_calls = Arc::new(AtomicUsize::new(0));
    let job = {
        let (fetch_calls, save_calls) = (fetch_calls.clone(), save_calls.clone());
        durably
            .register(Job::new(
                "behaviour-expired-lease",
                move |step: StepContext, _: Value| {
                    let (fetch_calls, save_calls) = (fetch_calls.clone(), save_calls.clone());
                    async move {
                        let fetched: String = step
                            .run("fetch", |_| async move {
                                fetch_calls.fetch_add(1, Ordering::SeqCst);
                                Ok("fetched-here".to_string())
                            })
                            .await?;
                        let saved = step
                            .run("save", |_| async move {
                                save_calls.fetch_add(1, Ordering::SeqCst);
                                Ok(format!("{fetched}+saved"))
                            })
                            .await?;
                        Ok(saved)
                    }
                },
            ))
            .expect("register")
    };
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let now = Timestamp::now();
    let mut claimed = store
        .claim(
            &ClaimRequest::new("lost-worker", Duration::from_secs(60), 1),
            now,
        )
        .await
        .expect("claim");
    let lost = claimed.pop().expect("the run is claimable");
    assert_eq!(lost.id, id);
    let stored = store
        .persist_step(
            &Fence::of(&lost),
            NewStep {
                name: "fetch".into(),
                index: 0,
                status: StepStatus::Completed,
                output: Some(json!("fetched-by-the-lost-worker")),
                error: None,
                started_at: now,
                attempt: None,
            },
            now,
        )
        .await
        .expect("persist_step");
    assert!(stored.is_some(), "the lost worker's step landed");
    expire_lease(&store, &id).await;

    durably.start();
    let run = terminal(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(
        run.output,
        Some(json!("fetched-by-the-lost-worker+saved")),
        "the job got the stored output back"
    );
    assert_eq!(fetch_calls.load(Ordering::SeqCst), 0, "fetch was replayed");
    assert_eq!(save_calls.load(Ordering::SeqCst), 1);
    assert_eq!(run.lease_generation, lost.lease_generation + 1);
    assert_eq!(run.completed_step_count, 2);
    assert_eq!(run.lease_owner, None);
    within("stop", durably.stop()).await;
}

/// Two workers of one run: `stale` (long leases) claims it and blocks in its job until
/// `stale_release`; the test expires its lease in the store and `owner` takes the run over in
/// the background, blocking in its own job (after its first step) until `owner_release`.
struct Takeover {
    id: String,
    stale: Durably,
    stale_events: Recorder,
    stale_worker: tokio::task::JoinHandle<crate::Result<bool>>,
    stale_release: Gate,
    owner: Durably,
    owner_worker: tokio::task::JoinHandle<()>,
    owner_release: Gate,
}

impl Takeover {
    /// `stale_job` and `owner_job` get (entered, release) gates: each opens `entered` once it
    /// blocks, then waits for `release`.
    async fn new(
        store: &Arc<dyn Store>,
        name: &str,
        stale_job: impl FnOnce(Gate, Gate) -> Job<Value, Value>,
        owner_job: impl FnOnce(Gate, Gate) -> Job<Value, Value>,
    ) -> Takeover {
        let (stale_entered, stale_release) = (Gate::new(), Gate::new());
        let (owner_entered, owner_release) = (Gate::new(), Gate::new());
        let stale = instance(store, long_leases).await;
        let stale_events = Recorder::attach(&stale);
        stale
            .register(stale_job(stale_entered.clone(), stale_release.clone()))
            .expect("register");
        let owner = instance(store, |b| b).await;
        owner
            .register(owner_job(owner_entered.clone(), owner_release.clone()))
            .expect("register");
        let id = owner
            .trigger_json(name, json!({}), TriggerOptions::new())
            .await
            .expect("trigger")
            .run
            .id;
        let stale_worker = {
            let stale = stale.clone();
            tokio::spawn(async move { stale.process_one(Some("stale-worker")).await })
        };
        within("the stale worker blocks in its job", stale_entered.wait()).await;
        let claimed = run_of(&owner, &id).await;
        assert_eq!(claimed.lease_owner.as_deref(), Some("stale-worker"));
        expire_lease(store, &id).await;
        let owner_worker = {
            let owner = owner.clone();
            tokio::spawn(async move { take_over(&owner, "new-owner").await })
        };
        within("the new owner blocks in its job", owner_entered.wait()).await;
        let taken = run_of(&owner, &id).await;
        assert_eq!(taken.status, RunStatus::Leased);
        assert_eq!(taken.lease_owner.as_deref(), Some("new-owner"));
        assert_eq!(taken.lease_generation, claimed.lease_generation + 1);
        Takeover {
            id,
            stale,
            stale_events,
            stale_worker,
            stale_release,
            owner,
            owner_worker,
            owner_release,
        }
    }

    /// Lets the stale worker go on and waits until its `process_one` returns.
    async fn release_stale(&mut self) {
        self.stale_release.open();
        let processed = within("the stale worker returns", &mut self.stale_worker)
            .await
            .expect("the stale worker's task")
            .expect("process_one");
        assert!(processed, "the stale worker had claimed the run");
    }

    /// Lets the new owner finish; the run it completed.
    async fn release_owner(&mut self) -> Run {
        self.owner_release.open();
        within("the new owner finishes", &mut self.owner_worker)
            .await
            .expect("the new owner's task");
        let run = run_of(&self.owner, &self.id).await;
        assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
        assert_eq!(run.lease_owner, None);
        run
    }

    /// Fails unless the stale worker announced none of `types`.
    async fn stale_announced_none(&self, types: &[EventType]) {
        let seen = self.stale_events.flush(&self.stale).await;
        assert!(
            seen.iter().all(|e| !types.contains(&e.event_type())),
            "the stale worker announced one of {types:?}: {seen:?}"
        );
    }
}

/// Behaviour: a worker that froze inside a step (its lease expired in the store while it still
/// believes it holds it) and wakes up while another instance owns the run lands nothing: not
/// its step, not its log, not a later step; it announces no step or run end. Only the store's
/// fencing by lease generation stops it.
pub async fn a_stale_worker_s_writes_do_not_land_after_a_takeover(store: Arc<dyn Store>) {
    let name = "behaviour-stale-steps";
    let stale_next_step = Arc::new(AtomicUsize::new(0));
    let next = stale_next_step.clone();
    let stale_job = move |entered: Gate, release: Gate| {
        Job::new(name, move |step: StepContext, _: Value| {
            let (entered, release, next) = (entered.clone(), release.clone(), next.clone());
            async move {
                let inner = step.clone();
                step.run("step-1", |_| async move {
                    entered.open();
                    release.wait().await;
                    // Refused like every write of a stale worker; its error is ignored so that
                    // the step's own write is refused too.
                    let _ = inner.log().info("written by the stale worker", None).await;
                    Ok("stale-1".to_string())
                })
                .await?;
                step.run("step-2", |_| async move {
                    next.fetch_add(1, Ordering::SeqCst);
                    Ok("stale-2".to_string())
                })
                .await?;
                Ok(json!({ "winner": "stale" }))
            }
        })
    };
    let owner_job = move |entered: Gate, release: Gate| {
        Job::new(name, move |step: StepContext, _: Value| {
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                step.run("step-1", |_| async { Ok("new-1".to_string()) })
                    .await?;
                entered.open();
                release.wait().await;
                step.run("step-2", |_| async { Ok("new-2".to_string()) })
                    .await?;
                Ok(json!({ "winner": "new owner" }))
            }
        })
    };
    let mut takeover = Takeover::new(&store, name, stale_job, owner_job).await;
    takeover.release_stale().await;
    assert_eq!(
        stale_next_step.load(Ordering::SeqCst),
        0,
        "the stale worker never started step-2"
    );

    // The new owner still holds the run: only its own step and no log are stored.
    let (owner, id) = (&takeover.owner, takeover.id.clone());
    let run = run_of(owner, &id).await;
    assert_eq!(run.status, RunStatus::Leased);
    assert_eq!(run.lease_owner.as_deref(), Some("new-owner"));
    assert_eq!(run.completed_step_count, 1);
    let steps: Vec<_> = owner
        .get_steps(&id)
        .await
        .expect("get_steps")
        .into_iter()
        .map(|s| (s.name, s.index, s.output))
        .collect();
    assert_eq!(steps, [("step-1".to_string(), 0, Some(json!("new-1")))]);
    assert!(
        owner.get_logs(&id).await.expect("get_logs").is_empty(),
        "the stale worker's log did not land"
    );

    let run = takeover.release_owner().await;
    assert_eq!(run.output, Some(json!({ "winner": "new owner" })));
    assert_eq!(run.error, None);
    assert_eq!(run.completed_step_count, 2);
    assert!(
        takeover
            .owner
            .get_logs(&id)
            .await
            .expect("get_logs")
            .is_empty()
    );
    takeover
        .stale_announced_none(&[
            EventType::StepComplete,
            EventType::RunComplete,
            EventType::RunFail,
        ])
        .await;
}

/// A frozen worker's job (no steps) ends, succeeding or failing, while another instance owns
/// the run.
async fn stale_end(store: &Arc<dyn Store>, fails: bool) {
    let name = match fails {
        true => "behaviour-stale-failure",
        false => "behaviour-stale-success",
    };
    let stale_job = move |entered: Gate, release: Gate| {
        Job::new(name, move |_: StepContext, _: Value| {
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                entered.open();
                release.wait().await;
                match fails {
                    true => Err(Error::Job("stale failure".into())),
                    false => Ok(json!("stale output")),
                }
            }
        })
    };
    let owner_job = move |entered: Gate, release: Gate| {
        Job::new(name, move |_: StepContext, _: Value| {
            let (entered, release) = (entered.clone(), release.clone());
            async move {
                entered.open();
                release.wait().await;
                Ok(json!("new owner's output"))
            }
        })
    };
    let mut takeover = Takeover::new(store, name, stale_job, owner_job).await;
    takeover.release_stale().await;
    let run = run_of(&takeover.owner, &takeover.id).await;
    assert_eq!(run.status, RunStatus::Leased, "stale failure: {fails}");
    assert_eq!(run.lease_owner.as_deref(), Some("new-owner"));
    assert_eq!(run.output, None);
    assert_eq!(run.error, None);

    let run = takeover.release_owner().await;
    assert_eq!(run.output, Some(json!("new owner's output")));
    assert_eq!(run.error, None);
    takeover
        .stale_announced_none(&[EventType::RunComplete, EventType::RunFail])
        .await;
}

/// Behaviour: a frozen worker's completion and its failure, returned while another instance
/// owns the run, do not land; the new owner's result does.
pub async fn a_stale_worker_s_completion_or_failure_does_not_land(store: Arc<dyn Store>) {
    stale_end(&store, false).await;
    stale_end(&store, true).await;
}

/// Behaviour: three started instances on one store drain a backlog; every run completes and
/// each was executed exactly once.
pub async fn several_instances_execute_each_run_exactly_once(store: Arc<dyn Store>) {
    const RUNS: usize = 24;
    let calls = Counts::new(RUNS);
    let job = || {
        let calls = calls.clone();
        Job::new("behaviour-drain", move |step: StepContext, i: usize| {
            let calls = calls.clone();
            async move {
                calls.hit(i);
                let doubled = step.run("double", |_| async move { Ok(i * 2) }).await?;
                Ok(doubled)
            }
        })
    };
    let mut instances = Vec::new();
    for _ in 0..3 {
        let durably = instance(&store, |b| b.max_concurrent_runs(2)).await;
        durably.register(job()).expect("register");
        instances.push(durably);
    }
    let handle = instances[0]
        .job::<usize, usize>("behaviour-drain")
        .expect("the job's handle");
    let triggered = handle
        .batch_trigger((0..RUNS).map(|i| (i, TriggerOptions::new())))
        .await
        .expect("batch_trigger");
    for durably in &instances {
        durably.start();
    }
    let filter = RunFilter::new()
        .job_name("behaviour-drain")
        .status(RunStatus::Completed);
    eventually("every run completes", || async {
        let done = instances[1].get_runs(&filter).await.expect("get_runs");
        (done.len() == RUNS).then_some(())
    })
    .await;
    for durably in &instances {
        within("stop", durably.stop()).await;
    }
    assert_eq!(calls.get(), vec![1; RUNS], "each run executed exactly once");
    for (i, result) in triggered.iter().enumerate() {
        let run = run_of(&instances[2], &result.run.id).await;
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.output, Some(json!(i * 2)));
        assert_eq!(run.completed_step_count, 1);
    }
}
