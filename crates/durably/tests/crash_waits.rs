//! Durable waits with real processes and real crashes.
//!
//! Like `crash.rs`, the test binary re-executes itself as child worker processes (the
//! `#[ignore]`d `waits_child` entry point, selected by environment variables) and SIGKILLs
//! them. Every job execution and every step function appends `<pid> <what>` to a log file
//! *before* doing its work, so the parent knows exactly which process ran what.
//!
//! - SQLite file: a child killed while its run is suspended (the run needs no recovery: a
//!   second child resumes it once signalled); a child killed inside the step after the wait,
//!   once resumed (a second child takes the run over when the lease expires).
//! - PostgreSQL (needs `DURABLY_TEST_POSTGRES_URL`, else ignored): four worker processes on
//!   one schema, many runs each suspended on a wait that the parent signals as it appears, in
//!   a random order, a few at a time, some twice with the same signal id (some of those
//!   concurrently).
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{PgSchema, eventually, fresh_schema, postgres_store, within};
use durably::{
    AttemptStatus, Durably, Error, Job, NewWait, RunFilter, RunStatus, SignalDisposition,
    StepContext, TriggerOptions, WaitOutcome, WaitResult, WaitStatus,
};
use serde_json::{Value, json};

const ENV_MODE: &str = "DURABLY_WAITS_CHILD_MODE";
/// SQLite file path, or PostgreSQL schema name (mode `pg-waits`).
const ENV_DB: &str = "DURABLY_WAITS_CHILD_DB";
const ENV_LOG: &str = "DURABLY_WAITS_CHILD_LOG";
/// Mode `until-done`: the run whose end stops the child.
const ENV_RUN: &str = "DURABLY_WAITS_CHILD_RUN";
/// Set: the step after the wait never returns (the child is killed inside it).
const ENV_HANG: &str = "DURABLY_WAITS_CHILD_HANG";
/// Mode `pg-waits`: the children start once this file exists and stop once `<go>.stop` does.
const ENV_GO: &str = "DURABLY_WAITS_CHILD_GO";
/// How many runs the PostgreSQL test drives (default [`DEFAULT_PG_RUNS`]).
const ENV_PG_RUNS: &str = "DURABLY_TEST_CRASH_WAITS_RUNS";
/// The 1,000: about 12 s on a 2-core machine (debug build, four child processes and
/// PostgreSQL sharing the two cores), since claims find the runs to resume through durably's
/// index of unresumed waits (about two minutes before). Lower it with
/// `DURABLY_TEST_CRASH_WAITS_RUNS=200`.
const DEFAULT_PG_RUNS: usize = 1000;
/// How many signals the parent has in flight at once.
const SIGNALS_IN_FLIGHT: usize = 8;

/// The SQLite children's lease: short, so a survivor takes a killed child's run over soon.
const SHORT_LEASE: Duration = Duration::from_millis(800);
const RENEW: Duration = Duration::from_millis(200);
/// Guards against hangs only.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// An append-only log shared by the tasks of one process; every line is `<pid> <what>`.
#[derive(Clone)]
struct Log {
    file: Arc<Mutex<std::fs::File>>,
    /// fsync every line (the SQLite tests kill the writer; the PostgreSQL test does not).
    sync: bool,
}

impl Log {
    fn open(path: &Path, sync: bool) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("log file");
        Log {
            file: Arc::new(Mutex::new(file)),
            sync,
        }
    }

    fn record(&self, what: &str) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(format!("{} {what}\n", std::process::id()).as_bytes())?;
        if self.sync {
            file.sync_data()?;
        }
        Ok(())
    }
}

/// `<pid> <what>` lines of the log files, grouped by pid, in order.
fn lines_by_pid(logs: &[PathBuf]) -> BTreeMap<u32, Vec<String>> {
    let mut by_pid: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let (pid, what) = line.split_once(' ').expect("log line");
            by_pid
                .entry(pid.parse().expect("pid"))
                .or_default()
                .push(what.to_owned());
        }
    }
    by_pid
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros()
}

