//! The spans of a run's life, following OpenTelemetry's messaging conventions where they
//! exist (a trigger *sends* a message, the run; an execution *processes* it):
//!
//! - `durably.trigger` (kind producer): a trigger, child of the caller's span (or, over HTTP,
//!   of the `traceparent` request header). With the feature `otel`, its context is the run's
//!   trace context, stored with the run.
//! - `durably.run` (kind consumer): one execution of a run (its first claim, a takeover after a
//!   crash, a resume after a wait), child of the stored trigger context, so that every
//!   execution on any worker is one trace. Without a stored context (a run triggered by the
//!   TypeScript runtime, or without the feature) each execution is a trace of its own.
//! - `durably.step`: one step attempt, child of its execution's span, with its outcome.
//!
//! Attributes: `messaging.system` (`durably`), `messaging.operation.type` (`send` /
//! `process`), `messaging.operation.name` (`trigger` / `run`), `messaging.destination.name`
//! (the job), `messaging.message.id` (the run id), and durably's own `durably.run.id`,
//! `durably.job.name`, `durably.lease.generation`, `durably.step.name`, `durably.step.index`,
//! `durably.step.attempt`, `durably.run.outcome`, `durably.step.outcome`; failures set
//! `otel.status_code = "error"`, `otel.status_description` and `error.type`, which
//! `tracing-opentelemetry` maps onto the span's status.

use tracing::field::Empty;

use crate::engine::Outcome;
use crate::error::Error;
use crate::run::Run;
use crate::store::Enqueued;

/// `messaging.system` of every span.
const SYSTEM: &str = "durably";

/// Where a trigger's span takes its parent from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Parent {
    /// The remote parent of an HTTP trigger (its `traceparent` header).
    #[cfg(feature = "otel")]
    remote: Option<opentelemetry::Context>,
    /// A trigger of durably's own (a schedule's slot): a trace of its own, not a child of the
    /// worker's span it happens in.
    #[cfg(feature = "otel")]
    root: bool,
}

impl Parent {
    /// The caller's current span (a trigger from application code, or from a step: a child
    /// run joins its parent's trace).
    pub(crate) fn current() -> Self {
        Parent::default()
    }

    /// No parent: the trigger starts a trace (a schedule firing a slot).
    pub(crate) fn root() -> Self {
        #[cfg(feature = "otel")]
        {
            Parent {
                remote: None,
                root: true,
            }
        }
        #[cfg(not(feature = "otel"))]
        {
            Parent {}
        }
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    /// The W3C trace context of an HTTP request (`traceparent`, `tracestate`); the caller's
    /// current span when there is none or it is malformed.
    pub(crate) fn from_http(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        #[cfg(feature = "otel")]
        {
            let remote = traceparent.and_then(|value| otel::remote_context(value, tracestate));
            Parent {
                remote,
                root: false,
            }
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (traceparent, tracestate);
            Parent::default()
        }
    }
}

/// The span of one trigger (one run, or a batch of one job's runs), open while the runs are
/// enqueued.
pub(crate) struct Trigger {
    #[cfg(feature = "otel")]
    span: tracing::Span,
}

impl Trigger {
    /// Opens the `durably.trigger` span of `count` runs of `job` under `parent`.
    #[cfg_attr(not(feature = "otel"), inline(always))]
    pub(crate) fn start(job: &str, count: usize, parent: &Parent) -> Self {
        #[cfg(feature = "otel")]
        {
            let span = tracing::info_span!(
                "durably.trigger",
                otel.kind = "producer",
                otel.status_code = Empty,
                otel.status_description = Empty,
                messaging.system = SYSTEM,
                messaging.operation.type = "send",
                messaging.operation.name = "trigger",
                messaging.destination.name = job,
                messaging.message.id = Empty,
                messaging.batch.message_count = (count > 1).then_some(count),
                durably.job.name = job,
                durably.run.id = Empty,
                error.type = Empty,
            );
            otel::set_parent(&span, parent);
            Trigger { span }
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (job, count, parent);
            Trigger {}
        }
    }

