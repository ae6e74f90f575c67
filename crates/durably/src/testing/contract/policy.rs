//! Contract: the step policy ([`Store::preserves_steps`]). Every other contract test runs on a
//! store built with the default policy (a run that ends drops its steps); these run the tests
//! of each way a run ends on the store's view that preserves them
//! ([`Store::with_step_policy`]), and pass trivially for a backend that offers no such view.

use super::*;

/// The fresh store's view that preserves steps, or `None` when the backend has none.
fn preserving(store: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
    assert!(
        !store.preserves_steps(),
        "a store built with default options drops the steps of a run that ends"
    );
    let view = store.with_step_policy(true)?;
    assert!(view.preserves_steps());
    Some(view)
}

/// Contract: a completion keeps the steps when the store preserves them.
pub async fn complete_run_keeps_steps_when_preserving(store: Arc<dyn Store>) {
    if let Some(store) = preserving(store) {
        complete_run_is_fenced(store).await;
    }
}

/// Contract: a failure keeps the steps when the store preserves them.
pub async fn fail_run_keeps_steps_when_preserving(store: Arc<dyn Store>) {
    if let Some(store) = preserving(store) {
        fail_run_is_fenced(store).await;
    }
}

/// Contract: a cancel keeps the steps when the store preserves them.
pub async fn cancel_run_keeps_steps_when_preserving(store: Arc<dyn Store>) {
    if let Some(store) = preserving(store) {
        cancel_run_only_cancels_active_runs(store).await;
    }
}

/// Contract: an expired lease that fails keeps its steps when the store preserves them.
pub async fn release_expired_leases_keeps_steps_when_preserving(store: Arc<dyn Store>) {
    if let Some(store) = preserving(store) {
        release_expired_leases_of_one_key_keeps_one_pending_and_drops_failed_steps(store).await;
    }
}
