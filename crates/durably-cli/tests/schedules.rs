//! `durably schedules` and `durably schedule pause|resume|trigger NAME` as a user runs them:
//! the real binary against a SQLite file whose schedules were registered through the library.

use std::process::{Command, Output};

use durably::{CatchUp, Durably, Job, RunFilter, Schedule, StepContext, Timestamp};
use serde_json::{Value, json};

fn durably_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_durably"))
        .args(args)
        .output()
        .expect("run the durably binary")
}

/// Asserts the exit code and returns stdout.
#[track_caller]
fn expect_code(output: &Output, code: i32) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An application's database: job `report` and two schedules of it. The CLI has no job code.
async fn application(path: &std::path::Path) -> Durably {
    let durably = Durably::builder().sqlite(path).build().expect("build");
    durably
        .register(Job::new(
            "report",
            |_step: StepContext, input: Value| async move { Ok(input) },
        ))
        .expect("register");
    durably.migrate().await.expect("migrate");
    let noon = Timestamp::parse("2026-06-01T12:00:00Z").expect("time");
    durably
        .schedules()
        .at(noon)
        .upsert(
            Schedule::new(
                "nightly",
                "0 0 3 * * *",
                "report",
                json!({"kind": "nightly"}),
            )
            .time_zone("Europe/Paris")
            .label("team", "ops"),
        )
        .await
        .expect("upsert nightly");
    durably
        .schedules()
        .upsert(
            Schedule::new("often", "*/5 * * * *", "report", json!({"kind": "often"}))
                .catch_up(CatchUp::Skip),
        )
        .await
        .expect("upsert often");
    durably
}

#[tokio::test]
async fn schedules_are_listed_paused_resumed_and_triggered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.sqlite");
    let durably = application(&path).await;
    let db = path.to_str().expect("utf-8 path");

    let table = expect_code(&durably_cli(&["schedules", "--db", db]), 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in [
        "NAME",
        "JOB",
        "CRON",
        "TIME ZONE",
        "NEXT FIRE (UTC)",
        "LAST FIRED (UTC)",
        "PAUSED",
    ] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(lines[1].starts_with("nightly"), "{table}");
    assert!(
        lines[1].contains("0 0 3 * * *")
            && lines[1].contains("Europe/Paris")
            && lines[1].contains("2026-06-02 01:00:00 (")
            && lines[1].ends_with("no"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("often") && lines[2].contains(" (in "),
        "{table}"
    );

    let json_out = expect_code(&durably_cli(&["schedules", "--db", db, "--json"]), 0);
    let list: Value = serde_json::from_str(&json_out).expect("JSON");
    assert_eq!(
        list[0],
        json!({
            "name": "nightly", "jobName": "report", "cron": "0 0 3 * * *",
            "timeZone": "Europe/Paris", "input": {"kind": "nightly"}, "labels": {"team": "ops"},
            "catchUp": "one", "paused": false, "nextFireAt": "2026-06-02T01:00:00.000Z",
            "lastFiredAt": null, "createdAt": "2026-06-01T12:00:00.000Z",
            "updatedAt": "2026-06-01T12:00:00.000Z"
        })
    );

    let out = expect_code(
        &durably_cli(&["schedule", "pause", "nightly", "--db", db]),
        0,
    );
    assert!(out.contains("paused schedule nightly"), "{out}");
    let record = durably.schedules().get("nightly").await.expect("get");
    assert!(record.expect("nightly").paused);
    let table = expect_code(&durably_cli(&["schedules", "--db", db]), 0);
    assert!(
        table.contains("(paused)") && table.contains("yes"),
        "{table}"
    );

    let out = expect_code(
        &durably_cli(&["schedule", "resume", "nightly", "--db", db]),
        0,
    );
    assert!(out.contains("resumed schedule nightly"), "{out}");
    let record = durably.schedules().get("nightly").await.expect("get");
    let record = record.expect("nightly");
    assert!(!record.paused);
    assert!(record.next_fire_at > Timestamp::now());

    // Trigger now without job code: a pending run of the job, the schedule's input and labels.
    let out = expect_code(
        &durably_cli(&["schedule", "trigger", "nightly", "--db", db]),
        0,
    );
    assert!(
        out.contains("triggered schedule nightly: new run "),
        "{out}"
    );
    let runs = durably.get_runs(&RunFilter::new()).await.expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].job_name, "report");
    assert_eq!(runs[0].input, json!({"kind": "nightly"}));
    assert_eq!(
        runs[0].labels.get("durably.schedule").map(String::as_str),
        Some("nightly")
    );
    assert_eq!(runs[0].labels.get("team").map(String::as_str), Some("ops"));
    assert!(!runs[0].labels.contains_key("durably.schedule.slot"));
    assert!(out.contains(&runs[0].id), "{out}");
    // The application's worker runs it.
    durably
        .process_until_idle(None, None)
        .await
        .expect("process");
    let run = durably
        .get_run(&runs[0].id)
        .await
        .expect("run")
        .expect("run");
    assert_eq!(run.output, Some(json!({"kind": "nightly"})));

    // Unknown names exit with 4 and say how to list the schedules.
    for action in ["pause", "resume", "trigger"] {
        let output = durably_cli(&["schedule", action, "nope", "--db", db]);
        expect_code(&output, 4);
        assert!(
            stderr(&output).contains("no such schedule: nope")
                && stderr(&output).contains("durably schedules --db"),
            "{}",
            stderr(&output)
        );
    }
}

#[tokio::test]
async fn an_empty_database_has_no_schedules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("empty.sqlite");
    let durably = Durably::builder().sqlite(&path).build().expect("build");
    durably.migrate().await.expect("migrate");
    let db = path.to_str().expect("utf-8 path");
    let out = expect_code(&durably_cli(&["schedules", "--db", db]), 0);
    assert!(out.starts_with("no schedules in "), "{out}");
    let out = expect_code(&durably_cli(&["schedules", "--db", db, "--json"]), 0);
    assert_eq!(out.trim(), "[]");
}
