//! The command on a remote libSQL database: `durably bench --backend libsql` and
//! `durably serve --db http://…`, against the library's test server (`tursodb --sync-server`,
//! installed by `npm ci` in crates/durably/tests/libsql; tests/libsql_support starts one).
//! Without it these tests are reported as ignored, saying so.

#[path = "../../durably/tests/libsql_support/mod.rs"]
mod libsql_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use durably::store::libsql::hrana::{HranaClient, Statement};
use durably::{Durably, Job, StepContext};
use libsql_support::TestServer;
use serde_json::{Value, json};

/// Runs `durably ARGS` to completion.
fn durably_cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_durably"))
        .args(args)
        .output()
        .expect("run the durably binary")
}

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

/// A running `durably serve`; killed when dropped.
struct Server {
    child: Child,
    address: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve(db: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_durably"))
        .args(["serve", "--port", "0", "--db", db])
        .env("LIBSQL_AUTH_TOKEN", "a-token-the-test-server-ignores")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start durably serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("serve prints its URL")
        .expect("a stdout line");
    // "durably serve: http://127.0.0.1:PORT/ (API under …)"
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"));
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("a socket address");
    std::thread::spawn(move || for _ in lines {});
    Server { child, address }
}

/// One `GET` over HTTP/1.1 (`Connection: close`); returns the status and the body.
fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
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
    let serve = tokio::task::spawn_blocking(move || start_serve(&db))
        .await
        .expect("join");
    let address = serve.address;
    let api = "/api/durably";
    let run_path = format!("{api}/run?runId={done}");
    let (runs, run) = tokio::task::spawn_blocking(move || {
        (
            get(address, &format!("{api}/runs")),
            get(address, &run_path),
        )
    })
    .await
    .expect("join");
    drop(serve);

    assert_eq!(runs.0, 200, "{runs:?}");
    let listed: Value = serde_json::from_str(&runs.1).expect("JSON runs");
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
    assert_eq!(statuses, expected, "{}", runs.1);
    assert_eq!(run.0, 200, "{run:?}");
    let run: Value = serde_json::from_str(&run.1).expect("JSON run");
    assert_eq!(
        run["output"],
        json!({ "greeting": "hello libsql" }),
        "{run}"
    );
    drop(durably);
}
