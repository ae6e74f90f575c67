#![forbid(unsafe_code)]
#![warn(missing_docs)]
// docs.rs builds with `--cfg docsrs` on nightly (`[package.metadata.docs.rs]`): each item behind
// a feature then says which one enables it.
#![cfg_attr(docsrs, feature(doc_cfg))]
//! # durably: steps that survive crashes
//!
//! A job is a named async function with serde input and output. Inside it,
//! [`step.run(name, f)`](StepContext::run) stores each step's output; when the run executes
//! again (after a crash, a restart or a lost lease) the job function runs from the top and
//! every completed step returns its stored output instead of running again. Runs live in a
//! database (embedded SQLite or PostgreSQL) shared by any number of worker processes.
//!
//! ## A job with steps, triggered and awaited
//!
//! ```
//! use durably::{Durably, Job, StepContext, TriggerOptions, WaitOptions};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: u64 }
//!
//! # #[tokio::main]
//! # async fn main() -> durably::Result<()> {
//! let durably = Durably::builder().sqlite(":memory:").build()?;
//! let ship = durably.register(Job::new("ship-order", |step: StepContext, order: Order| async move {
//!     // Stored under its name: on a re-run this returns the stored label without running.
//!     let label = step.run("print-label", |_cancel| async move {
//!         Ok(format!("label-{}", order.id))
//!     }).await?;
//!     step.progress(1, Some(2), Some("label printed")).await?;
//!     step.log().info("label printed", None).await?;
//!     step.run("notify-customer", |_cancel| async { Ok(()) }).await?;
//!     Ok(label)
//! }))?;
//! durably.init().await?; // migrate the schema, start this process's worker
//!
//! let done = ship
//!     .trigger_and_wait(
//!         Order { id: 7 },
//!         TriggerOptions::new().idempotency_key("order-7"),
//!         WaitOptions::new(),
//!     )
//!     .await?;
//! assert_eq!(done.output.as_deref(), Some("label-7"));
//! durably.stop().await; // waits for the runs in flight
//! # Ok(()) }
//! ```
//!
//! [`JobHandle::trigger`] returns at once with the stored [`Run`]; [`Durably::get_run`],
//! [`Durably::get_runs`] with a [`RunFilter`], [`Durably::on`] (events) and
//! [`Durably::subscribe`] (one run's event stream) follow it. [`TriggerOptions`] carries
//! idempotency and concurrency keys, labels and [`Coalesce`].
//!
//! ## The crash and replay promise
//!
//! - A step that completed is never run again for that run: its stored output is returned.
//!   A step's **name** is its identity, so a step inside a loop needs a name per iteration
//!   (`format!("charge-{i}")`).
//! - A step in flight when its process died runs again, whole, once another worker takes the
//!   run over (after the dead worker's lease expires, [`Config::lease_duration`], 30 s by
//!   default). Make external side effects idempotent.
//! - Code outside steps (and so a job-level `step.log()` or `step.progress` call) runs again on
//!   every execution of the run: after a crash, and after every durable wait or sleep.
//! - Every write of a worker is fenced by its lease: a worker that froze or lost its lease
//!   never lands a step, a completion or a failure after another worker took over.
//! - A failed run stays failed unless its step or job has a retry policy ([`RetryPolicy`]);
//!   [`Durably::retrigger`] starts a new run with the same input.
//!
//! In short: a completed step runs once, an interrupted one at least once. The repository's
//! `docs/guarantees.md` shows the idempotency-key pattern, and `docs/versioning.md` what
//! happens to runs in flight when steps are renamed, added, removed or reordered.
//!
//! `cargo run -p durably --example resume` shows it: a copy of the program dies inside step 2,
//! and the next process completes the run without running step 1 again.
//!
//! ## Errors
//!
//! One [`Error`] enum. A failed step is [`Error::Step`] with the step's name and its own error
//! (`source`, which a caller can downcast); waiting on a run that failed gives
//! [`Error::RunFailed`] with the run's stored message.
//!
//! ```
//! # use durably::{Durably, Error, Job, StepContext, TriggerOptions, WaitOptions};
//! # #[tokio::main]
//! # async fn main() -> durably::Result<()> {
//! # let durably = Durably::builder().sqlite(":memory:").build()?;
//! let charge = durably.register(Job::new("charge", |step: StepContext, cents: u64| async move {
//!     let charged = step.run("authorize", |_| async move {
//!         if cents > 10_000 { Err("card declined".into()) } else { Ok(cents) }
//!     }).await;
//!     if let Err(Error::Step { name, source }) = &charged {
//!         step.log().warn(format!("step {name} failed: {source}"), None).await?;
//!     }
//!     charged
//! }))?;
//! durably.init().await?;
//! let waited = charge.trigger_and_wait(50_000, TriggerOptions::new(), WaitOptions::new()).await;
//! assert!(matches!(waited, Err(Error::RunFailed { message, .. }) if message == "card declined"));
//! # durably.stop().await;
//! # Ok(()) }
//! ```
//!
//! ## Cancellation
//!
//! [`Durably::cancel`] marks the run cancelled and fires its [`CancellationToken`], which every
//! step closure receives (and [`StepContext::token`] returns); it also fires when this worker
//! loses its lease. Cancellation is cooperative: long work watches the token, and every later
//! `step.run`, progress or log call returns [`Error::Cancelled`]
//! ([`StepContext::check_cancelled`] checks between pieces of work outside steps). Whatever a
//! job does after the cancel, nothing it writes lands.
//!
//! ```
//! # use durably::{Durably, Error, Job, StepContext, WaitOptions};
//! # #[tokio::main]
//! # async fn main() -> durably::Result<()> {
//! # let durably = Durably::builder().sqlite(":memory:").build()?;
//! let watch = durably.register(Job::new("watch", |step: StepContext, _: ()| async move {
//!     step.run("wait-for-cancel", |cancel| async move {
//!         cancel.cancelled().await;
//!         Ok(())
//!     }).await?;
//!     step.check_cancelled()?;
//!     Ok(())
//! }))?;
//! durably.init().await?;
//! let run = watch.trigger(()).await?.run;
//! durably.cancel(&run.id).await?;
//! let waited = durably.wait_for_run(&run.id, WaitOptions::new()).await;
//! assert!(matches!(waited, Err(Error::Cancelled { .. })));
//! # durably.stop().await;
//! # Ok(()) }
//! ```
//!
//! ## Choosing a backend
//!
//! - **SQLite** (feature `sqlite`, the default): `.sqlite("app.db")`, or
//!   [`SqliteStore::open_with`] and [`SqliteOptions`] (e.g. [`Synchronous::Full`]) passed to
//!   [`DurablyBuilder::store`]. Embedded: one file, no server.
//! - **PostgreSQL** (feature `postgres`): `.postgres(url)`, or `PostgresStore::connect_with` and
//!   `PostgresOptions`. Many workers on many hosts, woken by `LISTEN/NOTIFY`.
//! - **Remote libSQL** (feature `libsql`: Turso, sqld): `.libsql(url, token)`, or
//!   `LibsqlStore::connect` and `LibsqlOptions`. The SQLite schema over Hrana-over-HTTP, for
//!   hosts without a disk (docs/libsql.md).
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn example() -> durably::Result<()> {
//! let durably = durably::Durably::builder()
//!     .postgres("postgres://app@db.internal/app")
//!     .max_concurrent_runs(16)
//!     .build()?;
//! durably.init().await?; // every process: migrate (idempotent) and start a worker
//! # Ok(()) }
//! ```
//!
//! Both keep upstream's schema, so a database can be shared with the TypeScript
//! `@coji/durably`. Every backend implements the [`Store`] trait; what only a backend needs
//! (fences, row requests, notices) is in [`store`], and its contract and behaviour suites in
//! `testing` (feature `testing`). The worker's speed knobs are [`Tuning`].
//!
//! ## Serving HTTP
//!
//! With feature `http`, `durably::http::router` serves upstream's HTTP + SSE protocol (the
//! React client `@coji/durably-react` works unchanged) as an axum router to nest anywhere,
//! with optional auth hooks, and `durably::http::dashboard` a web dashboard:
//!
//! ```no_run
//! # #[cfg(feature = "http")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! # let durably = durably::Durably::builder().sqlite("app.db").build()?;
//! use durably::http::{HttpOptions, dashboard, router};
//! durably.init().await?;
//! let app = axum::Router::new()
//!     .merge(dashboard("/api/durably"))
//!     .nest("/api/durably", router(durably.clone(), HttpOptions::new()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! ## Further reading
//!
//! In the repository's `docs/` directory: `concepts.md` (run states, leases, replay, waits,
//! children and schedules in a few words), `guarantees.md` (what "a step runs once" means),
//! `versioning.md` (changing job code while runs are in flight), `features.md` (everything durably does),
//! `leases.md` (leases, fencing, crashes and frozen workers), `limits.md` (bounds on labels,
//! keys and filters), `operations.md` (the `durably` command and the dashboard), `postgres.md`
//! (many hosts, TLS), `upstream-compat.md` (where durably differs from `@coji/durably`),
//! `performance.md` (benchmark figures), `architecture.md` (layout, migrations, test suites),
//! and `CHANGELOG.md` at the root.

pub mod attempts;
#[cfg(all(target_arch = "wasm32", feature = "browser"))]
#[cfg_attr(docsrs, doc(cfg(feature = "browser")))]
pub mod browser_js;
mod builder;
pub mod children;
mod config;
mod durably;
mod engine;
pub mod error;
pub mod events;
pub mod follow;
mod handle;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod job;
mod json_terms;
mod lease;
pub mod limits;
mod local_queue;
pub mod maintenance;
pub mod overview;
pub mod parallel;
pub mod retry;
pub mod run;
#[cfg(not(target_arch = "wasm32"))]
mod runtime;
// The same seam on a browser's event loop (feature `browser`).
#[cfg(target_arch = "wasm32")]
#[path = "runtime_browser.rs"]
mod runtime;
pub mod schedules;
pub mod step;
pub mod store;
mod subscribe;
mod telemetry;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
pub mod time;
mod wait;
pub mod waits;
mod worker;

// The crate root holds what an application uses. What only a storage backend needs (fences, row
// requests, notices, schema version, ...) stays in `durably::store`.
pub use attempts::{Attempt, AttemptStatus, InterruptionReason, StepAttempt, StepOptions};
pub use builder::DurablyBuilder;
pub use children::InvokeOptions;
pub use config::{Config, Tuning, parse_retention};
pub use durably::{Durably, JobInfo};
pub use engine::Outcome;
pub use error::{BoxError, Error, Result, StepResult};
pub use events::{Event, EventKind, EventType, Unsubscribe};
pub use handle::JobHandle;
pub use job::{Job, JobData};
pub use limits::Limits;
pub use overview::{Overview, OverviewWindow, RunCounts};
pub use retry::{AttemptTimedOut, Backoff, NonRetryable, RetryPolicy};
pub use run::{
    Coalesce, Debounce, Disposition, Labels, Log, LogLevel, Progress, Run, RunFilter, RunStatus,
    Step, StepStatus, TriggerAndWaitResult, TriggerOptions, TriggerResult,
};
pub use schedules::{CatchUp, FiredSlot, Schedule, ScheduleRecord, Schedules};
/// The JSON crate of job inputs, outputs and labels, re-exported so that examples need no
/// extra dependency (`durably::serde_json::json!`, or `durably::prelude::*`).
pub use serde_json;
pub use step::{StepContext, StepLog};
#[cfg(feature = "libsql")]
pub use store::{LibsqlOptions, LibsqlStore};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::{PostgresOptions, PostgresStore};
pub use store::{Signalled, Store};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::{SqliteOptions, SqliteStore, Synchronous};
pub use waits::{
    DurableWait, NewWait, SignalDisposition, TimerKind, WaitOutcome, WaitResult, WaitStatus,
};
// Crate-internal only: files being rewritten on another branch (`store/`, `testing/`) still
// name these through the crate root. Remove once they import them from `crate::store`.
#[allow(unused_imports)]
pub use time::{Timestamp, new_id};
pub use tokio_util::sync::CancellationToken;
pub use wait::{LogEntry, WaitOptions};

/// The README's example is compiled as a doctest so it cannot drift from the API.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The examples of `docs/retries.md`, compiled as doctests.
#[doc = include_str!("../../../docs/retries.md")]
#[cfg(doctest)]
pub struct RetriesDocDoctests;

/// The examples of `docs/time.md`, compiled as doctests.
#[doc = include_str!("../../../docs/time.md")]
#[cfg(doctest)]
pub struct TimeDocDoctests;

/// The examples of `docs/priorities.md`, compiled as doctests.
#[doc = include_str!("../../../docs/priorities.md")]
#[cfg(doctest)]
pub struct PrioritiesDocDoctests;

/// The examples of `docs/children.md`, compiled as doctests.
#[doc = include_str!("../../../docs/children.md")]
#[cfg(doctest)]
pub struct ChildrenDocDoctests;

/// The examples of `docs/schedules.md`, compiled as doctests.
#[doc = include_str!("../../../docs/schedules.md")]
#[cfg(doctest)]
pub struct SchedulesDocDoctests;

/// The examples of `docs/guarantees.md`, compiled as doctests.
#[doc = include_str!("../../../docs/guarantees.md")]
#[cfg(doctest)]
pub struct GuaranteesDocDoctests;

#[doc = include_str!("../../../docs/concepts.md")]
#[cfg(doctest)]
pub struct ConceptsDocDoctests;

/// The examples of `docs/versioning.md`, compiled as doctests.
#[doc = include_str!("../../../docs/versioning.md")]
#[cfg(doctest)]
pub struct VersioningDocDoctests;

/// What most applications use, in one import: `use durably::prelude::*;` brings the instance,
/// jobs and their step context, the trigger and wait options, the error and result types, and
/// `serde_json`'s `json!` and `Value`.
///
/// ```
/// use durably::prelude::*;
///
/// let greet = Job::new("greet", |step: StepContext, name: String| async move {
///     let text = step.run("compose", |_| async move { Ok(format!("hello {name}")) }).await?;
///     Ok(json!({ "text": text }))
/// });
/// # let _ = greet;
/// ```
pub mod prelude {
    pub use crate::{
        Durably, Error, InvokeOptions, Job, JobHandle, NonRetryable, Result, RetryPolicy,
        StepContext, StepOptions, StepResult, TriggerOptions, WaitOptions,
    };
    pub use serde_json::{Value, json};
}
