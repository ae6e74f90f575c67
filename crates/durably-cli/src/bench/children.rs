//! The `fanout-children` workload: one parent run invokes `--children` child runs (default
//! 1,000) of a one-step job with `step.invoke_all` and waits for them without a slot. Measures
//! the time from the parent's trigger to its completion (`total_s`) and children per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use durably::{Durably, Job, StepContext, Store, WaitOptions};
use serde_json::json;

use super::{peak_rss_mb, reset_peak_rss, round};

type BoxError = Box<dyn std::error::Error>;

/// Runs the workload on `store` with `concurrency` slots.
pub(super) async fn children_on(
    store: Arc<dyn Store>,
    backend: &str,
    concurrency: usize,
    children: u64,
) -> Result<serde_json::Value, BoxError> {
    reset_peak_rss();
    let durably = Durably::builder()
        .shared_store(store)
        .max_concurrent_runs(concurrency)
        .polling_interval(Duration::from_millis(100))
        .build()?;
    let child = durably.register(Job::new(
        "bench-child",
        |step: StepContext, n: u64| async move { step.run("one", |_| async move { Ok(n) }).await },
    ))?;
    let parent = durably.register(Job::new(
        "bench-parent",
        move |step: StepContext, n: u64| {
            let child = child.clone();
            async move {
                let outputs = step
                    .invoke_all("children", &child, (1..=n).collect())
                    .await?;
                Ok(outputs.iter().sum::<u64>())
            }
        },
    ))?;
    durably.migrate().await?;
    durably.start();
    let started = Instant::now();
    let run = parent.trigger(children).await?.run;
    let done = durably
        .wait_for_run(
            &run.id,
            WaitOptions::new().timeout(Duration::from_secs(600)),
        )
        .await?;
    let total_s = started.elapsed().as_secs_f64();
    durably.stop().await;
    if done.output != Some(json!(children * (children + 1) / 2)) {
        return Err(format!("unexpected output {:?}", done.output).into());
    }
    Ok(json!({
        "workload": "fanout-children",
        "backend": backend,
        "concurrency": concurrency,
        "children": children,
        "children_per_s": round(children as f64 / total_s.max(f64::EPSILON)),
        "total_s": round(total_s),
        "peak_rss_mb": peak_rss_mb(),
    }))
}
