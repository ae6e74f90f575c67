//! `durably bench --backend postgres --db URL`: the same workloads on PostgreSQL, each in a fresh
//! schema of the given database (dropped afterwards), plus `multi-worker`: 4 worker processes
//! (this binary re-executed, each with concurrency 1) drain one backlog in one schema, and every
//! process reports how many step executions it made, for the exactly-once check, and when its
//! last run completed: `process_s` runs from the start signal to the last completion of any
//! process (as the other workloads stop at their last completion), not to the processes' exit.
//!
//! `--synchronous off` runs the sessions with `synchronous_commit=off` (the line then says
//! `"synchronous":"off"`; otherwise `"on"`, every commit waiting for its WAL flush).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use durably::{
    Durably, EventType, PostgresOptions, PostgresStore, RunFilter, RunStatus, TriggerOptions,
    Tuning,
};
use serde_json::json;

use super::server_stats::{ServerProbe, add_fields, with_app_name};
use super::{
    BenchArgs, BenchInput, Enqueue, Shape, bench_job, latency_on, peak_rss_mb, percentiles,
    print_line, reset_peak_rss, round, throughput_on,
};

type BoxError = Box<dyn std::error::Error>;

/// Set in the worker processes of `multi-worker`: the schema to work in.
const ENV_CHILD_SCHEMA: &str = "DURABLY_BENCH_PG_SCHEMA";
/// Set in the worker processes of `multi-worker`: the file whose existence means "start".
const ENV_CHILD_GO: &str = "DURABLY_BENCH_PG_GO";
/// Worker processes of `multi-worker`.
const WORKERS: usize = 4;

/// Whether this process is a worker process of `multi-worker` (started by [`multi_worker`]).
pub(super) fn is_worker_process() -> bool {
    std::env::var_os(ENV_CHILD_SCHEMA).is_some()
}

/// Set in the worker processes of `multi-worker`: `off` for `synchronous_commit=off`.
const ENV_CHILD_SYNC: &str = "DURABLY_BENCH_PG_SYNC";

/// Set in the worker processes of `multi-worker` given `--local-queue RUNS`: the runs each
/// worker keeps in progress (unset: no local queue).
const ENV_CHILD_LOCAL_QUEUE: &str = "DURABLY_BENCH_PG_LOCAL_QUEUE";

struct Setup {
    url: String,
    synchronous: String,
    counter: u64,
}

impl Setup {
    fn fresh_store(&mut self, pool: usize) -> durably::Result<PostgresStore> {
        self.counter += 1;
        let schema = format!("durably_bench_{}_{}", std::process::id(), self.counter);
        store(&self.url, &schema, pool, &self.synchronous)
    }
}

/// `--synchronous off` runs with `synchronous_commit=off`; anything else keeps it on.
fn store(
    url: &str,
    schema: &str,
    pool: usize,
    synchronous: &str,
) -> durably::Result<PostgresStore> {
    PostgresStore::connect_with(
        url,
        PostgresOptions::default()
            .max_connections(pool)
            .schema(Some(schema.to_owned()))
            .synchronous_commit(synchronous != "off")
            // For comparisons: DURABLY_BENCH_PG_GROUP_COMMIT=0 turns group commit off.
            .group_commit(
                std::env::var("DURABLY_BENCH_PG_GROUP_COMMIT").map_or(true, |v| v != "0"),
            ),
    )
}

/// Runs the selected workloads on PostgreSQL (or, in a `multi-worker` child, the worker).
pub(super) async fn run(args: &BenchArgs) -> Result<(), BoxError> {
    let url = args
        .db
        .clone()
        .ok_or("--backend postgres needs --db postgres://user@host:port/database")?;
    if let Ok(schema) = std::env::var(ENV_CHILD_SCHEMA) {
        let synchronous = std::env::var(ENV_CHILD_SYNC).unwrap_or_default();
        let local_queue = match std::env::var(ENV_CHILD_LOCAL_QUEUE) {
            Ok(runs) => Some(runs.parse::<usize>().map_err(|error| {
                format!("{ENV_CHILD_LOCAL_QUEUE}={runs:?} is not a number of runs: {error}")
            })?),
            Err(_) => None,
        };
        return child(&url, &schema, &synchronous, local_queue).await;
    }
    let synchronous = match args.synchronous.as_str() {
        "off" => "off",
        _ => "on",
    }
    .to_owned();
    let mut setup = Setup {
        url,
        synchronous: synchronous.clone(),
        counter: 0,
    };
    let wanted = |name: &str| args.workload.is_empty() || args.workload.iter().any(|w| w == name);
    for shape in Shape::all(args) {
        if wanted(shape.workload) {
            let line = throughput(&mut setup, &shape).await?;
            print_line(line, &synchronous);
        }
    }
    if wanted("latency") {
        let line = latency(&mut setup, args.calls).await?;
        print_line(line, &synchronous);
    }
    if args.workload.iter().any(|w| w == "waits") {
        for &concurrency in &args.concurrency {
            let store = setup.fresh_store(concurrency + 4)?;
            let line = super::waits::waits_on(
                Arc::new(store.clone()),
                "postgres",
                concurrency,
                args.step_jobs,
            )
            .await?;
            store.drop_schema().await?;
            print_line(line, &synchronous);
        }
    }
    if args.workload.iter().any(|w| w == "sleep") {
        for &concurrency in &args.concurrency {
            let store = setup.fresh_store(concurrency + 4)?;
            let line = super::sleep::sleep_on(
                Arc::new(store.clone()),
                "postgres",
                concurrency,
                args.runs,
                args.sleep_ms,
            )
            .await?;
            store.drop_schema().await?;
            print_line(line, &synchronous);
        }
    }
    if args.workload.iter().any(|w| w == "fanout-children") {
        for &concurrency in &args.concurrency {
            let store = setup.fresh_store(concurrency + 4)?;
            let line = super::children::children_on(
                Arc::new(store.clone()),
                "postgres",
                concurrency,
                args.children,
            )
            .await?;
            store.drop_schema().await?;
            print_line(line, &synchronous);
        }
    }
    if wanted("multi-worker") {
        let line = multi_worker(&mut setup, args.jobs, args.local_queue).await?;
        print_line(line, &synchronous);
    }
    Ok(())
}

