//! OpenTelemetry traces (feature `otel`, docs/observability.md): one trace per run across its
//! whole life. A run whose worker process is killed (SIGKILL) after its first step and which
//! another process finishes is one trace holding both processes' spans; an HTTP trigger with a
//! `traceparent` header puts the run in the caller's trace; a run stored without a trace
//! context (as the TypeScript runtime triggers them) gets a trace per execution of its own.
//!
//! Each process exports through the OpenTelemetry SDK to a span processor of this file that
//! records every span when it starts and when it ends, at once (no batching): a killed process
//! flushes nothing, and the `durably.run` span of the execution it was in never ends, so its
//! start is the only record of it. The test process keeps its spans in memory; its child
//! workers (this binary again, the `#[ignore]`d `child_worker` entry point) write theirs to
//! JSON-lines files. (Own test binary: it installs a global subscriber.)
#![cfg(feature = "otel")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::eventually;
use durably::{Durably, Job, RunStatus, StepContext};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

const ENV_MODE: &str = "DURABLY_TEST_OTEL_MODE";
const ENV_DB: &str = "DURABLY_TEST_OTEL_DB";
const ENV_SPANS: &str = "DURABLY_TEST_OTEL_SPANS";
const ENV_LOG: &str = "DURABLY_TEST_OTEL_LOG";

/// Short leases, so that the second worker takes the killed worker's run over soon.
const LEASE: Duration = Duration::from_millis(800);
const RENEW: Duration = Duration::from_millis(200);
const LIMIT: Duration = Duration::from_secs(60);

/// One span as a processor saw it start or end.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    /// `start` or `end`.
    event: String,
    pid: u32,
    name: String,
    kind: String,
    trace_id: String,
    span_id: String,
    /// `0000000000000000` for a root span.
    parent_span_id: String,
    /// `Unset`, `Ok` or `Error`.
    status: String,
    attributes: serde_json::Map<String, Value>,
}

impl Record {
    fn from(event: &str, span: &SpanData) -> Self {
        let attributes = span
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str().to_owned(), json!(kv.value.to_string())))
            .collect();
        Record {
            event: event.to_owned(),
            pid: std::process::id(),
            name: span.name.to_string(),
            kind: format!("{:?}", span.span_kind),
            trace_id: format!("{:032x}", span.span_context.trace_id()),
            span_id: format!("{:016x}", span.span_context.span_id()),
            parent_span_id: format!("{:016x}", span.parent_span_id),
            status: match &span.status {
                opentelemetry::trace::Status::Unset => "Unset".into(),
                opentelemetry::trace::Status::Ok => "Ok".into(),
                opentelemetry::trace::Status::Error { .. } => "Error".into(),
            },
            attributes,
        }
    }

    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    fn is(&self, event: &str, name: &str) -> bool {
        self.event == event && self.name == name
    }
}

/// Where a process's span records go.
#[derive(Debug)]
enum Sink {
    /// The test process: kept in memory.
    Memory(Arc<Mutex<Vec<Record>>>),
    /// A child worker: appended to a JSON-lines file, one write per record.
    File(Mutex<std::fs::File>),
}

/// Records each span at its start and at its end, at once.
#[derive(Debug)]
struct Recording(Sink);

impl Recording {
    fn record(&self, record: Record) {
        match &self.0 {
            Sink::Memory(records) => {
                if let Ok(mut records) = records.lock() {
                    records.push(record);
                }
            }
            Sink::File(file) => {
                let Ok(mut line) = serde_json::to_string(&record) else {
                    return;
                };
                line.push('\n');
                if let Ok(mut file) = file.lock() {
                    // One write of the whole line: a kill never leaves half of it.
                    let _ = file.write_all(line.as_bytes());
                }
            }
        }
    }
}

impl SpanProcessor for Recording {
    fn on_start(&self, span: &mut Span, _: &opentelemetry::Context) {
        if let Some(data) = span.exported_data() {
            self.record(Record::from("start", &data));
        }
    }

    fn on_end(&self, span: SpanData) {
        self.record(Record::from("end", &span));
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Installs the global subscriber: `tracing` spans to OpenTelemetry, recorded by `sink`.
fn install(sink: Sink) {
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Recording(sink))
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("durably-tests"));
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(layer);
    tracing::subscriber::set_global_default(subscriber).expect("install the subscriber");
}

