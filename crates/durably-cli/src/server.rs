//! The HTTP application shared by `durably demo` and `durably serve`: the API under
//! [`BASE_PATH`], the dashboard at `/`, and graceful shutdown on Ctrl-C / SIGTERM.

use std::time::Duration;

use axum::Router;
use durably::CancellationToken;
use durably::Durably;
use durably::http::{HttpOptions, PrometheusMetrics};
use tokio::net::TcpListener;

/// Where the API is served.
pub const BASE_PATH: &str = "/api/durably";

/// The HTTP application: the API under [`BASE_PATH`] and the dashboard
/// ([`durably::http::dashboard`]) at `/`.
pub fn app(durably: Durably, options: HttpOptions) -> Router {
    Router::new()
        .merge(durably::http::dashboard(BASE_PATH))
        .nest(BASE_PATH, durably::http::router(durably, options))
}

/// `app` with `GET /metrics` (Prometheus text of `metrics`) beside it, when given.
pub fn with_metrics(app: Router, metrics: Option<&PrometheusMetrics>) -> Router {
    match metrics {
        Some(metrics) => app.merge(durably::http::metrics_router(metrics)),
        None => app,
    }
}

/// The Prometheus metrics of `durably demo --metrics` and `durably serve --metrics` (`None`
/// without the flag); the caller hands their meter provider to the builder.
pub fn metrics(enabled: bool) -> Result<Option<PrometheusMetrics>, durably::Error> {
    enabled.then(PrometheusMetrics::new).transpose()
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// Binds `host:port`: `durably demo` and `durably serve` bind before they create or open
/// anything (a database file, its journal), so that a busy port leaves no file behind. The
/// error says what to do: another `--port`, or `--port 0` for a free one.
pub async fn bind(host: &str, port: u16) -> Result<TcpListener, String> {
    TcpListener::bind((host, port))
        .await
        .map_err(|error| listen_error(host, port, &error))
}

/// The message of a failed bind.
pub fn listen_error(host: &str, port: u16, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on {host}:{port}: port {port} is already in use (by another durably \
             demo or serve, or another program): choose another with --port, or --port 0 for a \
             free one"
        ),
        _ => format!(
            "cannot listen on {host}:{port}: {error} (check --host; choose another --port, or \
             --port 0 for a free one)"
        ),
    }
}

/// Serves `durably` on `listener` (see [`bind`]) until Ctrl-C / SIGTERM, then shuts down
/// gracefully: stop accepting, end open event streams, stop the worker (waiting up to
/// `shutdown_timeout` for runs in flight; a second signal exits at once). `extra` is merged
/// beside the application (routes of the caller's own). `announce` prints the banner with the
/// listening address.
pub async fn serve(
    durably: Durably,
    listener: TcpListener,
    shutdown_timeout: Duration,
    metrics: Option<PrometheusMetrics>,
    extra: Router,
    announce: impl FnOnce(std::net::SocketAddr),
) -> Result<(), Box<dyn std::error::Error>> {
    let streams = CancellationToken::new();
    let options = HttpOptions::new().shutdown(streams.clone());
    announce(listener.local_addr()?);

    let app = with_metrics(app(durably.clone(), options), metrics.as_ref()).merge(extra);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("shutting down: no new connections; closing event streams");
            streams.cancel();
        })
        .await;

    tokio::select! {
        finished = durably.stop_within(shutdown_timeout) => match finished {
            true => eprintln!("worker stopped"),
            false => eprintln!(
                "runs still in flight after {}s; exiting (they resume after their lease expires)",
                shutdown_timeout.as_secs()
            ),
        },
        _ = shutdown_signal() => eprintln!("second signal: exiting now"),
    }
    served.map_err(|e| format!("server error: {e}"))?;
    Ok(())
}
