//! What the engine tells the outside about its runs: OpenTelemetry metrics (`metrics.rs`,
//! feature `otel`). The engine calls one object at its transition points with domain values
//! (a run, a duration, an outcome); without the feature every call compiles to nothing.

pub(crate) mod metrics;

#[cfg(feature = "prometheus")]
pub(crate) mod prometheus;
