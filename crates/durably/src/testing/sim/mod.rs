//! Deterministic simulation of the engine (feature `testing`): the pieces that make a run of
//! several workers on one store repeat exactly for a seed, and the faults injected into it.
//!
//! A simulation runs everything on one thread: a current-thread tokio runtime started with
//! paused time (`tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true)`),
//! the wall clock following tokio's ([`use_virtual_wall_clock`](crate::testing::use_virtual_wall_clock)),
//! ids from a seeded generator ([`use_seeded_ids`](crate::testing::use_seeded_ids)), fixed
//! worker ids ([`Durably::start_as`](crate::Durably::start_as)), a [`MemoryStore`](crate::testing::MemoryStore)
//! shared by the workers, and between each worker and the store a [`FaultyStore`] drawing its
//! faults from a seed. The engine's own choices (which branch of a `select!` goes first) do not
//! draw from a random source, so the same seed gives the same calls, faults and outcomes.
//!
//! durably's own simulation (`crates/durably/tests/simulation/`, see `docs/testing.md`) drives
//! thousands of seeded schedules per test run and checks the engine's invariants after each.

mod faulty;

pub use faulty::{FAULT_MARKER, FaultCounts, FaultRates, FaultyStore};
