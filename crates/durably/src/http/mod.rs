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

// Route helpers return `Result<_, Response>`: the error *is* the HTTP answer, built once per
// request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod auth;
mod dashboard;
mod openapi;
mod overview;
mod schedules;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub use crate::telemetry::prometheus::{PrometheusMetrics, metrics_router};
pub use async_trait::async_trait;
pub use auth::{Auth, Rejection, RunOperation, RunsSubscribeFilter};
pub use dashboard::dashboard;

use crate::durably::Durably;
use crate::error::Error;
use crate::events::Event;
use crate::run::{
    Coalesce, Disposition, Labels, Progress, Run, RunFilter, RunStatus, TriggerOptions,
};
use crate::time::Timestamp;
use crate::waits::{DurableWait, SignalDisposition};
use auth::{Authenticator, Erased, Guard, Open};

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

/// Body of a successful `POST /trigger` (key order as upstream).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TriggerResponse {
    run_id: String,
    disposition: Disposition,
    /// The run's status: `pending` for a created run, the reused run's for a coalesced or
    /// idempotent one.
    status: RunStatus,
}

/// Body of a successful `POST /retrigger` (key order as upstream), `POST /resume` and
/// `POST /wake` (the same shape; their `runId` is the run's own).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RetriggerResponse {
    success: bool,
    run_id: String,
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

type Reply = Result<Response, Response>;

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not serialize the response: {error}"),
        ),
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

/// The HTTP status of an error (upstream §8.3 with SPEC §3's fixes).
fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Validation(_) => StatusCode::BAD_REQUEST,
        Error::Conflict(_) => StatusCode::CONFLICT,
        // Upstream's `WaitExpiredError`: the wait's deadline passed before the signal.
        Error::WaitExpired { .. } => StatusCode::GONE,
        // A read that outlived `HttpOptions::read_timeout`.
        Error::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn durably_error(error: Error) -> Response {
    let status = status_of(&error);
    if status.is_server_error() {
        tracing::warn!(%error, "durably HTTP request failed");
    }
    error_response(status, &error.to_string())
}

fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, message)
}

