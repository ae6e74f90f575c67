//! Resuming a failed run (`Durably::resume`, issue 22): the run goes back to `pending` under
//! its own id and its next execution replays the steps it completed before the failure (not
//! executed again), then executes the failed step and the rest. On SQLite (file and memory),
//! PostgreSQL and the memory store.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, LIMIT, Recorder, TestDb, eventually, terminal};
use durably::testing::MemoryStore;
use durably::{
    Durably, Error, EventKind, EventType, Job, NewWait, RunStatus, StepContext, StepStatus,
    WaitResult,
};
use serde_json::{Value, json};

/// Where a test's instance stores its runs.
#[derive(Clone, Copy, Debug)]
enum Where {
    Db(Backend),
    Memory,
}

/// A migrated instance with test timings (steps not preserved), and the database it uses.
async fn instance(place: Where) -> (Option<TestDb>, Durably) {
    match place {
        Where::Db(backend) => {
            let db = TestDb::new(backend);
            let durably = db.durably(|b| b).await;
            (Some(db), durably)
        }
        Where::Memory => {
            let durably = Durably::builder()
                .shared_store(Arc::new(MemoryStore::new()))
                .polling_interval(Duration::from_millis(20))
                .build()
                .expect("build durably");
            durably.migrate().await.expect("migrate");
            (None, durably)
        }
    }
}

/// How often each step's function ran.
#[derive(Default)]
struct Counts {
    one: AtomicUsize,
    two: AtomicUsize,
    three: AtomicUsize,
}

/// Steps one, two and three; three fails on its first execution.
fn three_steps(counts: Arc<Counts>) -> Job<Value, Value> {
    Job::new("three-steps", move |step: StepContext, _input: Value| {
        let counts = counts.clone();
        async move {
            let c = counts.clone();
            let one = step
                .run("one", move |_| async move {
                    c.one.fetch_add(1, Ordering::SeqCst);
                    Ok(1)
                })
                .await?;
            let c = counts.clone();
            let two = step
                .run("two", move |_| async move {
                    c.two.fetch_add(1, Ordering::SeqCst);
                    Ok(2)
                })
                .await?;
            let c = counts.clone();
            let three = step
                .run("three", move |_| async move {
                    match c.three.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(Error::Job("three failed the first time".into()).into()),
                        _ => Ok(3),
                    }
                })
                .await?;
            Ok(json!(one + two + three))
        }
    })
}

/// A failed run keeps its completed steps (steps not preserved); `resume` puts it back to
/// `pending` under its id, announces it with `run:trigger` and a worker completes it: steps
/// one and two executed once (replayed on resume), three twice.
async fn resume_continues_a_failed_run_from_its_failed_step(place: Where) {
    let (_db, durably) = instance(place).await;
    assert!(!durably.config().preserve_steps);
    let counts = Arc::new(Counts::default());
    let job = durably
        .register(three_steps(counts.clone()))
        .expect("register");
    let events = Recorder::attach(&durably);
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let failed = terminal(&durably, &id).await;
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("three failed the first time")),
        "{failed:?}"
    );
    let steps = durably.get_steps(&id).await.expect("steps");
    let completed: Vec<&str> = steps
        .iter()
        .filter(|s| s.status == StepStatus::Completed)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(completed, ["one", "two"], "kept without preserve_steps");

    let resumed = durably.resume(&id).await.expect("resume");
    assert_eq!(resumed.id, id);
    assert_ne!(resumed.status, RunStatus::Failed);
    assert_eq!(resumed.error, None);
    let done = eventually("the resumed run completes", LIMIT, || async {
        durably
            .get_run(&id)
            .await
            .expect("get_run")
            .filter(|run| run.status == RunStatus::Completed)
    })
    .await;
    assert_eq!(done.output, Some(json!(6)));
    assert_eq!(
        counts.one.load(Ordering::SeqCst),
        1,
        "replayed, not executed"
    );
    assert_eq!(
        counts.two.load(Ordering::SeqCst),
        1,
        "replayed, not executed"
    );
    assert_eq!(counts.three.load(Ordering::SeqCst), 2);
    assert_eq!(
        durably
            .get_runs(&durably::RunFilter::new())
            .await
            .expect("runs")
            .len(),
        1,
        "no new run"
    );
    // Completion drops the steps as usual (steps not preserved).
    assert!(durably.get_steps(&id).await.expect("steps").is_empty());

    let triggers: Vec<_> = events
        .of(&durably, EventType::RunTrigger)
        .await
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::RunTrigger { run_id, .. } => Some(run_id),
            _ => None,
        })
        .collect();
    assert_eq!(triggers, [id.clone(), id], "trigger, then resume");
    durably.stop().await;
}

