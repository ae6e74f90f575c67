//! Time with real processes and real crashes: a worker process SIGKILLed while its run waits out
//! a step's retry backoff, or sleeps, loses nothing; another process resumes the run once, when
//! its time has come, and no step runs twice.
//!
//! Like `crash_waits.rs`, the test binary re-executes itself as child worker processes (the
//! `#[ignore]`d `time_child` entry point) on a SQLite file. Every step function appends
//! `<pid> <what> <epoch ms>` to a log file (fsynced) before it does its work.
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{eventually, within};
use durably::{
    Durably, Error, Job, RetryPolicy, RunStatus, StepContext, StepOptions, Timestamp, WaitStatus,
};
use serde_json::{Value, json};

const ENV_DB: &str = "DURABLY_TIME_CHILD_DB";
const ENV_LOG: &str = "DURABLY_TIME_CHILD_LOG";
/// The run whose end stops the child (none: the child works until it is killed).
const ENV_RUN: &str = "DURABLY_TIME_CHILD_RUN";
/// The backoff between the two attempts of `retried`, and the sleep of `sleeper`.
const PAUSE: Duration = Duration::from_millis(1500);
/// Guards against hangs only.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn record(log: &Path, what: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let line = format!(
        "{} {what} {}\n",
        std::process::id(),
        Timestamp::now().as_millis()
    );
    file.write_all(line.as_bytes())?;
    file.sync_data()
}

/// `(pid, what, epoch ms)` per line of the log.
fn lines(log: &Path) -> Vec<(u32, String, i64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let pid = parts.next().and_then(|p| p.parse().ok()).expect("pid");
            let what = parts.next().expect("what").to_owned();
            let at = parts.next().and_then(|t| t.parse().ok()).expect("time");
            (pid, what, at)
        })
        .collect()
}

/// `retried`: step `before`, then step `flaky` whose first attempt fails and whose backoff
/// (over the suspension threshold) suspends the run. `sleeper`: step `before`, a durable sleep,
/// step `after`.
fn jobs(log: PathBuf) -> (Job<Value, Value>, Job<Value, Value>) {
    let retried = {
        let log = log.clone();
        Job::new("retried", move |step: StepContext, _input: Value| {
            let log = log.clone();
            async move {
                let before = log.clone();
                step.run("before", |_| async move { Ok(record(&before, "before")?) })
                    .await?;
                let policy = RetryPolicy::constant(2, PAUSE).suspend_longer_than(Duration::ZERO);
                let n = step
                    .run_retrying("flaky", StepOptions::new().retry(policy), |attempt| {
                        let log = log.clone();
                        async move {
                            let n = attempt.number();
                            record(&log, &format!("flaky-{n}"))
                                .map_err(|e| Error::Job(e.into()))?;
                            if n == 1 {
                                return Err(Error::Job("attempt 1 failed".into()).into());
                            }
                            Ok(n)
                        }
                    })
                    .await?;
                Ok(json!({ "attempts": n }))
            }
        })
    };
    let sleeper = Job::new("sleeper", move |step: StepContext, _input: Value| {
        let log = log.clone();
        async move {
            let before = log.clone();
            step.run("before", |_| async move { Ok(record(&before, "before")?) })
                .await?;
            step.sleep("pause", PAUSE).await?;
            step.run("after", |_| async move { Ok(record(&log, "after")?) })
                .await?;
            Ok(json!({ "slept": true }))
        }
    });
    (retried, sleeper)
}

fn instance(db: &Path, log: &Path) -> Durably {
    let durably = Durably::builder()
        .sqlite(db)
        .lease_duration(Duration::from_millis(800))
        .lease_renew_interval(Duration::from_millis(200))
        .polling_interval(Duration::from_millis(20))
        .build()
        .expect("build");
    let (retried, sleeper) = jobs(log.to_owned());
    durably.register(retried).expect("register");
    durably.register(sleeper).expect("register");
    durably
}

