//! The wait routes of the HTTP layer (upstream v4 §9.1): `GET /waits`, `GET /wait` and
//! `POST /signal`, their checks in upstream's order with upstream's texts, the error statuses
//! of a signal (409, 410, 404) and the auth hooks (`on_run_access` with `waits`/`signal`,
//! `on_signal`), on every backend, through the router nested as the demo serves it.
#![cfg(feature = "http")]

mod common;
#[path = "http_support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::http::request::Parts;
use common::{Backend, backend_tests, terminal};
use durably::http::{Auth, HttpOptions, Rejection, RunOperation, async_trait};
use durably::{DurableWait, Job, NewWait, Run, RunStatus, StepContext, WaitResult, WaitStatus};
use serde_json::{Value, json};
use support::{Api, keys_in_order};

/// Prepares the wait `approval` (with `timeoutMs` from the input, if any), awaits it, and
/// outputs what it got.
fn approval() -> Job<Value, Value> {
    Job::new("approval", |step: StepContext, input: Value| async move {
        let mut wait = NewWait::new("approval").metadata(json!({"asks": "ada"}));
        if let Some(ms) = input["timeoutMs"].as_u64() {
            wait = wait.timeout_ms(ms);
        }
        let wait = step.prepare_wait(wait).await?;
        Ok(match step.wait_for(&wait).await? {
            WaitResult::Signal { payload } => json!({ "signal": payload }),
            WaitResult::Timeout => json!({ "timedOut": true }),
            other => json!(format!("{other:?}")),
        })
    })
}

/// An API with the `approval` job and a started worker.
async fn api_with(backend: Backend, options: HttpOptions) -> Api {
    let api = Api::new(backend, options).await;
    api.durably.register(approval()).expect("register approval");
    api.durably.start();
    api
}

/// Triggers `approval` through the API (as `tenant`, with its label, if given) and waits until
/// it is `waiting`; returns the run id and its wait.
async fn waiting_run(api: &Api, tenant: Option<&str>, input: Value) -> (String, DurableWait) {
    let mut body = json!({"jobName": "approval", "input": input});
    if let Some(tenant) = tenant {
        body["labels"] = json!({ "tenant": tenant });
    }
    let (status, _, text) = api
        .request_as(tenant, "POST", "/trigger", Some(body.to_string()))
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let reply: Value = serde_json::from_str(&text).expect("JSON");
    let id = reply["runId"].as_str().expect("runId").to_owned();
    api.wait_status(&id, "waiting").await;
    let waits = api.durably.get_waits(&id).await.expect("get_waits");
    assert_eq!(waits.len(), 1);
    (id, waits.into_iter().next().expect("one wait"))
}

/// The status and the JSON body of a request (a non-JSON body fails the test).
async fn call(
    api: &Api,
    tenant: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let (status, headers, text) = api
        .request_as(tenant, method, path, body.map(str::to_owned))
        .await;
    assert_eq!(
        headers["content-type"], "application/json",
        "{method} {path}: {text}"
    );
    (status, serde_json::from_str(&text).expect("JSON body"))
}

fn error(message: &str) -> Value {
    json!({ "error": message })
}

async fn waits_and_wait_show_a_waiting_runs_waits(backend: Backend) {
    let api = api_with(backend, HttpOptions::new()).await;
    let (id, wait) = waiting_run(&api, None, json!({})).await;

    let (status, waits) = api.get_json(&format!("/waits?runId={id}")).await;
    assert_eq!(status, StatusCode::OK, "{waits}");
    assert_eq!(waits, json!([wait]));
    assert_eq!(waits[0]["name"], "approval");
    assert_eq!(waits[0]["status"], "pending");
    assert_eq!(waits[0]["metadata"], json!({"asks": "ada"}));
    assert_eq!(
        keys_in_order(&api.raw_last()),
        [
            "id",
            "runId",
            "name",
            "metadata",
            "status",
            "payload",
            "signalId",
            "createdAt",
            "deadlineAt",
            "outcome",
            "suspendedAt",
            "resolvedAt",
            "firstResumedAt",
            "inputWaitMs",
            "executionSlotWaitMs"
        ]
    );

    let (status, one) = api
        .get_json(&format!("/wait?runId={id}&waitId={}", wait.id))
        .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one, json!(wait));

    // A run without waits has an empty list.
    let other = api.trigger("echo", json!({"value": 1}), json!({})).await;
    let (status, none) = api.get_json(&format!("/waits?runId={other}")).await;
    assert_eq!((status, none), (StatusCode::OK, json!([])));
}