/// The SQLite job: `exec` on every execution, step `before`, a wait, step `after` (which
/// never returns when `hang_after`), `suspend` when the execution suspends; the output
/// carries the signal's payload.
fn approval(log: Log, hang_after: bool) -> Job<Value, Value> {
    Job::new("approval", move |step: StepContext, _input: Value| {
        let log = log.clone();
        async move {
            log.record("exec").expect("log");
            let l = log.clone();
            step.run("before", |_| async move {
                l.record("before")?;
                Ok(1)
            })
            .await?;
            let wait = step.prepare_wait(NewWait::new("approval")).await?;
            let payload = match step.wait_for(&wait).await {
                Ok(WaitResult::Signal { payload }) => payload,
                Ok(other) => {
                    return Err(Error::Validation(format!(
                        "unexpected wait result {other:?}"
                    )));
                }
                Err(suspended @ Error::Suspended { .. }) => {
                    log.record("suspend").expect("log");
                    return Err(suspended);
                }
                Err(other) => return Err(other),
            };
            let l = log.clone();
            step.run("after", |_| async move {
                l.record("after")?;
                if hang_after {
                    tokio::time::sleep(HANG_GUARD).await;
                    panic!("the child was not killed inside step `after`");
                }
                Ok(2)
            })
            .await?;
            Ok(json!({ "signal": payload }))
        }
    })
}

/// The PostgreSQL job: each execution logs `begin <run> <µs>` and `end|suspend <run> <µs>`
/// around its body (so executions of one run can be checked for overlap across processes);
/// steps `before` and `after` log `<step> <run>`. Completes with the signal's payload.
fn signalled(log: Log) -> Job<Value, Value> {
    Job::new("signalled", move |step: StepContext, _input: Value| {
        let log = log.clone();
        async move {
            let run = step.run_id().to_owned();
            log.record(&format!("begin {run} {}", now_micros()))
                .expect("log");
            let body = async {
                let (l, r) = (log.clone(), run.clone());
                step.run("before", |_| async move {
                    l.record(&format!("before {r}"))?;
                    Ok(())
                })
                .await?;
                let wait = step.prepare_wait(NewWait::new("w")).await?;
                let payload = match step.wait_for(&wait).await? {
                    WaitResult::Signal { payload } => payload,
                    other => {
                        return Err(Error::Validation(format!(
                            "unexpected wait result {other:?}"
                        )));
                    }
                };
                let (l, r) = (log.clone(), run.clone());
                step.run("after", |_| async move {
                    l.record(&format!("after {r}"))?;
                    Ok(())
                })
                .await?;
                Ok(payload)
            };
            let result = body.await;
            let how = match &result {
                Err(Error::Suspended { .. }) => "suspend",
                _ => "end",
            };
            log.record(&format!("{how} {run} {}", now_micros()))
                .expect("log");
            result
        }
    })
}

fn sqlite_instance(db: &Path) -> Durably {
    Durably::builder()
        .sqlite(db)
        .lease_duration(SHORT_LEASE)
        .lease_renew_interval(RENEW)
        .polling_interval(Duration::from_millis(20))
        .build()
        .expect("build")
}

