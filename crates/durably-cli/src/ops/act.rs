//! The commands that change a run or a wait: `signal`, `cancel`, `delete`, `retrigger`, `resume`, `wake`, `purge`.

use super::*;

/// Options of `durably signal`.
#[derive(clap::Args, Debug)]
pub struct SignalArgs {
    /// The run whose wait to signal: its id or a unique part of it (its first or last
    /// characters, at least 4).
    run_id: String,
    /// The wait: its id, or its name within the run (`durably waits RUN_ID` lists both).
    wait: String,
    #[command(flatten)]
    db: DbArgs,
    /// The signal's payload: any JSON value (`null`, `true`, `'{"approved": true}'`, …).
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    payload: Value,
    /// The signal's idempotency id: the same id with the same payload again is a duplicate
    /// (exit 0), with another payload a conflict (exit 1). Default: a new id per invocation
    /// (`cli-…`); give one to make a retried command idempotent.
    #[arg(long, value_name = "ID")]
    signal_id: Option<String>,
    /// Print `{"wait": …, "disposition": "accepted" | "duplicate"}` as JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `durably cancel`.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The run's id, or a unique part of it: its first or last characters (at least 4), as
    /// git takes a commit; the dashboard's short id (its last 8 characters, `…4K9ZB2QX`) works.
    id: String,
    #[command(flatten)]
    db: DbArgs,
    /// Keep the run's step outputs (match an application that runs with `preserve_steps`; by
    /// default they are dropped, as the library does).
    #[arg(long)]
    keep_steps: bool,
}

/// Options of `durably retrigger`.
#[derive(clap::Args, Debug)]
pub struct RetriggerArgs {
    /// The id of the finished run to run again.
    /// A unique part of the id works too (its first or last characters, at least 4).
    id: String,
    #[command(flatten)]
    db: DbArgs,
}

/// Options of `durably resume`.
#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// The id of the failed run to continue from its failed step.
    /// A unique part of the id works too (its first or last characters, at least 4).
    id: String,
    #[command(flatten)]
    db: DbArgs,
}

/// Options of `durably wake`.
#[derive(clap::Args, Debug)]
pub struct WakeArgs {
    /// The id of the run waiting on a timer (delayed, in a retry backoff, sleeping) to start
    /// or continue now.
    /// A unique part of the id works too (its first or last characters, at least 4).
    id: String,
    #[command(flatten)]
    db: DbArgs,
}

/// Options of `durably delete`.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// The run's id, or a unique part of it: its first or last characters (at least 4), as
    /// git takes a commit; the dashboard's short id (its last 8 characters, `…4K9ZB2QX`) works.
    id: String,
    #[command(flatten)]
    db: DbArgs,
}

/// Options of `durably purge`.
#[derive(clap::Args, Debug)]
pub struct PurgeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Delete runs that ended longer ago than this: a whole number followed by d (days), h
    /// (hours) or m (minutes), e.g. 30d, 12h, 90m (the same forms as `retain_runs`).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    older_than: Duration,
    /// Delete at most this many runs (default: every matching run, in batches of 500).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

/// `durably signal WAIT_ID --payload JSON --signal-id ID`.
pub async fn signal(args: SignalArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let signal_id = args
        .signal_id
        .clone()
        .unwrap_or_else(|| format!("cli-{}", durably::new_id()));
    let run = resolve_run(&durably, &args.db, &args.run_id).await?;
    let no_such_wait = || {
        CliError::new(format!(
            "no wait {} in run {} (list the run's waits with `durably waits {} {}`)",
            args.wait,
            run.id,
            run.id,
            args.db.flag()
        ))
        .with_code(NOT_FOUND)
    };
    let waits = durably
        .get_waits(&run.id)
        .await
        .map_err(|e| database_error(&args.db, e))?;
    let wait_id = waits
        .iter()
        .find(|w| w.id == args.wait)
        .or_else(|| waits.iter().find(|w| w.name == args.wait))
        .map(|w| w.id.clone())
        .ok_or_else(no_such_wait)?;
    let refused = |why: String| CliError::new(format!("cannot signal wait {wait_id}: {why}"));
    let signalled = durably
        .signal(&wait_id, args.payload.clone(), &signal_id)
        .await
        .map_err(|e| match e {
            durably::Error::NotFound(_) => no_such_wait(),
            durably::Error::Validation(message) => CliError::usage(message),
            durably::Error::WaitExpired { .. } => refused(
                "its deadline passed before the signal; the run continues as timed out".into(),
            ),
            durably::Error::Conflict(_) => refused(
                "it no longer accepts signals (resolved by another signal or payload, cancelled, \
                 closed, or its run ended); `durably waits RUN_ID` shows how it stands"
                    .into(),
            ),
            other => database_error(&args.db, other),
        })?;
    if args.json {
        println!(
            "{}",
            to_json(&json!({ "wait": signalled.wait, "disposition": signalled.disposition }))?
        );
        return Ok(OK);
    }
    let wait = &signalled.wait;
    match signalled.disposition {
        SignalDisposition::Duplicate => println!(
            "duplicate: signal {} had already resolved wait {} ({}) of run {}; nothing changed",
            signal_id, wait.id, wait.name, wait.run_id
        ),
        _ => println!(
            "accepted: signal {} resolved wait {} ({}) of run {}; a worker resumes the run",
            signal_id, wait.id, wait.name, wait.run_id
        ),
    }
    Ok(OK)
}

