//! `durably bench --traces`: what tracing costs. Every span of durably (`durably.trigger`,
//! `durably.run`, `durably.step`) becomes an OpenTelemetry span through `tracing-opentelemetry`
//! on an SDK tracer provider with the SDK's batch span processor, whose exporter discards each
//! batch: the measured cost is the spans' creation, attributes, the trace context stored with
//! every run and the batching, not an exporter's serialization or network.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// Spans that reached the exporter.
static EXPORTED: AtomicU64 = AtomicU64::new(0);
/// The provider of [`layer`], flushed by [`flush`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Keeps nothing: counts the spans and drops them.
#[derive(Debug)]
struct DiscardExporter;

impl SpanExporter for DiscardExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        EXPORTED.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Exports every span ended so far; returns how many spans were exported in all.
pub fn flush() -> u64 {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.force_flush()
    {
        eprintln!("warning: the spans could not be flushed: {error}");
    }
    EXPORTED.load(Ordering::Relaxed)
}

/// The layer that turns durably's spans into OpenTelemetry spans, exported to nowhere.
pub fn layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(DiscardExporter).build())
        .build();
    let tracer = provider.tracer("durably-bench");
    let _ = PROVIDER.set(provider);
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target("durably", tracing::Level::INFO),
        )
}
