//! The operator commands on cron schedules: `durably schedules` lists them, `durably schedule
//! pause|resume|trigger NAME` acts on one. They open the database named by `--db` without
//! starting a worker, as the commands on runs do.
//!
//! `trigger` needs no job code: the run is enqueued by the schedule's job name, input and
//! labels (the schedule was checked against its job when registered), and the application's
//! workers run it.

use durably::{ScheduleRecord, Timestamp};
use serde_json::{Value, json};

use crate::db::{DbArgs, Purpose};
use crate::exit::{CliError, NOT_FOUND, OK};
use crate::ops::{database_error, human_duration, human_time, table, to_json, truncate};

/// Options of `durably schedules`.
#[derive(clap::Args, Debug)]
pub struct SchedulesArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Print the schedules as one JSON array (camelCase, as `GET /schedules` answers) instead
    /// of a table.
    #[arg(long)]
    json: bool,
}

/// Options of `durably schedule`.
#[derive(clap::Args, Debug)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    action: ScheduleAction,
}

/// What `durably schedule` does to one schedule.
#[derive(clap::Subcommand, Debug)]
enum ScheduleAction {
    /// Pause the schedule: it fires nothing until resumed.
    Pause(NameArgs),
    /// Resume a paused schedule from its first slot after now (slots that passed while it was
    /// paused are skipped, whatever its catch-up policy).
    Resume(NameArgs),
    /// Run the schedule's job now, outside its slots: a new pending run with the schedule's
    /// input and labels (label durably.schedule=NAME, no slot label). The schedule is
    /// unchanged, paused or not; the application's workers run the run.
    Trigger(NameArgs),
}

/// The schedule's name and the database.
#[derive(clap::Args, Debug)]
struct NameArgs {
    /// The schedule's name.
    name: String,
    #[command(flatten)]
    db: DbArgs,
}

/// The JSON of one schedule (the shape of the HTTP API's `GET /schedule`).
fn schedule_json(schedule: &ScheduleRecord) -> Value {
    json!({
        "name": schedule.name,
        "jobName": schedule.job_name,
        "cron": schedule.cron,
        "timeZone": schedule.time_zone,
        "input": schedule.input,
        "labels": schedule.labels,
        "catchUp": schedule.catch_up.as_text(),
        "paused": schedule.paused,
        "nextFireAt": schedule.next_fire_at,
        "lastFiredAt": schedule.last_fired_at,
        "createdAt": schedule.created_at,
        "updatedAt": schedule.updated_at,
    })
}

/// `in 42.0s` for a time to come, `3m 2s ago` for a time passed.
fn relative(at: Timestamp, now: Timestamp) -> String {
    if at >= now {
        format!("in {}", human_duration(at.millis_since(now)))
    } else {
        format!("{} ago", human_duration(now.millis_since(at)))
    }
}

fn no_such_schedule(db: &DbArgs, name: &str) -> CliError {
    CliError::new(format!(
        "no such schedule: {name} (list schedules with `durably schedules {}`)",
        db.flag()
    ))
    .with_code(NOT_FOUND)
}

fn schedule_error<'a>(db: &'a DbArgs, name: &'a str) -> impl Fn(durably::Error) -> CliError + 'a {
    move |error| match error {
        durably::Error::NotFound(_) => no_such_schedule(db, name),
        other => database_error(db, other),
    }
}

/// `durably schedules`.
pub async fn list(args: SchedulesArgs) -> Result<u8, CliError> {
    let durably = args.db.open(Purpose::Operate, false).await?;
    let schedules = durably
        .schedules()
        .list()
        .await
        .map_err(|e| database_error(&args.db, e))?;
    if args.json {
        let all: Vec<Value> = schedules.iter().map(schedule_json).collect();
        println!("{}", to_json(&all)?);
        return Ok(OK);
    }
    if schedules.is_empty() {
        println!("no schedules in {}", args.db.display());
        return Ok(OK);
    }
    let now = Timestamp::now();
    let header = [
        "NAME",
        "JOB",
        "CRON",
        "TIME ZONE",
        "NEXT FIRE (UTC)",
        "LAST FIRED (UTC)",
        "PAUSED",
    ];
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|schedule| {
            let next = match schedule.paused {
                true => format!("{} (paused)", human_time(schedule.next_fire_at)),
                false => format!(
                    "{} ({})",
                    human_time(schedule.next_fire_at),
                    relative(schedule.next_fire_at, now)
                ),
            };
            let last = schedule.last_fired_at.map_or_else(
                || "-".to_owned(),
                |at| format!("{} ({})", human_time(at), relative(at, now)),
            );
            vec![
                truncate(&schedule.name, 30),
                truncate(&schedule.job_name, 30),
                schedule.cron.clone(),
                schedule.time_zone.clone(),
                next,
                last,
                if schedule.paused { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    println!("{}", table(&header, &rows));
    Ok(OK)
}

/// `durably schedule pause|resume|trigger NAME`.
pub async fn act(args: ScheduleArgs) -> Result<u8, CliError> {
    match args.action {
        ScheduleAction::Pause(args) => {
            let durably = args.db.open(Purpose::Operate, false).await?;
            let schedule = durably
                .schedules()
                .pause(&args.name)
                .await
                .map_err(schedule_error(&args.db, &args.name))?;
            println!(
                "paused schedule {} (job {}): it fires nothing until `durably schedule resume {} {}`",
                schedule.name,
                schedule.job_name,
                crate::db::shell_quote(&schedule.name),
                args.db.flag()
            );
        }
        ScheduleAction::Resume(args) => {
            let durably = args.db.open(Purpose::Operate, false).await?;
            let schedule = durably
                .schedules()
                .resume(&args.name)
                .await
                .map_err(schedule_error(&args.db, &args.name))?;
            println!(
                "resumed schedule {} (job {}): next fire at {} UTC",
                schedule.name,
                schedule.job_name,
                human_time(schedule.next_fire_at)
            );
        }
        ScheduleAction::Trigger(args) => {
            let durably = args.db.open(Purpose::Operate, false).await?;
            let run = durably
                .schedules()
                .trigger_now(&args.name)
                .await
                .map_err(schedule_error(&args.db, &args.name))?;
            println!(
                "triggered schedule {}: new run {} of job {} (pending; the application's workers run it)",
                args.name, run.id, run.job_name
            );
        }
    }
    Ok(OK)
}
