//! durably's traces exported over OTLP (HTTP/protobuf):
//! `cargo run -p durably --features otel --example otlp`.
//!
//! Start any OTLP receiver first, e.g. Jaeger (`docker run -p 16686:16686 -p 4318:4318
//! jaegertracing/jaeger`) or an OpenTelemetry Collector; the exporter sends to
//! `http://localhost:4318/v1/traces` unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) says otherwise. Without a receiver the program still
//! runs; its spans are dropped.
//!
//! The program triggers a two-step job inside a span of its own (`checkout`), so the trace
//! shows the caller's span, its `durably.trigger` child, the run's `durably.run` execution and
//! one `durably.step` per step. See docs/observability.md.

use std::time::Duration;

use durably::{Durably, Job, StepContext, TriggerOptions, WaitOptions};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Serialize, Deserialize)]
struct Order {
    id: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The OpenTelemetry SDK: OTLP over HTTP/protobuf, spans sent in batches from the SDK's
    //    own thread.
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("durably-example")
                .build(),
        )
        .build();

    // 2. `tracing` spans (durably's among them) become OpenTelemetry spans.
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("durably-example")))
        .init();

    // 3. durably, built with the feature `otel`: each run is one trace, from its trigger on.
    let durably = Durably::builder().sqlite(":memory:").build()?;
    let checkout = durably.register(Job::new(
        "checkout",
        |step: StepContext, order: Order| async move {
            let reserved = step
                .run("reserve-stock", |_| async move { Ok(order.id * 2) })
                .await?;
            step.run("charge-card", |_| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(format!("order {} charged ({reserved} items)", order.id))
            })
            .await
        },
    ))?;
    durably.init().await?;

    let request = tracing::info_span!("checkout", order.id = 7);
    let output = checkout
        .trigger_and_wait(
            Order { id: 7 },
            TriggerOptions::new(),
            WaitOptions::new().timeout(Duration::from_secs(10)),
        )
        .instrument(request)
        .await?
        .output;
    println!("{}", output.unwrap_or_default());

    durably.stop().await;
    // Sends what is still batched.
    provider.shutdown()?;
    Ok(())
}
