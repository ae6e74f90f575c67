//! `worker:error` reporting and retention cadence: claim errors before `migrate()` (with a
//! backoff, then recovery), refused or failed lease renewals, completion and failure writes, and
//! idle-maintenance errors; `retain_runs` applied only by idle maintenance that reached idle, with
//! its cut-off, its batch of 100 and its once-a-minute cadence per instance (upstream
//! runtime.test.ts, purge.shared.ts, SPEC §4.6 and §6).
mod common;

use durably::store::ClaimRequest;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Answer, Backend, INJECTED, Instrumented, LIMIT, Recorder, TestDb, backend_tests, eventually,
    within,
};
use durably::{
    Durably, Error, Event, EventKind, EventType, Job, Run, RunFilter, RunStatus, StepContext,
    Timestamp, TriggerOptions, WaitOptions, store::RunPatch,
};
use serde_json::json;

/// A `worker:error` event as seen by a listener.
#[derive(Clone, Debug)]
struct WorkerError {
    error: String,
    run_id: Option<String>,
    sequence: u64,
    timestamp: Timestamp,
}

/// The `worker:error` events of `context` among `events`, in emission order.
fn worker_errors(events: &[Event], context: &str) -> Vec<WorkerError> {
    let mut found: Vec<WorkerError> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::WorkerError {
                error,
                context: seen,
                run_id,
            } if seen == context => Some(WorkerError {
                error: error.clone(),
                run_id: run_id.clone(),
                sequence: event.sequence,
                timestamp: event.timestamp,
            }),
            _ => None,
        })
        .collect();
    found.sort_by_key(|e| e.sequence);
    found
}

/// Waits for the first `worker:error` of `context`.
async fn first_worker_error(recorder: &Recorder, context: &str) -> WorkerError {
    eventually(&format!("worker:error {context}"), LIMIT, || async {
        worker_errors(&recorder.snapshot(), context)
            .into_iter()
            .next()
    })
    .await
}

/// The events of one type about one run.
fn events_of(events: &[Event], event_type: EventType, run_id: &str) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.event_type() == event_type && e.kind.run_id() == Some(run_id))
        .cloned()
        .collect()
}

/// A job doubling its input that counts its executions.
fn counted_doubler(name: &str, executions: &Arc<AtomicUsize>) -> Job<u64, u64> {
    let executions = executions.clone();
    Job::new(name, move |_: StepContext, n: u64| {
        let executions = executions.clone();
        async move {
            executions.fetch_add(1, Ordering::SeqCst);
            Ok(n * 2)
        }
    })
}

async fn stored(durably: &Durably, id: &str) -> Run {
    durably
        .get_run(id)
        .await
        .expect("get_run")
        .expect("the run exists")
}

async fn exists(durably: &Durably, id: &str) -> bool {
    durably.get_run(id).await.expect("get_run").is_some()
}

/// Waits for the run to reach a terminal state.
async fn settled(durably: &Durably, id: &str) -> Run {
    eventually("run reaches a terminal state", LIMIT, || async {
        let run = stored(durably, id).await;
        run.status.is_terminal().then_some(run)
    })
    .await
}

/// Marks a run `status` and ended `ago` (unfenced patch, as operators' tools do).
async fn ended_ago(durably: &Durably, id: &str, status: RunStatus, ago: Duration) {
    let patch = RunPatch {
        status: Some(status),
        completed_at: Some(Some(Timestamp::now() - ago)),
        ..RunPatch::default()
    };
    assert!(
        durably
            .store()
            .admin()
            .expect("operator writes")
            .update_run(id, patch, Timestamp::now())
            .await
            .expect("patch the run"),
        "run {id} exists"
    );
}

// ------------------------------------------------------------------------------------------
// worker:error: claim
// ------------------------------------------------------------------------------------------

