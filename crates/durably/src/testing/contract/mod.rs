//! The `Store` contract (upstream storage.shared.ts, db-semantics.shared.ts,
//! db-concurrency.shared.ts): what every backend must do identically. Each test takes a fresh,
//! migrated store and panics on a violation; [`crate::store_contract_tests!`] turns them into
//! one test each.
#![allow(missing_docs)]

mod attempts;
mod children;
mod claim;
mod coalesce;
mod enqueue;
mod operations;
mod policy;
mod priority;
mod resume;
mod schedules;
mod traces;
mod waits;
mod writes;

pub use attempts::*;
pub use children::*;
pub use claim::*;
pub use coalesce::*;
pub use enqueue::*;
pub use operations::*;
pub use policy::*;
pub use priority::*;
pub use resume::*;
pub use schedules::*;
pub use traces::*;
pub use waits::*;
pub use writes::*;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::store::{ClaimRequest, Fence, NewLog, NewRun, NewStep, RunPatch, Store};
use crate::testing::Ends;
use crate::{
    Coalesce, Disposition, Error, Labels, LogLevel, Progress, RunFilter, RunStatus, StepStatus,
    Timestamp,
};

/// Runs `future`, failing the test if it takes longer than `limit` (hang guard).
async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

const LEASE: Duration = Duration::from_secs(30);

fn new_run(job: &str, input: Value) -> NewRun {
    NewRun {
        job_name: job.into(),
        input,
        idempotency_key: None,
        concurrency_key: None,
        labels: Labels::new(),
        coalesce: None,
        ..Default::default()
    }
}

fn keyed(job: &str, key: &str) -> NewRun {
    NewRun {
        concurrency_key: Some(key.into()),
        ..new_run(job, json!({}))
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

async fn enqueue(store: &Arc<dyn Store>, run: NewRun, now: Timestamp) -> crate::Run {
    let enqueued = store.enqueue(run, now).await.expect("enqueue");
    assert_eq!(enqueued.disposition, Disposition::Created);
    enqueued.run
}

async fn claim(
    store: &Arc<dyn Store>,
    worker: &str,
    now: Timestamp,
    lease: Duration,
) -> Option<crate::Run> {
    let mut claimed = store
        .claim(&ClaimRequest::new(worker, lease, 1), now)
        .await
        .expect("claim");
    assert!(claimed.len() <= 1);
    claimed.pop()
}

async fn get(store: &Arc<dyn Store>, id: &str) -> crate::Run {
    store
        .get_run(id)
        .await
        .expect("get_run")
        .unwrap_or_else(|| panic!("run {id} exists"))
}

fn step(
    name: &str,
    index: i64,
    status: StepStatus,
    output: Option<Value>,
    at: Timestamp,
) -> NewStep {
    NewStep {
        name: name.into(),
        index,
        status,
        output,
        error: (status == StepStatus::Failed).then(|| format!("{name} failed")),
        started_at: at,
        attempt: None,
    }
}

fn log(run_id: &str, message: &str, data: Option<Value>) -> NewLog {
    NewLog {
        run_id: run_id.into(),
        step_name: None,
        level: LogLevel::Info,
        message: message.into(),
        data,
    }
}

fn stale(fence: &Fence) -> Fence {
    Fence {
        generation: fence.generation + 1,
        ..fence.clone()
    }
}

/// The number of step rows a run that ended keeps: all of them under a store that preserves
/// steps, none otherwise.
fn kept(store: &Arc<dyn Store>, steps: usize) -> usize {
    match store.preserves_steps() {
        true => steps,
        false => 0,
    }
}

async fn count_runs(store: &Arc<dyn Store>) -> usize {
    store
        .get_runs(&RunFilter::new())
        .await
        .expect("get_runs")
        .len()
}

async fn claimed_run(store: &Arc<dyn Store>, id: &str) -> crate::Run {
    let run = get(store, id).await;
    assert_eq!(run.status, RunStatus::Leased);
    run
}