/// `durably cancel ID`.
pub async fn cancel(args: CancelArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, args.keep_steps).await?;
    let run = resolve_run(&durably, &args.db, &args.id).await?;
    if run.status.is_terminal() {
        return Err(CliError::new(format!(
            "cannot cancel run {}: it already ended ({})",
            run.id, run.status
        )));
    }
    durably.cancel(&run.id).await.map_err(|e| match e {
        durably::Error::NotFound(_) => no_such_run(&args.db, &run.id),
        other => CliError::new(format!("cannot cancel run {}: {other}", run.id)),
    })?;
    let note = if run.status == RunStatus::Leased {
        " (its worker stops at its next step boundary or lease renewal)"
    } else {
        ""
    };
    println!("cancelled run {} of job {}{note}", run.id, run.job_name);
    Ok(OK)
}

/// `durably delete ID`.
pub async fn delete(args: DeleteArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let run = resolve_run(&durably, &args.db, &args.id).await?;
    if !run.status.is_terminal() {
        return Err(CliError::new(format!(
            "cannot delete run {}: it is still {} (cancel it first with `durably cancel {} {}`)",
            run.id,
            run.status,
            shell_quote(&run.id),
            args.db.flag()
        )));
    }
    durably.delete_run(&run.id).await.map_err(|e| match e {
        durably::Error::NotFound(_) => no_such_run(&args.db, &run.id),
        other => CliError::new(format!("cannot delete run {}: {other}", run.id)),
    })?;
    println!(
        "deleted run {} of job {} ({}) with its steps and logs",
        run.id, run.job_name, run.status
    );
    Ok(OK)
}

/// `durably retrigger ID`: a new pending run of the same job with the same input, concurrency
/// key, labels and priority, for the application's workers. The command has no job code, so the input is
/// not validated again (a worker fails a run whose input its job rejects).
pub async fn retrigger(args: RetriggerArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let run = resolve_run(&durably, &args.db, &args.id).await?;
    if !run.status.is_terminal() {
        return Err(CliError::new(format!(
            "cannot retrigger run {}: it is still {} (retrigger runs that ended)",
            run.id, run.status
        )));
    }
    let request = durably::store::NewRun {
        job_name: run.job_name.clone(),
        input: run.input,
        idempotency_key: None,
        concurrency_key: run.concurrency_key,
        labels: run.labels,
        coalesce: None,
        priority: run.priority,
        ..Default::default()
    };
    let enqueued = durably
        .store()
        .enqueue(request, Timestamp::now())
        .await
        .map_err(|e| CliError::new(format!("cannot retrigger run {}: {e}", run.id)))?;
    println!(
        "retriggered run {} of job {}: new run {} (pending; the application's workers run it)",
        run.id, run.job_name, enqueued.run.id
    );
    Ok(OK)
}

/// `durably resume ID`: the failed run goes back to `pending` under its own id; the
/// application's workers continue it, replaying the steps it completed before the failure.
pub async fn resume(args: ResumeArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let id = resolve_run(&durably, &args.db, &args.id).await?.id;
    let run = durably
        .resume(&id)
        .await
        .map_err(action_error("resume", &args.db, &id))?;
    println!(
        "resumed run {} of job {}: pending again; the application's workers continue it from its failed step (its completed steps are replayed, not executed again)",
        run.id, run.job_name
    );
    Ok(OK)
}

/// `durably wake ID`: the timer the run waits on (a delay, a retry backoff, a sleep) is
/// signalled, so that the application's workers start or continue it now.
pub async fn wake(args: WakeArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let id = resolve_run(&durably, &args.db, &args.id).await?.id;
    let run = durably
        .wake(&id)
        .await
        .map_err(action_error("wake", &args.db, &id))?;
    println!(
        "woke run {} of job {}: its timer is resolved; the application's workers start or continue it now",
        run.id, run.job_name
    );
    Ok(OK)
}

/// The CLI error of an action on run `id` (`resume`, `wake`): an unknown run, a conflict with
/// the run's state (exit 1, the library's reason), or the database's error.
pub(super) fn action_error<'a>(
    action: &'a str,
    db: &'a crate::db::DbArgs,
    id: &'a str,
) -> impl Fn(durably::Error) -> CliError + 'a {
    move |error| match error {
        durably::Error::NotFound(_) => no_such_run(db, id),
        durably::Error::Conflict(message) => {
            CliError::new(format!("cannot {action} run {id}: {message}"))
        }
        other => database_error(db, other),
    }
}

/// Runs deleted per `purge_runs` call.
pub(super) const PURGE_BATCH: u64 = 500;

/// `durably purge --older-than AGE`.
pub async fn purge(args: PurgeArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let before = Timestamp::now() - args.older_than;
    let mut purged = 0u64;
    loop {
        let batch = match args.limit {
            Some(limit) => PURGE_BATCH.min(limit - purged),
            None => PURGE_BATCH,
        };
        if batch == 0 {
            break;
        }
        let deleted = durably
            .purge_runs(before, Some(batch))
            .await
            .map_err(|e| database_error(&args.db, e))?;
        purged += deleted;
        if deleted < batch {
            break;
        }
    }
    println!(
        "purged {purged} run{} that ended before {} UTC",
        if purged == 1 { "" } else { "s" },
        human_time(before)
    );
    Ok(OK)
}
