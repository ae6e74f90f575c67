//! A `durably chaos` worker process (`durably chaos-worker`, hidden): one worker on the chaos
//! database executing the `chaos` job, which records every step execution in the execution
//! log. It works until the harness kills it, or exits when its stdin closes (the harness went
//! away).

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use durably::{Durably, DurablyBuilder, Job, PostgresOptions, PostgresStore, StepContext};
use serde::{Deserialize, Serialize};

/// Options of the hidden `durably chaos-worker` (set by the harness).
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// `sqlite` or `postgres`.
    #[arg(long)]
    pub backend: String,
    /// SQLite file or PostgreSQL URL.
    #[arg(long)]
    pub db: String,
    /// PostgreSQL schema.
    #[arg(long)]
    pub schema: Option<String>,
    /// The execution log.
    #[arg(long)]
    pub log: PathBuf,
    /// This process's incarnation number, written in every log line.
    #[arg(long)]
    pub incarnation: u64,
    #[arg(long)]
    pub lease_ms: u64,
    #[arg(long)]
    pub renew_ms: u64,
    #[arg(long)]
    pub concurrency: usize,
    #[arg(long)]
    pub step_ms: u64,
    /// See `durably chaos --sabotage`.
    #[arg(long)]
    pub sabotage: bool,
}

/// The input of a chaos run.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct ChaosInput {
    /// The run's number; its steps' outputs derive from it.
    pub n: u64,
    /// Steps to run.
    pub steps: u32,
}

/// The output of step `k` of run `n`.
fn step_value(n: u64, k: u32) -> u64 {
    n * 1_000 + u64::from(k) * u64::from(k)
}

/// The output of a run: the sum of its steps' outputs.
pub fn expected_output(input: ChaosInput) -> u64 {
    (1..=input.steps).map(|k| step_value(input.n, k)).sum()
}

/// How long step `k` of run `n` works: 0 to 2 × `mean_ms`, the same on every execution.
fn step_time(n: u64, k: u32, mean_ms: u64) -> Duration {
    // splitmix64 of (n, k)
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(k);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    Duration::from_millis(x % (2 * mean_ms + 1))
}

/// The execution log, opened for appending (`O_APPEND`: every line lands whole at the end,
/// whichever process writes it).
pub struct ExecutionLog {
    file: File,
    incarnation: u64,
}

impl ExecutionLog {
    pub fn open(path: &std::path::Path, incarnation: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(ExecutionLog { file, incarnation })
    }

    /// Appends `<kind> <incarnation> <pid> <run> <step> <unix ms>` in one write; `sync` also
    /// flushes it to disk before returning.
    fn record(&self, kind: &str, run: &str, step: u32, sync: bool) -> std::io::Result<()> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let line = format!(
            "{kind} {} {} {run} {step} {ms}\n",
            self.incarnation,
            std::process::id()
        );
        (&self.file).write_all(line.as_bytes())?;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// The chaos job: `input.steps` steps, run in order. Each execution of a step's function
/// first appends an `exec` line and fsyncs it, then works for [`step_time`] and returns
/// [`step_value`]; after each `step.run` returns (the step is persisted, by this execution or
/// an earlier one) the job appends a `done` line (no fsync: a SIGKILL cannot lose a written
/// line, only a machine crash could). The run's output is the sum of its steps' outputs.
///
/// With `sabotage`, each start of the job also records an execution of step 1 outside
/// `step.run` (a side effect that is not durable), which the checker must report.
pub fn chaos_job(log: Arc<ExecutionLog>, step_ms: u64, sabotage: bool) -> Job<ChaosInput, u64> {
    Job::new("chaos", move |step: StepContext, input: ChaosInput| {
        let log = log.clone();
        async move {
            if sabotage {
                log.record("exec", step.run_id(), 1, true)
                    .map_err(|e| durably::Error::Job(e.into()))?;
            }
            let mut total = 0u64;
            for k in 1..=input.steps {
                let (exec_log, run) = (log.clone(), step.run_id().to_owned());
                total += step
                    .run(&format!("s{k}"), |_| async move {
                        exec_log.record("exec", &run, k, true)?;
                        tokio::time::sleep(step_time(input.n, k, step_ms)).await;
                        Ok(step_value(input.n, k))
                    })
                    .await?;
                log.record("done", step.run_id(), k, false)
                    .map_err(|e| durably::Error::Job(e.into()))?;
            }
            Ok(total)
        }
    })
}

/// The builder of a chaos instance (worker or harness) on the chaos database.
pub fn builder(
    backend: &str,
    db: &str,
    schema: Option<&str>,
    connections: usize,
) -> durably::Result<DurablyBuilder> {
    let builder = Durably::builder();
    Ok(match backend {
        "postgres" => builder.store(PostgresStore::connect_with(
            db,
            PostgresOptions::default()
                .max_connections(connections)
                .schema(schema.map(str::to_owned)),
        )?),
        _ => builder.sqlite(db),
    })
}

/// `durably chaos-worker`: works until killed; prints `ready` once its worker has started.
pub async fn run(args: WorkerArgs) -> Result<(), Box<dyn std::error::Error>> {
    // The harness holds our stdin open; when it goes away (even killed), stdin ends: exit.
    std::thread::spawn(|| {
        let mut buffer = [0u8; 64];
        while matches!(std::io::stdin().read(&mut buffer), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let log = Arc::new(ExecutionLog::open(&args.log, args.incarnation)?);
    let durably = builder(
        &args.backend,
        &args.db,
        args.schema.as_deref(),
        args.concurrency + 2,
    )?
    .lease_duration(Duration::from_millis(args.lease_ms))
    .lease_renew_interval(Duration::from_millis(args.renew_ms))
    .polling_interval(Duration::from_millis(20))
    .max_concurrent_runs(args.concurrency)
    .build()?;
    durably.register(chaos_job(log, args.step_ms, args.sabotage))?;
    durably.init().await?;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_and_step_times_are_deterministic() {
        let input = ChaosInput { n: 7, steps: 3 };
        assert_eq!(expected_output(input), 7_000 * 3 + 1 + 4 + 9);
        for k in 1..=3 {
            assert_eq!(step_time(7, k, 20), step_time(7, k, 20));
            assert!(step_time(7, k, 20) <= Duration::from_millis(40));
        }
        assert_eq!(step_time(7, 1, 0), Duration::ZERO);
    }
}
