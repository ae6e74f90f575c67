//! The invariants, checked on one schedule's trace and final state.

use std::collections::{BTreeMap, BTreeSet};

use durably::RunStatus;
use durably::testing::sim::FAULT_MARKER;

use super::driver::{DELIBERATE, FAIL_EVERY, Outcome, expected_output};
use super::probe::Event;

/// The stored error of a run failed because its job+key already had a pending run when its
/// lease expired (the pending-per-key rule).
const LEASE_EXPIRED_PENDING_EXISTS: &str = "Lease expired; pending run already exists";

/// A worker's lease on a run (one generation), as its engine knows it.
#[derive(Debug)]
struct Belief {
    worker: usize,
    generation: i64,
    /// When the claim's reply reached the engine.
    from: i64,
    /// Send time of the claim or of the last successful renewal.
    granted: i64,
    lease: i64,
    /// When the engine let the run go (its end sent, or the run given back).
    let_go: Option<i64>,
    /// When the run was cancelled: no lease holds from then on (the engine learns it later;
    /// a step may still start before it does, within the ownership freshness window).
    cancelled: Option<i64>,
}

impl Belief {
    /// Until when the engine may act on it.
    fn until(&self) -> i64 {
        let expires = self.granted + self.lease;
        self.let_go.map_or(expires, |at| at.min(expires))
    }

    fn margin(&self) -> i64 {
        (self.lease / 5).min(5_000)
    }
}

