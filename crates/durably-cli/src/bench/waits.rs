//! The `waits` workload: runs that suspend on a durable wait and resume once signalled.
//! Three phases, each timed: `jobs` runs execute a step and suspend (`suspend_per_s`); every
//! wait is signalled (`signals_per_s`); every run resumes, replays its first step and
//! completes (`resume_per_s`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use durably::{Durably, EventKind, EventType, Job, StepContext, Store, WaitResult};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{peak_rss_mb, reset_peak_rss, round};

type BoxError = Box<dyn std::error::Error>;

/// Counts events of one type and wakes the bench when `target` were seen.
struct Counter {
    seen: AtomicU64,
    target: u64,
    done: Notify,
}

impl Counter {
    fn new(target: u64) -> Arc<Self> {
        Arc::new(Counter {
            seen: AtomicU64::new(0),
            target,
            done: Notify::new(),
        })
    }

    fn add(&self) {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.target {
            self.done.notify_one();
        }
    }

    async fn reached(&self, what: &str) -> Result<(), BoxError> {
        if self.target == 0 || self.seen.load(Ordering::SeqCst) >= self.target {
            return Ok(());
        }
        tokio::time::timeout(Duration::from_secs(600), self.done.notified())
            .await
            .map_err(|_| format!("waits benchmark: {what} did not finish within 10 minutes").into())
    }
}

fn waiting_job(executions: Arc<AtomicU64>) -> Job<Value, Value> {
    Job::new("bench-wait", move |step: StepContext, _input: Value| {
        let executions = executions.clone();
        async move {
            step.run("before", |_| async move {
                executions.fetch_add(1, Ordering::Relaxed);
                Ok::<_, durably::Error>(1)
            })
            .await?;
            let wait = step.prepare_wait("signal").await?;
            match step.wait_for(&wait).await? {
                WaitResult::Signal { payload } => Ok::<_, durably::Error>(payload),
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
    let (suspended, completed) = (Counter::new(jobs), Counter::new(jobs));
    let wait_ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(jobs as usize)));
    let _on_waiting = {
        let (suspended, wait_ids) = (suspended.clone(), wait_ids.clone());
        durably.on(EventType::RunWaiting, move |event| {
            if let EventKind::RunWaiting { wait_id, .. } = &event.kind
                && let Ok(mut ids) = wait_ids.lock()
            {
                ids.push(wait_id.clone());
            }
            suspended.add();
        })
    };
    let _on_complete = {
        let completed = completed.clone();
        durably.on(EventType::RunComplete, move |_| completed.add())
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

    let ids: Vec<String> = wait_ids.lock().map(|ids| ids.clone()).unwrap_or_default();
    // Signals arrive as `concurrency` callers at once (webhooks, say), each one at a time.
    let signalled = Instant::now();
    let callers = concurrency.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let (durably, ids) = (durably.clone(), ids.clone());
        tasks.spawn(async move {
            for (n, id) in ids.iter().enumerate().skip(caller).step_by(callers) {
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
        "peak_rss_mb": peak_rss_mb(),
        "duplicate_step_execs": executions.load(Ordering::SeqCst).saturating_sub(jobs),
    }))
}
