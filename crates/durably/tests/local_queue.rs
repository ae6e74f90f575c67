//! The local queue (`Tuning::local_queue`): a worker keeps more runs in progress (leased) than
//! `max_concurrent_runs`, and still at most `max_concurrent_runs` of them execute job code at
//! once; every run completes, every step executes once. A worker killed (SIGKILL) while it
//! holds hundreds of runs loses none of them and re-runs no completed step; a stopping worker
//! gives back at once the runs that wait for their first turn.
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Gate, LIMIT, TestDb, backend_tests, eventually, terminal};
use durably::{Durably, Job, RunFilter, RunStatus, StepContext, Store, TriggerOptions};

/// What the job did: how often each input's step executed, and the most step functions
/// executing at once.
#[derive(Clone, Default)]
struct Tracker {
    executions: Arc<Mutex<HashMap<u64, usize>>>,
    executing: Arc<AtomicUsize>,
    high_water: Arc<AtomicUsize>,
}

/// Two steps; the first waits for `gate` inside its function.
fn job(tracker: &Tracker, gate: &Gate) -> Job<u64, u64> {
    let (tracker, gate) = (tracker.clone(), gate.clone());
    Job::new("local-queue", move |step: StepContext, n: u64| {
        let (tracker, gate) = (tracker.clone(), gate.clone());
        async move {
            let first = step
                .run("work", |_| async {
                    let now = tracker.executing.fetch_add(1, Ordering::SeqCst) + 1;
                    tracker.high_water.fetch_max(now, Ordering::SeqCst);
                    *tracker.executions.lock().unwrap().entry(n).or_default() += 1;
                    gate.wait().await;
                    tracker.executing.fetch_sub(1, Ordering::SeqCst);
                    Ok(n * 10)
                })
                .await?;
            step.run("after", |_| async move { Ok(first + 1) }).await
        }
    })
}

async fn leased(durably: &Durably) -> usize {
    let filter = RunFilter::new().status(RunStatus::Leased);
    durably.get_runs(&filter).await.unwrap().len()
}

