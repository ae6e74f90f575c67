//! The libSQL store's protocol: which Hrana version it speaks (v3 where the server offers it,
//! v2 otherwise), and how many HTTP requests its operations cost.
//!
//! `tursodb` serves only Hrana 2 (`GET /v3` is a 404), so Hrana 3 is played by a recording
//! proxy in front of it: it answers `GET /v3` with 200 and forwards `POST /v3/pipeline` to the
//! server's `/v2/pipeline` (the JSON bodies are the same in both versions; `tursodb` also
//! accepts `is_autocommit`, Hrana 3's condition). The same proxy without the v3 endpoint
//! forwards everything as is, so the requests of both versions can be read.
mod libsql_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use durably::store::libsql::hrana::{
    Batch, Condition, HranaClient, HranaVersion, Statement, StepOutcome, Value,
};
use durably::store::{ClaimRequest, Fence, LibsqlStore, NewRun, NewStep, Store, Transition};
use durably::{Disposition, StepStatus, Timestamp};
use libsql_support::TestServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the proxy saw: method, path and body.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    body: String,
}

/// A recording HTTP proxy in front of `target` (`http://host:port`); with `offer_v3`, it
/// plays a Hrana 3 server (above). One request per connection, as `tursodb` answers.
async fn proxy(target: &str, offer_v3: bool) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let target = target.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (target, record) = (target.clone(), record.clone());
            tokio::spawn(async move {
                let Some(request) = read_request(&mut socket).await else {
                    return;
                };
                record.lock().expect("lock").push(request.clone());
                let answer = if offer_v3 && request.method == "GET" && request.path == "/v3" {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                } else {
                    let path = match request.path.as_str() {
                        "/v3/pipeline" if offer_v3 => "/v2/pipeline",
                        path => path,
                    };
                    forward(&target, &request.method, path, &request.body).await
                };
                let _ = socket.write_all(&answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, seen)
}

/// The request line and body of one HTTP/1.1 request.
async fn read_request(socket: &mut TcpStream) -> Option<Seen> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
    }
    let mut words = head.split(' ');
    Some(Seen {
        method: words.next()?.to_owned(),
        path: words.next()?.to_owned(),
        body: String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned(),
    })
}

/// Sends one request to `target` and returns its whole answer (the server closes).
async fn forward(target: &str, method: &str, path: &str, body: &str) -> Vec<u8> {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_vec();
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = Vec::new();
    if server.write_all(request.as_bytes()).await.is_ok() {
        let _ = server.read_to_end(&mut answer).await;
    }
    answer
}

