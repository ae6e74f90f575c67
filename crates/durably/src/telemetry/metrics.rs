//! The engine's metrics, recorded through the OpenTelemetry metrics API (feature `otel`) on
//! the [`MeterProvider`](opentelemetry::metrics::MeterProvider) given to
//! `DurablyBuilder::meter_provider`, or the global one. `docs/observability.md` lists the
//! instruments.
//!
//! The engine holds one [`Metrics`] and calls it where a run changes state; each execution
//! holds a [`RunMetrics`] whose job attribute is built once per execution, so recording a step
//! attempt allocates nothing here. Without the feature both are empty and every call is an
//! empty inline function.

/// How a step attempt ended (the attribute `durably.step.outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepOutcome {
    Completed,
    Failed,
    Cancelled,
    LeaseLost,
}

impl StepOutcome {
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Completed => "completed",
            StepOutcome::Failed => "failed",
            StepOutcome::Cancelled => "cancelled",
            StepOutcome::LeaseLost => "lease_lost",
        }
    }
}

#[cfg(feature = "otel")]
pub(crate) use on::{Metrics, RunMetrics};

#[cfg(not(feature = "otel"))]
pub(crate) use off::{Metrics, RunMetrics};

#[cfg(feature = "otel")]
mod on {
    use std::sync::Arc;
    use std::time::Duration;

