//! Auth hooks (upstream `AuthConfig`): authenticate every request, then check triggers, run
//! access and list scopes. Any hook may reject with any status.

use std::cell::Cell;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use crate::run::{Labels, Run, RunFilter};
use crate::waits::DurableWait;

tokio::task_local! {
    /// Set by the default [`Auth::on_run_access`] while a request's guard asks it: tells the
    /// wait routes that the configured auth has no run-access hook of its own.
    static DEFAULT_RUN_ACCESS: Cell<bool>;
}

/// A hook's refusal: the HTTP response sent instead of performing the request (upstream: a
/// thrown `Response`). It keeps its status on every route, streams included.
#[derive(Debug)]
pub struct Rejection {
    response: Response,
}

impl Rejection {
    /// A rejection with `status` and the body `{"error": message}`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let body = serde_json::json!({ "error": message.into() }).to_string();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Rejection { response }
    }

    /// 401 `{"error": message}`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403 `{"error": message}`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404 `{"error": message}` (e.g. to hide that another tenant's run exists).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Sends `response` verbatim.
    pub fn from_response(response: Response) -> Self {
        Rejection { response }
    }

    /// The status this rejection answers with.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The response sent to the client.
    pub fn into_response(self) -> Response {
        self.response
    }
}

impl From<Response> for Rejection {
    fn from(response: Response) -> Self {
        Rejection::from_response(response)
    }
}

/// What a request wants to do with a run, passed to [`Auth::on_run_access`]
/// (upstream `RunOperation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunOperation {
    /// `GET /run`.
    Read,
    /// `GET /subscribe`.
    Subscribe,
    /// `GET /steps`.
    Steps,
    /// `POST /retrigger`.
    Retrigger,
    /// `POST /cancel`.
    Cancel,
    /// `DELETE /run`.
    Delete,
    /// `GET /waits`, `GET /wait` (upstream v4).
    Waits,
    /// `POST /signal` (upstream v4).
    Signal,
    /// `POST /resume` (durably for Rust extension): puts a failed run back to `pending` to
    /// continue from its failed step. Allowed by the default hook, as
    /// [`RunOperation::Retrigger`]; a hook that allows unknown operations through a catch-all
    /// arm allows this one too, so a hook guarding `Retrigger` should name `Resume` beside it.
    Resume,
    /// `POST /wake` (durably for Rust extension): signals the timer a waiting run waits on
    /// (a delay, a retry backoff, a sleep) so that it starts or continues now. Allowed by the
    /// default hook, as [`RunOperation::Resume`]; a hook guarding `Retrigger` should name
    /// `Wake` beside it.
    Wake,
}

impl RunOperation {
    /// Upstream's string: `read`, `subscribe`, `steps`, `retrigger`, `cancel`, `delete`,
    /// `waits`, `signal`; and ours, `resume`, `wake`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOperation::Read => "read",
            RunOperation::Subscribe => "subscribe",
            RunOperation::Steps => "steps",
            RunOperation::Retrigger => "retrigger",
            RunOperation::Cancel => "cancel",
            RunOperation::Delete => "delete",
            RunOperation::Waits => "waits",
            RunOperation::Signal => "signal",
            RunOperation::Resume => "resume",
            RunOperation::Wake => "wake",
        }
    }

    /// The wait operations, which need an [`Auth::on_run_access`] of the auth's own.
    fn needs_run_access_hook(self) -> bool {
        matches!(self, RunOperation::Waits | RunOperation::Signal)
    }
}

/// The filter of `GET /runs/subscribe` (upstream `RunsSubscribeFilter`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunsSubscribeFilter {
    /// Only events of these jobs (none = all).
    pub job_names: Vec<String>,
    /// Only events whose labels contain every one of these.
    pub labels: Labels,
}

