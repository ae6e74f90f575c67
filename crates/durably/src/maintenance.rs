//! Maintenance tasks: work an idle worker does to keep the database tidy, behind one small
//! trait. The engine brings its own (returning expired leases, applying retention), a store
//! brings the backend's ([`crate::store::Store::maintenance_tasks`]; SQLite truncates its
//! write-ahead log), and a later feature (a scheduler firing cron slots) is one more task.
//!
//! ```
//! use std::time::Duration;
//! use durably::maintenance::{Maintained, MaintenanceTask};
//!
//! struct Vacuum;
//!
//! #[async_trait::async_trait]
//! impl MaintenanceTask for Vacuum {
//!     fn name(&self) -> &'static str { "vacuum" }
//!     fn every(&self) -> Duration { Duration::from_secs(3600) }
//!     async fn run(&self) -> durably::Result<Maintained> { Ok(Maintained::Done) }
//! }
//! ```

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

/// How one run of a [`MaintenanceTask`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Maintained {
    /// The task did its work.
    Done,
    /// The database was busy (readers or a writer in the way): try again after
    /// [`MaintenanceTask::after_busy`] instead of [`MaintenanceTask::every`].
    Busy,
}

/// One piece of housekeeping an idle worker runs at most every so often. Failures are
/// reported as `worker:error` events with [`MaintenanceTask::error_context`] and retried at
/// the next due time.
#[async_trait]
pub trait MaintenanceTask: Send + Sync {
    /// A short name for logs (`lease-sweep`, `retention`, `wal-checkpoint`).
    fn name(&self) -> &'static str;

    /// How long after one run the next is due.
    fn every(&self) -> Duration;

    /// How long after a run that found the database busy the next is due (default
    /// [`every`](Self::every)).
    fn after_busy(&self) -> Duration {
        self.every()
    }

    /// Whether an explicit request for maintenance (`Durably::run_idle_maintenance`, the end
    /// of `process_until_idle`) runs this task even when it is not due (default `false`).
    fn runs_on_request(&self) -> bool {
        false
    }

    /// Whether a worker that executes runs also runs this task when it is due (default
    /// `false`: only an idle worker does). For work that must not wait for a pause in the
    /// load: firing schedules, finishing cancel cascades, retention.
    fn runs_while_busy(&self) -> bool {
        false
    }

    /// The `context` of the `worker:error` event reporting a failure (default
    /// `idle-maintenance`).
    fn error_context(&self) -> &'static str {
        "idle-maintenance"
    }

    /// Does the work once.
    async fn run(&self) -> Result<Maintained>;
}