/// Entry point of the child processes (run by the tests below, not directly).
#[test]
#[ignore = "child-process entry point of the durable-wait crash tests"]
fn waits_child() {
    let (Ok(mode), Ok(db), Ok(log)) = (
        std::env::var(ENV_MODE),
        std::env::var(ENV_DB),
        std::env::var(ENV_LOG),
    ) else {
        panic!("waits_child runs only as a child of the crash_waits tests");
    };
    let hang = std::env::var_os(ENV_HANG).is_some();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        match mode.as_str() {
            // Works until the parent kills this process.
            "until-killed" => {
                let durably = sqlite_instance(Path::new(&db));
                durably
                    .register(approval(Log::open(Path::new(&log), true), hang))
                    .expect("register");
                durably.init().await.expect("init");
                tokio::time::sleep(HANG_GUARD).await;
                panic!("the child was not killed within {HANG_GUARD:?}");
            }
            // Works until the run named by ENV_RUN has ended.
            "until-done" => {
                let run = std::env::var(ENV_RUN).expect("run id");
                let durably = sqlite_instance(Path::new(&db));
                durably
                    .register(approval(Log::open(Path::new(&log), true), hang))
                    .expect("register");
                durably.init().await.expect("init");
                eventually("the run ended", HANG_GUARD, || async {
                    durably
                        .get_run(&run)
                        .await
                        .expect("get_run")
                        .filter(|run| run.is_terminal())
                })
                .await;
                durably.stop().await;
            }
            "pg-waits" => {
                let go = PathBuf::from(std::env::var(ENV_GO).expect("go file"));
                let durably = Durably::builder()
                    .store(postgres_store(&db))
                    .max_concurrent_runs(4)
                    .polling_interval(Duration::from_millis(20))
                    .build()
                    .expect("build");
                durably
                    .register(signalled(Log::open(Path::new(&log), false)))
                    .expect("register");
                durably.migrate().await.expect("migrate");
                while !go.exists() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                durably.start();
                let stop = stop_file(&go);
                eventually("the parent's stop file", Duration::from_secs(600), || {
                    let stopped = stop.exists();
                    async move { stopped.then_some(()) }
                })
                .await;
                durably.stop().await;
            }
            other => panic!("unknown child mode {other}"),
        }
    });
}

fn stop_file(go: &Path) -> PathBuf {
    go.with_extension("stop")
}

fn child_command(mode: &str, db: &str, log: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--ignored",
            "--exact",
            "waits_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_MODE, mode)
        .env(ENV_DB, db)
        .env(ENV_LOG, log)
        .env_remove(ENV_HANG)
        .stdout(std::process::Stdio::null());
    command
}

