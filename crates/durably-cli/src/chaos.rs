//! `durably chaos`: real worker processes SIGKILLed and SIGSTOPped at random (seeded) moments
//! while they drain runs from one database, then the invariants checked from an fsynced
//! execution log (see [`check`]).
//!
//! The harness triggers runs of the `chaos` job (each `--steps` steps; step k of run n returns
//! `n × 1000 + k²`, the run the sum), starts `--workers` worker processes (this binary
//! re-executed as the hidden `durably chaos-worker`, each running `--concurrency` runs at
//! once), and then, every `--min-gap-ms`..`--max-gap-ms` (uniform), picks one running worker
//! and either kills it (SIGKILL; it is reaped and a new worker process takes its place at once)
//! or stops it (SIGSTOP, continued by SIGCONT after a random time: half the stops stay well
//! within the lease, half last from one lease to `--max-stop-ms`, 3 leases by default). It
//! keeps enough runs queued for every worker until `--kills` kills and `--stops` stops are
//! spent, then lets the runs drain, waits a lease more (a late execution would show), kills the
//! workers and checks. Before each signal it reads every run's completed step count and status
//! and notes the log's length, so the checker knows which steps were persisted before it.
//!
//! Stops are bounded because a stopped process keeps its locks: on SQLite one stopped inside a
//! write transaction blocks every other writer (SQLite cannot take a lock away; the workers'
//! busy timeout is 10 s); on PostgreSQL one stopped inside a transaction keeps its row locks.
//! The harness's own reads never wait for a writer (SQLite WAL readers, PostgreSQL MVCC), and
//! it triggers more runs only while no worker is stopped.
//!
//! The seed fixes the sequence of choices (gaps, kill or stop, target, stop length); the
//! interleaving with the workers comes from the operating system, so a seed reproduces the
//! schedule, not the exact execution.
//!
//! Every worker process is in its own process group with the harness holding its stdin: if the
//! harness fails, its guard continues, kills and reaps them all; if the harness itself is
//! killed, running workers see their stdin end and exit, and stopped ones, in a process group
//! orphaned by the harness's death, get SIGHUP and SIGCONT from the kernel and die.

mod check;
mod worker;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use durably::{Durably, JobHandle, RunFilter, RunStatus, TriggerOptions};
use rustix::process::{Pid, Signal as Sig, kill_process};
use serde_json::json;

use crate::exit::{self, CliError};
use worker::{ChaosInput, ExecutionLog, chaos_job, expected_output};
pub use worker::{WorkerArgs, run as worker};

type BoxError = Box<dyn std::error::Error>;

/// Options of `durably chaos`.
#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// Storage backend: `sqlite` or `postgres`.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// SQLite: a file that does not exist yet (default: chaos.sqlite in --dir). PostgreSQL
    /// (required): a URL; the chaos runs in a fresh schema, dropped afterwards unless a
    /// violation was found.
    #[arg(long, value_name = "PATH|URL")]
    db: Option<String>,
    /// Seed of the schedule (default: from the clock; printed in the summary).
    #[arg(long)]
    seed: Option<u64>,
    /// Runs triggered at the start; more are triggered while the chaos lasts, whenever fewer
    /// than 2 × workers × concurrency are waiting or executing.
    #[arg(long, default_value_t = 20)]
    runs: u64,
    /// SIGKILLs to send.
    #[arg(long, default_value_t = 30)]
    kills: u32,
    /// SIGSTOPs to send (each continued later).
    #[arg(long, default_value_t = 30)]
    stops: u32,
    /// Worker processes at once.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Runs each worker executes at once (`max_concurrent_runs`).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Steps per run.
    #[arg(long, default_value_t = 5)]
    steps: u32,
    /// Mean time a step works (each step takes 0 to twice this, the same on every execution).
    #[arg(long, default_value_t = 20)]
    step_ms: u64,
    /// The workers' lease.
    #[arg(long, default_value_t = 1_000)]
    lease_ms: u64,
    /// The workers' lease renewal interval.
    #[arg(long, default_value_t = 200)]
    renew_ms: u64,
    /// Shortest time between two signals.
    #[arg(long, default_value_t = 50)]
    min_gap_ms: u64,
    /// Longest time between two signals.
    #[arg(long, default_value_t = 400)]
    max_gap_ms: u64,
    /// Longest stop (default: 3 × the lease).
    #[arg(long)]
    max_stop_ms: Option<u64>,
    /// Directory for the execution log, the workers' stderr and the SQLite file (default: a
    /// temporary directory, kept when a violation was found).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Give up (a violation) when the runs have not drained this long after the start.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Self-test of the checker: the workers' job also records an execution of step 1 each
    /// time the job starts, outside `step.run`, as a job with a non-durable side effect would;
    /// a run taken over after its step 1 was persisted must then be reported.
    #[arg(long, hide = true)]
    sabotage: bool,
}

