//! Helpers of tests/http.rs: the jobs the routes are exercised with, a oneshot client for the
//! router nested under `/api/durably`, an SSE reader and a two-tenant auth.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Request, StatusCode};
use durably::http::{Auth, HttpOptions, Rejection, RunOperation, async_trait};
use durably::{CancellationToken, Durably, DurablyBuilder, Job, Run, RunFilter, StepContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::{Backend, TestDb, eventually};

pub const BASE: &str = "/api/durably";

#[derive(Serialize, Deserialize)]
pub struct EchoInput {
    pub value: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepsInput {
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
pub struct SleepInput {
    pub ms: u64,
}

#[derive(Serialize, Deserialize)]
pub struct BurstInput {
    pub count: u64,
}

async fn pause(token: CancellationToken, ms: u64) -> durably::StepResult<()> {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
        _ = token.cancelled() => Err("aborted".into()),
    }
}

/// The reference jobs of demo-jobs.md (echo, steps, sleep) plus `burst`: `count` progress
/// reports as fast as possible, then one log line.
pub fn register_jobs(durably: &Durably) {
    durably
        .register(Job::new(
            "echo",
            |step: StepContext, input: EchoInput| async move {
                let value = step.run("echo", |_| async move { Ok(input.value) }).await?;
                Ok(json!({ "value": value }))
            },
        ))
        .expect("register echo");
    durably
        .register(
            Job::new("steps", |step: StepContext, input: StepsInput| async move {
                let count = u64::from(input.count);
                let mut sum = 0;
                for i in 1..=count {
                    let ms = input.step_ms.unwrap_or(0);
                    let fail_at = input.fail_at;
                    let value = step
                        .run(&format!("step-{i}"), |token| async move {
                            if ms > 0 {
                                pause(token, ms).await?;
                            }
                            if fail_at == Some(i) {
                                return Err(format!("failed at step {i}").into());
                            }
                            Ok(i)
                        })
                        .await?;
                    sum += value;
                    step.progress(i, Some(count), Some(&format!("step {i}/{count}")))
                        .await?;
                    step.log()
                        .info(format!("step {i} done"), json!({ "i": i }))
                        .await?;
                }
                Ok(json!({ "sum": sum }))
            })
            .validate(|input| {
                if (1..=1000).contains(&input.count) {
                    Ok(())
                } else {
                    Err(format!(
                        "count must be between 1 and 1000 (got {})",
                        input.count
                    ))
                }
            }),
        )
        .expect("register steps");
    durably
        .register(Job::new(
            "sleep",
            |step: StepContext, input: SleepInput| async move {
                let ms = input.ms;
                step.run("sleep", |token| async move { pause(token, ms).await })
                    .await?;
                Ok(json!({ "slept": ms }))
            },
        ))
        .expect("register sleep");
    durably
        .register(Job::new(
            "burst",
            |step: StepContext, input: BurstInput| async move {
                for i in 1..=input.count {
                    step.progress(i, Some(input.count), None).await?;
                }
                step.log().info("burst done", Value::Null).await?;
                Ok(json!({ "count": input.count }))
            },
        ))
        .expect("register burst");
}

/// The router nested under [`BASE`], driven with `oneshot`.
pub struct Api {
    pub durably: Durably,
    app: Router,
    last: Mutex<String>,
    _db: TestDb,
}

impl Api {
    pub async fn new(backend: Backend, options: HttpOptions) -> Api {
        Api::with(backend, options, |b| b).await
    }

    pub async fn with(
        backend: Backend,
        options: HttpOptions,
        configure: impl FnOnce(DurablyBuilder) -> DurablyBuilder,
    ) -> Api {
        let db = TestDb::new(backend);
        let durably = db.durably(configure).await;
        register_jobs(&durably);
        let app = Router::new().nest(BASE, durably::http::router(durably.clone(), options));
        Api {
            durably,
            app,
            last: Mutex::new(String::new()),
            _db: db,
        }
    }

    async fn send(
        &self,
        tenant: Option<&str>,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> axum::response::Response {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{BASE}{path}"));
        if let Some(tenant) = tenant {
            request = request.header("x-tenant", tenant);
        }
        let request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("request");
        self.app.clone().oneshot(request).await.expect("infallible")
    }

    /// Sends a request; returns status, headers and the whole body as text.
    pub async fn request_as(
        &self,
        tenant: Option<&str>,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> (StatusCode, HeaderMap, String) {
        let response = self.send(tenant, method, path, body).await;
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8 body");
        *self.last.lock().unwrap() = text.clone();
        (parts.status, parts.headers, text)
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> (StatusCode, HeaderMap, String) {
        self.request_as(None, method, path, body).await
    }

    /// The PostgreSQL schema of the test database, if on PostgreSQL.
    pub fn schema(&self) -> Option<String> {
        self._db.schema.clone()
    }

    /// The body text of the last request.
    pub fn raw_last(&self) -> String {
        self.last.lock().unwrap().clone()
    }

    pub async fn request_json(&self, method: &str, path: &str) -> (StatusCode, Value) {
        let (status, headers, text) = self.request(method, path, None).await;
        assert_eq!(
            headers["content-type"], "application/json",
            "{method} {path}: {text}"
        );
        (status, serde_json::from_str(&text).expect("JSON body"))
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        self.request_json("GET", path).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, headers, text) = self.request("POST", path, Some(body.to_string())).await;
        assert_eq!(headers["content-type"], "application/json", "{text}");
        (status, serde_json::from_str(&text).expect("JSON body"))
    }

    /// POST /trigger with `extra` fields merged into the body; returns the run id.
    pub async fn trigger(&self, job: &str, input: Value, extra: Value) -> String {
        let mut body = json!({ "jobName": job, "input": input });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (status, reply) = self.post_json("/trigger", body).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        reply["runId"].as_str().expect("runId").to_owned()
    }

    pub async fn run_count(&self) -> usize {
        self.durably
            .get_runs(&RunFilter::new())
            .await
            .expect("get_runs")
            .len()
    }

    pub async fn wait_status(&self, id: &str, status: &str) {
        eventually(
            &format!("run {id} to be {status}"),
            Duration::from_secs(20),
            || async {
                let run = self.durably.get_run(id).await.ok()??;
                (run.status.as_str() == status).then_some(())
            },
        )
        .await
    }

    pub async fn sse(&self, path: &str) -> Sse {
        Sse::new(self.send(None, "GET", path, None).await)
    }

    pub async fn sse_as(&self, tenant: &str, path: &str) -> Sse {
        let sse = Sse::new(self.send(Some(tenant), "GET", path, None).await);
        assert_eq!(sse.status, StatusCode::OK);
        sse
    }
}

/// Reads an SSE response body frame by frame.
pub struct Sse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Everything received so far.
    pub raw: String,
    /// The body ended.
    pub ended: bool,
    stream: BodyDataStream,
    buf: String,
}

impl Sse {
    fn new(response: axum::response::Response) -> Sse {
        let (parts, body) = response.into_parts();
        Sse {
            status: parts.status,
            headers: parts.headers,
            raw: String::new(),
            ended: false,
            stream: body.into_data_stream(),
            buf: String::new(),
        }
    }

    /// The next `data:` event within `wait`, skipping comments; `None` on timeout or end.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                if let Some(data) = frame.strip_prefix("data: ") {
                    return Some(serde_json::from_str(data.trim_end()).expect("JSON event"));
                }
                assert!(frame.starts_with(':'), "unexpected SSE frame {frame:?}");
                continue;
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) => self.ended = true,
                Ok(Some(chunk)) => {
                    let chunk = chunk.expect("body chunk");
                    let text = std::str::from_utf8(&chunk).expect("utf-8 chunk");
                    self.raw.push_str(text);
                    self.buf.push_str(text);
                }
            }
        }
    }

    /// Every event until the stream ends (fails if it has not ended within `limit`).
    pub async fn collect_to_end(&mut self, limit: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(event) => events.push(event),
                None if self.ended => return events,
                None => panic!("stream did not end within {limit:?}; got {events:?}"),
            }
        }
    }

    /// Events up to and including the first of type `kind`.
    pub async fn collect_until(&mut self, kind: &str, limit: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(event) => {
                    let done = event["type"] == kind;
                    events.push(event);
                    if done {
                        return events;
                    }
                }
                None => panic!("no {kind} within {limit:?}; got {events:?}"),
            }
        }
    }

    /// Every event arriving within `wait`.
    pub async fn read_for(&mut self, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return events;
            }
            match self.next_event(left).await {
                Some(event) => events.push(event),
                None => return events,
            }
        }
    }
}

