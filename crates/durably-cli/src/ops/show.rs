//! `durably run ID`: one run, its steps, attempts, waits, logs, parent and children.

use super::*;

/// Options of `durably run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The run's id, or a unique part of it: its first or last characters (at least 4), as
    /// git takes a commit; the dashboard's short id (its last 8 characters, `…4K9ZB2QX`) works.
    id: String,
    #[command(flatten)]
    db: DbArgs,
    /// Print `{"run": …, "steps": […], "attempts": […], "waits": […], "logs": […]}` as JSON
    /// instead of text.
    #[arg(long)]
    json: bool,
}

/// `durably run ID`.
pub async fn run(args: RunArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let run = resolve_run(&durably, &args.db, &args.id).await?;
    let steps = durably
        .get_steps(&run.id)
        .await
        .map_err(|e| database_error(&args.db, e))?;
    let logs = durably
        .get_logs(&run.id)
        .await
        .map_err(|e| database_error(&args.db, e))?;
    let attempts = durably
        .get_step_attempts(&run.id)
        .await
        .map_err(|e| database_error(&args.db, e))?;
    let waits = durably
        .get_waits(&run.id)
        .await
        .map_err(|e| database_error(&args.db, e))?;
    if args.json {
        println!(
            "{}",
            to_json(
                &json!({ "run": run, "steps": steps, "attempts": attempts, "waits": waits, "logs": logs })
            )?
        );
        return Ok(OK);
    }
    let parent = match &run.parent_run_id {
        Some(id) => Some(Parent {
            id: id.clone(),
            run: durably
                .get_run(id)
                .await
                .map_err(|e| database_error(&args.db, e))?,
        }),
        None => None,
    };
    let mut children = durably
        .get_children(&run.id)
        .await
        .map_err(|e| database_error(&args.db, e))?;
    // in the order they were invoked (an invoke_all's children share one creation time)
    children.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let shown = Shown {
        steps: &steps,
        attempts: &attempts,
        waits: &waits,
        logs: &logs,
        parent: parent.as_ref(),
        children: &children,
    };
    print!("{}", describe_run(&run, &shown, Timestamp::now()));
    if children.len() > CHILDREN_SHOWN {
        println!(
            "hint: list all its children with `durably runs --parent {} {} --limit 0`",
            shell_quote(&run.id),
            args.db.flag()
        );
    }
    if run.status == RunStatus::Waiting {
        print_why_waiting(&run, &waits, &args.db);
    }
    if run.status == RunStatus::Failed {
        let (id, flag) = (shell_quote(&run.id), args.db.flag());
        println!(
            "hint: continue it from its failed step with `durably resume {id} {flag}` (completed steps are not executed again), or start a new run with `durably retrigger {id} {flag}`"
        );
    }
    Ok(OK)
}

/// For a waiting run: one line saying why it is not running and until when, and how to
/// start it now (`durably wake` for a timer, `durably signal` for a wait for a signal).
pub(super) fn print_why_waiting(run: &Run, waits: &[DurableWait], db: &DbArgs) {
    let Some(wait) = waits
        .iter()
        .find(|wait| Some(&wait.id) == run.waiting_on_wait_id.as_ref())
    else {
        return;
    };
    println!("why waiting: {}", durably::waits::why_waiting(wait));
    if wait.status != WaitStatus::Pending {
        return;
    }
    let (id, flag) = (shell_quote(&run.id), db.flag());
    match TimerKind::of(wait) {
        Some(kind) if kind.is_retry() => {
            println!("hint: retry now with `durably wake {id} {flag}`")
        }
        Some(_) => println!("hint: run it now with `durably wake {id} {flag}`"),
        None => println!(
            "hint: answer it with `durably signal {id} {} {flag} --payload JSON`",
            shell_quote(&wait.name)
        ),
    }
}

/// A run's records shown by `durably run`.
pub(super) struct Shown<'a> {
    steps: &'a [Step],
    attempts: &'a [StepAttempt],
    waits: &'a [DurableWait],
    logs: &'a [Log],
    /// The run that invoked this one, if it is a child run.
    parent: Option<&'a Parent>,
    /// The runs this one invoked, in the order they were invoked.
    children: &'a [Run],
}