    use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider, ObservableGauge};
    use opentelemetry::{InstrumentationScope, KeyValue};

    use super::super::run_counts::CountsCache;
    use super::StepOutcome;
    use crate::engine::Outcome;
    use crate::maintenance::MaintenanceTask;
    use crate::run::{Run, RunStatus};
    use crate::store::Store;
    use crate::time::Timestamp;

    /// The attribute naming a run's job on every per-run instrument.
    pub(crate) const JOB: &str = "durably.job.name";
    const RESUMED: &str = "durably.run.resumed";
    const RUN_OUTCOME: &str = "durably.run.outcome";
    const STEP_OUTCOME: &str = "durably.step.outcome";
    const OPERATION: &str = "durably.store.operation";
    const STATUS: &str = "durably.run.status";

    /// Histogram bucket bounds in seconds, from 1 ms to 1 h (OTel's defaults are meant for
    /// milliseconds).
    const SECONDS: [f64; 17] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0, 3600.0,
    ];

    /// The engine's instruments, built once per instance.
    #[derive(Clone)]
    pub(crate) struct Metrics(Arc<Instruments>);

    struct Instruments {
        triggered: Counter<u64>,
        started: Counter<u64>,
        completed: Counter<u64>,
        failed: Counter<u64>,
        cancelled: Counter<u64>,
        run_duration: Histogram<f64>,
        step_duration: Histogram<f64>,
        queue_latency: Histogram<f64>,
        lease_losses: Counter<u64>,
        reclaims: Counter<u64>,
        claims: Counter<u64>,
        claim_size: Histogram<u64>,
        store_errors: Counter<u64>,
        /// The gauges read the run counts from here (see `run_counts.rs`).
        counts: Arc<CountsCache>,
        _run_count: ObservableGauge<u64>,
        _oldest_pending_age: ObservableGauge<f64>,
    }

    impl Default for Metrics {
        /// On the global meter provider (`opentelemetry::global`), as it is now.
        fn default() -> Self {
            Metrics::new(opentelemetry::global::meter_with_scope(scope()))
        }
    }

    /// The instrumentation scope of durably's instruments: the crate's name and version.
    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("durably")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()
    }

    impl Metrics {
        /// The instruments on `provider`.
        pub(crate) fn from_provider(provider: &dyn MeterProvider) -> Self {
            Metrics::new(provider.meter_with_scope(scope()))
        }

        fn new(meter: Meter) -> Self {
            let counter = |name: &'static str, description: &'static str| {
                meter
                    .u64_counter(name)
                    .with_unit("{run}")
                    .with_description(description)
                    .build()
            };
            let seconds = |name: &'static str, description: &'static str| {
                meter
                    .f64_histogram(name)
                    .with_unit("s")
                    .with_description(description)
                    .with_boundaries(SECONDS.to_vec())
                    .build()
            };
            let counts = Arc::new(CountsCache::default());
            let cache = counts.clone();
            let run_count = meter
                .u64_observable_gauge("durably.run.count")
                .with_unit("{run}")
                .with_description(
                    "Runs stored, by status (read from the database at most every 30 s)",
                )
                .with_callback(move |observer| {
                    if let Some(last) = cache.last() {
                        for status in RunStatus::ALL {
                            observer.observe(
                                last.counts.get(status),
                                &[KeyValue::new(STATUS, status.as_str())],
                            );
                        }
                    }
                })
                .build();
            let cache = counts.clone();
            let oldest_pending_age = meter
                .f64_observable_gauge("durably.run.oldest_pending_age")
                .with_unit("s")
                .with_description(
                    "How long the oldest pending run has waited (0: none pending; its run read \
                     at most every 30 s)",
                )
                .with_callback(move |observer| {
                    if let Some(last) = cache.last() {
                        let age = last.oldest_pending.map_or(0.0, |oldest| {
                            seconds_between(oldest.created_at, Timestamp::now())
                        });
                        observer.observe(age, &[]);
                    }
                })
                .build();
            Metrics(Arc::new(Instruments {
                counts,
                _run_count: run_count,
                _oldest_pending_age: oldest_pending_age,
                triggered: counter("durably.runs.triggered", "Runs created by a trigger"),
                started: counter(
                    "durably.runs.started",
                    "Executions started: a run's first, or a resumed one",
                ),
                completed: counter("durably.runs.completed", "Runs that completed"),
                failed: counter("durably.runs.failed", "Runs that failed"),
                cancelled: counter("durably.runs.cancelled", "Runs cancelled"),
                run_duration: seconds(
                    "durably.run.duration",
                    "From a run's first start to its completion or failure",
                ),
                step_duration: seconds(
                    "durably.step.duration",
                    "How long a step attempt's function ran",
                ),
                queue_latency: seconds(
                    "durably.run.queue_latency",
                    "From a run's trigger (or its delayed start) to its first start",
                ),
                lease_losses: meter
                    .u64_counter("durably.lease.losses")
                    .with_unit("{execution}")
                    .with_description("Executions that ended having lost their lease")
                    .build(),
                reclaims: counter(
                    "durably.lease.reclaims",
                    "Runs taken over after their lease expired",
                ),
                claims: meter
                    .u64_counter("durably.claims")
                    .with_unit("{claim}")
                    .with_description("Claims that took at least one run")
                    .build(),
                claim_size: meter
                    .u64_histogram("durably.claim.size")
                    .with_unit("{run}")
                    .with_description("Runs taken by one claim")
                    .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
                    .build(),
                store_errors: meter
                    .u64_counter("durably.store.errors")
                    .with_unit("{error}")
                    .with_description("Store calls of the engine that failed, by operation")
                    .build(),
            }))
        }

        /// A run was created (not an idempotent, coalesced or debounced trigger).
        pub(crate) fn run_triggered(&self, job_name: &str) {
            self.0.triggered.add(1, &[job(job_name)]);
        }

        /// This process cancelled `run`.
        pub(crate) fn run_cancelled(&self, run: &Run) {
            self.0.cancelled.add(1, &[job(&run.job_name)]);
        }

        /// A claim took `runs` runs (none: not counted).
        pub(crate) fn claimed(&self, runs: &[Run]) {
            if runs.is_empty() {
                return;
            }
            self.0.claims.add(1, &[]);
            self.0.claim_size.record(runs.len() as u64, &[]);
            for run in runs.iter().filter(|run| is_reclaim(run)) {
                self.0.reclaims.add(1, &[job(&run.job_name)]);
            }
        }

        /// A store call of the engine failed (`operation`: what it was doing).
        pub(crate) fn store_error(&self, operation: &str) {
            self.0
                .store_errors
                .add(1, &[KeyValue::new(OPERATION, operation.to_owned())]);
        }

        /// The maintenance task that reads the run counts behind the gauges.
        pub(crate) fn counts_task(
            &self,
            store: &Arc<dyn Store>,
        ) -> Option<Arc<dyn MaintenanceTask>> {
            Some(self.0.counts.task(store))
        }

        /// The handle of one execution of `run`.
        pub(crate) fn execution(&self, run: &Run) -> RunMetrics {
            RunMetrics {
                metrics: self.clone(),
                job: job(&run.job_name),
            }
        }
    }

    /// A claimed run taken over from an earlier lease: claimed before (a later lease
    /// generation, first claimed before this claim) and not resumed from a durable wait. The
    /// store does not say what the run was before the claim, so a run given back unstarted by
    /// a worker's claim-ahead, or resumed after a failure (`Durably::resume`), counts too.
    fn is_reclaim(run: &Run) -> bool {
        run.lease_generation > 1
            && run.waiting_on_wait_id.is_none()
            && run.started_at.is_some_and(|first| first < run.updated_at)
    }

    fn job(name: &str) -> KeyValue {
        KeyValue::new(JOB, Arc::<str>::from(name))
    }

    /// The metrics of one execution of a run: the job attribute built once.
    #[derive(Clone)]
    pub(crate) struct RunMetrics {
        metrics: Metrics,
        job: KeyValue,
    }

    impl RunMetrics {
        /// `run` was claimed (and is held by this worker). Its first claim (its first lease)
        /// records its queue latency, from its trigger to that claim, unless it was delayed:
        /// then the engine reads when it became due ([`RunMetrics::delayed_claim`]).
        pub(crate) fn claimed(&self, run: &Run) {
            if run.lease_generation <= 1 && run.waiting_on_wait_id.is_none() {
                let claimed = run.started_at.unwrap_or_else(Timestamp::now);
                self.metrics.0.queue_latency.record(
                    seconds_between(run.created_at, claimed),
                    std::slice::from_ref(&self.job),
                );
            }
        }

        /// Its job function starts: under the run's first lease, or a later one (resumed).
        pub(crate) fn started(&self, run: &Run) {
            let resumed = run.lease_generation > 1;
            self.metrics
                .0
                .started
                .add(1, &[self.job.clone(), KeyValue::new(RESUMED, resumed)]);
        }

        /// The first claim, at `claimed`, of a delayed run that became due at `due`.
        pub(crate) fn delayed_claim(&self, due: Timestamp, claimed: Timestamp) {
            self.metrics.0.queue_latency.record(
                seconds_between(due, claimed),
                std::slice::from_ref(&self.job),
            );
        }

        /// A step attempt's function ran for `elapsed` and ended so.
        pub(crate) fn step_attempt(&self, elapsed: Duration, outcome: StepOutcome) {
            self.metrics.0.step_duration.record(
                elapsed.as_secs_f64(),
                &[
                    self.job.clone(),
                    KeyValue::new(STEP_OUTCOME, outcome.as_str()),
                ],
            );
        }

        /// The execution of `run` ended with `outcome` (recorded: a completion or failure
        /// landed). A cancel is counted by the process that cancelled (`Metrics::run_cancelled`).
        pub(crate) fn ended(&self, run: &Run, outcome: Outcome) {
            let m = &self.metrics.0;
            let (counter, name) = match outcome {
                Outcome::Completed => (&m.completed, "completed"),
                Outcome::Failed => (&m.failed, "failed"),
                Outcome::LeaseLost => {
                    m.lease_losses.add(1, std::slice::from_ref(&self.job));
                    return;
                }
                Outcome::Cancelled | Outcome::Suspended | Outcome::Released => return,
            };
            counter.add(1, std::slice::from_ref(&self.job));
            if let Some(first) = run.started_at {
                m.run_duration.record(
                    seconds_between(first, Timestamp::now()),
                    &[self.job.clone(), KeyValue::new(RUN_OUTCOME, name)],
                );
            }
        }
    }

    fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
        (to.as_millis() - from.as_millis()).max(0) as f64 / 1000.0
    }
}