/// The spans of this (the test) process, recorded in memory.
fn local_spans() -> Arc<Mutex<Vec<Record>>> {
    static SPANS: OnceLock<Arc<Mutex<Vec<Record>>>> = OnceLock::new();
    SPANS
        .get_or_init(|| {
            let spans = Arc::new(Mutex::new(Vec::new()));
            install(Sink::Memory(spans.clone()));
            spans
        })
        .clone()
}

fn local_records() -> Vec<Record> {
    local_spans()
        .lock()
        .map(|records| records.clone())
        .unwrap_or_default()
}

fn file_records(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Input {
    base: u64,
}

/// Appends `line` to the execution log (before the step's work).
fn log(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(format!("{} {line}\n", std::process::id()).as_bytes())
}

/// Three steps; with `hang`, step 2 never returns (its worker is killed in it).
fn three_steps(log_path: PathBuf, hang: bool) -> Job<Input, u64> {
    Job::new("otel-crash", move |step: StepContext, input: Input| {
        let log_path = log_path.clone();
        async move {
            let mut total = input.base;
            for k in 1..=3u64 {
                let log_path = log_path.clone();
                total += step
                    .run(&format!("step-{k}"), |_| async move {
                        log(&log_path, &format!("step-{k}"))?;
                        if hang && k == 2 {
                            std::future::pending::<()>().await;
                        }
                        Ok(k)
                    })
                    .await?;
            }
            Ok(total)
        }
    })
}

fn instance(db: &Path, log_path: &Path, hang: bool) -> (Durably, durably::JobHandle<Input, u64>) {
    let durably = Durably::builder()
        .sqlite(db)
        .lease_duration(LEASE)
        .lease_renew_interval(RENEW)
        .polling_interval(Duration::from_millis(20))
        .build()
        .expect("build");
    let handle = durably
        .register(three_steps(log_path.to_path_buf(), hang))
        .expect("register");
    (durably, handle)
}

/// Entry point of the child workers (run by the tests below, not directly): `hang` works
/// until it is killed; `finish` works until the run named by the log's `run` line completed.
#[test]
#[ignore = "child-process entry point of tracing_otel.rs"]
fn child_worker() {
    let (Ok(mode), Ok(db), Ok(spans), Ok(log_path)) = (
        std::env::var(ENV_MODE),
        std::env::var(ENV_DB),
        std::env::var(ENV_SPANS),
        std::env::var(ENV_LOG),
    ) else {
        panic!("child_worker runs only as a child of tracing_otel.rs");
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spans)
        .expect("spans file");
    install(Sink::File(Mutex::new(file)));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let (durably, _) = instance(Path::new(&db), Path::new(&log_path), mode == "hang");
        durably.init().await.expect("init");
        if mode == "hang" {
            tokio::time::sleep(Duration::from_secs(120)).await;
            panic!("worker was not killed within 120 s");
        }
        eventually("the run completed", LIMIT, || async {
            let runs = durably.get_runs(&durably::RunFilter::new()).await.ok()?;
            runs.iter()
                .all(|run| run.status == RunStatus::Completed)
                .then_some(())
        })
        .await;
        // Every span of the execution ends with it (the slot's span with the recorded end).
        durably.stop().await;
    });
}

