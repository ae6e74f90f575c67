//! A claimed run held by this worker before (and while) its job runs: registered as executing
//! here, its lease kept from the claim on, and given back when it will not start soon.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{Engine, lock};
use crate::lease::LeaseClock;
use crate::local_queue::RunPermit;
use crate::run::Run;
use crate::runtime::{self, AbortOnDrop, Instant};
use crate::step::{StepContext, StepShared};
use crate::store::Fence;
use crate::telemetry;
use crate::time::Timestamp;

impl Engine {
    /// Registers a run, claimed by a claim sent at `sent`, as executing here before its job
    /// starts (a `cancel` meanwhile fires its token, as for a run already executing) and keeps
    /// its lease from now on.
    pub(super) fn hold(self: &Arc<Self>, run: Run, sent: Instant, worker_id: &str) -> Held {
        let config = &self.settings;
        let metrics = self.metrics.execution(&run);
        metrics.claimed(&run);
        #[cfg(feature = "otel")]
        self.record_delayed_claim(&run, &metrics);
        let step = StepContext::new(
            self.store.clone(),
            self.events.clone(),
            run.id.clone(),
            run.job_name.clone(),
            run.labels.clone(),
            Fence::of(&run),
            LeaseClock::new(config.lease_duration, sent),
            run.current_step_index,
            run.completed_step_count,
            config.persist_logs,
            config.attempt_record_delay,
            metrics,
            RunPermit::among(self.execution_permits.clone()),
        );
        let shared = step.shared().clone();
        {
            // A claim whose reply came late may hold an older generation of a run this worker
            // already claimed again: the newer execution keeps the entry (a cancel fires its
            // token).
            let mut active = lock(&self.active);
            let newer = active
                .get(&run.id)
                .is_none_or(|current| current.fence.generation < run.lease_generation);
            if newer {
                active.insert(run.id.clone(), shared.clone());
            }
        }
        // Also when the execution is dropped midway (`stop_within` abandoning it).
        let active = Deregister {
            engine: self.clone(),
            run_id: run.id.clone(),
            generation: run.lease_generation,
        };
        let lease_owner = run
            .lease_owner
            .clone()
            .unwrap_or_else(|| worker_id.to_owned());
        // One span for the whole execution, its lease keeping included (see `telemetry`).
        let span = telemetry::run_span(&run);
        let started = Arc::new(AtomicBool::new(false));
        let keeper = runtime::spawn_in(
            span.clone(),
            self.clone()
                .keep_lease(shared.clone(), lease_owner.clone(), started.clone()),
        )
        .abort_on_drop();
        Held {
            run,
            span,
            owner: lease_owner,
            started,
            step,
            shared,
            active,
            keeper,
        }
    }

    /// Gives a held run back (to pending, in the background), so that any worker may take it;
    /// wakes this process's worker, whose idle slots may.
    pub(super) fn release_held(self: &Arc<Self>, held: Held) {
        let Held {
            run,
            span,
            shared,
            active,
            keeper,
            ..
        } = held;
        // No renewal of a lease being given back.
        drop(keeper);
        let engine = self.clone();
        let release = async move {
            let released = engine
                .store
                .release_lease(&shared.fence, Timestamp::now())
                .await;
            drop(active);
            match released {
                Ok(true) => {
                    tracing::debug!("held run released: the run executing in its slot is long");
                    engine.wake();
                }
                // Cancelled or taken over meanwhile: nothing of it to give back.
                Ok(false) => {}
                Err(error) => {
                    // Not started here: its lease expires and any worker takes it over.
                    engine.store_failed(&error, "lease-release", Some(&run.id));
                }
            }
        };
        runtime::spawn_in(span, release);
    }
}

#[cfg(feature = "otel")]
impl Engine {
    /// The queue latency of a delayed run's first claim: from when its delay wait became due
    /// (its deadline, or earlier when woken), read in the background (delayed runs only, once).
    fn record_delayed_claim(&self, run: &Run, metrics: &crate::telemetry::metrics::RunMetrics) {
        let (true, Some(wait_id)) = (run.lease_generation <= 1, run.waiting_on_wait_id.clone())
        else {
            return;
        };
        let claimed = run.started_at.unwrap_or_else(Timestamp::now);
        let (store, metrics) = (self.store.clone(), metrics.clone());
        runtime::spawn(async move {
            if let Ok(Some(wait)) = store.get_wait(&wait_id).await {
                let due = match (wait.deadline_at, wait.resolved_at) {
                    (Some(deadline), Some(resolved)) => Some(deadline.min(resolved)),
                    (deadline, resolved) => deadline.or(resolved),
                };
                if let Some(due) = due {
                    metrics.delayed_claim(due, claimed);
                }
            }
        });
    }
}

/// Removes a run from the ones executing in this process when dropped, if the entry is still
/// this execution's (the same lease generation).
pub(super) struct Deregister {
    engine: Arc<Engine>,
    run_id: String,
    generation: i64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        let mut active = lock(&self.engine.active);
        if active
            .get(&self.run_id)
            .is_some_and(|current| current.fence.generation == self.generation)
        {
            active.remove(&self.run_id);
        }
    }
}

/// A claimed run registered as executing here, waiting for its job function to start.
pub(super) struct Held {
    pub(super) run: Run,
    /// The execution's span (`durably.run`), the keeper's too.
    pub(super) span: tracing::Span,
    /// The lease owner (this worker).
    pub(super) owner: String,
    pub(super) step: StepContext,
    pub(super) shared: Arc<StepShared>,
    pub(super) active: Deregister,
    /// Renews the lease from the claim on.
    pub(super) keeper: AbortOnDrop<()>,
    /// Set when its job starts (and `run:leased` is emitted): the keeper announces renewals
    /// from then on.
    pub(super) started: Arc<std::sync::atomic::AtomicBool>,
}
