//! Several worker processes sharing one PostgreSQL database:
//! `DATABASE_URL=postgres://postgres@127.0.0.1/postgres cargo run -p durably --features postgres --example postgres_workers`.
//!
//! Start it in two or three terminals at once: each process triggers 20 runs and starts a worker
//! with four slots; every process executes runs triggered by any of them (a trigger's `NOTIFY`
//! wakes the idle workers on every host), each run exactly once. A process stops once every run
//! it triggered has completed; Ctrl-C stops it earlier, gracefully.

use std::time::Duration;

use durably::{Durably, Job, RunStatus, StepContext, TriggerOptions, WaitOptions};

fn resize_job(process: u32) -> Job<u32, String> {
    Job::new("resize", move |step: StepContext, image: u32| async move {
        let size = step
            .run("download", move |_cancel| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(image * 1_000)
            })
            .await?;
        step.run("resize", move |_cancel| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(size / 2)
        })
        .await?;
        Ok(format!("image {image} resized by process {process}"))
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL, e.g. postgres://postgres@127.0.0.1/postgres")?;
    let process = std::process::id();
    let durably = Durably::builder()
        .postgres(&url)
        .max_concurrent_runs(4)
        .build()?;
    let resize = durably.register(resize_job(process))?;
    durably.init().await?;

    let batch = (0..20).map(|image| (image, TriggerOptions::new()));
    let runs = resize.batch_trigger(batch).await?;
    println!("process {process}: triggered {} runs", runs.len());
    let waits = runs
        .iter()
        .map(|triggered| durably.wait_for_run(&triggered.run.id, WaitOptions::new()));
    tokio::select! {
        finished = futures::future::join_all(waits) => {
            let mine = finished
                .iter()
                .filter_map(|run| run.as_ref().ok())
                .filter(|run| run.status == RunStatus::Completed)
                .filter(|run| run.output.as_ref().is_some_and(|output| {
                    output.as_str().is_some_and(|text| text.ends_with(&format!("process {process}")))
                }))
                .count();
            println!("process {process}: all {} runs completed, {mine} of them here", finished.len());
        }
        _ = tokio::signal::ctrl_c() => println!("process {process}: stopping"),
    }
    durably.stop().await;
    Ok(())
}
