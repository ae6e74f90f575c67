//! The `sleep` workload: `--runs` runs (default 10,000), all triggered at once, each sleeping
//! durably for `--sleep-ms` (default 1,000) and then completing. Measures how late runs wake
//! up (`lateness_p50_ms`/`lateness_p99_ms`: the time the job function went on after its sleep
//! minus the sleep's deadline, both by this machine's clock) and how fast sleeping runs resume
//! (`resumed_per_s`: runs over the time from the earliest deadline to the last completion).
//!
//! The worker uses the default polling interval (1 s): a run suspended by this engine is woken
//! by its timer at the deadline, not by the poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use durably::{Durably, EventKind, EventType, Job, StepContext, Store, Timestamp, TriggerOptions};
use serde_json::{Value, json};

use super::{Counter, peak_rss_mb, percentiles, reset_peak_rss, round};

type BoxError = Box<dyn std::error::Error>;

/// Sleeps `ms` durably, then returns when it went on (milliseconds since the epoch).
fn sleeping_job(ms: u64) -> Job<Value, Value> {
    Job::new(
        "bench-sleep",
        move |step: StepContext, _input: Value| async move {
            step.sleep("nap", Duration::from_millis(ms)).await?;
            Ok(json!({ "woke": Timestamp::now().as_millis() }))
        },
    )
}

/// Runs the workload on `store` with `concurrency` slots.
pub(super) async fn sleep_on(
    store: Arc<dyn Store>,
    backend: &str,
    concurrency: usize,
    runs: u64,
    sleep_ms: u64,
) -> Result<Value, BoxError> {
    reset_peak_rss();
    let durably = Durably::builder()
        .shared_store(store)
        .max_concurrent_runs(concurrency)
        .build()?;
    let job = durably.register(sleeping_job(sleep_ms))?;
    durably.migrate().await?;
    let (suspended, completed) = (Counter::new("sleep", runs), Counter::new("sleep", runs));
    // Each run's wait, and when the run went on after its sleep.
    let waits_of_runs: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let woke: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let last_completion: Arc<Mutex<Option<Instant>>> = Arc::default();
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
        let (completed, woke, last) = (completed.clone(), woke.clone(), last_completion.clone());
        durably.on(EventType::RunComplete, move |event| {
            if let EventKind::RunComplete { run_id, output, .. } = &event.kind
                && let (Some(at), Ok(mut woke)) = (output["woke"].as_i64(), woke.lock())
            {
                woke.insert(run_id.clone(), at);
            }
            if let Ok(mut last) = last.lock() {
                *last = Some(Instant::now());
            }
            completed.add();
        })
    };
    for start in (0..runs).step_by(1000) {
        let items =
            (start..(start + 1000).min(runs)).map(|n| (json!({ "n": n }), TriggerOptions::new()));
        job.batch_trigger(items).await?;
    }

    let started = Instant::now();
    let started_at = Timestamp::now();
    durably.start();
    suspended.reached("suspending").await?;
    let suspend_s = started.elapsed().as_secs_f64();
    completed.reached("waking up").await?;
    let total_s = started.elapsed().as_secs_f64();
    durably.stop().await;

    // Lateness: when the job went on after its sleep minus the sleep's deadline.
    let waits = waits_of_runs.lock().map(|w| w.clone()).unwrap_or_default();
    let woke = woke.lock().map(|w| w.clone()).unwrap_or_default();
    let mut lateness = Vec::with_capacity(woke.len());
    let mut earliest_deadline: Option<i64> = None;
    for (run, wait_id) in &waits {
        let Some(deadline) = durably
            .get_wait(wait_id)
            .await?
            .and_then(|wait| wait.deadline_at)
        else {
            continue;
        };
        let deadline = deadline.as_millis();
        earliest_deadline = Some(earliest_deadline.map_or(deadline, |e| e.min(deadline)));
        if let Some(at) = woke.get(run) {
            lateness.push((at - deadline) as f64);
        }
    }
    let (p50, p99) = percentiles(lateness);
    // From the earliest deadline to the last completion.
    let resume_s = match earliest_deadline {
        Some(first) => {
            let first_s = (first - started_at.as_millis()) as f64 / 1000.0;
            let last_s = last_completion
                .lock()
                .ok()
                .and_then(|last| *last)
                .map_or(total_s, |last| last.duration_since(started).as_secs_f64());
            (last_s - first_s).max(f64::EPSILON)
        }
        None => total_s,
    };
    Ok(json!({
        "workload": "sleep",
        "backend": backend,
        "concurrency": concurrency,
        "runs": runs,
        "sleep_ms": sleep_ms,
        "suspend_per_s": round(runs as f64 / suspend_s.max(f64::EPSILON)),
        "resumed_per_s": round(runs as f64 / resume_s),
        "lateness_p50_ms": p50,
        "lateness_p99_ms": p99,
        "total_s": round(total_s),
        "peak_rss_mb": peak_rss_mb(),
    }))
}