/// `start()` before `migrate()`: every claim fails; the worker reports each failure as
/// `worker:error` (context `claim`, no run id) and retries with a growing backoff (100 ms × 2^n,
/// capped), not in a loop at the polling interval. Once migrated it recovers on its next try.
async fn start_before_migrate_reports_claim_errors_with_backoff_then_recovers(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.builder().build().expect("build durably");
    let recorder = Recorder::attach(&durably);
    let executions = Arc::new(AtomicUsize::new(0));
    let job = durably
        .register(counted_doubler("after-migrate", &executions))
        .expect("register");

    let started = Instant::now();
    durably.start();
    eventually("two claim errors", LIMIT, || async {
        (worker_errors(&recorder.snapshot(), "claim").len() >= 2).then_some(())
    })
    .await;
    // The measurement window: the polling interval is 20 ms, so a worker retrying without a
    // backoff would fail ~75 times in 1.5 s; with the backoff it fails 4 times (0, 0.2, 0.6,
    // 1.4 s).
    tokio::time::sleep_until((started + Duration::from_millis(1500)).into()).await;
    let errors = worker_errors(&recorder.flush(&durably).await, "claim");
    assert!(
        (2..20).contains(&errors.len()),
        "{} claim errors in {:?}: {errors:?}",
        errors.len(),
        started.elapsed()
    );
    for error in &errors {
        assert_eq!(error.run_id, None, "{error:?}");
        assert!(!error.error.is_empty(), "{error:?}");
    }
    // The first retry waits the first backoff step (200 ms), or on PostgreSQL at least 100 ms
    // when the listener's connect notice (the database answers) brings it forward.
    let gap = errors[1].timestamp.millis_since(errors[0].timestamp);
    assert!(gap >= 95, "retried after {gap} ms: {errors:?}");
    assert_eq!(executions.load(Ordering::SeqCst), 0);

    durably.migrate().await.expect("migrate");
    let id = job.trigger(21).await.expect("trigger").run.id;
    let run = within(
        "the recovered worker completes the run",
        LIMIT,
        durably.wait_for_run(&id, WaitOptions::new()),
    )
    .await
    .expect("the run completes");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!(42)));

    // Recovered: no claim failed after the successful claim that leased the run, and the next
    // trigger runs too.
    let events = recorder.flush(&durably).await;
    let leased = events_of(&events, EventType::RunLeased, &id);
    assert_eq!(leased.len(), 1, "{events:?}");
    let late: Vec<_> = worker_errors(&events, "claim")
        .into_iter()
        .filter(|e| e.sequence > leased[0].sequence)
        .collect();
    assert!(late.is_empty(), "claim errors after recovery: {late:?}");
    let again = within(
        "a second run after recovery",
        LIMIT,
        job.trigger_and_wait(2, TriggerOptions::new(), WaitOptions::new()),
    )
    .await
    .expect("second run");
    assert_eq!(again.output, Some(4));
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    durably.stop().await;
}

/// A trigger while the worker backs off from failed claims ends the backoff: its write shows the
/// store answers again, so the worker claims at once instead of waiting out the 3.2 s that
/// follow the fifth failure in a row.
async fn a_trigger_during_the_claim_backoff_is_claimed_at_once(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.builder().build().expect("build durably");
    let recorder = Recorder::attach(&durably);
    let executions = Arc::new(AtomicUsize::new(0));
    let job = durably
        .register(counted_doubler("during-backoff", &executions))
        .expect("register");
    durably.start();
    // Failures at 0, 0.2, 0.6, 1.4 and 3.0 s; the next claim is due 3.2 s after the fifth.
    eventually("five claim errors", LIMIT, || async {
        (worker_errors(&recorder.snapshot(), "claim").len() >= 5).then_some(())
    })
    .await;
    durably.migrate().await.expect("migrate");
    let id = job.trigger(21).await.expect("trigger").run.id;
    let run = within(
        "the run triggered during the backoff completes",
        LIMIT,
        durably.wait_for_run(&id, WaitOptions::new()),
    )
    .await
    .expect("the run completes");
    assert_eq!(run.output, Some(json!(42)));

    let events = recorder.flush(&durably).await;
    let errors = worker_errors(&events, "claim");
    assert_eq!(errors.len(), 5, "{errors:?}");
    let leased = events_of(&events, EventType::RunLeased, &id);
    assert_eq!(leased.len(), 1, "{events:?}");
    let waited = leased[0].timestamp.millis_since(errors[4].timestamp);
    assert!(
        waited < 3_200,
        "leased {waited} ms after the last failed claim: the worker waited out its backoff"
    );
    assert_eq!(executions.load(Ordering::SeqCst), 1);
    durably.stop().await;
}

// ------------------------------------------------------------------------------------------
// worker:error: lease-renewal
// ------------------------------------------------------------------------------------------

