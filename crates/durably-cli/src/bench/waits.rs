//! The `waits` workload: runs that suspend on a durable wait and resume once signalled.
//! Three phases, each timed: `jobs` runs execute a step and suspend (`suspend_per_s`); every
//! wait is signalled (`signals_per_s`); every run resumes, replays its first step and
//! completes (`resume_per_s`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use durably::{Durably, EventKind, EventType, Job, StepContext, Store, WaitResult};
use serde_json::{Value, json};

use super::{Counter, peak_rss_mb, percentiles, reset_peak_rss, round};

type BoxError = Box<dyn std::error::Error>;

fn waiting_job(executions: Arc<AtomicU64>) -> Job<Value, Value> {
    Job::new("bench-wait", move |step: StepContext, _input: Value| {
        let executions = executions.clone();
        async move {
            step.run("before", |_| async move {
                executions.fetch_add(1, Ordering::Relaxed);
                Ok(1)
            })
            .await?;
            let wait = step.prepare_wait("signal").await?;
            match step.wait_for(&wait).await? {
                WaitResult::Signal { payload } => Ok(payload),
                _ => Ok(Value::Null),
            }
        }
    })
}

/// Runs the workload on `store` with `concurrency` slots.
pub(super) async fn waits_on(
    store: Arc<dyn Store>,
    backend: &str,
    concurrency: usize,
    jobs: u64,
) -> Result<Value, BoxError> {
    reset_peak_rss();
    let durably = Durably::builder()
        .shared_store(store)
        .max_concurrent_runs(concurrency)
        .polling_interval(Duration::from_millis(50))
        .build()?;
    let executions = Arc::new(AtomicU64::new(0));
    let job = durably.register(waiting_job(executions.clone()))?;
    durably.migrate().await?;
    let (suspended, completed) = (Counter::new("waits", jobs), Counter::new("waits", jobs));
    // Each run's wait, when its signal was sent, and when the run completed.
    let waits_of_runs: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let signalled_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let completed_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let _on_waiting = {
        let (suspended, waits_of_runs) = (suspended.clone(), waits_of_runs.clone());
        durably.on(EventType::RunWaiting, move |event| {
            if let EventKind::RunWaiting {
                run_id, wait_id, ..
            } = &event.kind
                && let Ok(mut waits) = waits_of_runs.lock()
            {
                waits.insert(run_id.clone(), wait_id.clone());
            }
            suspended.add();
        })
    };
    let _on_complete = {
        let (completed, completed_at) = (completed.clone(), completed_at.clone());
        durably.on(EventType::RunComplete, move |event| {
            if let Ok(mut at) = completed_at.lock() {
                at.insert(
                    event.kind.run_id().unwrap_or_default().to_owned(),
                    Instant::now(),
                );
            }
            completed.add();
        })
    };
    for start in (0..jobs).step_by(1000) {
        let items = (start..(start + 1000).min(jobs))
            .map(|n| (json!({ "n": n }), durably::TriggerOptions::new()));
        job.batch_trigger(items).await?;
    }

    let started = Instant::now();
    durably.start();
    suspended.reached("suspending").await?;
    let suspend_s = started.elapsed().as_secs_f64();

    let ids: Vec<String> = waits_of_runs
        .lock()
        .map(|waits| waits.values().cloned().collect())
        .unwrap_or_default();
    // Signals arrive as `concurrency` callers at once (webhooks, say), each one at a time.
    let signalled = Instant::now();
    let callers = concurrency.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let (durably, ids, signalled_at) = (durably.clone(), ids.clone(), signalled_at.clone());
        tasks.spawn(async move {
            for (n, id) in ids.iter().enumerate().skip(caller).step_by(callers) {
                if let Ok(mut at) = signalled_at.lock() {
                    at.insert(id.clone(), Instant::now());
                }
                durably
                    .signal(id, json!({ "n": n }), &format!("bench-{n}"))
                    .await?;
            }
            Ok::<_, durably::Error>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let signal_s = signalled.elapsed().as_secs_f64();
    completed.reached("resuming").await?;
    let resume_s = signalled.elapsed().as_secs_f64();
    durably.stop().await;

    // From sending a signal to its run's completion.
    let latencies: Vec<f64> = {
        let (waits, signalled, completed) = (
            waits_of_runs.lock().map(|w| w.clone()).unwrap_or_default(),
            signalled_at.lock().map(|s| s.clone()).unwrap_or_default(),
            completed_at.lock().map(|c| c.clone()).unwrap_or_default(),
        );
        waits
            .iter()
            .filter_map(|(run, wait)| {
                let done = completed.get(run)?;
                let sent = signalled.get(wait)?;
                Some(done.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    let (p50, p99) = percentiles(latencies);
    let per_s = |seconds: f64| round(jobs as f64 / seconds.max(f64::EPSILON));
    Ok(json!({
        "workload": "waits",
        "backend": backend,
        "concurrency": concurrency,
        "jobs": jobs,
        "suspend_per_s": per_s(suspend_s),
        "signals_per_s": per_s(signal_s),
        "resume_per_s": per_s(resume_s),
        "jobs_per_s": per_s(suspend_s + resume_s),
        "signal_to_complete_p50_ms": p50,
        "signal_to_complete_p99_ms": p99,
        "peak_rss_mb": peak_rss_mb(),
        "duplicate_step_execs": executions.load(Ordering::SeqCst).saturating_sub(jobs),
    }))
}
