//! Route-level tests of the HTTP + SSE layer (`durably::http`), through
//! `tower::ServiceExt::oneshot` (no network), on every backend. The router is nested under
//! `/api/durably` as the demo serves it. Upstream references: UPSTREAM.md §7–§9, server.shared,
//! sse.shared; our deliberate differences: SPEC.md §3 (#9–#13).
#![cfg(feature = "http")]

mod common;
#[path = "http_support/mod.rs"]
mod support;

use durably::store::ClaimRequest;
use std::time::Duration;

use axum::http::StatusCode;
use common::{Backend, backend_tests, eventually, within};
use durably::RunStatus;
use durably::http::HttpOptions;
use serde_json::{Value, json};
use support::{Api, keys_in_order};

const LONG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// POST /trigger

async fn trigger_returns_run_id_and_disposition(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let (status, body) = api
        .post_json(
            "/trigger",
            json!({"jobName": "echo", "input": {"value": 42}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let run_id = body["runId"].as_str().expect("runId").to_owned();
    assert_eq!(body["disposition"], "created");
    assert_eq!(
        keys_in_order(&api.raw_last()),
        vec!["runId", "disposition", "status"]
    );
    assert_eq!(body["status"], "pending");
    let run = api.durably.get_run(&run_id).await.unwrap().expect("stored");
    assert_eq!(run.input, json!({"value": 42}));
    assert_eq!(run.status, RunStatus::Pending);

    // idempotency key and concurrency key are persisted; a repeat is `idempotent`
    let request = json!({"jobName": "echo", "input": {"value": 1},
        "idempotencyKey": "idem-key", "concurrencyKey": "conc-key", "labels": {"org": "a"}});
    let (_, first) = api.post_json("/trigger", request.clone()).await;
    let (status, again) = api.post_json("/trigger", request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["disposition"], "idempotent");
    assert_eq!(again["runId"], first["runId"]);
    let stored = api
        .durably
        .get_run(first["runId"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.idempotency_key.as_deref(), Some("idem-key"));
    assert_eq!(stored.concurrency_key.as_deref(), Some("conc-key"));
    assert_eq!(stored.labels.get("org").map(String::as_str), Some("a"));

    // coalesce onto the pending run of the same key
    let (status, coalesced) = api
        .post_json(
            "/trigger",
            json!({"jobName": "echo", "input": {"value": 2}, "concurrencyKey": "conc-key", "coalesce": "skip"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{coalesced}");
    assert_eq!(coalesced["disposition"], "coalesced");
    assert_eq!(coalesced["runId"], first["runId"]);

    // a second pending run for the key without coalesce: 409
    let (status, conflict) = api
        .post_json(
            "/trigger",
            json!({"jobName": "echo", "input": {"value": 3}, "concurrencyKey": "conc-key"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(conflict["error"].as_str().unwrap().contains("conc-key"));
    assert_eq!(api.run_count().await, 2);
}

/// `coalesce: "queue"` and `"active"` (upstream v4 §9.2): the response's `status` is the
/// reused run's, `leased` when `active` reuses a running run.
async fn trigger_coalesces_with_queue_and_active(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let trigger = |value: u64, coalesce: Option<&str>| {
        let mut body = json!({"jobName": "echo", "input": {"value": value}, "concurrencyKey": "k"});
        if let Some(mode) = coalesce {
            body["coalesce"] = json!(mode);
        }
        body
    };
    let (status, first) = api.post_json("/trigger", trigger(1, Some("active"))).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        (&first["disposition"], &first["status"]),
        (&json!("created"), &json!("pending"))
    );
    let claimed = api
        .durably
        .store()
        .claim(
            &ClaimRequest::new("w", std::time::Duration::from_secs(60), 1),
            durably::Timestamp::now(),
        )
        .await
        .expect("claim");
    assert_eq!(json!(claimed[0].id), first["runId"]);

    let (status, active) = api.post_json("/trigger", trigger(2, Some("active"))).await;
    assert_eq!(status, StatusCode::OK, "{active}");
    assert_eq!(active["runId"], first["runId"]);
    assert_eq!(
        (&active["disposition"], &active["status"]),
        (&json!("coalesced"), &json!("leased"))
    );

    let (status, queued) = api.post_json("/trigger", trigger(3, Some("queue"))).await;
    assert_eq!(status, StatusCode::OK, "{queued}");
    assert_eq!(
        (&queued["disposition"], &queued["status"]),
        (&json!("created"), &json!("pending"))
    );
    for mode in ["queue", "skip", "active"] {
        let (status, again) = api.post_json("/trigger", trigger(4, Some(mode))).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["runId"], queued["runId"], "{mode}");
        assert_eq!(
            (&again["disposition"], &again["status"]),
            (&json!("coalesced"), &json!("pending"))
        );
    }
    let (status, conflict) = api.post_json("/trigger", trigger(5, None)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(
        conflict["error"],
        "A pending run already exists for concurrency key \"k\" in job \"echo\". Use coalesce: 'skip', 'queue', or 'active' to return the existing run instead."
    );
    assert_eq!(api.run_count().await, 2);
}

async fn trigger_rejects_bad_requests_and_stores_nothing(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new().body_limit(4096)).await;
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("no jobName", json!({"input": {}}).to_string(), StatusCode::BAD_REQUEST, "jobName is required"),
        ("empty jobName", json!({"jobName": "", "input": {}}).to_string(), StatusCode::BAD_REQUEST, "jobName is required"),
        ("jobName not a string", json!({"jobName": 5}).to_string(), StatusCode::BAD_REQUEST, "jobName must be a string"),
        ("body not an object", "[1,2]".to_owned(), StatusCode::BAD_REQUEST, "jobName is required"),
        ("unknown job", json!({"jobName": "non-existent", "input": {}}).to_string(), StatusCode::NOT_FOUND, "Job not found: non-existent"),
        ("invalid JSON (SPEC §3 #9)", "not json".to_owned(), StatusCode::BAD_REQUEST, "Invalid JSON body"),
        ("empty body", String::new(), StatusCode::BAD_REQUEST, "Invalid JSON body"),
        ("missing input", json!({"jobName": "echo"}).to_string(), StatusCode::BAD_REQUEST, "Invalid input: "),
        ("input of the wrong type", json!({"jobName": "steps", "input": {"count": "three"}}).to_string(), StatusCode::BAD_REQUEST, "Invalid input: "),
        ("input out of range", json!({"jobName": "steps", "input": {"count": 0}}).to_string(), StatusCode::BAD_REQUEST, "Invalid input: "),
        ("idempotencyKey not a string", json!({"jobName": "echo", "input": {"value": 1}, "idempotencyKey": 7}).to_string(), StatusCode::BAD_REQUEST, "idempotencyKey must be a string"),
        ("empty idempotencyKey", json!({"jobName": "echo", "input": {"value": 1}, "idempotencyKey": ""}).to_string(), StatusCode::BAD_REQUEST, "idempotencyKey"),
        ("concurrencyKey not a string", json!({"jobName": "echo", "input": {"value": 1}, "concurrencyKey": []}).to_string(), StatusCode::BAD_REQUEST, "concurrencyKey must be a string"),
        ("labels not an object", json!({"jobName": "echo", "input": {"value": 1}, "labels": "x"}).to_string(), StatusCode::BAD_REQUEST, "labels: Invalid input"),
        ("label value not a string", json!({"jobName": "echo", "input": {"value": 1}, "labels": {"a": 1}}).to_string(), StatusCode::BAD_REQUEST, "labels: Invalid input"),
        ("invalid label key (SPEC §3 #9)", json!({"jobName": "echo", "input": {"value": 1}, "labels": {"bad key!": "x"}}).to_string(), StatusCode::BAD_REQUEST, "Invalid label key"),
        ("bad coalesce", json!({"jobName": "echo", "input": {"value": 1}, "concurrencyKey": "k", "coalesce": "merge"}).to_string(), StatusCode::BAD_REQUEST, "Invalid coalesce value: 'merge'. Valid values: 'skip', 'queue', 'active'"),
        ("coalesce without key", json!({"jobName": "echo", "input": {"value": 1}, "coalesce": "skip"}).to_string(), StatusCode::BAD_REQUEST, "coalesce requires concurrencyKey"),
        ("queue without key", json!({"jobName": "echo", "input": {"value": 1}, "coalesce": "queue"}).to_string(), StatusCode::BAD_REQUEST, "coalesce requires concurrencyKey"),
        ("active with an empty key", json!({"jobName": "echo", "input": {"value": 1}, "concurrencyKey": "", "coalesce": "active"}).to_string(), StatusCode::BAD_REQUEST, "coalesce requires concurrencyKey"),
        ("coalesce not a string", json!({"jobName": "echo", "input": {"value": 1}, "concurrencyKey": "k", "coalesce": 1}).to_string(), StatusCode::BAD_REQUEST, "Invalid coalesce value: '1'. Valid values: 'skip', 'queue', 'active'"),
        ("oversized body", json!({"jobName": "echo", "input": {"value": "x".repeat(10_000)}}).to_string(), StatusCode::PAYLOAD_TOO_LARGE, "too large"),
    ];
    for (what, body, expected_status, expected_error) in cases {
        let (status, _, text) = api.request("POST", "/trigger", Some(body)).await;
        assert_eq!(status, expected_status, "{what}: {text}");
        let parsed: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        let message = parsed["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {text}"));
        assert!(
            message.contains(expected_error),
            "{what}: {message:?} should contain {expected_error:?}"
        );
    }
    assert_eq!(
        api.run_count().await,
        0,
        "a rejected trigger stores nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// GET /runs

async fn runs_is_a_bare_array_of_client_runs(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    api.trigger("echo", json!({"value": 1}), json!({})).await;
    api.trigger("echo", json!({"value": 2}), json!({})).await;
    let (status, headers, text) = api.request("GET", "/runs", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let runs: Value = serde_json::from_str(&text).unwrap();
    let runs = runs.as_array().expect("a bare array");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["input"], json!({"value": 2}), "newest first");
    assert_eq!(
        keys_in_order(&text),
        vec![
            "id",
            "jobName",
            "input",
            "status",
            "currentStepIndex",
            "completedStepCount",
            "progress",
            "output",
            "error",
            "labels",
            "startedAt",
            "completedAt",
            "createdAt",
            "isTerminal",
            "isWaiting",
            "isActive"
        ]
    );
    for hidden in [
        "idempotencyKey",
        "concurrencyKey",
        "leaseOwner",
        "leaseExpiresAt",
        "leaseGeneration",
        "updatedAt",
        "heartbeatAt",
    ] {
        assert!(
            runs[0].get(hidden).is_none(),
            "{hidden} must not be exposed"
        );
    }
    assert_eq!(runs[0]["isTerminal"], false);
    assert_eq!(runs[0]["isActive"], true);
    assert_eq!(runs[0]["status"], "pending");
}

async fn runs_filters_and_pages(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let first = api
        .trigger(
            "echo",
            json!({"value": 1}),
            json!({"labels": {"org": "one"}}),
        )
        .await;
    api.trigger(
        "echo",
        json!({"value": 2}),
        json!({"labels": {"org": "two"}}),
    )
    .await;
    api.trigger("steps", json!({"count": 1}), json!({})).await;
    api.trigger("sleep", json!({"ms": 0}), json!({})).await;
    api.durably.cancel(&first).await.unwrap();

    let count = |v: &Value| v.as_array().map(Vec::len).unwrap_or(usize::MAX);
    let ok = |path: &'static str, expected: usize| {
        let api = &api;
        async move {
            let (status, body) = api.get_json(path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert_eq!(count(&body), expected, "{path}: {body}");
            body
        }
    };
    ok("/runs?jobName=echo", 2).await;
    let both = ok("/runs?jobName=steps&jobName=sleep", 2).await;
    let mut names: Vec<&str> = both
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["jobName"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["sleep", "steps"]);
    ok("/runs?jobName=", 0).await;
    ok("/runs?status=cancelled", 1).await;
    ok("/runs?status=pending&status=cancelled", 4).await;
    ok("/runs?status=completed", 0).await;
    ok("/runs?label.org=two", 1).await;
    ok("/runs?label.org=one&label.org=two", 1).await;
    ok("/runs?jobName=echo&label.org=nobody", 0).await;
    ok("/runs?limit=2", 2).await;
    ok("/runs?limit=2&offset=3", 1).await;
    ok("/runs?offset=1", 3).await;
    ok("/runs?limit=0", 0).await;
    ok("/runs?limit=5abc", 4).await;
    ok("/runs?limit=1.5", 1).await;
    ok("/runs?limit=", 4).await;
    ok("/runs?status=pending&other=ignored", 3).await;

    let bad = [
        (
            "/runs?status=running",
            "Invalid status: running. Must be one of: waiting, pending, leased, completed, failed, cancelled",
        ),
        (
            "/runs?status=pending&status=running",
            "Invalid status: running. Must be one of: waiting, pending, leased, completed, failed, cancelled",
        ),
        (
            "/runs?status=",
            "Invalid status: empty value. Must be one of: waiting, pending, leased, completed, failed, cancelled",
        ),
        (
            "/runs?status=pending&status=",
            "Invalid status: empty value. Must be one of: waiting, pending, leased, completed, failed, cancelled",
        ),
        (
            "/runs?limit=-1",
            "Invalid limit: must be a non-negative integer",
        ),
        (
            "/runs?limit=abc",
            "Invalid limit: must be a non-negative integer",
        ),
        (
            "/runs?offset=-3",
            "Invalid offset: must be a non-negative integer",
        ),
        (
            "/runs?offset=x",
            "Invalid offset: must be a non-negative integer",
        ),
    ];
    for (path, message) in bad {
        let (status, body) = api.get_json(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body, json!({"error": message}), "{path}");
    }
    let (status, body) = api.get_json("/runs?label.bad%20key=x").await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "invalid label key (SPEC §3 #9): {body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Invalid label key")
    );
}

// ---------------------------------------------------------------------------------------------
// GET /run, GET /steps

async fn run_returns_one_client_run(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let id = api.trigger("echo", json!({"value": 42}), json!({})).await;
    let (status, body) = api.get_json(&format!("/run?runId={id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["input"], json!({"value": 42}));
    assert_eq!(body["isTerminal"], false);
    assert_eq!(body["isActive"], true);
    assert!(body.get("leaseOwner").is_none() && body.get("updatedAt").is_none());

    api.durably.start();
    api.wait_status(&id, "completed").await;
    let (_, body) = api.get_json(&format!("/run?runId={id}")).await;
    assert_eq!(body["output"], json!({"value": 42}));
    assert_eq!(body["isTerminal"], true);
    assert_eq!(body["isActive"], false);
    api.durably.stop().await;

    for path in ["/run", "/run?runId=", "/run?other=1"] {
        let (status, body) = api.get_json(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body, json!({"error": "runId query parameter is required"}));
    }
    let (status, body) = api.get_json("/run?runId=01UNKNOWN").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "Run not found"}));
}

async fn steps_lists_persisted_steps(backend: Backend) {
    let api = Api::with(backend, HttpOptions::new(), |b| b.preserve_steps(true)).await;
    api.durably.start();
    let id = api.trigger("steps", json!({"count": 3}), json!({})).await;
    api.wait_status(&id, "completed").await;
    let (status, _, text) = api
        .request("GET", &format!("/steps?runId={id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let steps: Value = serde_json::from_str(&text).unwrap();
    let steps = steps.as_array().expect("array");
    assert_eq!(steps.len(), 3);
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["step-1", "step-2", "step-3"]);
    assert_eq!(steps[1]["output"], 2);
    assert_eq!(steps[0]["status"], "completed");
    assert_eq!(
        keys_in_order(&text),
        vec![
            "id",
            "runId",
            "name",
            "index",
            "status",
            "output",
            "error",
            "startedAt",
            "completedAt"
        ]
    );
    api.durably.stop().await;

    let (status, body) = api.get_json("/steps").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"error": "runId query parameter is required"}));
    let (status, body) = api.get_json("/steps?runId=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "Run not found"}));
}

async fn steps_are_empty_once_done_without_preserve_steps(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    api.durably.start();
    let id = api.trigger("steps", json!({"count": 2}), json!({})).await;
    api.wait_status(&id, "completed").await;
    let (status, body) = api.get_json(&format!("/steps?runId={id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([]));
    api.durably.stop().await;
}

async fn attempts_lists_one_attempt_per_step_execution_after_the_steps_are_gone(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    api.durably.start();
    let id = api.trigger("steps", json!({"count": 2}), json!({})).await;
    api.wait_status(&id, "completed").await;
    let (status, _, text) = api
        .request("GET", &format!("/attempts?runId={id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let attempts: Value = serde_json::from_str(&text).unwrap();
    let attempts = attempts.as_array().expect("array");
    let names: Vec<&str> = attempts
        .iter()
        .map(|a| a["stepName"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["step-1", "step-2"]);
    assert!(attempts.iter().all(|a| a["status"] == "completed"));
    assert_eq!(
        keys_in_order(&text),
        vec![
            "id",
            "runId",
            "stepName",
            "stepIndex",
            "leaseGeneration",
            "status",
            "metadata",
            "startedAt",
            "completedAt",
            "error",
            "interruptionReason"
        ]
    );
    let (status, body) = api.get_json("/attempts?runId=no-such-run").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api.get_json("/attempts").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    api.durably.stop().await;
}

// ---------------------------------------------------------------------------------------------
// POST /retrigger, POST /cancel, DELETE /run

async fn retrigger_creates_a_new_run(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    api.durably.start();
    let id = api
        .trigger(
            "steps",
            json!({"count": 2, "failAt": 2}),
            json!({"labels": {"org": "x"}}),
        )
        .await;
    api.wait_status(&id, "failed").await;
    let (status, body) = api
        .request_json("POST", &format!("/retrigger?runId={id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let new_id = body["runId"].as_str().expect("runId").to_owned();
    assert_ne!(new_id, id);
    assert_eq!(keys_in_order(&api.raw_last()), vec!["success", "runId"]);
    api.wait_status(&new_id, "failed").await;
    let (_, new_run) = api.get_json(&format!("/run?runId={new_id}")).await;
    assert_eq!(new_run["labels"], json!({"org": "x"}));
    api.durably.stop().await;

    let pending = api.trigger("echo", json!({"value": 1}), json!({})).await;
    let (status, body) = api
        .request_json("POST", &format!("/retrigger?runId={pending}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        format!("Cannot retrigger pending run: {pending}")
    );
    let (status, body) = api.request_json("POST", "/retrigger").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"error": "runId query parameter is required"}));
    let (status, body) = api.request_json("POST", "/retrigger?runId=missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "Run not found"}));
}

/// `POST /resume` (ours): the failed run goes back to pending under its own id and its next
/// execution replays the steps completed before the failure (one attempt each), executing only
/// the failed step again; a run that is not failed is 409, an unknown one 404.
async fn resume_continues_a_failed_run_under_its_id(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    api.durably.start();
    let id = api
        .trigger("steps", json!({"count": 3, "failAt": 3}), json!({}))
        .await;
    api.wait_status(&id, "failed").await;
    let (status, body) = api
        .request_json("POST", &format!("/resume?runId={id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"success": true, "runId": id}));
    assert_eq!(keys_in_order(&api.raw_last()), vec!["success", "runId"]);
    // Step 3 fails every time in this job: the resumed execution fails again at it.
    eventually("the resumed execution retried step 3", LONG, || async {
        let attempts = api.durably.get_step_attempts(&id).await.ok()?;
        let run = api.durably.get_run(&id).await.ok()??;
        (run.status == RunStatus::Failed
            && attempts.iter().filter(|a| a.step_name == "step-3").count() == 2)
            .then_some(attempts)
    })
    .await;
    let attempts = api.durably.get_step_attempts(&id).await.expect("attempts");
    for (step, executions) in [("step-1", 1), ("step-2", 1), ("step-3", 2)] {
        assert_eq!(
            attempts.iter().filter(|a| a.step_name == step).count(),
            executions,
            "{step}: {attempts:?}"
        );
    }
    assert_eq!(
        api.durably
            .get_runs(&durably::RunFilter::new())
            .await
            .expect("runs")
            .len(),
        1,
        "no new run"
    );
    api.durably.stop().await;

    let pending = api.trigger("echo", json!({"value": 1}), json!({})).await;
    let (status, body) = api
        .request_json("POST", &format!("/resume?runId={pending}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"].as_str().expect("error");
    assert!(
        message.contains(&pending) && message.contains("pending"),
        "{message}"
    );
    let (status, body) = api.request_json("POST", "/resume").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"error": "runId query parameter is required"}));
    let (status, body) = api.request_json("POST", "/resume?runId=missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "Run not found"}));
}

async fn cancel_cancels_active_runs_only(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let id = api.trigger("echo", json!({"value": 1}), json!({})).await;
    let (status, body) = api
        .request_json("POST", &format!("/cancel?runId={id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"success": true}));
    let (_, run) = api.get_json(&format!("/run?runId={id}")).await;
    assert_eq!(run["status"], "cancelled");

    let (status, body) = api
        .request_json("POST", &format!("/cancel?runId={id}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        format!("Cannot cancel already cancelled run: {id}")
    );

    api.durably.start();
    let done = api.trigger("echo", json!({"value": 2}), json!({})).await;
    api.wait_status(&done, "completed").await;
    let (status, body) = api
        .request_json("POST", &format!("/cancel?runId={done}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        format!("Cannot cancel completed run: {done}")
    );

    // a leased run is cancelled at once and its step is aborted
    let sleeping = api.trigger("sleep", json!({"ms": 60_000}), json!({})).await;
    api.wait_status(&sleeping, "leased").await;
    let (status, _) = api
        .request_json("POST", &format!("/cancel?runId={sleeping}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    within(
        "the worker to let go of the cancelled run",
        LONG,
        api.durably.stop(),
    )
    .await;
    let (_, run) = api.get_json(&format!("/run?runId={sleeping}")).await;
    assert_eq!(run["status"], "cancelled");

    let (status, body) = api.request_json("POST", "/cancel?runId=").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"error": "runId query parameter is required"}));
    let (status, body) = api.request_json("POST", "/cancel?runId=missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "Run not found"}));
}

async fn delete_removes_terminal_runs_only(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let id = api.trigger("echo", json!({"value": 1}), json!({})).await;
    let (status, body) = api
        .request_json("DELETE", &format!("/run?runId={id}"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], format!("Cannot delete pending run: {id}"));
    api.durably.cancel(&id).await.unwrap();
    let (status, body) = api
        .request_json("DELETE", &format!("/run?runId={id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"success": true}));
    let (status, _) = api.get_json(&format!("/run?runId={id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api.request_json("DELETE", "/run").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"error": "runId query parameter is required"}));
    let (status, body) = api
        .request_json("DELETE", &format!("/run?runId={id}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "Run not found"}));
}

// ---------------------------------------------------------------------------------------------
// Routing

async fn unknown_routes_are_plain_text_404(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    for (method, path) in [
        ("GET", "/unknown"),
        ("GET", "/runs/"),
        ("GET", "/trigger"),
        ("PUT", "/run"),
        ("POST", "/runs"),
        ("GET", ""),
        ("OPTIONS", "/runs"),
    ] {
        let (status, headers, text) = api.request(method, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(text, "Not Found", "{method} {path}");
        assert_eq!(headers["content-type"], "text/plain;charset=UTF-8");
    }
}

async fn jobs_and_openapi_are_served_beside_the_routes(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let (status, body) = api.get_json("/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([
            {"name": "burst", "inputSchema": null},
            {"name": "echo", "inputSchema": null},
            {"name": "sleep", "inputSchema": null},
            {"name": "steps", "inputSchema": null}
        ])
    );
    let (status, doc) = api.get_json("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/trigger",
        "/runs",
        "/run",
        "/steps",
        "/logs",
        "/retrigger",
        "/resume",
        "/wake",
        "/cancel",
        "/subscribe",
        "/runs/subscribe",
        "/jobs",
        "/overview",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(doc["paths"]["/run"].get("delete").is_some());
    // It says what the server does (issue 19, item 4): the registered jobs, minimum lengths,
    // the bounds, the label family, and links from a trigger's runId to the run routes.
    let request = &doc["components"]["schemas"]["TriggerRequest"];
    let jobs: Vec<&str> = request["oneOf"]
        .as_array()
        .expect("one alternative per job")
        .iter()
        .map(|alternative| {
            alternative["properties"]["jobName"]["const"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(jobs, ["burst", "echo", "sleep", "steps"]);
    let echo = &request["oneOf"][1]["properties"];
    assert_eq!(echo["idempotencyKey"]["minLength"], 1);
    assert_eq!(echo["idempotencyKey"]["maxLength"], 256);
    assert_eq!(echo["labels"]["maxProperties"], 64);
    let runs = &doc["paths"]["/runs"]["get"];
    assert_eq!(
        runs["parameters"][0]["schema"]["items"]["examples"],
        json!(["burst", "echo", "sleep", "steps"])
    );
    assert!(
        runs["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["name"].as_str().unwrap().contains('<')),
        "no parameter literally named label.<key>"
    );
    assert_eq!(runs["x-parameter-family"]["prefix"], "label.");
    assert_eq!(runs["x-parameter-family"]["maxItems"], 32);
    assert_eq!(
        doc["paths"]["/run"]["get"]["parameters"][0]["schema"]["minLength"],
        1
    );
    let links = &doc["paths"]["/trigger"]["post"]["responses"]["200"]["links"];
    for (link, operation) in [
        ("GetRun", "getRun"),
        ("GetSteps", "getSteps"),
        ("Cancel", "cancel"),
        ("Retrigger", "retrigger"),
        ("Resume", "resume"),
        ("Wake", "wake"),
        ("DeleteRun", "deleteRun"),
        ("Subscribe", "subscribe"),
    ] {
        assert_eq!(links[link]["operationId"], operation, "{link}");
        assert_eq!(links[link]["parameters"]["runId"], "$response.body#/runId");
    }
    // Every linked operation exists.
    let operations: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|path| path.as_object().unwrap().values())
        .filter_map(|operation| operation["operationId"].as_str())
        .collect();
    for link in links.as_object().unwrap().values() {
        assert!(operations.contains(&link["operationId"].as_str().unwrap()));
    }
}

// ---------------------------------------------------------------------------------------------
// Found by fuzzing (issue 19, item 5: fuzz/run.sh, docs/fuzzing.md): each defect Schemathesis
// found, reproduced deterministically.

/// The document described each SSE message as a string; a message is an unnamed event whose
/// `data` is the JSON of one event (Schemathesis ST108 on both streams).
async fn fuzz_sse_messages_are_documented_as_json_events(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    api.durably.start();
    let (_, doc) = api.get_json("/openapi.json").await;
    let message = |path: &str| {
        doc["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
            .clone()
    };
    let id = api.trigger("echo", json!({"value": 1}), json!({})).await;
    api.wait_status(&id, "completed").await;
    for (path, stream) in [
        ("/subscribe", format!("/subscribe?runId={id}")),
        ("/runs/subscribe", "/runs/subscribe".to_owned()),
    ] {
        let schema = message(path);
        assert_eq!(schema["type"], "object", "{path}: {schema}");
        assert_eq!(schema["required"], json!(["data"]), "{path}");
        assert_eq!(schema["properties"]["event"]["const"], "message", "{path}");
        let data = &schema["properties"]["data"];
        assert_eq!(data["type"], "string", "{path}");
        assert_eq!(data["contentMediaType"], "application/json", "{path}");
        let event = &data["contentSchema"];
        // A real event of the stream has the documented fields and type.
        let mut sse = api.sse(&stream).await;
        if path == "/runs/subscribe" {
            api.trigger("echo", json!({"value": 2}), json!({})).await;
        }
        let received = sse.next_event(LONG).await.expect("an event");
        for field in event["required"].as_array().expect("required") {
            let field = field.as_str().unwrap();
            assert!(
                received.get(field).is_some(),
                "{path}: {field} in {received}"
            );
        }
        let types = event["properties"]["type"]["enum"].as_array().unwrap();
        assert!(types.contains(&received["type"]), "{path}: {received}");
        assert_eq!(types.len(), if path == "/subscribe" { 15 } else { 14 });
    }
}

/// The document allowed `coalesce: "skip"` without a concurrency key (400) and any `null` was
/// refused where the server takes it as absent (Schemathesis ST202/ST201 on POST /trigger).
async fn fuzz_trigger_rules_are_documented(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let (_, doc) = api.get_json("/openapi.json").await;
    let echo = &doc["components"]["schemas"]["TriggerRequest"]["oneOf"][1];
    assert_eq!(echo["if"]["properties"]["coalesce"]["type"], "string");
    assert_eq!(
        echo["properties"]["coalesce"]["enum"],
        json!(["skip", "queue", "active", null])
    );
    assert_eq!(echo["then"]["required"], json!(["concurrencyKey"]));
    let (status, body) = api
        .post_json(
            "/trigger",
            json!({"jobName": "echo", "input": {"value": 1}, "coalesce": "skip"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "coalesce requires concurrencyKey");
    for field in ["idempotencyKey", "concurrencyKey", "labels", "coalesce"] {
        let types = &echo["properties"][field]["type"];
        assert!(
            types.as_array().unwrap().contains(&json!("null")),
            "{field}"
        );
        let (status, body) = api
            .post_json(
                "/trigger",
                json!({"jobName": "echo", "input": {"value": 1}, field: null}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{field}: null is absent: {body}");
    }
    // Keys and label values: no NUL (documented as a pattern), bounded in bytes.
    for schema in [
        &echo["properties"]["idempotencyKey"],
        &echo["properties"]["labels"]["additionalProperties"],
    ] {
        assert_eq!(schema["pattern"], "^[^\\u0000]*$", "{schema}");
        assert!(schema["x-maxBytes"].is_u64(), "{schema}");
    }
    // A listing's jobName is any text: an unknown name matches nothing (200, as upstream).
    let items = &doc["paths"]["/runs"]["get"]["parameters"][0]["schema"]["items"];
    assert!(items.get("enum").is_none(), "{items}");
    let (status, runs) = api.get_json("/runs?jobName=no-such-job").await;
    assert_eq!((status, runs), (StatusCode::OK, json!([])));
}

/// An invalid label key was accepted (200 `idempotent`) when the idempotency key named an
/// existing run: the store looked the key up before checking labels (Schemathesis ST201).
async fn fuzz_label_keys_are_checked_before_idempotency(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let first = api
        .post_json(
            "/trigger",
            json!({"jobName": "echo", "input": {"value": 1}, "idempotencyKey": "k"}),
        )
        .await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    for key in ["", "bad key"] {
        let (status, body) = api
            .post_json(
                "/trigger",
                json!({"jobName": "echo", "input": {"value": 1}, "idempotencyKey": "k",
                       "labels": {key: "v"}}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key:?}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("Invalid label key \"{key}\"")),
            "{body}"
        );
    }
    assert_eq!(api.run_count().await, 1);
}

/// `{"count": 2.0}` is the integer 2 to JSON Schema and to JavaScript, but serde refused it for
/// an integer field: 400 `invalid type: floating point` (Schemathesis ST202). A fractional
/// number is refused in JSON terms.
async fn fuzz_integral_floats_are_integers_in_input(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    api.durably.start();
    let id = api
        .trigger("steps", json!({"count": 2.0, "stepMs": 0e0}), json!({}))
        .await;
    api.wait_status(&id, "completed").await;
    let (_, run) = api.get_json(&format!("/run?runId={id}")).await;
    assert_eq!(run["input"], json!({"count": 2, "stepMs": 0}));
    assert_eq!(run["output"], json!({"sum": 3}));
    // A fractional number is still refused.
    let (status, body) = api
        .post_json(
            "/trigger",
            json!({"jobName": "steps", "input": {"count": 2.5}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // In JSON terms, with the field's path (not `invalid type: floating point, expected u32`).
    assert_eq!(
        body["error"],
        json!("Invalid input: count: expected an integer from 0 to 4294967295, got 2.5"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile input (issue 19): the same 400 on every backend, nothing stored

async fn hostile_text_and_oversized_requests_are_400_everywhere(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let nul_id = "Invalid runId: it contains a NUL character (U+0000) at byte 3, which cannot be \
                  stored; remove it";
    for (method, path) in [
        ("GET", "/run?runId=01J%00X"),
        ("DELETE", "/run?runId=01J%00X"),
        ("GET", "/steps?runId=01J%00X"),
        ("GET", "/logs?runId=01J%00X"),
        ("POST", "/cancel?runId=01J%00X"),
        ("POST", "/retrigger?runId=01J%00X"),
        ("POST", "/resume?runId=01J%00X"),
        ("GET", "/subscribe?runId=01J%00X"),
    ] {
        let (status, body) = api.request_json(method, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert_eq!(body, json!({ "error": nul_id }), "{method} {path}");
    }
    let too_many: String = (0..33).map(|i| format!("&label.k{i}=v")).collect();
    for (path, start) in [
        ("/runs?jobName=e%00", "Invalid jobName"),
        ("/runs?label.tenant=a%00", "Invalid label filter \"tenant\""),
        (
            &format!("/runs?limit=5{too_many}"),
            "Too many label filters: 33",
        ),
        (
            &format!("/runs/subscribe?x=1{too_many}"),
            "Too many label filters: 33",
        ),
    ] {
        let (status, body) = api.get_json(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let message = body["error"].as_str().expect("error");
        assert!(message.starts_with(start), "{path}: {message}");
    }
    let labels: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (body, start) in [
        (
            json!({"jobName": "ec\u{0}ho", "input": {}}),
            "Invalid jobName",
        ),
        (
            json!({"jobName": "echo", "input": {"value": 1}, "labels": {"t": "\u{0}"}}),
            "Invalid label \"t\"",
        ),
        (
            json!({"jobName": "echo", "input": {"value": 1}, "idempotencyKey": "\u{0}"}),
            "Invalid idempotencyKey",
        ),
        (
            json!({"jobName": "echo", "input": {"value": 1}, "labels": labels}),
            "labels: 65 labels given",
        ),
        (
            json!({"jobName": "echo", "input": {"value": 1}, "concurrencyKey": "x".repeat(257)}),
            "concurrencyKey is 257 bytes long",
        ),
    ] {
        let (status, reply) = api.post_json("/trigger", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        let message = reply["error"].as_str().expect("error");
        assert!(message.starts_with(start), "{body}: {message}");
    }
    assert_eq!(api.run_count().await, 0, "a refused request stores nothing");
    // NUL inside the input is JSON like any other and is stored as given.
    let id = api
        .trigger("echo", json!({"value": "a\u{0}b"}), json!({}))
        .await;
    let (status, run) = api.get_json(&format!("/run?runId={id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["input"], json!({"value": "a\u{0}b"}));
}

// ---------------------------------------------------------------------------------------------
// GET /subscribe

async fn subscribe_replays_terminal_state_and_closes(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    api.durably.start();
    let completed = api.trigger("echo", json!({"value": "hi"}), json!({})).await;
    api.wait_status(&completed, "completed").await;
    let failed = api
        .trigger("steps", json!({"count": 1, "failAt": 1}), json!({}))
        .await;
    api.wait_status(&failed, "failed").await;
    api.durably.stop().await;
    let cancelled = api.trigger("echo", json!({"value": 1}), json!({})).await;
    api.durably.cancel(&cancelled).await.unwrap();

    for (id, kind) in [
        (&completed, "run:complete"),
        (&failed, "run:fail"),
        (&cancelled, "run:cancel"),
    ] {
        let mut sse = api.sse(&format!("/subscribe?runId={id}")).await;
        assert_eq!(sse.status, StatusCode::OK);
        assert_eq!(sse.headers["content-type"], "text/event-stream");
        assert_eq!(sse.headers["cache-control"], "no-cache, no-transform");
        assert_eq!(sse.headers["connection"], "keep-alive");
        let events = sse.collect_to_end(LONG).await;
        assert_eq!(events.len(), 1, "{kind}: {events:?}");
        assert_eq!(events[0]["type"], kind);
        assert_eq!(events[0]["runId"], id.as_str());
        assert_eq!(events[0]["sequence"], 0);
        assert!(
            sse.raw.starts_with("data: {\"type\":\"") && sse.raw.ends_with("}\n\n"),
            "{}",
            sse.raw
        );
    }
    let mut sse = api.sse(&format!("/subscribe?runId={completed}")).await;
    let events = sse.collect_to_end(LONG).await;
    assert_eq!(events[0]["output"], json!({"value": "hi"}));
    assert_eq!(events[0]["duration"], 0);
    let mut sse = api.sse(&format!("/subscribe?runId={failed}")).await;
    let events = sse.collect_to_end(LONG).await;
    assert_eq!(events[0]["error"], "failed at step 1");
    assert_eq!(events[0]["failedStepName"], "");

    let (status, _, text) = api.request("GET", "/subscribe", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(text, r#"{"error":"runId query parameter is required"}"#);
    let (status, _, text) = api.request("GET", "/subscribe?runId=nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(text, r#"{"error":"Run not found"}"#);
}

async fn subscribe_streams_a_live_run_until_it_ends(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new().sse_throttle(Duration::ZERO)).await;
    let id = api
        .trigger(
            "steps",
            json!({"count": 3, "stepMs": 20}),
            json!({"labels": {"org": "a"}}),
        )
        .await;
    let mut sse = api.sse(&format!("/subscribe?runId={id}")).await;
    // read the (empty) current state of the pending run before the worker starts
    assert!(sse.next_event(Duration::from_millis(50)).await.is_none());
    api.durably.start();
    let events = sse.collect_to_end(LONG).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"run:leased"), "{types:?}");
    assert_eq!(types.last(), Some(&"run:complete"), "{types:?}");
    for expected in ["step:start", "step:complete", "run:progress", "log:write"] {
        assert!(types.contains(&expected), "{expected} in {types:?}");
    }
    assert!(!types.contains(&"run:trigger") && !types.contains(&"run:lease-renewed"));
    assert_eq!(types.iter().filter(|t| **t == "run:progress").count(), 3);
    let complete = events.last().unwrap();
    assert_eq!(complete["output"], json!({"sum": 6}));
    assert_eq!(complete["labels"], json!({"org": "a"}));
    assert!(complete["timestamp"].is_string());
    // live events only: synthetic "current state" events (sequence 0) may follow live ones
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .filter(|s| *s != 0)
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    // byte-exact framing: unnamed `data:` events only
    for frame in sse.raw.split_terminator("\n\n") {
        assert!(
            frame.starts_with("data: {") && !frame.contains('\n'),
            "{frame:?}"
        );
    }
    api.durably.stop().await;
}

async fn subscribe_to_a_leased_run_starts_with_its_state(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    // The first step's `step:start` follows the claim after the attempt's first write: wait for
    // it, or a busy machine delivers it live ahead of the stream's starting state.
    let step_started = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = step_started.clone();
    let _listening = api.durably.on_any(move |event| {
        if event.event_type() == durably::EventType::StepStart {
            notify.notify_one();
        }
    });
    api.durably.start();
    let id = api
        .trigger("steps", json!({"count": 2, "stepMs": 30_000}), json!({}))
        .await;
    api.wait_status(&id, "leased").await;
    within("the first step starts", LONG, step_started.notified()).await;
    let mut sse = api.sse(&format!("/subscribe?runId={id}")).await;
    let first = sse.next_event(LONG).await.expect("initial state");
    assert_eq!(first["type"], "run:leased");
    assert_eq!(first["sequence"], 0);
    assert_eq!(first["input"], json!({"count": 2, "stepMs": 30_000}));
    assert!(first["leaseOwner"].as_str().is_some_and(|o| !o.is_empty()));
    let (status, _) = api
        .request_json("POST", &format!("/cancel?runId={id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let rest = sse.collect_to_end(LONG).await;
    assert_eq!(
        rest.last().map(|e| e["type"].clone()),
        Some(json!("run:cancel"))
    );
    api.durably.stop().await;
}

async fn subscribe_of_a_pending_run_waits_for_it(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let id = api.trigger("echo", json!({"value": 5}), json!({})).await;
    let mut sse = api.sse(&format!("/subscribe?runId={id}")).await;
    assert!(
        sse.next_event(Duration::from_millis(200)).await.is_none(),
        "nothing while pending"
    );
    api.durably.start();
    let events = sse.collect_to_end(LONG).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"run:leased"));
    assert_eq!(types.last(), Some(&"run:complete"));
    api.durably.stop().await;
}

async fn progress_is_throttled_per_run_and_flushed_in_order(backend: Backend) {
    let api = Api::new(
        backend,
        HttpOptions::new().sse_throttle(Duration::from_millis(100)),
    )
    .await;
    let id = api.trigger("burst", json!({"count": 200}), json!({})).await;
    let mut sse = api.sse(&format!("/subscribe?runId={id}")).await;
    // read the (empty) current state of the pending run before the worker starts
    assert!(sse.next_event(Duration::from_millis(50)).await.is_none());
    api.durably.start();
    let events = sse.collect_to_end(LONG).await;
    let progress: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "run:progress")
        .map(|e| e["progress"]["current"].as_u64().unwrap())
        .collect();
    assert_eq!(
        progress.first(),
        Some(&1),
        "first progress always sent: {progress:?}"
    );
    assert_eq!(
        progress.last(),
        Some(&200),
        "last progress always sent: {progress:?}"
    );
    assert!(progress.len() < 200, "throttled: {}", progress.len());
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    // SPEC §3 #13: a held-back progress goes out before any later event of the run
    // live events only: synthetic "current state" events (sequence 0) may follow live ones
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .filter(|s| *s != 0)
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    let last_progress = events
        .iter()
        .rposition(|e| e["type"] == "run:progress")
        .unwrap();
    let last_log = events
        .iter()
        .rposition(|e| e["type"] == "log:write")
        .unwrap();
    assert!(
        last_progress < last_log,
        "the last progress precedes the log written after it"
    );
    api.durably.stop().await;

    // throttle off: every progress
    let api = Api::new(backend, HttpOptions::new().sse_throttle(Duration::ZERO)).await;
    let id = api.trigger("burst", json!({"count": 50}), json!({})).await;
    let mut sse = api.sse(&format!("/subscribe?runId={id}")).await;
    // read the (empty) current state of the pending run before the worker starts
    assert!(sse.next_event(Duration::from_millis(50)).await.is_none());
    api.durably.start();
    let events = sse.collect_to_end(LONG).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "run:progress")
            .count(),
        50
    );
    api.durably.stop().await;
}

async fn disconnecting_drops_the_subscription(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let id = api.trigger("echo", json!({"value": 1}), json!({})).await;
    let baseline = api.durably.open_event_streams();
    let sse = api.sse(&format!("/subscribe?runId={id}")).await;
    let all = api.sse("/runs/subscribe").await;
    assert_eq!(api.durably.open_event_streams(), baseline + 2);
    drop(sse);
    drop(all);
    assert_eq!(
        api.durably.open_event_streams(),
        baseline,
        "SPEC §3 #12: a client that goes away leaves no subscription behind"
    );
}

async fn keep_alive_comments_are_opt_in(backend: Backend) {
    let api = Api::new(
        backend,
        HttpOptions::new().keep_alive(Duration::from_millis(50)),
    )
    .await;
    let mut sse = api.sse("/runs/subscribe").await;
    sse.read_for(Duration::from_millis(180)).await;
    assert!(sse.raw.contains(": keep-alive\n\n"), "{:?}", sse.raw);
    let quiet = Api::new(backend, HttpOptions::new()).await;
    let mut sse = quiet.sse("/runs/subscribe").await;
    sse.read_for(Duration::from_millis(180)).await;
    assert_eq!(sse.raw, "", "no comments by default");
}

// ---------------------------------------------------------------------------------------------
// GET /runs/subscribe

async fn runs_subscribe_sends_slim_events_live(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new().sse_throttle(Duration::ZERO)).await;
    let mut sse = api.sse("/runs/subscribe").await;
    assert_eq!(sse.status, StatusCode::OK);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    let id = api
        .trigger(
            "steps",
            json!({"count": 1, "failAt": 1}),
            json!({"labels": {"org": "a"}}),
        )
        .await;
    let trigger = sse.next_event(LONG).await.expect("run:trigger");
    assert_eq!(
        trigger,
        json!({"type": "run:trigger", "runId": id, "jobName": "steps", "labels": {"org": "a"}})
    );
    assert!(
        sse.raw
            .starts_with(r#"data: {"type":"run:trigger","runId":""#)
    );
    api.durably.start();
    let events = sse.collect_until("run:fail", LONG).await;
    api.durably.stop().await;
    let by_type = |t: &str| {
        events
            .iter()
            .find(|e| e["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("{t} in {events:?}"))
    };
    assert_eq!(
        by_type("run:leased"),
        json!({"type": "run:leased", "runId": id, "jobName": "steps", "labels": {"org": "a"}})
    );
    assert_eq!(
        by_type("step:start"),
        json!({"type": "step:start", "runId": id, "jobName": "steps", "stepName": "step-1", "stepIndex": 0, "labels": {"org": "a"}})
    );
    assert_eq!(
        by_type("step:fail"),
        json!({"type": "step:fail", "runId": id, "jobName": "steps", "stepName": "step-1", "stepIndex": 0, "error": "failed at step 1", "labels": {"org": "a"}})
    );
    assert_eq!(
        by_type("run:fail"),
        json!({"type": "run:fail", "runId": id, "jobName": "steps", "labels": {"org": "a"}})
    );
    assert!(
        events
            .iter()
            .all(|e| e.get("timestamp").is_none() && e.get("sequence").is_none())
    );

    let (status, retriggered) = api
        .request_json("POST", &format!("/retrigger?runId={id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let trigger = sse.next_event(LONG).await.unwrap();
    assert_eq!(trigger["type"], "run:trigger");
    assert_eq!(trigger["runId"], retriggered["runId"]);
    let (status, _) = api
        .request_json(
            "POST",
            &format!("/cancel?runId={}", retriggered["runId"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let cancel = sse.next_event(LONG).await.unwrap();
    assert_eq!(cancel["type"], "run:cancel");

    // complete, progress, log and step:complete projections
    let ok = api.trigger("steps", json!({"count": 1}), json!({})).await;
    api.durably.start();
    let events = sse.collect_until("run:complete", LONG).await;
    api.durably.stop().await;
    let find = |t: &str| {
        events
            .iter()
            .find(|e| e["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("{t} in {events:?}"))
    };
    assert_eq!(
        find("run:complete"),
        json!({"type": "run:complete", "runId": ok, "jobName": "steps", "labels": {}})
    );
    assert_eq!(
        find("step:complete"),
        json!({"type": "step:complete", "runId": ok, "jobName": "steps", "stepName": "step-1", "stepIndex": 0, "labels": {}})
    );
    assert_eq!(
        find("run:progress"),
        json!({"type": "run:progress", "runId": ok, "jobName": "steps", "progress": {"current": 1, "total": 1, "message": "step 1/1"}, "labels": {}})
    );
    assert_eq!(
        find("log:write"),
        json!({"type": "log:write", "runId": ok, "jobName": "steps", "labels": {}, "stepName": null, "level": "info", "message": "step 1 done", "data": {"i": 1}})
    );
    assert!(
        sse.next_event(Duration::from_millis(100)).await.is_none(),
        "the stream stays open"
    );
    assert!(!sse.ended, "/runs/subscribe never ends by itself");
}

async fn runs_subscribe_filters_by_job_and_labels(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let mut by_job = api.sse("/runs/subscribe?jobName=echo").await;
    let mut by_jobs = api
        .sse("/runs/subscribe?jobName=echo&jobName=sleep&status=ignored&limit=1")
        .await;
    let mut by_label = api.sse("/runs/subscribe?label.org=a").await;
    let steps = api
        .trigger(
            "steps",
            json!({"count": 1}),
            json!({"labels": {"org": "a"}}),
        )
        .await;
    let echo = api
        .trigger("echo", json!({"value": 1}), json!({"labels": {"org": "b"}}))
        .await;
    let sleep = api.trigger("sleep", json!({"ms": 0}), json!({})).await;
    let ids = |events: Vec<Value>| {
        events
            .into_iter()
            .map(|e| e["runId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(by_job.read_for(Duration::from_millis(200)).await),
        vec![echo.clone()]
    );
    assert_eq!(
        ids(by_jobs.read_for(Duration::from_millis(200)).await),
        vec![echo, sleep]
    );
    assert_eq!(
        ids(by_label.read_for(Duration::from_millis(200)).await),
        vec![steps]
    );
}

async fn runs_subscribe_projects_coalesced_and_skips_operational_noise(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let mut sse = api.sse("/runs/subscribe").await;
    let first = api
        .trigger(
            "echo",
            json!({"value": 1}),
            json!({"concurrencyKey": "k", "labels": {"a": "1"}}),
        )
        .await;
    api.durably.emit(durably::EventKind::RunLeaseRenewed {
        run_id: first.clone(),
        job_name: "echo".into(),
        lease_owner: "w".into(),
        lease_expires_at: String::new(),
        labels: Default::default(),
    });
    api.durably.emit(durably::EventKind::WorkerError {
        error: "boom".into(),
        context: "idle-maintenance".into(),
        run_id: None,
    });
    api.trigger(
        "echo",
        json!({"value": 2}),
        json!({"concurrencyKey": "k", "coalesce": "skip", "labels": {"b": "2"}}),
    )
    .await;
    let events = sse.read_for(Duration::from_millis(200)).await;
    assert_eq!(
        events,
        vec![
            json!({"type": "run:trigger", "runId": first, "jobName": "echo", "labels": {"a": "1"}}),
            json!({"type": "run:coalesced", "runId": first, "jobName": "echo", "status": "pending",
                "labels": {"a": "1"}, "skippedInput": {"value": 2}, "skippedLabels": {"b": "2"}}),
        ]
    );
    assert!(
        sse.raw
            .contains(r#""skippedInput":{"value":2},"skippedLabels":{"b":"2"}}"#)
    );
}

// ---------------------------------------------------------------------------------------------
// Auth hooks: two tenants

async fn auth_runs_first_and_rejects_with_its_status(backend: Backend) {
    let (options, trigger_hook_calls) = support::tenant_auth();
    let api = Api::new(backend, options).await;
    for (method, path) in [
        ("GET", "/runs"),
        ("GET", "/unknown"),
        ("GET", "/runs/subscribe"),
        ("GET", "/subscribe?runId=x"),
        ("POST", "/trigger"),
    ] {
        let (status, _, text) = api.request_as(None, method, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {text}");
        assert_eq!(text, r#"{"error":"missing x-tenant header"}"#);
    }
    let (status, _, _) = api.request_as(Some("a"), "GET", "/unknown", None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "routing after authentication"
    );
    // validation comes before on_trigger: 400/404 without calling it
    let (status, _, text) = api
        .request_as(
            Some("a"),
            "POST",
            "/trigger",
            Some(json!({"input": {}}).to_string()),
        )
        .await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::BAD_REQUEST,
            r#"{"error":"jobName is required"}"#
        )
    );
    let (status, _, _) = api
        .request_as(
            Some("a"),
            "POST",
            "/trigger",
            Some(json!({"jobName": "nope"}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        trigger_hook_calls.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // on_trigger rejects another tenant's label with 403 and nothing is stored
    let (status, _, text) = api
        .request_as(
            Some("a"),
            "POST",
            "/trigger",
            Some(
                json!({"jobName": "echo", "input": {"value": 1}, "labels": {"tenant": "b"}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert_eq!(api.run_count().await, 0);
    // a stream rejected by a hook keeps the hook's status (SPEC §3 #11)
    let (status, _, text) = api
        .request_as(Some("blocked"), "GET", "/runs/subscribe", None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
}

/// Upstream `onRequest`: after authentication, before routing, on every request; never after a
/// rejected authentication; its rejection is the response.
async fn request_hook_runs_after_authentication(backend: Backend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::http::request::Parts;
    use durably::http::{Auth, Rejection, async_trait};

    type Log = Arc<Mutex<Vec<&'static str>>>;
    struct Recorded(Log);
    #[async_trait]
    impl Auth for Recorded {
        type Context = ();
        async fn authenticate(&self, request: &Parts) -> Result<(), Rejection> {
            self.0.lock().unwrap().push("authenticate");
            match request.headers.get("x-tenant") {
                Some(_) => Ok(()),
                None => Err(Rejection::unauthorized("who are you")),
            }
        }
    }

    let log = Log::default();
    let closed = Arc::new(AtomicBool::new(false));
    let options = HttpOptions::new().auth(Recorded(log.clone())).on_request({
        let (log, closed) = (log.clone(), closed.clone());
        move || {
            log.lock().unwrap().push("on_request");
            let closed = closed.load(Ordering::SeqCst);
            async move {
                match closed {
                    true => Err(Rejection::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "closed for maintenance",
                    )),
                    false => Ok(()),
                }
            }
        }
    });
    let api = Api::new(backend, options).await;
    let take = || std::mem::take(&mut *log.lock().unwrap());

    let (status, _, _) = api.request_as(None, "GET", "/runs", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        take(),
        ["authenticate"],
        "a rejected request skips the hook"
    );

    for (path, expected) in [
        ("/runs", StatusCode::OK),
        ("/unknown", StatusCode::NOT_FOUND),
    ] {
        let (status, _, text) = api.request_as(Some("a"), "GET", path, None).await;
        assert_eq!(status, expected, "{path}: {text}");
        assert_eq!(take(), ["authenticate", "on_request"], "{path}");
    }

    closed.store(true, Ordering::SeqCst);
    let body = json!({"jobName": "echo", "input": {"value": 1}}).to_string();
    let (status, _, text) = api
        .request_as(Some("a"), "POST", "/trigger", Some(body))
        .await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"closed for maintenance"}"#
        )
    );
    assert_eq!(take(), ["authenticate", "on_request"]);
    assert_eq!(
        api.run_count().await,
        0,
        "a rejected request changes nothing"
    );
}

async fn tenants_cannot_see_or_touch_each_others_runs(backend: Backend) {
    let api = Api::with(backend, support::tenant_auth().0, |b| {
        b.preserve_steps(true)
    })
    .await;
    let trigger_as = |tenant: &'static str, value: i64| {
        let api = &api;
        async move {
            let (status, _, text) = api
                .request_as(Some(tenant), "POST", "/trigger", Some(json!({"jobName": "echo", "input": {"value": value}, "labels": {"tenant": tenant}}).to_string()))
                .await;
            assert_eq!(status, StatusCode::OK, "{text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            body["runId"].as_str().unwrap().to_owned()
        }
    };
    let mut a_stream = api.sse_as("a", "/runs/subscribe").await;
    let mut b_stream = api.sse_as("b", "/runs/subscribe").await;
    let mut b_stream_asking_for_a = api.sse_as("b", "/runs/subscribe?label.tenant=a").await;
    let a_done = trigger_as("a", 1).await;
    api.durably.start();
    api.wait_status(&a_done, "completed").await;
    api.durably.stop().await;
    let a_pending = trigger_as("a", 2).await;
    let b_run = trigger_as("b", 3).await;

    // list: each tenant sees only its runs, whatever filter it asks for
    for (tenant, path, expected) in [
        ("a", "/runs", vec![a_pending.clone(), a_done.clone()]),
        ("b", "/runs", vec![b_run.clone()]),
        ("b", "/runs?label.tenant=a", vec![b_run.clone()]),
        ("b", "/runs?jobName=echo&status=completed", vec![]),
    ] {
        let (status, _, text) = api.request_as(Some(tenant), "GET", path, None).await;
        assert_eq!(status, StatusCode::OK);
        let runs: Vec<Value> = serde_json::from_str(&text).unwrap();
        let ids: Vec<String> = runs
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, expected, "{tenant} {path}");
    }
    // per-run routes: b gets 404 for a's runs and nothing changes
    for (method, path) in [
        ("GET", format!("/run?runId={a_done}")),
        ("GET", format!("/steps?runId={a_done}")),
        ("GET", format!("/subscribe?runId={a_done}")),
        ("GET", format!("/subscribe?runId={a_pending}")),
        ("POST", format!("/retrigger?runId={a_done}")),
        ("POST", format!("/resume?runId={a_done}")),
        ("POST", format!("/wake?runId={a_done}")),
        ("POST", format!("/cancel?runId={a_pending}")),
        ("DELETE", format!("/run?runId={a_done}")),
    ] {
        let (status, headers, text) = api.request_as(Some("b"), method, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "b {method} {path}: {text}");
        assert_eq!(
            headers["content-type"], "application/json",
            "{method} {path}"
        );
        assert_eq!(text, r#"{"error":"Run not found"}"#);
    }
    let a_runs = api
        .durably
        .get_runs(&durably::RunFilter::new().label("tenant", "a"))
        .await
        .unwrap();
    assert_eq!(a_runs.len(), 2, "b's retrigger/delete changed nothing");
    assert_eq!(
        api.durably
            .get_run(&a_pending)
            .await
            .unwrap()
            .unwrap()
            .status,
        RunStatus::Pending
    );
    assert_eq!(
        api.durably.get_run(&a_done).await.unwrap().unwrap().status,
        RunStatus::Completed
    );
    // a can do all of it on its own runs
    let (status, _, _) = api
        .request_as(Some("a"), "GET", &format!("/steps?runId={a_done}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = api
        .request_as(
            Some("a"),
            "POST",
            &format!("/cancel?runId={a_pending}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = api
        .request_as(Some("a"), "DELETE", &format!("/run?runId={a_done}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // runs/subscribe: b's streams never carried a's events
    let a_seen: Vec<Value> = a_stream.read_for(Duration::from_millis(200)).await;
    let b_seen: Vec<Value> = b_stream.read_for(Duration::from_millis(200)).await;
    let b_spy: Vec<Value> = b_stream_asking_for_a
        .read_for(Duration::from_millis(200))
        .await;
    assert!(
        a_seen.iter().all(|e| e["labels"]["tenant"] == "a") && a_seen.len() >= 4,
        "{a_seen:?}"
    );
    assert!(a_seen.iter().any(|e| e["type"] == "run:delete"));
    assert!(
        b_seen.iter().all(|e| e["labels"]["tenant"] == "b"),
        "{b_seen:?}"
    );
    assert_eq!(b_seen.len(), 1, "only b's own trigger: {b_seen:?}");
    assert!(
        b_spy.len() == 1 && b_spy[0]["runId"] == b_run.as_str(),
        "asking for a's label still gets only b's events: {b_spy:?}"
    );
}

backend_tests!(
    trigger_returns_run_id_and_disposition,
    trigger_rejects_bad_requests_and_stores_nothing,
    trigger_coalesces_with_queue_and_active,
    runs_is_a_bare_array_of_client_runs,
    runs_filters_and_pages,
    run_returns_one_client_run,
    steps_lists_persisted_steps,
    steps_are_empty_once_done_without_preserve_steps,
    attempts_lists_one_attempt_per_step_execution_after_the_steps_are_gone,
    retrigger_creates_a_new_run,
    resume_continues_a_failed_run_under_its_id,
    cancel_cancels_active_runs_only,
    delete_removes_terminal_runs_only,
    unknown_routes_are_plain_text_404,
    jobs_and_openapi_are_served_beside_the_routes,
    subscribe_replays_terminal_state_and_closes,
    subscribe_streams_a_live_run_until_it_ends,
    subscribe_to_a_leased_run_starts_with_its_state,
    subscribe_of_a_pending_run_waits_for_it,
    progress_is_throttled_per_run_and_flushed_in_order,
    disconnecting_drops_the_subscription,
    keep_alive_comments_are_opt_in,
    runs_subscribe_sends_slim_events_live,
    runs_subscribe_filters_by_job_and_labels,
    runs_subscribe_projects_coalesced_and_skips_operational_noise,
    auth_runs_first_and_rejects_with_its_status,
    tenants_cannot_see_or_touch_each_others_runs,
    request_hook_runs_after_authentication,
    hostile_text_and_oversized_requests_are_400_everywhere,
    fuzz_sse_messages_are_documented_as_json_events,
    fuzz_trigger_rules_are_documented,
    fuzz_label_keys_are_checked_before_idempotency,
    fuzz_integral_floats_are_integers_in_input,
);

/// PostgreSQL (where a statement can be made to wait: a lock another session holds): a
/// `GET /runs` that outlives `HttpOptions::read_timeout` answers 503 and leaves nothing running
/// in the database; one whose client goes away is cancelled there at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn slow_listings_time_out_with_503_and_abandoned_ones_are_cancelled() {
    let options = HttpOptions::new().read_timeout(Duration::from_millis(300));
    let api = std::sync::Arc::new(Api::new(Backend::Postgres, options).await);
    let schema = api.schema().expect("schema");
    let lock = common::RunsTableLock::take(&schema).await;
    let blocked = || lock.blocked();
    let (status, body) = within(
        "a listing to time out",
        LONG,
        api.get_json("/runs?label.tenant=acme&limit=10"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["error"].as_str().expect("error");
    assert!(
        message.starts_with("get_runs was cancelled after 300 ms"),
        "{message}"
    );
    common::eventually("no statement left waiting", LONG, || async {
        (blocked().await == 0).then_some(())
    })
    .await;
    // A client that goes away: its request future is dropped, and with it the statement.
    let client = api.clone();
    let request = tokio::spawn(async move { client.get_json("/runs?status=pending").await });
    common::eventually("the listing to wait for the lock", LONG, || async {
        (blocked().await == 1).then_some(())
    })
    .await;
    request.abort();
    common::eventually("the abandoned statement to end", LONG, || async {
        (blocked().await == 0).then_some(())
    })
    .await;
    lock.release().await;
}
