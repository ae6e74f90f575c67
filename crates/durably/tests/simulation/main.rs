//! Deterministic simulation of the engine (issue 19 item 7): thousands of seeded schedules,
//! each with 2-4 workers sharing a `MemoryStore` through fault-injecting stores, on one thread
//! in virtual time, checked against the engine's invariants. A seed replays exactly:
//!
//! ```text
//! DURABLY_SIM_SEED=<seed> cargo test -p durably --features testing --test simulation -- --nocapture
//! ```
//!
//! `DURABLY_SIM_SEEDS=<n>` runs n schedules (default below), `DURABLY_SIM_FIRST=<seed>` starts
//! them elsewhere than at seed 0. See `docs/testing.md`.

mod check;
mod driver;
mod probe;

use std::time::{Duration, Instant};

use durably::testing::sim::FaultCounts;
use durably::{RunStatus, WaitOutcome, WaitStatus};

use driver::{Outcome, simulate};

/// Schedules per `cargo test` by default: about 20-30 s in a debug build on 2 cores.
const DEFAULT_SEEDS: u64 = 3_000;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {text:?}")),
    )
}

fn replay_command(seed: u64) -> String {
    format!(
        "DURABLY_SIM_SEED={seed} cargo test -p durably --features testing --test simulation -- --nocapture"
    )
}

/// Runs one seed and returns its outcome and violations.
fn run_seed(seed: u64) -> (Outcome, Vec<String>) {
    let outcome = simulate(seed);
    let violations = check::violations(&outcome);
    (outcome, violations)
}

fn describe(outcome: &Outcome) -> String {
    let mut text = format!(
        "seed {}: {:?}\nsettled after {:?} of virtual time; faults {:?}\nruns:\n",
        outcome.seed, outcome.plan, outcome.settled_after, outcome.faults
    );
    for run in &outcome.runs {
        text.push_str(&format!(
            "  {} input {} key {:?} -> {} gen {} output {:?} error {:?}\n",
            run.id,
            run.input,
            run.concurrency_key,
            run.status,
            run.lease_generation,
            run.output,
            run.error
        ));
    }
    for wait in &outcome.waits {
        text.push_str(&format!(
            "  wait {} of {}: {:?} outcome {:?} payload {:?} signal {:?} deadline {:?}\n",
            wait.id,
            wait.run_id,
            wait.status,
            wait.outcome,
            wait.payload,
            wait.signal_id,
            wait.deadline_at
        ));
    }
    text
}

#[derive(Default)]
struct Totals {
    schedules: u64,
    faults: FaultCounts,
    runs: [u64; 4],
    /// Waits: signalled, timed out, cancelled or closed, still pending; signals sent.
    waits: [u64; 5],
    steps_started: u64,
    takeovers: u64,
    failed: Vec<(u64, Vec<String>)>,
}

impl Totals {
    fn add(&mut self, outcome: &Outcome, violations: Vec<String>) {
        self.schedules += 1;
        self.faults += outcome.faults;
        for run in &outcome.runs {
            match run.status {
                RunStatus::Completed => self.runs[0] += 1,
                RunStatus::Failed => self.runs[1] += 1,
                RunStatus::Waiting => self.runs[3] += 1,
                _ => self.runs[2] += 1,
            }
            self.takeovers += (run.lease_generation - 1).max(0) as u64;
        }
        for wait in &outcome.waits {
            match (wait.status, wait.outcome) {
                (WaitStatus::Resolved, Some(WaitOutcome::Timeout)) => self.waits[1] += 1,
                (WaitStatus::Resolved, _) => self.waits[0] += 1,
                (WaitStatus::Pending, _) => self.waits[3] += 1,
                _ => self.waits[2] += 1,
            }
        }
        self.waits[4] += outcome
            .trace
            .iter()
            .filter(|event| matches!(event, probe::Event::SignalAnswered { .. }))
            .count() as u64;
        self.steps_started += outcome
            .trace
            .iter()
            .filter(|event| matches!(event, probe::Event::StepStarted { .. }))
            .count() as u64;
        if !violations.is_empty() {
            self.failed.push((outcome.seed, violations));
        }
    }
}