/// A renewal the store refuses (ownership lost): `worker:error` `lease-renewal` with the run
/// id, the run's token fires, the running step ends with `LeaseLost`, nothing is written for
/// that execution (the run stays leased, no step, no `run:complete` / `run:fail`). Once the
/// lease expires the run is claimed again and completes on its second execution.
async fn refused_lease_renewal_aborts_the_execution(backend: Backend) {
    let db = TestDb::new(backend);
    let store = Arc::new(Instrumented::over(db.store.clone()));
    store.renew.arm(Answer::Refuse, 1);
    let lease = Duration::from_secs(3);
    let durably = db
        .durably(|b| {
            b.shared_store(store.clone())
                .lease_duration(lease)
                .lease_renew_interval(Duration::from_millis(50))
        })
        .await;
    let recorder = Recorder::attach(&durably);
    let executions = Arc::new(AtomicUsize::new(0));
    let step_results = Arc::new(Mutex::new(Vec::<String>::new()));
    let job = {
        let (executions, step_results) = (executions.clone(), step_results.clone());
        durably
            .register(Job::new(
                "renewal-refused",
                move |step: StepContext, n: u64| {
                    let (executions, step_results) = (executions.clone(), step_results.clone());
                    async move {
                        if executions.fetch_add(1, Ordering::SeqCst) == 0 {
                            // The first execution waits for its token: only lease loss fires it.
                            let result = step
                                .run("wait-for-abort", |token| async move {
                                    token.cancelled().await;
                                    Ok(())
                                })
                                .await;
                            step_results.lock().expect("results").push(match &result {
                                Ok(()) => "ok".to_owned(),
                                Err(error) if error.is_lease_lost() => "lease-lost".to_owned(),
                                Err(error) => format!("other: {error}"),
                            });
                            result?;
                        }
                        Ok(n * 2)
                    }
                },
            ))
            .expect("register")
    };
    durably.start();
    let id = job.trigger(21).await.expect("trigger").run.id;

    let error = first_worker_error(&recorder, "lease-renewal").await;
    assert_eq!(error.run_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        error.error,
        format!("Lease renewal lost ownership for run {id}")
    );
    eventually("the first execution's step ends", LIMIT, || async {
        (!step_results.lock().expect("results").is_empty()).then_some(())
    })
    .await;
    assert_eq!(*step_results.lock().expect("results"), ["lease-lost"]);

    // Nothing of the abandoned execution landed (its lease runs until it expires).
    let run = stored(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Leased, "{run:?}");
    assert_eq!(run.lease_generation, 1, "{run:?}");
    assert_eq!(run.output, None);
    assert_eq!(run.error, None);
    assert!(
        durably.get_steps(&id).await.expect("steps").is_empty(),
        "the aborted step was not stored"
    );
    let events = recorder.flush(&durably).await;
    assert!(events_of(&events, EventType::RunComplete, &id).is_empty());
    assert!(events_of(&events, EventType::RunFail, &id).is_empty());
    assert!(events_of(&events, EventType::StepComplete, &id).is_empty());

    // After the lease expired the run is claimed again and completes.
    let run = within(
        "the run is reclaimed after its lease expired",
        LIMIT + lease,
        durably.wait_for_run(&id, WaitOptions::new()),
    )
    .await
    .expect("the run completes");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!(42)));
    assert_eq!(run.lease_generation, 2);
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    let events = recorder.flush(&durably).await;
    assert_eq!(events_of(&events, EventType::RunLeased, &id).len(), 2);
    assert_eq!(events_of(&events, EventType::RunComplete, &id).len(), 1);
    assert_eq!(worker_errors(&events, "lease-renewal").len(), 1);
    durably.stop().await;
}

