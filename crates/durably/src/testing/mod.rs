//! Test suites for `Store` implementations, to run from outside the crate (feature `testing`).
//!
//! A new backend is "implement [`Store`], call the suite": in a test file of its crate, give
//! [`store_contract_tests!`](crate::store_contract_tests) a function that opens a fresh,
//! migrated store with default options (and whatever must live as long as the test, such as a
//! temporary directory), and it writes one `#[tokio::test]` per contract test. A store with
//! default options drops a run's steps when the run ends; the suite checks the other policy
//! through [`Store::with_step_policy`], and fabricates states through [`Store::admin`].
//!
//! ```ignore
//! // tests/my_store_contract.rs (dev-dependencies: durably with feature "testing", tokio)
//! async fn fresh() -> ((), std::sync::Arc<dyn durably::Store>) {
//!     let store = std::sync::Arc::new(my_backend::MyStore::connect("…").unwrap());
//!     durably::Store::migrate(&*store).await.unwrap();
//!     ((), store)
//! }
//! durably::store_contract_tests!(fresh);
//! ```
//!
//! The tests' names say what they check; each panics with what went wrong. durably's own
//! backends run through it in `tests/store_contract.rs`.

pub mod contract;

use serde_json::Value;

use crate::store::{ClaimRequest, Fence, RunPatch, Store, Transition};
use crate::{Result, Run, Timestamp};

/// A run's end and operators' writes in the shape tests read best: [`Store::finish_run`] with
/// one [`Transition`], and [`RunAdmin::update_run`](crate::store::RunAdmin::update_run) through
/// [`Store::admin`]. For any store, `Arc<dyn Store>` included.
///
/// [`Store::finish_run`]: crate::store::Store::finish_run
/// [`Store::admin`]: crate::store::Store::admin
/// [`Transition`]: crate::store::Transition
#[async_trait::async_trait]
pub trait Ends {
    /// Completes the run if `fence` holds; whether it landed.
    async fn complete_run(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
    ) -> Result<bool>;
    /// Completes the run and claims for `next` in the same write; whether it landed, and the
    /// runs claimed.
    async fn complete_run_and_claim(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(bool, Vec<Run>)>;
    /// Fails the run if `fence` holds; whether it landed.
    async fn fail_run(&self, fence: &Fence, error: &str, now: Timestamp) -> Result<bool>;
    /// The operators' unfenced patch (panics when the store has no [`Store::admin`]).
    ///
    /// [`Store::admin`]: crate::store::Store::admin
    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool>;
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> Ends for S {
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
    ) -> Result<(bool, Vec<Run>)> {
        let finished = self
            .finish_run(fence, Transition::Complete { output }, now, Some(next))
            .await?;
        Ok((finished.landed, finished.claimed))
    }

    async fn fail_run(&self, fence: &Fence, error: &str, now: Timestamp) -> Result<bool> {
        let transition = Transition::Fail {
            error: error.to_owned(),
        };
        Ok(self.finish_run(fence, transition, now, None).await?.landed)
    }

    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool> {
        let admin = self
            .admin()
            .expect("this test fabricates states through `Store::admin`");
        admin.update_run(id, patch, now).await
    }
}

/// One `#[tokio::test]` per test of [`contract`], each on a fresh store from `$fresh` (an async
/// function or closure returning `(guard, Arc<dyn Store>)`; the guard lives as long as the
/// test). Attributes after it go on every test (e.g. an `ignore` without a database):
/// `store_contract_tests!(fresh, #[ignore = "no database"])`.
#[macro_export]
macro_rules! store_contract_tests {
    ($fresh:expr $(, #[$attr:meta])* $(,)?) => {
        $crate::__store_contract_tests!(
            [$(#[$attr])*] $fresh;
            enqueue_and_get_run_round_trip,
            enqueue_resolves_concurrency_keys,
            enqueue_many_is_all_or_nothing,
            claim_leases_the_oldest_runs,
            an_expired_lease_is_reclaimed,
            a_key_held_by_an_unexpired_lease_is_skipped,
            renew_lease_is_fenced,
            release_lease_gives_a_claimed_run_back,
            persist_step_is_fenced_and_advances_counters,
            complete_run_is_fenced,
            complete_run_and_claim_hands_the_slot_to_the_oldest_claimable_run,
            complete_run_and_claim_hands_the_freed_key_to_the_run_waiting_for_it,
            enqueue_and_claim_claims_only_after_creating_a_run,
            fail_run_is_fenced,
            cancel_run_only_cancels_active_runs,
            delete_run_only_deletes_terminal_runs,
            append_log_is_fenced_only_when_asked,
            update_progress_is_fenced,
            release_expired_leases_resets_or_fails,
            release_expired_leases_of_one_key_keeps_one_pending_and_drops_failed_steps,
            purge_runs_cascades,
            update_run_patches_fields,
            get_runs_filters_and_pages,
            group_commit_handles_many_concurrent_enqueues,
            concurrent_claims_have_exactly_one_winner,
            concurrent_claims_respect_concurrency_keys,
            complete_run_keeps_steps_when_preserving,
            fail_run_keeps_steps_when_preserving,
            cancel_run_keeps_steps_when_preserving,
            release_expired_leases_keeps_steps_when_preserving
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_contract_tests {
    ($attrs:tt $fresh:expr; $($name:ident),* $(,)?) => {
        $( $crate::__store_contract_test!($attrs $fresh; $name); )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_contract_test {
    ([$(#[$attr:meta])*] $fresh:expr; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $name() {
            let (_guard, store) = ($fresh)().await;
            $crate::testing::contract::$name(store).await;
        }
    };
}
