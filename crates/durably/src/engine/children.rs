//! Child runs in the engine (see `crate::children`): a child's end resolves its parent's
//! `children:*` wait once the children of that invoke are settled, a cancel cascades to the
//! children cancelled with their parent, and a maintenance sweep resolves the waits that a
//! crash between a child's end and its signal left pending.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{Engine, lock};
use crate::children::{CHILDREN_SIGNAL_ID, cancels_with_parent};
use crate::error::{Error, Result};
use crate::maintenance::{Maintained, MaintenanceTask};
use crate::run::{Run, RunFilter, RunStatus};
use crate::store::Store;
use crate::time::Timestamp;
use crate::waits::SignalDisposition;

/// How often the sweep looks for settled children waits left unsignalled.
const SWEEP_CADENCE: Duration = Duration::from_secs(10);
/// Waits signalled, and children cancelled, per sweep.
const SWEEP_BATCH: u64 = 100;
/// How far before its previous look the sweep looks again for cancelled parents: cancels are
/// stamped with the clock of the process that made them, which may run behind this one.
const CLOCK_MARGIN: Duration = Duration::from_secs(300);

/// Signals the parent's wait `wait_id` if its children are settled. `true`: this call resolved
/// it. A wait that can no longer take the signal (its parent was cancelled or ended, the wait
/// is gone) is left as it is.
pub(super) async fn settle(store: &dyn Store, parent_run_id: &str, wait_id: &str) -> Result<bool> {
    if !store.children_settled(parent_run_id, wait_id).await? {
        return Ok(false);
    }
    match store
        .signal_wait(wait_id, Value::Null, CHILDREN_SIGNAL_ID, Timestamp::now())
        .await
    {
        Ok(signalled) => Ok(signalled.disposition == SignalDisposition::Accepted),
        Err(Error::Conflict(_) | Error::NotFound(_) | Error::WaitExpired { .. }) => Ok(false),
        Err(error) => Err(error),
    }
}

impl Engine {
    /// After `run` ended (completed, failed or cancelled): if it is a child, resolves its
    /// parent's wait when the children of its invoke are settled, and wakes this worker to
    /// resume the parent. Failures are reported as `worker:error` (the sweep retries).
    pub(super) async fn child_ended(&self, run: &Run) {
        let (Some(parent), Some(wait_id)) = (&run.parent_run_id, &run.parent_wait_id) else {
            return;
        };
        match settle(&*self.store, parent, wait_id).await {
            Ok(true) => self.resume_waiting_runs(),
            Ok(false) => {}
            Err(error) => self.store_failed(&error, "children", Some(&run.id)),
        }
    }

    /// Cancels the unfinished children of `run_id` that are cancelled with their parent, and
    /// theirs, depth first through a work list. Failures are reported as `worker:error`.
    pub(super) async fn cancel_children(&self, run_id: &str) {
        let mut parents = vec![run_id.to_owned()];
        while let Some(parent) = parents.pop() {
            if let Err(error) = self.cancel_children_of(&parent, &mut parents).await {
                self.store_failed(&error, "children", Some(&parent));
            }
        }
    }

    async fn cancel_children_of(&self, parent: &str, parents: &mut Vec<String>) -> Result<()> {
        let filter = RunFilter::new().parent_run_id(parent).statuses([
            RunStatus::Pending,
            RunStatus::Leased,
            RunStatus::Waiting,
        ]);
        let children = self.store.get_runs(&filter).await?;
        if children.is_empty() {
            return Ok(());
        }
        let waits = self.store.get_waits(parent).await?;
        for child in children {
            let cascades = waits
                .iter()
                .find(|w| Some(&w.id) == child.parent_wait_id.as_ref())
                .is_none_or(|w| cancels_with_parent(w.metadata.as_ref()));
            if cascades && self.cancel_one(&child).await? {
                parents.push(child.id);
            }
        }
        Ok(())
    }
}

/// The crash-recovery half of child runs, every 10 s (idle or busy) and on request:
/// 1. resolves the `children:*` waits whose children are settled but which no child's end
///    signalled (its process died between the two writes): a crash only delays the parent;
/// 2. cancels the unfinished children of cancelled parents that are cancelled with them (the
///    process that cancelled the parent died during the cascade, or it was the TypeScript
///    runtime, which does not cascade), through [`Engine::cancel`], so each is announced and
///    cascades to its own children.
pub(super) struct ChildrenSweep {
    engine: Weak<Engine>,
    store: Arc<dyn Store>,
    /// The parents cancelled since when the next look covers: the epoch at first (every
    /// cancelled parent), then shortly before the start of the last look that found them all.
    cancelled_since: Mutex<Timestamp>,
}

impl ChildrenSweep {
    pub(super) fn new(engine: Weak<Engine>, store: Arc<dyn Store>) -> Self {
        ChildrenSweep {
            engine,
            store,
            cancelled_since: Mutex::new(Timestamp::from_millis(0)),
        }
    }

    async fn signal_settled_waits(&self) -> Result<()> {
        let waits = self.store.settled_children_waits(SWEEP_BATCH).await?;
        for wait_id in waits {
            let Some(wait) = self.store.get_wait(&wait_id).await? else {
                continue;
            };
            if settle(&*self.store, &wait.run_id, &wait.id).await? {
                tracing::info!(wait_id = %wait.id, run_id = %wait.run_id, "children wait resolved by the sweep");
            }
        }
        Ok(())
    }

    async fn finish_cascades(&self) -> Result<()> {
        let Some(engine) = self.engine.upgrade() else {
            return Ok(());
        };
        let started = Timestamp::now();
        let since = *lock(&self.cancelled_since);
        let children = self.store.children_to_cancel(since, SWEEP_BATCH).await?;
        for child_id in &children {
            let Some(child) = self.store.get_run(child_id).await? else {
                continue;
            };
            if engine.cancel(&child).await? {
                tracing::info!(run_id = %child.id, parent_run_id = ?child.parent_run_id, "child cancelled with its parent by the sweep");
            }
        }
        // A full batch may have left some behind: the next look covers the same parents.
        if (children.len() as u64) < SWEEP_BATCH {
            *lock(&self.cancelled_since) = started - CLOCK_MARGIN;
        }
        Ok(())
    }
}

#[async_trait]
impl MaintenanceTask for ChildrenSweep {
    fn name(&self) -> &'static str {
        "children-sweep"
    }

    fn every(&self) -> Duration {
        SWEEP_CADENCE
    }

    fn runs_on_request(&self) -> bool {
        true
    }

    fn runs_while_busy(&self) -> bool {
        true
    }

    fn error_context(&self) -> &'static str {
        "children"
    }

    async fn run(&self) -> Result<Maintained> {
        self.signal_settled_waits().await?;
        self.finish_cascades().await?;
        Ok(Maintained::Done)
    }
}