/// How a stop is drawn: half short (10 ms up to `lease − renew − 150 ms`), half long (one
/// lease up to `max_stop`).
struct StopLengths {
    short: (u64, u64),
    long: (u64, u64),
    /// A stop at least this long may have outlasted the lease: the last renewal before it was
    /// at most one renewal interval earlier, and 100 ms is left for the renewal's own latency.
    long_from: Duration,
}

/// One worker process.
struct Worker {
    child: Child,
    incarnation: u64,
    /// Set once the process printed `ready` (its worker has started).
    ready: Arc<AtomicBool>,
    /// While stopped: since when, until when, and the index of its [`check::Signal`].
    stopped: Option<(Instant, Instant, usize)>,
}

impl Worker {
    fn signal(&self, signal: Sig) -> std::io::Result<()> {
        kill_process(Pid::from_child(&self.child), signal).map_err(std::io::Error::from)
    }
}

/// What the worker processes are started with.
struct Spawn {
    exe: PathBuf,
    args: Vec<String>,
    stderr: std::fs::File,
}

/// The worker processes. Dropped (at the end, on any error or on a panic), it continues,
/// kills and reaps every one of them.
struct Fleet {
    workers: Vec<Worker>,
    spawn: Spawn,
    incarnations: u64,
}

impl Fleet {
    fn spawn(&mut self) -> Result<Worker, BoxError> {
        let incarnation = self.incarnations;
        self.incarnations += 1;
        let mut child = Command::new(&self.spawn.exe)
            .arg("chaos-worker")
            .args(&self.spawn.args)
            .args(["--incarnation", &incarnation.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(self.spawn.stderr.try_clone()?)
            .env("NO_COLOR", "1")
            .process_group(0)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_ok_and(|line| line == "ready") {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        });
        Ok(Worker {
            child,
            incarnation,
            ready,
            stopped: None,
        })
    }

    fn any_stopped(&self) -> bool {
        self.workers.iter().any(|w| w.stopped.is_some())
    }

    /// Kills worker `index` (SIGKILL), reaps it and starts its successor.
    fn kill(&mut self, index: usize) -> Result<(), BoxError> {
        let old = &mut self.workers[index];
        old.signal(Sig::KILL)?;
        old.child.wait()?;
        self.workers[index] = self.spawn()?;
        Ok(())
    }

    /// Continues the workers whose stop is over; records how long each was stopped.
    fn continue_due(
        &mut self,
        signals: &mut [check::Signal],
        long_from: Duration,
    ) -> Result<(), BoxError> {
        let now = Instant::now();
        for worker in &mut self.workers {
            if let Some((since, until, index)) = worker.stopped
                && now >= until
            {
                worker.signal(Sig::CONT)?;
                let stopped = since.elapsed();
                worker.stopped = None;
                signals[index].stopped_ms = stopped.as_millis() as u64;
                signals[index].long = stopped >= long_from;
            }
        }
        Ok(())
    }

    /// Workers that exited on their own (none should): each a violation, replaced.
    fn replace_exited(&mut self, violations: &mut Vec<String>) -> Result<(), BoxError> {
        for index in 0..self.workers.len() {
            if let Some(status) = self.workers[index].child.try_wait()? {
                violations.push(format!(
                    "worker incarnation {} exited on its own ({status}); see workers.stderr",
                    self.workers[index].incarnation
                ));
                self.workers[index] = self.spawn()?;
            }
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.signal(Sig::CONT);
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// The harness's view of the database.
struct Harness {
    durably: Durably,
    job: JobHandle<ChaosInput, u64>,
    log: PathBuf,
    steps: u32,
    observed: check::Observed,
    triggered: u64,
}

impl Harness {
    /// Reads every run, then the log's length, and records which steps were persisted before
    /// that offset. Returns (runs not terminal, log offset).
    async fn observe(&mut self) -> Result<(usize, u64), BoxError> {
        let runs = tokio::time::timeout(
            Duration::from_secs(60),
            self.durably.get_runs(&RunFilter::new()),
        )
        .await
        .map_err(|_| "reading the runs took more than 60 s")??;
        let offset = self.log_len()?;
        let mut active = 0;
        for run in &runs {
            let completed = run.status == RunStatus::Completed;
            self.observed.record(
                &run.id,
                run.completed_step_count,
                completed,
                self.steps,
                offset,
            );
            active += usize::from(!run.is_terminal());
        }
        Ok((active, offset))
    }

    fn log_len(&self) -> std::io::Result<u64> {
        Ok(std::fs::metadata(&self.log)?.len())
    }

    async fn trigger(&mut self, count: u64) -> Result<(), BoxError> {
        let steps = self.steps;
        let first = self.triggered;
        self.job
            .batch_trigger(
                (first..first + count).map(|n| (ChaosInput { n, steps }, TriggerOptions::new())),
            )
            .await?;
        self.triggered += count;
        Ok(())
    }
}

fn uniform(rng: &mut fastrand::Rng, (low, high): (u64, u64)) -> u64 {
    rng.u64(low..=high.max(low))
}

/// `durably chaos`: prints one JSON summary line; exit code 1 when an invariant broke.
pub async fn run(args: ChaosArgs) -> Result<u8, CliError> {
    let usage = |message: &str| Err(CliError::usage(message));
    if args.backend != "sqlite" && args.backend != "postgres" {
        return usage("--backend must be sqlite or postgres");
    }
    if args.workers == 0 || args.concurrency == 0 || args.steps == 0 {
        return usage("--workers, --concurrency and --steps must be at least 1");
    }
    if args.renew_ms == 0 || args.renew_ms >= args.lease_ms {
        return usage("--renew-ms must be above 0 and below --lease-ms");
    }
    if args.min_gap_ms > args.max_gap_ms {
        return usage("--min-gap-ms must not exceed --max-gap-ms");
    }
    let postgres_url = match (args.backend.as_str(), &args.db) {
        ("postgres", Some(url)) => Some(url.clone()),
        ("postgres", None) => return usage("--backend postgres needs --db postgres://…"),
        _ => None,
    };
    chaos(args, postgres_url).await.map_err(CliError::from)
}

async fn chaos(args: ChaosArgs, postgres_url: Option<String>) -> Result<u8, BoxError> {
    let started = Instant::now();
    let epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let seed = args.seed.unwrap_or(epoch_ms);
    let mut rng = fastrand::Rng::with_seed(seed);

    let temp = match &args.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("durably-chaos-")
                .tempdir()?,
        ),
    };
    let dir = match (&args.dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => unreachable!("a temporary directory is made without --dir"),
    };
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("executions.log");
    // A fresh log: the checker reads every line of it.
    std::fs::File::create_new(&log)
        .map_err(|e| format!("cannot create {}: {e} (give an empty --dir)", log.display()))?;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("workers.stderr"))?;

    let (db, schema) = match &postgres_url {
        Some(url) => (
            url.clone(),
            Some(format!("durably_chaos_{}_{epoch_ms}", std::process::id())),
        ),
        None => {
            let path = args
                .db
                .clone()
                .unwrap_or_else(|| dir.join("chaos.sqlite").display().to_string());
            if Path::new(&path).exists() {
                return Err(format!("{path} exists: give a SQLite file that does not").into());
            }
            (path, None)
        }
    };
    let durably = worker::builder(&args.backend, &db, schema.as_deref(), 4)?.build()?;
    // The harness never executes a run: its copy of the job only lets it trigger runs.
    let job = durably.register(chaos_job(
        Arc::new(ExecutionLog::open(&log, u64::MAX)?),
        args.step_ms,
        false,
    ))?;
    durably.migrate().await?;
    let mut harness = Harness {
        durably,
        job,
        log: log.clone(),
        steps: args.steps,
        observed: check::Observed::default(),
        triggered: 0,
    };
    harness.trigger(args.runs).await?;

    let mut spawn_args: Vec<String> = vec![
        "--backend".into(),
        args.backend.clone(),
        "--db".into(),
        db.clone(),
        "--log".into(),
        log.display().to_string(),
        "--lease-ms".into(),
        args.lease_ms.to_string(),
        "--renew-ms".into(),
        args.renew_ms.to_string(),
        "--concurrency".into(),
        args.concurrency.to_string(),
        "--step-ms".into(),
        args.step_ms.to_string(),
    ];
    if let Some(schema) = &schema {
        spawn_args.extend(["--schema".into(), schema.clone()]);
    }
    if args.sabotage {
        spawn_args.push("--sabotage".into());
    }
    let mut fleet = Fleet {
        workers: Vec::new(),
        spawn: Spawn {
            exe: std::env::current_exe()?,
            args: spawn_args,
            stderr,
        },
        incarnations: 0,
    };
    for _ in 0..args.workers {
        let worker = fleet.spawn()?;
        fleet.workers.push(worker);
    }

    let lease = args.lease_ms;
    let lengths = StopLengths {
        short: (10, lease.saturating_sub(args.renew_ms + 150).max(10)),
        long: (lease, args.max_stop_ms.unwrap_or(3 * lease).max(lease)),
        long_from: Duration::from_millis(lease.saturating_sub(args.renew_ms + 100)),
    };
    let deadline = started + Duration::from_secs(args.timeout_s);
    let busy = (args.workers * args.concurrency) as u64;
    let mut violations = Vec::new();
    let mut signals: Vec<check::Signal> = Vec::new();
    let (mut kills_left, mut stops_left) = (args.kills, args.stops);
    let gap = |rng: &mut fastrand::Rng| {
        Duration::from_millis(uniform(rng, (args.min_gap_ms, args.max_gap_ms)))
    };
    let mut next_signal = Instant::now() + gap(&mut rng);
    let mut last_fill = Instant::now();

    // The chaos: until every kill and stop is spent and every stopped worker continued.
    loop {
        if Instant::now() > deadline {
            violations.push(format!(
                "timed out after {} s with {kills_left} kills and {stops_left} stops left",
                args.timeout_s
            ));
            break;
        }
        fleet.replace_exited(&mut violations)?;
        fleet.continue_due(&mut signals, lengths.long_from)?;
        if kills_left + stops_left == 0 {
            if !fleet.any_stopped() {
                break;
            }
        } else if Instant::now() >= next_signal {
            // Every choice is drawn whatever happens next, so the seed fixes the sequence.
            let (pick, kill_draw, short_draw) =
                (rng.u64(..), rng.u32(..kills_left + stops_left), rng.bool());
            let stop_ms = uniform(
                &mut rng,
                if short_draw {
                    lengths.short
                } else {
                    lengths.long
                },
            );
            next_signal = Instant::now() + gap(&mut rng);
            let running: Vec<usize> = (0..fleet.workers.len())
                .filter(|&i| {
                    let worker = &fleet.workers[i];
                    worker.stopped.is_none() && worker.ready.load(Ordering::SeqCst)
                })
                .collect();
            if running.is_empty() {
                next_signal = Instant::now() + Duration::from_millis(20);
            } else {
                let target = running[(pick % running.len() as u64) as usize];
                let (active, offset) = harness.observe().await?;
                let incarnation = fleet.workers[target].incarnation;
                if kill_draw < kills_left {
                    fleet.kill(target)?;
                    kills_left -= 1;
                    signals.push(check::Signal {
                        incarnation,
                        offset,
                        after: harness.log_len()?,
                        kill: true,
                        stopped_ms: 0,
                        long: false,
                    });
                } else {
                    fleet.workers[target].signal(Sig::STOP)?;
                    let now = Instant::now();
                    let until = now + Duration::from_millis(stop_ms);
                    fleet.workers[target].stopped = Some((now, until, signals.len()));
                    stops_left -= 1;
                    signals.push(check::Signal {
                        incarnation,
                        offset,
                        after: harness.log_len()?,
                        kill: false,
                        stopped_ms: stop_ms,
                        long: false,
                    });
                }
                if (active as u64) < 2 * busy && !fleet.any_stopped() {
                    harness.trigger(4 * busy).await?;
                }
                last_fill = Instant::now();
            }
        }
        // Keep every worker busy while the chaos lasts; write only while no worker is stopped
        // (a stopped SQLite writer would hold the lock).
        if kills_left + stops_left > 0
            && !fleet.any_stopped()
            && last_fill.elapsed() >= Duration::from_millis(200)
        {
            let (active, _) = harness.observe().await?;
            if (active as u64) < 2 * busy {
                harness.trigger(4 * busy).await?;
            }
            last_fill = Instant::now();
        }
        let wake = fleet
            .workers
            .iter()
            .filter_map(|w| w.stopped.map(|(_, until, _)| until))
            .chain((kills_left + stops_left > 0).then_some(next_signal))
            .min()
            .unwrap_or_else(Instant::now);
        let now = Instant::now();
        let nap = wake
            .saturating_duration_since(now)
            .min(Duration::from_millis(50));
        tokio::time::sleep(nap).await;
    }

    // Drain: every run reaches a terminal state.
    loop {
        fleet.replace_exited(&mut violations)?;
        let (active, _) = harness.observe().await?;
        if active == 0 {
            break;
        }
        if Instant::now() > deadline {
            violations.push(format!(
                "timed out after {} s with {active} runs not finished",
                args.timeout_s
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A late execution (a worker running a step of a finished run) would show in this time.
    tokio::time::sleep(Duration::from_millis(lease + 2 * args.renew_ms)).await;
    fleet.replace_exited(&mut violations)?;
    harness.observe().await?;
    let worker_processes = fleet.incarnations;
    drop(fleet);

    let mut runs = Vec::new();
    for run in harness.durably.get_runs(&RunFilter::new()).await? {
        let input: ChaosInput = serde_json::from_value(run.input.clone())?;
        runs.push(check::FinalRun {
            expected: expected_output(input),
            status: run.status.as_str().to_owned(),
            output: run.output,
            completed_steps: run.completed_step_count,
            error: run.error,
            id: run.id,
        });
    }
    let text = std::fs::read_to_string(&log)?;
    let (lines, malformed) = check::parse(&text);
    let params = check::Params {
        steps: args.steps,
        workers: args.workers,
        concurrency: args.concurrency,
    };
    let report = check::check(
        &lines,
        &malformed,
        &harness.observed,
        &signals,
        &runs,
        &params,
    );
    violations.extend(report.violations.iter().cloned());

    let stops: Vec<&check::Signal> = signals.iter().filter(|s| !s.kill).collect();
    let kept = if violations.is_empty() {
        None
    } else {
        Some(match temp {
            Some(temp) => temp.keep(),
            None => dir.clone(),
        })
    };
    if let (Some(url), Some(schema)) = (&postgres_url, &schema) {
        if violations.is_empty() {
            let store = durably::PostgresStore::connect_with(
                url,
                durably::PostgresOptions::default()
                    .max_connections(1)
                    .schema(Some(schema.clone())),
            )?;
            store.drop_schema().await?;
        } else {
            eprintln!("chaos: the PostgreSQL schema {schema} is kept for inspection");
        }
    }
    for note in report.unexplained.iter().take(20) {
        eprintln!("note: a re-execution no kill or long stop explains: {note}");
    }
    for violation in violations.iter().take(20) {
        eprintln!("violation: {violation}");
    }
    if violations.len() > 20 {
        eprintln!("… and {} more violations", violations.len() - 20);
    }
    if let Some(kept) = &kept {
        eprintln!(
            "chaos: seed {seed}; the execution log, the workers' stderr and the database are in {}",
            kept.display()
        );
    }
    let summary = json!({
        "backend": args.backend,
        "seed": seed,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "steps": args.steps,
        "lease_ms": lease,
        "runs": runs.len(),
        "kills": signals.iter().filter(|s| s.kill).count(),
        "stops": stops.len(),
        "long_stops": stops.iter().filter(|s| s.long).count(),
        "longest_stop_ms": stops.iter().map(|s| s.stopped_ms).max().unwrap_or(0),
        "worker_processes": worker_processes,
        "step_executions": report.step_executions,
        "re_executions": report.re_executions,
        "re_execution_bound": report.re_execution_bound,
        "unexplained_re_executions": report.unexplained_re_executions,
        "persisted_re_executions": report.persisted_re_executions,
        "violations": violations.len(),
        "duration_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "kept": kept.map(|dir| dir.display().to_string()),
    });
    println!("{summary}");
    Ok(if violations.is_empty() {
        exit::OK
    } else {
        exit::FAILURE
    })
}