/// The parent of a child run: its id, and its run unless it was deleted.
pub(super) struct Parent {
    id: String,
    run: Option<Run>,
}

/// Children listed one per line by `durably run` (the others are counted).
pub(super) const CHILDREN_SHOWN: usize = 5;

/// `3: 2 completed, 1 failed`: how many children, and how many in each status (in the
/// lifecycle order).
pub(super) fn children_summary(children: &[Run]) -> String {
    let counts: Vec<String> = RunStatus::ALL
        .iter()
        .filter_map(|status| {
            let count = children.iter().filter(|c| c.status == *status).count();
            (count > 0).then(|| format!("{count} {status}"))
        })
        .collect();
    format!("{}: {}", children.len(), counts.join(", "))
}

pub(super) fn describe_run(run: &Run, shown: &Shown<'_>, now: Timestamp) -> String {
    let (steps, logs) = (shown.steps, shown.logs);
    let mut out = format!("run {}\n", run.id);
    let mut field = |name: &str, value: String| {
        out.push_str(&format!("  {name:<16}{value}\n"));
    };
    field("job", run.job_name.clone());
    field(
        "status",
        format!("{} ({})", run.status, age_or_duration(run, now)),
    );
    if let Some(progress) = &run.progress {
        field("progress", human_progress(Some(progress)));
    }
    if !run.labels.is_empty() {
        field("labels", labels_text(run));
    }
    field("created", human_time(run.created_at));
    if let Some(at) = run.started_at {
        field("started", human_time(at));
    }
    if let Some(at) = run.completed_at {
        field("ended", human_time(at));
    }
    if let Some(key) = &run.idempotency_key {
        field("idempotency key", key.clone());
    }
    if let Some(key) = &run.concurrency_key {
        field("concurrency key", key.clone());
    }
    if run.priority != 0 {
        field(
            "priority",
            format!("{} (higher runs first; default 0)", run.priority),
        );
    }
    if let Some(parent) = shown.parent {
        let what = match &parent.run {
            Some(p) => format!("{} (job {}, {})", p.id, p.job_name, p.status),
            None => format!("{} (deleted)", parent.id),
        };
        field("parent", what);
    }
    if run.status == RunStatus::Leased {
        let owner = run.lease_owner.clone().unwrap_or_else(|| "?".into());
        let expires = run
            .lease_expires_at
            .map(human_time)
            .unwrap_or_else(|| "?".into());
        field(
            "lease",
            format!(
                "{owner}, expires {expires}, generation {}",
                run.lease_generation
            ),
        );
    }
    field("input", compact(&run.input));
    if let Some(output) = &run.output {
        field("output", compact(output));
    }
    if let Some(error) = &run.error {
        field("error", error.clone());
    }
    out.push_str(&format!("steps ({} completed)\n", run.completed_step_count));
    if steps.is_empty() {
        if run.is_terminal() && run.completed_step_count > 0 {
            out.push_str(
                "  (step outputs are dropped when a run completes or is cancelled, unless the application sets preserve_steps)\n",
            );
        } else {
            out.push_str("  (none)\n");
        }
    }
    for step in steps {
        out.push_str(&format!("  {}\n", step_line(step)));
    }
    out.push_str(&format!("attempts ({})\n", shown.attempts.len()));
    if shown.attempts.is_empty() {
        out.push_str("  (none)\n");
    }
    for attempt in shown.attempts {
        out.push_str(&format!("  {}\n", attempt_line(attempt)));
    }
    if !shown.waits.is_empty() {
        out.push_str(&format!("waits ({})\n", shown.waits.len()));
        for wait in shown.waits {
            out.push_str(&format!("  {}\n", wait_line(wait)));
        }
    }
    if !shown.children.is_empty() {
        out.push_str(&format!(
            "children ({})\n",
            children_summary(shown.children)
        ));
        for child in shown.children.iter().take(CHILDREN_SHOWN) {
            out.push_str(&format!(
                "  {} {} {} ({})\n",
                child.id,
                child.job_name,
                child.status,
                age_or_duration(child, now)
            ));
        }
        if shown.children.len() > CHILDREN_SHOWN {
            out.push_str(&format!(
                "  … and {} more\n",
                shown.children.len() - CHILDREN_SHOWN
            ));
        }
    }
    out.push_str(&format!("logs ({})\n", logs.len()));
    if logs.is_empty() {
        out.push_str("  (none)\n");
    }
    for log in logs {
        let step = log
            .step_name
            .as_deref()
            .map(|s| format!(" [{s}]"))
            .unwrap_or_default();
        let data = log
            .data
            .as_ref()
            .map(|d| format!(" {}", compact(d)))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {} {:<5}{step} {}{data}\n",
            human_time(log.created_at),
            log.level.as_str(),
            log.message
        ));
    }
    out
}