#[cfg(not(feature = "otel"))]
mod off {
    use std::time::Duration;

    use super::StepOutcome;
    use crate::engine::Outcome;
    use crate::run::Run;

    /// Without the feature `otel`: records nothing.
    #[derive(Clone, Default)]
    pub(crate) struct Metrics;

    /// Without the feature `otel`: records nothing.
    #[derive(Clone)]
    pub(crate) struct RunMetrics;

    impl Metrics {
        #[inline(always)]
        pub(crate) fn run_triggered(&self, _job_name: &str) {}
        #[inline(always)]
        pub(crate) fn run_cancelled(&self, _run: &Run) {}
        #[inline(always)]
        pub(crate) fn claimed(&self, _runs: &[Run]) {}
        #[inline(always)]
        pub(crate) fn store_error(&self, _operation: &str) {}
        #[inline(always)]
        pub(crate) fn counts_task(
            &self,
            _store: &std::sync::Arc<dyn crate::store::Store>,
        ) -> Option<std::sync::Arc<dyn crate::maintenance::MaintenanceTask>> {
            None
        }
        #[inline(always)]
        pub(crate) fn execution(&self, _run: &Run) -> RunMetrics {
            RunMetrics
        }
    }

    impl RunMetrics {
        #[inline(always)]
        pub(crate) fn claimed(&self, _run: &Run) {}
        #[inline(always)]
        pub(crate) fn started(&self, _run: &Run) {}
        #[inline(always)]
        pub(crate) fn step_attempt(&self, _elapsed: Duration, _outcome: StepOutcome) {}
        #[inline(always)]
        pub(crate) fn ended(&self, _run: &Run, _outcome: Outcome) {}
    }
}