/// A throughput workload in a fresh schema. The runs are triggered by a connection pool of
/// their own, closed before the drain; with a [`ServerProbe`], the server's counters are read
/// once it has closed and again once the worker's pool has (see [`server_stats`]).
async fn throughput(setup: &mut Setup, shape: &Shape) -> Result<serde_json::Value, BoxError> {
    setup.counter += 1;
    let schema = format!("durably_bench_{}_{}", std::process::id(), setup.counter);
    let mut probe = ServerProbe::connect(&setup.url).await;
    let producer_app = ServerProbe::app_name(&format!("{}-enqueue", setup.counter));
    let worker_app = ServerProbe::app_name(&format!("{}-worker", setup.counter));
    let producer = store(
        &with_app_name(&setup.url, &producer_app),
        &schema,
        4,
        &setup.synchronous,
    )?;
    let enqueue_s = super::enqueue_on(Arc::new(producer), shape).await?;
    let before = match &mut probe {
        Some(probe) => probe.read_after_close(&producer_app).await,
        None => None,
    };
    let worker = store(
        &with_app_name(&setup.url, &worker_app),
        &schema,
        shape.concurrency + 4,
        &setup.synchronous,
    )?;
    let counters = worker.clone();
    let mut line = throughput_on(
        Arc::new(worker),
        "postgres",
        Some(&move || counters.stats()),
        shape,
        Enqueue::Done { enqueue_s },
    )
    .await?;
    if let (Some(probe), Some(before)) = (&mut probe, before)
        && let Some(after) = probe.read_after_close(&worker_app).await
        && let Some(fields) = probe.fields(before, after, shape.jobs)
    {
        add_fields(&mut line, fields);
    }
    store(&setup.url, &schema, 1, &setup.synchronous)?
        .drop_schema()
        .await?;
    Ok(line)
}

async fn latency(setup: &mut Setup, calls: u64) -> Result<serde_json::Value, BoxError> {
    let store = setup.fresh_store(4)?;
    // Let the LISTEN connection come up before the first trigger.
    let line = latency_on(
        Arc::new(store.clone()),
        "postgres",
        calls,
        Duration::from_millis(100),
    )
    .await?;
    store.drop_schema().await?;
    Ok(line)
}

/// Kills the worker processes if the benchmark bails out early.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

