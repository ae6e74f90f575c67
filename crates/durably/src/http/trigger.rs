//! `POST /trigger`: the body's fields turned into [`TriggerOptions`] (upstream's, and ours:
//! `startAt`, `delayMs`, `debounce`, `priority`), the run's trace context from the request's
//! headers, and the answer.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value};

use super::Shared;
use super::auth::{Guard, Rejection};
use super::request::read_body;
use super::responses::{Reply, bad_request, durably_error, error_response, json_response};
use crate::run::{Coalesce, Disposition, Labels, RunStatus, TriggerOptions};

/// Body of a successful `POST /trigger` (key order as upstream).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TriggerResponse {
    run_id: String,
    disposition: Disposition,
    /// The run's status: `pending` for a created run, the reused run's for a coalesced or
    /// idempotent one.
    status: RunStatus,
}

fn optional_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad_request(&format!(
            "{key} must be a string (got {other})"
        ))),
    }
}

fn trigger_options(body: &Map<String, Value>) -> Result<TriggerOptions, Response> {
    let mut options = TriggerOptions::new();
    options.idempotency_key = optional_string(body, "idempotencyKey")?;
    options.concurrency_key = optional_string(body, "concurrencyKey")?;
    options.labels = match body.get("labels") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            let mut labels = Labels::new();
            for (key, value) in map {
                match value {
                    Value::String(s) => {
                        labels.insert(key.clone(), s.clone());
                    }
                    other => {
                        return Err(bad_request(&format!(
                            "labels: Invalid input: the value of label \"{key}\" must be a string (got {other})"
                        )));
                    }
                }
            }
            Some(labels)
        }
        Some(other) => {
            return Err(bad_request(&format!(
                "labels: Invalid input: expected an object of string values (got {other})"
            )));
        }
    };
    options.coalesce = match body.get("coalesce") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<Coalesce>().map_err(durably_error)?),
        Some(other) => {
            return Err(bad_request(&format!(
                "Invalid coalesce value: '{other}'. Valid values: 'skip', 'queue', 'active'"
            )));
        }
    };
    // durably's additions: a delayed run (`startAt`, an ISO 8601 time, or `delayMs`).
    options.start_at = match (body.get("startAt"), body.get("delayMs")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        (Some(Value::String(text)), None | Some(Value::Null)) => {
            Some(crate::Timestamp::parse(text).ok_or_else(|| {
                bad_request(&format!(
                    "startAt must be an ISO 8601 time such as 2026-01-31T12:00:00.000Z (got \"{text}\")"
                ))
            })?)
        }
        (None | Some(Value::Null), Some(delay)) => match delay.as_u64() {
            Some(ms) if ms <= MAX_DELAY_MS => {
                Some(crate::Timestamp::now() + std::time::Duration::from_millis(ms))
            }
            _ => {
                return Err(bad_request(&format!(
                    "delayMs must be an integer between 0 and {MAX_DELAY_MS} (got {delay})"
                )));
            }
        },
        (Some(_), None | Some(Value::Null)) => {
            return Err(bad_request("startAt must be a string (an ISO 8601 time)"));
        }
        (Some(_), Some(_)) => return Err(bad_request("Give startAt or delayMs, not both")),
    };
    options.debounce = match body.get("debounce") {
        None | Some(Value::Null) => None,
        Some(Value::Object(debounce)) => Some(debounce_option(debounce)?),
        Some(other) => {
            return Err(bad_request(&format!(
                "debounce must be an object {{\"key\", \"periodMs\", \"maxWaitMs\"?}} (got {other})"
            )));
        }
    };
    options.priority = match body.get("priority") {
        None | Some(Value::Null) => 0,
        Some(value) => json_integer(value)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| {
                bad_request(&format!(
                    "priority must be an integer between {} and {} (higher runs first; got {value})",
                    i32::MIN,
                    i32::MAX
                ))
            })?,
    };
    Ok(options)
}

/// A JSON number with an integer value, as JSON Schema's `integer` reads it: `6` and `6.0`.
fn json_integer(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(f))
            .map(|f| f as i64)
    })
}

/// The `debounce` field of a trigger: `{ "key", "periodMs", "maxWaitMs"? }`.
fn debounce_option(debounce: &Map<String, Value>) -> Result<crate::Debounce, Response> {
    let key = optional_string(debounce, "key")?
        .ok_or_else(|| bad_request("debounce.key is required (a string)"))?;
    let millis = |field: &str| -> Result<Option<u64>, Response> {
        match debounce.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match value.as_u64() {
                Some(ms) if (1..=MAX_DELAY_MS).contains(&ms) => Ok(Some(ms)),
                _ => Err(bad_request(&format!(
                    "debounce.{field} must be an integer between 1 and {MAX_DELAY_MS} (got {value})"
                ))),
            },
        }
    };
    let period = millis("periodMs")?
        .ok_or_else(|| bad_request("debounce.periodMs is required (milliseconds)"))?;
    let mut option = crate::Debounce::new(key, std::time::Duration::from_millis(period));
    if let Some(max_wait) = millis("maxWaitMs")? {
        option = option.max_wait(std::time::Duration::from_millis(max_wait));
    }
    Ok(option)
}

/// The longest `delayMs` of a trigger: 10 years.
const MAX_DELAY_MS: u64 = 10 * 366 * 24 * 3600 * 1000;

/// `POST /trigger`. The run's trigger span is a child of the caller's W3C trace context (the
/// `traceparent` and `tracestate` headers) when it sends one (see `crate::telemetry`).
pub(super) async fn trigger(
    shared: &Shared,
    guard: &dyn Guard,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Reply {
    let body = read_body(shared, body).await?;
    let job_name = match body.get("jobName") {
        None | Some(Value::Null) => return Err(bad_request("jobName is required")),
        Some(Value::String(name)) if name.is_empty() => {
            return Err(bad_request("jobName is required"));
        }
        Some(Value::String(name)) => name.clone(),
        Some(other) => {
            return Err(bad_request(&format!(
                "jobName must be a string (got {other})"
            )));
        }
    };
    crate::limits::check_text("jobName", &job_name).map_err(durably_error)?;
    if shared.durably.get_job(&job_name).is_none() {
        return Err(error_response(
            StatusCode::NOT_FOUND,
            &format!("Job not found: {job_name}"),
        ));
    }
    guard
        .on_trigger(&body)
        .await
        .map_err(Rejection::into_response)?;
    let Value::Object(fields) = &body else {
        return Err(bad_request("jobName is required"));
    };
    let options = trigger_options(fields)?;
    let input = fields.get("input").cloned().unwrap_or(Value::Null);
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let parent = crate::telemetry::Parent::from_http(header("traceparent"), header("tracestate"));
    let result = shared
        .durably
        .trigger_json_under(&job_name, input, options, &parent)
        .await
        .map_err(durably_error)?;
    Ok(json_response(
        StatusCode::OK,
        &TriggerResponse {
            run_id: result.run.id,
            disposition: result.disposition,
            status: result.run.status,
        },
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn integers_may_be_written_as_floats() {
        use super::json_integer;
        use serde_json::json;
        assert_eq!(json_integer(&json!(6)), Some(6));
        assert_eq!(json_integer(&json!(22256918.0)), Some(22256918));
        assert_eq!(json_integer(&json!(-3.0)), Some(-3));
        assert_eq!(json_integer(&json!(1.5)), None);
        assert_eq!(json_integer(&json!(1e300)), None);
        assert_eq!(json_integer(&json!("6")), None);
    }
}
