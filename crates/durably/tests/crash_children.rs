//! Child runs with real processes and real crashes, on a SQLite file and on PostgreSQL (set
//! `DURABLY_TEST_POSTGRES_URL`).
//!
//! Like `crash_waits.rs`, the test binary re-executes itself as a worker process (the
//! `#[ignore]`d `children_child` entry point, selected by environment variables) and SIGKILLs
//! it. Every execution of a job appends `<pid> <what>` to a log file before doing its work.
//!
//! The first process executes a parent that triggered its children; each child hangs inside
//! its step there; the process is killed. A second process takes the children over when their
//! leases expire, completes them, and the parent resumes with their outputs: never a second
//! child.
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{PgSchema, eventually, fresh_schema, postgres_store};
use durably::{Durably, Job, RunFilter, RunStatus, StepContext};
use serde_json::{Value, json};

/// `sqlite:<path>` or `postgres:<schema>`.
const ENV_DB: &str = "DURABLY_CHILDREN_CHILD_DB";
const ENV_LOG: &str = "DURABLY_CHILDREN_CHILD_LOG";
/// Set: the children's step never returns (the process is killed inside it).
const ENV_HANG: &str = "DURABLY_CHILDREN_CHILD_HANG";
const SHORT_LEASE: Duration = Duration::from_millis(800);
const RENEW: Duration = Duration::from_millis(200);
const HANG_GUARD: Duration = Duration::from_secs(60);
const CHILDREN: u64 = 5;

#[derive(Clone)]
struct Log(Arc<Mutex<std::fs::File>>);

impl Log {
    fn open(path: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("log file");
        Log(Arc::new(Mutex::new(file)))
    }

    fn record(&self, what: &str) {
        let mut file = self.0.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(format!("{} {what}\n", std::process::id()).as_bytes())
            .expect("log");
        file.sync_data().expect("sync");
    }
}

/// Where the processes of one test meet.
#[derive(Clone, Debug)]
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Db {
    fn to_env(&self) -> String {
        match self {
            Db::Sqlite(path) => format!("sqlite:{}", path.display()),
            Db::Postgres(schema) => format!("postgres:{schema}"),
        }
    }

    fn from_env(text: &str) -> Self {
        match text.split_once(':') {
            Some(("sqlite", path)) => Db::Sqlite(path.into()),
            Some(("postgres", schema)) => Db::Postgres(schema.to_owned()),
            _ => panic!("{ENV_DB} must be sqlite:<path> or postgres:<schema>, got {text:?}"),
        }
    }
}

fn instance(db: &Db, log: Log, hang: bool) -> Durably {
    let builder = match db {
        Db::Sqlite(path) => Durably::builder().sqlite(path),
        Db::Postgres(schema) => Durably::builder().store(postgres_store(schema)),
    };
    let durably = builder
        .lease_duration(SHORT_LEASE)
        .lease_renew_interval(RENEW)
        .polling_interval(Duration::from_millis(20))
        .max_concurrent_runs(CHILDREN as usize + 1)
        .build()
        .expect("build");
    let child_log = log.clone();
    let child = durably
        .register(Job::new("child", move |step: StepContext, n: u64| {
            let log = child_log.clone();
            async move {
                log.record(&format!("child {n}"));
                step.run("work", |_| async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    Ok(n * 10)
                })
                .await
            }
        }))
        .expect("register child");
    durably
        .register(Job::new("parent", move |step: StepContext, _: Value| {
            let child = child.clone();
            let log = log.clone();
            async move {
                log.record("parent");
                let outputs = step
                    .invoke_all("kids", &child, (1..=CHILDREN).collect())
                    .await?;
                Ok(outputs.iter().sum::<u64>())
            }
        }))
        .expect("register parent");
    durably
}

/// Entry point of the worker processes (run by the test below, not directly).
#[test]
#[ignore = "child-process entry point of the child-run crash test"]
fn children_child() {
    let (Ok(db), Ok(log)) = (std::env::var(ENV_DB), std::env::var(ENV_LOG)) else {
        panic!("children_child runs only as a child of the crash_children test");
    };
    let hang = std::env::var_os(ENV_HANG).is_some();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let durably = instance(&Db::from_env(&db), Log::open(Path::new(&log)), hang);
        durably.init().await.expect("init");
        tokio::time::sleep(HANG_GUARD).await;
    });
}

fn spawn(db: &Db, log: &Path, hang: bool) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--ignored",
            "--exact",
            "children_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DB, db.to_env())
        .env(ENV_LOG, log)
        .env_remove(ENV_HANG)
        .stdout(std::process::Stdio::null());
    if hang {
        command.env(ENV_HANG, "1");
    }
    command.spawn().expect("spawn worker")
}

fn log_lines(log: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(pid, what)| (pid.parse().expect("pid"), what.to_owned()))
        .collect()
}

/// A worker SIGKILLed while its parent's children run (the parent triggered them and
/// suspended, or was about to) loses nothing: a second process completes the same children
/// and resumes the parent, which completes with their outputs; no second child exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_parent_resumes_with_the_same_children_on_a_sqlite_file() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::Sqlite(dir.path().join("children.sqlite"));
    killed_parent_resumes_with_the_same_children(&db, dir.path()).await;
}

/// [`a_killed_parent_resumes_with_the_same_children_on_a_sqlite_file`] on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn a_killed_parent_resumes_with_the_same_children_on_postgres() {
    let dir = tempfile::tempdir().expect("dir");
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    killed_parent_resumes_with_the_same_children(&Db::Postgres(schema), dir.path()).await;
}

async fn killed_parent_resumes_with_the_same_children(db: &Db, dir: &Path) {
    let db = db.clone();
    let log = dir.join("log");
    // This process triggers the parent and watches (no worker here); the first process runs it.
    let parent = instance(&db, Log::open(&dir.join("driver-log")), false);
    parent.migrate().await.expect("migrate");
    let mut first = spawn(&db, &log, true);
    let parent_handle = parent.job::<Value, u64>("parent").expect("the parent job");
    let id = parent_handle
        .trigger(json!({}))
        .await
        .expect("trigger")
        .run
        .id;
    let first_pid = first.id();
    eventually(
        "every child started in the first process",
        HANG_GUARD,
        || async {
            let started = log_lines(&log)
                .iter()
                .filter(|(pid, what)| *pid == first_pid && what.starts_with("child "))
                .count();
            (started as u64 == CHILDREN).then_some(())
        },
    )
    .await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");

    let mut second = spawn(&db, &log, false);
    let done = eventually("the parent completes", HANG_GUARD, || async {
        parent
            .get_run(&id)
            .await
            .expect("get_run")
            .filter(|run| run.status.is_terminal())
    })
    .await;
    second.kill().expect("kill");
    second.wait().expect("reap");
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    assert_eq!(
        done.output,
        Some(json!((1..=CHILDREN).map(|n| n * 10).sum::<u64>()))
    );
    let children = parent.get_children(&id).await.expect("children");
    assert_eq!(children.len() as u64, CHILDREN, "no second child");
    assert!(children.iter().all(|c| c.status == RunStatus::Completed));
    let all = parent
        .get_runs(&RunFilter::new().job_name("child"))
        .await
        .expect("runs");
    assert_eq!(all.len() as u64, CHILDREN);
    // The second process executed each child again (the first died inside its step).
    let second_pid = second.id();
    let again = log_lines(&log)
        .iter()
        .filter(|(pid, what)| *pid == second_pid && what.starts_with("child "))
        .count();
    assert_eq!(again as u64, CHILDREN);
}
