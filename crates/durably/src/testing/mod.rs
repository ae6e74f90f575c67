//! Test suites for `Store` implementations, to run from outside the crate (feature `testing`).
//!
//! A new backend is "implement [`Store`](crate::Store), call the suite": in a test file of its
//! crate, give [`store_contract_tests!`](crate::store_contract_tests) a function that opens a
//! fresh, migrated store with default options (so its runs drop their steps when they end; the
//! suite checks the other policy through [`Store::with_step_policy`](crate::Store::with_step_policy),
//! and fabricates states through [`Store::admin`](crate::Store::admin)) (and whatever must live as long as the test, such as a temporary
//! directory), and it writes one `#[tokio::test]` per contract test:
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