/// A renewal that fails with a storage error is reported (`lease-renewal`, with the run id and
/// the store's message) but aborts nothing: the token stays quiet, later renewals go on, and
/// the run completes in the same execution.
async fn failed_lease_renewal_is_reported_and_the_run_goes_on(backend: Backend) {
    let db = TestDb::new(backend);
    let store = Arc::new(Instrumented::over(db.store.clone()));
    store.renew.arm(Answer::Fail, 1);
    let durably = db
        .durably(|b| {
            b.shared_store(store.clone())
                .lease_renew_interval(Duration::from_millis(50))
        })
        .await;
    let recorder = Recorder::attach(&durably);
    let release = common::Gate::new();
    let aborted = Arc::new(Mutex::new(None::<bool>));
    let executions = Arc::new(AtomicUsize::new(0));
    let job = {
        let (release, aborted, executions) = (release.clone(), aborted.clone(), executions.clone());
        durably
            .register(Job::new(
                "renewal-failed",
                move |step: StepContext, n: u64| {
                    let (release, aborted, executions) =
                        (release.clone(), aborted.clone(), executions.clone());
                    async move {
                        executions.fetch_add(1, Ordering::SeqCst);
                        step.run("hold", |_| async move {
                            release.wait().await;
                            Ok(())
                        })
                        .await?;
                        *aborted.lock().expect("aborted") = Some(step.is_cancelled());
                        Ok(n * 2)
                    }
                },
            ))
            .expect("register")
    };
    durably.start();
    let id = job.trigger(5).await.expect("trigger").run.id;

    let error = first_worker_error(&recorder, "lease-renewal").await;
    assert_eq!(error.run_id.as_deref(), Some(id.as_str()));
    assert!(error.error.contains(INJECTED), "{error:?}");
    // The keeper goes on renewing after the failed attempt.
    eventually("a renewal after the failed one", LIMIT, || async {
        events_of(&recorder.snapshot(), EventType::RunLeaseRenewed, &id)
            .iter()
            .any(|e| e.sequence > error.sequence)
            .then_some(())
    })
    .await;
    release.open();

    let run = within(
        "the run completes",
        LIMIT,
        durably.wait_for_run(&id, WaitOptions::new()),
    )
    .await
    .expect("the run completes");
    assert_eq!(run.output, Some(json!(10)));
    assert_eq!(run.lease_generation, 1, "completed by its first execution");
    assert_eq!(executions.load(Ordering::SeqCst), 1);
    assert_eq!(*aborted.lock().expect("aborted"), Some(false));
    let events = recorder.flush(&durably).await;
    assert_eq!(worker_errors(&events, "lease-renewal").len(), 1);
    durably.stop().await;
}

// ------------------------------------------------------------------------------------------
// worker:error: run-completion, run-failure
// ------------------------------------------------------------------------------------------

/// Which final write of an execution the store intercepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FinalWrite {
    Completion,
    Failure,
}

/// The job's first execution ends (completes with `2n`, or fails with `boom`) and the store
/// answers that final write with `answer`: `worker:error` with context `run-completion` /
/// `run-failure`, no `run:complete` / `run:fail`, the run still leased with nothing recorded.
/// Refused (lease lost) errors carry no run id, as upstream; failed ones carry it. The lease
/// then expires and a second execution records its result.
async fn final_write_not_recorded(backend: Backend, write: FinalWrite, answer: Answer) {
    let db = TestDb::new(backend);
    let store = Arc::new(Instrumented::over(db.store.clone()));
    match write {
        FinalWrite::Completion => store.complete.arm(answer, 1),
        FinalWrite::Failure => store.fail.arm(answer, 1),
    }
    let lease = Duration::from_secs(2);
    let durably = db
        .durably(|b| {
            b.shared_store(store.clone())
                .lease_duration(lease)
                .lease_renew_interval(Duration::from_millis(50))
        })
        .await;
    let recorder = Recorder::attach(&durably);
    let executions = Arc::new(AtomicUsize::new(0));
    let job = {
        let executions = executions.clone();
        durably
            .register(Job::new("final-write", move |_: StepContext, n: u64| {
                let executions = executions.clone();
                async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    match write {
                        FinalWrite::Completion => Ok(n * 2),
                        FinalWrite::Failure => Err(Error::Job("boom".into())),
                    }
                }
            }))
            .expect("register")
    };
    durably.start();
    let id = job.trigger(21).await.expect("trigger").run.id;

    let (context, refused_message) = match write {
        FinalWrite::Completion => (
            "run-completion",
            format!("Lease lost before completing run {id}"),
        ),
        FinalWrite::Failure => (
            "run-failure",
            format!("Lease lost before recording failure for run {id}"),
        ),
    };
    let error = first_worker_error(&recorder, context).await;
    match answer {
        Answer::Refuse => {
            assert_eq!(error.error, refused_message);
            assert_eq!(error.run_id, None, "{error:?}");
        }
        Answer::Fail => {
            assert!(error.error.contains(INJECTED), "{error:?}");
            assert_eq!(error.run_id.as_deref(), Some(id.as_str()));
        }
    }
    assert_eq!(executions.load(Ordering::SeqCst), 1);
    let run = stored(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Leased, "not recorded: {run:?}");
    assert_eq!(run.lease_generation, 1);
    assert_eq!(run.output, None);
    assert_eq!(run.error, None);
    assert_eq!(run.completed_at, None);
    let events = recorder.flush(&durably).await;
    assert!(events_of(&events, EventType::RunComplete, &id).is_empty());
    assert!(events_of(&events, EventType::RunFail, &id).is_empty());

    // The next execution, after the lease expired, records its result.
    let run = within("the run is reclaimed and ends", LIMIT + lease, async {
        settled(&durably, &id).await
    })
    .await;
    assert_eq!(run.lease_generation, 2, "{run:?}");
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    match write {
        FinalWrite::Completion => {
            assert_eq!(run.status, RunStatus::Completed);
            assert_eq!(run.output, Some(json!(42)));
        }
        FinalWrite::Failure => {
            assert_eq!(run.status, RunStatus::Failed);
            assert_eq!(run.error.as_deref(), Some("boom"));
        }
    }
    let events = recorder.flush(&durably).await;
    let ended = match write {
        FinalWrite::Completion => EventType::RunComplete,
        FinalWrite::Failure => EventType::RunFail,
    };
    assert_eq!(events_of(&events, ended, &id).len(), 1);
    assert_eq!(worker_errors(&events, context).len(), 1);
    durably.stop().await;
}