    /// The trace context to store with the runs (`None` without the feature, or when no
    /// OpenTelemetry layer sees the span).
    #[cfg_attr(not(feature = "otel"), inline(always))]
    pub(crate) fn trace_context(&self) -> Option<String> {
        #[cfg(feature = "otel")]
        {
            otel::traceparent(&self.span)
        }
        #[cfg(not(feature = "otel"))]
        {
            None
        }
    }

    /// Runs `future` (the enqueue) inside the trigger's span.
    pub(crate) async fn around<T>(&self, future: impl Future<Output = T>) -> T {
        #[cfg(feature = "otel")]
        {
            use tracing::Instrument;
            future.instrument(self.span.clone()).await
        }
        #[cfg(not(feature = "otel"))]
        {
            future.await
        }
    }

    /// Records the enqueue's outcome: the run's id (a trigger of one run), or the error.
    #[cfg_attr(not(feature = "otel"), inline(always))]
    pub(crate) fn ended(&self, outcome: std::result::Result<&[Enqueued], &Error>) {
        #[cfg(feature = "otel")]
        match outcome {
            Ok([one]) => {
                self.span
                    .record("messaging.message.id", one.run.id.as_str());
                self.span.record("durably.run.id", one.run.id.as_str());
            }
            Ok(_) => {}
            Err(error) => {
                self.span.record("otel.status_code", "error");
                self.span
                    .record("otel.status_description", tracing::field::display(error));
                self.span.record("error.type", error_type(error));
            }
        }
        #[cfg(not(feature = "otel"))]
        let _ = outcome;
    }
}

/// OpenTelemetry's `error.type` of a trigger's error: a low-cardinality class.
#[cfg(feature = "otel")]
fn error_type(error: &Error) -> &'static str {
    match error {
        Error::Validation(_) => "validation",
        Error::Conflict(_) => "conflict",
        Error::NotFound(_) => "not_found",
        _ => "_OTHER",
    }
}

/// The span of one execution of `run` (`durably.run`): with the feature `otel`, a child of the
/// run's stored trace context, or a trace of its own without one.
pub(crate) fn run_span(run: &Run) -> tracing::Span {
    let span = tracing::info_span!(
        "durably.run",
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = SYSTEM,
        messaging.operation.type = "process",
        messaging.operation.name = "run",
        messaging.destination.name = run.job_name.as_str(),
        messaging.message.id = run.id.as_str(),
        durably.run.id = run.id.as_str(),
        durably.job.name = run.job_name.as_str(),
        durably.lease.generation = run.lease_generation,
        durably.run.outcome = Empty,
    );
    #[cfg(feature = "otel")]
    otel::continue_trace(&span, run.trace_context.as_deref());
    span
}

/// Records how an execution ended on its span.
pub(crate) fn run_ended(span: &tracing::Span, outcome: Outcome) {
    let name = match outcome {
        Outcome::Completed => "completed",
        Outcome::Failed => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::LeaseLost => "lease_lost",
        Outcome::Suspended => "suspended",
        Outcome::Released => "released",
    };
    span.record("durably.run.outcome", name);
    if outcome == Outcome::Failed {
        span.record("otel.status_code", "error");
    }
}

/// The span of one step attempt (`durably.step`), a child of the current execution's span.
pub(crate) fn step_span(name: &str, index: i64, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "durably.step",
        otel.status_code = Empty,
        otel.status_description = Empty,
        durably.step.name = name,
        durably.step.index = index,
        durably.step.attempt = attempt,
        durably.step.outcome = Empty,
        error.type = Empty,
    )
}

/// How a step attempt ended, for its span.
pub(crate) enum StepEnd<'a> {
    /// Its output was stored.
    Completed,
    /// It failed (`error_type`: a low-cardinality class of the error, as OpenTelemetry's
    /// `error.type`).
    Failed {
        error_type: &'static str,
        message: &'a dyn std::fmt::Display,
    },
    /// The run was cancelled while it ran.
    Cancelled,
}

