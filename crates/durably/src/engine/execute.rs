//! Executing one claimed run: its job function, then recording how it ended (completed,
//! failed, cancelled or lost) through one fenced [`Transition`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::held::{Deregister, Held};
use super::{Engine, Outcome};
use crate::error::Error;
use crate::events::EventKind;
use crate::job::ExecutionError;
use crate::run::Run;
use crate::runtime::{self, Instant};
use crate::step::{AbortReason, StepShared};
use crate::store::{ClaimRequest, Fence, Transition};
use crate::telemetry;
use crate::time::Timestamp;

/// What a job function returned (or how it panicked).
type JobResult =
    std::result::Result<std::result::Result<Value, ExecutionError>, Box<dyn std::any::Any + Send>>;

/// A run whose job function returned; its end is not recorded yet.
pub(super) struct Returned {
    pub(super) run: Run,
    fence: Fence,
    shared: Arc<StepShared>,
    result: JobResult,
    started: Instant,
    /// How long the job function ran.
    pub(super) elapsed: Duration,
    _active: Deregister,
}

/// How far a held run got.
pub(super) enum Execution {
    /// Ended without its job function returning a result to record.
    Ended(Outcome),
    /// Its job function returned.
    Returned(Box<Returned>),
}

/// A recorded end, with the runs claimed in the same write.
pub(super) struct Ended {
    pub(super) outcome: Outcome,
    pub(super) claimed: Vec<Run>,
    /// When the claim of `claimed` was sent: their leases count from then.
    pub(super) claim_sent: Instant,
    /// A completion whose claim looked for runs: fewer than asked means nothing more was
    /// claimable.
    pub(super) looked: bool,
}

impl Engine {
    /// Executes one run, claimed by a claim sent at `sent`, to its end (upstream §4.3).
    pub(crate) async fn execute(
        self: &Arc<Self>,
        run: Run,
        sent: Instant,
        worker_id: &str,
    ) -> Outcome {
        let held = self.hold(run, sent, worker_id);
        let span = held.span.clone();
        let outcome = match self.run_job(held, None).instrument(span.clone()).await {
            Execution::Ended(outcome) => outcome,
            Execution::Returned(returned) => {
                let ending = self.record_end(returned, worker_id, 0);
                ending.instrument(span.clone()).await.outcome
            }
        };
        telemetry::run_ended(&span, outcome);
        outcome
    }