/// Entry point of the child processes (run by the tests below, not directly).
#[test]
#[ignore = "child-process entry point of the time crash tests"]
fn time_child() {
    let (Ok(db), Ok(log)) = (std::env::var(ENV_DB), std::env::var(ENV_LOG)) else {
        panic!("time_child runs only as a child of the crash_time tests");
    };
    let run = std::env::var(ENV_RUN).ok();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let durably = instance(Path::new(&db), Path::new(&log));
        durably.init().await.expect("init");
        match run {
            None => {
                tokio::time::sleep(HANG_GUARD).await;
                panic!("the child was not killed within {HANG_GUARD:?}");
            }
            Some(run) => {
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
        }
    });
}

fn child(db: &Path, log: &Path, run: Option<&str>) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--ignored",
            "--exact",
            "time_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DB, db)
        .env(ENV_LOG, log)
        .stdout(std::process::Stdio::null());
    match run {
        Some(run) => command.env(ENV_RUN, run),
        None => command.env_remove(ENV_RUN),
    };
    command.spawn().expect("spawn child")
}

/// Triggers `job` from a parent instance that never works, lets a first child run it until it
/// waits (on a timer named `wait_name`), SIGKILLs that child, and lets a second child finish
/// it. Returns the log, the two children's pids and the timer's deadline.
async fn killed_while_waiting(
    job: &str,
    wait_name: &str,
) -> (Vec<(u32, String, i64)>, u32, u32, i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, log) = (dir.path().join("time.db"), dir.path().join("steps.log"));
    let parent = instance(&db, &log);
    parent.migrate().await.expect("migrate");
    let run = parent
        .trigger_json(job, json!({}), Default::default())
        .await
        .expect("trigger")
        .run
        .id;
    let mut first = child(&db, &log, None);
    let first_pid = first.id();
    let waiting = eventually("the run waits for its time", HANG_GUARD, || async {
        let run = parent.get_run(&run).await.expect("get")?;
        (run.status == RunStatus::Waiting).then_some(run)
    })
    .await;
    first.kill().expect("SIGKILL the first child");
    first.wait().expect("reap");
    let waits = parent.get_waits(&run).await.expect("waits");
    let timer = waits
        .iter()
        .find(|w| Some(&w.id) == waiting.waiting_on_wait_id.as_ref())
        .expect("the timer the run waits on");
    assert_eq!(
        (timer.name.as_str(), timer.status),
        (wait_name, WaitStatus::Pending)
    );
    let deadline = timer.deadline_at.expect("a deadline").as_millis();

    let mut second = child(&db, &log, Some(&run));
    let second_pid = second.id();
    let status = within("the second child finishes the run", HANG_GUARD * 2, async {
        loop {
            if let Some(status) = second.try_wait().expect("poll child") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(status.success(), "second child: {status}");
    let done = parent.get_run(&run).await.expect("get").expect("run");
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    (lines(&log), first_pid, second_pid, deadline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_retry_backoff_then_the_next_attempt_runs_once_on_time() {
    let (lines, first, second, deadline) = killed_while_waiting("retried", "retry:flaky:1").await;
    let ran: Vec<(u32, &str)> = lines.iter().map(|(p, w, _)| (*p, w.as_str())).collect();
    assert_eq!(
        ran,
        vec![(first, "before"), (first, "flaky-1"), (second, "flaky-2")],
        "each step once, the second attempt in the new process"
    );
    assert!(
        lines[2].2 >= deadline,
        "the second attempt waited for its backoff"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_sleep_then_the_run_wakes_once_on_time() {
    let (lines, first, second, deadline) = killed_while_waiting("sleeper", "sleep:pause").await;
    let ran: Vec<(u32, &str)> = lines.iter().map(|(p, w, _)| (*p, w.as_str())).collect();
    assert_eq!(
        ran,
        vec![(first, "before"), (second, "after")],
        "each step once, after the sleep in the new process"
    );
    assert!(lines[1].2 >= deadline, "the run slept until its deadline");
}
