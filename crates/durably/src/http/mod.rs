//! HTTP + SSE (feature `http`): the upstream wire protocol as an axum [`Router`].
//!
//! [`router`] serves upstream's nine routes (`createDurablyHandler`) relative to wherever it is
//! nested, plus two routes of ours beside them:
//!
//! | method & path | answer |
//! |---|---|
//! | `POST /trigger` | `{"runId", "disposition"}` |
//! | `GET /runs` | bare JSON array of [`ClientRun`], newest first (filters `jobName`, `status`, `label.<k>`, `limit`, `offset`, and ours `parentRunId`: a run's children, `idPrefix`: runs whose id starts with it) |
//! | `GET /run?runId=` | [`ClientRun`] |
//! | `GET /steps?runId=` | JSON array of steps |
//! | `POST /retrigger?runId=` | `{"success": true, "runId"}` |
//! | `POST /resume?runId=` (ours) | `{"success": true, "runId"}`: the failed run, `pending` again under its own id, continues from its failed step ([`Durably::resume`]) |
//! | `POST /wake?runId=` (ours) | `{"success": true, "runId"}`: the run waiting on a timer (delayed, in a retry backoff, sleeping) starts or continues now ([`Durably::wake`]) |
//! | `POST /cancel?runId=` | `{"success": true}` |
//! | `DELETE /run?runId=` | `{"success": true}` |
//! | `GET /subscribe?runId=` | SSE: the run's current state, then its live events, until it ends |
//! | `GET /runs/subscribe` | SSE: slim live events of all runs (filters `jobName`, `label.<k>`) |
//! | `GET /waits?runId=` | JSON array of the run's [`DurableWait`]s, oldest first (upstream v4) |
//! | `GET /wait?runId=&waitId=` | one [`DurableWait`] of the run (upstream v4) |
//! | `POST /signal?runId=&waitId=` | body `{"signalId", "payload"}` → `{"wait": DurableWait, "disposition": "accepted" \| "duplicate"}` (upstream v4) |
//! | `GET /logs?runId=` (ours) | JSON array of the run's persisted logs, oldest first |
//! | `GET /jobs` (ours) | `[{"name", "inputSchema"}]`, the registered jobs with the JSON Schema of their input (`null` if none, see [`Job::input_schema`](crate::Job::input_schema)) |
//! | `GET /schedules` (ours) | JSON array of the cron schedules, by name: `name`, `jobName`, `cron`, `timeZone`, `input`, `labels`, `catchUp`, `paused`, `nextFireAt`, `lastFiredAt`, `createdAt`, `updatedAt` |
//! | `GET /schedule?name=` (ours) | one schedule |
//! | `POST /schedules/pause?name=`, `POST /schedules/resume?name=` (ours) | the schedule paused, or resumed from the first slot after now ([`Schedules`](crate::Schedules)) |
//! | `POST /schedules/trigger?name=` (ours) | `{"runId"}`: a run of the schedule's job now, outside its slots ([`Schedules::trigger_now`](crate::Schedules::trigger_now)) |
//! | `GET /overview?window=1h\|24h` (ours) | how the queues are doing: runs per status, the oldest pending run, runs ended per bucket and per job with queue latency and duration percentiles ([`Store::run_overview`](crate::Store::run_overview); 403 under an auth that scopes runs) |
//! | `GET /openapi.json` (ours) | an OpenAPI 3.1 document of all of the above |
//!
//! [`dashboard`] serves a web dashboard over these routes (mount it beside the router).
//!
//! Errors are `{"error": "<message>"}` with upstream's status for their kind:
//! [`Error::NotFound`] 404, [`Error::Validation`] 400, [`Error::Conflict`] 409,
//! [`Error::WaitExpired`] 410, a read that
//! outlived [`HttpOptions::read_timeout`] ([`Error::Timeout`]) 503, anything else 500. An
//! unknown path or method is a plain-text `404 Not Found`, as upstream.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let durably = durably::Durably::builder().sqlite("app.db").build()?;
//! durably.init().await?;
//! let app = axum::Router::new().nest(
//!     "/api/durably",
//!     durably::http::router(durably.clone(), durably::http::HttpOptions::new()),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! [`DurableWait`]: crate::waits::DurableWait
//! [`Error::NotFound`]: crate::Error::NotFound
//! [`Error::Validation`]: crate::Error::Validation
//! [`Error::Conflict`]: crate::Error::Conflict
//! [`Error::WaitExpired`]: crate::Error::WaitExpired
//! [`Error::Timeout`]: crate::Error::Timeout

// Route helpers return `Result<_, Response>`: the error *is* the HTTP answer, built once per
// request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod auth;
mod dashboard;
mod openapi;
mod overview;
mod request;
mod responses;
mod runs;
mod schedules;
mod sse;
mod subscribe;
mod trigger;
mod waits;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub use crate::telemetry::prometheus::{PrometheusMetrics, metrics_router};
pub use async_trait::async_trait;
pub use auth::{Auth, Rejection, RunOperation, RunsSubscribeFilter};
pub use dashboard::dashboard;