fn seen(record: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    record.lock().expect("lock").clone()
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn the_client_speaks_hrana_3_where_the_server_offers_it() {
    let (url, record) = proxy(&TestServer::shared().url, true).await;
    let client = HranaClient::new(&url, None).expect("client");
    assert_eq!(client.protocol_version(), None, "nothing asked yet");
    client
        .execute("CREATE TABLE v3_t (a integer primary key, b text)")
        .await
        .expect("create");
    assert_eq!(client.protocol_version(), Some(HranaVersion::V3));

    // A conditional batch and a transaction batch round-trip on /v3/pipeline.
    let mut batch = Batch::new();
    let first = batch.step(None, "INSERT INTO v3_t VALUES (1, 'one')");
    let dup = batch.step(
        Some(Condition::ok(first)),
        "INSERT INTO v3_t VALUES (1, 'dup')",
    );
    let skipped = batch.step(Some(Condition::ok(dup)), "SELECT 'not run'");
    let on_error = batch.step(Some(Condition::error(dup)), "SELECT count(*) FROM v3_t");
    let result = client.batch(batch).await.expect("batch");
    assert!(matches!(result.step(dup), StepOutcome::Failed(_)));
    assert_eq!(result.step(skipped), StepOutcome::Skipped);
    let StepOutcome::Ok(count) = result.step(on_error) else {
        panic!("{result:?}")
    };
    assert_eq!(count.scalar(), Some(&Value::Integer(1)));
    let failed = Batch::transaction([
        Statement::new("INSERT INTO v3_t VALUES (2, 'two')"),
        Statement::new("INSERT INTO v3_t VALUES (1, 'dup')"),
    ]);
    let result = client.batch(failed).await.expect("transaction");
    assert!(result.transaction().is_err());
    // A guard failing while evaluating: tursodb rolls back at once, and on Hrana 3 the
    // ROLLBACK step sees the transaction closed and is skipped.
    let fenced = Batch::transaction([
        Statement::new("UPDATE v3_t SET b = 'fenced' WHERE a = 999"),
        Statement::new("SELECT json(CASE WHEN changes() = 0 THEN 'fenced out' ELSE '1' END)"),
    ]);
    let steps = fenced.steps.len();
    let result = client.batch(fenced).await.expect("transaction");
    assert!(result.transaction().is_err());
    assert_eq!(result.step(steps - 1), StepOutcome::Skipped, "ROLLBACK");
    let committed = Batch::transaction([Statement::with_args(
        "INSERT INTO v3_t VALUES (3, ?1) RETURNING b",
        [Value::from("three")],
    )]);
    let result = client.batch(committed).await.expect("transaction");
    let results = result.transaction().expect("committed");
    assert_eq!(results[0].scalar(), Some(&Value::from("three")));
    let count = client
        .execute("SELECT count(*) FROM v3_t")
        .await
        .expect("count");
    assert_eq!(count.scalar(), Some(&Value::Integer(2)), "1 and 3, not 2");

    // One probe, then every pipeline on /v3/pipeline; the transactions' ROLLBACK carries
    // Hrana 3's `is_autocommit`.
    let seen = seen(&record);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/v3")
    );
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.method == "POST" && s.path == "/v3/pipeline"),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 1 + 6);
    assert!(seen[3].body.contains("is_autocommit"), "{}", seen[3].body);
    assert_eq!(client.requests_sent(), 7);
}

#[tokio::test]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn the_client_falls_back_to_hrana_2_when_v3_is_a_404() {
    let (url, record) = proxy(&TestServer::shared().url, false).await;
    let client = HranaClient::new(&url, None).expect("client");
    assert_eq!(
        client.negotiate().await.expect("negotiate"),
        HranaVersion::V2
    );
    client
        .execute("CREATE TABLE v2_t (a integer primary key)")
        .await
        .expect("create");
    let failed = Batch::transaction([
        Statement::new("INSERT INTO v2_t VALUES (1)"),
        Statement::new("INSERT INTO v2_t VALUES (1)"),
    ]);
    let steps = failed.steps.len();
    let result = client.batch(failed).await.expect("transaction");
    let error = result.transaction().expect_err("a duplicate");
    assert!(error.message.contains("UNIQUE"), "{error}");
    assert!(
        matches!(result.step(steps - 1), StepOutcome::Ok(_)),
        "ROLLBACK"
    );
    let count = client
        .execute("SELECT count(*) FROM v2_t")
        .await
        .expect("count");
    assert_eq!(count.scalar(), Some(&Value::Integer(0)));

    // Asked once (the 404), then /v2/pipeline; no Hrana 3 condition on the wire.
    let seen = seen(&record);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/v3")
    );
    assert!(
        seen[1..]
            .iter()
            .all(|s| s.method == "POST" && s.path == "/v2/pipeline"),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 1 + 3);
    assert!(seen.iter().all(|s| !s.body.contains("is_autocommit")));
    assert_eq!(client.protocol_version(), Some(HranaVersion::V2));
}

fn new_run(job: &str) -> NewRun {
    NewRun {
        job_name: job.into(),
        input: json!({"n": 1}),
        ..Default::default()
    }
}

fn completed_step(name: &str, at: Timestamp) -> NewStep {
    NewStep {
        name: name.into(),
        index: 0,
        status: StepStatus::Completed,
        output: Some(json!(1)),
        error: None,
        started_at: at,
        attempt: None,
    }
}

/// The HTTP requests `operation` sent through `store`.
async fn requests_of<T>(
    store: &LibsqlStore,
    operation: impl std::future::Future<Output = T>,
) -> (T, u64) {
    let before = store.requests_sent();
    let value = operation.await;
    (value, store.requests_sent() - before)
}

