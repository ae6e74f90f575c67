//! Test suites for `Store` implementations, to run from outside the crate (feature `testing`).
//!
//! A new backend is "implement [`Store`], call the suites". Two suites check it:
//!
//! - [`contract`]: the store's own operations, one by one (enqueue, claim, fencing, leases,
//!   transitions, listings, concurrent claimers), through the trait.
//! - [`behaviour`]: the end-to-end guarantees of durably on that store, through the public
//!   [`Durably`](crate::Durably) API: jobs and their steps, replay after a lost worker,
//!   fencing of stale workers, failures, cancellation, idempotency and concurrency keys,
//!   retrigger, delete, purge and retention, listings, serverless processing and several
//!   instances on one store.
//!
//! In a test file of the backend's crate, give [`store_contract_tests!`](crate::store_contract_tests)
//! and [`store_behaviour_tests!`](crate::store_behaviour_tests) a function that opens a fresh,
//! migrated store with default options (so its runs drop their steps when they end; the suites
//! check the other policy through [`Store::with_step_policy`],
//! and fabricate states through [`Store::admin`]), together with whatever
//! must live as long as the test (such as a temporary directory). Each macro writes one
//! `#[tokio::test]` per test of its suite:
//!
//! ```ignore
//! // tests/my_store.rs (dev-dependencies: durably with feature "testing", tokio)
//! async fn fresh() -> ((), std::sync::Arc<dyn durably::Store>) {
//!     let store = std::sync::Arc::new(my_backend::MyStore::connect("…").unwrap());
//!     durably::Store::migrate(&*store).await.unwrap();
//!     ((), store)
//! }
//! durably::store_contract_tests!(fresh);
//! durably::store_behaviour_tests!(fresh);
//! ```
//!
//! The two suites' test names differ, so both macros may be called in one module. The tests'
//! names say what they check; each panics with what went wrong. The behaviour tests start
//! workers with short polling intervals and leases of a few hundred milliseconds, and bound
//! every wait (a hang fails after [`behaviour::LIMIT`]). durably's own backends run the suites
//! in `tests/store_contract.rs` and `tests/store_behaviour.rs`.
//!
//! [`MemoryStore`] is a fourth backend built exactly that way: an in-memory store (no threads,
//! no I/O, no clock of its own) for tests and simulations, passing both suites in
//! `tests/store_memory.rs`.

pub mod behaviour;
pub mod contract;
pub mod memory;
pub mod sim;

pub use memory::MemoryStore;

use serde_json::Value;

use crate::store::{ClaimRequest, Fence, RunPatch, Store, Transition};
use crate::{Result, Run, Timestamp};

/// Makes the wall clock (`Timestamp::now`, which leases and run times come from) of the
/// calling thread follow tokio's clock from `start` on, so that a test on a current-thread
/// runtime with paused time (`start_paused`) moves both clocks together: a 30-second lease
/// expires when tokio's clock has advanced 30 seconds, at once in real time. Only for tests
/// whose tasks all run on this thread (a current-thread runtime and an in-process store such
/// as [`MemoryStore`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use durably::Timestamp;
///
/// durably::testing::use_virtual_wall_clock(Timestamp::from_millis(1_800_000_000_000));
/// tokio::time::sleep(Duration::from_secs(30)).await; // at once: time is paused
/// assert!(Timestamp::now().as_millis() >= 1_800_000_030_000);
/// # }
/// ```
pub fn use_virtual_wall_clock(start: Timestamp) {
    crate::runtime::use_virtual_wall_clock(start.as_millis());
}

