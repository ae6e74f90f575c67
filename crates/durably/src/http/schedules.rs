//! The schedule routes (durably for Rust extension): list and read the cron schedules, pause,
//! resume and trigger them now.
//!
//! | method & path | answer |
//! |---|---|
//! | `GET /schedules` | JSON array of [`ClientSchedule`], by name |
//! | `GET /schedule?name=` | [`ClientSchedule`] |
//! | `POST /schedules/pause?name=` | [`ClientSchedule`], paused |
//! | `POST /schedules/resume?name=` | [`ClientSchedule`], resumed from the first slot after now |
//! | `POST /schedules/trigger?name=` | `{"runId"}`: a run of the schedule's job now, outside its slots |
//!
//! Schedules are not runs: as `GET /jobs`, these routes pass authentication only (no run-access
//! hook), except `POST /schedules/trigger`, which creates a run and so also asks
//! [`Auth::on_trigger`](super::Auth::on_trigger) with the body a `POST /trigger` of that run
//! would have (`{"jobName", "input", "labels"}`).

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::Shared;
use super::request::{Query, within};
use super::responses::{Reply, bad_request, durably_error, error_response, json_response};
use crate::error::Error;
use crate::run::Labels;
use crate::schedules::{SCHEDULE_LABEL, ScheduleRecord};
use crate::time::Timestamp;

use super::auth::Guard;
use super::auth::Rejection;

/// A schedule as the HTTP API shows it (camelCase; `catchUp` in its stored form: `skip`,
/// `one`, `all:<max>`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientSchedule {
    name: String,
    job_name: String,
    cron: String,
    time_zone: String,
    input: Value,
    labels: Labels,
    catch_up: String,
    paused: bool,
    next_fire_at: Timestamp,
    last_fired_at: Option<Timestamp>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<ScheduleRecord> for ClientSchedule {
    fn from(record: ScheduleRecord) -> Self {
        ClientSchedule {
            catch_up: record.catch_up.as_text(),
            name: record.name,
            job_name: record.job_name,
            cron: record.cron,
            time_zone: record.time_zone,
            input: record.input,
            labels: record.labels,
            paused: record.paused,
            next_fire_at: record.next_fire_at,
            last_fired_at: record.last_fired_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// `{"runId"}`: the run `POST /schedules/trigger` created.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TriggeredResponse {
    run_id: String,
}

/// The `name` query parameter: required, not empty, no NUL character.
fn name_param(query: &Query) -> Result<String, axum::response::Response> {
    match query.first("name") {
        Some(name) if !name.is_empty() => {
            crate::limits::check_text("name", name).map_err(durably_error)?;
            Ok(name.to_owned())
        }
        _ => Err(bad_request("name query parameter is required")),
    }
}

fn not_found(name: &str) -> axum::response::Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("Schedule not found: {name}"),
    )
}

/// The error of an operation on schedule `name`: its absence is a 404 naming it.
fn schedule_error(name: &str) -> impl Fn(Error) -> axum::response::Response + '_ {
    move |error| match error {
        Error::NotFound(_) => not_found(name),
        other => durably_error(other),
    }
}

pub(super) async fn list(shared: &Shared) -> Reply {
    let schedules = within(shared, "list_schedules", shared.durably.schedules().list())
        .await
        .map_err(durably_error)?;
    let schedules: Vec<ClientSchedule> = schedules.into_iter().map(ClientSchedule::from).collect();
    Ok(json_response(StatusCode::OK, &schedules))
}

pub(super) async fn get(shared: &Shared, query: &Query) -> Reply {
    let name = name_param(query)?;
    let schedule = within(
        shared,
        "get_schedule",
        shared.durably.schedules().get(&name),
    )
    .await
    .map_err(durably_error)?
    .ok_or_else(|| not_found(&name))?;
    Ok(json_response(
        StatusCode::OK,
        &ClientSchedule::from(schedule),
    ))
}

pub(super) async fn pause(shared: &Shared, query: &Query) -> Reply {
    let name = name_param(query)?;
    let schedule = shared
        .durably
        .schedules()
        .pause(&name)
        .await
        .map_err(schedule_error(&name))?;
    Ok(json_response(
        StatusCode::OK,
        &ClientSchedule::from(schedule),
    ))
}

pub(super) async fn resume(shared: &Shared, query: &Query) -> Reply {
    let name = name_param(query)?;
    let schedule = shared
        .durably
        .schedules()
        .resume(&name)
        .await
        .map_err(schedule_error(&name))?;
    Ok(json_response(
        StatusCode::OK,
        &ClientSchedule::from(schedule),
    ))
}

/// `POST /schedules/trigger`: as `POST /trigger`, the run's trigger span is a child of the
/// caller's W3C trace context (`traceparent`, `tracestate`) when it sends one.
pub(super) async fn trigger(
    shared: &Shared,
    guard: &dyn Guard,
    headers: &axum::http::HeaderMap,
    query: &Query,
) -> Reply {
    let name = name_param(query)?;
    let schedules = shared.durably.schedules();
    let schedule = within(shared, "get_schedule", schedules.get(&name))
        .await
        .map_err(durably_error)?
        .ok_or_else(|| not_found(&name))?;
    let mut labels = schedule.labels.clone();
    labels.insert(SCHEDULE_LABEL.into(), schedule.name.clone());
    let body = json!({ "jobName": schedule.job_name, "input": schedule.input, "labels": labels });
    guard
        .on_trigger(&body)
        .await
        .map_err(Rejection::into_response)?;
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let parent = crate::telemetry::Parent::from_http(header("traceparent"), header("tracestate"));
    let run = schedules
        .trigger_now_under(&name, &parent)
        .await
        .map_err(schedule_error(&name))?;
    Ok(json_response(
        StatusCode::OK,
        &TriggeredResponse { run_id: run.id },
    ))
}
