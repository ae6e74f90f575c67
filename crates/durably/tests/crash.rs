//! Crash tests with real processes.
//!
//! The test binary re-executes itself as a child worker (the `#[ignore]`d `child_worker` entry
//! point, selected by environment variables). Every step execution appends `<pid> <step>` to a
//! log file *before* doing its work, so the parent knows exactly which process ran which step.
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::eventually;
use durably::{Durably, Job, RunFilter, RunStatus, StepContext, TriggerOptions, WaitOptions};
use serde::{Deserialize, Serialize};

const ENV_MODE: &str = "DURABLY_TEST_CHILD_MODE";
const ENV_DB: &str = "DURABLY_TEST_CHILD_DB";
const ENV_LOG: &str = "DURABLY_TEST_CHILD_LOG";
const ENV_GO: &str = "DURABLY_TEST_CHILD_GO";

/// How long each step of the five-step job works (so a kill lands inside the next step).
const STEP_TIME: Duration = Duration::from_millis(300);
/// The lease of the five-step workers: short, so the survivor reclaims soon after the kill.
const SHORT_LEASE: Duration = Duration::from_millis(800);
const RENEW: Duration = Duration::from_millis(200);

#[derive(Serialize, Deserialize)]
struct FiveInput {
    base: u64,
}

#[derive(Serialize, Deserialize)]
struct DrainInput {
    n: u64,
}

fn record(log: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    file.write_all(format!("{} {line}\n", std::process::id()).as_bytes())?;
    file.sync_data()
}

/// Five steps; each records its execution, works for `STEP_TIME`, and returns `k * 10`.
fn five_steps(log: PathBuf) -> Job<FiveInput, u64> {
    Job::new("five-steps", move |step: StepContext, input: FiveInput| {
        let log = log.clone();
        async move {
            let mut total = input.base;
            for k in 1..=5u64 {
                let log = log.clone();
                total += step
                    .run(&format!("step-{k}"), |_| async move {
                        record(&log, &format!("step-{k}"))?;
                        tokio::time::sleep(STEP_TIME).await;
                        Ok(k * 10)
                    })
                    .await?;
            }
            Ok(total)
        }
    })
}

/// Three quick steps, each recording `<run id> <step>`.
fn drain_job(log: PathBuf) -> Job<DrainInput, u64> {
    Job::new("drain", move |step: StepContext, input: DrainInput| {
        let log = log.clone();
        async move {
            for k in 1..=3u64 {
                let (log, line) = (log.clone(), format!("{} s{k}", step.run_id()));
                step.run(&format!("s{k}"), |_| async move {
                    let mut file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)?;
                    file.write_all(format!("{line}\n").as_bytes())?;
                    Ok(k)
                })
                .await?;
            }
            Ok(input.n)
        }
    })
}

fn five_step_instance(db: &Path, log: &Path) -> (Durably, durably::JobHandle<FiveInput, u64>) {
    let durably = Durably::builder()
        .sqlite(db)
        .lease_duration(SHORT_LEASE)
        .lease_renew_interval(RENEW)
        .polling_interval(Duration::from_millis(20))
        .build()
        .expect("build");
    let handle = durably
        .register(five_steps(log.to_path_buf()))
        .expect("register");
    (durably, handle)
}

/// Entry point of the child processes (run by the tests below, not directly).
#[test]
#[ignore = "child-process entry point of the crash tests"]
fn child_worker() {
    let (Ok(mode), Ok(db), Ok(log)) = (
        std::env::var(ENV_MODE),
        std::env::var(ENV_DB),
        std::env::var(ENV_LOG),
    ) else {
        panic!("child_worker runs only as a child of the crash tests");
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        match mode.as_str() {
            "five-steps" => {
                let (durably, _) = five_step_instance(Path::new(&db), Path::new(&log));
                durably.init().await.expect("init");
                // Work until the parent kills this process.
                tokio::time::sleep(Duration::from_secs(120)).await;
                panic!("child was not killed within 120 s");
            }
            "drain" => {
                let go = PathBuf::from(std::env::var(ENV_GO).expect("go file"));
                let durably = Durably::builder()
                    .sqlite(&db)
                    .max_concurrent_runs(4)
                    .polling_interval(Duration::from_millis(20))
                    .build()
                    .expect("build");
                durably
                    .register(drain_job(PathBuf::from(&log)))
                    .expect("register");
                durably.migrate().await.expect("migrate");
                std::fs::write(ready_file(Path::new(&log)), b"ready").expect("report ready");
                while !go.exists() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                durably.start();
                let active = RunFilter::new()
                    .status(RunStatus::Pending)
                    .status(RunStatus::Leased)
                    .limit(1);
                while !durably.get_runs(&active).await.expect("query").is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                durably.stop().await;
            }
            other => panic!("unknown child mode {other}"),
        }
    });
}

fn spawn_child(mode: &str, db: &Path, log: &Path, go: Option<&Path>) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--ignored",
            "--exact",
            "child_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_MODE, mode)
        .env(ENV_DB, db)
        .env(ENV_LOG, log)
        .stdout(std::process::Stdio::null());
    if let Some(go) = go {
        command.env(ENV_GO, go);
    }
    command.spawn().expect("spawn child worker")
}