/// The keys of the first JSON object in `text` (top-level or first array element), in order.
pub fn keys_in_order(text: &str) -> Vec<String> {
    let Some(start) = text.find('{') else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    let mut depth = 0usize;
    let mut chars = text[start..].chars().peekable();
    let mut last_string: Option<String> = None;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                s.push(escaped);
                            }
                        }
                        '"' => break,
                        other => s.push(other),
                    }
                }
                last_string = Some(s);
                continue;
            }
            ':' if depth == 1 => {
                if let Some(key) = last_string.take() {
                    keys.push(key);
                }
            }
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        last_string = None;
    }
    keys
}

/// Two-tenant auth: the tenant is the `x-tenant` header; runs carry a `tenant` label.
pub struct TenantAuth {
    trigger_calls: Arc<AtomicUsize>,
}

#[async_trait]
impl Auth for TenantAuth {
    type Context = String;

    async fn authenticate(&self, request: &Parts) -> Result<String, Rejection> {
        request
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Rejection::unauthorized("missing x-tenant header"))
    }

    async fn on_trigger(&self, tenant: &String, body: &Value) -> Result<(), Rejection> {
        self.trigger_calls.fetch_add(1, Ordering::SeqCst);
        if body["labels"]["tenant"].as_str() == Some(tenant.as_str()) {
            Ok(())
        } else {
            Err(Rejection::forbidden("runs must carry your tenant label"))
        }
    }

    async fn on_run_access(
        &self,
        tenant: &String,
        run: &Run,
        _operation: RunOperation,
    ) -> Result<(), Rejection> {
        if run.labels.get("tenant") == Some(tenant) {
            Ok(())
        } else {
            Err(Rejection::not_found("Run not found"))
        }
    }

    async fn scope_runs(&self, tenant: &String, filter: RunFilter) -> Result<RunFilter, Rejection> {
        if tenant == "blocked" {
            return Err(Rejection::forbidden("blocked"));
        }
        Ok(filter.label("tenant", tenant.clone()))
    }
}

/// Options with [`TenantAuth`], and its count of `on_trigger` calls.
pub fn tenant_auth() -> (HttpOptions, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let options = HttpOptions::new().auth(TenantAuth {
        trigger_calls: calls.clone(),
    });
    (options, calls)
}
