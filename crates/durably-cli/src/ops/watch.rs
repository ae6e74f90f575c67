//! `durably watch ID`: a run followed to its end.

use super::*;

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
pub(super) async fn follow(
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
pub(super) fn print_outcome(run: &Run) -> u8 {
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
pub(super) fn status_line(run: &Run, now: Timestamp) -> String {
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
