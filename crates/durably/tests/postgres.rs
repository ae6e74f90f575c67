//! PostgreSQL-only tests: LISTEN/NOTIFY wake-ups, idle cost, faults (terminated backends, a
//! cluster restart) and several worker processes sharing one database.
//!
//! Needs `DURABLY_TEST_POSTGRES_URL` (see `build.rs`); without it every test here is reported as
//! ignored. Each test works in its own fresh schema. The multi-process tests re-execute this
//! test binary as child workers (the `#[ignore]`d `postgres_child` entry point, selected by
//! environment variables), like `crash.rs` does for SQLite.
mod common;

use common::Ends;
#[allow(unused_imports)]
use durably::store::ClaimRequest;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    Instrumented, PgSchema, eventually, fresh_schema, postgres_store, postgres_url, within,
};
use durably::{
    Durably, EventType, Job, PostgresOptions, PostgresStore, RunFilter, RunStatus, StepContext,
    Store, TriggerOptions, WaitOptions,
};
use serde::{Deserialize, Serialize};

const ENV_MODE: &str = "DURABLY_PG_CHILD_MODE";
const ENV_SCHEMA: &str = "DURABLY_PG_CHILD_SCHEMA";
const ENV_LOG: &str = "DURABLY_PG_CHILD_LOG";
const ENV_GO: &str = "DURABLY_PG_CHILD_GO";

/// Tests that restart the cluster take this for writing; every other test here for reading.
static CLUSTER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[derive(Serialize, Deserialize)]
struct Input {
    n: u64,
}

/// Counts every execution of every step, by `<run id> <step>`.
#[derive(Clone, Default)]
struct Executions(Arc<Mutex<HashMap<String, u32>>>);

impl Executions {
    fn record(&self, what: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(what)
            .or_default() += 1;
    }