fn spawn_worker(mode: &str, db: &Path, spans: &Path, log_path: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "child_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_MODE, mode)
        .env(ENV_DB, db)
        .env(ENV_SPANS, spans)
        .env(ENV_LOG, log_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn a worker")
}

/// Waits (bounded) for `child` to exit; its success.
async fn exited(child: &mut Child) -> bool {
    eventually("the worker exited", LIMIT, || {
        let status = child.try_wait().expect("try_wait");
        async move { status.map(|status| status.success()) }
    })
    .await
}

/// The one record matching `pick`, or a panic listing what there was.
fn one<'a>(records: &'a [Record], what: &str, pick: impl Fn(&Record) -> bool) -> &'a Record {
    let found: Vec<&Record> = records.iter().filter(|r| pick(r)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}\namong {records:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_and_resumed_on_another_process_is_one_trace() {
    local_spans();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("otel.sqlite");
    let log_path = dir.path().join("executions.log");
    let (spans_a, spans_b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));

    // The caller's span: the trigger is its child, so the run joins the caller's trace.
    let (durably, job) = instance(&db, &log_path, false);
    durably.migrate().await.expect("migrate");
    let caller = tracing::info_span!("test.caller");
    let run = job
        .trigger(Input { base: 100 })
        .instrument(caller.clone())
        .await
        .expect("trigger")
        .run;
    drop(caller);
    let records = local_records();
    let caller = one(&records, "the caller's span", |r| {
        r.is("end", "test.caller")
    });
    let trigger = one(&records, "the trigger span", |r| {
        r.is("end", "durably.trigger") && r.attribute("messaging.message.id") == Some(&run.id)
    });
    assert_eq!(trigger.trace_id, caller.trace_id);
    assert_eq!(trigger.parent_span_id, caller.span_id);
    assert_eq!(trigger.kind, "Producer");
    for (key, value) in [
        ("messaging.system", "durably"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", "otel-crash"),
        ("durably.job.name", "otel-crash"),
        ("durably.run.id", run.id.as_str()),
    ] {
        assert_eq!(trigger.attribute(key), Some(value), "trigger's {key}");
    }
    let trace = trigger.trace_id.clone();
    let stored = durably
        .get_run(&run.id)
        .await
        .expect("get_run")
        .expect("the run");
    assert_eq!(
        stored.trace_context,
        Some(format!("00-{trace}-{}-01", trigger.span_id)),
        "the run keeps its trigger's context"
    );

    // Process A runs step 1, is killed inside step 2.
    let mut a = spawn_worker("hang", &db, &spans_a, &log_path);
    eventually("process A inside step 2", LIMIT, || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        async move { log.contains(" step-2").then_some(()) }
    })
    .await;
    a.kill().expect("SIGKILL process A");
    a.wait().expect("reap process A");
    assert_eq!(
        durably
            .get_run(&run.id)
            .await
            .expect("get_run")
            .map(|r| r.status),
        Some(RunStatus::Leased),
        "killed while leased"
    );

    // Process B takes the run over once A's lease expired, and finishes it.
    let mut b = spawn_worker("finish", &db, &spans_b, &log_path);
    assert!(exited(&mut b).await, "process B finished cleanly");
    let done = durably
        .get_run(&run.id)
        .await
        .expect("get_run")
        .expect("the run");
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.output, Some(json!(106)));
    let log = std::fs::read_to_string(&log_path).expect("log");
    let by = |step: &str| -> Vec<&str> {
        log.lines()
            .filter(|line| line.ends_with(&format!(" {step}")))
            .filter_map(|line| line.split(' ').next())
            .collect()
    };
    assert_eq!(by("step-1"), [a.id().to_string()], "step 1 ran once, on A");
    assert_eq!(by("step-3"), [b.id().to_string()], "step 3 ran on B");

    // A: the execution's span (started, never ended: killed), step 1 (ended) as its child.
    let records_a = file_records(&spans_a);
    let run_a = one(&records_a, "A's execution span", |r| {
        r.is("start", "durably.run")
    });
    assert_eq!(run_a.pid, a.id());
    assert_eq!(
        run_a.trace_id, trace,
        "A's execution continues the trigger's trace"
    );
    assert_eq!(run_a.parent_span_id, trigger.span_id);
    assert_eq!(run_a.kind, "Consumer");
    assert_eq!(run_a.attribute("durably.run.id"), Some(run.id.as_str()));
    assert_eq!(
        run_a.attribute("messaging.message.id"),
        Some(run.id.as_str())
    );
    assert_eq!(run_a.attribute("messaging.operation.type"), Some("process"));
    assert_eq!(run_a.attribute("durably.lease.generation"), Some("1"));
    assert!(
        !records_a.iter().any(|r| r.is("end", "durably.run")),
        "a killed process never ends its execution's span"
    );
    let step_1 = one(&records_a, "A's step 1", |r| {
        r.is("end", "durably.step") && r.attribute("durably.step.name") == Some("step-1")
    });
    assert_eq!(step_1.trace_id, trace);
    assert_eq!(step_1.parent_span_id, run_a.span_id);
    assert_eq!(step_1.attribute("durably.step.outcome"), Some("completed"));
    assert_eq!(step_1.status, "Unset");
    let step_2_a = one(&records_a, "A's step 2 (started)", |r| {
        r.is("start", "durably.step") && r.attribute("durably.step.name") == Some("step-2")
    });
    assert_eq!(step_2_a.parent_span_id, run_a.span_id);

    // B: its execution's span (a child of the trigger too), steps 2 and 3 its children;
    // step 1 replayed from the store, without a span.
    let records_b = file_records(&spans_b);
    let run_b = one(&records_b, "B's execution span", |r| {
        r.is("end", "durably.run") && r.attribute("durably.run.id") == Some(&run.id)
    });
    assert_eq!(run_b.pid, b.id());
    assert_eq!(
        run_b.trace_id, trace,
        "B's execution continues the same trace"
    );
    assert_eq!(run_b.parent_span_id, trigger.span_id);
    assert_eq!(run_b.attribute("durably.lease.generation"), Some("2"));
    assert_eq!(run_b.attribute("durably.run.outcome"), Some("completed"));
    for name in ["step-2", "step-3"] {
        let step = one(&records_b, name, |r| {
            r.is("end", "durably.step") && r.attribute("durably.step.name") == Some(name)
        });
        assert_eq!(step.trace_id, trace, "{name}");
        assert_eq!(
            step.parent_span_id, run_b.span_id,
            "{name} under B's execution"
        );
        assert_eq!(step.attribute("durably.step.outcome"), Some("completed"));
    }
    assert!(
        !records_b
            .iter()
            .any(|r| r.name == "durably.step" && r.attribute("durably.step.name") == Some("step-1")),
        "step 1 is replayed on B, not executed"
    );
    // Every span either process recorded for the run is in the one trace.
    for record in records_a.iter().chain(&records_b) {
        if record.name == "durably.run" || record.name == "durably.step" {
            assert_eq!(record.trace_id, trace, "{record:#?}");
        }
    }
}