#[test]
fn seeded_schedules_keep_every_invariant() {
    if let Some(seed) = env_u64("DURABLY_SIM_SEED") {
        let (outcome, violations) = run_seed(seed);
        println!("{}", describe(&outcome));
        for event in &outcome.trace {
            println!("  {event:?}");
        }
        println!("fingerprint {:016x}", outcome.fingerprint());
        assert!(
            violations.is_empty(),
            "seed {seed} violates:\n{}",
            violations.join("\n")
        );
        return;
    }
    let count = env_u64("DURABLY_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("DURABLY_SIM_FIRST").unwrap_or(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4) as u64;
    let started = Instant::now();
    // Each thread takes every `threads`-th seed; each schedule runs on its own runtime on the
    // thread that took it (its ids and clock are that thread's).
    let parts: Vec<Totals> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|part| {
                scope.spawn(move || {
                    let mut totals = Totals::default();
                    let mut seed = first + part;
                    while seed < first + count {
                        let (outcome, violations) = run_seed(seed);
                        if !violations.is_empty() {
                            eprintln!("{}", describe(&outcome));
                        }
                        totals.add(&outcome, violations);
                        seed += threads;
                    }
                    totals
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a simulation thread panicked"))
            .collect()
    });
    let mut totals = Totals::default();
    for part in parts {
        totals.schedules += part.schedules;
        totals.faults += part.faults;
        for i in 0..4 {
            totals.runs[i] += part.runs[i];
        }
        for i in 0..5 {
            totals.waits[i] += part.waits[i];
        }
        totals.steps_started += part.steps_started;
        totals.takeovers += part.takeovers;
        totals.failed.extend(part.failed);
    }
    let violations: usize = totals.failed.iter().map(|(_, found)| found.len()).sum();
    println!(
        "simulation: {} schedules (seeds {first}..{}) in {:.1?} on {threads} threads; runs \
         completed {}, failed {}, cancelled {}, left waiting {}; waits signalled {}, timed \
         out {}, cancelled or closed {}, pending {}; {} signals sent; {} step executions, {} takeovers; {} calls, \
         faults: {} failed before the store, {} replies lost after a commit, {} delayed, {} \
         frozen; invariant violations: {violations}",
        totals.schedules,
        first + count,
        started.elapsed(),
        totals.runs[0],
        totals.runs[1],
        totals.runs[2],
        totals.runs[3],
        totals.waits[0],
        totals.waits[1],
        totals.waits[2],
        totals.waits[3],
        totals.waits[4],
        totals.steps_started,
        totals.takeovers,
        totals.faults.calls,
        totals.faults.failed_before,
        totals.faults.lost_replies,
        totals.faults.delayed,
        totals.faults.frozen,
    );
    totals.failed.sort_by_key(|(seed, _)| *seed);
    if let Some((seed, found)) = totals.failed.first() {
        panic!(
            "{} of {} schedules violate an invariant (seeds {:?}); the first, seed {seed}:\n{}\n\
             replay it with:\n  {}",
            totals.failed.len(),
            totals.schedules,
            totals
                .failed
                .iter()
                .map(|(seed, _)| *seed)
                .collect::<Vec<_>>(),
            found.join("\n"),
            replay_command(*seed)
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 42, 1_000_003] {
        let (first, second) = (simulate(seed), simulate(seed));
        assert_eq!(first.trace, second.trace, "seed {seed}: the trace differs");
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert!(first.faults.calls > 0 && first.trace.len() > 10);
    }
    assert_ne!(
        simulate(1).fingerprint(),
        simulate(2).fingerprint(),
        "two seeds, one trace: the seed is not used"
    );
}

/// A settled schedule takes little virtual time: the bound is far away.
#[test]
fn schedules_settle_well_within_the_bound() {
    let (outcome, violations) = run_seed(7);
    assert!(violations.is_empty(), "{violations:?}");
    assert!(
        outcome.settled_after < Duration::from_secs(300),
        "{}",
        describe(&outcome)
    );
}

/// The first seed (from 1, at most `bound`) whose schedule shows `scenario`, checking that none
/// of the schedules run on the way violates an invariant. Regression tests name a scenario, not
/// a seed: any change to the engine's store calls reshuffles which seed shows it.
fn first_seed_showing(bound: u64, scenario: impl Fn(&Outcome) -> bool) -> Option<u64> {
    (1..=bound).find(|&seed| {
        let (outcome, violations) = run_seed(seed);
        assert!(
            violations.is_empty(),
            "seed {seed}: {violations:?}\n{}",
            replay_command(seed)
        );
        scenario(&outcome)
    })
}

/// Regression, found by seed 81 when it was written: a worker took over a run with completed
/// steps; its read of the run (held by the network) said leased, then the run was cancelled
/// (its step rows dropped), then the worker read the steps, found none, and ran the first step
/// again. Now a run whose completed steps are fewer than when it was claimed is read again
/// first.
#[test]
fn regression_a_cancel_between_two_reads_does_not_rerun_a_completed_step() {
    let seed = first_seed_showing(2_000, |outcome| {
        outcome.runs.iter().any(|run| {
            run.status == RunStatus::Cancelled
                && run.lease_generation >= 2
                && outcome.trace.iter().any(|event| {
                    matches!(event, probe::Event::StepCommitted { run: id, .. } if *id == run.id)
                })
        })
    });
    assert!(
        seed.is_some(),
        "no schedule takes a run with committed steps over and then cancels it"
    );
}

/// Regression, found by seed 639 when it was written: the lease keeper's renewal was held in
/// the network while a step renewed the lease itself; the held one landed last with its
/// earlier `now` and shortened the lease in the store, while the worker counted from the later
/// send time and believed it held the run when another worker took it over. Renewals of one
/// lease now go one at a time.
#[test]
fn regression_a_held_renewal_does_not_outlive_the_stores_lease() {
    // The scenario: a run taken over by another worker after its first owner committed a step.
    let seed = first_seed_showing(2_000, |outcome| {
        outcome.trace.iter().any(|event| {
            let probe::Event::Claimed {
                worker,
                run,
                generation: 2,
                ..
            } = event
            else {
                return false;
            };
            outcome.trace.iter().any(|other| {
                matches!(other, probe::Event::StepCommitted { worker: first, run: id, .. }
                    if id == run && first != worker)
            })
        })
    });
    assert!(
        seed.is_some(),
        "no schedule takes a run over after its first owner committed a step"
    );
}
