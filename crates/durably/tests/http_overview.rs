//! `GET /overview` (the dashboard's first screen): runs per status, the oldest pending run,
//! and per bucket and per job the runs that ended in the last hour or day, on every backend,
//! through the router nested as the demo serves it.
#![cfg(feature = "http")]

mod common;
#[path = "http_support/mod.rs"]
mod support;

use axum::http::StatusCode;
use common::{Backend, backend_tests};
use durably::http::HttpOptions;
use serde_json::{Value, json};
use support::{Api, tenant_auth};

backend_tests!(
    overview_counts_a_known_workload,
    overview_refuses_an_unknown_window,
    overview_is_refused_when_auth_scopes_the_runs,
    runs_are_searched_by_id_prefix,
    runs_are_filtered_by_creation_time,
);

fn sum(buckets: &Value, key: &str) -> u64 {
    buckets
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b[key].as_u64().expect("count"))
        .sum()
}

async fn overview_counts_a_known_workload(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let (status, empty) = api.get_json("/overview").await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["window"], "1h");
    assert_eq!(empty["oldestPending"], Value::Null);
    assert_eq!(empty["jobs"], json!([]));
    api.durably.start();

    let echoes = [
        api.trigger("echo", json!({"value": 1}), json!({})).await,
        api.trigger("echo", json!({"value": 2}), json!({})).await,
    ];
    let failing = api
        .trigger("steps", json!({"count": 2, "failAt": 2}), json!({}))
        .await;
    for id in &echoes {
        api.wait_status(id, "completed").await;
    }
    api.wait_status(&failing, "failed").await;

    for (window, buckets, bucket_ms) in [("1h", 60, 60_000), ("24h", 24, 3_600_000)] {
        let (status, overview) = api.get_json(&format!("/overview?window={window}")).await;
        assert_eq!(status, StatusCode::OK, "{overview}");
        assert_eq!(overview["window"], window);
        assert_eq!(overview["bucketMs"], bucket_ms);
        assert_eq!(
            overview["counts"],
            json!({"pending": 0, "leased": 0, "waiting": 0, "completed": 2, "failed": 1, "cancelled": 0})
        );
        assert_eq!(overview["buckets"].as_array().map(Vec::len), Some(buckets));
        assert_eq!(sum(&overview["buckets"], "completed"), 2, "{overview}");
        assert_eq!(sum(&overview["buckets"], "failed"), 1, "{overview}");
        let jobs = overview["jobs"].as_array().expect("jobs");
        let names: Vec<(&str, u64, u64)> = jobs
            .iter()
            .map(|j| {
                (
                    j["jobName"].as_str().expect("name"),
                    j["completed"].as_u64().expect("completed"),
                    j["failed"].as_u64().expect("failed"),
                )
            })
            .collect();
        assert_eq!(names, vec![("echo", 2, 0), ("steps", 0, 1)]);
        assert_eq!(jobs[0]["queueLatencyMs"]["count"], 2, "{overview}");
        assert_eq!(jobs[0]["durationMs"]["count"], 2, "{overview}");
        assert!(jobs[0]["durationMs"]["p95"].as_u64() >= jobs[0]["durationMs"]["p50"].as_u64());
        assert_eq!(overview["sampled"], 3);
    }
}