/// Only a failed run is resumed: a completed or pending run is a conflict that changes
/// nothing, an unknown id is not found.
async fn resume_refuses_runs_that_are_not_failed(place: Where) {
    let (_db, durably) = instance(place).await;
    let counts = Arc::new(Counts::default());
    // The first execution of step three is spent: runs of this job complete.
    counts.three.store(1, Ordering::SeqCst);
    let job = durably
        .register(three_steps(counts.clone()))
        .expect("register");
    let pending = job.trigger(json!({})).await.expect("trigger").run.id;
    let before = durably.get_run(&pending).await.expect("get").expect("run");
    match durably.resume(&pending).await {
        Err(Error::Conflict(message)) => {
            assert!(
                message.contains(&pending) && message.contains("pending"),
                "{message}"
            )
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        durably.get_run(&pending).await.expect("get"),
        Some(before),
        "nothing changed"
    );

    assert_eq!(
        durably
            .process_until_idle(None, None)
            .await
            .expect("process"),
        1
    );
    let completed = durably.get_run(&pending).await.expect("get").expect("run");
    assert_eq!(completed.status, RunStatus::Completed);
    match durably.resume(&pending).await {
        Err(Error::Conflict(message)) => {
            assert!(message.contains("completed"), "{message}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        durably.get_run(&pending).await.expect("get"),
        Some(completed)
    );

    match durably.resume("01NOSUCHRUN0000000000000000").await {
        Err(Error::NotFound(message)) => assert!(message.contains("01NOSUCHRUN"), "{message}"),
        other => panic!("expected not found, got {other:?}"),
    }
}

/// A job that prepares a wait, fails on its first execution before awaiting it, and awaits it
/// when executed again.
fn fails_with_a_pending_wait(
    executions: Arc<AtomicUsize>,
    before: Arc<AtomicUsize>,
) -> Job<Value, Value> {
    Job::new(
        "approval-then-fail",
        move |step: StepContext, _input: Value| {
            let (executions, before) = (executions.clone(), before.clone());
            async move {
                let b = before.clone();
                step.run("before", move |_| async move {
                    b.fetch_add(1, Ordering::SeqCst);
                    Ok(1)
                })
                .await?;
                let wait = step.prepare_wait(NewWait::new("approval")).await?;
                if executions.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(Error::Job("failed while the approval was pending".into()));
                }
                match step.wait_for(&wait).await? {
                    WaitResult::Signal { payload } => Ok(json!({ "signal": payload })),
                    other => Ok(json!(format!("{other:?}"))),
                }
            }
        },
    )
}

/// A run that failed while a wait was pending: the failure closes the wait, the resume reopens
/// it, the replay suspends on it and a signal completes the run.
async fn a_run_that_failed_with_a_pending_wait_resumes_and_its_wait_works(place: Where) {
    let (_db, durably) = instance(place).await;
    let (executions, before) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let job = durably
        .register(fails_with_a_pending_wait(
            executions.clone(),
            before.clone(),
        ))
        .expect("register");
    durably.start();
    let id = job.trigger(json!({})).await.expect("trigger").run.id;
    let failed = terminal(&durably, &id).await;
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    let waits = durably.get_waits(&id).await.expect("waits");
    assert_eq!(waits.len(), 1);
    assert_eq!(waits[0].status, durably::WaitStatus::Closed);
    let wait_id = waits[0].id.clone();

    durably.resume(&id).await.expect("resume");
    eventually("the resumed run waits", LIMIT, || async {
        durably
            .get_run(&id)
            .await
            .expect("get_run")
            .filter(|run| run.status == RunStatus::Waiting)
    })
    .await;
    let wait = durably
        .get_wait(&wait_id)
        .await
        .expect("get_wait")
        .expect("wait");
    assert_eq!(wait.status, durably::WaitStatus::Pending);
    durably
        .signal(&wait_id, json!({"approved": true}), "approve-1")
        .await
        .expect("signal");
    let done = terminal(&durably, &id).await;
    assert_eq!(done.status, RunStatus::Completed, "{done:?}");
    assert_eq!(done.output, Some(json!({"signal": {"approved": true}})));
    assert_eq!(before.load(Ordering::SeqCst), 1, "replayed, not executed");
    durably.stop().await;
}

macro_rules! resume_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Where::Db(super::Backend::SqliteFile)).await
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Where::Db(super::Backend::SqliteMemory)).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(durably_postgres_tests),
                    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
                )]
                async fn $name() {
                    super::$name(super::Where::Db(super::Backend::Postgres)).await
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Where::Memory).await
                }
            )*
        }
    };
}

resume_tests!(
    resume_continues_a_failed_run_from_its_failed_step,
    resume_refuses_runs_that_are_not_failed,
    a_run_that_failed_with_a_pending_wait_resumes_and_its_wait_works,
);
