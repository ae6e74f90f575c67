#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # durably — steps that survive crashes
//!
//! A job is a named async function with typed input and output. Inside it, `step.run(name, f)`
//! persists each step's result; after a crash, a restart or a lost lease the job runs again from
//! the top and completed steps return their stored result without running again.
//!
//! ```no_run
//! use durably::{Durably, Job, StepContext, TriggerOptions, WaitOptions};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: u64 }
//!
//! # async fn example() -> durably::Result<()> {
//! let durably = Durably::builder().sqlite("app.db").build()?;
//! let ship = durably.register(Job::new("ship-order", |step: StepContext, order: Order| async move {
//!     let label = step.run("print-label", |_| async move {
//!         Ok::<_, std::io::Error>(format!("label-{}", order.id))
//!     }).await?;
//!     step.run("notify", |_| async { Ok::<_, std::io::Error>(()) }).await?;
//!     Ok::<_, durably::Error>(label)
//! }))?;
//! durably.init().await?; // migrate + start the worker
//! let done = ship
//!     .trigger_and_wait(Order { id: 7 }, TriggerOptions::new(), WaitOptions::new())
//!     .await?;
//! assert_eq!(done.output.as_deref(), Some("label-7"));
//! durably.stop().await;
//! # Ok(()) }
//! ```
//!
//! Storage goes through one [`Store`] trait: [`SqliteStore`] (embedded, the default) and
//! PostgreSQL for many workers on many hosts.

mod durably;
pub mod error;
pub mod events;
pub mod follow;
#[cfg(feature = "http")]
pub mod http;
pub mod job;
mod lease;
pub mod limits;
pub mod run;
pub mod step;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
mod worker;

// The crate root holds what an application uses. What only a storage backend needs (fences, row
// requests, notices, schema version, ...) stays in `durably::store`.
pub use crate::durably::{
    Config, Durably, DurablyBuilder, JobInfo, LogEntry, Tuning, WaitOptions, parse_retention,
};
pub use error::{BoxError, Error, Result};
pub use events::{Event, EventKind, EventType, Unsubscribe};
pub use job::{Job, JobData, JobHandle};
pub use limits::Limits;
pub use run::{
    Coalesce, Disposition, Labels, Log, LogLevel, Progress, Run, RunFilter, RunStatus, Step,
    StepStatus, TriggerAndWaitResult, TriggerOptions, TriggerResult,
};
pub use step::{StepContext, StepLog};
pub use store::Store;
#[cfg(feature = "postgres")]
pub use store::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use store::{SqliteOptions, SqliteStore, Synchronous};
// Crate-internal only: files being rewritten on another branch (`store/`, `testing/`) still
// name these through the crate root. Remove once they import them from `crate::store`.
#[allow(unused_imports)]
pub(crate) use store::{ClaimRequest, Fence, NewLog, NewRun, NewStep, RunPatch, WriterStats};
pub use time::{Timestamp, new_id};
pub use tokio_util::sync::CancellationToken;
pub use worker::Outcome;

/// The README's example is compiled as a doctest so it cannot drift from the API.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