/// Records how a step attempt ended on its span.
pub(crate) fn step_ended(span: &tracing::Span, end: StepEnd<'_>) {
    match end {
        StepEnd::Completed => {
            span.record("durably.step.outcome", "completed");
        }
        StepEnd::Cancelled => {
            span.record("durably.step.outcome", "cancelled");
        }
        StepEnd::Failed {
            error_type,
            message,
        } => {
            span.record("durably.step.outcome", "failed");
            span.record("otel.status_code", "error");
            span.record("otel.status_description", tracing::field::display(message));
            span.record("error.type", error_type);
        }
    }
}

/// The OpenTelemetry side (feature `otel`): W3C trace context in and out of the store.
#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::Parent;

    /// Gives a trigger's span its parent: the HTTP caller's, none, or (by default) the
    /// current span's.
    pub(super) fn set_parent(span: &tracing::Span, parent: &Parent) {
        let context = match (&parent.remote, parent.root) {
            (Some(remote), _) => remote.clone(),
            (None, true) => opentelemetry::Context::new(),
            (None, false) => return,
        };
        // Fails only without an OpenTelemetry layer (nothing to export then).
        let _ = span.set_parent(context);
    }

    /// Makes an execution's span a child of the run's stored trace context, or the root of a
    /// trace of its own (never a child of the worker's long-lived span).
    pub(super) fn continue_trace(span: &tracing::Span, stored: Option<&str>) {
        let context = match stored.and_then(|value| remote_context(value, None)) {
            Some(context) => context,
            None => {
                if let Some(value) = stored {
                    tracing::debug!(
                        trace_context = value,
                        "stored trace context is not a W3C traceparent"
                    );
                }
                opentelemetry::Context::new()
            }
        };
        let _ = span.set_parent(context);
    }

    /// The W3C `traceparent` of `span` (`None` when no OpenTelemetry layer sees it).
    pub(super) fn traceparent(span: &tracing::Span) -> Option<String> {
        let context = span.context();
        let span_ref = context.span();
        let span_context = span_ref.span_context();
        span_context.is_valid().then(|| {
            format!(
                "00-{:032x}-{:016x}-{:02x}",
                span_context.trace_id(),
                span_context.span_id(),
                span_context.trace_flags().to_u8()
            )
        })
    }

    /// The remote context a W3C `traceparent` (and `tracestate`) names; `None` when the value
    /// is not a valid `traceparent` (W3C Trace Context, level 1: version `00` has exactly four
    /// fields; a later version at least four; ids not all zeros; lowercase hex).
    pub(crate) fn remote_context(
        traceparent: &str,
        tracestate: Option<&str>,
    ) -> Option<opentelemetry::Context> {
        let span_context = parse_traceparent(traceparent.trim(), tracestate)?;
        Some(opentelemetry::Context::new().with_remote_span_context(span_context))
    }

    fn parse_traceparent(value: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let state = tracestate
            .and_then(|state| state.parse::<TraceState>().ok())
            .unwrap_or_default();
        let context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
            true,
            state,
        );
        context.is_valid().then_some(context)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn traceparent_values_are_read_as_w3c_says() {
            let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let context = parse_traceparent(valid, Some("vendor=value")).expect("valid");
            assert_eq!(
                format!("{:032x}", context.trace_id()),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert_eq!(format!("{:016x}", context.span_id()), "00f067aa0ba902b7");
            assert!(context.is_sampled());
            assert!(context.is_remote());
            assert_eq!(context.trace_state().get("vendor"), Some("value"));
            let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
            assert!(
                !parse_traceparent(unsampled, None)
                    .expect("valid")
                    .is_sampled()
            );
            // A later version may add fields.
            let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
            assert!(parse_traceparent(later, None).is_some());
            for invalid in [
                "",
                "garbage",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            ] {
                assert!(parse_traceparent(invalid, None).is_none(), "{invalid:?}");
            }
        }
    }
}