fn not_found_text() -> Response {
    let mut response = Response::new(Body::from("Not Found"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain;charset=UTF-8"),
    );
    response
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
        (&Method::POST, "/trigger") => trigger(shared, guard, &parts.headers, body).await,
        (&Method::GET, "/runs") => list_runs(shared, guard, &query).await,
        (&Method::GET, "/run") => get_run(shared, guard, &query).await,
        (&Method::GET, "/steps") => get_steps(shared, guard, &query).await,
        (&Method::GET, "/attempts") => get_step_attempts(shared, guard, &query).await,
        (&Method::GET, "/logs") => get_logs(shared, guard, &query).await,
        (&Method::GET, "/waits") => list_waits(shared, guard, &query).await,
        (&Method::GET, "/wait") => get_wait(shared, guard, &query).await,
        (&Method::POST, "/signal") => signal(shared, guard, &query, body).await,
        (&Method::POST, "/retrigger") => retrigger(shared, guard, &query).await,
        (&Method::POST, "/resume") => resume(shared, guard, &query).await,
        (&Method::POST, "/wake") => wake(shared, guard, &query).await,
        (&Method::POST, "/cancel") => cancel(shared, guard, &query).await,
        (&Method::DELETE, "/run") => delete_run(shared, guard, &query).await,
        (&Method::GET, "/subscribe") => subscribe(shared, guard, &query).await,
        (&Method::GET, "/runs/subscribe") => runs_subscribe(shared, guard, &query).await,
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

/// Decoded query pairs in order (`URLSearchParams` semantics: `+` is a space).
struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(query: &str) -> Self {
        Query {
            pairs: form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        }
    }

    fn first(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `label.<key>=<value>` pairs; a repeated key keeps the last value.
    fn labels(&self) -> Labels {
        self.pairs
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("label.").map(|k| (k.to_owned(), v.clone())))
            .collect()
    }
}

/// JavaScript's `parseInt(text, 10)` for the non-negative integers of `limit`/`offset`:
/// leading whitespace, an optional sign, then the longest run of digits (`"5abc"` → 5,
/// `"1.5"` → 1). `None` for NaN or a negative number.
fn parse_js_int(text: &str) -> Option<u64> {
    let trimmed = text.trim_start();
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let digits = &digits[..end];
    if digits.is_empty() {
        return None;
    }
    let all_zero = digits.bytes().all(|b| b == b'0');
    if negative && !all_zero {
        return None;
    }
    Some(digits.parse::<u64>().unwrap_or(u64::MAX))
}

fn page_param(query: &Query, key: &str) -> Result<Option<u64>, Response> {
    match query.first(key) {
        None | Some("") => Ok(None),
        Some(text) => parse_js_int(text)
            .map(Some)
            .ok_or_else(|| bad_request(&format!("Invalid {key}: must be a non-negative integer"))),
    }
}

/// A time-range bound of `GET /runs` (`createdSince`, `createdBefore`): an RFC 3339 timestamp
/// or milliseconds since the Unix epoch (at most 15 digits). An instant outside the years 0 to
/// 9999 (which no run is created in) counts as the nearest one inside them. Empty or absent:
/// no bound.
fn time_param(query: &Query, key: &str) -> Result<Option<Timestamp>, Response> {
    let text = match query.first(key) {
        None | Some("") => return Ok(None),
        Some(text) => text,
    };
    let parsed = if text.bytes().all(|b| b.is_ascii_digit()) {
        (text.len() <= MAX_EPOCH_DIGITS)
            .then(|| text.parse::<i64>().ok().map(Timestamp::from_millis))
            .flatten()
    } else {
        Timestamp::parse(text)
    };
    match parsed {
        Some(at) => Ok(Some(at.clamp(Timestamp::EARLIEST, Timestamp::LATEST))),
        None => {
            let shown: String = text.chars().take(40).collect();
            let more = if shown.len() < text.len() { "…" } else { "" };
            Err(bad_request(&format!(
                "Invalid {key}: \"{shown}{more}\" must be an RFC 3339 timestamp \
                 (2026-03-29T12:34:56.789Z) or milliseconds since the Unix epoch \
                 (at most {MAX_EPOCH_DIGITS} digits)"
            )))
        }
    }
}

/// The most digits of a time bound in milliseconds since the epoch (the year 9999 has 15).
const MAX_EPOCH_DIGITS: usize = 15;

fn run_id_param(query: &Query) -> Result<String, Response> {
    match query.first("runId") {
        Some(id) if !id.is_empty() => Ok(id.to_owned()),
        _ => Err(bad_request("runId query parameter is required")),
    }
}

/// A read bounded by [`HttpOptions::read_timeout`]: dropped (which cancels it in the database)
/// and answered with [`Error::Timeout`] once the time is up.
async fn within<T>(
    shared: &Shared,
    operation: &str,
    read: impl Future<Output = crate::Result<T>>,
) -> crate::Result<T> {
    let timeout = shared.options.read_timeout;
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(crate::store::read_timeout(operation, timeout)))
}

/// Loads the run named by `runId` and asks the run-access hook.
async fn accessible_run(
    shared: &Shared,
    guard: &dyn Guard,
    query: &Query,
    operation: RunOperation,
) -> Result<Run, Response> {
    let run_id = run_id_param(query)?;
    let run = within(shared, "get_run", shared.durably.get_run(&run_id))
        .await
        .map_err(durably_error)?
        .ok_or_else(|| error_response(StatusCode::NOT_FOUND, "Run not found"))?;
    guard
        .on_run_access(&run, operation)
        .await
        .map_err(Rejection::into_response)?;
    Ok(run)
}

async fn read_body(shared: &Shared, body: Body) -> Result<Value, Response> {
    let limit = shared.options.body_limit;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request body too large: the limit is {limit} bytes"),
        )
    };
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice(&bytes).map_err(|e| bad_request(&format!("Invalid JSON body: {e}")))
}

fn optional_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad_request(&format!(
            "{key} must be a string (got {other})"
        ))),
    }
}

