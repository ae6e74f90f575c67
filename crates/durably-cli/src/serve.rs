//! `durably serve`: the HTTP API and the page over an existing database, without job code.
//!
//! It starts no worker: without the job definitions it could not execute a run, and a worker
//! that claimed one would fail it as an unknown job. For the same reason `POST /trigger` and
//! `POST /retrigger` answer `501 Not Implemented` with a JSON error that names the job; every
//! other route (list, run, steps, cancel, delete, subscribe, runs/subscribe, jobs, openapi) works
//! as in the application. The event streams carry the other processes' changes through
//! [`mirror`], which polls the database.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use durably::CancellationToken;
use durably::Durably;
use durably::http::HttpOptions;
use serde_json::{Value, json};

use crate::db::{DbArgs, Purpose};
use crate::exit::{CliError, OK};
use crate::mirror;
use crate::server::{self, BASE_PATH};

/// Options of `durably serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// TCP port to listen on (0 picks a free port; the URL printed says which). It is bound
    /// before the database is opened.
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Address to bind (use 0.0.0.0 to accept connections from other machines; the API has no
    /// authentication).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// How often to read the database for changes made by other processes (their runs'
    /// progress, steps and outcomes), which the event streams then carry, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(50..))]
    poll_ms: u64,
    /// Serve metrics as Prometheus text at GET /metrics (off by default). Without a worker,
    /// the counters count only what this process does (the runs cancelled through it, its store
    /// errors); the gauges of runs by status and oldest pending age are the database's.
    #[arg(long)]
    metrics: bool,
}

/// The status of a refused trigger or retrigger.
pub const REFUSED: StatusCode = StatusCode::NOT_IMPLEMENTED;

/// Largest trigger body read to find the job's name (the API's own limit is the same).
const BODY_LIMIT: usize = 1024 * 1024;

fn refusal(message: String) -> Response {
    (
        REFUSED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

fn trigger_refusal(job: &str) -> Response {
    refusal(format!(
        "durably serve has no job definitions: trigger runs from the application that registers job \"{job}\""
    ))
}

/// The `runId` query parameter (run ids are ULIDs: no percent-decoding needed to find one).
fn run_id(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "runId")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// Answers triggers and retriggers of runs that exist with [`REFUSED`]; passes everything
/// else (including malformed requests, which get the API's usual 400/404) to the API.
async fn refuse_triggers(State(durably): State<Durably>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let path = request.uri().path();
    if path == format!("{BASE_PATH}/trigger") {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
            return refusal(
                "durably serve has no job definitions: trigger runs from the application that registers the job".into(),
            );
        };
        let job = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|body| {
                body.get("jobName")
                    .and_then(Value::as_str)
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
            });
        return match job {
            Some(job) => trigger_refusal(&job),
            None => {
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
        };
    }
    if path == format!("{BASE_PATH}/retrigger")
        && let Some(id) = run_id(request.uri().query())
        && let Ok(Some(run)) = durably.get_run(id).await
        && run.status.is_terminal()
    {
        return refusal(format!(
            "durably serve has no job definitions: retrigger run {id} from the application that registers job \"{}\"",
            run.job_name
        ));
    }
    next.run(request).await
}

/// The application served by `durably serve`: [`server::app`] with triggers refused.
pub fn app(durably: Durably, options: HttpOptions) -> axum::Router {
    server::app(durably.clone(), options).layer(axum::middleware::from_fn_with_state(
        durably,
        refuse_triggers,
    ))
}

/// `durably serve`: serves until Ctrl-C / SIGTERM, then stops accepting and ends open event
/// streams. There is no worker to drain.
pub async fn run(args: ServeArgs) -> Result<u8, CliError> {
    // Bind first: a busy port opens nothing (SQLite would create its journal files).
    let listener = server::bind(&args.host, args.port)
        .await
        .map_err(CliError::new)?;
    let metrics = server::metrics(args.metrics).map_err(|e| CliError::new(e.to_string()))?;
    let durably = args
        .db
        .open_metered(Purpose::Serve, false, metrics.as_ref())
        .await?;
    let streams = CancellationToken::new();
    tokio::spawn(mirror::run(
        durably.clone(),
        std::time::Duration::from_millis(args.poll_ms),
        streams.clone(),
    ));
    let options = HttpOptions::new().shutdown(streams.clone());
    let address = listener
        .local_addr()
        .map_err(|e| CliError::new(format!("cannot read the listening address: {e}")))?;
    println!("durably serve: http://{address}/ (API under http://{address}{BASE_PATH})");
    if metrics.is_some() {
        println!("  metrics: http://{address}/metrics (Prometheus text)");
    }
    println!(
        "  database: {} · no worker and no job definitions: trigger/retrigger answer 501 · Ctrl-C stops",
        args.db.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let app = server::with_metrics(app(durably, options), metrics.as_ref());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            server::shutdown_signal().await;
            eprintln!("shutting down: no new connections; closing event streams");
            streams.cancel();
        })
        .await
        .map_err(|e| CliError::new(format!("server error: {e}")))?;
    Ok(OK)
}
