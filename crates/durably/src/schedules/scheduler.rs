//! The scheduler: one more maintenance task of the engine. At every pass (at most once a
//! second, whether the worker is idle or executes runs, and on every request for maintenance) it stores the
//! schedules registered in code, if not done yet, then fires the slots due on the engine's
//! clock. No leader: every process may fire, [`Store::fire_schedule`] lets one win per slot.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;

use super::spec::Spec;
use super::{
    FiredSlot, SCHEDULE_LABEL, SLOT_LABEL, ScheduleFiring, ScheduleRecord, slot_idempotency_key,
};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::maintenance::{Maintained, MaintenanceTask};
use crate::run::Disposition;
use crate::store::{NewRun, Store};
use crate::telemetry::{Parent, Trigger};
use crate::time::Timestamp;

/// How often a worker looks for due slots.
const CADENCE: Duration = Duration::from_secs(1);
/// Schedules fired per pass at most (the rest at the next pass).
const DUE_BATCH: u64 = 100;

/// The schedules of one instance: those registered in code, and the firing of due slots.
pub(crate) struct Scheduler {
    store: Arc<dyn Store>,
    /// Registered in code, validated at build time, stored by the first pass.
    code: Mutex<Vec<ScheduleRecord>>,
    stored: tokio::sync::OnceCell<()>,
    /// The engine, to announce the runs fired and wake the worker (set once built).
    engine: OnceLock<Weak<Engine>>,
}

impl Scheduler {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Scheduler {
            store,
            code: Mutex::new(Vec::new()),
            stored: tokio::sync::OnceCell::new(),
            engine: OnceLock::new(),
        }
    }

    /// Connects the engine whose worker runs the fired runs.
    pub(crate) fn attach(&self, engine: &Arc<Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    /// Adds a schedule registered in code; a second one with the same name is
    /// [`Error::Config`].
    pub(crate) fn add_code_schedule(&self, record: ScheduleRecord) -> Result<()> {
        let mut code = crate::engine::lock(&self.code);
        if code.iter().any(|known| known.name == record.name) {
            return Err(Error::Config(format!(
                "Schedule \"{}\" is registered twice: give each schedule a unique name",
                record.name
            )));
        }
        code.push(record);
        Ok(())
    }

    /// The names of the schedules registered in code (the examples of the HTTP API's document).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn code_names(&self) -> Vec<String> {
        crate::engine::lock(&self.code)
            .iter()
            .map(|record| record.name.clone())
            .collect()
    }

    /// Stores the schedules registered in code (once per instance; retried after a failure),
    /// a new one's next slot the first after `now`.
    pub(crate) async fn register_code_schedules(&self, now: Timestamp) -> Result<()> {
        self.stored
            .get_or_try_init(|| async {
                let code = crate::engine::lock(&self.code).clone();
                for mut record in code {
                    let spec = Spec::parse(&record.name, &record.cron, &record.time_zone)?;
                    record.next_fire_at = spec.next_after(now)?;
                    (record.created_at, record.updated_at) = (now, now);
                    self.store.upsert_schedule(record, now).await?;
                }
                Ok::<(), Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Fires the slots due at `now` of every schedule, returning those this process fired.
    pub(crate) async fn fire_due(&self, now: Timestamp) -> Result<Vec<FiredSlot>> {
        let mut fired = Vec::new();
        for schedule in self.store.due_schedules(now, DUE_BATCH).await? {
            match self.fire(&schedule, now).await {
                Ok(slots) => fired.extend(slots),
                // One broken schedule (a cron this version cannot read) does not stop the others.
                Err(error) => {
                    tracing::warn!(schedule = %schedule.name, %error, "schedule not fired")
                }
            }
        }
        Ok(fired)
    }

    async fn fire(&self, schedule: &ScheduleRecord, now: Timestamp) -> Result<Vec<FiredSlot>> {
        let spec = Spec::parse(&schedule.name, &schedule.cron, &schedule.time_zone)?;
        let Some(plan) = spec.plan(schedule.next_fire_at, schedule.catch_up, now)? else {
            return Ok(Vec::new());
        };
        // A trace of its own per firing (not a child of the worker's span it happens in).
        let trigger = Trigger::start(&schedule.job_name, plan.slots.len(), &Parent::root());
        let trace_context = trigger.trace_context();
        let runs: Vec<NewRun> = plan
            .slots
            .iter()
            .map(|slot| NewRun {
                trace_context: trace_context.clone(),
                ..slot_run(schedule, *slot)
            })
            .collect();
        let firing = ScheduleFiring::new(
            schedule.name.clone(),
            plan.expected,
            plan.next,
            plan.slots.last().copied(),
            runs.clone(),
        );
        let fired = trigger.around(self.store.fire_schedule(firing, now)).await;
        trigger.ended(match &fired {
            Ok(Some(enqueued)) => Ok(enqueued.as_slice()),
            Ok(None) => Ok(&[]),
            Err(error) => Err(error),
        });
        let Some(enqueued) = fired? else {
            tracing::debug!(schedule = %schedule.name, "another process fired these slots");
            return Ok(Vec::new());
        };
        let engine = self.engine.get().and_then(Weak::upgrade);
        let mut fired = Vec::with_capacity(enqueued.len());
        for ((enqueued, request), slot) in enqueued.into_iter().zip(&runs).zip(&plan.slots) {
            if let Some(engine) = &engine {
                engine.announce(&enqueued, request);
            }
            tracing::info!(schedule = %schedule.name, %slot, run_id = %enqueued.run.id, "schedule fired");
            fired.push(FiredSlot {
                schedule: schedule.name.clone(),
                slot: *slot,
                run: enqueued.run,
                disposition: enqueued.disposition,
            });
        }
        if let Some(engine) = engine
            && fired.iter().any(|f| f.disposition == Disposition::Created)
        {
            engine.wake();
        }
        Ok(fired)
    }
}

/// The run of `schedule`'s `slot`: its input and labels, the schedule's own labels and the
/// slot's idempotency key.
fn slot_run(schedule: &ScheduleRecord, slot: Timestamp) -> NewRun {
    let mut labels = schedule.labels.clone();
    labels.insert(SCHEDULE_LABEL.into(), schedule.name.clone());
    labels.insert(SLOT_LABEL.into(), slot.to_string());
    NewRun {
        job_name: schedule.job_name.clone(),
        input: schedule.input.clone(),
        idempotency_key: Some(slot_idempotency_key(&schedule.name, slot)),
        labels,
        ..Default::default()
    }
}

/// The scheduler as a maintenance task of the engine, on the engine's clock
/// (`Timestamp::now`).
pub(crate) struct SchedulerTask(pub(crate) Arc<Scheduler>);

#[async_trait]
impl MaintenanceTask for SchedulerTask {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn every(&self) -> Duration {
        CADENCE
    }

    fn runs_on_request(&self) -> bool {
        true
    }

    fn runs_while_busy(&self) -> bool {
        true
    }

    fn error_context(&self) -> &'static str {
        "scheduler"
    }

    async fn run(&self) -> Result<Maintained> {
        let now = Timestamp::now();
        self.0.register_code_schedules(now).await?;
        self.0.fire_due(now).await?;
        Ok(Maintained::Done)
    }
}