/// Every invariant violated by `outcome`, in words.
pub fn violations(outcome: &Outcome) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let plan = &outcome.plan;

    // Seen while it ran (fences).
    for event in &outcome.trace {
        if let Event::Violation(what) = event {
            found.push(what.clone());
        }
    }

    // Every run ends terminal, with the right output, failed or cancelled only for a cause.
    for run in &outcome.stuck {
        found.push(format!("run {run} is not terminal after the bound"));
    }
    let cancels: BTreeSet<&str> = outcome
        .trace
        .iter()
        .filter_map(|event| match event {
            Event::CancelRequested { run, .. } => Some(run.as_str()),
            _ => None,
        })
        .collect();
    for run in &outcome.runs {
        let input = run.input.as_u64().unwrap_or_default();
        let fails = input.is_multiple_of(FAIL_EVERY) && plan.steps >= 2;
        match run.status {
            RunStatus::Completed => {
                let expected = expected_output(input, plan.steps);
                if fails || run.output != Some(serde_json::json!(expected)) {
                    found.push(format!(
                        "run {} of input {input} completed with {:?}, expected {}",
                        run.id,
                        run.output,
                        if fails {
                            "a failure".to_owned()
                        } else {
                            expected.to_string()
                        }
                    ));
                }
            }
            RunStatus::Failed => {
                let error = run.error.as_deref().unwrap_or_default();
                let caused = error.contains(FAULT_MARKER)
                    || (fails && error == DELIBERATE)
                    || (error == LEASE_EXPIRED_PENDING_EXISTS && run.concurrency_key.is_some());
                if !caused {
                    found.push(format!("run {} failed without a cause: {error:?}", run.id));
                }
            }
            RunStatus::Cancelled => {
                if !cancels.contains(run.id.as_str()) {
                    found.push(format!("run {} was cancelled, but nobody asked", run.id));
                }
            }
            status => found.push(format!("run {} ended {status}", run.id)),
        }
    }

    // Leases as the engines knew them; steps against commits and leases.
    let mut beliefs: BTreeMap<&str, Vec<Belief>> = BTreeMap::new();
    let mut committed: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut cancelled: BTreeMap<&str, i64> = BTreeMap::new();
    for event in &outcome.trace {
        match event {
            Event::Claimed {
                worker,
                run,
                generation,
                sent,
                lease,
                at,
            } => beliefs.entry(run).or_default().push(Belief {
                worker: *worker,
                generation: *generation,
                from: *at,
                granted: *sent,
                lease: *lease,
                let_go: None,
                cancelled: None,
            }),
            Event::CancelLanded { run, at } => {
                cancelled.entry(run.as_str()).or_insert(*at);
            }
            Event::Renewed {
                worker,
                run,
                generation,
                sent,
                ..
            } => {
                if let Some(belief) = find(&mut beliefs, run, *worker, Some(*generation)) {
                    belief.granted = belief.granted.max(*sent);
                }
            }
            Event::LetGo {
                worker,
                run,
                generation,
                at,
            } => {
                if let Some(belief) = find(&mut beliefs, run, *worker, Some(*generation)) {
                    belief.let_go = Some(belief.let_go.map_or(*at, |was| was.min(*at)));
                }
            }
            Event::StepCommitted { run, step, .. } => {
                committed.insert((run, step));
            }
            Event::StepStarted {
                worker,
                run,
                step,
                at,
            } => {
                if committed.contains(&(run.as_str(), step.as_str())) {
                    found.push(format!(
                        "step {step} of run {run} started again on worker {worker} at {at} ms \
                         after it was committed"
                    ));
                }
                // The closure does not know its generation: one worker may hold two of one
                // run for a moment (a claim answered after the worker claimed the run again;
                // the stale one stops at its first lease check). One must be valid.
                let held: Vec<&Belief> = beliefs
                    .get(run.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|belief| belief.worker == *worker)
                    .collect();
                let valid = held
                    .iter()
                    .any(|belief| *at >= belief.from && *at + belief.margin() < belief.until());
                if !valid {
                    found.push(format!(
                        "step {step} of run {run} started on worker {worker} at {at} ms without \
                         a provably valid lease: {held:?}"
                    ));
                }
            }
            _ => {}
        }
    }

    // A cancel ends every lease on the run, including one whose claim is answered later.
    for (run, at) in &cancelled {
        for belief in beliefs.get_mut(run).into_iter().flatten() {
            belief.cancelled = Some(*at);
        }
    }
    // No two workers hold a valid lease on one run at the same instant, and no two runs of one
    // concurrency key are held at the same instant.
    for (run, held) in &beliefs {
        for (i, a) in held.iter().enumerate() {
            for b in &held[i + 1..] {
                if overlap(a, b) {
                    found.push(format!("run {run} held at once: {a:?} and {b:?}"));
                }
            }
        }
    }
    let mut by_key: BTreeMap<&str, Vec<(&str, &Belief)>> = BTreeMap::new();
    for run in &outcome.runs {
        if let (Some(key), Some(held)) =
            (run.concurrency_key.as_deref(), beliefs.get(run.id.as_str()))
        {
            by_key
                .entry(key)
                .or_default()
                .extend(held.iter().map(|belief| (run.id.as_str(), belief)));
        }
    }
    for (key, held) in &by_key {
        for (i, (run_a, a)) in held.iter().enumerate() {
            for (run_b, b) in &held[i + 1..] {
                if run_a != run_b && overlap(a, b) {
                    found.push(format!(
                        "runs {run_a} and {run_b} of key {key} held at once: {a:?} and {b:?}"
                    ));
                }
            }
        }
    }
    found
}

fn overlap(a: &Belief, b: &Belief) -> bool {
    let until = |belief: &Belief| {
        belief
            .cancelled
            .map_or(belief.until(), |at| at.min(belief.until()))
    };
    let (a_until, b_until) = (until(a), until(b));
    // An empty belief (a claim answered after its lease ran out) holds nothing.
    a.from < a_until && b.from < b_until && a.from < b_until && b.from < a_until
}

/// The belief of `worker` on `run` (of `generation`, or its latest).
fn find<'a>(
    beliefs: &'a mut BTreeMap<&str, Vec<Belief>>,
    run: &str,
    worker: usize,
    generation: Option<i64>,
) -> Option<&'a mut Belief> {
    beliefs.get_mut(run)?.iter_mut().rev().find(|belief| {
        belief.worker == worker
            && generation.is_none_or(|generation| belief.generation == generation)
    })
}