    fn snapshot(&self) -> HashMap<String, u32> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Three quick steps, each counted in `executions`.
fn three_steps(executions: Executions, step_time: Duration) -> Job<Input, u64> {
    Job::new("three-steps", move |step: StepContext, input: Input| {
        let executions = executions.clone();
        async move {
            for k in 1..=3u64 {
                let (executions, what) = (executions.clone(), format!("{} s{k}", step.run_id()));
                step.run(&format!("s{k}"), |_| async move {
                    executions.record(what);
                    tokio::time::sleep(step_time).await;
                    Ok(k)
                })
                .await?;
            }
            Ok(input.n)
        }
    })
}

fn url_with_application_name(name: &str) -> String {
    let url = postgres_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn a_trigger_on_another_instance_wakes_an_idle_worker_at_once() {
    let _cluster = CLUSTER.read().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let executions = Executions::default();
    // The worker polls once a minute: only a notification can wake it in time.
    let worker = Durably::builder()
        .store(postgres_store(&schema))
        .polling_interval(Duration::from_secs(60))
        .build()
        .expect("build");
    worker
        .register(three_steps(executions.clone(), Duration::ZERO))
        .expect("register");
    worker.init().await.expect("init");
    tokio::time::sleep(Duration::from_millis(300)).await; // idle, listening

    let other = Durably::builder()
        .store(postgres_store(&schema))
        .build()
        .expect("build");
    let handle = other
        .register(three_steps(Executions::default(), Duration::ZERO))
        .expect("register");
    for n in 0..5 {
        let started = Instant::now();
        let run = handle.trigger(Input { n }).await.expect("trigger").run;
        let done = other
            .wait_for_run(
                &run.id,
                WaitOptions::new()
                    .timeout(Duration::from_secs(10))
                    .polling_interval(Duration::from_millis(5)),
            )
            .await
            .expect("the worker on the other instance ran it");
        assert_eq!(done.status, RunStatus::Completed);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken by NOTIFY, not by the 60 s poll: {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn a_cancel_on_another_instance_fires_the_running_step_token() {
    let _cluster = CLUSTER.read().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (fired_tx, mut fired_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let job = Job::new(
        "waits-for-cancel",
        move |step: StepContext, _input: Input| {
            let (started_tx, fired_tx) = (started_tx.clone(), fired_tx.clone());
            async move {
                step.run("wait", |cancel| async move {
                    let _ = started_tx.send(());
                    cancel.cancelled().await;
                    let _ = fired_tx.send(());
                    Ok(())
                })
                .await?;
                Ok(())
            }
        },
    );
    // Long renewal interval: the renewal cannot be what notices the cancel.
    let store = postgres_store(&schema);
    // The worker's listener starts with the store's first subscriber and announces
    // `RunsAvailable` once it listens: a cancel sent before that would be a notice nobody heard
    // (the worker would find it only at its next renewal).
    let mut notices = store.notifications().expect("PostgreSQL has notifications");
    let worker = Durably::builder()
        .store(store)
        .polling_interval(Duration::from_millis(50))
        .lease_duration(Duration::from_secs(120))
        .lease_renew_interval(Duration::from_secs(60))
        .build()
        .expect("build");
    let handle = worker.register(job).expect("register");
    worker.init().await.expect("init");
    let run = handle.trigger(Input { n: 1 }).await.expect("trigger").run;
    within("step started", Duration::from_secs(10), started_rx.recv()).await;
    within(
        "the worker's listener listens",
        Duration::from_secs(10),
        async {
            while !matches!(
                notices.recv().await,
                Ok(durably::store::StoreNotice::RunsAvailable)
            ) {}
        },
    )
    .await;

    let other = Durably::builder()
        .store(postgres_store(&schema))
        .build()
        .expect("build");
    other.migrate().await.expect("migrate");
    let cancelled_at = Instant::now();
    other
        .cancel(&run.id)
        .await
        .expect("cancel from the other instance");
    within(
        "the token fired on the executing instance",
        Duration::from_secs(5),
        fired_rx.recv(),
    )
    .await;
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    let run = eventually("run cancelled", Duration::from_secs(5), || async {
        let run = worker.get_run(&run.id).await.expect("read")?;
        (run.status == RunStatus::Cancelled).then_some(run)
    })
    .await;
    assert_eq!(run.status, RunStatus::Cancelled);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn an_idle_worker_costs_one_claim_per_polling_interval_and_one_sweep_per_lease() {
    let _cluster = CLUSTER.read().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let store = Arc::new(Instrumented::over(Arc::new(postgres_store(&schema))));
    let worker = Durably::builder()
        .shared_store(store.clone())
        .polling_interval(Duration::from_millis(50))
        .lease_duration(Duration::from_secs(30))
        .build()
        .expect("build");
    worker.init().await.expect("init");
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await;
    let claims = store.claims.load(Ordering::SeqCst);
    let releases = store.sweeps.load(Ordering::SeqCst);
    // 2 s at 50 ms: about 40 polls (plus the wake-up the listener sends when it connects).
    assert!(claims <= 45, "{claims} claims in 2 s at a 50 ms interval");
    assert!(claims >= 10, "the worker kept polling: {claims}");
    assert_eq!(releases, 1, "one expired-lease sweep per 30 s lease");
}

/// Drains `jobs` three-step runs with one in-process worker while `disturb` runs; returns the
/// number of `worker:error` events seen.
async fn drain_while(
    schema: &str,
    application_name: &str,
    jobs: u64,
    disturb: impl std::future::Future<Output = ()>,
) -> u64 {
    let executions = Executions::default();
    let store = PostgresStore::connect_with(
        &url_with_application_name(application_name),
        PostgresOptions::default()
            .max_connections(8)
            .schema(Some(schema.to_owned()))
            .retry_for(Duration::from_secs(30)),
    )
    .expect("store");
    let worker = Durably::builder()
        .store(store)
        .max_concurrent_runs(4)
        .polling_interval(Duration::from_millis(20))
        // Long enough that an outage of a few seconds never expires a lease (an expired lease
        // may legitimately run its in-flight step again); runs whose claim was lost in the
        // outage come back after it.
        .lease_duration(Duration::from_secs(15))
        .lease_renew_interval(Duration::from_secs(1))
        .build()
        .expect("build");
    let handle = worker
        .register(three_steps(executions.clone(), Duration::from_millis(2)))
        .expect("register");
    worker.migrate().await.expect("migrate");
    let errors = Arc::new(AtomicU64::new(0));
    let _listener = {
        let errors = errors.clone();
        worker.on(EventType::WorkerError, move |_| {
            errors.fetch_add(1, Ordering::SeqCst);
        })
    };
    handle
        .batch_trigger((0..jobs).map(|n| (Input { n }, TriggerOptions::new())))
        .await
        .expect("enqueue");
    worker.start();
    disturb.await;
    let fault_ended = Instant::now();
    let all = RunFilter::new().status(RunStatus::Completed);
    eventually(
        "every run completed after the fault",
        Duration::from_secs(180),
        || async {
            let done = worker.get_runs(&all).await.ok()?;
            (done.len() as u64 == jobs).then_some(())
        },
    )
    .await;
    eprintln!(
        "every run completed {:?} after the fault ended",
        fault_ended.elapsed()
    );
    worker.stop().await;
    let executions = executions.snapshot();
    assert_eq!(executions.len() as u64, jobs * 3, "every step executed");
    let repeated: Vec<_> = executions.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "steps executed more than once: {repeated:?}"
    );
    errors.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn terminated_backends_during_a_drain_lose_no_run_and_rerun_no_step() {
    let _cluster = CLUSTER.read().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let application_name = format!("durably_kill_{}", durably::new_id().to_lowercase());
    let admin = admin().await;
    let terminated = Arc::new(AtomicU64::new(0));
    let disturb = {
        let (application_name, terminated) = (application_name.clone(), terminated.clone());
        async move {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let rows = admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1",
                        &[&application_name],
                    )
                    .await
                    .expect("terminate backends");
                terminated.fetch_add(rows.len() as u64, Ordering::SeqCst);
            }
        }
    };
    let errors = drain_while(&schema, &application_name, 400, disturb).await;
    let terminated = terminated.load(Ordering::SeqCst);
    eprintln!("terminated {terminated} backends; {errors} worker:error events");
    assert!(terminated > 0, "the test terminated some backends");
    assert!(errors > 0, "the faults were reported as worker:error");
}

fn cluster_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("a local PostgreSQL cluster (/etc/postgresql)")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a cluster version")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn a_cluster_restart_during_a_drain_loses_no_run_and_reruns_no_step() {
    let _cluster = CLUSTER.write().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let application_name = format!("durably_restart_{}", durably::new_id().to_lowercase());
    let disturb = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let version = cluster_version();
        let status = tokio::task::spawn_blocking(move || {
            Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &version, "main", "restart"])
                .status()
        })
        .await
        .expect("join")
        .expect("run pg_ctlcluster");
        assert!(status.success(), "pg_ctlcluster restart failed: {status}");
    };
    let errors = drain_while(&schema, &application_name, 600, disturb).await;
    eprintln!("{errors} worker:error events across the restart");
    assert!(errors > 0, "the outage was reported as worker:error");
}

// ---------------------------------------------------------------------------------------------
// Several worker processes

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// The race workload: job names `race-0..RACE_JOBS`, keys `key-0..RACE_KEYS` shared by all.
/// More keys than one process has slots (4): a completion hands its key to the next run
/// waiting for it, so a process holding every key could keep them all.
const RACE_JOBS: u64 = 20;
const RACE_KEYS: u64 = 8;

fn appender(path: &Path) -> Arc<Mutex<std::fs::File>> {
    Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("log file"),
    ))
}