use crate::durably::Durably;
use crate::run::{Labels, Progress, Run, RunStatus};
use crate::time::Timestamp;
use auth::{Authenticator, Erased, Guard, Open};
use request::Query;
use responses::{json_response, not_found_text};

/// Options of [`router`].
#[derive(Clone)]
pub struct HttpOptions {
    sse_throttle: Duration,
    keep_alive: Option<Duration>,
    body_limit: usize,
    read_timeout: Duration,
    auth: Option<Arc<dyn Authenticator>>,
    on_request: Option<RequestHook>,
    shutdown: CancellationToken,
}

/// The boxed [`HttpOptions::on_request`] hook.
type RequestHook = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), Rejection>> + Send>> + Send + Sync,
>;

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("sse_throttle", &self.sse_throttle)
            .field("keep_alive", &self.keep_alive)
            .field("body_limit", &self.body_limit)
            .field("read_timeout", &self.read_timeout)
            .field("auth", &self.auth.is_some())
            .field("on_request", &self.on_request.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            sse_throttle: Duration::from_millis(100),
            keep_alive: None,
            body_limit: 1024 * 1024,
            read_timeout: Duration::from_secs(5),
            auth: None,
            on_request: None,
            shutdown: CancellationToken::new(),
        }
    }
}

impl HttpOptions {
    /// Defaults: progress throttled to one per run per 100 ms, no keep-alive comments, 1 MiB
    /// body limit, 5 s per database read, no auth.
    pub fn new() -> Self {
        Self::default()
    }

    /// Per-run `run:progress` throttle of SSE streams (upstream `sseThrottleMs`, default
    /// 100 ms; zero sends every progress). The first and last progress of a run always go out.
    pub fn sse_throttle(mut self, throttle: Duration) -> Self {
        self.sse_throttle = throttle;
        self
    }

    /// Sends an SSE comment (`: keep-alive`) this often on idle streams, for proxies that close
    /// quiet connections. Off by default (upstream sends none).
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = Some(every);
        self
    }

    /// Largest accepted request body in bytes (default 1 MiB); larger ones get 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The longest a request's database read may take (default 5 s): `GET /runs`, and the run,
    /// steps and logs lookups of the routes that take a `runId`. A read that takes longer is
    /// cancelled in the database (PostgreSQL: `statement_timeout` and a cancel request; SQLite:
    /// `sqlite3_interrupt`) and the request answers **503 Service Unavailable** with
    /// `{"error": "get_runs was cancelled after 5000 ms, …"}`: the server is fine, the query was
    /// too costly for it (narrow it, or raise this). A read whose client disconnects is
    /// cancelled the same way at once, whatever this says.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Authenticates every request and checks each route with `auth`'s hooks.
    pub fn auth(mut self, auth: impl Auth) -> Self {
        self.auth = Some(Arc::new(Erased(Arc::new(auth))));
        self
    }

    /// Runs `hook` on every request, after authentication and before routing (upstream
    /// `onRequest`, e.g. for a lazy `migrate()`); it also runs for unknown routes. A request
    /// that authentication rejects never reaches it; a [`Rejection`] from the hook is the
    /// response.
    ///
    /// ```
    /// # use durably::http::HttpOptions;
    /// let options = HttpOptions::new().on_request(|| async {
    ///     tracing::debug!("durably API request");
    ///     Ok(())
    /// });
    /// ```
    pub fn on_request<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Rejection>> + Send + 'static,
    {
        self.on_request = Some(Arc::new(move || Box::pin(hook())));
        self
    }

    /// Ends every open SSE stream when `token` fires (for graceful server shutdown, which
    /// otherwise waits for `/runs/subscribe` streams that never end).
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }
}

/// A run as the HTTP API shows it (upstream `ClientRun`): the run without its idempotency and
/// concurrency keys, lease fields and `updatedAt`, plus `isTerminal`, `isWaiting` and `isActive`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ClientRun {
    /// Run id.
    pub id: String,
    /// Job name.
    pub job_name: String,
    /// Input.
    pub input: Value,
    /// Status.
    pub status: RunStatus,
    /// Step index bookkeeping.
    pub current_step_index: i64,
    /// Completed steps.
    pub completed_step_count: i64,
    /// Last progress.
    pub progress: Option<Progress>,
    /// Output once completed.
    pub output: Option<Value>,
    /// Error once failed.
    pub error: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// First claim time.
    pub started_at: Option<Timestamp>,
    /// Terminal time.
    pub completed_at: Option<Timestamp>,
    /// Trigger time.
    pub created_at: Timestamp,
    /// Completed, failed or cancelled.
    pub is_terminal: bool,
    /// Suspended on a durable wait.
    pub is_waiting: bool,
    /// Pending or leased.
    pub is_active: bool,
    /// The claim priority given at trigger time (durably's addition; left out when 0, so an
    /// ordinary run keeps upstream's shape).
    #[serde(default, skip_serializing_if = "is_default_priority")]
    pub priority: i32,
    /// The run that invoked this one as a child run (durably's addition; left out for other
    /// runs, so they keep upstream's shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
}

