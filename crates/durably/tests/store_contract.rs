//! The `Store` contract (`durably::testing::contract`, exported for any backend) on every
//! backend of this crate: SQLite file, SQLite in memory, PostgreSQL, and remote libSQL (the `tursodb` test server, one per test).
mod common;
#[path = "libsql_support/mod.rs"]
mod libsql_support;

use common::Ends;
#[allow(unused_imports)]
use durably::store::ClaimRequest;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb, within};
use durably::{
    Disposition, Labels, RunFilter, RunStatus, SqliteStore, Store, Timestamp,
    store::{Fence, NewRun},
};
use serde_json::{Value, json};

const LEASE: Duration = Duration::from_secs(30);

/// A fresh, migrated store on `backend`, with the database it lives in.
async fn fresh(backend: Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::new(backend);
    db.store.migrate().await.expect("migrate");
    let store = db.store.clone();
    (db, store)
}

mod sqlite_file {
    durably::store_contract_tests!(|| super::fresh(super::Backend::SqliteFile));
}

mod sqlite_memory {
    durably::store_contract_tests!(|| super::fresh(super::Backend::SqliteMemory));
}

mod postgres {
    durably::store_contract_tests!(
        || super::fresh(super::Backend::Postgres),
        #[cfg_attr(
            not(durably_postgres_tests),
            ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
        )]
    );
}

/// A fresh, migrated libSQL store on a test server of its own (the guard stops it).
async fn fresh_libsql() -> (libsql_support::TestServer, Arc<dyn Store>) {
    let server = tokio::task::spawn_blocking(libsql_support::TestServer::start)
        .await
        .expect("start the test server");
    let store = durably::store::LibsqlStore::connect(&server.url, None)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    (server, Arc::new(store))
}

mod libsql {
    durably::store_contract_tests!(
        super::fresh_libsql,
        #[cfg_attr(
            not(durably_libsql_tests),
            ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
        )]
    );
}

fn new_run(job: &str, input: Value) -> NewRun {
    NewRun {
        job_name: job.into(),
        input,
        idempotency_key: None,
        concurrency_key: None,
        labels: Labels::new(),
        coalesce: None,
        ..Default::default()
    }
}

async fn enqueue(store: &Arc<dyn Store>, run: NewRun, now: Timestamp) -> durably::Run {
    let enqueued = store.enqueue(run, now).await.expect("enqueue");
    assert_eq!(enqueued.disposition, Disposition::Created);
    enqueued.run
}

// ---- SQLite file only: several independent stores (own writer threads and connections) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_separate_stores_on_one_file_have_exactly_one_claim_winner() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("race.sqlite");
    let stores: Vec<Arc<dyn Store>> = (0..4)
        .map(|_| Arc::new(SqliteStore::open(&path).expect("open")) as Arc<dyn Store>)
        .collect();
    for store in &stores {
        store.migrate().await.expect("migrate");
    }
    for round in 0..25 {
        let run = enqueue(
            &stores[round % 4],
            new_run("race", json!({"round": round})),
            Timestamp::now(),
        )
        .await;
        let claims: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(w, store)| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .claim(
                            &ClaimRequest::new(format!("runtime-{w}"), LEASE, 1),
                            Timestamp::now(),
                        )
                        .await
                })
            })
            .collect();
        let winners: Vec<durably::Run> = within(
            "claims",
            Duration::from_secs(30),
            futures::future::join_all(claims),
        )
        .await
        .into_iter()
        .flat_map(|r| r.expect("task").expect("claim"))
        .collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        assert_eq!(winners[0].id, run.id);
        assert_eq!(winners[0].lease_generation, 1);
        let finisher = &stores[(round + 1) % 4];
        assert!(
            finisher
                .complete_run(&Fence::of(&winners[0]), None, Timestamp::now())
                .await
                .expect("complete")
        );
    }
    let completed = stores[0]
        .get_runs(&RunFilter::new().status(RunStatus::Completed))
        .await
        .expect("get_runs");
    assert_eq!(completed.len(), 25);
}

