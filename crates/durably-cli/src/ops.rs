//! The operator commands that work on runs: `runs`, `run`, `cancel`, `delete`, `purge`,
//! `watch`, and on their durable waits: `waits`, `signal`. They open the database named by `--db` without starting a worker.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use durably::{
    AttemptStatus, Coalesce, Disposition, DurableWait, Durably, InterruptionReason, Log, Progress,
    Run, RunFilter, RunStatus, SignalDisposition, Step, StepAttempt, StepStatus, TimerKind,
    Timestamp, WaitOutcome, WaitStatus,
};
use serde_json::{Value, json};

use crate::db::{DbArgs, Purpose, describe, shell_quote};
use crate::exit::{CANCELLED, CliError, FAILURE, NOT_FOUND, OK};

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

/// Options of `durably trigger`.
#[derive(clap::Args, Debug)]
pub struct TriggerArgs {
    /// The job to run, by the name the application registers it under.
    job: String,
    #[command(flatten)]
    db: DbArgs,
    /// The run's input: a JSON value (`'{"orderId": 42}'`, `'"text"'`, `null`). The command
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

/// Options of `durably watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// The run's id, or a unique part of it: its first or last characters (at least 4), as
    /// git takes a commit; the dashboard's short id (its last 8 characters, `…4K9ZB2QX`) works.
    id: String,
    #[command(flatten)]
    db: DbArgs,
    /// How often to read the run from the database, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..))]
    interval_ms: u64,
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e}); quote strings: '\"text\"'"))
}

/// A status as users type it: the stored names, and `running` for `leased` (what the
/// dashboard and `durably watch` call a leased run).
pub(crate) fn parse_status(text: &str) -> Result<RunStatus, String> {
    if text == "running" {
        return Ok(RunStatus::Leased);
    }
    text.parse::<RunStatus>().map_err(|_| {
        format!(
            "unknown status '{text}': use waiting, pending, leased (or running), completed, failed \
             or cancelled"
        )
    })
}

fn parse_input(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| {
        format!(
            "not JSON ({e}); give a JSON value, e.g. '{{\"orderId\": 42}}', and quote strings: \
             '\"text\"'"
        )
    })
}

fn parse_coalesce(text: &str) -> Result<Coalesce, String> {
    text.parse::<Coalesce>()
        .map_err(|_| format!("unknown mode '{text}': use skip, queue or active"))
}

/// `500ms`, `90s`, `5m`, `2h`, `1d`.
fn parse_delay(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration '{text}': give a whole number followed by ms, s, m, h or d, e.g. \
             90s, 5m, 2h"
        )
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(digits_end);
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    amount
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE (e.g. tenant=acme), got '{text}'"))?;
    durably::store::validate_label_key(key).map_err(|e| e.to_string())?;
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_age(text: &str) -> Result<Duration, String> {
    durably::parse_retention(text).map_err(|e| e.to_string())
}

pub(crate) fn database_error(db: &DbArgs, error: durably::Error) -> CliError {
    CliError::new(format!("database {}: {}", db.display(), describe(&error)))
}

fn no_such_run(db: &DbArgs, id: &str) -> CliError {
    CliError::new(format!(
        "no such run: {id} (list runs with `durably runs {}`)",
        db.flag()
    ))
    .with_code(NOT_FOUND)
}

/// The fewest characters of an id accepted as a part of it.
pub(crate) const MIN_ID_PART: usize = 4;

/// Runs read (newest first) when looking for the runs whose id starts or ends with a part:
/// the store has no lookup by id prefix, so the newest runs are read through `get_runs`.
pub(crate) const ID_SCAN_LIMIT: u64 = 10_000;

/// Runs read per `get_runs` call of that scan.
const ID_SCAN_PAGE: u64 = 1_000;

/// Candidates listed when a part of an id matches several runs.
const CANDIDATES_SHOWN: usize = 5;

/// Where a part of an id must sit in the ids it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdPart {
    /// Its first or last characters.
    Either,
    /// Its first characters (`01J9ABC…`).
    Start,
    /// Its last characters (the dashboard's `…4K9ZB2QX`).
    End,
}

