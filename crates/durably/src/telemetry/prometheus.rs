//! The Prometheus text endpoint (feature `prometheus`): an OpenTelemetry SDK meter provider
//! whose reader is `opentelemetry-prometheus`'s exporter, rendered in Prometheus's text
//! exposition format at `GET /metrics`.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::error::{Error, Result};

/// Metrics kept for a Prometheus scrape: a meter provider to hand to
/// [`DurablyBuilder::meter_provider`](crate::DurablyBuilder::meter_provider) (the instruments
/// of your own code may use it too), and [`metrics_router`] serving its values as
/// Prometheus text at `GET /metrics`.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use durably::http::{HttpOptions, PrometheusMetrics, metrics_router, router};
/// let metrics = PrometheusMetrics::new()?;
/// let durably = durably::Durably::builder()
///     .sqlite("app.db")
///     .meter_provider(metrics.meter_provider())
///     .build()?;
/// durably.init().await?;
/// let app = axum::Router::new()
///     .nest("/api/durably", router(durably.clone(), HttpOptions::new()))
///     .merge(metrics_router(&metrics));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PrometheusMetrics {
    registry: Registry,
    provider: SdkMeterProvider,
}

impl PrometheusMetrics {
    /// A meter provider read by a Prometheus exporter on a registry of its own.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|error| Error::Config(format!("Prometheus exporter: {error}")))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        Ok(PrometheusMetrics { registry, provider })
    }

    /// The meter provider whose instruments [`render`](Self::render) shows.
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.provider
    }

    /// The current values in Prometheus's text exposition format (version 0.0.4).
    pub fn render(&self) -> Result<String> {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .map_err(|error| Error::Config(format!("Prometheus text encoding: {error}")))?;
        String::from_utf8(text)
            .map_err(|error| Error::Config(format!("Prometheus text encoding: {error}")))
    }
}

/// `GET /metrics`: `metrics` rendered as Prometheus text (`text/plain; version=0.0.4`).
/// Merge it beside [`router`](crate::http::router); it is not part of it, so nothing is
/// exposed unless asked for.
pub fn metrics_router(metrics: &PrometheusMetrics) -> Router {
    let metrics = metrics.clone();
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { scrape(&metrics) }
        }),
    )
}

fn scrape(metrics: &PrometheusMetrics) -> Response {
    match metrics.render() {
        Ok(text) => (
            [(header::CONTENT_TYPE, TextEncoder::new().format_type())],
            text,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}
