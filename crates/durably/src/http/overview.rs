//! `GET /overview?window=1h|24h` (durably for Rust extension): how the queues are doing, for
//! the dashboard's first screen ([`crate::Store::run_overview`]).
//!
//! The answer aggregates every run, so under an [`Auth`](super::Auth) whose
//! [`scope_runs`](super::Auth::scope_runs) narrows what a caller may list it is refused (403):
//! a per-tenant overview would need the store to aggregate under that filter.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::Shared;
use super::auth::{Guard, Rejection};
use super::request::{Query, within};
use super::responses::{Reply, bad_request, durably_error, error_response, json_response};
use crate::overview::{Overview, OverviewWindow, Percentiles};
use crate::run::{RunFilter, RunStatus};
use crate::time::Timestamp;

/// `GET /overview`.
pub(super) async fn get(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let window = match query.first("window") {
        None => OverviewWindow::LastHour,
        Some(text) => OverviewWindow::parse(text).ok_or_else(|| {
            bad_request(&format!(
                "Invalid window: {text:?}. Must be one of: 1h (the last hour, by minute), 24h (the last day, by hour)"
            ))
        })?,
    };
    let everything = RunFilter::default();
    let scoped = guard
        .scope_runs(everything.clone())
        .await
        .map_err(Rejection::into_response)?;
    if scoped != everything {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            "The overview counts every run, and this server's auth limits the runs a caller may list: it is not available here",
        ));
    }
    let now = Timestamp::now();
    let overview = within(
        shared,
        "run_overview",
        shared.durably.store().run_overview(now, window),
    )
    .await
    .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &to_json(&overview)))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn percentiles(p: Option<Percentiles>) -> Value {
    match p {
        Some(p) => json!({ "p50": millis(p.p50), "p95": millis(p.p95), "count": p.count }),
        None => Value::Null,
    }
}

/// The wire form (camelCase, durations in milliseconds).
fn to_json(overview: &Overview) -> Value {
    let counts: serde_json::Map<String, Value> = RunStatus::ALL
        .into_iter()
        .map(|s| (s.as_str().to_owned(), json!(overview.counts.get(s))))
        .collect();
    json!({
        "window": overview.window.as_str(),
        "now": overview.now,
        "bucketMs": millis(overview.window.bucket()),
        "counts": counts,
        "oldestPending": overview.oldest_pending.as_ref().map(|p| json!({
            "runId": p.run_id,
            "jobName": p.job_name,
            "createdAt": p.created_at,
            "ageMs": millis(p.age),
        })),
        "buckets": overview.buckets.iter().map(|b| json!({
            "start": b.start, "completed": b.completed, "failed": b.failed,
        })).collect::<Vec<_>>(),
        "jobs": overview.jobs.iter().map(|j| json!({
            "jobName": j.job_name,
            "completed": j.completed,
            "failed": j.failed,
            "queueLatencyMs": percentiles(j.queue_latency),
            "durationMs": percentiles(j.duration),
        })).collect::<Vec<_>>(),
        "sampled": overview.sampled,
    })
}
