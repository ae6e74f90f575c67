//! The command on a remote libSQL database: `durably bench --backend libsql` and
//! `durably serve --db http://…`, against the library's test server (`tursodb --sync-server`,
//! installed by `npm ci` in crates/durably/tests/libsql; tests/libsql_support starts one).
//! Without it these tests are reported as ignored, saying so.

mod common;
#[path = "../../durably/tests/libsql_support/mod.rs"]
mod libsql_support;

use std::process::Output;

use common::{durably_cli, http, start_serve_with};
use durably::store::libsql::hrana::{HranaClient, Statement};
use durably::{Durably, Job, StepContext};
use libsql_support::TestServer;
use serde_json::{Value, json};

/// Asserts success and returns stdout.
#[track_caller]
fn success(output: &Output) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{err}",
        output.status.code()
    );
    out.into_owned()
}

/// The durably tables in the server's database.
async fn durably_tables(url: &str) -> Vec<String> {
    let client = HranaClient::new(url, None).expect("client");
    let result = client
        .execute(Statement::new(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'durably%'",
        ))
        .await
        .expect("list tables");
    result
        .rows
        .iter()
        .filter_map(|row| row.first()?.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn bench_runs_its_workloads_on_a_libsql_server_and_leaves_no_tables() {
    let server = TestServer::start();
    let url = server.url.clone();
    let args = [
        "bench",
        "--backend",
        "libsql",
        "--db",
        &url,
        "--auth-token",
        "any-token",
        "--workload",
        "throughput-1step,steps-10,latency",
        "--concurrency",
        "1,4",
        "--jobs",
        "20",
        "--step-jobs",
        "4",
        "--calls",
        "3",
    ]
    .map(str::to_owned);
    let output = tokio::task::spawn_blocking(move || {
        durably_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("join");
    let out = success(&output);
    let lines: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let shapes: Vec<(String, u64)> = lines
        .iter()
        .map(|line| {
            assert_eq!(line["backend"], "libsql", "{line}");
            assert_eq!(line["synchronous"], "server", "{line}");
            assert_eq!(line["duplicate_step_execs"], 0, "{line}");
            assert!(line["jobs_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{line}");
            (
                line["workload"].as_str().unwrap_or("").to_owned(),
                line["concurrency"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected = [
        ("throughput-1step", 1),
        ("throughput-1step", 4),
        ("steps-10", 1),
        ("steps-10", 4),
        ("latency", 1),
    ]
    .map(|(w, c)| (w.to_owned(), c));
    assert_eq!(shapes, expected, "{out}");
    assert_eq!(lines[2]["jobs"], 4, "{out}");
    assert_eq!(lines[2]["steps_per_job"], 10, "{out}");
    // every workload's tables were dropped after it
    assert_eq!(durably_tables(&url).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn bench_refuses_a_libsql_database_holding_durably_tables() {
    let server = TestServer::start();
    let url = server.url.clone();
    let durably = Durably::builder()
        .libsql(&url, None)
        .build()
        .expect("build");
    durably.migrate().await.expect("migrate");
    let before = durably_tables(&url).await;
    assert!(!before.is_empty());
    let db = url.clone();
    let output = tokio::task::spawn_blocking(move || {
        durably_cli(&["bench", "--backend", "libsql", "--db", &db, "--jobs", "1"])
    })
    .await
    .expect("join");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("already holds durably tables") && stderr.contains(&url),
        "{stderr}"
    );
    assert_eq!(durably_tables(&url).await, before, "nothing was dropped");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn serve_on_a_libsql_database_lists_its_runs() {
    let server = TestServer::start();
    let durably = Durably::builder()
        .libsql(&server.url, None)
        .build()
        .expect("build");
    let job = durably
        .register(Job::new(
            "greet",
            |step: StepContext, input: Value| async move {
                let name = input["name"].as_str().unwrap_or("nobody").to_owned();
                let greeting = step
                    .run("greet", |_| async move { Ok(format!("hello {name}")) })
                    .await?;
                Ok(json!({ "greeting": greeting }))
            },
        ))
        .expect("register");
    durably.migrate().await.expect("migrate");
    let done = job
        .trigger(json!({ "name": "libsql" }))
        .await
        .expect("trigger")
        .run
        .id;
    durably
        .process_until_idle(None, None)
        .await
        .expect("process");
    let pending = job
        .trigger(json!({ "name": "later" }))
        .await
        .expect("trigger")
        .run
        .id;

    let db = server.url.clone();
    let serve = tokio::task::spawn_blocking(move || {
        start_serve_with(
            &db,
            &[("LIBSQL_AUTH_TOKEN", "a-token-the-test-server-ignores")],
        )
    })
    .await
    .expect("join");
    let address = serve.address;
    let api = "/api/durably";
    let run_path = format!("{api}/run?runId={done}");
    let (runs, run) = tokio::task::spawn_blocking(move || {
        (
            http(address, "GET", &format!("{api}/runs"), None),
            http(address, "GET", &run_path, None),
        )
    })
    .await
    .expect("join");
    drop(serve);

    assert_eq!(runs.0, 200, "{runs:?}");
    let listed: Value = serde_json::from_str(&runs.2).expect("JSON runs");
    let mut statuses: Vec<(String, String)> = listed
        .as_array()
        .expect("an array of runs")
        .iter()
        .map(|run| {
            (
                run["id"].as_str().unwrap_or("").to_owned(),
                run["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    statuses.sort();
    let mut expected = vec![
        (done.clone(), "completed".to_owned()),
        (pending.clone(), "pending".to_owned()),
    ];
    expected.sort();
    assert_eq!(statuses, expected, "{}", runs.2);
    assert_eq!(run.0, 200, "{run:?}");
    let run: Value = serde_json::from_str(&run.2).expect("JSON run");
    assert_eq!(
        run["output"],
        json!({ "greeting": "hello libsql" }),
        "{run}"
    );
    drop(durably);
}
