//! `durably trigger JOB --input JSON`: a new run of a job for the application's workers.

use super::*;

/// Options of `durably trigger`.
#[derive(clap::Args, Debug)]
pub struct TriggerArgs {
    /// The job to run, by the name the application registers it under.
    job: String,
    #[command(flatten)]
    db: DbArgs,
    /// The run's input: a JSON value (`'{"orderId": 42}'`, `'"text"'`, `null`), or `@FILE` for
    /// the JSON in a file, `@-` for standard input. The command
    /// has no job code, so it is not checked against the job's input type: a worker fails a run
    /// whose input its job rejects.
    #[arg(long, value_name = "JSON", value_parser = parse_input)]
    input: Value,
    /// A label stored with the run, written KEY=VALUE (repeat for several).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// A second trigger of the job with the same key returns the first run (disposition
    /// `idempotent`) instead of creating one: give one to make a retried command safe.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// At most one pending run per job and key, and one running run per key: a trigger while
    /// the job and key have a pending run is refused (exit 1).
    #[arg(long, value_name = "KEY")]
    concurrency_key: Option<String>,
    /// With --concurrency-key: return the job and key's existing run instead of being refused:
    /// `skip` (or `queue`) its pending run; `active` its pending, else running, else waiting
    /// run (disposition `coalesced`). Not with --delay.
    #[arg(long, value_name = "MODE", value_parser = parse_coalesce, requires = "concurrency_key", conflicts_with = "delay")]
    coalesce: Option<Coalesce>,
    /// The claim priority: workers claim runs of higher priority first (negative: later).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    priority: i32,
    /// Start the run this long from now (a whole number followed by ms, s, m, h or d, e.g.
    /// 90s, 5m): until then it is `waiting`, and `durably wake ID` starts it at once.
    #[arg(long, value_name = "DURATION", value_parser = parse_delay)]
    delay: Option<Duration>,
    /// Debounce by this key: the job's run with the key that has not started yet is pushed
    /// back instead of a new one being enqueued (disposition `debounced`), and the run starts
    /// --debounce-period after the last trigger. Not with --delay or --coalesce.
    #[arg(long, value_name = "KEY", requires = "debounce_period", conflicts_with_all = ["delay", "coalesce"])]
    debounce: Option<String>,
    /// With --debounce: how long after the last trigger the run starts (e.g. 5s, 2m).
    #[arg(long, value_name = "DURATION", value_parser = parse_delay, requires = "debounce")]
    debounce_period: Option<Duration>,
    /// With --debounce: the latest start, counted from the first trigger, however often the
    /// run is pushed back (e.g. 1m).
    #[arg(long, value_name = "DURATION", value_parser = parse_delay, requires = "debounce")]
    debounce_max_wait: Option<Duration>,
    /// Follow the run until it ends, as `durably watch` does (same exit codes: 0 completed, 1
    /// failed, 3 cancelled).
    #[arg(long)]
    wait: bool,
    /// With --wait: how often to read the run, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..))]
    interval_ms: u64,
    /// Print `{"runId": …, "disposition": …, "run": …}` as JSON instead of text (with --wait,
    /// once the run ended, without the progress).
    #[arg(long)]
    json: bool,
}

