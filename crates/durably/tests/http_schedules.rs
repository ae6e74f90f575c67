//! The schedule routes (ours, issue 23 item 3): `GET /schedules`, `GET /schedule?name=`,
//! `POST /schedules/pause|resume|trigger?name=`. Camel-case schedules with their next and last
//! fire times; pause and resume; trigger now (a run with the schedule's labels, no slot, never
//! idempotent); 404 for an unknown name, 400 for a missing one; the auth's trigger hook on
//! trigger. On every backend, through the router nested as the demo serves it.
#![cfg(feature = "http")]

mod common;
#[path = "http_support/mod.rs"]
mod support;

use axum::http::StatusCode;
use common::{Backend, backend_tests};
use durably::http::HttpOptions;
use durably::{CatchUp, Schedule, Timestamp};
use serde_json::{Value, json};
use support::{Api, keys_in_order, tenant_auth};

fn heartbeat() -> Schedule {
    Schedule::new(
        "heartbeat",
        "0 * * * * *",
        "echo",
        json!({"value": "heartbeat"}),
    )
    .label("team", "ops")
    .catch_up(CatchUp::Skip)
}

async fn schedules_are_listed_paused_resumed_and_triggered(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let noon = Timestamp::parse("2026-06-01T12:00:00Z").expect("time");
    api.durably
        .schedules()
        .at(noon)
        .upsert(heartbeat())
        .await
        .expect("upsert heartbeat");
    api.durably
        .schedules()
        .at(noon)
        .upsert(
            Schedule::new("nightly", "0 0 3 * * *", "echo", json!({"value": 1}))
                .time_zone("Europe/Paris")
                .catch_up(CatchUp::All { max: 3 }),
        )
        .await
        .expect("upsert nightly");

    let (status, list) = api.get_json("/schedules").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["heartbeat", "nightly"]);
    assert_eq!(
        list[0],
        json!({
            "name": "heartbeat",
            "jobName": "echo",
            "cron": "0 * * * * *",
            "timeZone": "UTC",
            "input": {"value": "heartbeat"},
            "labels": {"team": "ops"},
            "catchUp": "skip",
            "paused": false,
            "nextFireAt": "2026-06-01T12:01:00.000Z",
            "lastFiredAt": null,
            "createdAt": "2026-06-01T12:00:00.000Z",
            "updatedAt": "2026-06-01T12:00:00.000Z"
        })
    );
    assert_eq!(list[1]["catchUp"], "all:3");
    assert_eq!(list[1]["timeZone"], "Europe/Paris");
    assert_eq!(list[1]["nextFireAt"], "2026-06-02T01:00:00.000Z");

    let (status, one) = api.get_json("/schedule?name=heartbeat").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one, list[0]);
    assert_eq!(
        keys_in_order(&api.raw_last()),
        [
            "name",
            "jobName",
            "cron",
            "timeZone",
            "input",
            "labels",
            "catchUp",
            "paused",
            "nextFireAt",
            "lastFiredAt",
            "createdAt",
            "updatedAt"
        ]
    );

    // Pause, then resume: from the first slot after now.
    let (status, paused) = api
        .request_json("POST", "/schedules/pause?name=heartbeat")
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    let (_, read) = api.get_json("/schedule?name=heartbeat").await;
    assert_eq!(read["paused"], true);
    let (status, resumed) = api
        .request_json("POST", "/schedules/resume?name=heartbeat")
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["paused"], false);
    let next =
        Timestamp::parse(resumed["nextFireAt"].as_str().expect("nextFireAt")).expect("a time");
    assert!(next > Timestamp::now(), "{resumed}");

    // Trigger now, paused or not: a new run every time, labelled with the schedule, no slot.
    api.request_json("POST", "/schedules/pause?name=heartbeat")
        .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, body) = api
            .request_json("POST", "/schedules/trigger?name=heartbeat")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(keys_in_order(&api.raw_last()), ["runId"]);
        ids.push(body["runId"].as_str().expect("runId").to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    let (status, run) = api.get_json(&format!("/run?runId={}", ids[0])).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["jobName"], "echo");
    assert_eq!(run["input"], json!({"value": "heartbeat"}));
    assert_eq!(
        run["labels"],
        json!({"team": "ops", "durably.schedule": "heartbeat"})
    );
    let (_, read) = api.get_json("/schedule?name=heartbeat").await;
    assert_eq!(read["paused"], true, "trigger leaves the schedule as it is");
    assert_eq!(read["lastFiredAt"], Value::Null);
    // The run is the worker's like any other.
    api.durably.start();
    api.wait_status(&ids[0], "completed").await;
    api.durably.stop().await;
}

async fn unknown_and_missing_names_are_404_and_400(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let (status, list) = api.get_json("/schedules").await;
    assert_eq!((status, list), (StatusCode::OK, json!([])));
    for (method, path) in [
        ("GET", "/schedule"),
        ("POST", "/schedules/pause"),
        ("POST", "/schedules/resume"),
        ("POST", "/schedules/trigger"),
    ] {
        let (status, body) = api.request_json(method, &format!("{path}?name=nope")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body, json!({"error": "Schedule not found: nope"}));
        for query in ["", "?name=", "?other=x"] {
            let (status, body) = api.request_json(method, &format!("{path}{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}{query}");
            assert_eq!(body, json!({"error": "name query parameter is required"}));
        }
        let (status, body) = api
            .request_json(method, &format!("{path}?name=a%00b"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
    }
    assert_eq!(api.run_count().await, 0);
}

async fn trigger_asks_the_trigger_hook(backend: Backend) {
    let (options, calls) = tenant_auth();
    let api = Api::new(backend, options).await;
    api.durably
        .schedules()
        .upsert(heartbeat().label("tenant", "acme"))
        .await
        .expect("upsert");
    // Schedules are not runs: authentication only, as GET /jobs.
    let (status, _, _) = api.request_as(None, "GET", "/schedules", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, text) = api
        .request_as(Some("other"), "GET", "/schedule?name=heartbeat", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    // Triggering creates a run: the trigger hook sees the run's job, input and labels.
    let (status, _, text) = api
        .request_as(
            Some("other"),
            "POST",
            "/schedules/trigger?name=heartbeat",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert_eq!(api.run_count().await, 0);
    let (status, _, text) = api
        .request_as(
            Some("acme"),
            "POST",
            "/schedules/trigger?name=heartbeat",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(api.run_count().await, 1);
}

async fn openapi_describes_the_schedule_routes(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let (status, doc) = api.get_json("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for (path, method, id) in [
        ("/schedules", "get", "listSchedules"),
        ("/schedule", "get", "getSchedule"),
        ("/schedules/pause", "post", "pauseSchedule"),
        ("/schedules/resume", "post", "resumeSchedule"),
        ("/schedules/trigger", "post", "triggerSchedule"),
    ] {
        assert_eq!(doc["paths"][path][method]["operationId"], id, "{path}");
    }
    let schema = &doc["components"]["schemas"]["Schedule"];
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["required"].as_array().map(Vec::len), Some(12));
    assert_eq!(
        doc["paths"]["/schedule"]["get"]["parameters"][0]["required"],
        true
    );
}

backend_tests!(
    schedules_are_listed_paused_resumed_and_triggered,
    unknown_and_missing_names_are_404_and_400,
    trigger_asks_the_trigger_hook,
    openapi_describes_the_schedule_routes
);
