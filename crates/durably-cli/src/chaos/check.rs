//! The invariants of `durably chaos`, checked at the end from three sources:
//!
//! - the execution log: one `exec` line per step execution, appended and fsynced by the worker
//!   *before* the step's work, and one `done` line after `step.run` returned (the step is then
//!   persisted, by this execution or an earlier one);
//! - what the harness saw in the database during the chaos ([`Observed`]): before every signal
//!   (and while the runs drain) it reads every run's completed step count and status, then
//!   notes the log's length, so a line at or beyond that offset was written after the read;
//! - the runs' final state.
//!
//! Offsets order everything: the workers append to one file with `O_APPEND`, so a line's
//! offset orders it against every other line and every offset the harness noted.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// A line of the execution log: `<kind> <incarnation> <pid> <run id> <step> <unix ms>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Byte offset of the line's start in the log.
    pub offset: u64,
    /// Byte offset just after the line.
    pub end: u64,
    /// `exec` (the step's function starts) or `done` (`step.run` returned).
    pub exec: bool,
    /// The worker process's incarnation (0, 1, 2, … in spawn order).
    pub incarnation: u64,
    /// Its process id.
    pub pid: u32,
    /// The run.
    pub run: String,
    /// The step, 1-based.
    pub step: u32,
}

/// The log's lines, and the lines that do not parse (each a violation).
pub fn parse(text: &str) -> (Vec<Line>, Vec<String>) {
    let (mut lines, mut malformed) = (Vec::new(), Vec::new());
    let mut offset = 0u64;
    for raw in text.split_inclusive('\n') {
        let end = offset + raw.len() as u64;
        let fields: Vec<&str> = raw.trim_end_matches('\n').split(' ').collect();
        let parsed = match fields.as_slice() {
            [kind @ ("exec" | "done"), incarnation, pid, run, step, _ms] if raw.ends_with('\n') => {
                match (incarnation.parse(), pid.parse(), step.parse()) {
                    (Ok(incarnation), Ok(pid), Ok(step)) => Some(Line {
                        offset,
                        end,
                        exec: *kind == "exec",
                        incarnation,
                        pid,
                        run: (*run).to_owned(),
                        step,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        match parsed {
            Some(line) => lines.push(line),
            None => malformed.push(format!("at offset {offset}: {raw:?}")),
        }
        offset = end;
    }
    (lines, malformed)
}

/// What the harness read in the database during the chaos, by log offset.
#[derive(Default)]
pub struct Observed {
    /// Per run: for step k (index k − 1), the smallest log offset at which the step was seen
    /// persisted.
    persisted: HashMap<String, Vec<Option<u64>>>,
    /// Per run: the smallest log offset at which the run was seen completed.
    completed: HashMap<String, u64>,
}

impl Observed {
    /// Records one read of a run, made before the log was `offset` bytes long: its first
    /// `completed_steps` steps are persisted (the job runs its steps in order), all `steps` of
    /// them once the run is completed.
    pub fn record(
        &mut self,
        run: &str,
        completed_steps: i64,
        completed: bool,
        steps: u32,
        offset: u64,
    ) {
        let known = if completed {
            steps as usize
        } else {
            completed_steps.clamp(0, i64::from(steps)) as usize
        };
        let slots = self
            .persisted
            .entry(run.to_owned())
            .or_insert_with(|| vec![None; steps as usize]);
        for slot in slots.iter_mut().take(known) {
            slot.get_or_insert(offset);
        }
        if completed {
            self.completed.entry(run.to_owned()).or_insert(offset);
        }
    }
}

/// A signal the harness sent to a worker process.
#[derive(Clone, Debug)]
pub struct Signal {
    /// The target's incarnation.
    pub incarnation: u64,
    /// The log's length just before the signal was sent (after the harness read the runs).
    pub offset: u64,
    /// The log's length just after it was sent (for a kill: after the process was reaped).
    pub after: u64,
    /// `true` for SIGKILL; `false` for SIGSTOP (continued later).
    pub kill: bool,
    /// For a stop: how long the process stayed stopped, in ms (SIGSTOP to SIGCONT).
    pub stopped_ms: u64,
    /// For a stop: whether it may have outlasted the lease (it lasted at least the lease minus
    /// the renewal interval minus a margin; a shorter stop cannot cost a lease).
    pub long: bool,
}

/// A run as it ended.
pub struct FinalRun {
    /// Its id.
    pub id: String,
    /// Its status (`completed` expected).
    pub status: String,
    /// Its output.
    pub output: Option<Value>,
    /// The output its input determines.
    pub expected: u64,
    /// Its completed step count.
    pub completed_steps: i64,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// The shape of the chaos.
pub struct Params {
    /// Steps per run.
    pub steps: u32,
    /// Worker processes at once.
    pub workers: usize,
    /// Runs each worker executes at once.
    pub concurrency: usize,
}

/// The checker's findings.
#[derive(Debug, Default)]
pub struct Report {
    /// `exec` lines.
    pub step_executions: u64,
    /// Executions beyond the first of each step.
    pub re_executions: u64,
    /// The bound `re_executions` must stay within:
    /// kills × concurrency + long stops × workers × concurrency.
    pub re_execution_bound: u64,
    /// Re-executions whose previous execution was neither followed by a kill of its process
    /// nor overlapped by a long stop of any process (a lease lost for another reason, e.g. a
    /// starved machine). Reported, not a violation: the bound is.
    pub unexplained_re_executions: u64,
    /// One sentence per unexplained re-execution.
    pub unexplained: Vec<String>,
    /// Steps whose execution was persisted and that executed again.
    pub persisted_re_executions: u64,
    /// Every broken invariant, one sentence each.
    pub violations: Vec<String>,
}

fn describe(line: &Line) -> String {
    let kind = if line.exec { "exec" } else { "done" };
    format!(
        "{kind} by incarnation {} (pid {}) at offset {}",
        line.incarnation, line.pid, line.offset
    )
}

/// Checks every invariant; see the module documentation.
pub fn check(
    lines: &[Line],
    malformed: &[String],
    observed: &Observed,
    signals: &[Signal],
    runs: &[FinalRun],
    params: &Params,
) -> Report {
    let mut report = Report::default();
    let violations = &mut report.violations;
    for line in malformed {
        violations.push(format!("malformed log line {line}"));
    }

    // 1. Every run completed with the output its input determines.
    let known: HashMap<&str, &FinalRun> = runs.iter().map(|run| (run.id.as_str(), run)).collect();
    for run in runs {
        if run.status != "completed" {
            violations.push(format!(
                "run {} ended {} (error: {}), not completed",
                run.id,
                run.status,
                run.error.as_deref().unwrap_or("none")
            ));
        } else if run.output != Some(Value::from(run.expected)) {
            violations.push(format!(
                "run {} completed with output {:?}, expected {}",
                run.id, run.output, run.expected
            ));
        }
        if run.status == "completed" && run.completed_steps != i64::from(params.steps) {
            violations.push(format!(
                "run {} completed with {} completed steps, expected {}",
                run.id, run.completed_steps, params.steps
            ));
        }
    }

    // The lines of each step, in log order.
    let mut by_step: BTreeMap<(&str, u32), Vec<&Line>> = BTreeMap::new();
    for line in lines {
        if !known.contains_key(line.run.as_str()) || line.step == 0 || line.step > params.steps {
            violations.push(format!(
                "log line for an unknown run or step: run {} step {} ({})",
                line.run,
                line.step,
                describe(line)
            ));
            continue;
        }
        by_step
            .entry((line.run.as_str(), line.step))
            .or_default()
            .push(line);
    }

    // 2. The log holds every step of every completed run: an execution, then a `done`.
    for run in runs.iter().filter(|run| run.status == "completed") {
        for step in 1..=params.steps {
            let lines = by_step.get(&(run.id.as_str(), step));
            let execs = lines.map_or(0, |l| l.iter().filter(|l| l.exec).count());
            let dones = lines.map_or(0, |l| l.iter().filter(|l| !l.exec).count());
            if execs == 0 || dones == 0 {
                violations.push(format!(
                    "run {} step {step}: {execs} executions and {dones} `done` lines in the log \
                     of a completed run",
                    run.id
                ));
            }
        }
    }

    for (&(run, step), lines) in &by_step {
        let execs: Vec<&Line> = lines.iter().copied().filter(|l| l.exec).collect();
        report.step_executions += execs.len() as u64;
        report.re_executions += execs.len().saturating_sub(1) as u64;

        // 3. A `done` line follows an execution of its step (a result comes from somewhere).
        if let Some(done) = lines.iter().find(|l| !l.exec)
            && !execs.iter().any(|e| e.offset < done.offset)
        {
            violations.push(format!(
                "run {run} step {step}: `done` ({}) before any execution of the step",
                describe(done)
            ));
        }

        // 4. A step known persisted never executes again: not after a `done` line of it, not
        //    after the harness saw it persisted (or its run completed) in the database.
        let done_at = lines.iter().find(|l| !l.exec).map(|l| (l.end, describe(l)));
        let seen_at = observed
            .persisted
            .get(run)
            .and_then(|slots| slots.get(step as usize - 1).copied().flatten())
            .map(|offset| (offset, "seen persisted in the database".to_owned()));
        let witness = match (done_at, seen_at) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        if let Some((from, how)) = witness {
            for exec in execs.iter().filter(|e| e.offset >= from) {
                report.persisted_re_executions += 1;
                let after_completion = observed
                    .completed
                    .get(run)
                    .is_some_and(|&completed| exec.offset >= completed);
                violations.push(format!(
                    "run {run} step {step} executed again ({}) after it was persisted ({how}; known from \
                     log offset {from}){}",
                    describe(exec),
                    if after_completion {
                        ", and after the run was seen completed"
                    } else {
                        ""
                    }
                ));
            }
        }

        // 5. Each re-execution should follow a kill of the process that ran the previous
        //    execution, or a stop long enough to cost a lease.
        for pair in execs.windows(2) {
            let (previous, again) = (pair[0], pair[1]);
            let explained = signals.iter().any(|s| {
                s.after > previous.offset
                    && s.offset <= again.offset
                    && ((s.kill && s.incarnation == previous.incarnation) || (!s.kill && s.long))
            });
            if !explained {
                report.unexplained_re_executions += 1;
                report.unexplained.push(format!(
                    "run {run} step {step}: {} then {}",
                    describe(previous),
                    describe(again)
                ));
            }
        }
    }

    // 6. Re-executions stay within what the kills and long stops can cause: a killed process
    //    had at most `concurrency` steps in flight; a stopped process may hold a lock every
    //    other worker waits for (SQLite's write lock, PostgreSQL row locks), so a long stop can
    //    cost every worker's leases.
    let kills = signals.iter().filter(|s| s.kill).count() as u64;
    let long_stops = signals.iter().filter(|s| !s.kill && s.long).count() as u64;
    let concurrency = params.concurrency as u64;
    report.re_execution_bound =
        kills * concurrency + long_stops * params.workers as u64 * concurrency;
    if report.re_executions > report.re_execution_bound {
        violations.push(format!(
            "{} re-executions exceed the bound {} ({kills} kills × concurrency {concurrency} + \
             {long_stops} long stops × {} workers × concurrency {concurrency})",
            report.re_executions, report.re_execution_bound, params.workers
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, expected: u64) -> FinalRun {
        FinalRun {
            id: id.to_owned(),
            status: "completed".to_owned(),
            output: Some(Value::from(expected)),
            expected,
            completed_steps: 2,
            error: None,
        }
    }

    fn params() -> Params {
        Params {
            steps: 2,
            workers: 2,
            concurrency: 1,
        }
    }

    fn kill(incarnation: u64, offset: u64) -> Signal {
        Signal {
            incarnation,
            offset,
            after: offset,
            kill: true,
            stopped_ms: 0,
            long: false,
        }
    }

    fn text(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn a_clean_log_passes() {
        let log = text(&[
            "exec 0 10 r1 1 0",
            "done 0 10 r1 1 0",
            "exec 0 10 r1 2 0",
            "done 0 10 r1 2 0",
        ]);
        let (lines, malformed) = parse(&log);
        assert!(malformed.is_empty());
        let report = check(
            &lines,
            &malformed,
            &Observed::default(),
            &[],
            &[run("r1", 3)],
            &params(),
        );
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!((report.step_executions, report.re_executions), (2, 0));
    }

    #[test]
    fn an_in_flight_step_may_run_again_after_a_kill() {
        let log = text(&[
            "exec 0 10 r1 1 0",
            "done 0 10 r1 1 0",
            "exec 0 10 r1 2 0",
            "exec 1 11 r1 2 0",
            "done 1 11 r1 1 0",
            "done 1 11 r1 2 0",
        ]);
        let (lines, _) = parse(&log);
        let signals = [kill(0, lines[3].offset)];
        let report = check(
            &lines,
            &[],
            &Observed::default(),
            &signals,
            &[run("r1", 3)],
            &params(),
        );
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(
            (report.re_executions, report.unexplained_re_executions),
            (1, 0)
        );
    }

    #[test]
    fn a_persisted_step_that_runs_again_is_a_violation() {
        // Step 1 was `done`; executing it again breaks the invariant whatever the signals.
        let log = text(&[
            "exec 0 10 r1 1 0",
            "done 0 10 r1 1 0",
            "exec 1 11 r1 1 0",
            "done 1 11 r1 1 0",
            "exec 1 11 r1 2 0",
            "done 1 11 r1 2 0",
        ]);
        let (lines, _) = parse(&log);
        let signals = [kill(0, lines[2].offset)];
        let report = check(
            &lines,
            &[],
            &Observed::default(),
            &signals,
            &[run("r1", 3)],
            &params(),
        );
        assert_eq!(report.persisted_re_executions, 1);
        assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    }

    #[test]
    fn a_step_seen_persisted_in_the_database_must_not_run_again() {
        // The worker that persisted step 1 was killed before writing its `done` line; the
        // harness had seen the step persisted (offset of the second line).
        let log = text(&["exec 0 10 r1 1 0", "exec 1 11 r1 1 0"]);
        let (lines, _) = parse(&log);
        let mut observed = Observed::default();
        observed.record("r1", 1, false, 2, lines[1].offset);
        let mut pending = run("r1", 3);
        pending.status = "leased".to_owned();
        let report = check(&lines, &[], &observed, &[], &[pending], &params());
        assert_eq!(report.persisted_re_executions, 1);
        assert!(report.violations.iter().any(|v| v.contains("database")));
    }

    #[test]
    fn wrong_outputs_missing_lines_and_the_bound_are_violations() {
        let log = text(&[
            "exec 0 10 r1 1 0",
            "exec 1 11 r1 1 0",
            "exec 2 12 r1 1 0",
            "done 2 12 r1 1 0",
            "bad line",
        ]);
        let (lines, malformed) = parse(&log);
        assert_eq!(malformed.len(), 1);
        let mut wrong = run("r1", 3);
        wrong.output = Some(Value::from(4));
        let report = check(
            &lines,
            &malformed,
            &Observed::default(),
            &[kill(0, lines[1].offset)],
            &[wrong],
            &params(),
        );
        let text = report.violations.join("\n");
        assert!(text.contains("malformed"), "{text}");
        assert!(text.contains("expected 3"), "{text}");
        assert!(text.contains("step 2: 0 executions"), "{text}");
        assert!(text.contains("exceed the bound 1"), "{text}");
        assert_eq!(report.unexplained_re_executions, 1);
    }
}