async fn more_runs_in_progress_than_execute_at_once(backend: Backend) {
    const RUNS: u64 = 24;
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.max_concurrent_runs(2).local_queue(16))
        .await;
    let (tracker, gate) = (Tracker::default(), Gate::new());
    let handle = durably.register(job(&tracker, &gate)).unwrap();
    let mut ids = Vec::new();
    for n in 0..RUNS {
        ids.push(handle.trigger(n).await.unwrap().run.id);
    }
    durably.start();
    // The worker holds more runs than it executes: two step functions wait for the gate,
    // the other runs wait for a turn, leased.
    eventually("more than 2 runs leased", LIMIT, || async {
        (leased(&durably).await > 2).then_some(())
    })
    .await;
    eventually("2 step functions executing", LIMIT, || async {
        (tracker.executing.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    gate.open();
    for id in &ids {
        let run = terminal(&durably, id).await;
        assert_eq!(
            run.status,
            RunStatus::Completed,
            "run {id}: {:?}",
            run.error
        );
    }
    assert_eq!(
        tracker.high_water.load(Ordering::SeqCst),
        2,
        "at most max_concurrent_runs step functions execute at once"
    );
    let executions = tracker.executions.lock().unwrap().clone();
    assert_eq!(executions.len(), RUNS as usize);
    assert!(
        executions.values().all(|&count| count == 1),
        "every step executed once: {executions:?}"
    );
    durably.stop().await;
}

async fn a_stopping_worker_gives_its_waiting_runs_back_at_once(backend: Backend) {
    const RUNS: u64 = 30;
    let db = TestDb::new(backend);
    // A long lease: runs given back are pending long before their leases could expire.
    let durably = db
        .durably(|b| {
            b.max_concurrent_runs(1)
                .local_queue(20)
                .lease_duration(Duration::from_secs(60))
        })
        .await;
    let (tracker, gate) = (Tracker::default(), Gate::new());
    let handle = durably.register(job(&tracker, &gate)).unwrap();
    for n in 0..RUNS {
        handle.trigger(n).await.unwrap();
    }
    durably.start();
    eventually("runs waiting in the local queue", LIMIT, || async {
        (leased(&durably).await > 5 && tracker.executing.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // The stop waits for the run executing (held at the gate); the runs waiting for their
    // first turn go back to pending meanwhile.
    let stopping = {
        let durably = durably.clone();
        tokio::spawn(async move { durably.stop().await })
    };
    // One snapshot of every run: a claim that was in flight when the stop began may lease
    // runs for a moment before it gives them back too.
    eventually(
        "every run but the executing one pending, that one leased",
        LIMIT,
        || async {
            let runs = durably.get_runs(&RunFilter::new()).await.unwrap();
            let count = |status| runs.iter().filter(|run| run.status == status).count() as u64;
            (count(RunStatus::Leased) == 1 && count(RunStatus::Pending) == RUNS - 1).then_some(())
        },
    )
    .await;
    gate.open();
    stopping.await.unwrap();
    assert_eq!(
        tracker.executions.lock().unwrap().len(),
        1,
        "no other run started"
    );

    // Another instance executes the runs given back.
    let other = db.durably(|b| b.max_concurrent_runs(4)).await;
    other.register(job(&tracker, &gate)).unwrap();
    other.start();
    eventually("every run completed", LIMIT, || async {
        let completed = RunFilter::new().status(RunStatus::Completed);
        (other.get_runs(&completed).await.unwrap().len() as u64 == RUNS).then_some(())
    })
    .await;
    let executions = tracker.executions.lock().unwrap().clone();
    assert!(
        executions.len() as u64 == RUNS && executions.values().all(|&count| count == 1),
        "every step executed once: {executions:?}"
    );
    other.stop().await;
}

/// A run that has started and committed a step continues before runs still waiting to
/// start: the turn freed next goes to it.
async fn a_started_run_continues_before_new_runs_start(backend: Backend) {
    const RUNS: u64 = 6;
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.max_concurrent_runs(1).local_queue(8))
        .await;
    // Step functions in the order they executed; the second step `a` to execute waits for
    // the gate, keeping the one turn.
    let order: Arc<Mutex<Vec<(u64, &'static str)>>> = Arc::default();
    let (started, gate) = (Arc::new(AtomicUsize::new(0)), Gate::new());
    let handle = {
        let (order, started, gate) = (order.clone(), started.clone(), gate.clone());
        durably
            .register(Job::new("priority", move |step: StepContext, n: u64| {
                let (order, started, gate) = (order.clone(), started.clone(), gate.clone());
                async move {
                    let order_b = order.clone();
                    step.run("a", |_| async move {
                        order.lock().unwrap().push((n, "a"));
                        if started.fetch_add(1, Ordering::SeqCst) == 1 {
                            gate.wait().await;
                        }
                        Ok(n)
                    })
                    .await?;
                    step.run("b", |_| async move {
                        order_b.lock().unwrap().push((n, "b"));
                        Ok(n)
                    })
                    .await
                }
            }))
            .unwrap()
    };
    let mut ids = Vec::new();
    for n in 0..RUNS {
        ids.push(handle.trigger(n).await.unwrap().run.id);
    }
    durably.start();
    // The first run to start committed step a and waits for a turn again; the second holds
    // the turn at the gate; the other runs wait for their first turn (since before the first
    // run's commit: they were claimed with it).
    let first = eventually("the first run's step a committed", LIMIT, || async {
        let first = order.lock().unwrap().first().map(|(n, _)| *n)?;
        let run = durably.get_run(&ids[first as usize]).await.unwrap()?;
        (run.completed_step_count >= 1 && order.lock().unwrap().len() == 2).then_some(first)
    })
    .await;
    gate.open();
    for id in &ids {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len() as u64, RUNS * 2, "{order:?}");
    assert_eq!(
        order[2],
        (first, "b"),
        "the started run continued before a new run started: {order:?}"
    );
    durably.stop().await;
}

/// A worker holds at most `local_queue` runs: a short run's completion claims the next run for
/// its slot, and none ahead (a run held ahead would wait for a turn as well).
async fn a_local_queue_holds_at_most_its_size(backend: Backend) {
    const RUNS: u64 = 12;
    let db = TestDb::new(backend);
    let durably = db
        .durably(|b| b.max_concurrent_runs(1).local_queue(4))
        .await;
    // No steps (a run gives its turn back only when it returns); the second run to start
    // waits for the gate, keeping the one turn.
    let first: Arc<Mutex<Option<u64>>> = Arc::default();
    let (started, gate) = (Arc::new(AtomicUsize::new(0)), Gate::new());
    let handle = {
        let (first, started, gate) = (first.clone(), started.clone(), gate.clone());
        durably
            .register(Job::new("bounded", move |_step: StepContext, n: u64| {
                let (first, started, gate) = (first.clone(), started.clone(), gate.clone());
                async move {
                    match started.fetch_add(1, Ordering::SeqCst) {
                        0 => *first.lock().unwrap() = Some(n),
                        1 => gate.wait().await,
                        _ => {}
                    }
                    Ok(n)
                }
            }))
            .unwrap()
    };
    let mut ids = Vec::new();
    for n in 0..RUNS {
        ids.push(handle.trigger(n).await.unwrap().run.id);
    }
    durably.start();
    // The first run's completion and its slot's next claim are one write: once it is
    // visible, so is everything that write claimed.
    eventually(
        "the first run completed, the second executing",
        LIMIT,
        || async {
            let n = (*first.lock().unwrap())?;
            let run = durably.get_run(&ids[n as usize]).await.unwrap()?;
            (run.status == RunStatus::Completed && started.load(Ordering::SeqCst) == 2)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        leased(&durably).await,
        4,
        "the executing run, two waiting for their first turn, the run the completion claimed"
    );
    gate.open();
    for id in &ids {
        assert_eq!(terminal(&durably, id).await.status, RunStatus::Completed);
    }
    durably.stop().await;
}

backend_tests!(
    a_local_queue_holds_at_most_its_size,
    more_runs_in_progress_than_execute_at_once,
    a_stopping_worker_gives_its_waiting_runs_back_at_once,
    a_started_run_continues_before_new_runs_start
);

#[test]
fn a_local_queue_out_of_range_is_refused_with_its_value() {
    for runs in [0, 10_001] {
        let Err(error) = Durably::builder()
            .sqlite(":memory:")
            .local_queue(runs)
            .build()
        else {
            panic!("a local queue of {runs} runs was accepted");
        };
        let message = error.to_string();
        assert!(
            message.contains("local_queue") && message.contains(&runs.to_string()),
            "{message}"
        );
    }
}

const ENV_STORE: &str = "DURABLY_TEST_LOCAL_QUEUE_STORE";
const ENV_LOG: &str = "DURABLY_TEST_LOCAL_QUEUE_LOG";
/// Runs of the crash test, and the local queue of the worker that is killed.
const CRASH_RUNS: u64 = 400;
const CRASH_QUEUE: usize = 300;
/// Runs the killed worker executes at once. Each ends stalled in step `b`, its step `a`
/// committed, so the kill finds at least this many runs with a committed step, whatever the
/// order in which turns were given.
const CRASH_TURNS: usize = 32;
/// The killed worker's lease: the survivor takes its runs over once they expire.
const CRASH_LEASE: Duration = Duration::from_secs(2);

/// Appends `<pid> <run id> <step>` to `log` (synced: the line survives a SIGKILL right after).
fn record(log: &Path, run_id: &str, step: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    file.write_all(format!("{} {run_id} {step}\n", std::process::id()).as_bytes())?;
    file.sync_data()
}

/// Two steps, each recording its execution; with `stall`, step `b` never ends (the worker
/// is killed in it).
fn crash_job(log: PathBuf, stall: bool) -> Job<u64, u64> {
    Job::new("held", move |step: StepContext, n: u64| {
        let log = log.clone();
        async move {
            let run_id = step.run_id().to_owned();
            let (log_a, id_a) = (log.clone(), run_id.clone());
            step.run("a", |_| async move {
                record(&log_a, &id_a, "a")?;
                Ok(n)
            })
            .await?;
            step.run("b", |_| async move {
                if stall {
                    std::future::pending::<()>().await;
                }
                record(&log, &run_id, "b")?;
                Ok(n)
            })
            .await
        }
    })
}

/// The store named by `spec`: a SQLite file path, or `postgres:<schema>`.
fn store_of(spec: &str) -> Arc<dyn Store> {
    match spec.strip_prefix("postgres:") {
        Some(schema) => Arc::new(common::postgres_store(schema)),
        None => Arc::new(durably::SqliteStore::open(spec).expect("open sqlite file")),
    }
}

fn crash_builder(store: Arc<dyn Store>) -> durably::DurablyBuilder {
    Durably::builder()
        .shared_store(store)
        .lease_duration(CRASH_LEASE)
        .lease_renew_interval(Duration::from_millis(500))
        .polling_interval(Duration::from_millis(20))
}

/// Entry point of the worker process the crash test kills (run by the test, not directly).
#[test]
#[ignore = "child-process entry point of the local queue crash test"]
fn local_queue_child() {
    let (Ok(spec), Ok(log)) = (std::env::var(ENV_STORE), std::env::var(ENV_LOG)) else {
        panic!("local_queue_child runs only as a child of the crash test");
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let durably = crash_builder(store_of(&spec))
            .max_concurrent_runs(CRASH_TURNS)
            .local_queue(CRASH_QUEUE)
            .build()
            .expect("build");
        durably
            .register(crash_job(PathBuf::from(log), true))
            .expect("register");
        durably.init().await.expect("init");
        tokio::time::sleep(Duration::from_secs(120)).await;
        panic!("child was not killed within 120 s");
    });
}

/// `(pid, run id, step)` of every execution in `log`.
fn executions(log: &Path) -> Vec<(u32, String, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let pid = parts.next().and_then(|p| p.parse().ok()).expect("pid");
            let run = parts.next().expect("run id").to_owned();
            let step = parts.next().expect("step").to_owned();
            (pid, run, step)
        })
        .collect()
}

async fn a_worker_killed_holding_hundreds_of_runs_loses_none(backend: Backend) {
    let db = TestDb::new(backend);
    let spec = match (&db.path, &db.schema) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(schema)) => format!("postgres:{schema}"),
        _ => unreachable!("a file or PostgreSQL backend"),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("executions.log");
    let survivor = crash_builder(db.store.clone())
        .max_concurrent_runs(8)
        .build()
        .expect("build");
    let handle = survivor
        .register(crash_job(log.clone(), false))
        .expect("register");
    survivor.migrate().await.expect("migrate");
    handle
        .batch_trigger((0..CRASH_RUNS).map(|n| (n, TriggerOptions::new())))
        .await
        .expect("enqueue");

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "local_queue_child",
            "--test-threads=1",
        ])
        .env(ENV_STORE, &spec)
        .env(ENV_LOG, &log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the worker to kill");
    // The child holds hundreds of runs: CRASH_TURNS stalled in step b, their step a committed
    // (they keep every turn: the child makes no more progress); maybe some more with step a
    // committed, waiting for a turn again; the others waiting for their first turn.
    let all = RunFilter::new().limit(CRASH_RUNS * 2);
    eventually("the child holds hundreds of runs", LIMIT, || async {
        let runs = survivor.get_runs(&all).await.unwrap();
        let held = runs
            .iter()
            .filter(|r| r.status == RunStatus::Leased)
            .count();
        let committed = runs.iter().filter(|r| r.completed_step_count >= 1).count();
        (held >= 250 && committed >= CRASH_TURNS).then_some(())
    })
    .await;
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    // The steps whose checkpoints the child committed: those must not run again. A step whose
    // function ran but whose checkpoint had not committed at the kill runs again, as after
    // any crash in a step.
    let committed: Vec<String> = survivor
        .get_runs(&all)
        .await
        .unwrap()
        .into_iter()
        .filter(|run| run.completed_step_count >= 1)
        .map(|run| run.id)
        .collect();
    assert!(
        committed.len() >= CRASH_TURNS,
        "the child committed steps of {} runs",
        committed.len()
    );

    survivor.start();
    eventually(
        "every run completed by the survivor",
        Duration::from_secs(120),
        || async {
            let completed = RunFilter::new().status(RunStatus::Completed);
            (survivor.get_runs(&completed).await.unwrap().len() as u64 == CRASH_RUNS).then_some(())
        },
    )
    .await;
    survivor.stop().await;

    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for (_, run, step) in executions(&log) {
        *counts.entry((run, step)).or_default() += 1;
    }
    assert_eq!(
        counts.len() as u64,
        CRASH_RUNS * 2,
        "every step of every run executed"
    );
    for run in &committed {
        assert_eq!(
            counts[&(run.clone(), "a".to_owned())],
            1,
            "run {run}: step a, committed by the killed worker, ran again"
        );
    }
    let repeated: Vec<_> = counts
        .iter()
        .filter(|((_, step), n)| **n > 2 || (step == "b" && **n > 1))
        .collect();
    assert!(
        repeated.is_empty(),
        "steps executed too often: {repeated:?}"
    );
    eprintln!(
        "killed holding {CRASH_RUNS} runs: {} with a committed step, {} step functions ran again",
        committed.len(),
        counts.values().filter(|n| **n > 1).count()
    );
}

mod crash {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_file() {
        a_worker_killed_holding_hundreds_of_runs_loses_none(Backend::SqliteFile).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(durably_postgres_tests),
        ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
    )]
    async fn postgres() {
        a_worker_killed_holding_hundreds_of_runs_loses_none(Backend::Postgres).await
    }
}