async fn refused_completion_write_is_reported_without_a_run_id(backend: Backend) {
    final_write_not_recorded(backend, FinalWrite::Completion, Answer::Refuse).await
}

async fn failed_completion_write_is_reported_with_the_run_id(backend: Backend) {
    final_write_not_recorded(backend, FinalWrite::Completion, Answer::Fail).await
}

async fn refused_failure_write_is_reported_without_a_run_id(backend: Backend) {
    final_write_not_recorded(backend, FinalWrite::Failure, Answer::Refuse).await
}

async fn failed_failure_write_is_reported_with_the_run_id(backend: Backend) {
    final_write_not_recorded(backend, FinalWrite::Failure, Answer::Fail).await
}

/// `process_one` (no worker loop, plain `complete_run` / `fail_run`) reports a failed final
/// write the same way and still returns `true`: it processed a run.
async fn process_one_reports_failed_final_writes(backend: Backend) {
    let db = TestDb::new(backend);
    let store = Arc::new(Instrumented::over(db.store.clone()));
    store.complete.arm(Answer::Fail, 1);
    store.fail.arm(Answer::Fail, 1);
    let durably = db.durably(|b| b.shared_store(store.clone())).await;
    let recorder = Recorder::attach(&durably);
    let job = durably
        .register(Job::new(
            "serverless-final",
            |_: StepContext, n: i64| async move {
                if n < 0 {
                    return Err(Error::Job("negative".into()));
                }
                Ok(n)
            },
        ))
        .expect("register");
    let completing = job.trigger(1).await.expect("trigger").run.id;
    assert!(durably.process_one(None).await.expect("process_one"));
    let failing = job.trigger(-1).await.expect("trigger").run.id;
    assert!(durably.process_one(None).await.expect("process_one"));

    let events = recorder.flush(&durably).await;
    let completion = worker_errors(&events, "run-completion");
    assert_eq!(completion.len(), 1, "{events:?}");
    assert_eq!(completion[0].run_id.as_deref(), Some(completing.as_str()));
    assert!(completion[0].error.contains(INJECTED));
    let failure = worker_errors(&events, "run-failure");
    assert_eq!(failure.len(), 1, "{events:?}");
    assert_eq!(failure[0].run_id.as_deref(), Some(failing.as_str()));
    assert!(failure[0].error.contains(INJECTED));
    for id in [&completing, &failing] {
        assert_eq!(stored(&durably, id).await.status, RunStatus::Leased);
        assert!(events_of(&events, EventType::RunComplete, id).is_empty());
        assert!(events_of(&events, EventType::RunFail, id).is_empty());
    }
}

// ------------------------------------------------------------------------------------------
// worker:error: idle-maintenance
// ------------------------------------------------------------------------------------------

