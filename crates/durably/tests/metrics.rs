//! The engine's OpenTelemetry metrics (feature `otel`) after known workloads, read through the
//! SDK's in-memory exporter: exact counts of runs triggered, started, completed, failed and
//! cancelled, one step-duration sample per step attempt, one queue latency per run, a lease
//! loss and a reclaim when a run is taken over; the gauges of runs by status and of the oldest
//! pending run's age; and the Prometheus text endpoint (feature
//! `prometheus`), present only where it is merged.
#![cfg(feature = "otel")]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Backend, Gate, LIMIT, TestDb, eventually, terminal, within};
use durably::{Durably, DurablyBuilder, Job, RunStatus, StepContext, TriggerOptions};
use opentelemetry::Value as OtelValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use serde_json::{Value, json};

/// A meter provider whose values the test reads on demand.
struct Meters {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

/// One data point: its attributes (as strings) and its value (a sum's value, or a histogram's
/// count and sum).
#[derive(Debug)]
struct Point {
    attributes: BTreeMap<String, String>,
    value: f64,
    count: u64,
}

impl Meters {
    fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        Meters { provider, exporter }
    }

    fn builder(&self, db: &TestDb) -> DurablyBuilder {
        db.builder().meter_provider(&self.provider)
    }

    /// Every data point of the instrument `name`, as now (cumulative).
    fn points(&self, name: &str) -> Vec<Point> {
        self.exporter.reset();
        self.provider
            .force_flush()
            .expect("flush the meter provider");
        let exported = self.exporter.get_finished_metrics().expect("read metrics");
        let mut points = Vec::new();
        for resource in exported.iter().rev().take(1) {
            for scope in resource.scope_metrics() {
                assert_eq!(scope.scope().name(), "durably");
                for metric in scope.metrics().filter(|m| m.name() == name) {
                    collect(metric.data(), &mut points);
                }
            }
        }
        points
    }

    /// The sum of a counter's points whose attributes include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> u64 {
        matching(self.points(name), with)
            .map(|point| point.value as u64)
            .sum()
    }

    /// The number of samples of a histogram's points whose attributes include `with`.
    fn count(&self, name: &str, with: &[(&str, &str)]) -> u64 {
        matching(self.points(name), with)
            .map(|point| point.count)
            .sum()
    }

    /// The sum of the samples of a histogram's points whose attributes include `with`.
    fn total(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        matching(self.points(name), with)
            .map(|point| point.value)
            .sum()
    }
}

fn matching<'a>(
    points: Vec<Point>,
    with: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = Point> + 'a {
    points.into_iter().filter(move |point| {
        with.iter()
            .all(|(key, value)| point.attributes.get(*key).map(String::as_str) == Some(*value))
    })
}

fn attributes<'a>(
    kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>,
) -> BTreeMap<String, String> {
    kvs.map(|kv| {
        let value = match &kv.value {
            OtelValue::String(text) => text.as_str().to_owned(),
            other => other.to_string(),
        };
        (kv.key.as_str().to_owned(), value)
    })
    .collect()
}

fn collect(data: &AggregatedMetrics, points: &mut Vec<Point>) {
    match data {
        AggregatedMetrics::U64(MetricData::Sum(sum)) => {
            points.extend(sum.data_points().map(|p| Point {
                attributes: attributes(p.attributes()),
                value: p.value() as f64,
                count: 1,
            }))
        }
        AggregatedMetrics::U64(MetricData::Histogram(histogram)) => {
            points.extend(histogram.data_points().map(|p| Point {
                attributes: attributes(p.attributes()),
                value: p.sum() as f64,
                count: p.count(),
            }))
        }
        AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
            points.extend(histogram.data_points().map(|p| Point {
                attributes: attributes(p.attributes()),
                value: p.sum(),
                count: p.count(),
            }))
        }
        AggregatedMetrics::U64(MetricData::Gauge(gauge)) => {
            points.extend(gauge.data_points().map(|p| Point {
                attributes: attributes(p.attributes()),
                value: p.value() as f64,
                count: 1,
            }))
        }
        AggregatedMetrics::F64(MetricData::Gauge(gauge)) => {
            points.extend(gauge.data_points().map(|p| Point {
                attributes: attributes(p.attributes()),
                value: p.value(),
                count: 1,
            }))
        }
        other => panic!("unexpected metric data: {other:?}"),
    }
}

