//! A job that survives a crash: `cargo run -p durably --example resume`.
//!
//! The program starts a copy of itself that triggers a three-step job and dies (the process
//! aborts) inside the second step. Then it opens the same SQLite file and its worker takes the
//! run over once the dead process's lease has expired: the first step returns the result stored
//! before the crash without running again, the second and third run, and the run completes.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use durably::{Durably, Job, StepContext, TriggerOptions, WaitOptions};
use serde::{Deserialize, Serialize};

/// The argument of the copy that crashes.
const CRASHING: &str = "--crash-in-step-2";

#[derive(Serialize, Deserialize)]
struct Import {
    file: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Imported {
    rows: u32,
    stored: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crashing = std::env::args().any(|argument| argument == CRASHING);
    let path = std::env::temp_dir().join("durably-example-resume.sqlite");
    let who = if crashing { "copy" } else { "main" };
    if !crashing {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        println!("{who}: starting a copy of this program that crashes in step 2");
        let status = Command::new(std::env::current_exe()?)
            .arg(CRASHING)
            .status()?;
        println!("{who}: the copy died ({status}); its run is still leased to it");
    }

    // A short lease, so that the run is taken over 2 s after its worker died (default: 30 s).
    let durably = Durably::builder()
        .sqlite(&path)
        .lease_duration(Duration::from_secs(2))
        .lease_renew_interval(Duration::from_millis(500))
        .build()?;
    let downloaded = Arc::new(AtomicBool::new(false));
    let import = durably.register(Job::new("import", {
        let downloaded = downloaded.clone();
        move |step: StepContext, import: Import| {
            let downloaded = downloaded.clone();
            async move {
                let rows = step
                    .run("download", move |_cancel| async move {
                        downloaded.store(true, Ordering::SeqCst);
                        println!("{who}: step download: fetching {}", import.file);
                        Ok(3u32)
                    })
                    .await?;
                let stored = step
                    .run("store", move |_cancel| async move {
                        println!("{who}: step store: {rows} rows");
                        if crashing {
                            println!("{who}: crashing inside step store");
                            std::process::abort();
                        }
                        Ok(rows)
                    })
                    .await?;
                step.run("notify", move |_cancel| async move {
                    println!("{who}: step notify: {stored} rows stored");
                    Ok(())
                })
                .await?;
                Ok(Imported { rows, stored })
            }
        }
    }))?;
    durably.init().await?;

    // The same idempotency key finds the run the first process triggered.
    let options = TriggerOptions::new().idempotency_key("import-2026-11-21");
    let input = Import {
        file: "orders.csv".into(),
    };
    if !crashing {
        println!("{who}: waiting for the dead process's lease to expire");
    }
    let run = import
        .trigger_and_wait(input, options, WaitOptions::new())
        .await?;
    println!("{who}: run {} completed: {:?}", run.id, run.output);
    if !crashing {
        match downloaded.load(Ordering::SeqCst) {
            true => println!("{who}: step download ran again"),
            false => println!("{who}: step download did not run again: its stored result was used"),
        }
    }
    durably.stop().await;
    Ok(())
}
