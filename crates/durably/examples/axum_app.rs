//! durably inside your own axum application:
//! `cargo run -p durably --features http --example axum_app`.
//!
//! The durably HTTP + SSE API (the wire protocol of upstream's server, which the React client
//! `@coji/durably-react` speaks) is nested under `/api/durably` beside the application's own
//! routes, and the dashboard is served at `/dashboard`. Try:
//!
//! ```sh
//! curl -s -X POST localhost:3001/reports/42       # the application's route triggers a run
//! curl -s localhost:3001/api/durably/runs         # the durably API lists it
//! curl -sN "localhost:3001/api/durably/subscribe?runId=<runId>"   # its events, live
//! ```

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use durably::http::{HttpOptions, dashboard, router};
use durably::{CancellationToken, Durably, Job, JobHandle, StepContext, TriggerOptions};

/// The job: builds a report in two steps, reporting progress.
fn report_job() -> Job<u64, String> {
    Job::new("report", |step: StepContext, account: u64| async move {
        let rows = step
            .run("query", move |_cancel| async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(account * 10)
            })
            .await?;
        step.progress(1, Some(2), Some("queried")).await?;
        let file = step
            .run("render", move |_cancel| async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(format!("report-{account}-{rows}-rows.pdf"))
            })
            .await?;
        Ok(file)
    })
}

/// `POST /reports/{account}`: triggers a report and answers with its run id.
async fn create_report(
    State(reports): State<JobHandle<u64, String>>,
    Path(account): Path<u64>,
) -> Result<String, (axum::http::StatusCode, String)> {
    let key = format!("report-{account}");
    match reports
        .trigger_with(account, TriggerOptions::new().idempotency_key(key))
        .await
    {
        Ok(triggered) => Ok(format!("{}\n", triggered.run.id)),
        Err(error) => Err((
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            error.to_string(),
        )),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let durably = Durably::builder().sqlite("axum-example.sqlite").build()?;
    let reports = durably.register(report_job())?;
    durably.init().await?;

    // Ends the API's open event streams when the server shuts down.
    let streams = CancellationToken::new();
    let api = router(
        durably.clone(),
        HttpOptions::new().shutdown(streams.clone()),
    );
    let app = Router::new()
        .route("/reports/{account}", post(create_report))
        .with_state(reports)
        .nest("/api/durably", api)
        .nest("/dashboard", dashboard("/api/durably"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://127.0.0.1:3001 (dashboard: /dashboard); Ctrl-C stops");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            streams.cancel();
        })
        .await?;
    // Waits for the runs in flight; runs left unfinished resume at the next start.
    durably.stop().await;
    Ok(())
}
