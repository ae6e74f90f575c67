//! Telemetry: what durably tells an observability backend about runs, in one place, called by
//! the engine at its natural points (a trigger, an execution's start and end, a step attempt)
//! instead of spans written by hand across the code.
//!
//! | file | what it owns |
//! |---|---|
//! | `trace.rs` | the spans of a run's life (`durably.trigger`, `durably.run`, `durably.step`), their attributes, and with the feature `otel` one OpenTelemetry trace per run across workers, crashes and resumes (the trigger's W3C `traceparent` stored with the run) |
//! | `metrics.rs` | the engine's OpenTelemetry metrics (feature `otel`): one object called at its transition points with domain values (a run, a duration, an outcome) |
//! | `run_counts.rs` | the run counts behind the gauges (feature `otel`): read from the database only while something reads a gauge, at most every 30 s, by a worker's maintenance or, without a worker, by the gauge's read itself |
//! | `prometheus.rs` | the Prometheus text endpoint (feature `prometheus`) |
//!
//! The spans are `tracing` spans, seen by any subscriber. With the feature `otel`, the trigger's
//! context is stored with the run ([`crate::store::NewRun::trace_context`]) and every execution's
//! span continues it (through `tracing-opentelemetry`); without it those calls, and every
//! metrics call, compile to nothing. See docs/observability.md.

pub(crate) mod metrics;
#[cfg(feature = "prometheus")]
pub(crate) mod prometheus;
#[cfg(feature = "otel")]
mod run_counts;
mod trace;

pub(crate) use trace::{Parent, StepEnd, Trigger, run_ended, run_span, step_ended, step_span};