const JOB: &str = "durably.job.name";

/// Two steps; the second fails when the input says so (no retries: one attempt per step).
fn work_job() -> Job<Value, Value> {
    Job::new("work", |step: StepContext, input: Value| async move {
        step.run("a", |_| async { Ok(1) }).await?;
        let fail = input["fail"].as_bool().unwrap_or(false);
        step.run("b", move |_| async move {
            match fail {
                true => Err("asked to fail".into()),
                false => Ok(2),
            }
        })
        .await?;
        Ok(json!("done"))
    })
}

/// N runs, k of them failing, and one run cancelled before any worker started: every count
/// is exact.
async fn a_known_workload_counts_exactly(backend: Backend) {
    const N: usize = 6;
    const K: usize = 2;
    let db = TestDb::new(backend);
    let meters = Meters::new();
    // No claim-ahead: a run held ahead and given back (when a step write is slow on a busy
    // machine) starts under its second lease, which counts as resumed and as a reclaim.
    let durably = meters
        .builder(&db)
        .claim_ahead_below(Duration::ZERO)
        .job(work_job())
        .job(Job::new("never", |_: StepContext, _: Value| async {
            Ok(json!(null))
        }))
        .build()
        .expect("build");
    durably.migrate().await.expect("migrate");

    // Cancelled while pending: counted once by the process that cancelled, never started.
    let never = durably
        .trigger_json("never", json!({}), TriggerOptions::new())
        .await
        .expect("trigger")
        .run
        .id;
    durably.cancel(&never).await.expect("cancel");

    durably.start();
    let mut ids = Vec::new();
    for i in 0..N {
        let input = json!({ "fail": i < K });
        let triggered = durably
            .trigger_json("work", input, TriggerOptions::new())
            .await
            .expect("trigger");
        ids.push(triggered.run.id);
    }
    // A trigger answered by the existing run creates nothing: not counted.
    let keyed = TriggerOptions::new().idempotency_key("once");
    let first = durably
        .trigger_json("work", json!({}), keyed.clone())
        .await
        .expect("trigger");
    let again = durably
        .trigger_json("work", json!({}), keyed)
        .await
        .expect("trigger");
    assert_eq!(first.run.id, again.run.id);
    ids.push(first.run.id);
    let runs = N + 1;
    for id in &ids {
        terminal(&durably, id).await;
    }
    durably.stop().await;

    let work = [(JOB, "work")];
    assert_eq!(meters.sum("durably.runs.triggered", &work), runs as u64);
    assert_eq!(meters.sum("durably.runs.triggered", &[(JOB, "never")]), 1);
    assert_eq!(meters.sum("durably.runs.started", &work), runs as u64);
    assert_eq!(
        meters.sum(
            "durably.runs.started",
            &[(JOB, "work"), ("durably.run.resumed", "false")]
        ),
        runs as u64
    );
    assert_eq!(meters.sum("durably.runs.started", &[(JOB, "never")]), 0);
    assert_eq!(
        meters.sum("durably.runs.completed", &work),
        (runs - K) as u64
    );
    assert_eq!(meters.sum("durably.runs.failed", &work), K as u64);
    assert_eq!(meters.sum("durably.runs.cancelled", &[(JOB, "never")]), 1);
    assert_eq!(meters.sum("durably.runs.cancelled", &work), 0);

    // Two step attempts per run: `a`, then `b` (failed in K runs).
    assert_eq!(
        meters.count("durably.step.duration", &work),
        2 * runs as u64
    );
    assert_eq!(
        meters.count(
            "durably.step.duration",
            &[(JOB, "work"), ("durably.step.outcome", "failed")]
        ),
        K as u64
    );
    assert_eq!(
        meters.count(
            "durably.step.duration",
            &[(JOB, "work"), ("durably.step.outcome", "completed")]
        ),
        (2 * runs - K) as u64
    );
    assert_eq!(
        meters.count("durably.run.queue_latency", &work),
        runs as u64
    );
    assert_eq!(meters.count("durably.run.duration", &work), runs as u64);
    assert_eq!(
        meters.count(
            "durably.run.duration",
            &[(JOB, "work"), ("durably.run.outcome", "failed")]
        ),
        K as u64
    );

    // Every run claimed once, in claims of at least one run.
    assert_eq!(meters.total("durably.claim.size", &[]) as usize, runs);
    let claims = meters.sum("durably.claims", &[]);
    assert!((1..=runs as u64).contains(&claims), "{claims} claims");
    assert_eq!(meters.count("durably.claim.size", &[]), claims);

    assert_eq!(meters.sum("durably.lease.losses", &[]), 0);
    assert_eq!(meters.sum("durably.lease.reclaims", &[]), 0);
    assert_eq!(meters.sum("durably.store.errors", &[]), 0);
}