fn append(log: &Arc<Mutex<std::fs::File>>, line: String) -> std::io::Result<()> {
    let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
    file.write_all(format!("{line}\n").as_bytes())
}

/// Entry point of the child processes (run by the tests below, not directly).
#[test]
#[ignore = "child-process entry point of the PostgreSQL multi-process tests"]
fn postgres_child() {
    let (Ok(mode), Ok(schema), Ok(log), Ok(go)) = (
        std::env::var(ENV_MODE),
        std::env::var(ENV_SCHEMA),
        std::env::var(ENV_LOG),
        std::env::var(ENV_GO),
    ) else {
        panic!("postgres_child runs only as a child of the PostgreSQL tests");
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let log = appender(Path::new(&log));
        let durably = Durably::builder()
            .store(postgres_store(&schema))
            .max_concurrent_runs(4)
            .polling_interval(Duration::from_millis(20))
            .build()
            .expect("build");
        match mode.as_str() {
            "drain" => {
                let log = log.clone();
                durably
                    .register(Job::new("drain", move |step: StepContext, input: Input| {
                        let log = log.clone();
                        async move {
                            for k in 1..=3u64 {
                                let (log, line) = (log.clone(), format!("{} s{k}", step.run_id()));
                                step.run(&format!("s{k}"), |_| async move {
                                    append(&log, line)?;
                                    Ok(k)
                                })
                                .await?;
                            }
                            Ok(input.n)
                        }
                    }))
                    .expect("register");
            }
            "race" => {
                for j in 0..RACE_JOBS {
                    let log = log.clone();
                    durably
                        .register(Job::new(
                            format!("race-{j}"),
                            move |step: StepContext, input: Input| {
                                let log = log.clone();
                                async move {
                                    let key = format!("key-{}", input.n % RACE_KEYS);
                                    let run_id = step.run_id().to_owned();
                                    step.run("hold", |_| async move {
                                        append(
                                            &log,
                                            format!("start {key} {run_id} {}", now_micros()),
                                        )?;
                                        tokio::time::sleep(Duration::from_millis(3)).await;
                                        append(
                                            &log,
                                            format!("end {key} {run_id} {}", now_micros()),
                                        )?;
                                        Ok(())
                                    })
                                    .await?;
                                    Ok(input.n)
                                }
                            },
                        ))
                        .expect("register");
                }
            }
            other => panic!("unknown child mode {other}"),
        }
        durably.migrate().await.expect("migrate");
        while !Path::new(&go).exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        durably.start();
        let active = RunFilter::new()
            .status(RunStatus::Pending)
            .status(RunStatus::Leased)
            .limit(1);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match durably.get_runs(&active).await {
                Ok(runs) if runs.is_empty() => break,
                _ => {}
            }
        }
        durably.stop().await;
    });
}

