//! The operator commands (`runs`, `run`, `cancel`, `delete`, `purge`, `watch`, `serve`) as a
//! user runs them: the real binary against a database prepared through the library.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{durably_cli, expect_code, http, start_serve, stderr};
use durably::{Durably, Job, RunStatus, StepContext, Timestamp, TriggerOptions};
use serde_json::{Value, json};

/// A SQLite file with jobs `work` (steps, progress, a log; fails when input has `fail`) and
/// `wait` (never processed in these tests).
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    durably: Durably,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.sqlite");
        let durably = Durably::builder()
            .sqlite(&path)
            .preserve_steps(true)
            .build()
            .expect("build");
        durably
            .register(Job::new(
                "work",
                |step: StepContext, input: Value| async move {
                    let steps = input["steps"].as_u64().unwrap_or(2);
                    let step_ms = input["stepMs"].as_u64().unwrap_or(0);
                    for i in 0..steps {
                        step.run(&format!("step-{i}"), |_| async move {
                            tokio::time::sleep(Duration::from_millis(step_ms)).await;
                            Ok(i)
                        })
                        .await?;
                        step.progress(i + 1, Some(steps), Some("working")).await?;
                    }
                    step.log().info("all steps done", None).await?;
                    if input["fail"].as_bool() == Some(true) {
                        return Err(durably::Error::Validation("boom: the input said so".into()));
                    }
                    Ok(json!({ "steps": steps }))
                },
            ))
            .expect("register work");
        durably.migrate().await.expect("migrate");
        Fixture {
            _dir: dir,
            path,
            durably,
        }
    }

    fn db(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }

    async fn trigger(&self, job: &str, input: Value, labels: &[(&str, &str)]) -> String {
        let mut options = TriggerOptions::new();
        for (k, v) in labels {
            options = options.label(*k, *v);
        }
        // `wait` is not registered: enqueue it through the store so it stays pending.
        if job != "work" {
            let run = self
                .durably
                .store()
                .enqueue(
                    durably::store::NewRun {
                        job_name: job.to_owned(),
                        input,
                        idempotency_key: None,
                        concurrency_key: None,
                        labels: options.labels.unwrap_or_default(),
                        coalesce: None,
                        ..Default::default()
                    },
                    Timestamp::now(),
                )
                .await
                .expect("enqueue");
            return run.run.id;
        }
        self.durably
            .trigger_json(job, input, options)
            .await
            .expect("trigger")
            .run
            .id
    }

    async fn process(&self) {
        self.durably
            .process_until_idle(None, None)
            .await
            .expect("process");
    }

    async fn status(&self, id: &str) -> Option<RunStatus> {
        self.durably
            .get_run(id)
            .await
            .expect("get run")
            .map(|r| r.status)
    }

    async fn run(&self, id: &str) -> durably::Run {
        self.durably
            .get_run(id)
            .await
            .expect("get run")
            .expect("the run exists")
    }

    async fn run_count(&self) -> usize {
        self.durably
            .get_runs(&durably::RunFilter::new())
            .await
            .expect("list runs")
            .len()
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_lists_filters_and_prints_json() {
    let fx = Fixture::new().await;
    let done = fx
        .trigger("work", json!({ "steps": 2 }), &[("tenant", "acme")])
        .await;
    fx.process().await;
    let failed = fx
        .trigger("work", json!({ "fail": true }), &[("tenant", "globex")])
        .await;
    fx.process().await;
    let pending = fx.trigger("wait", json!({}), &[]).await;

    let table = expect_code(&durably_cli(&["runs", "--db", fx.db()]), 0);
    let header = table.lines().next().expect("a header line");
    for column in [
        "ID",
        "JOB",
        "STATUS",
        "PROGRESS",
        "CREATED",
        "AGE/DURATION",
        "LABELS",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(table.lines().count(), 4, "{table}");
    let line_of = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing:\n{table}"))
            .to_owned()
    };
    assert!(line_of(&done).contains("completed"), "{table}");
    assert!(line_of(&done).contains("2/2 working"), "{table}");
    assert!(line_of(&done).contains("took "), "{table}");
    assert!(line_of(&done).contains("tenant=acme"), "{table}");
    assert!(line_of(&failed).contains("failed"), "{table}");
    assert!(line_of(&pending).contains("waiting "), "{table}");
    // newest first
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&pending))
    );

    let json = json_of(&expect_code(
        &durably_cli(&["runs", "--db", fx.db(), "--json"]),
        0,
    ));
    let ids: Vec<&str> = json
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, [pending.as_str(), failed.as_str(), done.as_str()]);

    let only = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["runs", "--db", fx.db(), "--json"];
        all.extend_from_slice(args);
        json_of(&expect_code(&durably_cli(&all), 0))
            .as_array()
            .expect("an array")
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(only(&["--status", "failed"]), [failed.as_str()]);
    assert_eq!(
        only(&["--status", "failed", "--status", "pending"]),
        [pending.as_str(), failed.as_str()]
    );
    assert_eq!(only(&["--job", "wait"]), [pending.as_str()]);
    assert_eq!(only(&["--label", "tenant=acme"]), [done.as_str()]);
    assert_eq!(only(&["--limit", "1"]), [pending.as_str()]);
    assert_eq!(only(&["--job", "nobody"]), Vec::<String>::new());

    let none = expect_code(
        &durably_cli(&["runs", "--db", fx.db(), "--job", "nobody"]),
        0,
    );
    assert!(none.contains("no runs match"), "{none}");

    let bad = durably_cli(&["runs", "--db", fx.db(), "--status", "done"]);
    expect_code(&bad, 2);
    assert!(
        stderr(&bad).contains(
            "unknown status 'done': use waiting, pending, leased (or running), completed, failed \
             or cancelled"
        ),
        "{}",
        stderr(&bad)
    );
    let bad = durably_cli(&["runs", "--db", fx.db(), "--label", "tenant"]);
    expect_code(&bad, 2);
    assert!(stderr(&bad).contains("KEY=VALUE"), "{}", stderr(&bad));
    // More label filters than a query may combine (durably::Limits): bad arguments too.
    let labels: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let mut args = vec!["runs", "--db", fx.db()];
    for label in &labels {
        args.extend(["--label", label.as_str()]);
    }
    let bad = durably_cli(&args);
    expect_code(&bad, 2);
    assert!(
        stderr(&bad).contains("Too many label filters"),
        "{}",
        stderr(&bad)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_unmigrated_databases_say_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.sqlite");
    let missing = missing.to_str().expect("utf-8");
    // A file in a directory that does not exist: the directory is named.
    let in_missing_dir = dir.path().join("data").join("app.sqlite");
    let in_missing_dir = in_missing_dir.to_str().expect("utf-8");
    let output = durably_cli(&["runs", "--db", in_missing_dir]);
    expect_code(&output, 1);
    assert_eq!(
        stderr(&output),
        format!(
            "error: cannot open database {in_missing_dir}: the directory {} does not exist \
             (check the path)\n",
            dir.path().join("data").display()
        )
    );
    let output = durably_cli(&["runs", "--db", missing]);
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains("cannot open database"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("durably migrate"),
        "{}",
        stderr(&output)
    );
    assert!(
        !Path::new(missing).exists(),
        "runs must not create the file"
    );

    // an empty SQLite file: no schema yet
    let empty = dir.path().join("empty.sqlite");
    std::fs::write(&empty, b"").expect("create");
    let empty = empty.to_str().expect("utf-8");
    let output = durably_cli(&["runs", "--db", empty]);
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains("no durably schema"),
        "{}",
        stderr(&output)
    );
    let migrated = expect_code(&durably_cli(&["migrate", "--db", empty]), 0);
    assert!(migrated.contains("schema version 4"), "{migrated}");
    expect_code(&durably_cli(&["runs", "--db", empty]), 0);
}

