//! The `durably` command: run the demo, manage the schema, operate on runs (list, inspect,
//! cancel, delete, purge, watch, serve the API over a database) and benchmark the engine.
#![forbid(unsafe_code)]

mod bench;
mod browser_demo;
mod chaos;
mod db;
mod demo;
mod exit;
mod mirror;
mod ops;
mod reference_jobs;
mod schedules;
mod serve;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// durably — steps that survive crashes.
///
/// Every command that takes `--db` accepts a SQLite file path, a PostgreSQL URL
/// (`postgres://…` / `postgresql://…`) or a remote libSQL URL (`libsql://…` for Turso,
/// `https://…` / `http://…`; its token from `--auth-token` or `LIBSQL_AUTH_TOKEN`); any other
/// `scheme://` is refused. The operator commands (serve, runs, run, waits, signal, trigger,
/// retrigger, resume, wake, cancel, delete, purge, watch, schedules, schedule) need a database
/// that holds the durably schema (`durably migrate` creates it) and start no worker.
///
/// Wherever a run id is taken, a unique part of it works too, as git takes a commit: its first
/// or last characters (at least 4), e.g. the dashboard's short id `…4K9ZB2QX`. A part that
/// matches several runs lists them and exits with 2.
#[derive(Parser, Debug)]
#[command(name = "durably", version, about, after_help = exit::EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the reference jobs (echo, steps, sleep, approval, fanout, flaky, nap, parent) on embedded SQLite (or PostgreSQL with a
    /// `postgres://` --db) and watch them execute.
    ///
    /// It also registers the cron schedule `heartbeat`: echo with {"value": "heartbeat"} at
    /// second 0 of every minute, missed minutes skipped. It is created paused (a fresh demo has
    /// only the runs you trigger): resume it in the dashboard's Schedules tab, with
    /// `POST /api/durably/schedules/resume?name=heartbeat`, or `durably schedule resume heartbeat
    /// --db <the demo's database>`; the pause or resume is kept across restarts.
    Demo(demo::DemoArgs),
    /// Create or upgrade the durably schema in a database (safe to run many times).
    ///
    /// A SQLite file is created if missing; on PostgreSQL the database must exist (and
    /// `--schema`, when given, is created).
    Migrate(db::DbArgs),
    /// Serve the HTTP API (under /api/durably) and the page (at /) over an existing database.
    ///
    /// For operators: browse, watch, cancel and delete the runs of an application from outside
    /// it. `serve` has no job code, so it starts NO worker (a worker without the job
    /// definitions would fail every run it claimed as an unknown job; the application's own
    /// workers keep executing runs). For the same reason `POST /trigger` and `POST /retrigger`
    /// answer 501 Not Implemented with
    /// `{"error": "durably serve has no job definitions: trigger runs from the application that
    /// registers job \"<name>\""}`; every other route works: runs, run, steps, cancel, resume, wake, delete,
    /// subscribe, runs/subscribe, waits, wait, signal, jobs (an empty list), openapi.json.
    ///
    /// The live event streams (subscribe, runs/subscribe) carry what workers in other
    /// processes write: serve reads the database every --poll-ms (default 300 ms) and emits
    /// run:trigger, run:leased, step:complete, run:progress, run:complete, run:fail, run:cancel
    /// and run:delete for the changes it finds (changes within one interval are reported once,
    /// with their latest value).
    Serve(serve::ServeArgs),
    /// List runs, newest first, as a table (or JSON with --json).
    ///
    /// Columns: id, job, status, progress (current/total and message), created (UTC), and how
    /// long the run has been waiting or running, or took once it ended. Filters combine: any of
    /// the given statuses (`running` is a synonym of `leased`), any of the given jobs, every
    /// given label, and with --parent only the child runs of one run. An unknown --status or a
    /// malformed --label exits with 2; an unknown --parent run with 4.
    #[command(
        after_help = "Examples:\n  durably runs --db app.db --status failed --limit 50\n  durably runs --db postgres://me@db/app --job send-email --label tenant=acme --json\n  durably runs --db app.db --parent 01J9… --status failed\n  durably runs --db app.db --status running"
    )]
    Runs(ops::RunsArgs),
    /// Show one run: its fields, input, output or error, its steps and its logs.
    ///
    /// A child run names its parent (id, job, status); a run that invoked child runs shows
    /// how many it has in each status and the first few (`durably runs --parent ID` lists
    /// them all). An unknown id exits with 4.
    Run(ops::RunArgs),
    /// List a run's durable waits, oldest first, as a table (or JSON with --json).
    ///
    /// Columns: name, status (pending, resolved, cancelled, closed), outcome (signal or
    /// timeout), deadline (UTC), the accepted signal's id, and the wait id that `durably
    /// signal` takes. An unknown run id exits with 4.
    Waits(ops::WaitsArgs),
    /// Signal a durable wait: resolve it with a payload, so that a worker resumes its run.
    ///
    /// Prints the disposition: `accepted`, or `duplicate` when the same signal (same
    /// --signal-id and payload) had already resolved it (exit 0 for both). A wait whose
    /// deadline passed, or that no longer accepts a signal (resolved by another one, cancelled,
    /// closed, its run ended), exits with 1; an unknown wait id with 4; a --payload that is not
    /// JSON or a blank --signal-id with 2.
    #[command(
        after_help = "Example:\n  durably signal 01J9… approval --db app.db --signal-id approval-42 --payload '{\"approved\": true}'"
    )]
    Signal(ops::SignalArgs),
    /// Cancel a pending or leased run.
    ///
    /// A pending run never starts; a leased run's worker (in any process) notices at its next
    /// step boundary or lease renewal (at once on PostgreSQL) and stops. Ending runs cannot be
    /// cancelled (exit code 1); an unknown id exits with 4.
    Cancel(ops::CancelArgs),
    /// Trigger a run of a job: a new run with the given input, for the application's workers.
    ///
    /// It writes the run into the database (--db) as `durably retrigger` does, rather than
    /// calling a running application over HTTP: it needs no server, no URL and no credentials
    /// beyond the database's, and works while the application is down (its workers pick the run
    /// up when they start). The command has no job code, so the input is not checked against
    /// the job's input type (a worker fails a run whose input its job rejects) and the job name
    /// is not checked either (a note says so when the database has no run of that job yet).
    /// Prints the new run's id; --wait follows it to its end like `durably watch`. An --input
    /// that is not JSON, a malformed --label or --delay exit with 2 and store nothing; a
    /// --concurrency-key whose job and key already have a pending run exits with 1.
    #[command(
        after_help = "Examples:\n  durably trigger send-email --db app.db --input '{\"to\": \"ada@example.com\"}'\n  durably trigger report --db postgres://me@db/app --input '{\"month\": \"2026-01\"}' --label tenant=acme --idempotency-key report-2026-01 --wait\n  durably trigger cleanup --db app.db --input null --delay 10m --priority -1"
    )]
    Trigger(ops::TriggerArgs),
    /// Run a finished run (completed, failed or cancelled) again: a new pending run of the same
    /// job with the same input, concurrency key and labels; the application's workers run it.
    ///
    /// The command has no job code, so the input is not validated again. A pending or leased
    /// run is refused (exit code 1), as is a new run whose concurrency key already has a pending
    /// run; an unknown id exits with 4.
    Retrigger(ops::RetriggerArgs),
    /// Resume a failed run from where it failed: the run goes back to pending under its own id
    /// and the application's workers continue it, replaying (not executing again) the steps it
    /// completed before the failure.
    ///
    /// The command has no job code: the workers of the application that registers the job run
    /// it. A run that is not failed is refused (exit code 1), as is a run whose concurrency key
    /// already has a pending run; an unknown id exits with 4.
    #[command(after_help = "Example:\n  durably resume 01J9… --db app.db")]
    Resume(ops::ResumeArgs),
    /// Run now / retry now: a run waiting on a timer (delayed, in a step's or its own retry
    /// backoff, sleeping) starts or continues now.
    ///
    /// The timer wait the run waits on is signalled (signal id `wake`); the application's
    /// workers then run it. A run waiting for a signal (an approval) is refused (exit code 1):
    /// signal its wait with `durably signal`; so is a run that is not waiting. An unknown id
    /// exits with 4. `durably run ID` says why a waiting run waits and until when.
    #[command(after_help = "Example:\n  durably wake 01J9… --db app.db")]
    Wake(ops::WakeArgs),
    /// List the cron schedules, by name, as a table (or JSON with --json).
    ///
    /// Columns: name, job, cron expression, time zone, next fire (UTC, and how soon), last
    /// fired (UTC, and how long ago), paused.
    #[command(after_help = "Example:\n  durably schedules --db app.db")]
    Schedules(schedules::SchedulesArgs),
    /// Pause, resume or trigger now one cron schedule.
    ///
    /// `pause` stops its firing; `resume` restarts it from its first slot after now; `trigger`
    /// enqueues a run of its job with its input and labels now (label durably.schedule=NAME),
    /// outside its slots, for the application's workers (no job code needed). An unknown name
    /// exits with 4.
    #[command(
        after_help = "Examples:\n  durably schedule pause nightly-report --db app.db\n  durably schedule trigger nightly-report --db postgres://me@db/app"
    )]
    Schedule(schedules::ScheduleArgs),
    /// Delete a finished run (completed, failed or cancelled) with its steps and logs.
    ///
    /// A pending or leased run is refused (exit code 1): cancel it first. An unknown id exits
    /// with 4.
    Delete(ops::DeleteArgs),
    /// Delete finished runs that ended longer ago than --older-than (e.g. 30d, 12h, 90m).
    ///
    /// Pending and leased runs are never purged. Prints how many runs were deleted. A malformed
    /// --older-than (e.g. 30s) exits with 2.
    Purge(ops::PurgeArgs),
    /// Follow a run until it ends: a live progress bar and each step as it completes.
    ///
    /// Reads the run from the database every --interval-ms (default 200 ms), so it follows runs
    /// executed by any process. Exit code by outcome: 0 completed, 1 failed (the error is
    /// printed), 3 cancelled, 4 no such run (or deleted while watching).
    Watch(ops::WatchArgs),
    /// Measure throughput and latency on a fresh database; prints one JSON line per workload.
    Bench(bench::BenchArgs),
    /// Kill and stop real worker processes at random (seeded) moments while they drain runs,
    /// then check the invariants from an fsynced execution log; prints one JSON line.
    ///
    /// Invariants: every run completes with the output its input determines; a step known
    /// persisted (seen in the database, or once its `step.run` returned) never executes again,
    /// nor after its run completed; step re-executions stay within kills × concurrency + long
    /// stops × workers × concurrency.
    /// Exit code 1 when one broke (the log and the database are kept). See docs/chaos.md.
    Chaos(chaos::ChaosArgs),
    /// A worker process of `durably chaos` (started by it).
    #[command(hide = true)]
    ChaosWorker(chaos::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = matches!(&cli.command, Command::Bench(args) if args.traces());
    // The log filter is the log layer's own, so that `bench --traces` sees every span.
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("DURABLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    tracing_subscriber::registry()
        .with(log)
        .with(traces.then(bench::traces::layer))
        .init();
    let mut builder = match bench::is_worker_process() {
        true => tokio::runtime::Builder::new_current_thread(),
        false => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let done = |result: Result<(), Box<dyn std::error::Error>>| {
            result.map(|()| exit::OK).map_err(exit::CliError::from)
        };
        match cli.command {
            Command::Demo(args) => done(demo::run(args).await),
            Command::Migrate(db) => migrate(db).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Runs(args) => ops::runs(args).await,
            Command::Run(args) => ops::run(args).await,
            Command::Waits(args) => ops::waits(args).await,
            Command::Signal(args) => ops::signal(args).await,
            Command::Cancel(args) => ops::cancel(args).await,
            Command::Trigger(args) => ops::trigger(args).await,
            Command::Retrigger(args) => ops::retrigger(args).await,
            Command::Resume(args) => ops::resume(args).await,
            Command::Wake(args) => ops::wake(args).await,
            Command::Schedules(args) => schedules::list(args).await,
            Command::Schedule(args) => schedules::act(args).await,
            Command::Delete(args) => ops::delete(args).await,
            Command::Purge(args) => ops::purge(args).await,
            Command::Watch(args) => ops::watch(args).await,
            Command::Bench(args) => done(bench::run(args).await),
            Command::Chaos(args) => chaos::run(args).await,
            Command::ChaosWorker(args) => done(chaos::worker(args).await),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {}", error.message);
            ExitCode::from(error.code)
        }
    }
}

async fn migrate(db: db::DbArgs) -> Result<u8, exit::CliError> {
    let durably = db.open(db::Purpose::Migrate, false).await?;
    let failed = |e: durably::Error| {
        exit::CliError::new(format!("cannot migrate database {}: {e}", db.display()))
    };
    durably.migrate().await.map_err(failed)?;
    let version = durably.store().schema_version().await.map_err(failed)?;
    println!("{}: schema version {version}", db.display());
    Ok(exit::OK)
}