fn spawn_child(mode: &str, schema: &str, log: &Path, go: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "postgres_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_MODE, mode)
        .env(ENV_SCHEMA, schema)
        .env(ENV_LOG, log)
        .env(ENV_GO, go)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child worker")
}

async fn wait_children(children: &mut [Child]) {
    for child in children {
        let status = within("child drain", Duration::from_secs(300), async {
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
}

/// Four worker processes on one fresh schema: their log files, the file whose creation starts
/// them, and a parent instance to trigger from and check with (schema migrated).
struct WorkerProcesses {
    _cluster: tokio::sync::RwLockReadGuard<'static, ()>,
    _schema: PgSchema,
    _dir: tempfile::TempDir,
    schema: String,
    go: PathBuf,
    logs: Vec<PathBuf>,
    parent: Durably,
}

impl WorkerProcesses {
    async fn new() -> Self {
        let cluster = CLUSTER.read().await;
        let schema = fresh_schema();
        let guard = PgSchema {
            name: schema.clone(),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let go = dir.path().join("go");
        let logs = (0..4)
            .map(|i| dir.path().join(format!("{i}.log")))
            .collect();
        let parent = Durably::builder()
            .store(postgres_store(&schema))
            .build()
            .expect("build");
        parent.migrate().await.expect("migrate");
        WorkerProcesses {
            _cluster: cluster,
            _schema: guard,
            _dir: dir,
            schema,
            go,
            logs,
            parent,
        }
    }

    /// Starts one child per log file in `mode`; they begin together once `go` exists.
    fn spawn(&self, mode: &str) -> Vec<Child> {
        self.logs
            .iter()
            .map(|log| spawn_child(mode, &self.schema, log, &self.go))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn four_worker_processes_drain_2000_runs_every_step_exactly_once() {
    const JOBS: u64 = 2000;
    let processes = WorkerProcesses::new().await;
    let (parent, logs, go) = (&processes.parent, &processes.logs, &processes.go);
    let handle = parent
        .register(Job::new(
            "drain",
            |_step: StepContext, input: Input| async move { Ok(input.n) },
        ))
        .expect("register");
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(500) {
        handle
            .batch_trigger(chunk.iter().map(|&n| (Input { n }, TriggerOptions::new())))
            .await
            .expect("enqueue");
    }
    let mut children = processes.spawn("drain");
    std::fs::write(go, b"go").expect("start the workers");
    wait_children(&mut children).await;

    let completed = parent
        .get_runs(&RunFilter::new().status(RunStatus::Completed))
        .await
        .expect("query");
    assert_eq!(completed.len() as u64, JOBS, "every run completed");
    let mut executions = HashMap::<String, u32>::new();
    let mut per_process = Vec::new();
    for log in logs {
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
        per_process.iter().filter(|&&n| n > 0).count() >= 2,
        "the processes shared the work: {per_process:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn four_processes_racing_on_shared_keys_never_lease_one_key_twice() {
    let processes = WorkerProcesses::new().await;
    let (parent, logs, go, schema) = (
        &processes.parent,
        &processes.logs,
        &processes.go,
        &processes.schema,
    );
    let mut total = 0u64;
    for j in 0..RACE_JOBS {
        let handle = parent
            .register(Job::new(
                format!("race-{j}"),
                |_step: StepContext, input: Input| async move { Ok(input.n) },
            ))
            .expect("register");
        // One pending run per job and key (the pending-per-key rule), keys shared by all jobs.
        for k in 0..RACE_KEYS {
            handle
                .trigger_with(
                    Input { n: k },
                    TriggerOptions::new().concurrency_key(format!("key-{k}")),
                )
                .await
                .expect("trigger");
            total += 1;
        }
    }
    let mut children = processes.spawn("race");

    // Watch the table while they race: never two unexpired leases on one key.
    let admin = admin().await;
    admin
        .batch_execute(&format!("SET search_path = {schema}"))
        .await
        .expect("search_path");
    std::fs::write(go, b"go").expect("start the workers");
    let watch = async {
        let mut checks = 0u64;
        loop {
            let rows = admin
                .query(
                    "SELECT concurrency_key, count(*) FROM durably_runs WHERE status = 'leased' \
                     GROUP BY concurrency_key HAVING count(*) > 1",
                    &[],
                )
                .await
                .expect("watch");
            assert!(rows.is_empty(), "two leased runs share a key");
            checks += 1;
            let done = admin
                .query_one(
                    "SELECT count(*) FROM durably_runs WHERE status = 'completed'",
                    &[],
                )
                .await
                .expect("count");
            if done.get::<_, i64>(0) as u64 == total {
                return checks;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let checks = within("race drained", Duration::from_secs(300), watch).await;
    wait_children(&mut children).await;
    assert!(checks > 0);

    // And from the processes' own records: per key, executions never overlap in time.
    let mut intervals: BTreeMap<String, Vec<(u128, u128, String)>> = BTreeMap::new();
    let mut starts: HashMap<String, (String, u128)> = HashMap::new();
    let mut busy_processes = 0;
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if !text.is_empty() {
            busy_processes += 1;
        }
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let (kind, key, run, at) = (parts[0], parts[1], parts[2], parts[3]);
            let at: u128 = at.parse().expect("time");
            match kind {
                "start" => {
                    starts.insert(run.to_owned(), (key.to_owned(), at));
                }
                _ => {
                    let (key, start) = starts.remove(run).expect("start before end");
                    intervals
                        .entry(key)
                        .or_default()
                        .push((start, at, run.to_owned()));
                }
            }
        }
    }
    let executed: usize = intervals.values().map(Vec::len).sum();
    assert_eq!(executed as u64, total, "every run executed exactly once");
    for (key, spans) in &mut intervals {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "runs {} and {} of {key} overlapped",
                pair[0].2,
                pair[1].2
            );
        }
    }
    assert!(busy_processes >= 2, "the processes raced: {busy_processes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn the_schema_is_upstream_version_4_with_its_index_names_and_column_types() {
    let _cluster = CLUSTER.read().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let store = postgres_store(&schema);
    // Concurrent migrations (many processes starting at once) serialize on an advisory lock.
    let migrations: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for migration in migrations {
        migration.await.expect("task").expect("migrate");
    }
    assert_eq!(store.schema_version().await.expect("version"), 4);
    let admin = admin().await;
    let indexes: Vec<String> = admin
        .query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND indexname LIKE 'idx_%' \
             ORDER BY indexname",
            &[&schema],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        indexes,
        [
            "idx_durably_logs_run_created",
            "idx_durably_run_labels_key_value",
            "idx_durably_run_labels_pk",
            "idx_durably_runs_job_created",
            "idx_durably_runs_job_idempotency",
            "idx_durably_runs_pending_concurrency",
            "idx_durably_runs_status_completed",
            "idx_durably_runs_status_concurrency",
            "idx_durably_runs_status_created",
            "idx_durably_runs_status_lease_expires",
            "idx_durably_step_attempts_run_started",
            "idx_durably_steps_completed_unique",
            "idx_durably_steps_run_index",
            "idx_durably_waits_due",
            "idx_durably_waits_run_name",
        ]
    );
    let partial: Vec<String> = admin
        .query(
            // `indpred` rather than `pg_indexes.indexdef`, whose `pg_get_indexdef` may run
            // for another test's index while that test drops it ("could not open relation").
            "SELECT i.relname::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
             JOIN pg_namespace n ON n.oid = i.relnamespace \
             WHERE n.nspname = $1 AND x.indpred IS NOT NULL ORDER BY 1",
            &[&schema],
        )
        .await
        .expect("partial indexes")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        partial,
        [
            "durably_rs_runs_parent",
            "durably_rs_runs_parent_wait",
            "durably_rs_runs_pending_key_priority_order",
            "durably_rs_runs_pending_order",
            "durably_rs_runs_pending_priority_order",
            "durably_rs_schedules_due",
            "durably_rs_waits_resumable",
            "idx_durably_runs_pending_concurrency",
            "idx_durably_steps_completed_unique"
        ],
        "upstream's two partial indexes and durably's own seven"
    );
    let types: Vec<(String, String)> = admin
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'durably_runs' ORDER BY ordinal_position",
            &[&schema],
        )
        .await
        .expect("columns")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let integers = [
        "current_step_index",
        "completed_step_count",
        "lease_generation",
        "rs_priority",
    ];
    // Upstream's 21 columns and durably's nullable `rs_priority`, `rs_parent_run_id`,
    // `rs_parent_wait_id` and `rs_trace_context`, last.
    assert_eq!(types.len(), 25);
    assert_eq!(types[21].0, "rs_priority");
    assert_eq!(types[22].0, "rs_parent_run_id");
    assert_eq!(types[23].0, "rs_parent_wait_id");
    assert_eq!(types[24].0, "rs_trace_context");
    for (column, data_type) in &types {
        let expected = if integers.contains(&column.as_str()) {
            "integer"
        } else {
            "text"
        };
        assert_eq!(data_type, expected, "type of durably_runs.{column}");
    }
    // Version 4's numeric deadline and its timing flag.
    let wait_types: Vec<(String, String)> = admin
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'durably_waits' \
             AND column_name IN ('deadline_ms', 'timing_known') ORDER BY column_name",
            &[&schema],
        )
        .await
        .expect("wait columns")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        wait_types,
        [
            ("deadline_ms".to_string(), "double precision".to_string()),
            ("timing_known".to_string(), "integer".to_string())
        ]
    );
}

/// Notices from `notices` up to the next [`durably::store::StoreNotice::RunCancelled`] (a marker,
/// cancelled through another store: a store does not hear its own cancels; notices arrive in
/// commit order), whether any of them was `RunsAvailable`.
async fn runs_available_before_the_marker(
    notices: &mut tokio::sync::broadcast::Receiver<durably::store::StoreNotice>,
) -> bool {
    let mut available = false;
    within("the marker notice", Duration::from_secs(10), async {
        loop {
            match notices.recv().await {
                Ok(durably::store::StoreNotice::RunCancelled { .. }) => break,
                Ok(durably::store::StoreNotice::RunsAvailable) => available = true,
                Ok(_) => continue,
                Err(error) => panic!("notices ended: {error}"),
            }
        }
    })
    .await;
    available
}

/// A completion that frees a concurrency key hands it to the run waiting for it in the same
/// transaction, under the key's lock, and then wakes nobody (every listening worker would claim
/// for nothing). When another claimer holds the key's lock meanwhile, the completion hands
/// nothing on and sends the notice, so the waiting run is claimed once that claimer lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn a_completion_hands_its_key_on_and_wakes_nobody_unless_it_cannot() {
    let _cluster = CLUSTER.read().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let store = postgres_store(&schema);
    store.migrate().await.expect("migrate");
    let canceller = postgres_store(&schema);
    let lease = Duration::from_secs(60);
    let keyed = |key: &str| durably::store::NewRun {
        job_name: "job".into(),
        input: serde_json::json!({}),
        idempotency_key: None,
        concurrency_key: Some(key.into()),
        labels: Default::default(),
        coalesce: None,
        ..Default::default()
    };
    let next = durably::store::ClaimRequest {
        worker_id: "w".into(),
        lease,
        max: 1,
        resume_waiting: true,
    };
    // Keys of this test's own: key locks are shared by every schema of the database.
    let (handed, blocked) = (format!("handed-{schema}"), format!("blocked-{schema}"));
    let mut notices = store.notifications().expect("PostgreSQL notices");
    for key in [&handed, &blocked] {
        store
            .enqueue(keyed(key), durably::Timestamp::now())
            .await
            .expect("enqueue");
    }
    let holders = store
        .claim(&ClaimRequest::new("w", lease, 2), durably::Timestamp::now())
        .await
        .expect("claim");
    assert_eq!(holders.len(), 2, "{holders:?}");
    let holder_of = |key: &str| {
        holders
            .iter()
            .find(|run| run.concurrency_key.as_deref() == Some(key))
            .cloned()
            .expect("a holder")
    };
    let (handed_holder, blocked_holder) = (holder_of(&handed), holder_of(&blocked));
    let now = durably::Timestamp::now();
    let handed_waiting = store.enqueue(keyed(&handed), now).await.expect("enqueue");
    let blocked_waiting = store.enqueue(keyed(&blocked), now).await.expect("enqueue");
    // A marker run per look at the notices, cancelled through another store when needed.
    let mut markers = Vec::new();
    for n in 0..3 {
        let marker = keyed(&format!("marker-{n}-{schema}"));
        markers.push(store.enqueue(marker, now).await.expect("enqueue").run.id);
    }
    let mut look = async |marker: &str| {
        canceller
            .cancel_run(marker, durably::Timestamp::now())
            .await
            .expect("cancel the marker");
        runs_available_before_the_marker(&mut notices).await
    };
    look(&markers[0]).await; // the enqueues' own notices

    // Handed on: the waiting run is leased in the same call, and no notice goes out.
    let complete = async |holder: &durably::Run| {
        let (completed, claimed) = store
            .complete_run_and_claim(
                &durably::store::Fence::of(holder),
                None,
                durably::Timestamp::now(),
                &next,
            )
            .await
            .expect("complete and claim");
        assert!(completed);
        claimed
    };
    let claimed = complete(&handed_holder).await;
    let ids: Vec<&str> = claimed.iter().map(|run| run.id.as_str()).collect();
    assert_eq!(ids, [handed_waiting.run.id.as_str()]);
    assert!(!look(&markers[1]).await, "a key handed on wakes nobody");

    // Another claimer holds the key's lock: nothing handed on, and the notice goes out.
    let other = admin().await;
    other
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('{blocked}'))"
        ))
        .await
        .expect("hold the key's lock");
    let claimed = complete(&blocked_holder).await;
    assert!(claimed.is_empty(), "{claimed:?}");
    assert!(
        look(&markers[2]).await,
        "a freed key not handed on is announced"
    );
    other.batch_execute("COMMIT").await.expect("let go");
    let leased = store
        .claim(&ClaimRequest::new("w", lease, 1), durably::Timestamp::now())
        .await
        .expect("claim");
    let ids: Vec<&str> = leased.iter().map(|run| run.id.as_str()).collect();
    assert_eq!(ids, [blocked_waiting.run.id.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn claims_walk_the_pending_order_index_instead_of_sorting_a_batch() {
    let _cluster = CLUSTER.read().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let store = postgres_store(&schema);
    store.migrate().await.expect("migrate");
    // A database the TypeScript runtime created has upstream's indexes only (and no version
    // table of durably's own additions): migrating adds ours.
    let admin = admin().await;
    admin
        .batch_execute(&format!(
            "SET search_path TO \"{schema}\"; DROP INDEX durably_rs_runs_pending_order; \
             DROP INDEX durably_rs_runs_pending_priority_order; \
             DROP INDEX durably_rs_runs_pending_key_priority_order; \
             DROP INDEX durably_rs_waits_resumable; \
             DROP INDEX durably_rs_runs_parent; DROP INDEX durably_rs_runs_parent_wait; \
             ALTER TABLE durably_runs DROP COLUMN rs_priority; \
             ALTER TABLE durably_runs DROP COLUMN rs_parent_run_id; \
             ALTER TABLE durably_runs DROP COLUMN rs_parent_wait_id; \
             ALTER TABLE durably_runs DROP COLUMN rs_trace_context; \
             DROP TABLE durably_rs_schema_versions"
        ))
        .await
        .expect("drop the indexes");
    store.migrate().await.expect("migrate again");
    for index in [
        "durably_rs_runs_pending_order",
        "durably_rs_runs_pending_priority_order",
        "durably_rs_runs_pending_key_priority_order",
        "durably_rs_waits_resumable",
        "durably_rs_runs_parent",
        "durably_rs_runs_parent_wait",
    ] {
        let exists: bool = admin
            .query_one(&format!("SELECT to_regclass('{index}') IS NOT NULL"), &[])
            .await
            .expect("look up the index")
            .get(0);
        assert!(exists, "migrate re-created {index}");
    }

    // One batch shares one millisecond: only the id orders it.
    let now = durably::Timestamp::now();
    let runs = (0..3000)
        .map(|n| durably::store::NewRun {
            job_name: "batch".into(),
            input: serde_json::json!({ "n": n }),
            idempotency_key: None,
            concurrency_key: None,
            labels: Default::default(),
            coalesce: None,
            ..Default::default()
        })
        .collect();
    let enqueued = store.enqueue_many(runs, now).await.expect("enqueue");
    let mut ids: Vec<String> = enqueued.iter().map(|e| e.run.id.clone()).collect();
    ids.sort();
    admin
        .batch_execute("ANALYZE durably_runs")
        .await
        .expect("analyze");
    let plan: Vec<String> = admin
        .query(
            "EXPLAIN SELECT r.id FROM durably_runs r WHERE r.status = 'pending' \
             AND r.rs_priority IS NULL ORDER BY r.created_at ASC, r.id ASC LIMIT 8 \
             FOR UPDATE OF r SKIP LOCKED",
            &[],
        )
        .await
        .expect("explain")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("durably_rs_runs_pending_order"), "{plan}");
    assert!(!plan.contains("Sort"), "no sort: {plan}");

    let claimed = store
        .claim(
            &ClaimRequest::new("w", Duration::from_secs(30), 8),
            durably::Timestamp::now(),
        )
        .await
        .expect("claim");
    let claimed: Vec<String> = claimed.into_iter().map(|run| run.id).collect();
    assert_eq!(
        claimed,
        ids[..8],
        "the oldest eight, by id within the millisecond"
    );
}

/// A store on `schema` whose group commit waits up to `delay` for returning runs.
fn store_with_commit_delay(schema: &str, delay: Duration) -> PostgresStore {
    PostgresStore::connect_with(
        &postgres_url(),
        PostgresOptions::default()
            .max_connections(8)
            .schema(Some(schema.to_owned()))
            .commit_delay(delay),
    )
    .expect("connect")
}

/// Leases `runs` fresh runs of `store` and returns their fences.
async fn leased_runs(store: &PostgresStore, runs: usize) -> Vec<durably::store::Fence> {
    store.migrate().await.expect("migrate");
    let now = durably::Timestamp::now();
    let new_runs = (0..runs)
        .map(|n| durably::store::NewRun {
            job_name: "steps".into(),
            input: serde_json::json!(n),
            idempotency_key: None,
            concurrency_key: None,
            labels: Default::default(),
            coalesce: None,
            ..Default::default()
        })
        .collect();
    store.enqueue_many(new_runs, now).await.expect("enqueue");
    let leased = store
        .claim(&ClaimRequest::new("w", Duration::from_secs(60), runs), now)
        .await
        .expect("claim");
    assert_eq!(leased.len(), runs);
    leased
        .into_iter()
        .map(|run| durably::store::Fence::of(&run))
        .collect()
}

/// `steps` steps of the leased run `fence`, one after another.
async fn persist_steps(store: PostgresStore, fence: durably::store::Fence, steps: i64) {
    for index in 0..steps {
        let step = durably::store::NewStep {
            name: format!("s{index}"),
            index,
            status: durably::StepStatus::Completed,
            output: Some(serde_json::json!(index)),
            error: None,
            started_at: durably::Timestamp::now(),
            attempt: None,
        };
        let persisted = store
            .persist_step(&fence, step, durably::Timestamp::now())
            .await
            .expect("persist");
        assert!(persisted.is_some(), "the lease holder's step lands");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn a_batch_waits_for_the_next_steps_of_the_runs_it_just_served() {
    let _cluster = CLUSTER.read().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    // A delay far longer than a step takes: every batch waits for the runs it expects.
    let store = store_with_commit_delay(&schema, Duration::from_secs(5));
    let fences = leased_runs(&store, 2).await;
    let before = store.stats();
    let steps = 20;
    within("two runs step", Duration::from_secs(120), async {
        tokio::join!(
            persist_steps(store.clone(), fences[0].clone(), steps),
            persist_steps(store.clone(), fences[1].clone(), steps),
        )
    })
    .await;
    let after = store.stats();
    assert_eq!(after.operations - before.operations, 2 * steps as u64);
    let batches = after.transactions - before.transactions;
    // Without the wait the two runs alternate (up to one batch per step, 40); with it, after
    // the first two batches (both runs' first steps may go out apart), each carries one step
    // of each run.
    assert!(
        batches <= steps as u64 + 1,
        "{batches} batches for 2 x {steps} steps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn a_lone_run_never_waits_for_its_own_steps() {
    let _cluster = CLUSTER.read().await;
    let schema = fresh_schema();
    let _guard = PgSchema {
        name: schema.clone(),
    };
    let store = store_with_commit_delay(&schema, Duration::from_secs(10));
    let fences = leased_runs(&store, 1).await;
    // One delay per step would take 200 s; the run's own next step ends every wait.
    let started = Instant::now();
    within(
        "one run steps",
        Duration::from_secs(120),
        persist_steps(store.clone(), fences[0].clone(), 20),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}
