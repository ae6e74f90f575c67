//! The Hrana-over-HTTP client (`durably::store::libsql::hrana`, feature `libsql`) against the
//! libSQL test server, `tursodb --sync-server` (tests/libsql_support: one server for this file,
//! each test on tables of its own), and against stub HTTP servers for what `tursodb` does not
//! do (it accepts any auth token) or should not (hang).
//!
//! The server tests are ignored without `npm ci` in tests/libsql (build.rs); the names of the
//! `the_test_server_*` tests say what the server lacks (docs/libsql.md).
mod libsql_support;

use std::time::Duration;

use durably::store::libsql::hrana::{
    Batch, Condition, HranaClient, HranaError, Statement, StepOutcome, StreamRequest, Value,
};
use libsql_support::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn client() -> HranaClient {
    HranaClient::new(&TestServer::shared().url, None).expect("client")
}

/// One value of a one-row, one-column answer.
async fn scalar(client: &HranaClient, sql: &str) -> Value {
    let result = client.execute(sql).await.expect(sql);
    result.scalar().cloned().expect("a row")
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn statements_run_and_every_value_type_round_trips() {
    let client = client();
    client
        .execute("CREATE TABLE values_t (i integer, f real, t text, b blob, n text)")
        .await
        .unwrap();
    let rows = [
        (i64::MAX, 2.5, "héllo \"quoted\"\n", vec![0u8, 1, 254, 255]),
        (i64::MIN, -1e300, "", vec![]),
        (0, 0.1, "{\"json\": [1]}", vec![7]),
    ];
    for (i, f, t, b) in &rows {
        let insert = Statement::new("INSERT INTO values_t VALUES (?1, ?2, ?3, ?4, ?5)")
            .arg(*i)
            .arg(*f)
            .arg(*t)
            .arg(b.clone())
            .arg(Value::Null);
        client.execute(insert).await.unwrap();
    }
    let result = client
        .execute("SELECT i, f, t, b, n, typeof(b) FROM values_t ORDER BY rowid")
        .await
        .unwrap();
    let names: Vec<_> = result.cols.iter().map(|c| c.name.as_deref()).collect();
    assert_eq!(
        names,
        [
            Some("i"),
            Some("f"),
            Some("t"),
            Some("b"),
            Some("n"),
            Some("typeof(b)")
        ]
    );
    assert_eq!(result.cols[0].decltype.as_deref(), Some("integer"));
    assert_eq!(result.rows.len(), rows.len());
    for (row, (i, f, t, b)) in result.rows.iter().zip(&rows) {
        assert_eq!(row[0], Value::Integer(*i));
        assert_eq!(row[1], Value::Float(*f));
        assert_eq!(row[2], Value::Text(t.to_string()));
        assert_eq!(row[3], Value::Blob(b.clone()));
        assert_eq!(row[4], Value::Null);
        assert_eq!(row[5], Value::Text("blob".into()));
    }
    // `want_rows: false`: the statement runs, no rows come back.
    let mut quiet = Statement::new("SELECT * FROM values_t");
    quiet.want_rows = false;
    assert!(client.execute(quiet).await.unwrap().rows.is_empty());
    // Anonymous and numbered placeholders both bind.
    let mixed = Statement::new("SELECT ? || ?, ?2").arg("a").arg("b");
    let result = client.execute(mixed).await.unwrap();
    assert_eq!(result.rows[0], [Value::from("ab"), Value::from("b")]);
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn a_failing_statement_is_a_sql_error_with_the_servers_message() {
    let client = client();
    let err = client
        .execute("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    let HranaError::Sql { error, sql } = &err else {
        panic!("{err:?}")
    };
    assert!(
        error.message.contains("no such table: no_such_table"),
        "{err}"
    );
    assert_eq!(sql, "SELECT * FROM no_such_table");
    assert!(err.to_string().contains("no such table"), "{err}");
    // The connection is fine afterwards.
    assert_eq!(scalar(&client, "SELECT 41 + 1").await, Value::Integer(42));
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn a_conditional_batch_skips_the_steps_after_a_failure() {
    let client = client();
    client
        .execute("CREATE TABLE cond_t (a integer primary key, b text)")
        .await
        .unwrap();
    // Every condition kind: a failing insert, then steps that depend on it either way.
    let mut batch = Batch::new();
    let first = batch.step(None, "INSERT INTO cond_t VALUES (1, 'one')");
    let dup = batch.step(
        Some(Condition::ok(first)),
        "INSERT INTO cond_t VALUES (1, 'dup')",
    );
    let after_dup = batch.step(
        Some(Condition::ok(dup)),
        "INSERT INTO cond_t VALUES (2, 'after dup')",
    );
    let on_error = batch.step(
        Some(Condition::and([
            Condition::error(dup),
            Condition::not(Condition::ok(after_dup)),
        ])),
        "INSERT INTO cond_t VALUES (3, 'on error')",
    );
    let either = batch.step(
        Some(Condition::or([
            Condition::ok(after_dup),
            Condition::ok(on_error),
        ])),
        "SELECT count(*) FROM cond_t",
    );
    let autocommit = batch.step(Some(Condition::IsAutocommit), "SELECT 'autocommit'");
    let result = client.batch(batch).await.unwrap();
    assert!(matches!(result.step(first), StepOutcome::Ok(_)));
    let StepOutcome::Failed(error) = result.step(dup) else {
        panic!("{result:?}")
    };
    assert!(
        error.message.contains("UNIQUE constraint failed"),
        "{error}"
    );
    assert_eq!(result.step(after_dup), StepOutcome::Skipped);
    assert!(matches!(result.step(on_error), StepOutcome::Ok(_)));
    let StepOutcome::Ok(count) = result.step(either) else {
        panic!("{result:?}")
    };
    assert_eq!(count.scalar(), Some(&Value::Integer(2)));
    assert!(matches!(result.step(autocommit), StepOutcome::Ok(_)));
    assert_eq!(result.first_error().map(|(i, _)| i), Some(dup));

    // A transaction batch: the duplicate aborts it, later statements are skipped, the
    // ROLLBACK runs and undoes the insert before it.
    let failed = Batch::transaction([
        Statement::new("INSERT INTO cond_t VALUES (10, 'ten')"),
        Statement::new("INSERT INTO cond_t VALUES (1, 'dup')"),
        Statement::new("INSERT INTO cond_t VALUES (11, 'eleven')"),
    ]);
    let steps = failed.steps.len();
    let result = client.batch(failed).await.unwrap();
    let error = result.transaction().unwrap_err();
    assert!(
        error.message.contains("UNIQUE constraint failed"),
        "{error}"
    );
    assert_eq!(result.step(3), StepOutcome::Skipped, "after the failure");
    assert_eq!(result.step(steps - 2), StepOutcome::Skipped, "COMMIT");
    assert!(
        matches!(result.step(steps - 1), StepOutcome::Ok(_)),
        "ROLLBACK"
    );
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM cond_t WHERE a >= 10").await,
        Value::Integer(0)
    );
    assert_eq!(
        scalar(&client, "SELECT 'autocommit again'").await,
        Value::from("autocommit again")
    );

    // A fence as the store will write it: a guard after a write that matched no row fails
    // (malformed JSON), so the statements after it are skipped. tursodb rolls the transaction
    // back at that error itself. On Hrana 2 (tursodb's; no `is_autocommit` condition) the
    // ROLLBACK step still runs and fails harmlessly, after the error that decided the outcome
    // (on Hrana 3 it sees the transaction closed and is skipped: tests/libsql_protocol.rs).
    let fenced = Batch::transaction([
        Statement::new("UPDATE cond_t SET b = 'fenced' WHERE a = 999"),
        Statement::new("SELECT json(CASE WHEN changes() = 0 THEN 'fenced out' ELSE '1' END)"),
        Statement::new("INSERT INTO cond_t VALUES (12, 'after the fence')"),
    ]);
    let steps = fenced.steps.len();
    let result = client.batch(fenced).await.unwrap();
    let error = result.transaction().unwrap_err();
    assert!(error.message.contains("malformed JSON"), "{error}");
    assert_eq!(result.first_error().map(|(i, _)| i), Some(2), "{result:?}");
    assert_eq!(result.step(3), StepOutcome::Skipped);
    let StepOutcome::Failed(rollback) = result.step(steps - 1) else {
        panic!("ROLLBACK: {result:?}")
    };
    assert!(
        rollback.message.contains("no transaction is active"),
        "{rollback}"
    );
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM cond_t WHERE a = 12").await,
        Value::Integer(0)
    );

    // And one that commits, with RETURNING rows read from its statements.
    let committed = Batch::transaction([
        Statement::new("INSERT INTO cond_t VALUES (20, 'twenty') RETURNING a"),
        Statement::with_args(
            "UPDATE cond_t SET b = ?1 WHERE a = 20 RETURNING b",
            [Value::from("updated")],
        ),
    ]);
    let result = client.batch(committed).await.unwrap();
    let results = result.transaction().unwrap();
    assert_eq!(results[0].scalar(), Some(&Value::Integer(20)));
    assert_eq!(results[1].scalar(), Some(&Value::from("updated")));
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn concurrent_transaction_batches_lose_no_update() {
    let client = client();
    client
        .execute("CREATE TABLE counter_t (id integer primary key, n integer not null)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO counter_t VALUES (1, 0)")
        .await
        .unwrap();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let batch = Batch::transaction([
                        Statement::new("SELECT n FROM counter_t WHERE id = 1"),
                        Statement::new("UPDATE counter_t SET n = n + 1 WHERE id = 1 RETURNING n"),
                    ]);
                    let result = client.batch(batch).await.expect("request");
                    result
                        .transaction()
                        .unwrap_or_else(|e| panic!("writer {w}, batch {i}: {e}"));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        scalar(&client, "SELECT n FROM counter_t WHERE id = 1").await,
        Value::Integer(80)
    );
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn the_test_server_keeps_no_stream_between_requests_and_shares_one_connection() {
    // A private server: this test leaves a transaction open on the server's one connection.
    let server = TestServer::start();
    let client = HranaClient::new(&server.url, None).unwrap();
    client
        .execute("CREATE TABLE stream_t (a integer)")
        .await
        .unwrap();
    let mut stream = client.stream();
    stream.execute("BEGIN").await.unwrap();
    assert!(!stream.is_open(), "tursodb returns no baton");
    stream
        .execute("INSERT INTO stream_t VALUES (1)")
        .await
        .unwrap();
    // Another client's request runs inside that transaction: its ROLLBACK undoes the insert.
    let other = HranaClient::new(&server.url, None).unwrap();
    other.execute("ROLLBACK").await.unwrap();
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM stream_t").await,
        Value::Integer(0)
    );
    stream.close().await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn the_test_server_rejects_close_and_reports_no_affected_rows() {
    let client = client();
    let err = client
        .pipeline(None, &[StreamRequest::Close])
        .await
        .unwrap_err();
    let HranaError::Http { status, body, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*status, 500);
    assert!(body.contains("unknown variant `close`"), "{err}");

    client
        .execute("CREATE TABLE affected_t (a integer)")
        .await
        .unwrap();
    let mut batch = Batch::new();
    batch.step(None, "INSERT INTO affected_t VALUES (1), (2)");
    batch.step(None, "SELECT changes()");
    let result = client.batch(batch).await.unwrap();
    let (StepOutcome::Ok(insert), StepOutcome::Ok(changes)) = (result.step(0), result.step(1))
    else {
        panic!("{result:?}")
    };
    assert_eq!(insert.affected_row_count, 0, "tursodb 0.7 does not count");
    assert_eq!(insert.last_insert_rowid, None, "nor report the rowid");
    assert_eq!(changes.scalar(), Some(&Value::Integer(2)), "changes() does");
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn a_url_without_a_hrana_endpoint_is_a_404_saying_so() {
    let url = format!("{}/not/a/database", TestServer::shared().url);
    let client = HranaClient::new(&url, None).unwrap();
    let err = client.execute("SELECT 1").await.unwrap_err();
    assert!(
        matches!(err, HranaError::Http { status: 404, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("no Hrana pipeline endpoint"),
        "{err}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    assert!(!err.may_have_run());
}

#[tokio::test]
async fn a_refused_connection_names_the_url() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let client = HranaClient::new(&url, None).unwrap();
    let err = client.execute("SELECT 1").await.unwrap_err();
    assert!(matches!(err, HranaError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to the libSQL server at {url}: ")),
        "{err}"
    );
    assert!(!err.may_have_run());
}

#[tokio::test]
async fn bad_urls_and_tokens_are_rejected_before_any_connection() {
    for (url, says) in [
        (
            "db.example.turso.io",
            "expected libsql://, https:// or http://",
        ),
        ("wss://db.example.turso.io", "WebSocket is not supported"),
        ("http://127.0.0.1:notaport", "bad port"),
    ] {
        let err = HranaClient::new(url, None).unwrap_err();
        assert!(matches!(err, HranaError::InvalidUrl { .. }), "{err:?}");
        assert!(err.to_string().contains(says), "{url}: {err}");
    }
    let err = HranaClient::new("http://127.0.0.1:1", Some("two\nlines")).unwrap_err();
    assert!(matches!(err, HranaError::InvalidUrl { .. }), "{err:?}");
}

/// A stub HTTP server answering every request with `answer` (or never, for `None`); yields
/// the head of each request it read.
async fn stub(
    answer: Option<&'static str>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    stub_by(move |_| answer).await
}

/// A stub HTTP server answering each request with `answer(its head)` (or never, for `None`);
/// yields the head of each request it read.
async fn stub_by(
    answer: impl Fn(&str) -> Option<&'static str> + Clone + Send + 'static,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (heads, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (heads, answer) = (heads.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let mut read = 0;
                while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let head = String::from_utf8_lossy(&buffer[..read]).into_owned();
                let answer = answer(&head);
                let _ = heads.send(head);
                match answer {
                    Some(answer) => {
                        let _ = socket.write_all(answer.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    }
                    // Holds the connection open without a word.
                    None => std::future::pending::<()>().await,
                }
            });
        }
    });
    (url, received)
}

#[tokio::test]
async fn a_refused_token_is_an_unauthorized_error() {
    // tursodb accepts any token (docs/libsql.md), so a stub plays Turso's refusal.
    let (url, mut heads) = stub(Some(
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n\
         Connection: close\r\n\r\nAuthorization token invalid\n",
    ))
    .await;
    let client = HranaClient::new(&url, Some("wrong-token")).unwrap();
    let err = client.execute("SELECT 1").await.unwrap_err();
    let HranaError::Unauthorized {
        status, token_sent, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((*status, *token_sent), (401, true));
    assert_eq!(
        err.to_string(),
        format!(
            "the libSQL server at {url} refused the auth token (HTTP 401): Authorization token invalid"
        )
    );
    assert!(!err.may_have_run());
    // Refused already when asked for its version: no pipeline was sent.
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with("GET /v3 HTTP/1.1\r\n"), "{head}");
    assert!(heads.try_recv().is_err(), "no second request");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nauthorization: bearer wrong-token\r\n"),
        "{head}"
    );

    // Without a token, the error says none was sent.
    let client = HranaClient::new(&url, None).unwrap();
    let err = client.execute("SELECT 1").await.unwrap_err();
    assert!(err.to_string().contains("no token was sent"), "{err}");
    let head = heads.recv().await.unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn the_test_server_accepts_any_token() {
    let client = HranaClient::new(&TestServer::shared().url, Some("not-a-jwt")).unwrap();
    assert_eq!(scalar(&client, "SELECT 1").await, Value::Integer(1));
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Silent from the start: the version probe times out, and no pipeline was sent.
    let (url, _heads) = stub(None).await;
    let client = HranaClient::new(&url, None)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let err = client.execute("SELECT 1").await.unwrap_err();
    let HranaError::Negotiation { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(matches!(**source, HranaError::Timeout { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot find out which Hrana version the libSQL server at {url} speaks (GET v3): \
             the libSQL server at {url} did not answer within 200ms"
        )
    );
    assert!(!err.may_have_run(), "no pipeline was sent");

    // A Hrana 2 server (GET /v3: 404) silent on the pipeline.
    let (url, _heads) = stub_by(|head| {
        head.starts_with("GET /v3 ")
            .then_some("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    })
    .await;
    let client = HranaClient::new(&url, None)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = client.execute("SELECT 1").await.unwrap_err();
    assert!(matches!(err, HranaError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        err.to_string(),
        format!("the libSQL server at {url} did not answer within 200ms")
    );
    assert!(err.may_have_run(), "the request was sent: it may have run");
}

#[tokio::test]
async fn a_non_hrana_answer_is_a_protocol_error() {
    let (url, _heads) = stub(Some(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<html>",
    ))
    .await;
    let client = HranaClient::new(&url, None).unwrap();
    let err = client.execute("SELECT 1").await.unwrap_err();
    assert!(matches!(err, HranaError::Protocol { .. }), "{err:?}");
    assert!(err.to_string().contains("malformed Hrana answer"), "{err}");
}