/// Databases that cannot be: a URL of a kind durably does not support (exit 2, naming the
/// scheme), a SQLite file in a missing directory (naming the directory, creating nothing), a
/// PostgreSQL server that refuses connections (naming the server, not an internal operation).
#[tokio::test(flavor = "multi_thread")]
async fn unsupported_or_unreachable_databases_are_named() {
    let output = durably_cli(&["runs", "--db", "mysql://app@db/orders"]);
    assert_eq!(
        stderr(&output).trim_end(),
        "error: --db mysql://app@db/orders: durably does not support `mysql://` databases; \
         give a SQLite file path (app.db), a postgres:// URL or a libsql:// URL"
    );
    expect_code(&output, 2);

    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("data");
    let file = missing.join("app.db");
    let output = durably_cli(&["migrate", "--db", file.to_str().expect("utf-8")]);
    assert_eq!(
        stderr(&output).trim_end(),
        format!(
            "error: cannot open the SQLite database {}: the directory {} does not exist \
             (create it first)",
            file.display(),
            missing.display()
        )
    );
    expect_code(&output, 1);
    assert!(!missing.exists(), "nothing created");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let url = format!("postgres://app@127.0.0.1:{port}/orders");
    let output = durably_cli(&["runs", "--db", &url]);
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!(
            "error: cannot connect to PostgreSQL at 127.0.0.1:{port}/orders: error connecting \
             to server: Connection refused"
        )),
        "{message}"
    );
    assert!(!message.contains("schema_version"), "{message}");
    expect_code(&output, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_shows_details_steps_and_logs() {
    let fx = Fixture::new().await;
    let id = fx
        .trigger("work", json!({ "steps": 3 }), &[("tenant", "acme")])
        .await;
    fx.process().await;

    let text = expect_code(&durably_cli(&["run", &id, "--db", fx.db()]), 0);
    for expected in [
        format!("run {id}"),
        "work".into(),
        "completed".into(),
        "tenant=acme".into(),
        "{\"steps\":3}".into(),
        "steps (3 completed)".into(),
        "✓ step-0".into(),
        "✓ step-2".into(),
        "logs (1)".into(),
        "all steps done".into(),
    ] {
        assert!(text.contains(&expected), "{expected:?} missing:\n{text}");
    }

    let json = json_of(&expect_code(
        &durably_cli(&["run", &id, "--db", fx.db(), "--json"]),
        0,
    ));
    assert_eq!(json["run"]["id"], id.as_str());
    assert_eq!(json["run"]["status"], "completed");
    assert_eq!(json["steps"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["logs"][0]["message"], "all steps done");

    let failed = fx.trigger("work", json!({ "fail": true }), &[]).await;
    fx.process().await;
    let text = expect_code(&durably_cli(&["run", &failed, "--db", fx.db()]), 0);
    assert!(text.contains("boom: the input said so"), "{text}");

    let output = durably_cli(&["run", "01NOSUCHRUN", "--db", fx.db()]);
    expect_code(&output, 4);
    assert!(
        stderr(&output).contains("no such run: 01NOSUCHRUN (list runs with `durably runs --db"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_delete_and_purge_change_the_database() {
    let fx = Fixture::new().await;
    let done = fx.trigger("work", json!({}), &[]).await;
    fx.process().await;
    // after processing: a worker would fail a run of the unregistered job `wait`
    let pending = fx.trigger("wait", json!({}), &[]).await;

    // delete refuses an active run and says what to do
    let output = durably_cli(&["delete", &pending, "--db", fx.db()]);
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains("still pending"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("durably cancel"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fx.status(&pending).await, Some(RunStatus::Pending));

    let text = expect_code(&durably_cli(&["cancel", &pending, "--db", fx.db()]), 0);
    assert!(text.contains(&format!("cancelled run {pending}")), "{text}");
    assert_eq!(fx.status(&pending).await, Some(RunStatus::Cancelled));

    // cancelling again, or a completed run, is refused
    let output = durably_cli(&["cancel", &pending, "--db", fx.db()]);
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains("already ended"),
        "{}",
        stderr(&output)
    );
    expect_code(&durably_cli(&["cancel", &done, "--db", fx.db()]), 1);
    expect_code(&durably_cli(&["cancel", "01NOSUCHRUN", "--db", fx.db()]), 4);

    let text = expect_code(&durably_cli(&["delete", &pending, "--db", fx.db()]), 0);
    assert!(text.contains(&format!("deleted run {pending}")), "{text}");
    assert_eq!(fx.status(&pending).await, None);
    expect_code(&durably_cli(&["delete", &pending, "--db", fx.db()]), 4);

    // purge: nothing ended 1 day ago; everything that ended ended before "0 minutes ago"
    let text = expect_code(
        &durably_cli(&["purge", "--older-than", "1d", "--db", fx.db()]),
        0,
    );
    assert!(text.contains("purged 0 runs"), "{text}");
    assert_eq!(fx.status(&done).await, Some(RunStatus::Completed));
    let second = fx.trigger("work", json!({}), &[]).await;
    fx.process().await;
    let still_pending = fx.trigger("wait", json!({}), &[]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let text = expect_code(
        &durably_cli(&[
            "purge",
            "--older-than",
            "0m",
            "--limit",
            "1",
            "--db",
            fx.db(),
        ]),
        0,
    );
    assert!(text.contains("purged 1 run "), "{text}");
    let text = expect_code(
        &durably_cli(&["purge", "--older-than", "0m", "--db", fx.db()]),
        0,
    );
    assert!(text.contains("purged 1 run "), "{text}");
    assert_eq!(fx.status(&done).await, None);
    assert_eq!(fx.status(&second).await, None);
    assert_eq!(fx.status(&still_pending).await, Some(RunStatus::Pending));

    let output = durably_cli(&["purge", "--older-than", "30s", "--db", fx.db()]);
    expect_code(&output, 2);
    assert!(
        stderr(&output).contains("Invalid duration format"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retrigger_queues_a_new_run_of_a_finished_one() {
    let fx = Fixture::new().await;
    let failed = fx
        .trigger("work", json!({ "fail": true }), &[("team", "ops")])
        .await;
    fx.process().await;
    assert_eq!(fx.status(&failed).await, Some(RunStatus::Failed));

    let text = expect_code(&durably_cli(&["retrigger", &failed, "--db", fx.db()]), 0);
    assert!(
        text.contains(&format!("retriggered run {failed}")),
        "{text}"
    );
    let new_id = text
        .split("new run ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the new run's id")
        .to_owned();
    assert_ne!(new_id, failed);
    let (old, new) = (fx.run(&failed).await, fx.run(&new_id).await);
    assert_eq!(new.status, RunStatus::Pending);
    assert_eq!((&new.job_name, &new.input), (&old.job_name, &old.input));
    assert_eq!(new.labels, old.labels);
    assert_eq!(
        old.status,
        RunStatus::Failed,
        "the old run is left as it was"
    );

    // an active run is refused and changes nothing; an unknown id exits with 4
    let output = durably_cli(&["retrigger", &new_id, "--db", fx.db()]);
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains("it is still pending"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fx.run_count().await, 2);
    expect_code(
        &durably_cli(&["retrigger", "01NOSUCHRUN", "--db", fx.db()]),
        4,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_puts_a_failed_run_back_to_pending_under_its_id() {
    let fx = Fixture::new().await;
    let failed = fx.trigger("work", json!({ "fail": true }), &[]).await;
    fx.process().await;
    assert_eq!(fx.status(&failed).await, Some(RunStatus::Failed));
    // `durably run` points at it for a failed run.
    let text = expect_code(&durably_cli(&["run", &failed, "--db", fx.db()]), 0);
    assert!(
        text.contains(&format!("durably resume {failed} --db")),
        "{text}"
    );

    let text = expect_code(&durably_cli(&["resume", &failed, "--db", fx.db()]), 0);
    assert!(
        text.contains(&format!("resumed run {failed} of job work")),
        "{text}"
    );
    let resumed = fx.run(&failed).await;
    assert_eq!(resumed.status, RunStatus::Pending);
    assert_eq!(resumed.error, None);
    assert_eq!(fx.run_count().await, 1, "no new run");

    // The application's worker continues it: its completed steps are replayed (one attempt
    // each); this job fails again after them, as its input says.
    fx.process().await;
    assert_eq!(fx.status(&failed).await, Some(RunStatus::Failed));
    let attempts = fx
        .durably
        .get_step_attempts(&failed)
        .await
        .expect("attempts");
    assert_eq!(
        attempts.len(),
        2,
        "step-0 and step-1 once each: {attempts:?}"
    );

    // a run that is not failed is refused and changes nothing; an unknown id exits with 4
    let pending = fx.trigger("wait", json!({}), &[]).await;
    let output = durably_cli(&["resume", &pending, "--db", fx.db()]);
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains(&format!("cannot resume run {pending}"))
            && stderr(&output).contains("pending, not failed"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fx.status(&pending).await, Some(RunStatus::Pending));
    expect_code(&durably_cli(&["resume", "01NOSUCHRUN", "--db", fx.db()]), 4);
}

/// `durably run` says why a waiting run waits and until when, with the command that starts it
/// now; `durably wake` starts a delayed run now and refuses a run waiting for a signal.
#[tokio::test(flavor = "multi_thread")]
async fn wake_starts_a_delayed_run_now_and_run_says_why_a_run_waits() {
    let fx = Fixture::new().await;
    let delayed = fx
        .durably
        .trigger_json(
            "work",
            json!({}),
            TriggerOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .expect("trigger")
        .run
        .id;
    let text = expect_code(&durably_cli(&["run", &delayed, "--db", fx.db()]), 0);
    assert!(text.contains("why waiting: delayed until 20"), "{text}");
    assert!(
        text.contains(&format!("durably wake {delayed} --db")),
        "{text}"
    );

    let text = expect_code(&durably_cli(&["wake", &delayed, "--db", fx.db()]), 0);
    assert!(
        text.contains(&format!("woke run {delayed} of job work")),
        "{text}"
    );
    fx.process().await;
    assert_eq!(fx.status(&delayed).await, Some(RunStatus::Completed));

    // A completed run, a run waiting for a signal: refused (exit 1); an unknown id: 4.
    let output = durably_cli(&["wake", &delayed, "--db", fx.db()]);
    expect_code(&output, 1);
    assert!(stderr(&output).contains("completed"), "{}", stderr(&output));
    let (approval, _) = waiting_approval(&fx, json!({})).await;
    let text = expect_code(&durably_cli(&["run", &approval, "--db", fx.db()]), 0);
    assert!(
        text.contains("why waiting: waiting for the signal approval")
            && text.contains(&format!("durably signal {approval} approval --db")),
        "{text}"
    );
    let output = durably_cli(&["wake", &approval, "--db", fx.db()]);
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains(&format!("cannot wake run {approval}"))
            && stderr(&output).contains("signal approval"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fx.status(&approval).await, Some(RunStatus::Waiting));
    expect_code(&durably_cli(&["wake", "01NOSUCHRUN", "--db", fx.db()]), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_exit_codes_follow_the_outcome() {
    let fx = Fixture::new().await;
    let done = fx.trigger("work", json!({ "steps": 2 }), &[]).await;
    fx.process().await;
    let failed = fx.trigger("work", json!({ "fail": true }), &[]).await;
    fx.process().await;
    let cancelled = fx.trigger("wait", json!({}), &[]).await;
    fx.durably.cancel(&cancelled).await.expect("cancel");

    let text = expect_code(&durably_cli(&["watch", &done, "--db", fx.db()]), 0);
    assert!(text.contains("completed"), "{text}");
    assert!(text.contains("output: {\"steps\":2}"), "{text}");
    let text = expect_code(&durably_cli(&["watch", &failed, "--db", fx.db()]), 1);
    assert!(
        text.contains("failed") && text.contains("boom: the input said so"),
        "{text}"
    );
    let text = expect_code(&durably_cli(&["watch", &cancelled, "--db", fx.db()]), 3);
    assert!(text.contains("cancelled"), "{text}");
    let output = durably_cli(&["watch", "01NOSUCHRUN", "--db", fx.db()]);
    expect_code(&output, 4);
    assert!(
        stderr(&output).contains("no such run"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_follows_a_run_executed_by_another_process() {
    let fx = Fixture::new().await;
    let id = fx
        .trigger("work", json!({ "steps": 3, "stepMs": 250 }), &[])
        .await;
    let watcher = Command::new(env!("CARGO_BIN_EXE_durably"))
        .args(["watch", &id, "--db", fx.db(), "--interval-ms", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start watch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    fx.process().await;
    let output = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .expect("join")
        .expect("watch output");
    let text = expect_code(&output, 0);
    assert!(text.contains("pending: waiting for a worker"), "{text}");
    for step in ["✓ step-0", "✓ step-1", "✓ step-2"] {
        assert!(text.contains(step), "{step} missing:\n{text}");
    }
    assert!(text.contains("/3"), "a progress line is missing:\n{text}");
    assert!(text.contains("completed"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_triggers_and_serves_everything_else() {
    let fx = Fixture::new().await;
    let done = fx.trigger("work", json!({}), &[]).await;
    fx.process().await;
    let pending = fx.trigger("wait", json!({}), &[]).await;
    let db = fx.db().to_owned();
    let server = tokio::task::spawn_blocking(move || start_serve(&db))
        .await
        .expect("join");
    let address = server.address;
    let api = "/api/durably";

    let results = tokio::task::spawn_blocking(move || {
        let trigger = http(
            address,
            "POST",
            &format!("{api}/trigger"),
            Some(&json!({ "jobName": "work", "input": {} })),
        );
        let retrigger = http(
            address,
            "POST",
            &format!("{api}/retrigger?runId={done}"),
            None,
        );
        let runs = http(address, "GET", &format!("{api}/runs"), None);
        let run = http(address, "GET", &format!("{api}/run?runId={done}"), None);
        let steps = http(address, "GET", &format!("{api}/steps?runId={done}"), None);
        let jobs = http(address, "GET", &format!("{api}/jobs"), None);
        let page = http(address, "GET", "/", None);
        let cancel = http(
            address,
            "POST",
            &format!("{api}/cancel?runId={pending}"),
            None,
        );
        let delete = http(
            address,
            "DELETE",
            &format!("{api}/run?runId={pending}"),
            None,
        );
        let bad_trigger = http(address, "POST", &format!("{api}/trigger"), Some(&json!({})));
        (
            trigger,
            retrigger,
            runs,
            run,
            steps,
            jobs,
            page,
            cancel,
            delete,
            bad_trigger,
        )
    })
    .await
    .expect("join");
    let (trigger, retrigger, runs, run, steps, jobs, page, cancel, delete, bad_trigger) = results;

    assert_eq!(trigger.0, 501, "{trigger:?}");
    assert_eq!(
        json_of(&trigger.2)["error"],
        "durably serve has no job definitions: trigger runs from the application that registers job \"work\""
    );
    assert_eq!(retrigger.0, 501, "{retrigger:?}");
    assert!(
        json_of(&retrigger.2)["error"]
            .as_str()
            .is_some_and(|e| e.contains("retrigger run") && e.contains("job \"work\"")),
        "{retrigger:?}"
    );
    assert_eq!(runs.0, 200, "{runs:?}");
    assert_eq!(
        json_of(&runs.2).as_array().map(Vec::len),
        Some(2),
        "{runs:?}"
    );
    assert_eq!(run.0, 200, "{run:?}");
    assert_eq!(json_of(&run.2)["status"], "completed");
    assert_eq!(steps.0, 200, "{steps:?}");
    assert_eq!(json_of(&jobs.2), json!([]));
    assert_eq!(page.0, 200, "{page:?}");
    assert!(page.1.starts_with("text/html"), "{page:?}");
    assert!(page.2.to_ascii_lowercase().contains("<html"), "{}", page.2);
    assert_eq!(cancel.0, 200, "{cancel:?}");
    assert_eq!(delete.0, 200, "{delete:?}");
    assert_eq!(bad_trigger.0, 400, "{bad_trigger:?}");
    // the server claimed nothing: the pending run was cancelled (then deleted) by us
    drop(server);
}

/// Opens an SSE stream and returns its reader (after the response head).
fn open_sse(address: SocketAddr, path: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").expect("write request");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("read head");
        if line == "\r\n" || line.is_empty() {
            return reader;
        }
    }
}

/// Reads SSE `data:` lines until one has `"type":"<until>"`; returns the event types seen.
fn sse_types_until(reader: &mut BufReader<TcpStream>, until: &str) -> Vec<String> {
    let mut types = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => panic!("the stream ended before {until}: {types:?}"),
            Ok(_) => {}
            Err(error) => panic!("no {until} within the timeout ({error}): {types:?}"),
        }
        let Some(data) = line.trim().strip_prefix("data:") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        let Some(kind) = event["type"].as_str() else {
            continue;
        };
        types.push(kind.to_owned());
        if kind == until {
            return types;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_streams_changes_made_by_other_processes() {
    let fx = Fixture::new().await;
    let db = fx.db().to_owned();
    let server = tokio::task::spawn_blocking(move || start_serve(&db))
        .await
        .expect("join");
    let address = server.address;
    let mut all =
        tokio::task::spawn_blocking(move || open_sse(address, "/api/durably/runs/subscribe"))
            .await
            .expect("join");
    // let serve take its first snapshot, then work in this process (another process for serve)
    tokio::time::sleep(Duration::from_millis(400)).await;
    let id = fx
        .trigger("work", json!({ "steps": 3, "stepMs": 400 }), &[])
        .await;
    let mut one = tokio::task::spawn_blocking(move || {
        open_sse(address, &format!("/api/durably/subscribe?runId={id}"))
    })
    .await
    .expect("join");
    fx.process().await;
    let (all_types, one_types) = tokio::task::spawn_blocking(move || {
        (
            sse_types_until(&mut all, "run:complete"),
            sse_types_until(&mut one, "run:complete"),
        )
    })
    .await
    .expect("join");
    for expected in ["run:trigger", "run:leased", "run:progress"] {
        assert!(
            all_types.iter().any(|t| t == expected),
            "{expected}: {all_types:?}"
        );
    }
    assert!(
        one_types.iter().any(|t| t == "run:progress"),
        "{one_types:?}"
    );
    assert!(
        one_types.iter().any(|t| t == "step:complete"),
        "{one_types:?}"
    );
    // The mirror relays each change once: the run stream does not follow the run itself too.
    let count = |kind: &str| one_types.iter().filter(|t| *t == kind).count();
    assert!(count("step:complete") <= 3, "{one_types:?}");
    assert!(count("run:leased") <= 1, "{one_types:?}");
    drop(server);
}

/// Drops a PostgreSQL test schema when dropped (best effort, on a thread of its own).
struct PgSchema {
    url: String,
    name: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.batch_execute(&format!(
                        "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                    )),
                )
                .await;
            });
        });
        let _ = dropper.join();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL smoke test"
)]
async fn runs_works_on_postgres() {
    let url = std::env::var("DURABLY_TEST_POSTGRES_URL").expect("DURABLY_TEST_POSTGRES_URL");
    let schema = PgSchema {
        url: url.clone(),
        name: format!("durably_cli_test_{}", durably::new_id().to_lowercase()),
    };
    let store = durably::PostgresStore::connect_with(
        &url,
        durably::PostgresOptions::default()
            .max_connections(2)
            .schema(Some(schema.name.clone())),
    )
    .expect("connect");
    let durably = Durably::builder().store(store).build().expect("build");
    durably.migrate().await.expect("migrate");
    let run = durably
        .store()
        .enqueue(
            durably::store::NewRun {
                job_name: "pg-job".into(),
                input: json!({ "n": 1 }),
                idempotency_key: None,
                concurrency_key: None,
                labels: [("tenant".to_owned(), "acme".to_owned())].into(),
                coalesce: None,
                ..Default::default()
            },
            Timestamp::now(),
        )
        .await
        .expect("enqueue")
        .run;

    let (db, name) = (url.clone(), schema.name.clone());
    let output = tokio::task::spawn_blocking(move || {
        let json = durably_cli(&[
            "runs",
            "--db",
            &db,
            "--schema",
            &name,
            "--label",
            "tenant=acme",
            "--json",
        ]);
        let table = durably_cli(&["runs", "--db", &db, "--schema", &name]);
        (json, table)
    })
    .await
    .expect("join");
    let json = json_of(&expect_code(&output.0, 0));
    assert_eq!(json[0]["id"], run.id.as_str());
    assert_eq!(json[0]["jobName"], "pg-job");
    let table = expect_code(&output.1, 0);
    assert!(
        table.contains(&run.id) && table.contains("pending"),
        "{table}"
    );
    drop(durably);
    drop(schema);
}

/// Registers `approval` (one wait named `approval`, with `timeoutMs` from the input), triggers
/// it and processes it until it is suspended; returns the run id and the wait id.
async fn waiting_approval(fx: &Fixture, input: Value) -> (String, String) {
    if fx.durably.get_job("approval").is_none() {
        fx.durably
            .register(Job::new(
                "approval",
                |step: StepContext, input: Value| async move {
                    let mut wait = durably::NewWait::new("approval");
                    if let Some(ms) = input["timeoutMs"].as_u64() {
                        wait = wait.timeout_ms(ms);
                    }
                    let wait = step.prepare_wait(wait).await?;
                    Ok(match step.wait_for(&wait).await? {
                        durably::WaitResult::Signal { payload } => json!({ "signal": payload }),
                        _ => json!({ "timedOut": true }),
                    })
                },
            ))
            .expect("register approval");
    }
    let id = fx
        .durably
        .trigger_json("approval", input, TriggerOptions::new())
        .await
        .expect("trigger")
        .run
        .id;
    fx.process().await;
    assert_eq!(fx.status(&id).await, Some(RunStatus::Waiting));
    let waits = fx.durably.get_waits(&id).await.expect("waits");
    (id, waits[0].id.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn waits_lists_and_signal_resolves_a_runs_waits() {
    let fx = Fixture::new().await;
    let (id, wait) = waiting_approval(&fx, json!({})).await;

    let text = expect_code(&durably_cli(&["waits", &id, "--db", fx.db()]), 0);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for column in ["NAME", "STATUS", "OUTCOME", "DEADLINE", "SIGNAL ID", "ID"] {
        assert!(lines[0].contains(column), "{text}");
    }
    assert!(lines[1].starts_with("approval  pending"), "{text}");
    assert!(lines[1].ends_with(&wait), "{text}");
    let json = json_of(&expect_code(
        &durably_cli(&["waits", &id, "--db", fx.db(), "--json"]),
        0,
    ));
    assert_eq!(json[0]["id"], wait.as_str());
    assert_eq!(json[0]["status"], "pending");
    let text = expect_code(&durably_cli(&["run", &id, "--db", fx.db()]), 0);
    assert!(text.contains("waits (1)"), "{text}");
    assert!(text.contains("suspended"), "{text}");
    assert!(
        text.contains(&format!("approval pending (wait {wait})")),
        "{text}"
    );

    let signal = |payload: &str, signal_id: &str, json: bool| {
        let mut args = vec![
            "signal",
            &id,
            "approval",
            "--db",
            fx.db(),
            "--payload",
            payload,
            "--signal-id",
            signal_id,
        ];
        if json {
            args.push("--json");
        }
        durably_cli(&args)
    };
    let text = expect_code(&signal(r#"{"approved": true}"#, "sig-1", false), 0);
    assert!(
        text.starts_with("accepted: signal sig-1 resolved wait"),
        "{text}"
    );
    let json = json_of(&expect_code(
        &signal(r#"{"approved":true}"#, "sig-1", true),
        0,
    ));
    assert_eq!(json["disposition"], "duplicate");
    assert_eq!(json["wait"]["payload"], json!({"approved": true}));
    let text = expect_code(&signal(r#"{"approved": true}"#, "sig-1", false), 0);
    assert!(text.starts_with("duplicate:"), "{text}");

    // Another signal: refused by the wait's state (1).
    let output = signal("false", "sig-2", false);
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains(&format!(
            "cannot signal wait {wait}: it no longer accepts signals"
        )),
        "{}",
        stderr(&output)
    );

    // The run resumes and completes with the payload.
    fx.process().await;
    let run = fx.run(&id).await;
    assert_eq!(run.output, Some(json!({"signal": {"approved": true}})));
    let text = expect_code(&durably_cli(&["waits", &id, "--db", fx.db()]), 0);
    assert!(text.contains("resolved  signal"), "{text}");
    assert!(text.contains("sig-1"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn signal_errors_have_clear_messages_and_exit_codes() {
    let fx = Fixture::new().await;
    let (id, wait) = waiting_approval(&fx, json!({"timeoutMs": 50})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let output = durably_cli(&[
        "signal",
        &id,
        &wait,
        "--db",
        fx.db(),
        "--payload",
        "1",
        "--signal-id",
        "late",
    ]);
    expect_code(&output, 1);
    assert!(
        stderr(&output).contains(&format!("cannot signal wait {wait}: its deadline passed")),
        "{}",
        stderr(&output)
    );

    let output = durably_cli(&[
        "signal",
        &id,
        "01NOSUCHWAIT",
        "--db",
        fx.db(),
        "--payload",
        "1",
        "--signal-id",
        "s",
    ]);
    expect_code(&output, 4);
    assert!(
        stderr(&output).contains(&format!(
            "no wait 01NOSUCHWAIT in run {id} (list the run's waits with `durably waits {id} --db"
        )),
        "{}",
        stderr(&output)
    );
    let output = durably_cli(&[
        "signal",
        "01NOSUCHRUN",
        "approval",
        "--db",
        fx.db(),
        "--payload",
        "1",
    ]);
    expect_code(&output, 4);
    assert!(
        stderr(&output).contains("no such run: 01NOSUCHRUN"),
        "{}",
        stderr(&output)
    );

    // Bad arguments: 2.
    for (payload, signal_id) in [("{not json", "s"), ("1", " ")] {
        let output = durably_cli(&[
            "signal",
            &id,
            &wait,
            "--db",
            fx.db(),
            "--payload",
            payload,
            "--signal-id",
            signal_id,
        ]);
        expect_code(&output, 2);
    }
    let output = durably_cli(&["signal", &id, &wait, "--db", fx.db(), "--signal-id", "s"]);
    expect_code(&output, 2);

    // `waits` of an unknown run: 4; of a run without waits: a sentence.
    let output = durably_cli(&["waits", "01NOSUCHRUN", "--db", fx.db()]);
    expect_code(&output, 4);
    assert!(
        stderr(&output).contains("no such run: 01NOSUCHRUN"),
        "{}",
        stderr(&output)
    );
    let plain = fx.trigger("work", json!({}), &[]).await;
    let text = expect_code(&durably_cli(&["waits", &plain, "--db", fx.db()]), 0);
    assert!(text.contains("has no waits"), "{text}");

    // The timed-out run finishes as timed out.
    fx.process().await;
    assert_eq!(fx.run(&id).await.output, Some(json!({"timedOut": true})));
}

/// A SQLite file holding run `fan` (failed) and its 7 child runs of `leaf` invoked with
/// `step.invoke_all` (the third child failed, the others completed). Returns the temp dir, the
/// database path, the parent id and the child ids in the order they were invoked.
async fn parent_with_children() -> (tempfile::TempDir, String, String, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tree.sqlite");
    let durably = Durably::builder().sqlite(&path).build().expect("build");
    let leaf = durably
        .register(Job::new(
            "leaf",
            |_step: StepContext, input: Value| async move {
                if input == json!(3) {
                    return Err(durably::Error::Validation("leaf 3 fails".into()));
                }
                Ok(input)
            },
        ))
        .expect("register leaf");
    let fan = durably
        .register(Job::new("fan", move |step: StepContext, _input: Value| {
            let leaf = leaf.clone();
            async move {
                let inputs = (1..=7).map(|i| json!(i)).collect();
                let outputs = step.invoke_all("leaves", &leaf, inputs).await?;
                Ok(json!(outputs.len()))
            }
        }))
        .expect("register fan");
    durably.migrate().await.expect("migrate");
    let parent = fan.trigger(json!({})).await.expect("trigger fan").run.id;
    for _ in 0..20 {
        durably
            .process_until_idle(None, None)
            .await
            .expect("process");
        let run = durably.get_run(&parent).await.expect("get").expect("run");
        if run.status.is_terminal() {
            break;
        }
    }
    let parent_run = durably.get_run(&parent).await.expect("get").expect("run");
    assert_eq!(
        parent_run.status,
        RunStatus::Failed,
        "{:?}",
        parent_run.error
    );
    let mut children = durably.get_children(&parent).await.expect("children");
    children.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    assert_eq!(children.len(), 7);
    let failed: Vec<&Value> = children
        .iter()
        .filter(|c| c.status == RunStatus::Failed)
        .map(|c| &c.input)
        .collect();
    assert_eq!(failed, [&json!(3)]);
    let ids = children.into_iter().map(|c| c.id).collect();
    durably.stop().await;
    let db = path.to_str().expect("utf-8 temp path").to_owned();
    (dir, db, parent, ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_parent_lists_children_and_run_shows_the_tree() {
    let (_dir, db, parent, children) = parent_with_children().await;

    // `runs --parent`: the 7 children, not the parent; filters combine with it
    let text = expect_code(&durably_cli(&["runs", "--parent", &parent, "--db", &db]), 0);
    assert_eq!(text.lines().count(), 1 + 7, "{text}");
    for id in &children {
        assert!(text.contains(id.as_str()), "{id} missing:\n{text}");
    }
    assert!(!text.contains(parent.as_str()), "{text}");
    assert!(!text.contains("fan"), "{text}");
    let failed = json_of(&expect_code(
        &durably_cli(&[
            "runs", "--parent", &parent, "--status", "failed", "--json", "--db", &db,
        ]),
        0,
    ));
    let failed = failed.as_array().expect("array");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], children[2].as_str());
    assert_eq!(failed[0]["parentRunId"], parent.as_str());
    // a run without children, and an unknown parent (exit 4)
    let text = expect_code(
        &durably_cli(&["runs", "--parent", &children[0], "--db", &db]),
        0,
    );
    assert_eq!(
        text.trim(),
        format!("no child runs of run {} match", children[0])
    );
    let output = durably_cli(&["runs", "--parent", "01NOSUCHRUN", "--db", &db]);
    expect_code(&output, 4);
    assert!(
        stderr(&output).contains("no such run: 01NOSUCHRUN"),
        "{}",
        stderr(&output)
    );

    // `run PARENT`: the count per status, the first 5 children in invoke order, how to list all
    let text = expect_code(&durably_cli(&["run", &parent, "--db", &db]), 0);
    assert!(
        text.contains("children (7: 6 completed, 1 failed)\n"),
        "{text}"
    );
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("children ("))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(listed.len(), 6, "{text}");
    for (line, id) in listed.iter().zip(&children[..5]) {
        assert!(
            line.starts_with(&format!("  {id} leaf ")),
            "{line:?} for {id}"
        );
    }
    assert!(listed[2].contains(" failed "), "{}", listed[2]);
    assert_eq!(listed[5], "  … and 2 more");
    assert!(
        text.contains(&format!(
            "`durably runs --parent {parent} --db {db} --limit 0`"
        )),
        "{text}"
    );
    assert!(!text.contains("  parent "), "{text}");

    // `run CHILD`: its parent's id, job and status; no children section
    let text = expect_code(&durably_cli(&["run", &children[2], "--db", &db]), 0);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("parent "))
        .unwrap_or_else(|| panic!("no parent line:\n{text}"));
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["parent", &parent, "(job", "fan,", "failed)"]
    );
    assert!(!text.contains("children ("), "{text}");

    // the HTTP API that the dashboard reads: GET /runs?parentRunId=
    let served = db.clone();
    let server = tokio::task::spawn_blocking(move || start_serve(&served))
        .await
        .expect("join");
    let address = server.address;
    let (listed, nul) = tokio::task::spawn_blocking(move || {
        let api = "/api/durably";
        let listed = http(
            address,
            "GET",
            &format!("{api}/runs?parentRunId={parent}&status=completed"),
            None,
        );
        let nul = http(
            address,
            "GET",
            &format!("{api}/runs?parentRunId=a%00b"),
            None,
        );
        (listed, nul)
    })
    .await
    .expect("join");
    assert_eq!(listed.0, 200, "{}", listed.2);
    let listed = json_of(&listed.2);
    let mut ids: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    let mut completed: Vec<&str> = children
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, id)| id.as_str())
        .collect();
    completed.sort_unstable();
    assert_eq!(ids, completed);
    assert_eq!(nul.0, 400, "{}", nul.2);
}

/// `durably bench --metrics` records the engine's metrics while it measures (to measure what
/// recording costs): every completed run is counted.
#[test]
fn bench_records_metrics_when_asked() {
    let output = durably_cli(&[
        "bench",
        "--workload",
        "throughput-1step",
        "--concurrency",
        "1",
        "--jobs",
        "25",
        "--metrics",
    ]);
    let line: serde_json::Value =
        serde_json::from_str(expect_code(&output, 0).trim()).expect("one JSON line");
    assert_eq!(line["jobs"], 25);
    assert_eq!(
        stderr(&output).lines().last(),
        Some("metrics: 25 run completions recorded")
    );
}

/// `durably bench --traces` turns durably's spans into OpenTelemetry spans while it measures
/// (to measure what tracing costs): per run, its trigger's span, its execution's and its step's
/// reach the (discarding) exporter.
#[test]
fn bench_traces_when_asked() {
    let output = durably_cli(&[
        "bench",
        "--workload",
        "throughput-1step",
        "--concurrency",
        "1",
        "--jobs",
        "20",
        "--traces",
    ]);
    let line: serde_json::Value =
        serde_json::from_str(expect_code(&output, 0).trim()).expect("one JSON line");
    assert_eq!(line["jobs"], 20);
    let last = stderr(&output)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let spans: u64 = last
        .strip_prefix("traces: ")
        .and_then(|rest| rest.strip_suffix(" spans exported"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count of exported spans, got {last:?}"));
    // A batch trigger is one span; each run adds its execution's and its step's.
    assert!(spans >= 2 * 20, "{spans} spans for 20 runs");
}
