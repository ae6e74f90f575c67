//! Cancellation, whichever process cancels.
//!
//! A cancel marks the run `cancelled` in the store (unfenced: any process may cancel a pending
//! or leased run). The worker executing it learns it one of four ways, and stops
//! cooperatively: its token fires and none of its later writes land (they are fenced).
//! 1. This process cancelled: [`Engine::cancel`] fires the token at once.
//! 2. Another process cancelled, on a backend with notices (PostgreSQL): the claim loop gets
//!    [`StoreNotice::RunCancelled`](crate::store::StoreNotice) and fires the token.
//! 3. A fenced write (a step, a renewal) is refused: the step context or the lease keeper
//!    reads the run, finds it cancelled and fires the token.
//! 4. The run's end is refused when it is recorded ([`Engine::refused`]).
//!
//! Exactly one `run:cancel` event is emitted per process that sees it: by the process that
//! cancelled, or, for a cancel made elsewhere, by the worker that found it (see
//! [`Engine::announce_cancel_found`]).

use super::{Engine, lock};
use crate::Result;
use crate::events::EventKind;
use crate::run::{Run, RunStatus};
use crate::step::{AbortReason, StepShared};
use crate::time::Timestamp;

impl Engine {
    /// Cancels `run` (read by the caller, pending or leased) in the store and announces it
    /// (`run:cancel`); fires its token if it executes here. `false` when the store no longer
    /// had it pending or leased (nothing written, nothing announced).
    ///
    /// A child run's cancel then resolves its parent's wait (the invoke fails, naming it), and
    /// the run's own children that are cancelled with their parent are cancelled too,
    /// recursively (see `crate::children`).
    pub(crate) async fn cancel(&self, run: &Run) -> Result<bool> {
        if !self.cancel_one(run).await? {
            return Ok(false);
        }
        self.child_ended(run).await;
        self.cancel_children(&run.id).await;
        Ok(true)
    }

    /// [`Engine::cancel`] of `run` alone.
    pub(super) async fn cancel_one(&self, run: &Run) -> Result<bool> {
        // Marked before the write: the worker executing the run here may see the cancellation
        // in the store before this call emits `run:cancel`, and must not announce it too.
        self.mark_cancel_announced(&run.id, true);
        let cancelled = self.store.cancel_run(&run.id, Timestamp::now()).await;
        if !matches!(cancelled, Ok(true)) {
            self.mark_cancel_announced(&run.id, false);
        }
        if !cancelled? {
            return Ok(false);
        }
        self.metrics.run_cancelled(run);
        self.events.emit(EventKind::RunCancel {
            run_id: run.id.clone(),
            job_name: run.job_name.clone(),
            labels: run.labels.clone(),
        });
        self.cancel_local(&run.id);
        Ok(true)
    }

    /// Marks a run executing in this process as being cancelled by this process's `cancel`,
    /// which announces it (`run:cancel`); `false` after that cancel failed.
    fn mark_cancel_announced(&self, run_id: &str, announced: bool) {
        let execution = lock(&self.active).get(run_id).cloned();
        if let Some(execution) = execution {
            execution.set_cancel_announced(announced);
        }
    }

    /// Fires the cancellation token of a run executing in this process.
    pub(super) fn cancel_local(&self, run_id: &str) {
        let execution = lock(&self.active).get(run_id).cloned();
        if let Some(execution) = execution {
            execution.abort(AbortReason::Cancelled);
        }
    }

    /// Emits `run:cancel` for a cancellation this worker found in the store, unless this
    /// process's own `cancel` announces it: a cancel made by another process then still ends
    /// this process's listeners' view of the run and its `subscribe` streams.
    pub(super) fn announce_cancel_found(&self, run: &Run, shared: &StepShared) {
        if !shared.cancel_announced() {
            self.events.emit(EventKind::RunCancel {
                run_id: run.id.clone(),
                job_name: run.job_name.clone(),
                labels: run.labels.clone(),
            });
        }
    }

    /// A completion or failure that the fence refused: the run was cancelled meanwhile, or
    /// another worker holds it now (reported as `worker:error` under `context`).
    pub(super) async fn refused(
        &self,
        run: &Run,
        shared: &StepShared,
        context: &'static str,
        message: String,
    ) -> super::Outcome {
        let current = self.store.get_run(&run.id).await;
        if let Ok(Some(current)) = current
            && current.status == RunStatus::Cancelled
        {
            tracing::info!("run cancelled before its end was recorded");
            self.announce_cancel_found(run, shared);
            return super::Outcome::Cancelled;
        }
        tracing::warn!("{message}");
        self.worker_error(message, context, None);
        super::Outcome::LeaseLost
    }
}