/// A store on a fresh test server through a recording proxy (offering Hrana 3 or not), migrated.
async fn store_through_proxy(offer_v3: bool) -> (TestServer, LibsqlStore, Arc<Mutex<Vec<Seen>>>) {
    let server = tokio::task::spawn_blocking(TestServer::start)
        .await
        .expect("start the test server");
    let (url, record) = proxy(&server.url, offer_v3).await;
    let store = LibsqlStore::connect(&url, None).await.expect("connect");
    store.migrate().await.expect("migrate");
    (server, store, record)
}

/// The round trips of a trigger handed to the worker (enqueue and claim), a claim, a step and a
/// run's end, on either version; the store works the same on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn a_trigger_and_its_claim_are_one_request_on_either_version() {
    for (offer_v3, version) in [(false, HranaVersion::V2), (true, HranaVersion::V3)] {
        let (_server, store, record) = store_through_proxy(offer_v3).await;
        assert_eq!(store.protocol_version(), Some(version));
        let next = ClaimRequest::new("w", Duration::from_secs(30), 4);
        let now = Timestamp::now();

        // A plain trigger: the insert and the claim in one transaction, one request.
        let (outcome, requests) =
            requests_of(&store, store.enqueue_and_claim(new_run("job"), now, &next)).await;
        let (enqueued, claimed) = outcome.expect("enqueue_and_claim");
        assert_eq!(enqueued.disposition, Disposition::Created);
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, enqueued.run.id);
        assert_eq!(requests, 1, "{version}: one request for enqueue and claim");

        // What the trait's default costs: the enqueue, then the claim.
        let (enqueued, requests) = requests_of(&store, store.enqueue(new_run("job"), now)).await;
        let enqueued = enqueued.expect("enqueue");
        let (claim, claim_requests) = requests_of(&store, store.claim(&next, now)).await;
        assert_eq!(claim.expect("claim")[0].id, enqueued.run.id);
        assert_eq!(requests + claim_requests, 2, "{version}: the default's two");

        // A trigger with keys reads them first: two requests. Its idempotent repeat claims
        // nothing (one request: the lookup).
        let mut keyed = new_run("job");
        keyed.idempotency_key = Some("once".into());
        keyed.concurrency_key = Some("k".into());
        let (outcome, requests) =
            requests_of(&store, store.enqueue_and_claim(keyed.clone(), now, &next)).await;
        let (enqueued, claimed) = outcome.expect("enqueue_and_claim");
        assert_eq!(
            (enqueued.disposition, claimed.len(), requests),
            (Disposition::Created, 1, 2)
        );
        let (outcome, requests) =
            requests_of(&store, store.enqueue_and_claim(keyed, now, &next)).await;
        let (again, claimed) = outcome.expect("enqueue_and_claim");
        assert_eq!(again.run.id, enqueued.run.id);
        assert_eq!(
            (again.disposition, claimed.len(), requests),
            (Disposition::Idempotent, 0, 1)
        );

        // A step, then the run's end with the next claim: one request each.
        let run = &claimed_run(&store, &enqueued.run.id).await;
        let fence = Fence::of(run);
        let (step, requests) = requests_of(
            &store,
            store.persist_step(&fence, completed_step("s", now), now),
        )
        .await;
        assert!(step.expect("persist_step").is_some());
        assert_eq!(requests, 1, "{version}: a step");
        let (finished, requests) = requests_of(
            &store,
            store.finish_run(
                &fence,
                Transition::Complete { output: None },
                now,
                Some(&next),
            ),
        )
        .await;
        assert!(finished.expect("finish_run").landed);
        assert_eq!(requests, 1, "{version}: a run's end and the next claim");

        let seen = seen(&record);
        let pipeline = format!("/v{}/pipeline", version.number());
        assert_eq!(seen.iter().filter(|s| s.path == "/v3").count(), 1);
        assert!(
            seen.iter()
                .filter(|s| s.method == "POST")
                .all(|s| s.path == pipeline),
            "{version}: {seen:?}"
        );
    }
}

async fn claimed_run(store: &LibsqlStore, id: &str) -> durably::Run {
    store
        .get_run(id)
        .await
        .expect("get_run")
        .expect("the run exists")
}