/// `…4K9ZB2QX` → (`4K9ZB2QX`, End); `01J9…` → (`01J9`, Start); else (text, Either).
fn id_part(text: &str) -> (&str, IdPart) {
    for ellipsis in ["…", "..."] {
        if let Some(rest) = text.strip_prefix(ellipsis) {
            return (rest, IdPart::End);
        }
        if let Some(rest) = text.strip_suffix(ellipsis) {
            return (rest, IdPart::Start);
        }
    }
    (text, IdPart::Either)
}

/// Whether `id` starts or ends with `part` (ignoring ASCII case: ULIDs are upper case, and
/// people type them in lower case).
fn id_matches(id: &str, part: &str, place: IdPart) -> bool {
    let (id, part) = (id.as_bytes(), part.as_bytes());
    if part.len() > id.len() {
        return false;
    }
    let start = || id[..part.len()].eq_ignore_ascii_case(part);
    let end = || id[id.len() - part.len()..].eq_ignore_ascii_case(part);
    match place {
        IdPart::Start => start(),
        IdPart::End => end(),
        IdPart::Either => start() || end(),
    }
}

/// The run named on the command line: by its full id, else by a unique part of it (its
/// first or last characters, at least [`MIN_ID_PART`]), as git takes a commit. A part that
/// matches several runs lists them (exit 2); one too short is refused (exit 2); no match
/// exits with 4.
pub(crate) async fn resolve_run(
    durably: &Durably,
    db: &DbArgs,
    text: &str,
) -> Result<Run, CliError> {
    if let Some(run) = durably
        .get_run(text)
        .await
        .map_err(|e| database_error(db, e))?
    {
        return Ok(run);
    }
    let (part, place) = id_part(text);
    if part.chars().count() < MIN_ID_PART {
        return Err(CliError::usage(format!(
            "run id '{text}' is too short: give the full id, or at least {MIN_ID_PART} of its \
             first or last characters (the dashboard shows its last 8)"
        )));
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(no_such_run(db, text));
    }
    let mut matches: Vec<Run> = Vec::new();
    let mut read = 0u64;
    let mut complete = false;
    while read < ID_SCAN_LIMIT {
        let wanted = ID_SCAN_PAGE.min(ID_SCAN_LIMIT - read);
        let mut filter = RunFilter::new();
        filter.limit = Some(wanted);
        filter.offset = Some(read);
        let page = durably
            .get_runs(&filter)
            .await
            .map_err(|e| database_error(db, e))?;
        let got = page.len() as u64;
        read += got;
        matches.extend(
            page.into_iter()
                .filter(|run| id_matches(&run.id, part, place)),
        );
        if got < wanted {
            complete = true;
            break;
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 if complete => Err(no_such_run(db, text)),
        0 => Err(CliError::new(format!(
            "no such run: {text} (no id among the newest {ID_SCAN_LIMIT} runs starts or ends with \
             it: give the full id; list runs with `durably runs {}`)",
            db.flag()
        ))
        .with_code(NOT_FOUND)),
        count => {
            let among = if complete {
                String::new()
            } else {
                format!(" among the newest {ID_SCAN_LIMIT}")
            };
            let mut message = format!(
                "run id '{text}' is ambiguous: {count} runs{among} match; give more of its \
                 characters, or the full id:"
            );
            for run in matches.iter().take(CANDIDATES_SHOWN) {
                message.push_str(&format!(
                    "\n  {}  {}  {}  created {}",
                    run.id,
                    truncate(&run.job_name, 30),
                    run.status,
                    human_time(run.created_at)
                ));
            }
            if count > CANDIDATES_SHOWN {
                message.push_str(&format!("\n  … and {} more", count - CANDIDATES_SHOWN));
            }
            Err(CliError::usage(message))
        }
    }
}

pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map_err(|e| CliError::new(format!("cannot write JSON: {e}")))
}

// ---------------------------------------------------------------------------------------------
// formatting

