//! `POST /wake?runId=` (ours, issue 22 item 8): "run now" / "retry now" for a run waiting on a
//! timer. A delayed run woken starts at once; a run waiting for a signal is 409 and the message
//! names the wait to signal; a run not waiting is 409 naming its status; an unknown run 404; a
//! missing `runId` 400. On every backend, through the router nested as the demo serves it.
#![cfg(feature = "http")]

mod common;
#[path = "http_support/mod.rs"]
mod support;

use axum::http::StatusCode;
use common::{Backend, backend_tests};
use durably::http::HttpOptions;
use durably::{Job, NewWait, StepContext};
use serde_json::{Value, json};
use support::{Api, keys_in_order};

/// Waits for the signal `approval`.
fn approval() -> Job<Value, Value> {
    Job::new("approval", |step: StepContext, _input: Value| async move {
        let wait = step.prepare_wait(NewWait::new("approval")).await?;
        step.wait_for(&wait).await?;
        Ok(Value::Null)
    })
}

async fn wake_starts_a_delayed_run_now_and_refuses_other_runs(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    api.durably.register(approval()).expect("register approval");
    api.durably.start();

    let delayed = api
        .trigger("echo", json!({"value": 7}), json!({"delayMs": 3_600_000}))
        .await;
    api.wait_status(&delayed, "waiting").await;
    let (status, body) = api
        .request_json("POST", &format!("/wake?runId={delayed}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"success": true, "runId": delayed}));
    assert_eq!(keys_in_order(&api.raw_last()), vec!["success", "runId"]);
    api.wait_status(&delayed, "completed").await;
    let waits = api.durably.get_waits(&delayed).await.expect("waits");
    assert_eq!(waits[0].signal_id.as_deref(), Some("wake"));

    // A completed run: 409 naming its status.
    let (status, body) = api
        .request_json("POST", &format!("/wake?runId={delayed}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"].as_str().expect("error");
    assert!(
        message.contains("completed") && message.contains(&delayed),
        "{message}"
    );

    // A run waiting for a signal: 409 naming the wait to signal.
    let waiting = api.trigger("approval", json!({}), json!({})).await;
    api.wait_status(&waiting, "waiting").await;
    let (status, body) = api
        .request_json("POST", &format!("/wake?runId={waiting}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"].as_str().expect("error");
    assert!(
        message.contains("signal approval") && message.contains("signal that wait"),
        "{message}"
    );

    let (status, body) = api.request_json("POST", "/wake").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"error": "runId query parameter is required"}));
    let (status, body) = api.request_json("POST", "/wake?runId=missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "Run not found"}));
    api.durably.stop().await;
}

backend_tests!(wake_starts_a_delayed_run_now_and_refuses_other_runs);