    /// With a local queue, waits for the run's first turn to execute job code (see
    /// `crate::local_queue`); `false` when the worker began to stop (`stop`, its token)
    /// meanwhile. A cancel of the run ends the wait too (the run then ends without executing).
    async fn first_turn(&self, shared: &StepShared, stop: Option<&CancellationToken>) -> bool {
        if self.execution_permits.is_none() {
            return true;
        }
        let never = CancellationToken::new();
        let stop = stop.unwrap_or(&never);
        // Biased: a stopping worker gives its waiting runs back even when a turn is free.
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = shared.token.cancelled() => true,
            _ = shared.permit.enter() => true,
        }
    }

    /// Gives back a run whose job has not started (its worker is stopping): pending again at
    /// once, for any worker, instead of after its lease.
    async fn give_back(&self, held: Held) -> Execution {
        let Held {
            run,
            shared,
            active,
            keeper,
            ..
        } = held;
        drop(keeper);
        match self
            .store
            .release_lease(&shared.fence, Timestamp::now())
            .await
        {
            Ok(_) => tracing::debug!("run given back: the worker is stopping"),
            // Its lease expires and any worker takes it over.
            Err(error) => self.store_failed(&error, "lease-release", Some(&run.id)),
        }
        drop(active);
        Execution::Ended(Outcome::Released)
    }

    /// Runs a held run's job function until it returns (or ends the run at once: an unknown
    /// job, a run cancelled or lost while it was held).
    pub(super) async fn run_job(&self, held: Held, stop: Option<&CancellationToken>) -> Execution {
        let store = &self.store;
        tracing::debug!("claimed");
        // Let triggers of this process that are still announcing their runs finish first.
        drop(self.announcing.write().await);
        if !self.first_turn(&held.shared, stop).await {
            return self.give_back(held).await;
        }
        let Held {
            run,
            span: _,
            owner,
            step,
            shared,
            active,
            keeper,
            started: announced,
        } = held;
        // A run held (claimed ahead) while this process froze may have lost its lease: it
        // starts only while its lease is provably valid (renewed first otherwise).
        if shared.abort_reason().is_none()
            && let Err(error) = shared.ensure_lease().await
            && shared.abort_reason().is_none()
        {
            // The renewal itself failed (the store did not answer): not started here; its
            // lease expires and any worker takes it over.
            self.store_failed(&error, "lease-renewal", Some(&run.id));
            shared.metrics.ended(&run, Outcome::LeaseLost);
            return Execution::Ended(Outcome::LeaseLost);
        }
        match shared.abort_reason() {
            Some(AbortReason::Cancelled) => {
                tracing::info!("run cancelled before it started");
                self.announce_cancel_found(&run, &shared);
                return Execution::Ended(Outcome::Cancelled);
            }
            Some(AbortReason::LeaseLost) => {
                shared.metrics.ended(&run, Outcome::LeaseLost);
                return Execution::Ended(Outcome::LeaseLost);
            }
            None => {}
        }
        let fence = shared.fence.clone();

        let Some(job) = self.jobs.get(&run.job_name) else {
            let error = format!("Unknown job: {}", run.job_name);
            tracing::warn!(%error, "cannot execute run");
            // Upstream v4: leased like any run, then failed (both announced).
            self.events.emit(EventKind::RunLeased {
                run_id: run.id.clone(),
                job_name: run.job_name.clone(),
                input: run.input.clone(),
                lease_owner: owner.clone(),
                lease_expires_at: run
                    .lease_expires_at
                    .unwrap_or_else(Timestamp::now)
                    .to_string(),
                labels: run.labels.clone(),
            });
            // SPEC §3: without preserve_steps, step outputs go at any terminal state (a run
            // reclaimed from a process that had the job may carry steps).
            let transition = Transition::Fail {
                error: error.clone(),
            };
            shared.metrics.started(&run);
            let outcome = match store
                .finish_run(&fence, transition, Timestamp::now(), None)
                .await
            {
                Ok(finished) if finished.landed => {
                    shared.metrics.ended(&run, Outcome::Failed);
                    self.events.emit(EventKind::RunFail {
                        run_id: run.id,
                        job_name: run.job_name,
                        error,
                        failed_step_name: "unknown".into(),
                        labels: run.labels,
                    });
                    Outcome::Failed
                }
                Ok(_) => {
                    shared.metrics.ended(&run, Outcome::LeaseLost);
                    Outcome::LeaseLost
                }
                Err(e) => {
                    self.store_failed(&e, "run-failure", Some(&run.id));
                    shared.metrics.ended(&run, Outcome::LeaseLost);
                    Outcome::LeaseLost
                }
            };
            return Execution::Ended(outcome);
        };

        let started = runtime::now();
        self.events.emit(EventKind::RunLeased {
            run_id: run.id.clone(),
            job_name: run.job_name.clone(),
            input: run.input.clone(),
            lease_owner: owner,
            lease_expires_at: run
                .lease_expires_at
                .unwrap_or_else(Timestamp::now)
                .to_string(),
            labels: run.labels.clone(),
        });
        announced.store(true, std::sync::atomic::Ordering::SeqCst);
        shared.metrics.started(&run);

        let result = AssertUnwindSafe((job.execute)(step, run.input.clone()))
            .catch_unwind()
            .await;
        // The job function returned (or panicked): its turn goes to the next run.
        shared.permit.leave();
        drop(keeper);
        // The run stays among the active ones until its end is recorded, so that a `cancel` of
        // this process meanwhile marks it as announced (see `announce_cancel_found`).
        Execution::Returned(Box::new(Returned {
            run,
            fence,
            shared,
            result,
            started,
            elapsed: started.elapsed(),
            _active: active,
        }))
    }

    /// Records how an execution ended (completed, failed, cancelled or lost); a completion
    /// also claims up to `claim` runs in the same write.
    pub(super) async fn record_end(
        &self,
        returned: Box<Returned>,
        worker_id: &str,
        claim: usize,
    ) -> Ended {
        let Returned {
            run,
            mut fence,
            shared,
            result,
            started,
            _active: active,
            ..
        } = *returned;
        // The claim's fence, knowing whether this execution prepared a wait.
        fence.may_have_waits |= shared.prepared_waits();
        let claim_sent = runtime::now();
        let (outcome, claimed) = self
            .finish(&run, &fence, &shared, result, started, worker_id, claim)
            .await;
        shared.metrics.ended(&run, outcome);
        if matches!(outcome, Outcome::Completed | Outcome::Failed) {
            self.child_ended(&run).await;
        }
        drop(active);
        Ended {
            looked: claim > 0 && matches!(outcome, Outcome::Completed | Outcome::Suspended),
            outcome,
            claimed,
            claim_sent,
        }
    }

    /// Records how an execution ended: completed, failed, cancelled or lost.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        run: &Run,
        fence: &Fence,
        shared: &StepShared,
        result: std::result::Result<
            std::result::Result<Value, ExecutionError>,
            Box<dyn std::any::Any + Send>,
        >,
        started: Instant,
        worker_id: &str,
        claim: usize,
    ) -> (Outcome, Vec<Run>) {
        // Upstream v4 §3.2: a run that asked to be suspended is suspended whatever its job
        // function returned, unless it was cancelled or lost meanwhile.
        if let Some(wait_id) = shared.suspended_on()
            && shared.abort_reason().is_none()
        {
            return self
                .finish_suspended(run, fence, shared, wait_id, worker_id, claim)
                .await;
        }
        let failure = match result {
            Ok(Ok(output)) if shared.abort_reason() != Some(AbortReason::Cancelled) => {
                return self
                    .finish_completed(run, fence, shared, output, started, worker_id, claim)
                    .await;
            }
            Ok(Ok(_)) => None,
            Ok(Err(ExecutionError::Job(error))) => match error.downcast_ref::<Error>() {
                Some(Error::Cancelled { .. })
                | Some(Error::LeaseLost { .. })
                | Some(Error::Suspended { .. }) => None,
                _ => Some(error.to_string()),
            },
            Ok(Err(ExecutionError::Message(message))) => Some(message),
            Err(panic) => Some(format!("Job panicked: {}", panic_text(&*panic))),
        };
        let outcome = match (failure, shared.abort_reason()) {
            (_, Some(AbortReason::Cancelled)) => {
                tracing::info!("run cancelled while executing");
                self.announce_cancel_found(run, shared);
                Outcome::Cancelled
            }
            (_, Some(AbortReason::LeaseLost)) | (None, None) => {
                tracing::warn!("lease lost; execution abandoned");
                Outcome::LeaseLost
            }
            (Some(message), None) => self.finish_failed(run, fence, shared, message).await,
        };
        (outcome, Vec::new())
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish_completed(
        &self,
        run: &Run,
        fence: &Fence,
        shared: &StepShared,
        output: Value,
        started: Instant,
        worker_id: &str,
        claim: usize,
    ) -> (Outcome, Vec<Run>) {
        let stored = (!output.is_null()).then(|| output.clone());
        let next = self.claim_request(worker_id, claim);
        let then_claim = next.as_ref();
        let finished = self
            .store
            .finish_run(
                fence,
                Transition::Complete { output: stored },
                Timestamp::now(),
                then_claim,
            )
            .await;
        let (completed, claimed) = match finished {
            Ok(finished) => (Ok(finished.landed), self.claimed(finished.claimed)),
            Err(error) => (Err(error), Vec::new()),
        };
        let outcome = match completed {
            Ok(true) => {
                tracing::debug!("completed");
                self.events.emit(EventKind::RunComplete {
                    run_id: run.id.clone(),
                    job_name: run.job_name.clone(),
                    output,
                    duration: started.elapsed().as_millis() as u64,
                    labels: run.labels.clone(),
                });
                Outcome::Completed
            }
            Ok(false) => {
                let message = format!("Lease lost before completing run {}", run.id);
                self.refused(run, shared, "run-completion", message).await
            }
            Err(error) => {
                tracing::error!(%error, "could not record completion");
                self.store_failed(&error, "run-completion", Some(&run.id));
                Outcome::LeaseLost
            }
        };
        (outcome, claimed)
    }

    /// Hands a suspended run off (upstream `suspendRun`): `waiting` on `wait_id`, its lease,
    /// slot and concurrency key given up; the slot goes to the next claimable run in the
    /// same write.
    #[allow(clippy::too_many_arguments)]
    async fn finish_suspended(
        &self,
        run: &Run,
        fence: &Fence,
        shared: &StepShared,
        wait_id: String,
        worker_id: &str,
        claim: usize,
    ) -> (Outcome, Vec<Run>) {
        let next = self.claim_request(worker_id, claim);
        let transition = Transition::Wait {
            wait_id: wait_id.clone(),
        };
        let finished = self
            .store
            .finish_run(fence, transition, Timestamp::now(), next.as_ref())
            .await;
        match finished {
            Ok(finished) if finished.landed => {
                tracing::info!(%wait_id, "suspended: waiting");
                if let Some(deadline) = shared.suspended_until() {
                    self.wake_at(deadline);
                }
                self.events.emit(EventKind::RunWaiting {
                    run_id: run.id.clone(),
                    job_name: run.job_name.clone(),
                    labels: run.labels.clone(),
                    wait_id,
                });
                (Outcome::Suspended, self.claimed(finished.claimed))
            }
            Ok(finished) => {
                let message = format!("Lease lost before suspending run {}", run.id);
                let outcome = self.refused(run, shared, "run-suspension", message).await;
                (outcome, self.claimed(finished.claimed))
            }
            Err(error) => {
                // Upstream: the run stays leased and is taken over once its lease expires.
                tracing::error!(%error, %wait_id, "could not suspend the run");
                self.store_failed(&error, "run-suspension", Some(&run.id));
                (Outcome::LeaseLost, Vec::new())
            }
        }
    }

    /// The claim a write that frees a slot makes for `claim` slots (`None` for none): it
    /// resumes waiting runs only when a wait may have been resolved since the last look
    /// ([`Engine::resume_waiting_runs`]).
    fn claim_request(&self, worker_id: &str, claim: usize) -> Option<ClaimRequest> {
        (claim > 0).then(|| ClaimRequest {
            worker_id: worker_id.to_owned(),
            lease: self.settings.lease_duration,
            max: claim,
            resume_waiting: self.take_resume_due(),
        })
    }

    async fn finish_failed(
        &self,
        run: &Run,
        fence: &Fence,
        shared: &StepShared,
        message: String,
    ) -> Outcome {
        let store = &self.store;
        // Upstream v4: the lowest-index failure recorded under this lease, known without a
        // read (a failure of an earlier lease is not this execution's).
        let failed_step_name = shared.failed_step_name();
        let transition = Transition::Fail {
            error: message.clone(),
        };
        match store
            .finish_run(fence, transition, Timestamp::now(), None)
            .await
        {
            Ok(finished) if finished.landed => {
                tracing::info!(error = %message, "failed");
                self.events.emit(EventKind::RunFail {
                    run_id: run.id.clone(),
                    job_name: run.job_name.clone(),
                    error: message,
                    failed_step_name,
                    labels: run.labels.clone(),
                });
                Outcome::Failed
            }
            Ok(_) => {
                let message = format!("Lease lost before recording failure for run {}", run.id);
                self.refused(run, shared, "run-failure", message).await
            }
            Err(error) => {
                tracing::error!(%error, "could not record failure");
                self.store_failed(&error, "run-failure", Some(&run.id));
                Outcome::LeaseLost
            }
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
