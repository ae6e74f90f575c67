//! The durable-wait routes (upstream v4 §9.1): `GET /waits`, `GET /wait` and
//! `POST /signal`.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

use super::Shared;
use super::auth::{Guard, Rejection, RunOperation};
use super::request::{Query, accessible_run, within};
use super::responses::{Reply, bad_request, durably_error, error_response, json_response};
use crate::run::Run;
use crate::waits::{DurableWait, SignalDisposition};

/// Body of a successful `POST /signal` (key order as upstream).
#[derive(Serialize)]
struct SignalResponse {
    wait: DurableWait,
    disposition: SignalDisposition,
}

pub(super) async fn list_waits(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Waits).await?;
    let waits = within(shared, "get_waits", shared.durably.get_waits(&run.id))
        .await
        .map_err(durably_error)?;
    Ok(json_response(StatusCode::OK, &waits))
}

/// The wait named by `waitId`, which must belong to `run` (upstream v4 §9.1).
async fn wait_of(shared: &Shared, run: &Run, query: &Query) -> Result<DurableWait, Response> {
    let wait_id = match query.first("waitId") {
        Some(id) if !id.is_empty() => id,
        _ => return Err(bad_request("waitId query parameter is required")),
    };
    within(shared, "get_wait", shared.durably.get_wait(wait_id))
        .await
        .map_err(durably_error)?
        .filter(|wait| wait.run_id == run.id)
        .ok_or_else(|| error_response(StatusCode::NOT_FOUND, "Wait not found"))
}

pub(super) async fn get_wait(shared: &Shared, guard: &dyn Guard, query: &Query) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Waits).await?;
    let wait = wait_of(shared, &run, query).await?;
    Ok(json_response(StatusCode::OK, &wait))
}

/// `POST /signal`: the checks of upstream v4 §9.1 in its order.
pub(super) async fn signal(shared: &Shared, guard: &dyn Guard, query: &Query, body: Body) -> Reply {
    let run = accessible_run(shared, guard, query, RunOperation::Signal).await?;
    let wait = wait_of(shared, &run, query).await?;
    let limit = shared.options.body_limit;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request body too large: the limit is {limit} bytes"),
        )
    })?;
    let body: Value =
        serde_json::from_slice(&bytes).map_err(|_| bad_request("Invalid JSON body"))?;
    let Value::Object(mut fields) = body else {
        return Err(bad_request("Signal body must be an object"));
    };
    let signal_id = match fields.get("signalId") {
        Some(Value::String(id)) if crate::waits::validate_signal_id(id).is_ok() => id.clone(),
        _ => return Err(bad_request("signalId must be non-empty")),
    };
    let Some(payload) = fields.remove("payload") else {
        return Err(bad_request("payload is required"));
    };
    // Any JSON value parsed from text is a valid payload (upstream §4.6 refuses only what text
    // cannot carry: cycles, accessors, non-finite numbers, …).
    guard
        .on_signal(&run, &wait, &signal_id, &payload)
        .await
        .map_err(Rejection::into_response)?;
    let signalled = shared
        .durably
        .signal(&wait.id, payload, &signal_id)
        .await
        .map_err(durably_error)?;
    Ok(json_response(
        StatusCode::OK,
        &SignalResponse {
            wait: signalled.wait,
            disposition: signalled.disposition,
        },
    ))
}
