//! `durably runs` and `durably waits`: lists.

use super::*;

/// Options of `durably runs`.
#[derive(clap::Args, Debug)]
pub struct RunsArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Only runs in this status: waiting, pending, leased (or its synonym running), completed,
    /// failed or cancelled (repeat for several).
    #[arg(long, value_name = "STATUS", value_parser = parse_status)]
    status: Vec<RunStatus>,
    /// Only runs of this job (repeat for several).
    #[arg(long, value_name = "NAME")]
    job: Vec<String>,
    /// Only runs carrying this label, written KEY=VALUE (repeat: every label must match).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// Only the child runs of this run (the runs it invoked with `step.invoke` or
    /// `step.invoke_all`): its id or a unique part of it (see `durably run --help`). An unknown
    /// run id exits with 4.
    #[arg(long, value_name = "RUN_ID")]
    parent: Option<String>,
    /// At most this many runs, newest first (0: all of them).
    #[arg(long, default_value_t = 20)]
    limit: u64,
    /// Print the runs as one JSON array (the stored run fields, camelCase) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Options of `durably waits`.
#[derive(clap::Args, Debug)]
pub struct WaitsArgs {
    /// The run's id, or a unique part of it: its first or last characters (at least 4), as
    /// git takes a commit; the dashboard's short id (its last 8 characters, `…4K9ZB2QX`) works.
    id: String,
    #[command(flatten)]
    db: DbArgs,
    /// Print the waits as one JSON array (the HTTP API's `DurableWait`, camelCase) instead of a
    /// table.
    #[arg(long)]
    json: bool,
}

/// `durably runs`.
pub async fn runs(args: RunsArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let mut filter = RunFilter::new();
    filter.statuses = args.status.clone();
    filter.job_names = args.job.clone();
    filter.labels = args.label.iter().cloned().collect();
    let mut parent_id = None;
    if let Some(parent) = &args.parent {
        // an unknown parent is a typo (exit 4), not a run without children
        let parent = resolve_run(&durably, &args.db, parent).await?;
        filter.parent_run_id = Some(parent.id.clone());
        parent_id = Some(parent.id);
    }
    if args.limit > 0 {
        filter.limit = Some(args.limit);
    }
    let runs = durably.get_runs(&filter).await.map_err(|e| match e {
        // The filter exceeds the limits (too many labels, a value too long): bad arguments.
        durably::Error::Validation(message) => CliError::usage(message),
        e => database_error(&args.db, e),
    })?;
    if args.json {
        println!("{}", to_json(&runs)?);
        return Ok(OK);
    }
    if runs.is_empty() {
        match &parent_id {
            Some(parent) => println!("no child runs of run {parent} match"),
            None => println!("no runs match in {}", args.db.display()),
        }
        return Ok(OK);
    }
    let now = Timestamp::now();
    let with_labels = runs.iter().any(|run| !run.labels.is_empty());
    let mut header = vec!["ID", "JOB", "STATUS", "PROGRESS", "CREATED", "AGE/DURATION"];
    if with_labels {
        header.push("LABELS");
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let mut row = vec![
                run.id.clone(),
                truncate(&run.job_name, 30),
                run.status.to_string(),
                truncate(&human_progress(run.progress.as_ref()), 32),
                human_time(run.created_at),
                age_or_duration(run, now),
            ];
            if with_labels {
                row.push(truncate(&labels_text(run), 40));
            }
            row
        })
        .collect();
    println!("{}", table(&header, &rows));
    if args.limit > 0 && runs.len() as u64 == args.limit {
        eprintln!(
            "(showing the newest {}; --limit N shows more, --limit 0 all)",
            args.limit
        );
    }
    Ok(OK)
}

/// `durably waits RUN_ID`.
pub async fn waits(args: WaitsArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let run = resolve_run(&durably, &args.db, &args.id).await?;
    let waits = durably
        .get_waits(&run.id)
        .await
        .map_err(|e| database_error(&args.db, e))?;
    if args.json {
        println!("{}", to_json(&waits)?);
        return Ok(OK);
    }
    if waits.is_empty() {
        println!("run {} ({}) has no waits", run.id, run.status);
        return Ok(OK);
    }
    let header = ["NAME", "STATUS", "OUTCOME", "DEADLINE", "SIGNAL ID", "ID"];
    let rows: Vec<Vec<String>> = waits
        .iter()
        .map(|wait| {
            vec![
                truncate(&wait.name, 30),
                wait.status.as_str().to_owned(),
                wait.outcome
                    .map_or_else(|| "-".to_owned(), |o| o.as_str().to_owned()),
                wait.deadline_at.map_or_else(|| "-".to_owned(), human_time),
                wait.signal_id
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |id| truncate(id, 30)),
                wait.id.clone(),
            ]
        })
        .collect();
    println!("{}", table(&header, &rows));
    Ok(OK)
}
