//! `durably bench`: throughput and latency on a fresh database, one JSON line per workload.
//!
//! Workloads (issue "The worker…", §7):
//! - `throughput-1step`: batch-trigger N one-step jobs, then process until all complete;
//! - `steps-10`: M jobs of 10 steps;
//! - `keyed-1step`: N one-step jobs sharing `--keys` concurrency keys round-robin (at most one
//!   leased run per key, so at most that many run at once; one pending run per job name and key,
//!   so the runs spread over N / keys job names): the claim path of keyed runs;
//! - `latency`: sequential trigger-and-wait calls on an idle worker (p50/p99 call → result);
//! - `http-during-drain` (only when named): latency of `GET /runs?limit=10` over loopback HTTP
//!   while the worker drains a backlog (see [`http_drain`]);
//! - `fanout-children` (only when named): one parent invokes `--children` child runs and
//!   waits for them without a slot: parent start to completion (see [`children`]);
//! - `sleep` (only when named): `--runs` runs each sleeping `--sleep-ms` durably, all
//!   triggered at once: wake-up lateness and resumed runs/s (see [`sleep`]);
//! - `multi-worker` (`--backend postgres` only): 4 worker processes, each with concurrency 1 on
//!   a current-thread runtime, drain `--jobs` one-step jobs from one database (see [`postgres`]);
//!   with `--local-queue RUNS`, each keeps that many runs in progress.
//!
//! For the throughput workloads `p50_ms`/`p99_ms` are per-run execution times (claim → complete).
//! `peak_rss_mb` is the process's peak resident set during the workload (reset before each).
//! On PostgreSQL the throughput workloads also give the server's own counts per job during the
//! drain (`server_commits_per_job`, `wal_syncs_per_job`, `wal_bytes_per_job`, …; database-
//! and server-wide, so other activity on the server counts too; see [`server_stats`]).

mod children;
mod http_drain;
mod libsql;
mod postgres;
mod server_stats;
mod sleep;
pub mod traces;
mod waits;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use durably::{
    Durably, EventKind, EventType, Job, JobHandle, SqliteOptions, SqliteStore, StepContext, Store,
    Synchronous, TriggerOptions, Tuning, WaitOptions, store::WriterStats,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

/// Options of `durably bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Storage backend: `sqlite` (a fresh file per workload), `postgres` (a fresh schema per
    /// workload in the database given by `--db`, plus the `multi-worker` workload) or `libsql`
    /// (the remote libSQL database given by `--db`, which must hold no durably tables: emptied
    /// after each workload).
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// The database URL for `--backend postgres` (e.g. `postgres://postgres@127.0.0.1/bench`)
    /// or `--backend libsql` (e.g. `libsql://bench-me.turso.io`, `http://127.0.0.1:8080`).
    #[arg(long)]
    db: Option<String>,
    /// `--backend libsql` only: the auth token; default: the environment variable
    /// `LIBSQL_AUTH_TOKEN`.
    #[arg(long, value_name = "TOKEN")]
    auth_token: Option<String>,
    /// SQLite `synchronous` mode: `normal` (default) or `full`.
    #[arg(long, default_value = "normal")]
    synchronous: String,
    /// Workloads to run (default: all but `waits`, `sleep`, `fanout-children` and
    /// `http-during-drain`, which run only when named). Repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    workload: Vec<String>,
    /// Worker concurrency levels for the throughput workloads.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    concurrency: Vec<usize>,
    /// Jobs of `throughput-1step`.
    #[arg(long, default_value_t = 2000)]
    jobs: u64,
    /// Jobs of `steps-10` (and runs of `waits`: each suspends on a durable wait, then is
    /// signalled and resumes).
    #[arg(long, default_value_t = 300)]
    step_jobs: u64,
    /// Runs of `sleep` (each sleeps durably for `--sleep-ms`).
    #[arg(long, default_value_t = 10_000)]
    runs: u64,
    /// Child runs of `fanout-children`.
    #[arg(long, default_value_t = 1000)]
    children: u64,
    /// How long each run of `sleep` sleeps, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    sleep_ms: u64,
    /// Concurrency keys of `keyed-1step` (its jobs: `--jobs`).
    #[arg(long, default_value_t = 8)]
    keys: u64,
    /// Calls of `latency`.
    #[arg(long, default_value_t = 200)]
    calls: u64,
    /// Backlog drained by `http-during-drain`.
    #[arg(long, default_value_t = 20_000)]
    drain_jobs: u64,
    /// Directory for the fresh databases (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Record the engine's metrics while measuring: an OpenTelemetry SDK meter provider (with
    /// the Prometheus reader of `durably demo --metrics`) installed as the global provider, to
    /// measure what recording costs. Without it the instruments are OpenTelemetry's no-op ones.
    #[arg(long)]
    metrics: bool,
    /// Trace while measuring: durably's spans become OpenTelemetry spans (an SDK tracer
    /// provider, its batch span processor, an exporter that discards them), to measure what
    /// tracing costs. Without it, durably's `tracing` spans reach no subscriber that records
    /// them.
    #[arg(long)]
    traces: bool,
    /// The throughput workloads' local queue (`Tuning::local_queue`): runs each worker keeps in
    /// progress, of which `--concurrency` execute job code at once. Default: none (each run in
    /// its slot, as upstream's `maxConcurrentRuns`).
    #[arg(long, value_name = "RUNS")]
    local_queue: Option<usize>,
}