/// An idle-maintenance failure never reaches the caller of `process_until_idle`: it is
/// reported as `worker:error` `idle-maintenance`, and the rest of the maintenance (the
/// retention purge) still runs.
async fn idle_maintenance_errors_are_reported_not_returned(backend: Backend) {
    let db = TestDb::new(backend);
    let store = Arc::new(Instrumented::over(db.store.clone()));
    let durably = db
        .durably(|b| b.shared_store(store.clone()).retain_runs("1m"))
        .await;
    let recorder = Recorder::attach(&durably);
    let job = durably
        .register(counted_doubler("maintained", &Arc::default()))
        .expect("register");
    let old = job.trigger(1).await.expect("trigger").run.id;
    assert!(durably.process_one(None).await.expect("process_one"));
    ended_ago(
        &durably,
        &old,
        RunStatus::Completed,
        Duration::from_secs(120),
    )
    .await;
    store.release.arm(Answer::Fail, 1);
    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("maintenance errors are not returned"),
        0
    );
    let errors = worker_errors(&recorder.flush(&durably).await, "idle-maintenance");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].error.contains(INJECTED), "{errors:?}");
    assert_eq!(errors[0].run_id, None);
    assert!(!exists(&durably, &old).await, "the purge still ran");
}

// ------------------------------------------------------------------------------------------
// Retention
// ------------------------------------------------------------------------------------------

fn retained_job(durably: &Durably, name: &str) -> durably::JobHandle<u64, u64> {
    durably
        .register(counted_doubler(name, &Arc::default()))
        .expect("register")
}

/// `process_until_idle` that stops on its run limit (also `Some(0)`, and also when the limit is
/// reached just as the queue empties) does no maintenance: a run past the retention cut-off
/// stays. The next call that reaches idle purges it.
async fn process_until_idle_stopped_by_its_limit_does_no_maintenance(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.retain_runs("1m")).await;
    let job = retained_job(&durably, "limited");
    let old = job.trigger(1).await.expect("trigger").run.id;
    assert!(durably.process_one(None).await.expect("process_one"));
    ended_ago(
        &durably,
        &old,
        RunStatus::Completed,
        Duration::from_secs(120),
    )
    .await;
    let second = job.trigger(2).await.expect("trigger").run.id;
    let third = job.trigger(3).await.expect("trigger").run.id;

    assert_eq!(
        durably.process_until_idle(None, Some(0)).await.expect("0"),
        0
    );
    assert!(exists(&durably, &old).await, "Some(0): no maintenance");
    assert_eq!(
        durably.process_until_idle(None, Some(1)).await.expect("1"),
        1
    );
    assert!(exists(&durably, &old).await, "stopped on the limit");
    assert_eq!(stored(&durably, &third).await.status, RunStatus::Pending);
    // The limit is reached as the queue empties: it stopped on the limit, not because idle.
    assert_eq!(
        durably.process_until_idle(None, Some(1)).await.expect("1"),
        1
    );
    assert!(exists(&durably, &old).await, "stopped on the limit");

    assert_eq!(
        durably.process_until_idle(None, None).await.expect("idle"),
        0
    );
    assert!(!exists(&durably, &old).await, "purged once idle");
    for id in [&second, &third] {
        assert_eq!(stored(&durably, id).await.status, RunStatus::Completed);
    }
}