/// A job of one step that fails when asked to.
fn one_step(name: &'static str) -> Job<Value, u64> {
    Job::new(name, |step: StepContext, input: Value| async move {
        let fail = input.get("fail").and_then(Value::as_bool).unwrap_or(false);
        step.run("only", move |_| async move {
            if fail {
                Err("asked to fail".to_owned().into())
            } else {
                Ok(1u64)
            }
        })
        .await
    })
}

async fn memory_instance(name: &'static str) -> Durably {
    let durably = Durably::builder()
        .sqlite(":memory:")
        .polling_interval(Duration::from_millis(20))
        .build()
        .expect("build");
    durably.register(one_step(name)).expect("register");
    durably.migrate().await.expect("migrate");
    durably
}

async fn ended(durably: &Durably, id: &str) -> durably::Run {
    eventually("the run ended", LIMIT, || async {
        let run = durably.get_run(id).await.ok()??;
        run.status.is_terminal().then_some(run)
    })
    .await
}

/// The ended execution span of run `id`, once recorded.
async fn execution_span(id: &str) -> Record {
    eventually("the execution's span ended", LIMIT, || async {
        local_records()
            .into_iter()
            .find(|r| r.is("end", "durably.run") && r.attribute("durably.run.id") == Some(id))
    })
    .await
}