fn trigger_options(body: &Map<String, Value>) -> Result<TriggerOptions, Response> {
    let mut options = TriggerOptions::new();
    options.idempotency_key = optional_string(body, "idempotencyKey")?;
    options.concurrency_key = optional_string(body, "concurrencyKey")?;
    options.labels = match body.get("labels") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            let mut labels = Labels::new();
            for (key, value) in map {
                match value {
                    Value::String(s) => {
                        labels.insert(key.clone(), s.clone());
                    }
                    other => {
                        return Err(bad_request(&format!(
                            "labels: Invalid input: the value of label \"{key}\" must be a string (got {other})"
                        )));
                    }
                }
            }
            Some(labels)
        }
        Some(other) => {
            return Err(bad_request(&format!(
                "labels: Invalid input: expected an object of string values (got {other})"
            )));
        }
    };
    options.coalesce = match body.get("coalesce") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<Coalesce>().map_err(durably_error)?),
        Some(other) => {
            return Err(bad_request(&format!(
                "Invalid coalesce value: '{other}'. Valid values: 'skip', 'queue', 'active'"
            )));
        }
    };
    // durably's additions: a delayed run (`startAt`, an ISO 8601 time, or `delayMs`).
    options.start_at = match (body.get("startAt"), body.get("delayMs")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        (Some(Value::String(text)), None | Some(Value::Null)) => {
            Some(crate::Timestamp::parse(text).ok_or_else(|| {
                bad_request(&format!(
                    "startAt must be an ISO 8601 time such as 2026-01-31T12:00:00.000Z (got \"{text}\")"
                ))
            })?)
        }
        (None | Some(Value::Null), Some(delay)) => match delay.as_u64() {
            Some(ms) if ms <= MAX_DELAY_MS => {
                Some(crate::Timestamp::now() + std::time::Duration::from_millis(ms))
            }
            _ => {
                return Err(bad_request(&format!(
                    "delayMs must be an integer between 0 and {MAX_DELAY_MS} (got {delay})"
                )));
            }
        },
        (Some(_), None | Some(Value::Null)) => {
            return Err(bad_request("startAt must be a string (an ISO 8601 time)"));
        }
        (Some(_), Some(_)) => return Err(bad_request("Give startAt or delayMs, not both")),
    };
    options.debounce = match body.get("debounce") {
        None | Some(Value::Null) => None,
        Some(Value::Object(debounce)) => Some(debounce_option(debounce)?),
        Some(other) => {
            return Err(bad_request(&format!(
                "debounce must be an object {{\"key\", \"periodMs\", \"maxWaitMs\"?}} (got {other})"
            )));
        }
    };
    options.priority = match body.get("priority") {
        None | Some(Value::Null) => 0,
        Some(value) => json_integer(value)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| {
                bad_request(&format!(
                    "priority must be an integer between {} and {} (higher runs first; got {value})",
                    i32::MIN,
                    i32::MAX
                ))
            })?,
    };
    Ok(options)
}

/// A JSON number with an integer value, as JSON Schema's `integer` reads it: `6` and `6.0`.
fn json_integer(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(f))
            .map(|f| f as i64)
    })
}

/// The `debounce` field of a trigger: `{ "key", "periodMs", "maxWaitMs"? }`.
fn debounce_option(debounce: &Map<String, Value>) -> Result<crate::Debounce, Response> {
    let key = optional_string(debounce, "key")?
        .ok_or_else(|| bad_request("debounce.key is required (a string)"))?;
    let millis = |field: &str| -> Result<Option<u64>, Response> {
        match debounce.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match value.as_u64() {
                Some(ms) if (1..=MAX_DELAY_MS).contains(&ms) => Ok(Some(ms)),
                _ => Err(bad_request(&format!(
                    "debounce.{field} must be an integer between 1 and {MAX_DELAY_MS} (got {value})"
                ))),
            },
        }
    };
    let period = millis("periodMs")?
        .ok_or_else(|| bad_request("debounce.periodMs is required (milliseconds)"))?;
    let mut option = crate::Debounce::new(key, std::time::Duration::from_millis(period));
    if let Some(max_wait) = millis("maxWaitMs")? {
        option = option.max_wait(std::time::Duration::from_millis(max_wait));
    }
    Ok(option)
}