/// PostgreSQL: the leases of the runs a worker holds are renewed together, many per statement,
/// and none is lost meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn held_runs_renew_their_leases_together_on_postgres() {
    const RUNS: u64 = 48;
    let schema = common::PgSchema {
        name: common::fresh_schema(),
    };
    let store = common::postgres_store(&schema.name);
    let durably = Durably::builder()
        .shared_store(Arc::new(store.clone()))
        .polling_interval(Duration::from_millis(20))
        .max_concurrent_runs(1)
        .local_queue(RUNS as usize)
        .lease_duration(Duration::from_millis(1200))
        .lease_renew_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    durably.migrate().await.unwrap();
    let (tracker, gate) = (Tracker::default(), Gate::new());
    let handle = durably.register(job(&tracker, &gate)).unwrap();
    handle
        .batch_trigger((0..RUNS).map(|n| (n, TriggerOptions::new())))
        .await
        .unwrap();
    durably.start();
    eventually("every run held", LIMIT, || async {
        (leased(&durably).await as u64 == RUNS).then_some(())
    })
    .await;
    let before = store.stats();
    // Several lease lengths pass while one run waits at the gate and the others for a turn.
    eventually("many renewals", LIMIT, || async {
        (store.stats().lease_renewals - before.lease_renewals >= 10 * RUNS).then_some(())
    })
    .await;
    let after = store.stats();
    let (renewals, statements) = (
        after.lease_renewals - before.lease_renewals,
        after.lease_renewal_statements - before.lease_renewal_statements,
    );
    assert!(
        statements * 4 <= renewals,
        "{renewals} renewals in {statements} statements: not renewed together"
    );
    assert_eq!(
        leased(&durably).await as u64,
        RUNS,
        "no lease lost meanwhile"
    );
    gate.open();
    eventually("every run completed", LIMIT, || async {
        let completed = RunFilter::new().status(RunStatus::Completed);
        (durably.get_runs(&completed).await.unwrap().len() as u64 == RUNS).then_some(())
    })
    .await;
    let executions = tracker.executions.lock().unwrap().clone();
    assert!(
        executions.values().all(|&count| count == 1),
        "every step executed once: {executions:?}"
    );
    durably.stop().await;
}
