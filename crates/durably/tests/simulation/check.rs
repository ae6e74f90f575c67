//! The invariants, checked on one schedule's trace and final state.

use std::collections::{BTreeMap, BTreeSet};

use durably::testing::sim::FAULT_MARKER;
use durably::{RunStatus, WaitOutcome, WaitStatus};

use super::driver::{
    DELIBERATE, Outcome, decode, expected_output, expected_wait_output, fails_on_purpose,
};
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
        let fails = fails_on_purpose(input, plan.steps);
        let waits: Vec<_> = outcome
            .waits
            .iter()
            .filter(|wait| wait.run_id == run.id)
            .collect();
        let waiting_run = decode(input).1.is_some();
        if !waiting_run && !waits.is_empty() {
            found.push(format!(
                "run {} never waits, yet has waits {waits:?}",
                run.id
            ));
        }
        if waits.len() > 1 {
            found.push(format!("run {} prepared one wait, has {waits:?}", run.id));
        }
        // A run that ended has no pending wait (cancelled: cancelled; completed or failed:
        // closed); a waiting run holds no lease.
        if run.status.is_terminal() {
            for wait in waits
                .iter()
                .filter(|wait| wait.status == WaitStatus::Pending)
            {
                found.push(format!(
                    "run {} is {} with a pending wait {}",
                    run.id, run.status, wait.id
                ));
            }
        }
        if run.status == RunStatus::Cancelled {
            for wait in waits
                .iter()
                .filter(|wait| wait.status == WaitStatus::Closed)
            {
                found.push(format!(
                    "run {} was cancelled, its wait {} closed",
                    run.id, wait.id
                ));
            }
        }
        if matches!(run.status, RunStatus::Completed | RunStatus::Failed) {
            for wait in waits
                .iter()
                .filter(|wait| wait.status == WaitStatus::Cancelled)
            {
                found.push(format!(
                    "run {} is {}, its wait {} cancelled",
                    run.id, run.status, wait.id
                ));
            }
        }
        match run.status {
            RunStatus::Completed if waiting_run => {
                // It returned from its wait: with the accepted signal's payload or a timeout.
                let payload = match waits.first() {
                    Some(wait) if wait.status == WaitStatus::Resolved => match wait.outcome {
                        Some(WaitOutcome::Timeout) => Ok(None),
                        _ => Ok(wait.payload.as_ref().and_then(|payload| payload.as_u64())),
                    },
                    wait => Err(format!("its wait is {wait:?}")),
                };
                match payload {
                    Ok(payload) => {
                        let expected = expected_wait_output(input, payload);
                        if fails || run.output != Some(serde_json::json!(expected)) {
                            found.push(format!(
                                "run {} of input {input} completed with {:?}, expected {expected}                                  (wait payload {payload:?}, fails on purpose: {fails})",
                                run.id, run.output
                            ));
                        }
                    }
                    Err(what) => found.push(format!(
                        "run {} completed after a wait that was not resolved: {what}",
                        run.id
                    )),
                }
            }
            RunStatus::Waiting => {
                // Legitimately: on its pending wait without a deadline, holding no lease.
                let on = waits
                    .iter()
                    .find(|wait| Some(&wait.id) == run.waiting_on_wait_id.as_ref());
                let legitimate = on.is_some_and(|wait| {
                    wait.status == WaitStatus::Pending && wait.deadline_at.is_none()
                });
                if !legitimate || run.lease_owner.is_some() || run.lease_expires_at.is_some() {
                    found.push(format!(
                        "run {} ended waiting (lease {:?} until {:?}) on {on:?}",
                        run.id, run.lease_owner, run.lease_expires_at
                    ));
                }
            }
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

    found.extend(wait_violations(outcome));

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

/// The signals and wait results against the waits as they ended: at most one signal accepted
/// per wait (and it is the stored one), a duplicate only of the stored signal, another signal
/// refused once the wait was resolved, an expiry only of a wait that timed out, and every
/// `wait_for` that returned gave the stored result.
fn wait_violations(outcome: &Outcome) -> Vec<String> {
    let mut found = Vec::new();
    let waits: BTreeMap<&str, &durably::DurableWait> = outcome
        .waits
        .iter()
        .map(|wait| (wait.id.as_str(), wait))
        .collect();
    let mut accepted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    // Waits a signal was answered accepted or duplicate for, so far.
    let mut answered_resolved: BTreeSet<&str> = BTreeSet::new();
    for event in &outcome.trace {
        match event {
            Event::SignalLanded {
                wait,
                signal_id,
                duplicate: false,
                ..
            } => {
                accepted.entry(wait).or_default().insert(signal_id);
            }
            Event::SignalAnswered {
                wait,
                signal_id,
                payload,
                answer,
                at,
                ..
            } => {
                let Some(stored) = waits.get(wait.as_str()) else {
                    found.push(format!(
                        "signal {signal_id} answered for an unknown wait {wait}"
                    ));
                    continue;
                };
                let is_stored = stored.status == WaitStatus::Resolved
                    && stored.outcome == Some(WaitOutcome::Signal)
                    && stored.signal_id.as_deref() == Some(signal_id.as_str())
                    && stored.payload == Some(serde_json::json!(payload));
                let fine = match answer.as_str() {
                    "accepted" | "duplicate" => is_stored,
                    "expired" => stored.outcome == Some(WaitOutcome::Timeout),
                    "conflict" => !is_stored,
                    "fault" => true,
                    _ => false,
                };
                // Once a signal was answered accepted, another signal id is refused.
                let refused_other = !answered_resolved.contains(wait.as_str())
                    || is_stored
                    || matches!(answer.as_str(), "conflict" | "fault");
                if !fine || !refused_other {
                    found.push(format!(
                        "signal {signal_id} (payload {payload}) of wait {wait} answered {answer} \
                         at {at} ms; the wait ended {stored:?}"
                    ));
                }
                if matches!(answer.as_str(), "accepted" | "duplicate") {
                    answered_resolved.insert(wait);
                }
            }
            Event::WaitReturned {
                run,
                wait,
                payload,
                at,
                ..
            } => {
                let result = waits.get(wait.as_str()).and_then(|stored| {
                    (stored.status == WaitStatus::Resolved).then(|| match stored.outcome {
                        Some(WaitOutcome::Timeout) => None,
                        _ => stored.payload.as_ref().and_then(|payload| payload.as_u64()),
                    })
                });
                if result != Some(*payload) {
                    found.push(format!(
                        "wait {wait} of run {run} returned {payload:?} to the job at {at} ms; the \
                         wait ended {:?}",
                        waits.get(wait.as_str())
                    ));
                }
            }
            _ => {}
        }
    }
    for (wait, ids) in &accepted {
        let stored = waits
            .get(wait)
            .and_then(|stored| stored.signal_id.as_deref());
        if ids.len() > 1 || ids.iter().any(|id| Some(*id) != stored) {
            found.push(format!(
                "wait {wait} accepted signals {ids:?}; it stores {stored:?}"
            ));
        }
    }
    found
}