async fn exit_of(child: &mut Child, what: &str) -> std::process::ExitStatus {
    within(what, HANG_GUARD * 2, async {
        loop {
            if let Some(status) = child.try_wait().expect("poll child") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn kill(mut child: Child) {
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
}

/// A SQLite file, the execution log and a parent instance (migrated, never started: it only
/// triggers, signals and reads) with the job registered.
struct SqliteCase {
    _dir: tempfile::TempDir,
    db: PathBuf,
    log: PathBuf,
    parent: Durably,
    job: durably::JobHandle<Value, Value>,
}

impl SqliteCase {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (db, log) = (
            dir.path().join("waits.sqlite"),
            dir.path().join("executions.log"),
        );
        let parent = Durably::builder().sqlite(&db).build().expect("build");
        // Never executed here (the parent has no worker): the handle only triggers.
        let job = parent
            .register(approval(Log::open(&log, true), false))
            .expect("register");
        parent.migrate().await.expect("migrate");
        SqliteCase {
            _dir: dir,
            db,
            log,
            parent,
            job,
        }
    }

    fn spawn(&self, mode: &str, run: &str, hang: bool) -> Child {
        let mut command = child_command(mode, self.db.to_str().expect("utf-8 path"), &self.log);
        command.env(ENV_RUN, run);
        if hang {
            command.env(ENV_HANG, "1");
        }
        command.spawn().expect("spawn child worker")
    }

    async fn run(&self, id: &str) -> durably::Run {
        self.parent
            .get_run(id)
            .await
            .expect("get_run")
            .expect("the run")
    }

    /// Polls until the run is `waiting`; returns it.
    async fn waiting(&self, id: &str) -> durably::Run {
        eventually("the run is waiting", HANG_GUARD, || async {
            Some(self.run(id).await).filter(|run| run.status == RunStatus::Waiting)
        })
        .await
    }

    fn lines(&self) -> BTreeMap<u32, Vec<String>> {
        lines_by_pid(std::slice::from_ref(&self.log))
    }
}

/// A child suspends the run and is SIGKILLed while the run waits; the parent signals the wait;
/// a second child resumes the run and completes it with the payload, without re-running the
/// step before the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_suspended_then_signal_and_a_new_process_resumes_the_run() {
    let case = SqliteCase::new().await;
    let id = case.job.trigger(json!({})).await.expect("trigger").run.id;

    let first = case.spawn("until-killed", &id, false);
    let first_pid = first.id();
    let suspended = case.waiting(&id).await;
    // Suspended for real: no lease, on a pending wait, after the child ran step `before`.
    assert_eq!(suspended.lease_owner, None);
    assert_eq!(suspended.lease_expires_at, None);
    assert_eq!(suspended.completed_step_count, 1);
    let wait_id = suspended
        .waiting_on_wait_id
        .clone()
        .expect("waits on a wait");
    let wait = case
        .parent
        .get_wait(&wait_id)
        .await
        .expect("get_wait")
        .expect("the wait");
    assert_eq!(wait.status, WaitStatus::Pending);
    assert!(wait.suspended_at.is_some());
    eventually("the child logged its suspension", HANG_GUARD, || {
        let lines = case.lines();
        async move {
            (lines.get(&first_pid).map(Vec::as_slice)
                == Some(&["exec".to_owned(), "before".into(), "suspend".into()][..]))
            .then_some(())
        }
    })
    .await;

    kill(first);
    let at_kill = case.run(&id).await;
    assert_eq!(
        at_kill.status,
        RunStatus::Waiting,
        "still waiting after the kill"
    );
    assert_eq!(at_kill.lease_generation, suspended.lease_generation);

    let payload = json!({"approved": true, "by": "parent"});
    let signalled = case
        .parent
        .signal(&wait_id, payload.clone(), "sig-1")
        .await
        .expect("signal");
    assert_eq!(signalled.disposition, SignalDisposition::Accepted);
    // Nobody runs it until the second child exists.
    assert_eq!(case.run(&id).await.status, RunStatus::Waiting);

    let mut second = case.spawn("until-done", &id, false);
    let second_pid = second.id();
    let status = exit_of(&mut second, "the second child completes the run").await;
    assert!(status.success(), "second child failed: {status}");

    let done = case.run(&id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!({ "signal": payload })));
    assert!(
        done.lease_generation > suspended.lease_generation,
        "resumed under a new lease"
    );
    let lines = case.lines();
    assert_eq!(
        lines.keys().copied().collect::<Vec<_>>(),
        {
            let mut pids = vec![first_pid, second_pid];
            pids.sort();
            pids
        },
        "only the two children executed anything: {lines:?}"
    );
    assert_eq!(lines[&first_pid], ["exec", "before", "suspend"]);
    // Replayed `before`, ran `after`.
    assert_eq!(lines[&second_pid], ["exec", "after"]);
    let wait = case
        .parent
        .get_wait(&wait_id)
        .await
        .expect("get_wait")
        .expect("the wait");
    assert_eq!(
        (wait.status, wait.outcome, wait.signal_id.as_deref()),
        (
            WaitStatus::Resolved,
            Some(WaitOutcome::Signal),
            Some("sig-1")
        )
    );
    assert!(wait.first_resumed_at.is_some());
    let attempts = case.parent.get_step_attempts(&id).await.expect("attempts");
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.step_name.as_str())
            .collect::<Vec<_>>(),
        ["before", "after"]
    );
}