async fn overview_refuses_an_unknown_window(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    for bad in ["7d", "", "1H"] {
        let (status, reply) = api.get_json(&format!("/overview?window={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {reply}");
        let message = reply["error"].as_str().expect("error");
        assert!(
            message.starts_with("Invalid window")
                && message.contains("1h")
                && message.contains("24h"),
            "{message}"
        );
    }
}

async fn overview_is_refused_when_auth_scopes_the_runs(backend: Backend) {
    let (options, _) = tenant_auth();
    let api = Api::new(backend, options).await;
    let (status, _, text) = api.request_as(Some("acme"), "GET", "/overview", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("auth limits the runs"), "{text}");
}

/// The runs list's `idPrefix` (the dashboard's run-id search): the runs whose id starts with
/// it; an empty one filters nothing; a NUL is refused.
async fn runs_are_searched_by_id_prefix(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let first = api.trigger("echo", json!({"value": 1}), json!({})).await;
    let second = api.trigger("echo", json!({"value": 2}), json!({})).await;
    let ids = |runs: &Value| -> Vec<String> {
        runs.as_array()
            .expect("runs")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (status, runs) = api.get_json(&format!("/runs?idPrefix={second}")).await;
    assert_eq!(status, StatusCode::OK, "{runs}");
    assert_eq!(ids(&runs), vec![second.clone()]);
    let (_, runs) = api.get_json("/runs?idPrefix=").await;
    assert_eq!(ids(&runs), vec![second, first]);
    let (_, runs) = api.get_json("/runs?idPrefix=nope").await;
    assert_eq!(ids(&runs), Vec::<String>::new());
    let (status, reply) = api.get_json("/runs?idPrefix=a%00").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
}

/// The runs list's time range (`createdSince`, `createdBefore`; the dashboard's): RFC 3339 text
/// or epoch milliseconds, since inclusive and before exclusive; empty values filter nothing;
/// anything else is refused with a message naming the parameter and the accepted forms.
async fn runs_are_filtered_by_creation_time(backend: Backend) {
    let api = Api::new(backend, HttpOptions::new()).await;
    let first = api.trigger("echo", json!({"value": 1}), json!({})).await;
    let second = api.trigger("echo", json!({"value": 2}), json!({})).await;
    let (_, runs) = api.get_json("/runs").await;
    let created = |id: &str| -> String {
        runs.as_array()
            .expect("runs")
            .iter()
            .find(|r| r["id"] == id)
            .and_then(|r| r["createdAt"].as_str())
            .expect("createdAt")
            .to_owned()
    };
    let (first_at, second_at) = (created(&first), created(&second));
    let millis = |iso: &str| {
        durably::Timestamp::parse(iso)
            .expect("a timestamp")
            .as_millis()
    };
    let ids = |runs: &Value| -> Vec<String> {
        runs.as_array()
            .expect("runs")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect()
    };
    // the newest-first listing of the two runs that `keep` keeps
    let expect = |keep: &dyn Fn(i64) -> bool| -> Vec<String> {
        [(&second, &second_at), (&first, &first_at)]
            .into_iter()
            .filter(|(_, at)| keep(millis(at)))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let bound = millis(&second_at);
    let (status, runs) = api
        .get_json(&format!("/runs?createdSince={second_at}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{runs}");
    assert_eq!(ids(&runs), expect(&|at| at >= bound));
    assert!(ids(&runs).contains(&second), "since is inclusive");
    let (_, runs) = api.get_json(&format!("/runs?createdBefore={bound}")).await;
    assert_eq!(ids(&runs), expect(&|at| at < bound));
    assert!(!ids(&runs).contains(&second), "before is exclusive");
    let (_, runs) = api
        .get_json(&format!(
            "/runs?createdSince={}&createdBefore={}",
            millis(&first_at),
            bound + 1
        ))
        .await;
    assert_eq!(ids(&runs), vec![second.clone(), first.clone()]);
    let (_, runs) = api.get_json("/runs?createdSince=&createdBefore=").await;
    assert_eq!(ids(&runs), vec![second.clone(), first.clone()]);
    // an offset other than Z, and a bound in the future
    let (_, runs) = api
        .get_json("/runs?createdSince=9999-12-31T23:00:00%2B00:00")
        .await;
    assert_eq!(ids(&runs), Vec::<String>::new());
    // beyond the year 9999 (in the schema's 15 digits): the latest instant there is
    let (_, runs) = api.get_json("/runs?createdSince=253402300800000").await;
    assert_eq!(ids(&runs), Vec::<String>::new());
    let (_, runs) = api.get_json("/runs?createdBefore=999999999999999").await;
    assert_eq!(ids(&runs), vec![second.clone(), first.clone()]);
    for (query, key) in [
        ("createdSince=yesterday", "createdSince"),
        ("createdBefore=2026-13-01T00:00:00Z", "createdBefore"),
        ("createdBefore=-5", "createdBefore"),
        ("createdSince=99999999999999999999", "createdSince"),
        ("createdBefore=1000000000000000", "createdBefore"),
    ] {
        let (status, reply) = api.get_json(&format!("/runs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {reply}");
        let message = reply["error"].as_str().expect("an error message");
        assert!(
            message.starts_with(&format!("Invalid {key}: "))
                && message.contains("RFC 3339")
                && message.contains("milliseconds since the Unix epoch"),
            "{query}: {message}"
        );
    }
}