/// Makes the ids made on the calling thread (run ids, log and step ids, default worker ids)
/// come from a generator seeded with `seed` instead of the process's random source, so that a
/// simulation started again with the same seed makes the same ids. Calling it again starts the
/// sequence over. Ids stay strictly increasing on this thread; only for tests whose tasks all
/// run on this thread (a current-thread runtime), like [`use_virtual_wall_clock`]. Other
/// threads are unaffected.
///
/// ```
/// durably::testing::use_seeded_ids(42);
/// let first = durably::new_id();
/// durably::testing::use_seeded_ids(42);
/// // The same random part (the first 10 characters are the time).
/// assert_eq!(durably::new_id()[10..], first[10..]);
/// ```
pub fn use_seeded_ids(seed: u64) {
    crate::time::use_seeded_ids(seed);
}

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
        $crate::__store_suite_tests!(
            contract [$(#[$attr])*] $fresh;
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
            release_expired_leases_keeps_steps_when_preserving,
            step_attempts_are_recorded_with_their_outcome_and_fenced,
            step_attempts_explain_interruptions_and_go_only_with_their_run,
            coalesce_modes_follow_the_disposition_table,
            coalesce_active_prefers_pending_then_leased_then_waiting,
            enqueue_many_coalesces_within_the_batch,
            concurrent_coalescing_triggers_create_one_run,
            waits_are_prepared_once_per_name_under_a_live_lease,
            signals_resolve_a_wait_once_per_signal_id,
            a_deadline_wins_over_a_late_signal,
            wait_results_are_fenced_and_only_for_the_run_s_own_waits,
            a_suspended_run_holds_no_lease_and_resumes_once_resolved,
            suspending_on_an_overdue_wait_times_it_out,
            expire_due_waits_times_out_overdue_waits,
            cancel_complete_and_fail_end_pending_waits,
            runs_with_waits_skip_lease_release_and_lose_their_waits_with_them,
            concurrent_signals_have_exactly_one_winner,
            resume_run_puts_a_failed_run_back_to_pending,
            resume_run_refuses_runs_that_are_not_failed,
            resume_run_reopens_the_waits_its_failure_closed,
            claims_take_higher_priority_first_then_the_oldest,
            expired_leases_and_resumable_runs_take_their_turn_by_priority,
            a_priority_never_passes_a_busy_key,
            schedules_keep_their_state_across_definitions,
            fire_schedule_is_a_compare_and_set_with_its_runs,
            a_refused_run_rolls_the_whole_firing_back,
            concurrent_firings_of_a_slot_have_exactly_one_winner,
            children_are_linked_and_listed_per_parent,
            children_settle_when_all_end_or_one_fails,
            children_settle_when_all_complete_or_one_is_cancelled,
            children_of_a_cancelled_parent_are_listed_to_cancel,
            a_stored_trace_context_comes_back_on_claim,
            run_overview_counts_known_runs,
            run_overview_measures_a_delayed_run_from_its_start_time,
            get_runs_filters_by_id_prefix,
            get_runs_filters_by_creation_time
        );
    };
}

/// One `#[tokio::test]` per test of [`behaviour`], each on a fresh store from `$fresh` (as for
/// [`store_contract_tests!`](crate::store_contract_tests): an async function or closure
/// returning `(guard, Arc<dyn Store>)`, then attributes for every test):
/// `store_behaviour_tests!(fresh, #[ignore = "no database"])`.
#[macro_export]
macro_rules! store_behaviour_tests {
    ($fresh:expr $(, #[$attr:meta])* $(,)?) => {
        $crate::__store_suite_tests!(
            behaviour [$(#[$attr])*] $fresh;
            a_job_with_steps_completes_with_its_output,
            a_failing_step_fails_the_run_with_its_error,
            trigger_and_wait_returns_the_output_or_the_failure,
            progress_and_logs_are_stored,
            process_one_and_process_until_idle_drain_the_queue,
            default_options_drop_the_steps_of_an_ended_run,
            a_preserving_view_keeps_the_steps_of_ended_runs,
            an_abandoned_run_is_taken_over_without_rerunning_completed_steps,
            an_expired_lease_resumes_from_the_stored_steps,
            a_stale_worker_s_writes_do_not_land_after_a_takeover,
            a_stale_worker_s_completion_or_failure_does_not_land,
            several_instances_execute_each_run_exactly_once,
            an_idempotency_key_returns_the_same_run,
            runs_sharing_a_concurrency_key_never_overlap,
            coalesce_skip_returns_the_pending_run,
            coalesce_active_reuses_the_running_run,
            cancel_of_a_pending_run_ends_it_without_executing,
            cancel_of_a_running_run_fires_its_token_and_stops_it,
            retrigger_starts_a_new_run_with_the_same_input,
            delete_run_and_purge_runs_remove_ended_runs,
            retention_deletes_ended_runs_older_than_the_period,
            get_runs_filters_by_labels_job_and_status
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_suite_tests {
    ($suite:ident $attrs:tt $fresh:expr; $($name:ident),* $(,)?) => {
        $( $crate::__store_suite_test!($suite $attrs $fresh; $name); )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_suite_test {
    ($suite:ident [$(#[$attr:meta])*] $fresh:expr; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $name() {
            let (_guard, store) = ($fresh)().await;
            $crate::testing::$suite::$name(store).await;
        }
    };
}