/// The longest `delayMs` of a trigger: 10 years.
const MAX_DELAY_MS: u64 = 10 * 366 * 24 * 3600 * 1000;

/// `POST /trigger`. The run's trigger span is a child of the caller's W3C trace context (the
/// `traceparent` and `tracestate` headers) when it sends one (see `crate::telemetry`).
async fn trigger(
    shared: &Shared,
    guard: &dyn Guard,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Reply {
    let body = read_body(shared, body).await?;
    let job_name = match body.get("jobName") {
        None | Some(Value::Null) => return Err(bad_request("jobName is required")),
        Some(Value::String(name)) if name.is_empty() => {
            return Err(bad_request("jobName is required"));
        }
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(bad_request(&format!(
                "jobName must be a string (got {other})"
            )));
        }
    };
    crate::limits::check_text("jobName", &job_name).map_err(durably_error)?;
    if shared.durably.get_job(&job_name).is_none() {
        return Err(error_response(
            StatusCode::NOT_FOUND,
            &format!("Job not found: {job_name}"),
        ));
    }
    guard
        .on_trigger(&body)
        .await
        .map_err(Rejection::into_response)?;
    let Value::Object(fields) = &body else {
        return Err(bad_request("jobName is required"));
    };
    let options = trigger_options(fields)?;
    let input = fields.get("input").cloned().unwrap_or(Value::Null);
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let parent = crate::telemetry::Parent::from_http(header("traceparent"), header("tracestate"));
    let result = shared
        .durably
        .trigger_json_under(&job_name, input, options, &parent)
        .await
        .map_err(durably_error)?;
    Ok(json_response(
        StatusCode::OK,
        &TriggerResponse {
            run_id: result.run.id,
            disposition: result.disposition,
            status: result.run.status,
        },
    ))
}

async fn list_runs(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let mut filter = RunFilter {
        job_names: query.all("jobName"),
        labels: query.labels(),
        ..RunFilter::default()
    };
    for status in query.all("status") {
        let parsed = RunStatus::ALL.into_iter().find(|s| s.as_str() == status);
        match parsed {
            Some(status) => filter.statuses.push(status),
            None if status.is_empty() => {
                return Err(bad_request(
                    "Invalid status: empty value. Must be one of: waiting, pending, leased, completed, failed, cancelled",
                ));
            }
            None => {
                return Err(bad_request(&format!(
                    "Invalid status: {status}. Must be one of: waiting, pending, leased, completed, failed, cancelled"
                )));
            }
        }
    }
    filter.limit = page_param(query, "limit")?;
    filter.offset = page_param(query, "offset")?;
    // ours: the child runs of one run (an empty value filters nothing, as an absent one)
    if let Some(parent) = query.first("parentRunId").filter(|id| !id.is_empty()) {
        crate::limits::check_text("parentRunId", parent).map_err(durably_error)?;
        filter.parent_run_id = Some(parent.to_owned());
    }
    // ours: runs whose id starts with this text (an empty value filters nothing)
    if let Some(prefix) = query.first("idPrefix").filter(|p| !p.is_empty()) {
        crate::limits::check_text("idPrefix", prefix).map_err(durably_error)?;
        filter.id_prefix = Some(prefix.to_owned());
    }
    // ours: the time range, created at or after `createdSince` and before `createdBefore`
    filter.created_since = time_param(query, "createdSince")?;
    filter.created_before = time_param(query, "createdBefore")?;
    let filter = guard
        .scope_runs(filter)
        .await
        .map_err(Rejection::into_response)?;
    let runs = shared
        .durably
        .get_runs_within(&filter, shared.options.read_timeout)
        .await
        .map_err(durably_error)?;
    let runs: Vec<ClientRun> = runs.into_iter().map(ClientRun::from).collect();
    Ok(json_response(StatusCode::OK, &runs))
}

async fn get_run(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Read).await?;
    Ok(json_response(StatusCode::OK, &ClientRun::from(run)))
}

async fn get_steps(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Steps).await?;
    let steps = within(shared, "get_steps", shared.durably.get_steps(&run.id))
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &steps))
}