/// Written by a `drain` child once it is connected and waits for the go file.
fn ready_file(log: &Path) -> PathBuf {
    log.with_extension("ready")
}

/// `<pid> <what>` lines of an execution log, grouped by pid.
fn executions_by_pid(log: &Path) -> BTreeMap<u32, Vec<String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut by_pid: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let (pid, what) = line.split_once(' ').expect("log line");
        by_pid
            .entry(pid.parse().expect("pid"))
            .or_default()
            .push(what.to_owned());
    }
    by_pid
}

async fn crash_after_step(k: i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, log) = (
        dir.path().join("crash.sqlite"),
        dir.path().join("executions.log"),
    );
    let (survivor, handle) = five_step_instance(&db, &log);
    survivor.migrate().await.expect("migrate");
    let run = handle
        .trigger(FiveInput { base: 1000 })
        .await
        .expect("trigger")
        .run;

    let mut child = spawn_child("five-steps", &db, &log, None);
    let child_pid = child.id();
    eventually(
        &format!("step {k} persisted by the child"),
        Duration::from_secs(60),
        || async {
            let run = survivor.get_run(&run.id).await.expect("read")?;
            (run.completed_step_count >= k).then_some(())
        },
    )
    .await;
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");

    let at_kill = survivor.get_run(&run.id).await.expect("read").expect("run");
    let persisted = at_kill.completed_step_count;
    assert!(
        persisted >= k && persisted < 5,
        "persisted {persisted} steps"
    );
    assert_eq!(
        at_kill.status,
        RunStatus::Leased,
        "the dead child still holds the lease"
    );

    survivor.start();
    let done = survivor
        .wait_for_run(&run.id, WaitOptions::new().timeout(Duration::from_secs(60)))
        .await
        .expect("the survivor completes the run");
    survivor.stop().await;
    assert_eq!(
        done.output,
        Some(serde_json::json!(1000 + 10 + 20 + 30 + 40 + 50))
    );
    assert!(done.lease_generation >= 2, "the run was reclaimed");

    let by_pid = executions_by_pid(&log);
    let child_steps = by_pid.get(&child_pid).cloned().unwrap_or_default();
    let survivor_steps = by_pid.get(&std::process::id()).cloned().unwrap_or_default();
    let step = |i: i64| format!("step-{i}");
    // The child ran steps 1..=persisted once each, plus (at most) the in-flight step.
    let completed_by_child: Vec<String> = (1..=persisted).map(step).collect();
    assert_eq!(child_steps[..persisted as usize], completed_by_child[..]);
    assert!(
        child_steps.len() as i64 <= persisted + 1,
        "child steps {child_steps:?}"
    );
    // The survivor never re-ran a persisted step: it ran exactly the in-flight step and the rest.
    let rest: Vec<String> = (persisted + 1..=5).map(step).collect();
    assert_eq!(survivor_steps, rest, "survivor steps");
    // So only the in-flight step can have run twice.
    let in_flight_twice = child_steps.len() as i64 == persisted + 1;
    let total = child_steps.len() + survivor_steps.len();
    assert_eq!(total, 5 + usize::from(in_flight_twice));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_step_1_resumes_without_rerunning_completed_steps() {
    crash_after_step(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_step_2_resumes_without_rerunning_completed_steps() {
    crash_after_step(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_step_3_resumes_without_rerunning_completed_steps() {
    crash_after_step(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_step_4_resumes_without_rerunning_completed_steps() {
    crash_after_step(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_drain_one_sqlite_file_every_step_exactly_once() {
    const JOBS: u64 = 1000;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("drain.sqlite");
    let go = dir.path().join("go");
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let parent = Durably::builder().sqlite(&db).build().expect("build");
    let handle = parent
        .register(drain_job(dir.path().join("unused.log")))
        .expect("register");
    parent.migrate().await.expect("migrate");
    handle
        .batch_trigger((0..JOBS).map(|n| (DrainInput { n }, TriggerOptions::new())))
        .await
        .expect("enqueue");

    let mut children: Vec<Child> = logs
        .iter()
        .map(|log| spawn_child("drain", &db, log, Some(&go)))
        .collect();
    // Both start together: a worker that started alone could drain the queue by itself.
    common::eventually("both workers ready", Duration::from_secs(60), || {
        let ready = logs.iter().all(|log| ready_file(log).exists());
        async move { ready.then_some(()) }
    })
    .await;
    std::fs::write(&go, b"go").expect("start both workers");
    for child in &mut children {
        let status = common::within("child drain", Duration::from_secs(180), async {
            loop {
                if let Some(status) = child.try_wait().expect("poll child") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(status.success(), "child worker failed: {status}");
    }

    let completed = parent
        .get_runs(&RunFilter::new().status(RunStatus::Completed))
        .await
        .expect("query");
    assert_eq!(completed.len() as u64, JOBS, "every run completed");
    let mut executions = std::collections::HashMap::<String, u32>::new();
    let mut per_process = Vec::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        per_process.push(text.lines().count());
        for line in text.lines() {
            *executions.entry(line.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(executions.len() as u64, JOBS * 3, "every step executed");
    let repeated: Vec<_> = executions.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "steps executed more than once: {repeated:?}"
    );
    assert!(
        per_process.iter().all(|&n| n > 0),
        "both processes took part: {per_process:?}"
    );
}