/// Worker A's lease expires while its step runs; worker B takes the run over and completes
/// it: A counts one lease loss, B one reclaim and one resumed start.
async fn a_takeover_counts_one_loss_and_one_reclaim(backend: Backend) {
    let db = TestDb::new(backend);
    let (meters_a, meters_b) = (Meters::new(), Meters::new());
    let entered = Gate::new();
    let release = Gate::new();
    let a_done = Arc::new(AtomicBool::new(false));
    let a = {
        let (entered, release, done) = (entered.clone(), release.clone(), a_done.clone());
        meters_a
            .builder(&db)
            .lease_duration(Duration::from_millis(200))
            .lease_renew_interval(Duration::from_secs(10))
            .job(Job::new("takeover", move |step: StepContext, _: Value| {
                let (entered, release, done) = (entered.clone(), release.clone(), done.clone());
                async move {
                    step.run("slow", |_| async move {
                        entered.open();
                        release.wait().await;
                        done.store(true, Ordering::SeqCst);
                        Ok(1)
                    })
                    .await?;
                    Ok(json!("a"))
                }
            }))
            .build()
            .expect("build a")
    };
    a.migrate().await.expect("migrate");
    let b = meters_b
        .builder(&db)
        .job(Job::new(
            "takeover",
            |step: StepContext, _: Value| async move {
                step.run("slow", |_| async { Ok(2) }).await?;
                Ok(json!("b"))
            },
        ))
        .build()
        .expect("build b");
    let id = b
        .trigger_json("takeover", json!({}), TriggerOptions::new())
        .await
        .expect("trigger")
        .run
        .id;

    let worker_a = {
        let a = a.clone();
        tokio::spawn(async move { a.process_one(Some("worker-a")).await })
    };
    within("A enters its step", LIMIT, entered.wait()).await;
    // B claims once A's lease has expired.
    eventually("B takes the run over", LIMIT, || async {
        b.process_one(Some("worker-b"))
            .await
            .expect("process_one")
            .then_some(())
    })
    .await;
    assert_eq!(terminal(&b, &id).await.status, RunStatus::Completed);
    release.open();
    within("A returns", LIMIT, worker_a)
        .await
        .expect("join A")
        .expect("A's process_one");
    assert!(a_done.load(Ordering::SeqCst));

    let job = [(JOB, "takeover")];
    assert_eq!(meters_a.sum("durably.lease.losses", &job), 1);
    assert_eq!(meters_a.sum("durably.lease.reclaims", &job), 0);
    assert_eq!(meters_a.sum("durably.runs.started", &job), 1);
    assert_eq!(meters_a.sum("durably.runs.completed", &job), 0);
    assert_eq!(
        meters_a.count(
            "durably.step.duration",
            &[(JOB, "takeover"), ("durably.step.outcome", "lease_lost")]
        ),
        1
    );
    assert_eq!(meters_a.count("durably.run.queue_latency", &job), 1);

    assert_eq!(meters_b.sum("durably.lease.reclaims", &job), 1);
    assert_eq!(meters_b.sum("durably.lease.losses", &job), 0);
    assert_eq!(
        meters_b.sum(
            "durably.runs.started",
            &[(JOB, "takeover"), ("durably.run.resumed", "true")]
        ),
        1
    );
    assert_eq!(meters_b.sum("durably.runs.completed", &job), 1);
    // Not a first start: its queue latency was A's.
    assert_eq!(meters_b.count("durably.run.queue_latency", &job), 0);
}

