//! `durably demo`: the reference jobs (`echo`, `steps`, `sleep`, …) and one cron schedule
//! (`heartbeat`, created paused) served over HTTP + SSE under
//! `/api/durably` on embedded SQLite (or on PostgreSQL with a `postgres://` URL) — the upstream
//! wire protocol, so the published React client `@coji/durably-react` (fullstack mode) talks to
//! it unchanged.
//!
//! `/browser` is a page where the visitor runs reference jobs in the browser itself
//! ([`browser_demo`]).
//!
//! Ctrl-C (or SIGTERM) shuts down gracefully: the listener stops accepting, open SSE streams
//! end, in-flight requests finish, then the worker stops (waiting a bounded time for runs in
//! flight; a run still going then is picked up again after its lease expires on the next start).

use std::time::Duration;

use durably::{CatchUp, Durably, PostgresOptions, PostgresStore, Schedule, ScheduleRecord};
use serde_json::json;

use crate::browser_demo;
use crate::reference_jobs;
use crate::server::{self, BASE_PATH};

/// Options of `durably demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// TCP port to listen on (0 picks a free port; the URL printed says which). It is bound
    /// before the database is created, so a busy port leaves no file behind.
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Address to bind (use 0.0.0.0 to accept connections from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// SQLite database file (created if missing), or a PostgreSQL URL (`postgres://…`; the
    /// database must exist, the schema is created or upgraded).
    #[arg(long, value_name = "PATH|URL", default_value = "durably-demo.sqlite")]
    db: String,
    /// PostgreSQL only: the schema holding the durably tables, created if missing (default: the
    /// server's `search_path`, usually `public`).
    #[arg(long, value_name = "NAME")]
    schema: Option<String>,
    /// Runs executed at once by the worker.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// On shutdown, how many seconds to wait for runs in flight before exiting anyway.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout: u64,
    /// Serve the worker's metrics as Prometheus text at GET /metrics (off by default).
    #[arg(long)]
    metrics: bool,
    /// The `durably-browser` package served under /browser/pkg/ for the in-browser demo at
    /// /browser (built by crates/durably/browser/build.sh; default: where it writes,
    /// $CARGO_TARGET_DIR/durably-browser or target/durably-browser). While it is absent,
    /// /browser shows the commands that build it.
    #[arg(long, value_name = "DIR")]
    browser_package: Option<std::path::PathBuf>,
}

pub async fn run(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    // First, so that a busy port creates no database file.
    let listener = server::bind(&args.host, args.port).await?;
    let is_postgres = args.db.starts_with("postgres://") || args.db.starts_with("postgresql://");
    let builder = Durably::builder();
    let builder = match (is_postgres, &args.schema) {
        (true, schema) => builder.store(PostgresStore::connect_with(
            &args.db,
            PostgresOptions::default().schema(schema.clone()),
        )?),
        (false, Some(_)) => return Err("--schema applies to PostgreSQL only".into()),
        (false, None) => builder.sqlite(&args.db),
    };
    let metrics = server::metrics(args.metrics)?;
    let builder = match &metrics {
        Some(metrics) => builder.meter_provider(metrics.meter_provider()),
        None => builder,
    };
    let durably = builder
        .polling_interval(Duration::from_millis(200))
        .max_concurrent_runs(args.concurrency)
        // keep step outputs of finished runs, so the dashboard can show them
        .preserve_steps(true)
        .build()?;
    reference_jobs::register_all(&durably)?;
    // Before the worker starts, so that nothing fires between creating and pausing it.
    let heartbeat = register_heartbeat(&durably).await?;
    durably.init().await?;

    let db = crate::db::DbArgs {
        auth_token: None,
        db: args.db.clone(),
        schema: args.schema.clone(),
    }
    .display();
    let timeout = Duration::from_secs(args.shutdown_timeout);
    let scraped = metrics.is_some();
    let package = args
        .browser_package
        .unwrap_or_else(browser_demo::default_package_dir);
    let built = browser_demo::package_present(&package);
    let browser = browser_demo::router(package.clone());
    server::serve(durably, listener, timeout, metrics, browser, |address| {
        println!("durably demo: http://{address}{BASE_PATH}");
        println!("  dashboard: http://{address}/");
        println!(
            "  in the browser: http://{address}{} (the engine compiled to wasm, SQLite on OPFS; {})",
            browser_demo::PATH,
            match built {
                true => format!("package {}", package.display()),
                false => format!(
                    "package not built at {}: the page says how",
                    package.display()
                ),
            }
        );
        if scraped {
            println!("  metrics: http://{address}/metrics (Prometheus text)");
        }
        println!("  jobs: echo, steps, sleep, approval, fanout, flaky, nap, parent · database: {db} · Ctrl-C stops");
        println!(
            "  try: curl -s -X POST http://{address}{BASE_PATH}/trigger -d '{{\"jobName\":\"steps\",\"input\":{{\"count\":5,\"stepMs\":500}}}}'"
        );
        println!("       curl -N http://{address}{BASE_PATH}/runs/subscribe");
        println!(
            "  schedule: {HEARTBEAT} runs echo {{\"value\":\"heartbeat\"}} every minute ({}; the Schedules tab, or curl -X POST 'http://{address}{BASE_PATH}/schedules/resume?name={HEARTBEAT}')",
            if heartbeat.paused { "paused" } else { "active" }
        );
    })
    .await
}

/// The demo's schedule.
pub const HEARTBEAT: &str = "heartbeat";

/// Registers the demo's schedule [`HEARTBEAT`]: job `echo` with `{"value": "heartbeat"}` at
/// second 0 of every minute, missed minutes skipped. Created paused, so that the runs of a
/// fresh demo are only those its user (or a test suite counting them) triggers: resume it in the
/// dashboard's Schedules tab, `POST /schedules/resume?name=heartbeat` or `durably schedule
/// resume heartbeat`. A pause or resume is kept across restarts on the same database.
async fn register_heartbeat(durably: &Durably) -> durably::Result<ScheduleRecord> {
    let schedules = durably.schedules();
    let fresh = schedules.get(HEARTBEAT).await?.is_none();
    let record = schedules
        .upsert(
            Schedule::new(
                HEARTBEAT,
                "0 * * * * *",
                "echo",
                json!({ "value": "heartbeat" }),
            )
            .catch_up(CatchUp::Skip),
        )
        .await?;
    match fresh {
        true => schedules.pause(HEARTBEAT).await,
        false => Ok(record),
    }
}