/// How a wait stands: `pending`, `resolved by signal`, `resolved by timeout`, `cancelled`, …
pub(super) fn wait_state(wait: &DurableWait) -> String {
    match wait.outcome {
        Some(outcome) => format!("{} by {}", wait.status.as_str(), outcome.as_str()),
        None => wait.status.as_str().to_owned(),
    }
}

/// One wait in `durably run`: its name, state, deadline, signal and id.
pub(super) fn wait_line(wait: &DurableWait) -> String {
    let deadline = wait
        .deadline_at
        .map(|at| format!(", deadline {}", human_time(at)))
        .unwrap_or_default();
    let signal = match (&wait.outcome, &wait.signal_id) {
        (Some(WaitOutcome::Signal), Some(id)) => {
            let payload = wait.payload.as_ref().unwrap_or(&Value::Null);
            format!(", signal {id} → {}", truncate(&compact(payload), 60))
        }
        _ => String::new(),
    };
    format!(
        "{} {}{deadline}{signal} (wait {})",
        wait.name,
        wait_state(wait),
        wait.id
    )
}

/// One attempt: its step, when it started, how it ended (or why it never did), its lease.
pub(super) fn attempt_line(attempt: &StepAttempt) -> String {
    let took = attempt
        .completed_at
        .map(|at| format!(" ({})", human_duration(at.millis_since(attempt.started_at))))
        .unwrap_or_default();
    let outcome = match (attempt.status, attempt.interruption_reason) {
        (AttemptStatus::Completed, _) => "completed".to_string(),
        (AttemptStatus::Failed, _) => format!(
            "failed: {}",
            attempt.error.as_deref().unwrap_or("(no error stored)")
        ),
        (_, Some(InterruptionReason::LeaseLost)) => "interrupted: its worker lost the lease".into(),
        (_, Some(InterruptionReason::Cancelled)) => "interrupted: the run was cancelled".into(),
        (_, Some(_)) => "interrupted: the run ended without its outcome".into(),
        (_, None) => "running".into(),
    };
    format!(
        "#{} {} started {}{took}, {outcome} (lease generation {})",
        attempt.step_index,
        attempt.step_name,
        human_time(attempt.started_at),
        attempt.lease_generation
    )
}

pub(super) fn step_line(step: &Step) -> String {
    let took = step
        .completed_at
        .map(|at| format!(" ({})", human_duration(at.millis_since(step.started_at))))
        .unwrap_or_default();
    match step.status {
        StepStatus::Completed => {
            let output = step
                .output
                .as_ref()
                .filter(|o| !o.is_null())
                .map(|o| format!(" → {}", truncate(&compact(o), 80)))
                .unwrap_or_default();
            format!("✓ {}{took}{output}", step.name)
        }
        StepStatus::Failed => format!(
            "✗ {}{took}: {}",
            step.name,
            step.error.as_deref().unwrap_or("failed")
        ),
        StepStatus::Cancelled => format!("⊘ {}{took} (cancelled)", step.name),
        other => format!("· {}{took} ({})", step.name, other.as_str()),
    }
}