/// A delayed run's queue latency counts from when it became due, not from its trigger.
async fn a_delayed_run_waits_in_the_queue_from_its_start_time(backend: Backend) {
    let db = TestDb::new(backend);
    let meters = Meters::new();
    let durably = meters.builder(&db).job(work_job()).build().expect("build");
    durably.init().await.expect("init");
    let delay = Duration::from_secs(1);
    let id = durably
        .trigger_json("work", json!({}), TriggerOptions::new().delay(delay))
        .await
        .expect("trigger")
        .run
        .id;
    assert_eq!(terminal(&durably, &id).await.status, RunStatus::Completed);
    // Recorded in the background once the delay wait is read.
    let latency = eventually("the delayed run's queue latency", LIMIT, || async {
        (meters.count("durably.run.queue_latency", &[(JOB, "work")]) == 1)
            .then(|| meters.total("durably.run.queue_latency", &[(JOB, "work")]))
    })
    .await;
    durably.stop().await;
    assert!(
        latency < delay.as_secs_f64(),
        "measured from the trigger: {latency} s"
    );
    assert_eq!(meters.sum("durably.runs.started", &[(JOB, "work")]), 1);
}

/// A batch trigger counts each run it created.
async fn a_batch_counts_each_run(backend: Backend) {
    let db = TestDb::new(backend);
    let meters = Meters::new();
    let durably = meters.builder(&db).job(work_job()).build().expect("build");
    durably.migrate().await.expect("migrate");
    let items = (0..3)
        .map(|i| (json!({ "i": i }), TriggerOptions::new()))
        .collect();
    let runs = durably
        .batch_trigger_json("work", items)
        .await
        .expect("batch trigger");
    assert_eq!(runs.len(), 3);
    assert_eq!(meters.sum("durably.runs.triggered", &[(JOB, "work")]), 3);
    assert_eq!(meters.sum("durably.runs.started", &[(JOB, "work")]), 0);
}

mod sqlite_file {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_counts_each_run() {
        super::a_batch_counts_each_run(super::Backend::SqliteFile).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_known_workload_counts_exactly() {
        super::a_known_workload_counts_exactly(super::Backend::SqliteFile).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_takeover_counts_one_loss_and_one_reclaim() {
        super::a_takeover_counts_one_loss_and_one_reclaim(super::Backend::SqliteFile).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delayed_run_waits_in_the_queue_from_its_start_time() {
        super::a_delayed_run_waits_in_the_queue_from_its_start_time(super::Backend::SqliteFile)
            .await
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(durably_postgres_tests),
        ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
    )]
    async fn a_known_workload_counts_exactly() {
        super::a_known_workload_counts_exactly(super::Backend::Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(durably_postgres_tests),
        ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
    )]
    async fn a_takeover_counts_one_loss_and_one_reclaim() {
        super::a_takeover_counts_one_loss_and_one_reclaim(super::Backend::Postgres).await
    }
}

/// The Prometheus endpoint renders the engine's instruments, and only where it is merged.
#[cfg(feature = "prometheus")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_text_shows_the_counters_and_metrics_is_opt_in() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use durably::http::{HttpOptions, PrometheusMetrics, metrics_router, router};
    use tower::ServiceExt;

    let db = TestDb::new(Backend::SqliteFile);
    let metrics = PrometheusMetrics::new().expect("prometheus metrics");
    let durably: Durably = db
        .builder()
        .meter_provider(metrics.meter_provider())
        .job(work_job())
        .build()
        .expect("build");
    durably.init().await.expect("init");
    let id = durably
        .trigger_json("work", json!({}), TriggerOptions::new())
        .await
        .expect("trigger")
        .run
        .id;
    terminal(&durably, &id).await;

    let get = |path: &str| {
        Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request")
    };
    // The API alone has no /metrics.
    let api = router(durably.clone(), HttpOptions::new());
    let answer = api.clone().oneshot(get("/metrics")).await.expect("answer");
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);