impl BenchArgs {
    /// Whether `--traces` was given (the subscriber is set up before the runtime starts).
    pub fn traces(&self) -> bool {
        self.traces
    }
}

#[derive(Serialize, Deserialize)]
struct BenchInput {
    n: u64,
}

struct Setup {
    synchronous: Synchronous,
    dir: PathBuf,
    counter: u64,
}

impl Setup {
    fn fresh_store(&mut self) -> durably::Result<SqliteStore> {
        self.counter += 1;
        let path = self.dir.join(format!(
            "bench-{}-{}.sqlite",
            std::process::id(),
            self.counter
        ));
        SqliteStore::open_with(path, SqliteOptions::default().synchronous(self.synchronous))
    }
}

/// Whether this process is one of the `multi-worker` workload's worker processes. Each runs
/// on a current-thread runtime: one worker with concurrency 1 has no use for a second thread,
/// and on the 2-core reference machine the four processes' threads waking each other across
/// cores cost 7 % of the workload's throughput (3,609 against 3,867 jobs/s, mean of 7
/// interleaved pairs).
pub fn is_worker_process() -> bool {
    postgres::is_worker_process()
}

pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.traces {
        run_metered(&args).await?;
        eprintln!("traces: {} spans exported", traces::flush());
        return Ok(());
    }
    run_metered(&args).await
}