// ---- libSQL only: several independent stores (own clients) on one server, the builder, and
// the errors of a wrong URL ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn libsql_separate_stores_on_one_server_have_exactly_one_claim_winner() {
    let (server, first) = fresh_libsql().await;
    let mut stores = vec![first];
    for _ in 0..3 {
        let store = durably::store::LibsqlStore::connect(&server.url, None)
            .await
            .expect("connect");
        stores.push(Arc::new(store) as Arc<dyn Store>);
    }
    for round in 0..10 {
        let run = enqueue(
            &stores[round % 4],
            new_run("race", json!({"round": round})),
            Timestamp::now(),
        )
        .await;
        let claims: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(w, store)| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .claim(
                            &ClaimRequest::new(format!("runtime-{w}"), LEASE, 2),
                            Timestamp::now(),
                        )
                        .await
                })
            })
            .collect();
        let winners: Vec<durably::Run> = within(
            "claims",
            Duration::from_secs(30),
            futures::future::join_all(claims),
        )
        .await
        .into_iter()
        .flat_map(|r| r.expect("task").expect("claim"))
        .collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        assert_eq!(winners[0].id, run.id);
        assert_eq!(winners[0].lease_generation, 1);
        assert!(
            stores[(round + 1) % 4]
                .complete_run(&Fence::of(&winners[0]), None, Timestamp::now())
                .await
                .expect("complete")
        );
    }
    let completed = stores[0]
        .get_runs(&RunFilter::new().status(RunStatus::Completed))
        .await
        .expect("get_runs");
    assert_eq!(completed.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn libsql_builder_runs_a_job_on_the_remote_database() {
    let server = tokio::task::spawn_blocking(libsql_support::TestServer::start)
        .await
        .expect("start the test server");
    let durably = durably::Durably::builder()
        .libsql(&server.url, Some("any-token".into()))
        .polling_interval(Duration::from_millis(20))
        .build()
        .expect("build");
    durably.migrate().await.expect("migrate");
    let job = durably
        .register(durably::Job::new(
            "double",
            |step: durably::StepContext, input: i64| async move {
                let doubled = step
                    .run("double", move |_| async move { Ok(input * 2) })
                    .await?;
                Ok(doubled)
            },
        ))
        .expect("register");
    durably.start();
    let result = within(
        "trigger_and_wait",
        Duration::from_secs(20),
        job.trigger_and_wait(
            21,
            durably::TriggerOptions::new(),
            durably::WaitOptions::new(),
        ),
    )
    .await
    .expect("run completes");
    assert_eq!(result.output, Some(42));
    assert_eq!(durably.store().backend(), "libsql");
    durably.stop().await;
}

#[tokio::test]
async fn libsql_connect_says_what_is_wrong_with_the_url() {
    let error = durably::store::LibsqlStore::connect("ftp://example.com", None)
        .await
        .expect_err("not a libSQL URL");
    assert!(matches!(error, durably::Error::Config(_)), "{error}");
    assert!(error.to_string().contains("ftp://example.com"), "{error}");
    // Nothing listens on port 9 of the loopback interface.
    let error = durably::store::LibsqlStore::connect("http://127.0.0.1:9", None)
        .await
        .expect_err("no server");
    assert!(
        error.to_string().contains("cannot connect") && error.to_string().contains("127.0.0.1:9"),
        "{error}"
    );
}

/// A TCP proxy to the server at `target` (`http://host:port`) on a free loopback port: it
/// forwards every connection (`tursodb` answers one request per connection), except that the
/// answer to the `lose`-th pipeline (counting from 0) is read from the server and thrown away,
/// the client's connection closed without it. Returns the proxy's URL. (The store's first
/// connection is its version probe, `GET v3`, not counted.)
fn lossy_proxy(target: &str, lose: usize) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let target = target.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(&target) else {
                return;
            };
            let (mut client_in, mut server_out) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut server_out);
            });
            std::thread::spawn(move || {
                let mut answer = Vec::new();
                let _ = server.read_to_end(&mut answer);
                if n != lose + 1 {
                    let _ = client.write_all(&answer);
                }
                let _ = client.shutdown(Shutdown::Both);
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn libsql_an_enqueue_whose_answer_is_lost_is_recognised_not_doubled() {
    let (server, direct) = fresh_libsql().await;
    // Request 0: the idempotency lookup; request 1: the insert, whose answer is lost.
    let proxy = lossy_proxy(&server.url, 1);
    let store = durably::store::LibsqlStore::open(&proxy, durably::store::LibsqlOptions::default())
        .expect("open");
    let mut run = new_run("lost", json!({"n": 1}));
    run.idempotency_key = Some("once".into());
    let enqueued = store.enqueue(run, Timestamp::now()).await.expect("enqueue");
    assert_eq!(enqueued.disposition, Disposition::Created);
    let runs = direct.get_runs(&RunFilter::new()).await.expect("get_runs");
    assert_eq!(runs.len(), 1, "one run, not two");
    assert_eq!(runs[0].id, enqueued.run.id);
}

/// A store whose `lose`-th request (from 0) loses its answer, beside a direct one, on a fresh
/// test server; and a run enqueued and claimed through the direct store.
async fn lossy_libsql_with_a_claimed_run(
    lose: usize,
) -> (
    libsql_support::TestServer,
    Arc<dyn Store>,
    durably::store::LibsqlStore,
    durably::Run,
) {
    let (server, direct) = fresh_libsql().await;
    let lossy = durably::store::LibsqlStore::open(
        &lossy_proxy(&server.url, lose),
        durably::store::LibsqlOptions::default(),
    )
    .expect("open");
    direct
        .enqueue(new_run("lost", json!({})), Timestamp::now())
        .await
        .expect("enqueue");
    let mut claimed = direct
        .claim(&ClaimRequest::new("w", LEASE, 1), Timestamp::now())
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    (server, direct, lossy, claimed.remove(0))
}

/// Cancel, delete, resume and signal whose answer is lost: each reads what it asked for back
/// and answers as the lost answer would have; a wait's preparation is sent again (it is
/// idempotent). Nothing is doubled, and none of them reports an error for a write that landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(durably_libsql_tests),
    ignore = "needs `npm ci` in crates/durably/tests/libsql (the tursodb test server)"
)]
async fn libsql_lost_answers_of_cancel_delete_resume_and_signals_are_recognised() {
    use durably::{SignalDisposition, WaitStatus, store::Transition, waits::NewWait};

    // cancel_run: one request, its answer lost.
    let (_server, direct, lossy, run) = lossy_libsql_with_a_claimed_run(0).await;
    assert!(
        lossy
            .cancel_run(&run.id, Timestamp::now())
            .await
            .expect("cancel")
    );
    let stored = direct.get_run(&run.id).await.expect("get").expect("run");
    assert_eq!(stored.status, RunStatus::Cancelled);

    // delete_run: one request, its answer lost.
    let (_server, direct, lossy, run) = lossy_libsql_with_a_claimed_run(0).await;
    assert!(
        direct
            .cancel_run(&run.id, Timestamp::now())
            .await
            .expect("cancel")
    );
    assert!(lossy.delete_run(&run.id).await.expect("delete"));
    assert!(direct.get_run(&run.id).await.expect("get").is_none());

    // resume_run: the read (0), then the transaction (1), whose answer is lost.
    let (_server, direct, lossy, run) = lossy_libsql_with_a_claimed_run(1).await;
    let failed = direct
        .finish_run(
            &Fence::of(&run),
            Transition::Fail {
                error: "boom".into(),
            },
            Timestamp::now(),
            None,
        )
        .await
        .expect("fail");
    assert!(failed.landed);
    let resumed = lossy
        .resume_run(&run.id, Timestamp::now())
        .await
        .expect("resume");
    assert_eq!(resumed.status, RunStatus::Pending);
    let stored = direct.get_run(&run.id).await.expect("get").expect("run");
    assert_eq!(stored.status, RunStatus::Pending);

    // prepare_wait: one transaction, its answer lost, sent again: one wait.
    let (_server, direct, lossy, run) = lossy_libsql_with_a_claimed_run(0).await;
    let wait = lossy
        .prepare_wait(&Fence::of(&run), NewWait::new("approval"), Timestamp::now())
        .await
        .expect("prepare")
        .expect("the lease holds");
    let waits = direct.get_waits(&run.id).await.expect("waits");
    assert_eq!(waits.len(), 1, "one wait, not two");
    assert_eq!(waits[0].id, wait.id);

    // signal_wait: the wait (0), the run's state (1), the transaction (2), whose answer is lost.
    let (_server, direct, lossy, run) = lossy_libsql_with_a_claimed_run(2).await;
    let wait = direct
        .prepare_wait(&Fence::of(&run), NewWait::new("approval"), Timestamp::now())
        .await
        .expect("prepare")
        .expect("the lease holds");
    let signalled = lossy
        .signal_wait(&wait.id, json!({"ok": true}), "signal-1", Timestamp::now())
        .await
        .expect("signal");
    assert_eq!(signalled.disposition, SignalDisposition::Accepted);
    assert_eq!(signalled.wait.status, WaitStatus::Resolved);
    let stored = direct.get_wait(&wait.id).await.expect("get").expect("wait");
    assert_eq!(stored.signal_id.as_deref(), Some("signal-1"));
    assert_eq!(stored.payload, Some(json!({"ok": true})));
}
