//! `durably demo`: the reference jobs (`echo`, `steps`, `sleep`) served over HTTP + SSE under
//! `/api/durably` on embedded SQLite — the upstream wire protocol, so the published React
//! client `@coji/durably-react` (fullstack mode) talks to it unchanged.
//!
//! Ctrl-C (or SIGTERM) shuts down gracefully: the listener stops accepting, open SSE streams
//! end, in-flight requests finish, then the worker stops (waiting a bounded time for runs in
//! flight; a run still going then is picked up again after its lease expires on the next start).

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use durably::CancellationToken;
use durably::Durably;
use durably::http::HttpOptions;

use crate::reference_jobs;

/// Where the API is served.
pub const BASE_PATH: &str = "/api/durably";

/// Options of `durably demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// TCP port to listen on (0 picks a free port; the URL printed says which).
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Address to bind (use 0.0.0.0 to accept connections from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// SQLite database file (created if missing).
    #[arg(long, default_value = "durably-demo.sqlite")]
    db: PathBuf,
    /// Runs executed at once by the worker.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// On shutdown, how many seconds to wait for runs in flight before exiting anyway.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout: u64,
}

/// The demo's HTTP application: the API under [`BASE_PATH`] and a small page at `/`.
pub fn app(durably: Durably, options: HttpOptions) -> Router {
    Router::new()
        .route("/", get(index))
        .nest(BASE_PATH, durably::http::router(durably, options))
}

async fn index() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("demo_index.html")),
    )
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

pub async fn run(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let durably = Durably::builder()
        .sqlite(&args.db)
        .polling_interval(Duration::from_millis(200))
        .max_concurrent_runs(args.concurrency)
        .build()?;
    reference_jobs::register_all(&durably)?;
    durably.init().await?;

    let streams = CancellationToken::new();
    let options = HttpOptions::new().shutdown(streams.clone());
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let address = listener.local_addr()?;
    println!("durably demo: http://{address}{BASE_PATH}");
    println!(
        "  jobs: echo, steps, sleep · database: {} · Ctrl-C stops",
        args.db.display()
    );
    println!(
        "  try: curl -s -X POST http://{address}{BASE_PATH}/trigger -d '{{\"jobName\":\"steps\",\"input\":{{\"count\":5,\"stepMs\":500}}}}'"
    );
    println!("       curl -N http://{address}{BASE_PATH}/runs/subscribe");

    let served = axum::serve(listener, app(durably.clone(), options))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("shutting down: no new connections; closing event streams");
            streams.cancel();
        })
        .await;

    let timeout = Duration::from_secs(args.shutdown_timeout);
    tokio::select! {
        _ = durably.stop() => eprintln!("worker stopped"),
        _ = tokio::time::sleep(timeout) => eprintln!(
            "runs still in flight after {}s; exiting (they resume after their lease expires)",
            args.shutdown_timeout
        ),
        _ = shutdown_signal() => eprintln!("second signal: exiting now"),
    }
    served.map_err(|e| format!("server error: {e}"))?;
    Ok(())
}