/// A child suspends the run, resumes it once signalled, and is SIGKILLed inside the step after
/// the wait; a second child takes the run over once the dead child's lease expires and
/// completes it: `before` ran once, `after` once per execution that reached it (twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_resuming_then_another_process_takes_the_run_over() {
    let case = SqliteCase::new().await;
    let id = case.job.trigger(json!({})).await.expect("trigger").run.id;

    let first = case.spawn("until-killed", &id, true);
    let first_pid = first.id();
    let suspended = case.waiting(&id).await;
    assert_eq!(suspended.lease_owner, None);
    let wait_id = suspended
        .waiting_on_wait_id
        .clone()
        .expect("waits on a wait");

    let payload = json!({"approved": "yes", "n": 42});
    let signalled = case
        .parent
        .signal(&wait_id, payload.clone(), "sig-resume")
        .await
        .expect("signal");
    assert_eq!(signalled.disposition, SignalDisposition::Accepted);

    // The child resumes the run and announces that it is inside `after`.
    eventually("the child is inside step `after`", HANG_GUARD, || {
        let lines = case.lines();
        async move {
            let mine = lines.get(&first_pid).cloned().unwrap_or_default();
            (mine.last().map(String::as_str) == Some("after")).then_some(())
        }
    })
    .await;
    kill(first);
    let at_kill = case.run(&id).await;
    assert_eq!(
        at_kill.status,
        RunStatus::Leased,
        "the dead child still holds the resumed run's lease"
    );
    assert!(
        at_kill.lease_generation > suspended.lease_generation,
        "resumed"
    );
    assert_eq!(at_kill.completed_step_count, 1, "`after` never completed");
    assert_eq!(
        case.lines()[&first_pid],
        ["exec", "before", "suspend", "exec", "after"],
        "suspended, then resumed by the same child"
    );

    let mut second = case.spawn("until-done", &id, false);
    let second_pid = second.id();
    let status = exit_of(&mut second, "the second child takes the run over").await;
    assert!(status.success(), "second child failed: {status}");

    let done = case.run(&id).await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(done.output, Some(json!({ "signal": payload })));
    assert!(
        done.lease_generation > at_kill.lease_generation,
        "taken over under a newer lease"
    );
    let lines = case.lines();
    assert_eq!(lines.len(), 2, "only the two children executed: {lines:?}");
    assert_eq!(
        lines[&first_pid],
        ["exec", "before", "suspend", "exec", "after"]
    );
    assert_eq!(lines[&second_pid], ["exec", "after"]);
    let all: Vec<&String> = lines.values().flatten().collect();
    let count = |what: &str| all.iter().filter(|l| l.as_str() == what).count();
    assert_eq!(count("before"), 1, "the step before the wait ran once");
    assert_eq!(count("after"), 2, "once per execution that reached it");
    let wait = case
        .parent
        .get_wait(&wait_id)
        .await
        .expect("get_wait")
        .expect("the wait");
    assert_eq!(
        (wait.status, wait.signal_id.as_deref(), wait.payload),
        (WaitStatus::Resolved, Some("sig-resume"), Some(payload))
    );
}

/// One execution of a run, from a process's log: `[begin, end]` in µs since the epoch.
#[derive(Debug)]
struct Execution {
    pid: u32,
    begin: u128,
    end: u128,
    suspended: bool,
}

