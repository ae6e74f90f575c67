//! `durably demo`: the reference jobs on embedded SQLite.
//!
//! Until the HTTP server lands, the demo triggers each reference job, prints every event as it
//! happens and the final results, then exits.

use std::path::PathBuf;
use std::time::Duration;

use durably::{Durably, EventKind, TriggerOptions, WaitOptions};
use serde_json::json;

use crate::reference_jobs;

/// Options of `durably demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// SQLite database file (created if missing).
    #[arg(long, default_value = "durably-demo.sqlite")]
    db: PathBuf,
    /// Number of steps of the `steps` job.
    #[arg(long, default_value_t = 5)]
    steps: u32,
}

pub async fn run(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let durably = Durably::builder()
        .sqlite(&args.db)
        .polling_interval(Duration::from_millis(100))
        .max_concurrent_runs(4)
        .build()?;
    reference_jobs::register_all(&durably)?;
    durably.init().await?;
    println!("durably demo on {} (embedded SQLite)", args.db.display());

    let _printer = durably.on_any(|event| {
        let line = match &event.kind {
            EventKind::RunTrigger {
                run_id, job_name, ..
            } => format!("triggered {job_name} {run_id}"),
            EventKind::RunLeased {
                job_name,
                lease_owner,
                ..
            } => format!("{job_name}: leased by {lease_owner}"),
            EventKind::StepComplete {
                job_name,
                step_name,
                duration,
                ..
            } => {
                format!("{job_name}: step {step_name} done in {duration} ms")
            }
            EventKind::RunProgress {
                job_name, progress, ..
            } => format!(
                "{job_name}: progress {}/{} {}",
                progress.current,
                progress.total.unwrap_or(0),
                progress.message.as_deref().unwrap_or("")
            ),
            EventKind::RunComplete {
                job_name, output, ..
            } => format!("{job_name}: completed with {output}"),
            EventKind::RunFail {
                job_name, error, ..
            } => format!("{job_name}: failed: {error}"),
            EventKind::RunCancel { job_name, .. } => format!("{job_name}: cancelled"),
            _ => return,
        };
        println!("  {line}");
    });

    let wait = || WaitOptions::new().timeout(Duration::from_secs(120));
    let echo = durably
        .trigger_and_wait_json(
            "echo",
            json!({ "value": "hello" }),
            TriggerOptions::new(),
            wait(),
        )
        .await?;
    let steps = durably
        .trigger_and_wait_json(
            "steps",
            json!({ "count": args.steps, "stepMs": 100 }),
            TriggerOptions::new().label("demo", "true"),
            wait(),
        )
        .await?;
    let sleep = durably
        .trigger_json("sleep", json!({ "ms": 60_000 }), TriggerOptions::new())
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    durably.cancel(&sleep.run.id).await?;
    let cancelled = durably.wait_for_run(&sleep.run.id, wait()).await;

    println!();
    println!("echo   -> {}", echo.output.unwrap_or_default());
    println!("steps  -> {}", steps.output.unwrap_or_default());
    println!(
        "sleep  -> {}",
        match cancelled {
            Err(durably::Error::Cancelled { .. }) => "cancelled as asked".to_owned(),
            other => format!("{other:?}"),
        }
    );
    durably.stop().await;
    Ok(())
}