fn is_default_priority(priority: &i32) -> bool {
    *priority == 0
}

impl From<Run> for ClientRun {
    fn from(run: Run) -> Self {
        ClientRun {
            is_terminal: run.status.is_terminal(),
            is_waiting: run.status == RunStatus::Waiting,
            is_active: run.status.is_active(),
            priority: run.priority,
            parent_run_id: run.parent_run_id,
            id: run.id,
            job_name: run.job_name,
            input: run.input,
            status: run.status,
            current_step_index: run.current_step_index,
            completed_step_count: run.completed_step_count,
            progress: run.progress,
            output: run.output,
            error: run.error,
            labels: run.labels,
            started_at: run.started_at,
            completed_at: run.completed_at,
            created_at: run.created_at,
        }
    }
}

struct Shared {
    durably: Durably,
    options: HttpOptions,
}

/// The HTTP API of `durably` as an axum router; nest it under any base path
/// (`Router::new().nest("/api/durably", router(durably, options))`).
pub fn router(durably: Durably, options: HttpOptions) -> Router {
    Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(Shared { durably, options }))
}

async fn dispatch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // 1. authenticate (before routing, as upstream)
    let guard: Box<dyn Guard> = match &shared.options.auth {
        Some(auth) => match auth.authenticate(&parts).await {
            Ok(guard) => guard,
            Err(rejection) => return rejection.into_response(),
        },
        None => Box::new(Open),
    };
    // 2. the request hook (after authentication, as upstream)
    if let Some(hook) = &shared.options.on_request
        && let Err(rejection) = hook().await
    {
        return rejection.into_response();
    }
    // 3. route
    let query = Query::parse(parts.uri.query().unwrap_or(""));
    let path = parts.uri.path();
    let guard = guard.as_ref();
    let shared = shared.as_ref();
    let reply = match (&parts.method, path) {
        (&Method::POST, "/trigger") => trigger::trigger(shared, guard, &parts.headers, body).await,
        (&Method::GET, "/runs") => runs::list_runs(shared, guard, &query).await,
        (&Method::GET, "/run") => runs::get_run(shared, guard, &query).await,
        (&Method::GET, "/steps") => runs::get_steps(shared, guard, &query).await,
        (&Method::GET, "/attempts") => runs::get_step_attempts(shared, guard, &query).await,
        (&Method::GET, "/logs") => runs::get_logs(shared, guard, &query).await,
        (&Method::GET, "/waits") => waits::list_waits(shared, guard, &query).await,
        (&Method::GET, "/wait") => waits::get_wait(shared, guard, &query).await,
        (&Method::POST, "/signal") => waits::signal(shared, guard, &query, body).await,
        (&Method::POST, "/retrigger") => runs::retrigger(shared, guard, &query).await,
        (&Method::POST, "/resume") => runs::resume(shared, guard, &query).await,
        (&Method::POST, "/wake") => runs::wake(shared, guard, &query).await,
        (&Method::POST, "/cancel") => runs::cancel(shared, guard, &query).await,
        (&Method::DELETE, "/run") => runs::delete_run(shared, guard, &query).await,
        (&Method::GET, "/subscribe") => subscribe::subscribe(shared, guard, &query).await,
        (&Method::GET, "/runs/subscribe") => subscribe::runs_subscribe(shared, guard, &query).await,
        (&Method::GET, "/jobs") => Ok(list_jobs(shared)),
        (&Method::GET, "/overview") => overview::get(shared, guard, &query).await,
        (&Method::GET, "/schedules") => schedules::list(shared).await,
        (&Method::GET, "/schedule") => schedules::get(shared, &query).await,
        (&Method::POST, "/schedules/pause") => schedules::pause(shared, &query).await,
        (&Method::POST, "/schedules/resume") => schedules::resume(shared, &query).await,
        (&Method::POST, "/schedules/trigger") => {
            schedules::trigger(shared, guard, &parts.headers, &query).await
        }
        (&Method::GET, "/openapi.json") => Ok(json_response(
            StatusCode::OK,
            &openapi::document(&shared.durably),
        )),
        _ => Ok(not_found_text()),
    };
    reply.unwrap_or_else(|response| response)
}

/// `GET /jobs`: the registered jobs and the JSON Schema of their input.
fn list_jobs(shared: &Shared) -> Response {
    let jobs: Vec<Value> = shared
        .durably
        .job_names()
        .into_iter()
        .filter_map(|name| shared.durably.get_job(&name))
        .map(|job| json!({ "name": job.name, "inputSchema": job.input_schema }))
        .collect();
    json_response(StatusCode::OK, &jobs)
}
