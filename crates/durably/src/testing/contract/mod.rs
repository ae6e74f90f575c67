//! The `Store` contract (upstream storage.shared.ts, db-semantics.shared.ts,
//! db-concurrency.shared.ts): what every backend must do identically. Each test takes a fresh,
//! migrated store and panics on a violation; [`crate::store_contract_tests!`] turns them into
//! one test each.
#![allow(missing_docs)]

mod claim;
mod enqueue;
mod operations;
mod policy;
mod writes;

pub use claim::*;
pub use enqueue::*;
pub use operations::*;
pub use policy::*;
pub use writes::*;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::store::{ClaimRequest, Fence, NewLog, NewRun, NewStep, RunPatch, Store, Transition};
use crate::{
    Coalesce, Disposition, Error, Labels, LogLevel, Progress, Result, RunFilter, RunStatus,
    StepStatus, Timestamp,
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
    let mut claimed = store.claim(worker, now, lease, 1).await.expect("claim");
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

/// The store's transitions in the shape the tests read best, and its operators' writes.
#[async_trait::async_trait]
trait Ends {
    async fn complete_run(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
    ) -> Result<bool>;
    async fn complete_run_and_claim(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(bool, Vec<crate::Run>)>;
    async fn fail_run(&self, fence: &Fence, error: &str, now: Timestamp) -> Result<bool>;
    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool>;
}

#[async_trait::async_trait]
impl Ends for Arc<dyn Store> {
    async fn complete_run(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
    ) -> Result<bool> {
        let finished = self
            .finish_run(fence, Transition::Complete { output }, now, None)
            .await?;
        assert!(finished.claimed.is_empty(), "claimed without being asked");
        Ok(finished.landed)
    }

    async fn complete_run_and_claim(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(bool, Vec<crate::Run>)> {
        let finished = self
            .finish_run(fence, Transition::Complete { output }, now, Some(next))
            .await?;
        Ok((finished.landed, finished.claimed))
    }

    async fn fail_run(&self, fence: &Fence, error: &str, now: Timestamp) -> Result<bool> {
        let transition = Transition::Fail {
            error: error.to_owned(),
        };
        let finished = self.finish_run(fence, transition, now, None).await?;
        Ok(finished.landed)
    }

    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool> {
        let admin = self
            .admin()
            .expect("this contract test fabricates states through `Store::admin`");
        admin.update_run(id, patch, now).await
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
