//! The `durably` command: run the demo, manage the schema and benchmark the engine.
#![forbid(unsafe_code)]

mod bench;
mod demo;
mod reference_jobs;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// durably — steps that survive crashes.
#[derive(Parser, Debug)]
#[command(name = "durably", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the reference jobs (echo, steps, sleep) on embedded SQLite and watch them execute.
    Demo(demo::DemoArgs),
    /// Create or upgrade the durably schema in a database (safe to run many times).
    Migrate {
        /// Path of the SQLite database file.
        #[arg(long)]
        db: PathBuf,
    },
    /// Measure throughput and latency on a fresh database; prints one JSON line per workload.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DURABLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Migrate { db } => migrate(db).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(db: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let durably = durably::Durably::builder().sqlite(&db).build()?;
    durably.migrate().await?;
    let version = durably.store().schema_version().await?;
    println!("{}: schema version {version}", db.display());
    Ok(())
}
