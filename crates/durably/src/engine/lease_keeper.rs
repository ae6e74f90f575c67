//! Keeping a lease: renewing it every `lease_renew_interval` while the run executes, and
//! firing the run's token when the lease is lost (by this worker's own clock, a refused
//! renewal, or a cancel found in the store).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Engine;
use crate::events::EventKind;
use crate::run::RunStatus;
use crate::runtime;
use crate::step::{AbortReason, StepShared};

impl Engine {
    /// Renews the lease every `lease_renew_interval`, and fires the run's token with
    /// `LeaseLost` when the lease ends by this worker's clock (counted from the send time of
    /// the claim or of the last successful renewal, so a reply that comes back late never
    /// lengthens it) or a renewal is refused.
    pub(super) async fn keep_lease(
        self: Arc<Self>,
        shared: Arc<StepShared>,
        owner: String,
        started: Arc<AtomicBool>,
    ) {
        let settings = &self.settings;
        let store = &self.store;
        loop {
            // Renewals made before a step (see `StepShared::ensure_lease`) move it too.
            let deadline = shared.lease.expires();
            // Biased (no random draw; a simulation replays exactly): a fired token ends the
            // keeper first; then the deadline, so that when it passes at the instant a renewal
            // falls due the lease counts as run out (as the worker's clock says). Each branch
            // ends the wait: none can starve another.
            tokio::select! {
                biased;
                _ = shared.token.cancelled() => return,
                _ = runtime::sleep_until(deadline) => {
                    if runtime::now() < shared.lease.expires() {
                        continue;
                    }
                    tracing::warn!("lease deadline passed without renewal");
                    shared.abort(AbortReason::LeaseLost);
                    return;
                }
                _ = runtime::sleep(settings.lease_renew_interval) => {}
            }
            // Counted from its send time, one renewal at a time (see `renew_lease`).
            match shared.renew_lease().await {
                Ok(Some(expires)) => {
                    if runtime::now() >= shared.lease.expires() {
                        // Answered after the lease it set had run out: another worker may
                        // hold the run by now.
                        tracing::warn!("lease renewal answered too late: ownership lost");
                        shared.abort(AbortReason::LeaseLost);
                        return;
                    }
                    // A held run's renewals are not announced before its `run:leased`.
                    if !started.load(Ordering::SeqCst) {
                        continue;
                    }
                    self.events.emit(EventKind::RunLeaseRenewed {
                        run_id: shared.run_id.clone(),
                        job_name: shared.job_name.clone(),
                        lease_owner: owner.clone(),
                        lease_expires_at: expires.to_string(),
                        labels: shared.labels.clone(),
                    });
                }
                Ok(None) => {
                    let cancelled = matches!(
                        store.get_run(&shared.run_id).await,
                        Ok(Some(run)) if run.status == RunStatus::Cancelled
                    );
                    if cancelled {
                        shared.abort(AbortReason::Cancelled);
                    } else {
                        tracing::warn!("lease renewal refused: ownership lost");
                        shared.abort(AbortReason::LeaseLost);
                        self.worker_error(
                            format!("Lease renewal lost ownership for run {}", shared.run_id),
                            "lease-renewal",
                            Some(&shared.run_id),
                        );
                    }
                    return;
                }
                Err(error) => {
                    self.store_failed(&error, "lease-renewal", Some(&shared.run_id));
                }
            }
        }
    }
}
