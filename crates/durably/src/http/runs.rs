//! The run routes: `GET /runs` (the listing and its filters), `GET /run`, its steps,
//! attempts and logs, and the actions `POST /retrigger`, `/resume`, `/wake`, `/cancel` and
//! `DELETE /run`.

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::auth::{Guard, Rejection, RunOperation};
use super::request::{Query, accessible_run, page_param, time_param, within};
use super::responses::{Reply, bad_request, durably_error, json_response};
use super::{ClientRun, Shared};
use crate::run::{RunFilter, RunStatus};

/// Body of a successful `POST /retrigger` (key order as upstream), `POST /resume` and
/// `POST /wake` (the same shape; their `runId` is the run's own).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RetriggerResponse {
    success: bool,
    run_id: String,
}

pub(super) async fn list_runs(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let mut filter = RunFilter {
        job_names: query.all("jobName"),
        labels: query.labels(),
        ..RunFilter::default()
    };
    for status in query.all("status") {
        let parsed = RunStatus::ALL.into_iter().find(|s| s.as_str() == status);
        match parsed {
            Some(status) => filter.statuses.push(status),
            None if status.is_empty() => {
                return Err(bad_request(
                    "Invalid status: empty value. Must be one of: waiting, pending, leased, completed, failed, cancelled",
                ));
            }
            None => {
                return Err(bad_request(&format!(
                    "Invalid status: {status}. Must be one of: waiting, pending, leased, completed, failed, cancelled"
                )));
            }
        }
    }
    filter.limit = page_param(query, "limit")?;
    filter.offset = page_param(query, "offset")?;
    // ours: the child runs of one run (an empty value filters nothing, as an absent one)
    if let Some(parent) = query.first("parentRunId").filter(|id| !id.is_empty()) {
        crate::limits::check_text("parentRunId", parent).map_err(durably_error)?;
        filter.parent_run_id = Some(parent.to_owned());
    }
    // ours: runs whose id starts with this text (an empty value filters nothing)
    if let Some(prefix) = query.first("idPrefix").filter(|p| !p.is_empty()) {
        crate::limits::check_text("idPrefix", prefix).map_err(durably_error)?;
        filter.id_prefix = Some(prefix.to_owned());
    }
    // ours: the time range, created at or after `createdSince` and before `createdBefore`
    filter.created_since = time_param(query, "createdSince")?;
    filter.created_before = time_param(query, "createdBefore")?;
    let filter = guard
        .scope_runs(filter)
        .await
        .map_err(Rejection::into_response)?;
    let runs = shared
        .durably
        .get_runs_within(&filter, shared.options.read_timeout)
        .await
        .map_err(durably_error)?;
    let runs: Vec<ClientRun> = runs.into_iter().map(ClientRun::from).collect();
    Ok(json_response(StatusCode::OK, &runs))
}

pub(super) async fn get_run(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Read).await?;
    Ok(json_response(StatusCode::OK, &ClientRun::from(run)))
}

pub(super) async fn get_steps(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Steps).await?;
    let steps = within(shared, "get_steps", shared.durably.get_steps(&run.id))
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &steps))
}

pub(super) async fn get_step_attempts(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Steps).await?;
    let attempts = within(
        shared,
        "get_step_attempts",
        shared.durably.get_step_attempts(&run.id),
    )
    .await
    .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &attempts))
}

pub(super) async fn get_logs(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Read).await?;
    let logs = within(shared, "get_logs", shared.durably.get_logs(&run.id))
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &logs))
}

pub(super) async fn retrigger(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Retrigger).await?;
    let new_run = shared
        .durably
        .retrigger(&run.id)
        .await
        .map_err(durably_error)?;
    acted_on(new_run.id)
}

/// `{ "success": true, "runId" }`: the answer of the routes that act on a run and name the run
/// to follow (retrigger's new run, a resumed or woken run).
fn acted_on(run_id: String) -> Reply {
    Ok(json_response(
        StatusCode::OK,
        &RetriggerResponse {
            success: true,
            run_id,
        },
    ))
}

pub(super) async fn resume(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Resume).await?;
    let resumed = shared
        .durably
        .resume(&run.id)
        .await
        .map_err(durably_error)?;
    acted_on(resumed.id)
}

pub(super) async fn wake(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Wake).await?;
    let woken = shared.durably.wake(&run.id).await.map_err(durably_error)?;
    acted_on(woken.id)
}

pub(super) async fn cancel(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Cancel).await?;
    shared
        .durably
        .cancel(&run.id)
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &json!({ "success": true })))
}

pub(super) async fn delete_run(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Delete).await?;
    shared
        .durably
        .delete_run(&run.id)
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &json!({ "success": true })))
}