    let app = api.merge(metrics_router(&metrics));
    let answer = app.oneshot(get("/metrics")).await.expect("answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let content_type = answer.headers()["content-type"].to_str().expect("ascii");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
        .await
        .expect("body");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    durably.stop().await;
    let line = |prefix: &str| {
        text.lines()
            .find(|line| line.starts_with(prefix) && line.contains("durably_job_name=\"work\""))
            .unwrap_or_else(|| panic!("no {prefix} line for job work in:\n{text}"))
            .to_owned()
    };
    assert!(line("durably_runs_completed_total{").ends_with(" 1"));
    assert!(line("durably_runs_triggered_total{").ends_with(" 1"));
    assert!(line("durably_step_duration_seconds_count{").ends_with(" 2"));
    assert!(text.contains("# TYPE durably_run_duration_seconds histogram"));
}

/// The gauges of runs by status and of the oldest pending run's age: read from the database
/// (`Store::run_counts`) only once something reads them, then at most every 30 s (a requested
/// maintenance pass reads at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_count_runs_by_status_and_age_the_oldest_pending_run() {
    let db = TestDb::new(Backend::SqliteFile);
    let meters = Meters::new();
    let durably = meters.builder(&db).job(work_job()).build().expect("build");
    durably.migrate().await.expect("migrate");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let triggered = durably
            .trigger_json("work", json!({}), TriggerOptions::new())
            .await
            .expect("trigger");
        ids.push(triggered.run.id);
    }
    let first_triggered = std::time::Instant::now();
    let cancelled = durably
        .trigger_json("work", json!({}), TriggerOptions::new())
        .await
        .expect("trigger")
        .run
        .id;
    durably.cancel(&cancelled).await.expect("cancel");

    // Nothing has read the gauges yet: maintenance does not query, the gauges have no value.
    durably.run_idle_maintenance().await;
    assert!(meters.points("durably.run.count").is_empty());
    // That read asked for the counts: the next pass reads them.
    durably.run_idle_maintenance().await;
    let status = |points: &[Point], status: &str| {
        points
            .iter()
            .find(|p| p.attributes.get("durably.run.status").map(String::as_str) == Some(status))
            .map(|p| p.value as u64)
    };
    let points = meters.points("durably.run.count");
    assert_eq!(status(&points, "pending"), Some(3));
    assert_eq!(status(&points, "cancelled"), Some(1));
    assert_eq!(status(&points, "completed"), Some(0));
    let waited = first_triggered.elapsed().as_secs_f64();
    let age = meters.points("durably.run.oldest_pending_age");
    assert_eq!(age.len(), 1);
    assert!(
        age[0].value + 0.002 >= waited && age[0].value < 60.0,
        "the oldest pending run waited at least {waited} s, the gauge says {}",
        age[0].value
    );

    durably.start();
    for id in &ids {
        terminal(&durably, id).await;
    }
    durably.stop().await;
    durably.run_idle_maintenance().await;
    let points = meters.points("durably.run.count");
    assert_eq!(status(&points, "pending"), Some(0));
    assert_eq!(status(&points, "completed"), Some(3));
    assert_eq!(
        meters.points("durably.run.oldest_pending_age")[0].value,
        0.0,
        "no run pending"
    );
}

/// Without a worker or its maintenance (as in `durably serve --metrics`), the gauges read the
/// counts themselves: a read that finds none starts one in the background, a later read shows
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_read_the_counts_themselves_without_a_worker() {
    let db = TestDb::new(Backend::SqliteFile);
    let meters = Meters::new();
    let durably = meters.builder(&db).job(work_job()).build().expect("build");
    durably.migrate().await.expect("migrate");
    for _ in 0..2 {
        durably
            .trigger_json("work", json!({}), TriggerOptions::new())
            .await
            .expect("trigger");
    }
    // No worker started, no maintenance pass run.
    eventually("the gauges show 2 pending runs", LIMIT, || async {
        let points = meters.points("durably.run.count");
        let pending = points
            .iter()
            .find(|p| p.attributes.get("durably.run.status").map(String::as_str) == Some("pending"))
            .map(|p| p.value as u64);
        (pending == Some(2)).then_some(())
    })
    .await;
    assert_eq!(meters.points("durably.run.oldest_pending_age").len(), 1);
}