/// `850ms`, `12.3s`, `5m 3s`, `2h 5m`, `3d 4h`.
pub(crate) fn human_duration(millis: u64) -> String {
    let secs = millis / 1000;
    match secs {
        0 => format!("{millis}ms"),
        1..=59 => format!("{}.{}s", secs, millis % 1000 / 100),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// `2026-11-21 07:11:00` (UTC).
pub(crate) fn human_time(at: Timestamp) -> String {
    let text = at.to_string();
    let text = text.split('.').next().unwrap_or(&text);
    text.replace('T', " ")
}

fn human_progress(progress: Option<&Progress>) -> String {
    let Some(progress) = progress else {
        return "-".to_owned();
    };
    let mut text = match progress.total {
        Some(total) => format!("{}/{total}", progress.current),
        None => progress.current.to_string(),
    };
    if let Some(message) = &progress.message {
        text.push(' ');
        text.push_str(message);
    }
    text
}

/// How long a run took (terminal) or has been waiting / running (active).
fn age_or_duration(run: &Run, now: Timestamp) -> String {
    match run.status {
        RunStatus::Pending => format!(
            "waiting {}",
            human_duration(now.millis_since(run.created_at))
        ),
        RunStatus::Leased => {
            let since = run.started_at.unwrap_or(run.created_at);
            format!("running {}", human_duration(now.millis_since(since)))
        }
        // Suspended on a durable wait since its last write (the suspension).
        RunStatus::Waiting => format!(
            "suspended {}",
            human_duration(now.millis_since(run.updated_at))
        ),
        _ => {
            let since = run.started_at.unwrap_or(run.created_at);
            let until = run.completed_at.unwrap_or(run.updated_at);
            format!("took {}", human_duration(until.millis_since(since)))
        }
    }
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

fn labels_text(run: &Run) -> String {
    run.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Left-aligned columns separated by two spaces.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = width - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

// ---------------------------------------------------------------------------------------------
// commands

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
fn print_why_waiting(run: &Run, waits: &[DurableWait], db: &DbArgs) {
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
struct Shown<'a> {
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
struct Parent {
    id: String,
    run: Option<Run>,
}

/// Children listed one per line by `durably run` (the others are counted).
const CHILDREN_SHOWN: usize = 5;

/// `3: 2 completed, 1 failed`: how many children, and how many in each status (in the
/// lifecycle order).
fn children_summary(children: &[Run]) -> String {
    let counts: Vec<String> = RunStatus::ALL
        .iter()
        .filter_map(|status| {
            let count = children.iter().filter(|c| c.status == *status).count();
            (count > 0).then(|| format!("{count} {status}"))
        })
        .collect();
    format!("{}: {}", children.len(), counts.join(", "))
}

fn describe_run(run: &Run, shown: &Shown<'_>, now: Timestamp) -> String {
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
fn wait_state(wait: &DurableWait) -> String {
    match wait.outcome {
        Some(outcome) => format!("{} by {}", wait.status.as_str(), outcome.as_str()),
        None => wait.status.as_str().to_owned(),
    }
}

/// One wait in `durably run`: its name, state, deadline, signal and id.
fn wait_line(wait: &DurableWait) -> String {
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
fn attempt_line(attempt: &StepAttempt) -> String {
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

fn step_line(step: &Step) -> String {
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
    let request = durably::store::NewRun {
        job_name: args.job.clone(),
        input: args.input.clone(),
        idempotency_key: args.idempotency_key.clone(),
        concurrency_key: args.concurrency_key.clone(),
        labels,
        coalesce: args.coalesce,
        priority: args.priority,
        start_at: args.delay.map(|delay| now + delay),
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
            (_, RunStatus::Waiting) => format!(
                "run {} (waiting until {} UTC; `durably wake {} {}` starts it now)",
                run.id,
                human_time(now + args.delay.unwrap_or_default()),
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
fn action_error<'a>(
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
const PURGE_BATCH: u64 = 500;

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

/// `durably watch ID`.
pub async fn watch(args: WatchArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let run = resolve_run(&durably, &args.db, &args.id).await?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "watching run {} of job {}", run.id, run.job_name);
    let run = follow(
        &durably,
        &args.db,
        run,
        Duration::from_millis(args.interval_ms),
        true,
    )
    .await?;
    Ok(print_outcome(&run))
}

/// Follows `run` until it ends, reading it every `interval`; with `show`, prints each step as
/// it completes and a live status line (one line per change without a terminal). Returns the
/// ended run; a run deleted meanwhile exits with 4.
async fn follow(
    durably: &Durably,
    db: &DbArgs,
    mut run: Run,
    interval: Duration,
    show: bool,
) -> Result<Run, CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout();
    let mut seen_steps: HashSet<String> = HashSet::new();
    let mut last_line = String::new();
    let mut bar_shown = false;
    let id = run.id.clone();
    loop {
        if !show {
            if run.status.is_terminal() {
                return Ok(run);
            }
            tokio::time::sleep(interval).await;
            run = durably
                .get_run(&id)
                .await
                .map_err(|e| database_error(db, e))?
                .ok_or_else(|| {
                    CliError::new(format!("run {id} was deleted while watching"))
                        .with_code(NOT_FOUND)
                })?;
            continue;
        }
        let steps = durably
            .get_steps(&run.id)
            .await
            .map_err(|e| database_error(db, e))?;
        for step in steps {
            if seen_steps.insert(step.id.clone()) {
                if bar_shown {
                    let _ = write!(out, "\r\x1b[2K");
                    bar_shown = false;
                }
                let _ = writeln!(out, "  {}", step_line(&step));
                last_line.clear();
            }
        }
        if run.status.is_terminal() {
            break;
        }
        let line = status_line(&run, Timestamp::now());
        if tty {
            let _ = write!(out, "\r\x1b[2K{line}");
            bar_shown = true;
        } else {
            // without a terminal, one line per change (the age in a pending line is left out)
            let key = format!("{} {}", run.status, human_progress(run.progress.as_ref()));
            if key != last_line {
                let _ = writeln!(out, "{line}");
                last_line = key;
            }
        }
        let _ = out.flush();
        tokio::time::sleep(interval).await;
        run = match durably.get_run(&id).await {
            Ok(Some(run)) => run,
            Ok(None) => {
                if bar_shown {
                    let _ = writeln!(out);
                }
                return Err(
                    CliError::new(format!("run {id} was deleted while watching"))
                        .with_code(NOT_FOUND),
                );
            }
            Err(error) => {
                if bar_shown {
                    let _ = writeln!(out);
                }
                return Err(database_error(db, error));
            }
        };
    }
    if bar_shown {
        let _ = write!(out, "\r\x1b[2K");
    }
    let _ = out.flush();
    Ok(run)
}

/// Prints how an ended run ended (`completed (took 1.2s)` and its output, `failed …: error`,
/// `cancelled …`) and returns the exit code: 0 completed, 1 failed, 3 cancelled.
fn print_outcome(run: &Run) -> u8 {
    let mut out = std::io::stdout();
    let took = age_or_duration(run, Timestamp::now());
    let code = match run.status {
        RunStatus::Completed => {
            let output = run
                .output
                .as_ref()
                .filter(|o| !o.is_null())
                .map(|o| format!("\noutput: {}", compact(o)))
                .unwrap_or_default();
            let _ = writeln!(out, "completed ({took}){output}");
            OK
        }
        RunStatus::Failed => {
            let _ = writeln!(
                out,
                "failed ({took}): {}",
                run.error.as_deref().unwrap_or("no error message stored")
            );
            FAILURE
        }
        _ => {
            let _ = writeln!(out, "cancelled ({took})");
            CANCELLED
        }
    };
    let _ = out.flush();
    code
}

/// `[##########..........] 3/6 50% message` while leased, `pending …` before.
fn status_line(run: &Run, now: Timestamp) -> String {
    const WIDTH: u64 = 24;
    if run.status == RunStatus::Pending {
        return format!(
            "pending: waiting for a worker ({})",
            human_duration(now.millis_since(run.created_at))
        );
    }
    let Some(progress) = &run.progress else {
        return format!("running ({} steps done)", run.completed_step_count);
    };
    let message = progress
        .message
        .as_deref()
        .map(|m| format!(" {}", truncate(m, 48)))
        .unwrap_or_default();
    match progress.total {
        Some(total) if total > 0 => {
            let current = progress.current.min(total);
            let filled = (current * WIDTH / total) as usize;
            format!(
                "[{}{}] {}/{total} {}%{message}",
                "#".repeat(filled),
                ".".repeat(WIDTH as usize - filled),
                progress.current,
                current * 100 / total
            )
        }
        _ => format!("running: {} done{message}", progress.current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_345), "12.3s");
        assert_eq!(human_duration(303_000), "5m 3s");
        assert_eq!(human_duration(7_500_000), "2h 5m");
        assert_eq!(human_duration(273_600_000), "3d 4h");
    }

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_label("tenant=acme"),
            Ok(("tenant".into(), "acme".into()))
        );
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_label("tenant").is_err());
        assert!(parse_label("bad key=x").is_err());
    }

    #[test]
    fn tables_align() {
        let text = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(text, "A    BB\nxxx  y\nz");
    }
}
