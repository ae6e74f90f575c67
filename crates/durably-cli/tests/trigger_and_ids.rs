//! `durably trigger`, run ids given by a unique part, `--status running` and a busy port, as a
//! user meets them: the real binary against a database prepared through the store (no job
//! code: the command has none either).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{durably_cli, expect_code, stderr};
use durably::store::{ClaimRequest, Fence, NewRun, Transition};
use durably::{Durably, Run, RunFilter, RunStatus, Timestamp};
use serde_json::{Value, json};

/// A migrated SQLite file, and the library on it (no job registered, no worker).
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

    /// Enqueues a pending run through the store, as another process would.
    async fn enqueue(&self, job: &str, parent: Option<&str>) -> Run {
        self.durably
            .store()
            .enqueue(
                NewRun {
                    job_name: job.into(),
                    input: json!({}),
                    parent_run_id: parent.map(str::to_owned),
                    ..Default::default()
                },
                Timestamp::now(),
            )
            .await
            .expect("enqueue")
            .run
    }

    /// Claims the oldest claimable run, as a worker would.
    async fn claim(&self) -> Run {
        let request = ClaimRequest::new("test-worker", Duration::from_secs(60), 1);
        let mut claimed = self
            .durably
            .store()
            .claim(&request, Timestamp::now())
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "one run claimed");
        claimed.remove(0)
    }

    /// Ends a claimed run as its worker would.
    async fn finish(&self, run: &Run, transition: Transition) {
        let finished = self
            .durably
            .store()
            .finish_run(&Fence::of(run), transition, Timestamp::now(), None)
            .await
            .expect("finish");
        assert!(finished.landed);
    }

    async fn runs(&self) -> Vec<Run> {
        self.durably
            .get_runs(&RunFilter::new())
            .await
            .expect("runs")
    }

    async fn run(&self, id: &str) -> Run {
        self.durably
            .get_run(id)
            .await
            .expect("get")
            .expect("the run exists")
    }
}

// ---------------------------------------------------------------------------------------------
// durably trigger