/// The purge removes terminal runs that ended before `now - retain_runs` only: runs younger
/// than the period (one that just completed, one that ended 30 s ago) stay, whatever their
/// status; completed, failed and cancelled runs older than the period go; active runs stay.
async fn retention_keeps_runs_younger_than_the_period(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.retain_runs("1m")).await;
    let job = retained_job(&durably, "retained");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(job.trigger(n).await.expect("trigger").run.id);
        assert!(durably.process_one(None).await.expect("process_one"));
    }
    let [young, young_failed, old, old_failed, old_cancelled] =
        <[String; 5]>::try_from(ids).expect("five runs");
    ended_ago(
        &durably,
        &young,
        RunStatus::Completed,
        Duration::from_secs(30),
    )
    .await;
    ended_ago(
        &durably,
        &young_failed,
        RunStatus::Failed,
        Duration::from_secs(30),
    )
    .await;
    ended_ago(
        &durably,
        &old,
        RunStatus::Completed,
        Duration::from_secs(70),
    )
    .await;
    ended_ago(
        &durably,
        &old_failed,
        RunStatus::Failed,
        Duration::from_secs(70),
    )
    .await;
    ended_ago(
        &durably,
        &old_cancelled,
        RunStatus::Cancelled,
        Duration::from_secs(70),
    )
    .await;
    // An active run (leased by another worker) is never purged.
    let leased = job.trigger(10).await.expect("trigger").run.id;
    let claimed = durably
        .store()
        .claim(
            &ClaimRequest::new("elsewhere", Duration::from_secs(60), 1),
            Timestamp::now(),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, leased);
    // Completes inside the call, right before its maintenance.
    let just_completed = job.trigger(9).await.expect("trigger").run.id;

    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process_until_idle"),
        1
    );
    let just = stored(&durably, &just_completed).await;
    assert_eq!(just.status, RunStatus::Completed);
    assert!(exists(&durably, &young).await, "ended 30 s ago: kept");
    assert!(
        exists(&durably, &young_failed).await,
        "ended 30 s ago: kept"
    );
    assert!(!exists(&durably, &old).await, "ended 70 s ago: purged");
    assert!(
        !exists(&durably, &old_failed).await,
        "ended 70 s ago: purged"
    );
    assert!(
        !exists(&durably, &old_cancelled).await,
        "ended 70 s ago: purged"
    );
    assert_eq!(stored(&durably, &leased).await.status, RunStatus::Leased);
}

/// One idle maintenance purges at most 100 runs (oldest first); the rest wait for the next
/// purge, at most once a minute per instance: a second idle pass of the same instance, or a
/// direct `run_idle_maintenance`, purges nothing more, while another instance on the same
/// database (its own clock) purges the rest at its first idle pass.
async fn retention_purges_100_runs_per_pass_once_a_minute_per_instance(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b.retain_runs("1m")).await;
    let job = retained_job(&durably, "batched");
    let triggered = job
        .batch_trigger((0..105).map(|n| (n, TriggerOptions::new())))
        .await
        .expect("batch trigger");
    // Oldest first: run i ended (200 - i) s ago.
    for (i, result) in triggered.iter().enumerate() {
        ended_ago(
            &durably,
            &result.run.id,
            RunStatus::Completed,
            Duration::from_secs(200 - i as u64),
        )
        .await;
    }
    let remaining = |durably: &Durably| {
        let durably = durably.clone();
        async move {
            let runs = durably.get_runs(&RunFilter::new()).await.expect("get_runs");
            let mut inputs: Vec<u64> = runs
                .iter()
                .map(|r| r.input.as_u64().expect("input"))
                .collect();
            inputs.sort_unstable();
            inputs
        }
    };

    assert_eq!(
        durably.process_until_idle(None, None).await.expect("idle"),
        0
    );
    assert_eq!(remaining(&durably).await, (100..105).collect::<Vec<u64>>());

    // Within the minute: neither another idle pass nor a direct call purges again.
    assert_eq!(
        durably.process_until_idle(None, None).await.expect("idle"),
        0
    );
    durably.run_idle_maintenance().await;
    assert_eq!(remaining(&durably).await.len(), 5);

    // Another instance keeps its own clock: its first idle pass purges.
    let other = db.durably(|b| b.retain_runs("1m")).await;
    assert_eq!(other.process_until_idle(None, None).await.expect("idle"), 0);
    assert!(remaining(&durably).await.is_empty());
}

backend_tests!(
    start_before_migrate_reports_claim_errors_with_backoff_then_recovers,
    a_trigger_during_the_claim_backoff_is_claimed_at_once,
    refused_lease_renewal_aborts_the_execution,
    failed_lease_renewal_is_reported_and_the_run_goes_on,
    refused_completion_write_is_reported_without_a_run_id,
    failed_completion_write_is_reported_with_the_run_id,
    refused_failure_write_is_reported_without_a_run_id,
    failed_failure_write_is_reported_with_the_run_id,
    process_one_reports_failed_final_writes,
    idle_maintenance_errors_are_reported_not_returned,
    process_until_idle_stopped_by_its_limit_does_no_maintenance,
    retention_keeps_runs_younger_than_the_period,
    retention_purges_100_runs_per_pass_once_a_minute_per_instance,
);
