//! The dashboard's routes (`durably::http::dashboard`) and the API routes it relies on beyond
//! upstream's nine: `GET /jobs` with input schemas and `GET /logs`. Through
//! `tower::ServiceExt::oneshot` (no network) on embedded SQLite.
#![cfg(feature = "http")]

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use durably::http::{HttpOptions, dashboard, router};
use durably::{Durably, Job, StepContext, TriggerOptions, WaitOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Serialize, Deserialize)]
struct Greet {
    name: String,
}

fn greet_schema() -> Value {
    json!({
        "type": "object",
        "required": ["name"],
        "properties": { "name": { "type": "string", "description": "Who to greet" } }
    })
}

async fn instance(dir: &tempfile::TempDir) -> Durably {
    let durably = Durably::builder()
        .sqlite(dir.path().join("dashboard.sqlite"))
        .polling_interval(std::time::Duration::from_millis(20))
        .build()
        .expect("build");
    durably
        .register(
            Job::new("greet", |step: StepContext, input: Greet| async move {
                step.log()
                    .info(
                        format!("hello {}", input.name),
                        json!({ "len": input.name.len() }),
                    )
                    .await?;
                Ok(format!("hello {}", input.name))
            })
            .input_schema(greet_schema()),
        )
        .expect("register greet");
    durably
        .register(Job::new(
            "plain",
            |_step: StepContext, input: Value| async move { Ok(input) },
        ))
        .expect("register plain");
    durably.init().await.expect("init");
    durably
}

fn app(durably: &Durably) -> Router {
    Router::new()
        .merge(dashboard("/api/durably"))
        .nest("/api/durably", router(durably.clone(), HttpOptions::new()))
}

/// Status, content type and body text of a GET.
async fn get(app: &Router, path: &str) -> (StatusCode, String, String) {
    let request = Request::get(path).body(Body::empty()).expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        content_type,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn jobs_list_their_input_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durably = instance(&dir).await;
    let app = app(&durably);
    let (status, content_type, body) = get(&app, "/api/durably/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    let jobs: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        jobs,
        json!([
            { "name": "greet", "inputSchema": greet_schema() },
            { "name": "plain", "inputSchema": null }
        ])
    );
    let info = durably.get_job("greet").expect("registered");
    assert_eq!(info.input_schema, Some(greet_schema()));
    assert_eq!(
        durably.get_job("plain").expect("registered").input_schema,
        None
    );
    durably.stop().await;
}

#[tokio::test]
async fn logs_of_a_run_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durably = instance(&dir).await;
    let app = app(&durably);
    let done = durably
        .trigger_and_wait_json(
            "greet",
            json!({ "name": "Ada" }),
            TriggerOptions::new(),
            WaitOptions::new(),
        )
        .await
        .expect("run");
    let (status, content_type, body) =
        get(&app, &format!("/api/durably/logs?runId={}", done.id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/json");
    let logs: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(logs.as_array().map(Vec::len), Some(1), "{logs}");
    assert_eq!(logs[0]["message"], "hello Ada");
    assert_eq!(logs[0]["level"], "info");
    assert_eq!(logs[0]["data"], json!({ "len": 3 }));
    assert_eq!(logs[0]["runId"], done.id.as_str());

    let (status, _, body) = get(&app, "/api/durably/logs").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("runId query parameter is required"), "{body}");
    let (status, _, body) = get(&app, "/api/durably/logs?runId=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("Run not found"), "{body}");
    durably.stop().await;
}

#[tokio::test]
async fn dashboard_page_and_assets_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durably = instance(&dir).await;
    let app = app(&durably);

    let (status, content_type, page) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(
        page.contains(r#"<meta name="durably-api" content="/api/durably">"#),
        "{page}"
    );
    assert!(page.contains(r#"href="/dashboard.css""#), "{page}");
    assert!(page.contains(r#"src="/dashboard.js""#), "{page}");
    assert!(!page.contains("{{"), "every placeholder is filled: {page}");
    assert!(
        page.contains(r#"id="detail-waits""#),
        "the run page lists waits"
    );
    assert!(
        page.contains(r#"id="detail-why""#) && page.contains(r#"id="action-wake""#),
        "the run page says why a waiting run waits and offers to run it now"
    );

    let (status, content_type, css) = get(&app, "/dashboard.css").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/css; charset=utf-8");
    assert!(css.contains("@media"), "responsive rules");
    assert!(
        !css.contains("http://") && !css.contains("https://"),
        "no external resources"
    );

    let (status, content_type, js) = get(&app, "/dashboard.js").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/javascript; charset=utf-8");
    for route in [
        "/runs/subscribe",
        "/subscribe?runId=",
        "/jobs",
        "/trigger",
        "/cancel?runId=",
        "/attempts?runId=",
        "/waits?runId=",
        "/signal?runId=",
        "/wake?runId=",
    ] {
        assert!(js.contains(route), "the page uses {route}");
    }
    assert!(!js.contains("https://"), "no external resources");
    // the bulk actions: a module the page imports, acting through the per-run routes
    assert!(js.contains("from './bulk.js'"), "the page imports bulk.js");
    let (status, content_type, bulk) = get(&app, "/bulk.js").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/javascript; charset=utf-8");
    for route in [
        "/cancel?runId=",
        "/retrigger?runId=",
        "/run?runId=",
        "/runs?",
    ] {
        assert!(bulk.contains(route), "bulk actions use {route}");
    }
    assert!(!bulk.contains("https://"), "no external resources");

    let (status, _, _) = get(&app, "/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // the API is still there, beside the page
    let (status, _, runs) = get(&app, "/api/durably/runs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(runs, "[]");
    durably.stop().await;
}

#[tokio::test]
async fn dashboard_nests_under_any_path_and_escapes_the_api_base() {
    let app = Router::new().nest("/admin/jobs", dashboard("/api/\"x\"/"));
    let (status, _, page) = get(&app, "/admin/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(r#"href="/admin/jobs/dashboard.css""#),
        "{page}"
    );
    assert!(page.contains(r#"src="/admin/jobs/dashboard.js""#), "{page}");
    assert!(page.contains(r#"content="/api/&quot;x&quot;""#), "{page}");
    for asset in ["dashboard.js", "bulk.js"] {
        let (status, content_type, _) = get(&app, &format!("/admin/jobs/{asset}")).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert_eq!(content_type, "text/javascript; charset=utf-8");
    }
}
