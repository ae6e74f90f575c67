//! The messages a new user meets in the first hour, each with its exact text: calls before
//! `init()`, a SQLite file in a missing directory, a URL of a database durably does not
//! support, an unreachable PostgreSQL server, invalid input in JSON terms. (A step name used
//! twice in one execution: `tests/steps.rs`; the HTTP form of invalid input: `tests/http.rs`.)
mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestDb};
use durably::{Durably, Error, Job, PostgresOptions, PostgresStore, StepContext};
use serde::{Deserialize, Serialize};
use serde_json::json;

fn echo() -> Job<serde_json::Value, serde_json::Value> {
    Job::new(
        "echo",
        |_: StepContext, input: serde_json::Value| async move { Ok(input) },
    )
}

fn config_message(error: Error) -> String {
    match error {
        Error::Config(message) => message,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

/// The error of a build that had to fail (`Durably` has no `Debug` for `expect_err`).
fn refused(built: durably::Result<Durably>) -> Error {
    match built {
        Err(error) => error,
        Ok(_) => panic!("the build should have been refused"),
    }
}

/// Triggering or reading before `init()` says to call `init()`, naming the missing table, on
/// SQLite and PostgreSQL alike (not `no such table: durably_runs` alone).
async fn calls_before_init_say_to_call_init(backend: Backend, missing: &str) {
    let db = TestDb::new(backend);
    let durably = Durably::builder()
        .shared_store(db.store.clone())
        .job(echo())
        .build()
        .expect("build");
    let expected = format!(
        "The database is not set up for durably ({missing}): call `init()` (or `migrate()`) on \
         the Durably instance once at startup, before triggering or reading runs, or run \
         `durably migrate --db <database>`"
    );
    let triggered = durably
        .trigger_json("echo", json!({}), Default::default())
        .await
        .expect_err("not set up");
    assert_eq!(config_message(triggered), expected);
    let read = durably
        .get_runs(&Default::default())
        .await
        .expect_err("not set up");
    assert_eq!(config_message(read), expected);
    durably.init().await.expect("init");
    durably
        .trigger_json("echo", json!({}), Default::default())
        .await
        .expect("after init");
}

#[tokio::test]
async fn calls_before_init_say_to_call_init_on_sqlite() {
    calls_before_init_say_to_call_init(Backend::SqliteFile, "no such table: durably_runs").await;
}

#[tokio::test]
#[cfg_attr(
    not(durably_postgres_tests),
    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
)]
async fn calls_before_init_say_to_call_init_on_postgres() {
    calls_before_init_say_to_call_init(
        Backend::Postgres,
        "relation \"durably_runs\" does not exist (SQLSTATE 42P01)",
    )
    .await;
}

/// A SQLite file whose directory is missing is refused naming the directory, before SQLite's
/// `unable to open database file`; nothing is created.
#[test]
fn a_sqlite_file_in_a_missing_directory_names_the_directory() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("data");
    let path = missing.join("app.db");
    let built = Durably::builder().sqlite(&path).build();
    assert_eq!(
        config_message(refused(built)),
        format!(
            "Cannot open the SQLite database {}: the directory {} does not exist (create it \
             first)",
            path.display(),
            missing.display()
        )
    );
    assert!(!missing.exists());
}

/// A URL of a database durably does not support is refused as such, not opened as a file
/// named `mysql:`.
#[test]
fn an_unknown_database_url_is_refused_naming_its_scheme() {
    let built = Durably::builder().sqlite("mysql://app@db/orders").build();
    assert_eq!(
        config_message(refused(built)),
        "Cannot open mysql://app@db/orders as a SQLite database: durably does not support \
         `mysql://` URLs. Give a SQLite file path (`app.db`), a `postgres://` URL to \
         `Durably::builder().postgres(url)` (feature `postgres`) or a `libsql://` URL to \
         `Durably::builder().libsql(url, token)` (feature `libsql`)"
    );
}

/// A PostgreSQL server that does not answer fails `init()` after the connect timeout, naming
/// the server (not `storage error during schema_version: Timeout occurred while creating a
/// new object`); a refused connection says so at once.
#[tokio::test]
async fn an_unreachable_postgres_server_is_named_within_the_connect_timeout() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let options = || {
        PostgresOptions::default()
            .connect_timeout(Duration::from_millis(300))
            .retry_for(Duration::ZERO)
    };
    let store = PostgresStore::connect_with(
        &format!("postgres://app@127.0.0.1:{port}/orders"),
        options(),
    )
    .expect("a valid URL");
    let durably = Durably::builder().store(store).build().expect("build");
    let started = Instant::now();
    let error = durably.init().await.expect_err("no answer");
    assert!(started.elapsed() < Duration::from_secs(20), "bounded");
    match &error {
        Error::Storage { operation, source } => {
            assert_eq!(*operation, "connect");
            assert_eq!(
                source.to_string(),
                format!(
                    "cannot connect to PostgreSQL at 127.0.0.1:{port}/orders: no answer within \
                     300 ms (check that the server is up and the host and port are right; for a \
                     slow network raise the URL's `connect_timeout` or \
                     `PostgresOptions::connect_timeout`)"
                )
            );
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    accepting.abort();

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let store = PostgresStore::connect_with(
        &format!("postgres://app@127.0.0.1:{closed_port}/orders"),
        options(),
    )
    .expect("a valid URL");
    let durably = Durably::builder().store(store).build().expect("build");
    let error = durably.init().await.expect_err("refused");
    assert!(
        error.to_string().starts_with(&format!(
            "storage error during connect: cannot connect to PostgreSQL at \
             127.0.0.1:{closed_port}/orders: error connecting to server: Connection refused"
        )),
        "{error}"
    );
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    count: u32,
    items: Vec<Item>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Item {
    sku: String,
}

/// Invalid input names the field path and the expected shape in JSON terms, never a Rust type
/// (`expected u32`, `struct Order`); nothing is stored.
#[tokio::test]
async fn invalid_input_names_the_field_in_json_terms() {
    let db = TestDb::new(Backend::SqliteFile);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "order",
            |_: StepContext, order: Order| async move { Ok(order.count) },
        ))
        .expect("register");
    let _ = job;
    for (input, expected) in [
        (
            json!({"count": "x", "items": []}),
            r#"Invalid input: count: expected an integer from 0 to 4294967295, got "x""#,
        ),
        (
            json!({"count": 1, "items": [{"sku": 7}]}),
            "Invalid input: items[0].sku: expected a string, got 7",
        ),
        (
            json!({"items": []}),
            r#"Invalid input: missing field "count""#,
        ),
        (
            json!([1]),
            "Invalid input: expected an object, got an array of 1 item",
        ),
    ] {
        match durably
            .trigger_json("order", input.clone(), Default::default())
            .await
        {
            Err(Error::Validation(message)) => assert_eq!(message, expected, "{input}"),
            other => panic!("expected a validation error for {input}, got {other:?}"),
        }
    }
    let stored = durably.get_runs(&Default::default()).await.expect("runs");
    assert!(stored.is_empty(), "nothing stored");
}