async fn get_step_attempts(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Steps).await?;
    let attempts = within(
        shared,
        "get_step_attempts",
        shared.durably.get_step_attempts(&run.id),
    )
    .await
    .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &attempts))
}

async fn get_logs(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Read).await?;
    let logs = within(shared, "get_logs", shared.durably.get_logs(&run.id))
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &logs))
}

async fn retrigger(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Retrigger).await?;
    let new_run = shared
        .durably
        .retrigger(&run.id)
        .await
        .map_err(durably_error)?;
    acted_on(new_run.id)
}

/// `{ "success": true, "runId" }`: the answer of the routes that act on a run and name the run
/// to follow (retrigger's new run, a resumed or woken run).
fn acted_on(run_id: String) -> Reply {
    Ok(json_response(
        StatusCode::OK,
        &RetriggerResponse {
            success: true,
            run_id,
        },
    ))
}

async fn resume(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Resume).await?;
    let resumed = shared
        .durably
        .resume(&run.id)
        .await
        .map_err(durably_error)?;
    acted_on(resumed.id)
}

async fn wake(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Wake).await?;
    let woken = shared.durably.wake(&run.id).await.map_err(durably_error)?;
    acted_on(woken.id)
}

async fn cancel(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Cancel).await?;
    shared
        .durably
        .cancel(&run.id)
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &json!({ "success": true })))
}

async fn delete_run(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Delete).await?;
    shared
        .durably
        .delete_run(&run.id)
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &json!({ "success": true })))
}

/// Body of a successful `POST /signal` (key order as upstream).
#[derive(Serialize)]
struct SignalResponse {
    wait: DurableWait,
    disposition: SignalDisposition,
}

async fn list_waits(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Waits).await?;
    let waits = within(shared, "get_waits", shared.durably.get_waits(&run.id))
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &waits))
}

/// The wait named by `waitId`, which must belong to `run` (upstream v4 §9.1).
async fn wait_of(shared: &Shared, run: &Run, query: &Query) -> Result<DurableWait, Response> {
    let wait_id = match query.first("waitId") {
        Some(id) if !id.is_empty() => id,
        _ => return Err(bad_request("waitId query parameter is required")),
    };
    within(shared, "get_wait", shared.durably.get_wait(wait_id))
        .await
        .map_err(durably_error)?
        .filter(|wait| wait.run_id == run.id)
        .ok_or_else(|| error_response(StatusCode::NOT_FOUND, "Wait not found"))
}

async fn get_wait(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Waits).await?;
    let wait = wait_of(shared, &run, query).await?;
    Ok(json_response(StatusCode::OK, &wait))
}

/// `POST /signal`: the checks of upstream v4 §9.1 in its order.
async fn signal(shared: &Shared, guard: &dyn Guard, query: &Query, body: Body) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Signal).await?;
    let wait = wait_of(shared, &run, query).await?;
    let limit = shared.options.body_limit;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request body too large: the limit is {limit} bytes"),
        )
    })?;
    let body: Value =
        serde_json::from_slice(&bytes).map_err(|_| bad_request("Invalid JSON body"))?;
    let Value::Object(mut fields) = body else {
        return Err(bad_request("Signal body must be an object"));
    };
    let signal_id = match fields.get("signalId") {
        Some(Value::String(id)) if crate::waits::validate_signal_id(id).is_ok() => id.clone(),
        _ => return Err(bad_request("signalId must be non-empty")),
    };
    let Some(payload) = fields.remove("payload") else {
        return Err(bad_request("payload is required"));
    };
    // Any JSON value parsed from text is a valid payload (upstream §4.6 refuses only what text
    // cannot carry: cycles, accessors, non-finite numbers, …).
    guard
        .on_signal(&run, &wait, &signal_id, &payload)
        .await
        .map_err(Rejection::into_response)?;
    let signalled = shared
        .durably
        .signal(&wait.id, payload, &signal_id)
        .await
        .map_err(durably_error)?;
    Ok(json_response(
        StatusCode::OK,
        &SignalResponse {
            wait: signalled.wait,
            disposition: signalled.disposition,
        },
    ))
}

fn stream_options(shared: &Shared) -> sse::StreamOptions {
    sse::StreamOptions {
        throttle: shared.options.sse_throttle,
        keep_alive: shared.options.keep_alive,
        shutdown: shared.options.shutdown.clone(),
    }
}