/// Runs the workloads, recording metrics with `--metrics`.
async fn run_metered(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !args.metrics {
        return run_workloads(args).await;
    }
    // Every instance built from now on records on it (`Metrics` reads the global provider at
    // `build()`).
    let metrics = durably::http::PrometheusMetrics::new()?;
    opentelemetry::global::set_meter_provider(metrics.meter_provider().clone());
    run_workloads(args).await?;
    let completed: f64 = metrics
        .render()?
        .lines()
        .filter(|line| line.starts_with("durably_runs_completed_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("metrics: {completed} run completions recorded");
    Ok(())
}

async fn run_workloads(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    match args.backend.as_str() {
        "sqlite" => {}
        "postgres" => return postgres::run(args).await,
        "libsql" => return libsql::run(args).await,
        other => {
            return Err(
                format!("unknown backend '{other}': use sqlite, postgres or libsql").into(),
            );
        }
    }
    let synchronous: Synchronous = args.synchronous.parse()?;
    let temp = tempfile::tempdir()?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let mut setup = Setup {
        synchronous,
        dir,
        counter: 0,
    };
    let wanted = |name: &str| args.workload.is_empty() || args.workload.iter().any(|w| w == name);
    for shape in Shape::all(args) {
        if wanted(shape.workload) {
            let line = throughput(&mut setup, &shape).await?;
            print_line(line, &args.synchronous);
        }
    }
    if wanted("latency") {
        let line = latency(&mut setup, args.calls).await?;
        print_line(line, &args.synchronous);
    }
    if args.workload.iter().any(|w| w == "waits") {
        for &concurrency in &args.concurrency {
            let store = setup.fresh_store()?;
            let line =
                waits::waits_on(Arc::new(store), "sqlite", concurrency, args.step_jobs).await?;
            print_line(line, &args.synchronous);
        }
    }
    if args.workload.iter().any(|w| w == "sleep") {
        for &concurrency in &args.concurrency {
            let store = setup.fresh_store()?;
            let line = sleep::sleep_on(
                Arc::new(store),
                "sqlite",
                concurrency,
                args.runs,
                args.sleep_ms,
            )
            .await?;
            print_line(line, &args.synchronous);
        }
    }
    if args.workload.iter().any(|w| w == "fanout-children") {
        for &concurrency in &args.concurrency {
            let store = setup.fresh_store()?;
            let line = children::children_on(Arc::new(store), "sqlite", concurrency, args.children)
                .await?;
            print_line(line, &args.synchronous);
        }
    }
    if args.workload.iter().any(|w| w == "http-during-drain") {
        for &concurrency in &args.concurrency {
            let line = http_drain::run(&mut setup, concurrency, args.drain_jobs).await?;
            print_line(line, &args.synchronous);
        }
    }
    Ok(())
}

fn print_line(mut line: serde_json::Value, synchronous: &str) {
    line["synchronous"] = json!(synchronous);
    println!("{line}");
}

/// What a throughput workload runs.
pub(super) struct Shape {
    pub workload: &'static str,
    pub concurrency: usize,
    pub jobs: u64,
    pub steps_per_job: u64,
    /// Concurrency keys the runs share round-robin (`0`: none). Upstream allows one pending run
    /// per job name and key, so keyed runs spread over `jobs / keys` job names.
    pub keys: u64,
    /// See `--local-queue`.
    pub local_queue: Option<usize>,
}

impl Shape {
    /// The throughput workloads of `args`, in the order they run: `throughput-1step`,
    /// `steps-10` and `keyed-1step`, each at every concurrency level.
    pub fn all(args: &BenchArgs) -> Vec<Shape> {
        let kinds = [
            ("throughput-1step", args.jobs, 1, 0),
            ("steps-10", args.step_jobs, 10, 0),
            ("keyed-1step", args.jobs, 1, args.keys),
        ];
        kinds
            .into_iter()
            .flat_map(|(workload, jobs, steps_per_job, keys)| {
                args.concurrency.iter().map(move |&concurrency| Shape {
                    workload,
                    concurrency,
                    jobs,
                    steps_per_job,
                    keys,
                    local_queue: args.local_queue,
                })
            })
            .collect()
    }
}

fn bench_job(name: String, steps: u64, executions: Arc<AtomicU64>) -> Job<BenchInput, u64> {
    Job::new(name, move |step: StepContext, input: BenchInput| {
        let executions = executions.clone();
        async move {
            let mut total = 0;
            for s in 0..steps {
                let executions = executions.clone();
                total += step
                    .run(&format!("step-{s}"), |_| async move {
                        executions.fetch_add(1, Ordering::Relaxed);
                        Ok(s)
                    })
                    .await?;
            }
            Ok(input.n + total)
        }
    })
}

async fn throughput(
    setup: &mut Setup,
    shape: &Shape,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let store = setup.fresh_store()?;
    let counters = store.clone();
    throughput_on(
        Arc::new(store),
        "sqlite",
        Some(&move || counters.stats()),
        shape,
        Enqueue::Here,
    )
    .await
}

/// Where a throughput workload's runs come from.
pub(super) enum Enqueue {
    /// Triggered by the workload's own instance, before it starts.
    Here,
    /// Already triggered by [`enqueue_on`] (another instance on the same database), which took
    /// this long.
    Done { enqueue_s: f64 },
}

/// The job names of a workload: keyless runs are all of one job; keyed runs spread over
/// `jobs / keys` job names (upstream allows one pending run per job name and key).
fn job_names(shape: &Shape) -> Vec<String> {
    match shape.keys {
        0 => vec!["bench".into()],
        keys => (0..shape.jobs.div_ceil(keys))
            .map(|j| format!("bench-{j}"))
            .collect(),
    }
}

/// Triggers the runs of `shape` through `handles` (of [`job_names`]): keyless in batches of
/// 1,000 of the one job; keyed: run n is job n / keys with key n % keys.
async fn trigger_all(handles: &[JobHandle<BenchInput, u64>], shape: &Shape) -> durably::Result<()> {
    let (jobs, keys) = (shape.jobs, shape.keys);
    let chunk = if keys == 0 { 1000 } else { keys };
    for (chunk_start, handle) in (0..jobs)
        .step_by(chunk as usize)
        .zip(handles.iter().cycle())
    {
        let items = (chunk_start..(chunk_start + chunk).min(jobs)).map(|n| {
            let options = match keys {
                0 => TriggerOptions::new(),
                _ => TriggerOptions::new().concurrency_key(format!("key-{}", n % keys)),
            };
            (BenchInput { n }, options)
        });
        handle.batch_trigger(items).await?;
    }
    Ok(())
}

/// Migrates `store` and triggers the runs of `shape` with an instance of its own (which never
/// starts), for a workload that drains them with another instance: [`Enqueue::Done`].
/// Returns how long triggering took.
pub(super) async fn enqueue_on(store: Arc<dyn Store>, shape: &Shape) -> durably::Result<f64> {
    let producer = Durably::builder().shared_store(store).build()?;
    let unused = Arc::new(AtomicU64::new(0));
    let handles = job_names(shape)
        .into_iter()
        .map(|name| producer.register(bench_job(name, shape.steps_per_job, unused.clone())))
        .collect::<durably::Result<Vec<_>>>()?;
    producer.migrate().await?;
    let started = Instant::now();
    trigger_all(&handles, shape).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// A throughput workload on any store: batch-trigger `jobs` runs of `steps_per_job` steps
/// (unless `enqueue` says they are), then process them all with `concurrency` slots. With
/// `stats`, the line also says how well group commit batched (`commits_per_job`,
/// `writes_per_commit`).
pub(super) async fn throughput_on(
    store: Arc<dyn Store>,
    backend: &str,
    stats: Option<&dyn Fn() -> WriterStats>,
    shape: &Shape,
    enqueue: Enqueue,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let Shape {
        workload,
        concurrency,
        jobs,
        steps_per_job,
        keys,
        local_queue,
    } = *shape;
    reset_peak_rss();
    let durably = Durably::builder()
        .shared_store(store)
        .max_concurrent_runs(concurrency)
        .tuning(Tuning::new().local_queue(local_queue))
        .polling_interval(Duration::from_millis(50))
        .build()?;
    let executions = Arc::new(AtomicU64::new(0));
    let handles = job_names(shape)
        .into_iter()
        .map(|name| durably.register(bench_job(name, steps_per_job, executions.clone())))
        .collect::<durably::Result<Vec<_>>>()?;
    durably.migrate().await?;

    let completed = Arc::new(AtomicU64::new(0));
    let all_done = Arc::new(Notify::new());
    let durations = Arc::new(std::sync::Mutex::new(Vec::with_capacity(jobs as usize)));
    let _listener = {
        let (completed, all_done, durations) =
            (completed.clone(), all_done.clone(), durations.clone());
        durably.on(EventType::RunComplete, move |event| {
            if let EventKind::RunComplete { duration, .. } = &event.kind
                && let Ok(mut durations) = durations.lock()
            {
                durations.push(*duration);
            }
            if completed.fetch_add(1, Ordering::SeqCst) + 1 == jobs {
                all_done.notify_one();
            }
        })
    };

    let enqueue_s = match enqueue {
        Enqueue::Here => {
            let enqueue_started = Instant::now();
            trigger_all(&handles, shape).await?;
            enqueue_started.elapsed().as_secs_f64()
        }
        Enqueue::Done { enqueue_s } => enqueue_s,
    };

    let before = stats.map(|stats| stats());
    let process_started = Instant::now();
    durably.start();
    if jobs > 0 {
        tokio::time::timeout(Duration::from_secs(600), all_done.notified())
            .await
            .map_err(|_| "benchmark did not finish within 10 minutes")?;
    }
    let process_s = process_started.elapsed().as_secs_f64();
    durably.stop().await;

    let expected = jobs * steps_per_job;
    let executed = executions.load(Ordering::SeqCst);
    let durations = durations.lock().map(|d| d.clone()).unwrap_or_default();
    let (p50, p99) = percentiles(durations.into_iter().map(|d| d as f64).collect());
    let mut line = json!({
        "workload": workload,
        "backend": backend,
        "concurrency": concurrency,
        "jobs": jobs,
        "steps_per_job": steps_per_job,
        "keys": keys,
        "local_queue": local_queue,
        "enqueue_s": round(enqueue_s),
        "process_s": round(process_s),
        "jobs_per_s": round(jobs as f64 / process_s),
        "steps_per_s": round(expected as f64 / process_s),
        "p50_ms": p50,
        "p99_ms": p99,
        "peak_rss_mb": peak_rss_mb(),
        "duplicate_step_execs": executed.saturating_sub(expected),
    });
    if let (Some(stats), Some(before)) = (stats, before) {
        add_commit_stats(&mut line, before, stats(), jobs);
    }
    Ok(line)
}

/// Adds how well group commit batched: `commits_per_job` and `writes_per_commit`.
fn add_commit_stats(
    line: &mut serde_json::Value,
    before: WriterStats,
    after: WriterStats,
    jobs: u64,
) {
    let commits = after.transactions - before.transactions;
    let operations = after.operations - before.operations;
    line["commits_per_job"] = json!(round(commits as f64 / jobs.max(1) as f64));
    line["writes_per_commit"] = json!(round(operations as f64 / commits.max(1) as f64));
}

async fn latency(
    setup: &mut Setup,
    calls: u64,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let store = setup.fresh_store()?;
    let before = store.stats();
    let mut line = latency_on(Arc::new(store.clone()), "sqlite", calls, Duration::ZERO).await?;
    add_commit_stats(&mut line, before, store.stats(), calls);
    Ok(line)
}

/// Sequential trigger-and-wait calls on an idle worker of any store; p50/p99 from call to
/// result. `settle` is waited after start (e.g. for a LISTEN connection to come up).
pub(super) async fn latency_on(
    store: Arc<dyn Store>,
    backend: &str,
    calls: u64,
    settle: Duration,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    reset_peak_rss();
    // The trigger wakes the worker at once (in process, and through NOTIFY); the poll is a fallback.
    let durably = Durably::builder()
        .shared_store(store)
        .polling_interval(Duration::from_millis(1000))
        .build()?;
    let executions = Arc::new(AtomicU64::new(0));
    let handle = durably.register(bench_job("bench".into(), 1, executions.clone()))?;
    durably.init().await?;
    tokio::time::sleep(settle).await;
    let mut samples = Vec::with_capacity(calls as usize);
    let started = Instant::now();
    for n in 0..calls {
        let call = Instant::now();
        handle
            .trigger_and_wait(
                BenchInput { n },
                TriggerOptions::new(),
                WaitOptions::new().timeout(Duration::from_secs(30)),
            )
            .await?;
        samples.push(call.elapsed().as_secs_f64() * 1000.0);
    }
    let process_s = started.elapsed().as_secs_f64();
    durably.stop().await;
    let (p50, p99) = percentiles(samples);
    Ok(json!({
        "workload": "latency",
        "backend": backend,
        "concurrency": 1,
        "jobs": calls,
        "steps_per_job": 1,
        "enqueue_s": 0.0,
        "process_s": round(process_s),
        "jobs_per_s": round(calls as f64 / process_s),
        "steps_per_s": round(calls as f64 / process_s),
        "p50_ms": p50,
        "p99_ms": p99,
        "peak_rss_mb": peak_rss_mb(),
        "duplicate_step_execs": executions.load(Ordering::SeqCst).saturating_sub(calls),
    }))
}

/// Counts events of one type and wakes a benchmark when `target` were seen.
struct Counter {
    /// The benchmark, for the timeout's message.
    bench: &'static str,
    seen: AtomicU64,
    target: u64,
    done: Notify,
}

impl Counter {
    fn new(bench: &'static str, target: u64) -> Arc<Self> {
        Arc::new(Counter {
            bench,
            seen: AtomicU64::new(0),
            target,
            done: Notify::new(),
        })
    }

    fn add(&self) {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.target {
            self.done.notify_one();
        }
    }

    /// Waits until `target` were seen, at most 30 minutes.
    async fn reached(&self, what: &str) -> Result<(), Box<dyn std::error::Error>> {
        if self.target == 0 || self.seen.load(Ordering::SeqCst) >= self.target {
            return Ok(());
        }
        tokio::time::timeout(Duration::from_secs(1800), self.done.notified())
            .await
            .map_err(|_| {
                format!(
                    "{} benchmark: {what} did not finish within 30 minutes",
                    self.bench
                )
                .into()
            })
    }
}

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (round(at(0.50)), round(at(0.99)))
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Resets the kernel's peak-RSS counter (`VmHWM`) so each workload reports its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .unwrap_or(0.0);
    round(kib / 1024.0)
}