#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_trigger_with_a_traceparent_joins_the_callers_trace() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    local_spans();
    let durably = memory_instance("otel-http").await;
    let router = durably::http::router(durably.clone(), durably::http::HttpOptions::new());
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let request = Request::post("/trigger")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("tracestate", "vendor=value")
        .body(Body::from(
            json!({"jobName": "otel-http", "input": {"fail": true}}).to_string(),
        ))
        .expect("request");
    let response = router.oneshot(request).await.expect("response");
    assert!(response.status().is_success(), "{}", response.status());
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let reply: Value = serde_json::from_slice(&body).expect("JSON");
    let id = reply["runId"].as_str().expect("runId").to_owned();

    durably.start();
    let run = ended(&durably, &id).await;
    assert_eq!(run.status, RunStatus::Failed);
    let execution = execution_span(&id).await;
    durably.stop().await;

    let records = local_records();
    let trigger = one(&records, "the HTTP trigger's span", |r| {
        r.is("end", "durably.trigger") && r.attribute("durably.run.id") == Some(&id)
    });
    assert_eq!(trigger.trace_id, caller_trace, "the caller's trace");
    assert_eq!(
        trigger.parent_span_id, caller_span,
        "the caller's span is its parent"
    );
    assert_eq!(
        run.trace_context,
        Some(format!("00-{caller_trace}-{}-01", trigger.span_id))
    );
    assert_eq!(execution.trace_id, caller_trace);
    assert_eq!(execution.parent_span_id, trigger.span_id);
    assert_eq!(execution.status, "Error", "a failed run's span is an error");
    assert_eq!(execution.attribute("durably.run.outcome"), Some("failed"));
    let step = one(&records, "the failed step's span", |r| {
        r.is("end", "durably.step") && r.parent_span_id == execution.span_id
    });
    assert_eq!(step.trace_id, caller_trace);
    assert_eq!(step.status, "Error");
    assert_eq!(step.attribute("durably.step.name"), Some("only"));
    assert_eq!(step.attribute("durably.step.outcome"), Some("failed"));
    assert_eq!(step.attribute("error.type"), Some("_OTHER"));
    assert_eq!(step.attribute("durably.step.attempt"), Some("1"));

    // A malformed header is ignored: the trigger is a child of the current span (none here).
    let request = Request::post("/trigger")
        .header("content-type", "application/json")
        .header("traceparent", "00-not-a-trace-01")
        .body(Body::from(json!({"jobName": "otel-http"}).to_string()))
        .expect("request");
    let router = durably::http::router(durably.clone(), durably::http::HttpOptions::new());
    let response = router.oneshot(request).await.expect("response");
    assert!(response.status().is_success(), "{}", response.status());
}

/// A schedule's "run now" over HTTP (`POST /schedules/trigger`) joins the caller's trace, as
/// `POST /trigger` does.
#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedules_run_now_with_a_traceparent_joins_the_callers_trace() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    local_spans();
    let durably = memory_instance("otel-scheduled").await;
    durably
        .schedules()
        .upsert(durably::Schedule::new(
            "otel-nightly",
            "0 0 3 * * *",
            "otel-scheduled",
            json!({}),
        ))
        .await
        .expect("schedule");
    let router = durably::http::router(durably.clone(), durably::http::HttpOptions::new());
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let request = Request::post("/schedules/trigger?name=otel-nightly")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .body(Body::empty())
        .expect("request");
    let response = router.oneshot(request).await.expect("response");
    assert!(response.status().is_success(), "{}", response.status());
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let reply: Value = serde_json::from_slice(&body).expect("JSON");
    let id = reply["runId"].as_str().expect("runId").to_owned();

    let trigger = eventually("the schedule trigger's span", LIMIT, || async {
        local_records()
            .into_iter()
            .find(|r| r.is("end", "durably.trigger") && r.attribute("durably.run.id") == Some(&id))
    })
    .await;
    assert_eq!(trigger.trace_id, caller_trace, "the caller's trace");
    assert_eq!(
        trigger.parent_span_id, caller_span,
        "the caller's span is its parent"
    );
    let run = durably.get_run(&id).await.expect("read").expect("the run");
    assert_eq!(
        run.trace_context,
        Some(format!("00-{caller_trace}-{}-01", trigger.span_id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stored_without_a_trace_context_is_a_trace_per_execution() {
    local_spans();
    let durably = memory_instance("otel-untraced").await;
    // As the TypeScript runtime enqueues it: no trace context stored.
    let enqueued = durably
        .store()
        .enqueue(
            durably::store::NewRun {
                job_name: "otel-untraced".into(),
                input: json!({}),
                ..Default::default()
            },
            durably::Timestamp::now(),
        )
        .await
        .expect("enqueue");
    assert_eq!(enqueued.run.trace_context, None);
    let id = enqueued.run.id;
    durably.start();
    assert_eq!(ended(&durably, &id).await.status, RunStatus::Completed);
    let execution = execution_span(&id).await;
    durably.stop().await;
    assert_eq!(
        execution.parent_span_id, "0000000000000000",
        "a root: not a child of the worker's span"
    );
    let records = local_records();
    assert!(
        !records
            .iter()
            .any(|r| r.name == "durably.worker" && r.trace_id == execution.trace_id),
        "not in the worker's trace"
    );
    let step = one(&records, "its step", |r| {
        r.is("end", "durably.step") && r.parent_span_id == execution.span_id
    });
    assert_eq!(step.trace_id, execution.trace_id);
}
