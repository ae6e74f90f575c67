//! The engine's maintenance: its own tasks (returning expired leases, applying retention, the
//! children sweep), the scheduler, and the store's ([`Store::maintenance_tasks`]), each run at
//! most as often as its cadence allows: while the worker is idle, and for the tasks that run
//! while busy ([`MaintenanceTask::runs_while_busy`]) also while it executes runs, at most once
//! per polling interval. Failures become `worker:error` events.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::{Engine, Settings};
use crate::error::Result;
use crate::events::{EventBus, EventKind};
use crate::maintenance::{Maintained, MaintenanceTask};
use crate::run::RunStatus;
use crate::runtime::{self, Instant};
use crate::store::{LEASE_EXPIRED_PENDING_EXISTS, Store};
use crate::time::Timestamp;

/// How often retention may purge old runs.
const RETENTION_CADENCE: Duration = Duration::from_secs(60);
/// Runs deleted per retention purge.
const RETENTION_BATCH: u64 = 100;

/// Every maintenance task of an engine, with when each last ran.
pub(super) struct Maintenance {
    tasks: Vec<Arc<dyn MaintenanceTask>>,
    /// Per task (same order): when it last started, and whether it found the database busy.
    /// An async lock: maintenance runs one pass at a time.
    clocks: tokio::sync::Mutex<Vec<Clock>>,
}

#[derive(Clone, Copy, Default)]
struct Clock {
    last: Option<Instant>,
    busy: bool,
}

impl Maintenance {
    /// The engine's own tasks, then `extra` (the scheduler), then the store's.
    pub(super) fn new(
        engine: &Weak<Engine>,
        store: &Arc<dyn Store>,
        settings: &Settings,
        events: &EventBus,
        extra: Vec<Arc<dyn MaintenanceTask>>,
    ) -> Self {
        let mut tasks: Vec<Arc<dyn MaintenanceTask>> = vec![Arc::new(LeaseSweep {
            store: store.clone(),
            events: events.clone(),
            every: settings.lease_duration,
        })];
        if let Some(retain) = settings.retain_runs {
            tasks.push(Arc::new(Retention {
                store: store.clone(),
                retain,
            }));
        }
        tasks.push(Arc::new(super::children::ChildrenSweep::new(
            engine.clone(),
            store.clone(),
        )));
        tasks.extend(extra);
        tasks.extend(store.maintenance_tasks());
        let clocks = tokio::sync::Mutex::new(vec![Clock::default(); tasks.len()]);
        Maintenance { tasks, clocks }
    }
}

/// Why the engine runs maintenance, which decides the tasks that run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The worker found nothing to claim and executes nothing: every task that is due.
    Idle,
    /// Asked for (`run_idle_maintenance`, the end of `process_until_idle`): every task that is
    /// due, and those that run on request whether due or not.
    Requested,
    /// The worker executes runs: the tasks that run while busy, when due.
    Busy,
}

impl Engine {
    /// Runs the tasks of `pass` (see [`Pass`]).
    pub(crate) async fn maintain(&self, pass: Pass) {
        let maintenance = &self.maintenance;
        let mut clocks = maintenance.clocks.lock().await;
        for (task, clock) in maintenance.tasks.iter().zip(clocks.iter_mut()) {
            if pass == Pass::Busy && !task.runs_while_busy() {
                continue;
            }
            let cadence = match clock.busy {
                true => task.after_busy(),
                false => task.every(),
            };
            let due = (pass == Pass::Requested && task.runs_on_request())
                || clock.last.is_none_or(|at| at.elapsed() >= cadence);
            if !due {
                continue;
            }
            clock.last = Some(runtime::now());
            match task.run().await {
                Ok(Maintained::Done) => clock.busy = false,
                Ok(Maintained::Busy) => clock.busy = true,
                Err(error) => self.store_failed(&error, task.error_context(), None),
            }
        }
    }
}

/// Returns expired leases to pending, failing those whose job and concurrency key already have
/// a pending run (`Lease expired; pending run already exists`). At most once per lease period
/// while idle, so an idle worker costs the database about one claim query per polling
/// interval; always when maintenance is requested.
struct LeaseSweep {
    store: Arc<dyn Store>,
    events: EventBus,
    every: Duration,
}

#[async_trait]
impl MaintenanceTask for LeaseSweep {
    fn name(&self) -> &'static str {
        "lease-sweep"
    }

    fn every(&self) -> Duration {
        self.every
    }

    fn runs_on_request(&self) -> bool {
        true
    }

    async fn run(&self) -> Result<Maintained> {
        for run in self.store.release_expired_leases(Timestamp::now()).await? {
            tracing::info!(run_id = %run.id, status = %run.status, "expired lease released");
            if run.status == RunStatus::Failed {
                self.events.emit(EventKind::RunFail {
                    run_id: run.id,
                    job_name: run.job_name,
                    error: LEASE_EXPIRED_PENDING_EXISTS.to_owned(),
                    failed_step_name: "unknown".into(),
                    labels: run.labels,
                });
            }
        }
        Ok(Maintained::Done)
    }
}

/// Deletes terminal runs older than `retain_runs`, 100 at a time, at most once a minute.
struct Retention {
    store: Arc<dyn Store>,
    retain: Duration,
}

#[async_trait]
impl MaintenanceTask for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn every(&self) -> Duration {
        RETENTION_CADENCE
    }

    fn runs_while_busy(&self) -> bool {
        true
    }

    async fn run(&self) -> Result<Maintained> {
        let cutoff = Timestamp::now() - self.retain;
        self.store.purge_runs(cutoff, RETENTION_BATCH).await?;
        Ok(Maintained::Done)
    }
}