async fn multi_worker(
    setup: &mut Setup,
    jobs: u64,
    local_queue: Option<usize>,
) -> Result<serde_json::Value, BoxError> {
    reset_peak_rss();
    setup.counter += 1;
    let schema = format!("durably_bench_{}_{}", std::process::id(), setup.counter);
    let parent_store = store(&setup.url, &schema, 4, &setup.synchronous)?;
    let parent = Durably::builder().store(parent_store.clone()).build()?;
    let handle = parent.register(bench_job("bench".into(), 1, Arc::new(AtomicU64::new(0))))?;
    parent.migrate().await?;
    let enqueue_started = Instant::now();
    for chunk_start in (0..jobs).step_by(1000) {
        let items = (chunk_start..(chunk_start + 1000).min(jobs))
            .map(|n| (BenchInput { n }, TriggerOptions::new()));
        handle.batch_trigger(items).await?;
    }
    let enqueue_s = enqueue_started.elapsed().as_secs_f64();

    let dir = tempfile::tempdir()?;
    let go = dir.path().join("go");
    let exe = std::env::current_exe()?;
    let mut children = Children(Vec::with_capacity(WORKERS));
    for _ in 0..WORKERS {
        let mut command = Command::new(&exe);
        command
            .args(["bench", "--backend", "postgres", "--db", &setup.url])
            .env(ENV_CHILD_SCHEMA, &schema)
            .env(ENV_CHILD_GO, &go)
            .env(ENV_CHILD_SYNC, &setup.synchronous)
            .stdout(Stdio::piped());
        match local_queue {
            Some(runs) => command.env(ENV_CHILD_LOCAL_QUEUE, runs.to_string()),
            None => command.env_remove(ENV_CHILD_LOCAL_QUEUE),
        };
        children.0.push(command.spawn()?);
    }
    // Each worker prints `ready` once it is connected, then waits for the go file.
    let mut outputs = Vec::with_capacity(WORKERS);
    for child in &mut children.0 {
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::task::spawn_blocking(move || {
            let first = lines.next();
            (first, lines)
        })
        .await?;
        match ready.0 {
            Some(Ok(line)) if line == "ready" => outputs.push(ready.1),
            other => return Err(format!("worker did not start: {other:?}").into()),
        }
    }
    let started = epoch_micros();
    std::fs::write(&go, b"go")?;
    let mut executions = 0u64;
    let mut last_completed = started;
    for lines in outputs {
        let summary = tokio::task::spawn_blocking(move || lines.last())
            .await?
            .ok_or("worker printed no summary")??;
        let value: serde_json::Value = serde_json::from_str(&summary)?;
        executions += value["executions"].as_u64().ok_or("worker summary")?;
        let last = value["last_completed_us"]
            .as_u64()
            .ok_or("worker summary")?;
        last_completed = last_completed.max(last);
    }
    let process_s = (last_completed - started) as f64 / 1e6;
    for child in &mut children.0 {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("a worker process failed: {status}").into());
        }
    }
    let completed = parent
        .get_runs(&RunFilter::new().status(RunStatus::Completed))
        .await?;
    if completed.len() as u64 != jobs {
        return Err(format!("{} of {jobs} runs completed", completed.len()).into());
    }
    let durations: Vec<f64> = completed
        .iter()
        .filter_map(|run| {
            let (start, end) = (run.started_at?, run.completed_at?);
            Some(end.millis_since(start) as f64)
        })
        .collect();
    let (p50, p99) = percentiles(durations);
    parent_store.drop_schema().await?;
    Ok(json!({
        "workload": "multi-worker",
        "backend": "postgres",
        "concurrency": 1,
        "workers": WORKERS,
        "local_queue": local_queue,
        "jobs": jobs,
        "steps_per_job": 1,
        "enqueue_s": round(enqueue_s),
        "process_s": round(process_s),
        "jobs_per_s": round(jobs as f64 / process_s),
        "steps_per_s": round(jobs as f64 / process_s),
        "p50_ms": p50,
        "p99_ms": p99,
        "peak_rss_mb": peak_rss_mb(),
        "duplicate_step_execs": executions.saturating_sub(jobs),
        "step_execs": executions,
    }))
}

/// A `multi-worker` process: one worker with concurrency 1 on `schema` (and `local_queue`
/// runs in progress, if given); starts when the go file appears, stops when no run is pending
/// or leased, prints its step executions.
async fn child(
    url: &str,
    schema: &str,
    synchronous: &str,
    local_queue: Option<usize>,
) -> Result<(), BoxError> {
    let go = PathBuf::from(std::env::var(ENV_CHILD_GO)?);
    // A local queue's writes go out in up to two batches at once (plus the claim loop's reads).
    let connections = if local_queue.is_some() { 3 } else { 2 };
    let durably = Durably::builder()
        .store(store(url, schema, connections, synchronous)?)
        .max_concurrent_runs(1)
        .tuning(Tuning::new().local_queue(local_queue))
        .polling_interval(Duration::from_millis(50))
        .build()?;
    let executions = Arc::new(AtomicU64::new(0));
    durably.register(bench_job("bench".into(), 1, executions.clone()))?;
    let last_completed = Arc::new(AtomicU64::new(0));
    let _listener = {
        let last_completed = last_completed.clone();
        durably.on(EventType::RunComplete, move |_| {
            last_completed.fetch_max(epoch_micros(), Ordering::SeqCst);
        })
    };
    durably.migrate().await?;
    println!("ready");
    while !Path::new(&go).exists() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    durably.start();
    let active = RunFilter::new()
        .status(RunStatus::Pending)
        .status(RunStatus::Leased)
        .limit(1);
    // Ask the database only after a quiet interval: while this worker keeps executing, runs
    // remain, and the list query (a sort of the pending runs) would cost the server more than
    // the runs themselves.
    let mut seen = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = executions.load(Ordering::SeqCst);
        if std::mem::replace(&mut seen, now) == now && durably.get_runs(&active).await?.is_empty() {
            break;
        }
    }
    durably.stop().await;
    println!(
        "{}",
        json!({
            "executions": executions.load(Ordering::SeqCst),
            "last_completed_us": last_completed.load(Ordering::SeqCst),
        })
    );
    Ok(())
}

/// Microseconds since the Unix epoch: the clock the processes of `multi-worker` share.
fn epoch_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}