async fn subscribe(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Subscribe).await?;
    let events = shared
        .durably
        .subscribe(&run.id)
        .filter_map(|event| std::future::ready(sse::Item::full(&event)));
    Ok(sse::response(events, stream_options(shared)))
}

fn matches(filter: &RunsSubscribeFilter, event: &Event) -> bool {
    let Some((job_name, labels)) = event_job_and_labels(event) else {
        return false;
    };
    (filter.job_names.is_empty() || filter.job_names.iter().any(|n| n == job_name))
        && filter
            .labels
            .iter()
            .all(|(k, v)| labels.is_some_and(|labels| labels.get(k) == Some(v)))
}

fn event_job_and_labels(event: &Event) -> Option<(&str, Option<&Labels>)> {
    use crate::events::EventKind as K;
    Some(match &event.kind {
        K::RunTrigger {
            job_name, labels, ..
        }
        | K::RunCoalesced {
            job_name, labels, ..
        }
        | K::RunWaiting {
            job_name, labels, ..
        }
        | K::RunLeased {
            job_name, labels, ..
        }
        | K::RunLeaseRenewed {
            job_name, labels, ..
        }
        | K::RunComplete {
            job_name, labels, ..
        }
        | K::RunFail {
            job_name, labels, ..
        }
        | K::RunCancel {
            job_name, labels, ..
        }
        | K::RunDelete {
            job_name, labels, ..
        }
        | K::RunProgress {
            job_name, labels, ..
        }
        | K::StepStart {
            job_name, labels, ..
        }
        | K::StepComplete {
            job_name, labels, ..
        }
        | K::StepFail {
            job_name, labels, ..
        }
        | K::StepCancel {
            job_name, labels, ..
        }
        | K::LogWrite {
            job_name, labels, ..
        } => (job_name.as_str(), Some(labels)),
        K::WorkerError { .. } => return None,
    })
}

async fn runs_subscribe(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let filter = RunsSubscribeFilter {
        job_names: query.all("jobName"),
        labels: query.labels(),
    };
    // The same bounds and text rules as `GET /runs`, though no query runs.
    let as_listing = RunFilter {
        job_names: filter.job_names.clone(),
        labels: filter.labels.clone(),
        ..RunFilter::default()
    };
    shared
        .durably
        .config()
        .limits
        .check_filter(&as_listing)
        .map_err(durably_error)?;
    let filter = guard
        .scope_runs_subscribe(filter)
        .await
        .map_err(Rejection::into_response)?;
    let events = shared.durably.subscribe_all().filter_map(move |event| {
        let item = if matches(&filter, &event) {
            sse::Item::slim(&event)
        } else {
            None
        };
        std::future::ready(item)
    });
    Ok(sse::response(events, stream_options(shared)))
}

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

#[cfg(test)]
mod tests {
    use super::parse_js_int;

    #[test]
    fn integers_may_be_written_as_floats() {
        use super::json_integer;
        use serde_json::json;
        assert_eq!(json_integer(&json!(6)), Some(6));
        assert_eq!(json_integer(&json!(22256918.0)), Some(22256918));
        assert_eq!(json_integer(&json!(-3.0)), Some(-3));
        assert_eq!(json_integer(&json!(1.5)), None);
        assert_eq!(json_integer(&json!(1e300)), None);
        assert_eq!(json_integer(&json!("6")), None);
    }

    #[test]
    fn parse_int_follows_javascript() {
        assert_eq!(parse_js_int("5"), Some(5));
        assert_eq!(parse_js_int("5abc"), Some(5));
        assert_eq!(parse_js_int("1.5"), Some(1));
        assert_eq!(parse_js_int(" 7"), Some(7));
        assert_eq!(parse_js_int("+3"), Some(3));
        assert_eq!(parse_js_int("0"), Some(0));
        assert_eq!(parse_js_int("-0"), Some(0));
        assert_eq!(parse_js_int("-1"), None);
        assert_eq!(parse_js_int("abc"), None);
        assert_eq!(parse_js_int("-"), None);
    }
}