#[tokio::test(flavor = "multi_thread")]
async fn trigger_enqueues_a_run_for_the_applications_workers() {
    let fx = Fixture::new().await;
    let output = durably_cli(&[
        "trigger",
        "send-email",
        "--db",
        fx.db(),
        "--input",
        r#"{"to": "ada@example.com"}"#,
        "--label",
        "tenant=acme",
        "--label",
        "region=eu",
        "--idempotency-key",
        "welcome-ada",
        "--concurrency-key",
        "ada",
        "--priority",
        "-3",
    ]);
    let out = expect_code(&output, 0);
    let runs = fx.runs().await;
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(
        out,
        format!(
            "triggered job send-email: run {} (pending; the application's workers run it)\n",
            run.id
        )
    );
    assert_eq!(
        stderr(&output),
        format!(
            "note: {} had no run of job \"send-email\" before this one: check the name (a worker \
             whose application does not register the job fails the run as an unknown job)\n",
            fx.db()
        )
    );
    assert_eq!(run.job_name, "send-email");
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(run.input, json!({"to": "ada@example.com"}));
    assert_eq!(run.labels.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(run.labels.get("region").map(String::as_str), Some("eu"));
    assert_eq!(run.idempotency_key.as_deref(), Some("welcome-ada"));
    assert_eq!(run.concurrency_key.as_deref(), Some("ada"));
    assert_eq!(run.priority, -3);

    // The same idempotency key again: the first run, nothing new, no note (the job is known).
    let output = durably_cli(&[
        "trigger",
        "send-email",
        "--db",
        fx.db(),
        "--input",
        "{}",
        "--idempotency-key",
        "welcome-ada",
    ]);
    assert_eq!(
        expect_code(&output, 0),
        format!(
            "triggered job send-email: existing run {} (idempotency key welcome-ada already used; \
             pending): nothing new enqueued\n",
            run.id
        )
    );
    assert_eq!(stderr(&output), "");
    assert_eq!(fx.runs().await.len(), 1);

    // --json: the run id, the disposition and the run.
    let output = durably_cli(&[
        "trigger",
        "send-email",
        "--db",
        fx.db(),
        "--input",
        "null",
        "--json",
    ]);
    let answer: Value = serde_json::from_str(&expect_code(&output, 0)).expect("JSON");
    assert_eq!(answer["disposition"], "created");
    let id = answer["runId"].as_str().expect("runId");
    assert_eq!(answer["run"]["id"], id);
    assert_eq!(answer["run"]["input"], Value::Null);
    assert_eq!(fx.run(id).await.status, RunStatus::Pending);
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_refuses_bad_arguments_and_stores_nothing() {
    let fx = Fixture::new().await;
    let cases: [(&[&str], &str); 8] = [
        (
            &["--input", "@/no/such/input.json"],
            "error: invalid value '@/no/such/input.json' for '--input <JSON>': cannot read the \
             input file /no/such/input.json: No such file or directory (os error 2); give a \
             readable JSON file",
        ),
        (
            &["--input", "@Cargo.toml"],
            "error: invalid value '@Cargo.toml' for '--input <JSON>': the input file Cargo.toml \
             is not JSON (expected value at line 1 column 2)",
        ),
        (
            &["--input", "{to: 1}"],
            "error: invalid value '{to: 1}' for '--input <JSON>': not JSON (key must be a string \
             at line 1 column 2); give a JSON value, e.g. '{\"orderId\": 42}', and quote strings: \
             '\"text\"', or @FILE for a file's JSON",
        ),
        (
            &["--input", "hello"],
            "error: invalid value 'hello' for '--input <JSON>': not JSON (expected value at line \
             1 column 1); give a JSON value, e.g. '{\"orderId\": 42}', and quote strings: \
             '\"text\"', or @FILE for a file's JSON",
        ),
        (
            &["--input", "{}", "--label", "tenant"],
            "error: invalid value 'tenant' for '--label <KEY=VALUE>': expected KEY=VALUE (e.g. \
             tenant=acme), got 'tenant'",
        ),
        (
            &["--input", "{}", "--delay", "5 minutes"],
            "error: invalid value '5 minutes' for '--delay <DURATION>': invalid duration '5 \
             minutes': give a whole number followed by ms, s, m, h or d, e.g. 90s, 5m, 2h",
        ),
        (
            &["--input", "{}", "--coalesce", "merge"],
            "error: invalid value 'merge' for '--coalesce <MODE>': unknown mode 'merge': use \
             skip, queue or active",
        ),
        (
            &["--input", "{}", "--idempotency-key", ""],
            "error: --idempotency-key is empty: give a key, or leave the option out",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec!["trigger", "work", "--db", fx.db()];
        args.extend_from_slice(extra);
        let output = durably_cli(&args);
        expect_code(&output, 2);
        let text = stderr(&output);
        assert_eq!(text.lines().next().unwrap_or(""), message, "{text}");
    }
    // --input is required
    let output = durably_cli(&["trigger", "work", "--db", fx.db()]);
    expect_code(&output, 2);
    assert!(
        stderr(&output).contains("--input <JSON>"),
        "{}",
        stderr(&output)
    );
    assert!(fx.runs().await.is_empty(), "nothing stored");
}

/// `--input @FILE` reads the input from a file, `--input @-` from standard input (as curl's
/// `--data @FILE`).
#[tokio::test(flavor = "multi_thread")]
async fn trigger_reads_its_input_from_a_file_or_standard_input() {
    let fx = Fixture::new().await;
    let file = fx.path.with_file_name("order.json");
    std::fs::write(&file, r#"{"orderId": 42, "items": ["a", "b"]}"#).expect("write input file");
    let at_file = format!("@{}", file.display());
    let output = durably_cli(&[
        "trigger",
        "ship",
        "--db",
        fx.db(),
        "--input",
        &at_file,
        "--json",
    ]);
    let answer: Value = serde_json::from_str(&expect_code(&output, 0)).expect("JSON");
    let id = answer["runId"].as_str().expect("runId");
    assert_eq!(
        fx.run(id).await.input,
        json!({"orderId": 42, "items": ["a", "b"]})
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_durably"))
        .args([
            "trigger",
            "ship",
            "--db",
            fx.db(),
            "--input",
            "@-",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start durably trigger");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(br#"{"orderId": 43}"#)
            .expect("write standard input");
    }
    let output = child.wait_with_output().expect("durably trigger ends");
    let answer: Value = serde_json::from_str(&expect_code(&output, 0)).expect("JSON");
    let id = answer["runId"].as_str().expect("runId");
    assert_eq!(fx.run(id).await.input, json!({"orderId": 43}));
    assert_eq!(fx.runs().await.len(), 2);
}

/// `--debounce KEY --debounce-period D`: a second trigger with the key pushes the first run's
/// start back instead of enqueueing another.
#[tokio::test(flavor = "multi_thread")]
async fn trigger_debounces_by_a_key() {
    let fx = Fixture::new().await;
    let debounced = |extra: &[&str]| {
        let mut args = vec![
            "trigger",
            "reindex",
            "--db",
            fx.db(),
            "--input",
            "{}",
            "--debounce",
            "doc-42",
            "--debounce-period",
            "1h",
        ];
        args.extend_from_slice(extra);
        durably_cli(&args)
    };
    let first = expect_code(&debounced(&[]), 0);
    let runs = fx.runs().await;
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(
        run.status,
        RunStatus::Waiting,
        "a debounced run waits for its period"
    );
    assert!(
        first.starts_with(&format!(
            "triggered job reindex: run {} (waiting until ",
            run.id
        )),
        "{first}"
    );

    let answer: Value =
        serde_json::from_str(&expect_code(&debounced(&["--json"]), 0)).expect("JSON");
    assert_eq!(answer["disposition"], "debounced");
    assert_eq!(answer["runId"], run.id.as_str());
    let again = expect_code(&debounced(&[]), 0);
    assert!(
        again.starts_with(&format!(
            "triggered job reindex: existing run {} (debounce key doc-42; its start pushed back \
             to ",
            run.id
        )),
        "{again}"
    );
    assert!(again.ends_with(" UTC): nothing new enqueued\n"), "{again}");
    assert_eq!(
        fx.runs().await.len(),
        1,
        "one run, however often it is triggered"
    );

    // Refused before anything is stored: with --delay, without a period, an empty key.
    for (extra, message) in [
        (
            &[
                "trigger",
                "reindex",
                "--input",
                "{}",
                "--debounce",
                "k",
                "--debounce-period",
                "5s",
                "--delay",
                "1m",
            ][..],
            "error: the argument '--debounce <KEY>' cannot be used with '--delay <DURATION>'",
        ),
        (
            &["trigger", "reindex", "--input", "{}", "--debounce", "k"][..],
            "error: the following required arguments were not provided:",
        ),
        (
            &[
                "trigger",
                "reindex",
                "--input",
                "{}",
                "--debounce",
                "",
                "--debounce-period",
                "5s",
            ][..],
            "error: --debounce is empty: give a key, or leave the option out",
        ),
        (
            &[
                "trigger",
                "reindex",
                "--input",
                "{}",
                "--debounce",
                "k",
                "--debounce-period",
                "0s",
            ][..],
            "error: --debounce-period is 0: give a period of at least 1ms",
        ),
    ] {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--db", fx.db()]);
        let output = durably_cli(&args);
        expect_code(&output, 2);
        let text = stderr(&output);
        assert_eq!(text.lines().next().unwrap_or(""), message, "{text}");
    }
    assert_eq!(fx.runs().await.len(), 1, "nothing more stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_with_a_concurrency_key_delay_and_coalesce() {
    let fx = Fixture::new().await;
    let first = durably_cli(&[
        "trigger",
        "sync",
        "--db",
        fx.db(),
        "--input",
        "{}",
        "--concurrency-key",
        "acct-1",
    ]);
    expect_code(&first, 0);
    let pending = fx.runs().await.remove(0);

    let output = durably_cli(&[
        "trigger",
        "sync",
        "--db",
        fx.db(),
        "--input",
        "{}",
        "--concurrency-key",
        "acct-1",
    ]);
    expect_code(&output, 1);
    assert_eq!(
        stderr(&output),
        "error: cannot trigger job sync: it already has a pending run with concurrency key \
         \"acct-1\" (--coalesce skip returns that run instead)\n"
    );

    let output = durably_cli(&[
        "trigger",
        "sync",
        "--db",
        fx.db(),
        "--input",
        "{}",
        "--concurrency-key",
        "acct-1",
        "--coalesce",
        "skip",
    ]);
    assert_eq!(
        expect_code(&output, 0),
        format!(
            "triggered job sync: existing run {} (concurrency key acct-1; pending): nothing new \
             enqueued\n",
            pending.id
        )
    );
    assert_eq!(fx.runs().await.len(), 1);

    // --delay: waiting on its delay, `durably wake` starts it.
    let output = durably_cli(&[
        "trigger",
        "sync",
        "--db",
        fx.db(),
        "--input",
        "{}",
        "--delay",
        "10m",
    ]);
    let out = expect_code(&output, 0);
    let delayed = fx.runs().await.remove(0);
    assert_eq!(delayed.status, RunStatus::Waiting);
    let prefix = format!("triggered job sync: run {} (waiting until ", delayed.id);
    assert!(out.starts_with(&prefix), "{out}");
    assert!(
        out.ends_with(&format!(
            " UTC; `durably wake {} --db {}` starts it now)\n",
            delayed.id,
            fx.db()
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_wait_follows_the_run_to_its_end() {
    let fx = Fixture::new().await;
    for (ending, code) in [("complete", 0), ("cancel", 3)] {
        let child = Command::new(env!("CARGO_BIN_EXE_durably"))
            .args([
                "trigger",
                "report",
                "--db",
                fx.db(),
                "--input",
                "{}",
                "--wait",
                "--interval-ms",
                "20",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let run = loop {
            let pending: Vec<Run> = fx
                .runs()
                .await
                .into_iter()
                .filter(|run| !run.status.is_terminal())
                .collect();
            if let Some(run) = pending.into_iter().next() {
                break run;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match ending {
            "complete" => {
                let claimed = fx.claim().await;
                assert_eq!(claimed.id, run.id);
                fx.finish(
                    &claimed,
                    Transition::Complete {
                        output: Some(json!({"rows": 3})),
                    },
                )
                .await;
            }
            _ => fx.durably.cancel(&run.id).await.expect("cancel"),
        }
        let output = child.wait_with_output().expect("wait");
        let out = expect_code(&output, code);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "triggered job report: run {} (pending; the application's workers run it)",
                run.id
            )
        );
        match ending {
            "complete" => {
                assert!(
                    lines[lines.len() - 2].starts_with("completed (took "),
                    "{out}"
                );
                assert_eq!(lines[lines.len() - 1], r#"output: {"rows":3}"#, "{out}");
            }
            _ => assert!(lines[lines.len() - 1].starts_with("cancelled ("), "{out}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// run ids by a unique part

/// The longest common prefix of the ids (runs created together share their time part).
fn common_prefix(runs: &[Run]) -> String {
    let first = &runs[0].id;
    let mut len = first.len();
    for run in runs {
        len = len.min(
            first
                .bytes()
                .zip(run.id.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    first[..len].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unique_part_of_a_run_id_names_the_run() {
    let fx = Fixture::new().await;
    let run = fx.enqueue("work", None).await;
    let id = run.id.clone();
    let start = &id[..12];
    let end = &id[id.len() - 8..];
    let dashboard = format!("…{end}");
    let lower = end.to_lowercase();
    let forms = [start, end, dashboard.as_str(), lower.as_str(), id.as_str()];
    for form in forms {
        let out = expect_code(&durably_cli(&["run", form, "--db", fx.db()]), 0);
        assert!(out.starts_with(&format!("run {id}\n")), "{form}: {out}");
    }
    let out = expect_code(&durably_cli(&["waits", end, "--db", fx.db()]), 0);
    assert_eq!(out, format!("run {id} (pending) has no waits\n"));

    // runs --parent takes a part too
    let child = fx.enqueue("child", Some(&id)).await;
    let out = expect_code(
        &durably_cli(&["runs", "--db", fx.db(), "--parent", end, "--json"]),
        0,
    );
    let children: Vec<Value> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["id"], child.id.as_str());

    // cancel, retrigger, delete, watch
    let out = expect_code(&durably_cli(&["cancel", end, "--db", fx.db()]), 0);
    assert_eq!(out, format!("cancelled run {id} of job work\n"));
    let out = expect_code(&durably_cli(&["watch", &dashboard, "--db", fx.db()]), 3);
    assert!(
        out.starts_with(&format!("watching run {id} of job work\n")),
        "{out}"
    );
    let out = expect_code(&durably_cli(&["retrigger", end, "--db", fx.db()]), 0);
    assert!(
        out.starts_with(&format!("retriggered run {id} of job work: new run ")),
        "{out}"
    );
    let out = expect_code(&durably_cli(&["delete", end, "--db", fx.db()]), 0);
    assert_eq!(
        out,
        format!("deleted run {id} of job work (cancelled) with its steps and logs\n")
    );

    // resume (a failed run) and wake (a delayed run)
    for run in fx.runs().await {
        if !run.status.is_terminal() {
            fx.durably.cancel(&run.id).await.expect("cancel");
        }
    }
    let failing = fx.enqueue("flaky", None).await;
    let claimed = fx.claim().await;
    assert_eq!(claimed.id, failing.id);
    fx.finish(
        &claimed,
        Transition::Fail {
            error: "boom".into(),
        },
    )
    .await;
    let end = &failing.id[failing.id.len() - 8..];
    let out = expect_code(&durably_cli(&["resume", end, "--db", fx.db()]), 0);
    assert!(
        out.starts_with(&format!("resumed run {} of job flaky", failing.id)),
        "{out}"
    );
    fx.durably.cancel(&failing.id).await.expect("cancel");

    let output = durably_cli(&[
        "trigger",
        "later",
        "--db",
        fx.db(),
        "--input",
        "{}",
        "--delay",
        "1h",
        "--json",
    ]);
    let answer: Value = serde_json::from_str(&expect_code(&output, 0)).expect("JSON");
    let delayed = answer["runId"].as_str().expect("runId").to_owned();
    let end = &delayed[delayed.len() - 8..];
    let out = expect_code(&durably_cli(&["wake", end, "--db", fx.db()]), 0);
    assert!(
        out.starts_with(&format!("woke run {delayed} of job later")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ambiguous_too_short_or_unknown_part_is_refused() {
    let fx = Fixture::new().await;
    for _ in 0..7 {
        fx.enqueue("work", None).await;
    }
    let runs = fx.runs().await; // newest first, as the candidates are listed
    let prefix = common_prefix(&runs);
    assert!(
        prefix.len() >= 4,
        "ids created together share their time part"
    );
    let output = durably_cli(&["cancel", &prefix, "--db", fx.db()]);
    expect_code(&output, 2);
    let mut expected = format!(
        "error: run id '{prefix}' is ambiguous: 7 runs match; give more of its characters, or \
         the full id:"
    );
    for run in runs.iter().take(5) {
        let created = run.created_at.to_string();
        let created = created
            .split('.')
            .next()
            .unwrap_or(&created)
            .replace('T', " ");
        expected.push_str(&format!("\n  {}  work  pending  created {created}", run.id));
    }
    expected.push_str("\n  … and 2 more\n");
    assert_eq!(stderr(&output), expected);
    assert!(
        fx.runs()
            .await
            .iter()
            .all(|r| r.status == RunStatus::Pending),
        "nothing cancelled"
    );

    let output = durably_cli(&["run", "01J", "--db", fx.db()]);
    expect_code(&output, 2);
    assert_eq!(
        stderr(&output),
        "error: run id '01J' is too short: give the full id, or at least 4 of its first or last \
         characters (the dashboard shows its last 8)\n"
    );
    let output = durably_cli(&["run", "…XYZ", "--db", fx.db()]);
    expect_code(&output, 2);

    let output = durably_cli(&["delete", "ZZZZZZZZ", "--db", fx.db()]);
    expect_code(&output, 4);
    assert_eq!(
        stderr(&output),
        format!(
            "error: no such run: ZZZZZZZZ (list runs with `durably runs --db {}`)\n",
            fx.db()
        )
    );
    let output = durably_cli(&[
        "signal",
        "ZZZZZZZZ",
        "approval",
        "--db",
        fx.db(),
        "--payload",
        "true",
    ]);
    expect_code(&output, 4);
    assert!(stderr(&output).starts_with("error: no such run: ZZZZZZZZ"));
}

// ---------------------------------------------------------------------------------------------
// --status running

#[tokio::test(flavor = "multi_thread")]
async fn running_is_a_synonym_of_leased() {
    let fx = Fixture::new().await;
    let leased = fx.enqueue("work", None).await;
    fx.claim().await;
    fx.enqueue("work", None).await;
    let out = expect_code(
        &durably_cli(&["runs", "--db", fx.db(), "--status", "running", "--json"]),
        0,
    );
    let runs: Vec<Value> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], leased.id.as_str());
    assert_eq!(runs[0]["status"], "leased");

    let output = durably_cli(&["runs", "--db", fx.db(), "--status", "busy"]);
    expect_code(&output, 2);
    assert_eq!(
        stderr(&output).lines().next().unwrap_or(""),
        "error: invalid value 'busy' for '--status <STATUS>': unknown status 'busy': use \
         waiting, pending, leased (or running), completed, failed or cancelled"
    );
    let help = expect_code(&durably_cli(&["runs", "--help"]), 0);
    assert!(help.contains("leased (or its synonym running)"), "{help}");
}

// ---------------------------------------------------------------------------------------------
// --db forms and a busy port

#[test]
fn the_help_lists_the_supported_databases() {
    for command in ["runs", "trigger", "serve", "migrate"] {
        let help = expect_code(&durably_cli(&[command, "--help"]), 0);
        for form in ["SQLite file path", "postgres://", "libsql://"] {
            assert!(help.contains(form), "{command} --help lacks {form}: {help}");
        }
    }
    let help = expect_code(&durably_cli(&["trigger", "--help"]), 0);
    assert!(
        help.contains("rather than calling a running application over HTTP"),
        "{help}"
    );
}

#[test]
fn a_busy_port_suggests_another_and_creates_no_file() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let expected = format!(
        "error: cannot listen on 127.0.0.1:{port}: port {port} is already in use (by another \
         durably demo or serve, or another program): choose another with --port, or --port 0 for \
         a free one\n"
    );

    let db = dir.path().join("demo.sqlite");
    let output = durably_cli(&["demo", "--port", &port, "--db", db.to_str().expect("utf-8")]);
    expect_code(&output, 1);
    assert_eq!(stderr(&output), expected);
    assert!(!db.exists(), "no database created");

    // serve opens an existing database only once it listens: no journal file either
    let db = dir.path().join("app.sqlite");
    expect_code(
        &durably_cli(&["migrate", "--db", db.to_str().expect("utf-8")]),
        0,
    );
    let before: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    let output = durably_cli(&[
        "serve",
        "--port",
        &port,
        "--db",
        db.to_str().expect("utf-8"),
    ]);
    expect_code(&output, 1);
    assert_eq!(stderr(&output), expected);
    let after: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(before.len(), after.len(), "{before:?} → {after:?}");
    drop(busy);
}