/// Auth hooks, in upstream's order: [`authenticate`](Auth::authenticate) runs first on every
/// request (before routing); then, after the route validated its input, the route's hook:
///
/// | route | hook |
/// |---|---|
/// | `POST /trigger` | [`on_trigger`](Auth::on_trigger) (after the `jobName` check and job lookup) |
/// | `GET /run`, `GET /steps`, `GET /attempts`, `GET /logs`, `GET /subscribe`, `POST /retrigger`, `POST /resume`, `POST /wake`, `POST /cancel`, `DELETE /run` | [`on_run_access`](Auth::on_run_access) (after the run was loaded) |
/// | `GET /waits`, `GET /wait`, `POST /signal` | [`on_run_access`](Auth::on_run_access) with [`RunOperation::Waits`] or [`RunOperation::Signal`], which must be implemented (see there) |
/// | `POST /signal` | then [`on_signal`](Auth::on_signal) (after the wait was found and the body checked) |
/// | `GET /runs` | [`scope_runs`](Auth::scope_runs) (its result is the filter used) |
/// | `GET /runs/subscribe` | [`scope_runs_subscribe`](Auth::scope_runs_subscribe) (defaults to `scope_runs`) |
/// | `POST /schedules/trigger` | [`on_trigger`](Auth::on_trigger) with the body a `POST /trigger` of the run would have (`{"jobName", "input", "labels"}`, the schedule's, `durably.schedule` included) |
/// | `GET /jobs`, `GET /schedules`, `GET /schedule`, `POST /schedules/pause`, `POST /schedules/resume` | none: [`authenticate`](Auth::authenticate) only (schedules are not runs; reject in `authenticate` from the request's path to restrict them) |
///
/// Unlike upstream, every hook runs whenever auth is configured (upstream skipped them when
/// `authenticate` returned `undefined`), and a rejection keeps its status on streams too.
///
/// ```
/// use durably::http::{Auth, Rejection, RunOperation};
/// use durably::{Run, RunFilter};
/// use axum::http::request::Parts;
///
/// struct Tenants;
///
/// #[async_trait::async_trait]
/// impl Auth for Tenants {
///     type Context = String; // the tenant id
///
///     async fn authenticate(&self, request: &Parts) -> Result<String, Rejection> {
///         request.headers.get("x-tenant")
///             .and_then(|v| v.to_str().ok())
///             .map(str::to_owned)
///             .ok_or_else(|| Rejection::unauthorized("missing x-tenant"))
///     }
///
///     async fn on_run_access(&self, tenant: &String, run: &Run, _: RunOperation) -> Result<(), Rejection> {
///         if run.labels.get("tenant") == Some(tenant) { Ok(()) } else { Err(Rejection::not_found("Run not found")) }
///     }
///
///     async fn scope_runs(&self, tenant: &String, filter: RunFilter) -> Result<RunFilter, Rejection> {
///         Ok(filter.label("tenant", tenant.clone()))
///     }
/// }
/// ```
#[async_trait]
pub trait Auth: Send + Sync + 'static {
    /// What [`authenticate`](Auth::authenticate) learns about the caller (user, tenant, …).
    type Context: Send + Sync + 'static;

    /// Identifies the caller from the request head; runs first on every request.
    async fn authenticate(&self, request: &Parts) -> Result<Self::Context, Rejection>;

    /// Checks a `POST /trigger`; `body` is the parsed request body.
    async fn on_trigger(&self, _context: &Self::Context, _body: &Value) -> Result<(), Rejection> {
        Ok(())
    }

    /// Checks access to one run.
    ///
    /// The default allows every operation but the wait routes' ([`RunOperation::Waits`],
    /// [`RunOperation::Signal`]): as upstream, those answer `400 {"error": "Wait access
    /// requires onRunAccess"}` when auth is configured without a run-access hook of its own, so
    /// that signalling a run is never open by omission.
    async fn on_run_access(
        &self,
        _context: &Self::Context,
        _run: &Run,
        _operation: RunOperation,
    ) -> Result<(), Rejection> {
        let _ = DEFAULT_RUN_ACCESS.try_with(|ran| ran.set(true));
        Ok(())
    }

    /// Checks a `POST /signal` (upstream `onSignal`), after [`on_run_access`](Auth::on_run_access)
    /// allowed [`RunOperation::Signal`], the wait was found in the run and the body was checked;
    /// `payload` is the signal's payload (`null` included). Allows by default.
    async fn on_signal(
        &self,
        _context: &Self::Context,
        _run: &Run,
        _wait: &DurableWait,
        _signal_id: &str,
        _payload: &Value,
    ) -> Result<(), Rejection> {
        Ok(())
    }

    /// Narrows `GET /runs`; the returned filter is the one used.
    async fn scope_runs(
        &self,
        _context: &Self::Context,
        filter: RunFilter,
    ) -> Result<RunFilter, Rejection> {
        Ok(filter)
    }

    /// Narrows `GET /runs/subscribe`. By default calls [`scope_runs`](Auth::scope_runs) with
    /// the job names and labels and keeps only those of its result (as upstream).
    async fn scope_runs_subscribe(
        &self,
        context: &Self::Context,
        filter: RunsSubscribeFilter,
    ) -> Result<RunsSubscribeFilter, Rejection> {
        let scoped = self
            .scope_runs(
                context,
                RunFilter {
                    job_names: filter.job_names,
                    labels: filter.labels,
                    ..RunFilter::default()
                },
            )
            .await?;
        Ok(RunsSubscribeFilter {
            job_names: scoped.job_names,
            labels: scoped.labels,
        })
    }
}