/// `durably trigger JOB --input JSON`: enqueues a run of a job for the application's workers,
/// through the store (the command has no job code: as `durably retrigger` and `durably
/// schedule trigger` do), with the options of `TriggerOptions` that need no job code.
pub async fn trigger(args: TriggerArgs) -> Result<u8, CliError> {
    if args.job.trim().is_empty() {
        return Err(CliError::usage(
            "the job name is empty: give the name the application registers the job under",
        ));
    }
    for (flag, key) in [
        ("--idempotency-key", &args.idempotency_key),
        ("--concurrency-key", &args.concurrency_key),
        ("--debounce", &args.debounce),
    ] {
        if key.as_deref() == Some("") {
            return Err(CliError::usage(format!(
                "{flag} is empty: give a key, or leave the option out"
            )));
        }
    }
    let durably = args.db.open(Purpose::Operate, false).await?;
    let limits = &durably.config().limits;
    for (flag, key) in [
        ("--idempotency-key", &args.idempotency_key),
        ("--concurrency-key", &args.concurrency_key),
    ] {
        if let Some(key) = key
            && key.len() > limits.max_key_bytes
        {
            return Err(CliError::usage(format!(
                "{flag} is {} bytes long; the limit is {} bytes: use a shorter key, e.g. a hash \
                 of it",
                key.len(),
                limits.max_key_bytes
            )));
        }
    }
    let labels: durably::Labels = args.label.iter().cloned().collect();
    if labels.len() > limits.max_labels_per_run {
        return Err(CliError::usage(format!(
            "{} labels given; a run may carry at most {}: put the rest in the input",
            labels.len(),
            limits.max_labels_per_run
        )));
    }
    for (key, value) in &labels {
        if key.len() > limits.max_label_key_bytes || value.len() > limits.max_label_value_bytes {
            return Err(CliError::usage(format!(
                "--label {key}=…: a label key may be {} bytes long and its value {}: put long \
                 values in the input",
                limits.max_label_key_bytes, limits.max_label_value_bytes
            )));
        }
    }
    let now = Timestamp::now();
    let debounce = match (&args.debounce, args.debounce_period) {
        (Some(key), Some(period)) => {
            if period.is_zero() {
                return Err(CliError::usage(
                    "--debounce-period is 0: give a period of at least 1ms",
                ));
            }
            let debounce = Debounce::new(key.clone(), period);
            Some(match args.debounce_max_wait {
                Some(max_wait) => debounce.max_wait(max_wait),
                None => debounce,
            })
        }
        _ => None,
    };
    let start_at = match &debounce {
        Some(debounce) => Some(now + debounce.period),
        None => args.delay.map(|delay| now + delay),
    };
    let request = durably::store::NewRun {
        job_name: args.job.clone(),
        input: args.input.clone(),
        idempotency_key: args.idempotency_key.clone(),
        concurrency_key: args.concurrency_key.clone(),
        labels,
        coalesce: args.coalesce,
        priority: args.priority,
        start_at,
        debounce,
        ..Default::default()
    };
    // A run of a job no application registers would be failed by the first worker that claims
    // it (`Unknown job`): say so when the database never saw the job (a typo, usually).
    let known = durably
        .get_runs(&RunFilter::new().job_name(&args.job).limit(1))
        .await
        .map_err(|e| database_error(&args.db, e))?;
    let enqueued = durably
        .store()
        .enqueue(request, now)
        .await
        .map_err(|e| match e {
            durably::Error::Validation(message) => {
                CliError::usage(format!("cannot trigger job {}: {message}", args.job))
            }
            durably::Error::Conflict(message) => match &args.concurrency_key {
                Some(key) if message.contains("pending run already exists") => {
                    CliError::new(format!(
                        "cannot trigger job {}: it already has a pending run with concurrency \
                         key \"{key}\" (--coalesce skip returns that run instead)",
                        args.job
                    ))
                }
                _ => CliError::new(format!("cannot trigger job {}: {message}", args.job)),
            },
            other => database_error(&args.db, other),
        })?;
    let run = enqueued.run;
    let disposition = enqueued.disposition;
    if known.is_empty() && disposition == Disposition::Created {
        eprintln!(
            "note: {} had no run of job \"{}\" before this one: check the name (a worker whose \
             application does not register the job fails the run as an unknown job)",
            args.db.display(),
            args.job
        );
    }
    // A waiting run starts when its timer ends: for a debounced trigger, the later of the
    // pushed-back start and the first trigger's max wait.
    let starts_at = match run.status {
        RunStatus::Waiting => durably
            .get_waits(&run.id)
            .await
            .map_err(|e| database_error(&args.db, e))?
            .into_iter()
            .find(|wait| Some(&wait.id) == run.waiting_on_wait_id.as_ref())
            .and_then(|wait| wait.deadline_at)
            .or(start_at),
        _ => None,
    }
    .unwrap_or(now);
    if !args.json {
        let state = match (disposition, run.status) {
            (Disposition::Idempotent, _) => format!(
                "existing run {} (idempotency key {} already used; {}): nothing new enqueued",
                run.id,
                args.idempotency_key.as_deref().unwrap_or(""),
                run.status
            ),
            (Disposition::Coalesced, _) => format!(
                "existing run {} (concurrency key {}; {}): nothing new enqueued",
                run.id,
                args.concurrency_key.as_deref().unwrap_or(""),
                run.status
            ),
            (Disposition::Debounced, _) => format!(
                "existing run {} (debounce key {}; its start pushed back to {} UTC): nothing \
                 new enqueued",
                run.id,
                args.debounce.as_deref().unwrap_or(""),
                human_time(starts_at)
            ),
            (_, RunStatus::Waiting) => format!(
                "run {} (waiting until {} UTC; `durably wake {} {}` starts it now)",
                run.id,
                human_time(starts_at),
                shell_quote(&run.id),
                args.db.flag()
            ),
            _ => format!(
                "run {} ({}; the application's workers run it)",
                run.id, run.status
            ),
        };
        println!("triggered job {}: {state}", run.job_name);
    }
    let (run, code) = if args.wait {
        let ended = follow(
            &durably,
            &args.db,
            run,
            Duration::from_millis(args.interval_ms),
            !args.json,
        )
        .await?;
        let code = match args.json {
            true => match ended.status {
                RunStatus::Completed => OK,
                RunStatus::Failed => FAILURE,
                _ => CANCELLED,
            },
            false => print_outcome(&ended),
        };
        (ended, code)
    } else {
        (run, OK)
    };
    if args.json {
        println!(
            "{}",
            to_json(&json!({ "runId": run.id, "disposition": disposition, "run": run }))?
        );
    }
    Ok(code)
}