/// Four worker processes on one PostgreSQL schema, many runs each suspended on a wait; the
/// parent signals the waits as they appear, in a random order, some twice with the same
/// signal id (half of those concurrently with the first signal). Every run completes once with
/// its own payload, every step function ran once, and the two executions of each run never
/// overlapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn four_processes_resume_many_signalled_runs_on_postgres_each_exactly_once() {
    let runs: usize = std::env::var(ENV_PG_RUNS)
        .ok()
        .map(|n| n.parse().expect("a run count"))
        .unwrap_or(DEFAULT_PG_RUNS);
    let started = Instant::now();
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let go = dir.path().join("go");
    let logs: Vec<PathBuf> = (0..4)
        .map(|i| dir.path().join(format!("{i}.log")))
        .collect();
    let parent = Durably::builder()
        .store(postgres_store(&schema))
        .build()
        .expect("build");
    let job = parent
        .register(signalled(Log::open(&dir.path().join("parent.log"), false)))
        .expect("register");
    parent.migrate().await.expect("migrate");
    let mut ids = Vec::with_capacity(runs);
    for chunk in (0..runs).collect::<Vec<_>>().chunks(500) {
        let triggered = job
            .batch_trigger(
                chunk
                    .iter()
                    .map(|&n| (json!({ "n": n }), TriggerOptions::new())),
            )
            .await
            .expect("enqueue");
        ids.extend(triggered.into_iter().map(|t| t.run.id));
    }
    let all_ids: HashSet<&String> = ids.iter().collect();
    assert_eq!(all_ids.len(), runs);

    let mut children: Vec<Child> = logs
        .iter()
        .map(|log| {
            let mut command = child_command("pg-waits", &schema, log);
            command.env(ENV_GO, &go);
            command.spawn().expect("spawn child worker")
        })
        .collect();
    std::fs::write(&go, b"go").expect("start the workers");

    // Signal the waits as they appear, until every run completed and every duplicate was sent.
    let mut payloads: HashMap<String, Value> = HashMap::new();
    let mut signalled_waits: HashSet<String> = HashSet::new();
    let mut deferred: Vec<(String, Value, String)> = Vec::new();
    let (mut concurrent_duplicates, mut late_duplicates, mut rounds) = (0usize, 0usize, 0usize);
    let waiting = RunFilter::new().status(RunStatus::Waiting);
    let completed = RunFilter::new().status(RunStatus::Completed);
    let signal_everything = async {
        loop {
            rounds += 1;
            let mut fresh: Vec<(String, String)> = parent
                .get_runs(&waiting)
                .await
                .expect("waiting runs")
                .into_iter()
                .filter_map(|run| {
                    let wait = run
                        .waiting_on_wait_id
                        .expect("a waiting run names its wait");
                    (!signalled_waits.contains(&wait)).then_some((run.id, wait))
                })
                .collect();
            fastrand::shuffle(&mut fresh);
            // A few signals in flight at once (in the shuffled order, chunk by chunk).
            for chunk in fresh.chunks(SIGNALS_IN_FLIGHT) {
                let mut in_flight = tokio::task::JoinSet::new();
                for (run, wait) in chunk.iter().cloned() {
                    assert!(all_ids.contains(&run), "unknown run {run}");
                    let parent = parent.clone();
                    in_flight.spawn(async move {
                        let kind = fastrand::u8(..8);
                        let payload = json!({ "for": run, "token": fastrand::u64(..) });
                        let signal_id = format!("sig-{run}");
                        if kind == 0 {
                            // The same signal twice at once: one resolves, one is a duplicate.
                            let (a, b) = tokio::join!(
                                parent.signal(&wait, payload.clone(), &signal_id),
                                parent.signal(&wait, payload.clone(), &signal_id),
                            );
                            let mut dispositions = [
                                a.expect("signal").disposition,
                                b.expect("signal").disposition,
                            ];
                            dispositions.sort_by_key(|d| *d == SignalDisposition::Duplicate);
                            assert_eq!(
                                dispositions,
                                [SignalDisposition::Accepted, SignalDisposition::Duplicate]
                            );
                        } else {
                            let signalled = parent
                                .signal(&wait, payload.clone(), &signal_id)
                                .await
                                .expect("signal");
                            assert_eq!(signalled.disposition, SignalDisposition::Accepted);
                        }
                        (run, wait, payload, signal_id, kind)
                    });
                }
                while let Some(joined) = in_flight.join_next().await {
                    let (run, wait, payload, signal_id, kind) = joined.expect("signal task");
                    match kind {
                        0 => concurrent_duplicates += 1,
                        // Again later: while the run resumes, or after it completed.
                        1 => deferred.push((wait.clone(), payload.clone(), signal_id)),
                        _ => {}
                    }
                    signalled_waits.insert(wait);
                    payloads.insert(run, payload);
                }
            }
            // Send some of the deferred duplicates now.
            fastrand::shuffle(&mut deferred);
            let now = deferred.len().div_ceil(2);
            for (wait, payload, signal_id) in deferred.drain(..now) {
                let again = parent
                    .signal(&wait, payload, &signal_id)
                    .await
                    .expect("duplicate signal");
                assert_eq!(again.disposition, SignalDisposition::Duplicate);
                late_duplicates += 1;
            }
            let done = parent.get_runs(&completed).await.expect("completed runs");
            if done.len() == runs && deferred.is_empty() {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let done = within(
        "every run signalled and completed",
        Duration::from_secs(300),
        signal_everything,
    )
    .await;
    let drained = started.elapsed();
    std::fs::write(stop_file(&go), b"stop").expect("stop the workers");
    for child in &mut children {
        let status = exit_of(child, "a worker process stops").await;
        assert!(status.success(), "child worker failed: {status}");
    }

    // Every run completed once, with its own payload.
    assert_eq!(signalled_waits.len(), runs, "every wait was signalled once");
    assert!(
        concurrent_duplicates + late_duplicates > 0,
        "duplicates were sent"
    );
    for run in &done {
        assert_eq!(
            run.output.as_ref(),
            Some(&payloads[&run.id]),
            "run {}",
            run.id
        );
    }
    // Recorded by the database: each step function once, `after` under a later lease than
    // `before` (the run was suspended between them). A run can have been claimed more than
    // twice (a worker slot claims ahead and gives a held run back when the run ahead of it is
    // long), never less.
    let mut claimed_ahead = 0;
    for run in &done {
        assert!(
            run.lease_generation >= 2,
            "run {}: claimed, then resumed",
            run.id
        );
        claimed_ahead += usize::from(run.lease_generation > 2);
        let attempts = parent.get_step_attempts(&run.id).await.expect("attempts");
        let attempts: Vec<_> = attempts
            .iter()
            .map(|a| (a.step_name.as_str(), a.status, a.lease_generation))
            .collect();
        assert!(
            matches!(
                attempts[..],
                [
                    ("before", AttemptStatus::Completed, before),
                    ("after", AttemptStatus::Completed, after),
                ] if before < after && after == run.lease_generation
            ),
            "run {}: {attempts:?}",
            run.id
        );
    }
    let mut resolved = 0;
    for id in &ids {
        let waits = parent.get_waits(id).await.expect("waits");
        assert_eq!(waits.len(), 1, "run {id}");
        let wait = &waits[0];
        assert_eq!(
            (wait.status, wait.outcome, wait.signal_id.clone()),
            (
                WaitStatus::Resolved,
                Some(WaitOutcome::Signal),
                Some(format!("sig-{id}"))
            ),
            "run {id}"
        );
        assert_eq!(wait.payload.as_ref(), Some(&payloads[id]));
        resolved += 1;
    }
    assert_eq!(resolved, runs);

    // From the processes' own records.
    let lines = lines_by_pid(&logs);
    assert!(
        lines.values().filter(|l| !l.is_empty()).count() >= 2,
        "the processes shared the work: {:?}",
        lines.values().map(Vec::len).collect::<Vec<_>>()
    );
    let mut steps: HashMap<String, u32> = HashMap::new();
    let mut executions: HashMap<String, Vec<Execution>> = HashMap::new();
    for (&pid, lines) in &lines {
        let mut open: HashMap<String, u128> = HashMap::new();
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                ["begin", run, at] => {
                    let previous = open.insert(run.to_owned(), at.parse().expect("µs"));
                    assert!(previous.is_none(), "{pid} began {run} twice at once");
                }
                [how @ ("end" | "suspend"), run, at] => {
                    let begin = open.remove(run).expect("begin before end");
                    executions
                        .entry(run.to_owned())
                        .or_default()
                        .push(Execution {
                            pid,
                            begin,
                            end: at.parse().expect("µs"),
                            suspended: how == "suspend",
                        });
                }
                [step @ ("before" | "after"), run] => {
                    *steps.entry(format!("{run} {step}")).or_default() += 1;
                }
                _ => panic!("unexpected log line {line:?}"),
            }
        }
        assert!(
            open.is_empty(),
            "{pid} left executions unfinished: {open:?}"
        );
    }
    assert_eq!(steps.len(), runs * 2, "every step function ran");
    let repeated: Vec<_> = steps.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "step functions ran twice: {repeated:?}"
    );
    assert_eq!(executions.len(), runs);
    let mut moved = 0;
    for (run, mut list) in executions {
        list.sort_by_key(|e| e.begin);
        assert_eq!(
            list.len(),
            2,
            "run {run}: suspended, then resumed: {list:?}"
        );
        assert!(
            list[0].suspended && !list[1].suspended,
            "run {run}: {list:?}"
        );
        assert!(
            list[0].end <= list[1].begin,
            "run {run}: two executions overlapped: {list:?}"
        );
        if list[0].pid != list[1].pid {
            moved += 1;
        }
    }
    eprintln!(
        "{runs} runs: drained in {drained:?} ({rounds} signalling rounds, \
         {concurrent_duplicates} concurrent and {late_duplicates} late duplicate signals, \
         {moved} runs resumed in another process, {claimed_ahead} claimed more than twice)"
    );
    assert!(
        runs < 100 || moved > 0,
        "some runs were resumed by another process than the one that suspended them"
    );
}