async fn a_signal_is_accepted_then_a_duplicate_and_another_conflicts(backend: Backend) {
    let api = api_with(backend, HttpOptions::new()).await;
    let (id, wait) = waiting_run(&api, None, json!({})).await;
    let path = format!("/signal?runId={id}&waitId={}", wait.id);

    let body = json!({"signalId": "sig-1", "payload": {"b": 2, "a": 1}});
    let (status, accepted) = api.post_json(&path, body).await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(keys_in_order(&api.raw_last()), ["wait", "disposition"]);
    assert_eq!(accepted["disposition"], "accepted");
    assert_eq!(accepted["wait"]["status"], "resolved");
    assert_eq!(accepted["wait"]["outcome"], "signal");
    assert_eq!(accepted["wait"]["signalId"], "sig-1");
    assert_eq!(accepted["wait"]["payload"], json!({"a": 1, "b": 2}));

    let run = terminal(&api.durably, &id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({"signal": {"a": 1, "b": 2}})));

    // The same signal (keys in another order) after the run finished: a duplicate.
    let (status, duplicate) = api
        .post_json(
            &path,
            json!({"signalId": "sig-1", "payload": {"a": 1, "b": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{duplicate}");
    assert_eq!(duplicate["disposition"], "duplicate");
    assert_eq!(duplicate["wait"]["signalId"], "sig-1");

    // Another signal id, or the same id with another payload: 409.
    let conflict = error(&format!("Wait cannot accept this signal: {}", wait.id));
    for body in [
        json!({"signalId": "sig-2", "payload": {"a": 1, "b": 2}}),
        json!({"signalId": "sig-1", "payload": null}),
    ] {
        let (status, reply) = api.post_json(&path, body).await;
        assert_eq!((status, &reply), (StatusCode::CONFLICT, &conflict));
    }
}

async fn a_null_payload_is_a_payload(backend: Backend) {
    let api = api_with(backend, HttpOptions::new()).await;
    let (id, wait) = waiting_run(&api, None, json!({})).await;
    let (status, reply) = api
        .post_json(
            &format!("/signal?runId={id}&waitId={}", wait.id),
            json!({"signalId": "s", "payload": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["disposition"], "accepted");
    assert_eq!(reply["wait"]["payload"], Value::Null);
    let run = terminal(&api.durably, &id).await;
    assert_eq!(run.output, Some(json!({"signal": null})));
}

async fn a_signal_after_the_deadline_is_410(backend: Backend) {
    let api = api_with(backend, HttpOptions::new()).await;
    let (id, wait) = waiting_run(&api, None, json!({"timeoutMs": 300})).await;
    assert!(wait.deadline_at.is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, reply) = api
        .post_json(
            &format!("/signal?runId={id}&waitId={}", wait.id),
            json!({"signalId": "late", "payload": 1}),
        )
        .await;
    assert_eq!(
        (status, reply),
        (
            StatusCode::GONE,
            error(&format!("Wait expired: {}", wait.id))
        )
    );
    let run = terminal(&api.durably, &id).await;
    assert_eq!(run.output, Some(json!({"timedOut": true})));
    let (_, after) = api
        .get_json(&format!("/wait?runId={id}&waitId={}", wait.id))
        .await;
    assert_eq!(
        (&after["status"], &after["outcome"]),
        (&json!("resolved"), &json!("timeout"))
    );
}

/// Every 400 and 404 of upstream §9.1, in its order; none of them resolves the wait.
async fn bad_requests_get_upstreams_messages_in_order(backend: Backend) {
    let api = api_with(backend, HttpOptions::new()).await;
    let (id, wait) = waiting_run(&api, None, json!({})).await;
    let (other, other_wait) = waiting_run(&api, None, json!({})).await;
    let w = &wait.id;
    let valid = r#"{"signalId": "s", "payload": 1}"#;
    let cases: Vec<(&str, String, Option<&str>, StatusCode, &str)> = vec![
        // runId first, on every route (even before a bad body)
        (
            "GET",
            "/waits".into(),
            None,
            StatusCode::BAD_REQUEST,
            "runId query parameter is required",
        ),
        (
            "GET",
            "/waits?runId=".into(),
            None,
            StatusCode::BAD_REQUEST,
            "runId query parameter is required",
        ),
        (
            "GET",
            format!("/wait?waitId={w}"),
            None,
            StatusCode::BAD_REQUEST,
            "runId query parameter is required",
        ),
        (
            "POST",
            format!("/signal?waitId={w}"),
            Some("not json"),
            StatusCode::BAD_REQUEST,
            "runId query parameter is required",
        ),
        // then the run
        (
            "GET",
            "/waits?runId=nope".into(),
            None,
            StatusCode::NOT_FOUND,
            "Run not found",
        ),
        (
            "GET",
            format!("/wait?runId=nope&waitId={w}"),
            None,
            StatusCode::NOT_FOUND,
            "Run not found",
        ),
        (
            "POST",
            "/signal?runId=nope".into(),
            Some("not json"),
            StatusCode::NOT_FOUND,
            "Run not found",
        ),
        // then waitId
        (
            "GET",
            format!("/wait?runId={id}"),
            None,
            StatusCode::BAD_REQUEST,
            "waitId query parameter is required",
        ),
        (
            "GET",
            format!("/wait?runId={id}&waitId="),
            None,
            StatusCode::BAD_REQUEST,
            "waitId query parameter is required",
        ),
        (
            "POST",
            format!("/signal?runId={id}"),
            Some("not json"),
            StatusCode::BAD_REQUEST,
            "waitId query parameter is required",
        ),
        // then the wait, which must be the run's
        (
            "GET",
            format!("/wait?runId={id}&waitId=nope"),
            None,
            StatusCode::NOT_FOUND,
            "Wait not found",
        ),
        (
            "GET",
            format!("/wait?runId={id}&waitId={}", other_wait.id),
            None,
            StatusCode::NOT_FOUND,
            "Wait not found",
        ),
        (
            "POST",
            format!("/signal?runId={other}&waitId={w}"),
            Some(valid),
            StatusCode::NOT_FOUND,
            "Wait not found",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId=nope"),
            Some("not json"),
            StatusCode::NOT_FOUND,
            "Wait not found",
        ),
        // then the body
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            None,
            StatusCode::BAD_REQUEST,
            "Invalid JSON body",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some("{\"signalId\":"),
            StatusCode::BAD_REQUEST,
            "Invalid JSON body",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some("null"),
            StatusCode::BAD_REQUEST,
            "Signal body must be an object",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some("[]"),
            StatusCode::BAD_REQUEST,
            "Signal body must be an object",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some("\"s\""),
            StatusCode::BAD_REQUEST,
            "Signal body must be an object",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some("{}"),
            StatusCode::BAD_REQUEST,
            "signalId must be non-empty",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some(r#"{"signalId": "", "payload": 1}"#),
            StatusCode::BAD_REQUEST,
            "signalId must be non-empty",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some(r#"{"signalId": " \t", "payload": 1}"#),
            StatusCode::BAD_REQUEST,
            "signalId must be non-empty",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some(r#"{"signalId": 7, "payload": 1}"#),
            StatusCode::BAD_REQUEST,
            "signalId must be non-empty",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some(r#"{"signalId": null, "payload": 1}"#),
            StatusCode::BAD_REQUEST,
            "signalId must be non-empty",
        ),
        (
            "POST",
            format!("/signal?runId={id}&waitId={w}"),
            Some(r#"{"signalId": "s"}"#),
            StatusCode::BAD_REQUEST,
            "payload is required",
        ),
    ];
    for (method, path, body, expected, message) in cases {
        let (status, reply) = call(&api, None, method, &path, body).await;
        assert_eq!(
            (status, reply),
            (expected, error(message)),
            "{method} {path} {body:?}"
        );
    }
    let unchanged = api.durably.get_wait(w).await.unwrap().expect("wait");
    assert_eq!(unchanged.status, WaitStatus::Pending);
    assert_eq!(unchanged, wait);

    // A wait deleted with its run: the run is gone first.
    api.durably.cancel(&other).await.expect("cancel");
    terminal(&api.durably, &other).await;
    api.durably.delete_run(&other).await.expect("delete");
    let (status, reply) = api
        .post_json(
            &format!("/signal?runId={other}&waitId={}", other_wait.id),
            json!({"signalId": "s", "payload": 1}),
        )
        .await;
    assert_eq!(
        (status, reply),
        (StatusCode::NOT_FOUND, error("Run not found"))
    );
}

/// Auth that authenticates but has no run-access hook: the wait routes refuse (after the run
/// was found), the other run routes stay open.
async fn auth_without_a_run_access_hook_refuses_wait_access(backend: Backend) {
    struct Anyone;
    #[async_trait]
    impl Auth for Anyone {
        type Context = ();
        async fn authenticate(&self, _request: &Parts) -> Result<(), Rejection> {
            Ok(())
        }
    }
    let api = api_with(backend, HttpOptions::new().auth(Anyone)).await;
    let (id, wait) = waiting_run(&api, None, json!({})).await;
    let refused = error("Wait access requires onRunAccess");
    let valid = r#"{"signalId": "s", "payload": 1}"#;
    for (method, path, body) in [
        ("GET", format!("/waits?runId={id}"), None),
        ("GET", format!("/wait?runId={id}&waitId={}", wait.id), None),
        ("GET", format!("/wait?runId={id}"), None),
        (
            "POST",
            format!("/signal?runId={id}&waitId={}", wait.id),
            Some(valid),
        ),
        ("POST", format!("/signal?runId={id}"), Some("not json")),
    ] {
        let (status, reply) = call(&api, None, method, &path, body).await;
        assert_eq!(
            (status, &reply),
            (StatusCode::BAD_REQUEST, &refused),
            "{method} {path}"
        );
    }
    // the run checks come first
    let (status, reply) = call(&api, None, "GET", "/waits", None).await;
    assert_eq!(
        (status, reply),
        (
            StatusCode::BAD_REQUEST,
            error("runId query parameter is required")
        )
    );
    let (status, reply) = call(&api, None, "GET", "/waits?runId=nope", None).await;
    assert_eq!(
        (status, reply),
        (StatusCode::NOT_FOUND, error("Run not found"))
    );
    // the other run routes do not need the hook
    let (status, run) = call(&api, None, "GET", &format!("/run?runId={id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["isWaiting"], true);
    assert_eq!(
        api.durably
            .get_wait(&wait.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        WaitStatus::Pending
    );
}

type Calls = Arc<Mutex<Vec<String>>>;

/// Tenants by `x-tenant`; records each hook call; `on_signal` refuses payloads with
/// `"refuse": true`.
struct Recording(Calls);

#[async_trait]
impl Auth for Recording {
    type Context = String;

    async fn authenticate(&self, request: &Parts) -> Result<String, Rejection> {
        request
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Rejection::unauthorized("missing x-tenant header"))
    }

    async fn on_run_access(
        &self,
        tenant: &String,
        run: &Run,
        operation: RunOperation,
    ) -> Result<(), Rejection> {
        self.0
            .lock()
            .unwrap()
            .push(format!("access {tenant} {}", operation.as_str()));
        if run.labels.get("tenant") == Some(tenant) {
            Ok(())
        } else {
            Err(Rejection::not_found("Run not found"))
        }
    }

    async fn on_signal(
        &self,
        tenant: &String,
        run: &Run,
        wait: &DurableWait,
        signal_id: &str,
        payload: &Value,
    ) -> Result<(), Rejection> {
        assert_eq!(wait.run_id, run.id);
        self.0.lock().unwrap().push(format!(
            "signal {tenant} {} {signal_id} {payload}",
            wait.name
        ));
        match payload["refuse"] == true {
            true => Err(Rejection::forbidden("not your approval")),
            false => Ok(()),
        }
    }
}

async fn auth_hooks_see_waits_and_signal_operations(backend: Backend) {
    let calls = Calls::default();
    let api = api_with(backend, HttpOptions::new().auth(Recording(calls.clone()))).await;
    let take = || std::mem::take(&mut *calls.lock().unwrap());
    let (id, wait) = waiting_run(&api, Some("acme"), json!({})).await;
    take();
    let one = format!("/wait?runId={id}&waitId={}", wait.id);
    let signal = format!("/signal?runId={id}&waitId={}", wait.id);

    let (status, waits) = call(
        &api,
        Some("acme"),
        "GET",
        &format!("/waits?runId={id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{waits}");
    assert_eq!(take(), ["access acme waits"]);
    let (status, _) = call(&api, Some("acme"), "GET", &one, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(take(), ["access acme waits"]);

    // Another tenant: the run-access hook's 404, nothing else runs.
    for (method, path) in [
        ("GET", format!("/waits?runId={id}")),
        ("GET", one.clone()),
        ("POST", signal.clone()),
    ] {
        let body = (method == "POST").then_some(r#"{"signalId": "s", "payload": 1}"#);
        let (status, reply) = call(&api, Some("evil"), method, &path, body).await;
        assert_eq!(
            (status, reply),
            (StatusCode::NOT_FOUND, error("Run not found")),
            "{path}"
        );
    }
    assert_eq!(
        take(),
        [
            "access evil waits",
            "access evil waits",
            "access evil signal"
        ]
    );

    // The body is checked before on_signal.
    let (status, _) = call(
        &api,
        Some("acme"),
        "POST",
        &signal,
        Some(r#"{"signalId": "s"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(take(), ["access acme signal"]);

    // on_signal refuses: its response, the wait untouched.
    let (status, reply) = call(
        &api,
        Some("acme"),
        "POST",
        &signal,
        Some(r#"{"signalId": "s-1", "payload": {"refuse": true}}"#),
    )
    .await;
    assert_eq!(
        (status, reply),
        (StatusCode::FORBIDDEN, error("not your approval"))
    );
    assert_eq!(
        take(),
        [
            "access acme signal",
            r#"signal acme approval s-1 {"refuse":true}"#
        ]
    );
    assert_eq!(
        api.durably
            .get_wait(&wait.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        WaitStatus::Pending
    );

    // on_signal allows: accepted.
    let (status, reply) = call(
        &api,
        Some("acme"),
        "POST",
        &signal,
        Some(r#"{"signalId": "s-2", "payload": {"ok": true}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["disposition"], "accepted");
    assert_eq!(
        take(),
        [
            "access acme signal",
            r#"signal acme approval s-2 {"ok":true}"#
        ]
    );
    let run = terminal(&api.durably, &id).await;
    assert_eq!(run.output, Some(json!({"signal": {"ok": true}})));
}

/// The three routes are in the OpenAPI document with their schemas and error statuses.
async fn openapi_documents_the_wait_routes(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let (status, doc) = api.get_json("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = &doc["paths"];
    assert_eq!(paths["/waits"]["get"]["operationId"], "getWaits");
    assert_eq!(paths["/wait"]["get"]["operationId"], "getWait");
    let signal = &paths["/signal"]["post"];
    assert_eq!(signal["operationId"], "signal");
    for code in ["200", "400", "404", "409", "410", "413"] {
        assert!(signal["responses"][code].is_object(), "POST /signal {code}");
    }
    let names: Vec<&str> = signal["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["runId", "waitId"]);
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["SignalRequest"]["required"],
        json!(["signalId", "payload"])
    );
    assert_eq!(
        schemas["DurableWait"]["required"].as_array().unwrap().len(),
        15
    );
    assert_eq!(
        schemas["SignalResponse"]["properties"]["disposition"]["enum"],
        json!(["accepted", "duplicate"])
    );
    // The blank pattern agrees with the server's check.
    let pattern = schemas["SignalRequest"]["properties"]["signalId"]["pattern"]
        .as_str()
        .unwrap();
    assert!(pattern.contains("\\u3000") && pattern.contains("\\u0085"));
}

backend_tests!(
    waits_and_wait_show_a_waiting_runs_waits,
    a_signal_is_accepted_then_a_duplicate_and_another_conflicts,
    a_null_payload_is_a_payload,
    a_signal_after_the_deadline_is_410,
    bad_requests_get_upstreams_messages_in_order,
    auth_without_a_run_access_hook_refuses_wait_access,
    auth_hooks_see_waits_and_signal_operations,
    openapi_documents_the_wait_routes,
);
