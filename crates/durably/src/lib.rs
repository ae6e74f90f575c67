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
mod engine;
pub mod error;
pub mod events;
pub mod follow;
#[cfg(feature = "http")]
pub mod http;
pub mod job;
mod lease;
pub mod limits;
pub mod maintenance;
pub mod run;
mod runtime;
pub mod step;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
mod worker;

pub use crate::durably::{
    Config, Durably, DurablyBuilder, JobInfo, LogEntry, WaitOptions, parse_retention,
};
pub use engine::Outcome;
pub use error::{BoxError, Error, Result};
pub use events::{Event, EventKind, EventType, Unsubscribe};
pub use job::{Job, JobData, JobHandle};
pub use limits::Limits;
pub use run::*;
pub use step::{StepContext, StepLog};
pub use store::*;
pub use time::{Timestamp, new_id};
pub use tokio_util::sync::CancellationToken;

/// The README's example is compiled as a doctest so it cannot drift from the API.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