/// The hooks bound to one authenticated request.
#[async_trait]
pub(crate) trait Guard: Send + Sync {
    async fn on_trigger(&self, body: &Value) -> Result<(), Rejection>;
    async fn on_run_access(&self, run: &Run, operation: RunOperation) -> Result<(), Rejection>;
    async fn on_signal(
        &self,
        run: &Run,
        wait: &DurableWait,
        signal_id: &str,
        payload: &Value,
    ) -> Result<(), Rejection>;
    async fn scope_runs(&self, filter: RunFilter) -> Result<RunFilter, Rejection>;
    async fn scope_runs_subscribe(
        &self,
        filter: RunsSubscribeFilter,
    ) -> Result<RunsSubscribeFilter, Rejection>;
}

/// An [`Auth`] with its context type erased.
#[async_trait]
pub(crate) trait Authenticator: Send + Sync {
    async fn authenticate(&self, request: &Parts) -> Result<Box<dyn Guard>, Rejection>;
}

pub(crate) struct Erased<A>(pub(crate) Arc<A>);

struct Session<A: Auth> {
    auth: Arc<A>,
    context: A::Context,
}

#[async_trait]
impl<A: Auth> Authenticator for Erased<A> {
    async fn authenticate(&self, request: &Parts) -> Result<Box<dyn Guard>, Rejection> {
        let context = self.0.authenticate(request).await?;
        Ok(Box::new(Session {
            auth: self.0.clone(),
            context,
        }))
    }
}

#[async_trait]
impl<A: Auth> Guard for Session<A> {
    async fn on_trigger(&self, body: &Value) -> Result<(), Rejection> {
        self.auth.on_trigger(&self.context, body).await
    }
    async fn on_run_access(&self, run: &Run, operation: RunOperation) -> Result<(), Rejection> {
        let (result, defaulted) = DEFAULT_RUN_ACCESS
            .scope(Cell::new(false), async {
                let result = self.auth.on_run_access(&self.context, run, operation).await;
                (result, DEFAULT_RUN_ACCESS.with(Cell::get))
            })
            .await;
        if defaulted && operation.needs_run_access_hook() {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "Wait access requires onRunAccess",
            ));
        }
        result
    }
    async fn on_signal(
        &self,
        run: &Run,
        wait: &DurableWait,
        signal_id: &str,
        payload: &Value,
    ) -> Result<(), Rejection> {
        self.auth
            .on_signal(&self.context, run, wait, signal_id, payload)
            .await
    }
    async fn scope_runs(&self, filter: RunFilter) -> Result<RunFilter, Rejection> {
        self.auth.scope_runs(&self.context, filter).await
    }
    async fn scope_runs_subscribe(
        &self,
        filter: RunsSubscribeFilter,
    ) -> Result<RunsSubscribeFilter, Rejection> {
        self.auth.scope_runs_subscribe(&self.context, filter).await
    }
}

/// The guard used when no auth is configured: allows everything unchanged.
pub(crate) struct Open;

#[async_trait]
impl Guard for Open {
    async fn on_trigger(&self, _body: &Value) -> Result<(), Rejection> {
        Ok(())
    }
    async fn on_run_access(&self, _run: &Run, _operation: RunOperation) -> Result<(), Rejection> {
        Ok(())
    }
    async fn on_signal(
        &self,
        _run: &Run,
        _wait: &DurableWait,
        _signal_id: &str,
        _payload: &Value,
    ) -> Result<(), Rejection> {
        Ok(())
    }
    async fn scope_runs(&self, filter: RunFilter) -> Result<RunFilter, Rejection> {
        Ok(filter)
    }
    async fn scope_runs_subscribe(
        &self,
        filter: RunsSubscribeFilter,
    ) -> Result<RunsSubscribeFilter, Rejection> {
        Ok(filter)
    }
}
