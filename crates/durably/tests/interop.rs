//! One database shared with the TypeScript runtime, on PostgreSQL (a schema of the test
//! database) and on a SQLite file: the published `@coji/durably` 0.15.0
//! (`tests/interop/interop.mjs`, run with `node`) and this crate trigger, execute and read each
//! other's runs, whichever migrated the database first; a step persisted by one is replayed, not
//! executed again, by the other; a run whose TypeScript worker crashed is finished here; its
//! cancel stops a run executing here; and the two runtimes' workers drain one queue together,
//! with shared concurrency keys.
//!
//! Needs `node` on PATH and `npm ci` in `tests/interop` (its native better-sqlite3 build for the
//! SQLite tests), and `DURABLY_TEST_POSTGRES_URL` for the PostgreSQL ones (`.ci/run` does all
//! three); without them the tests are reported as ignored, with the reason (build.rs).
mod common;

use durably::store::ClaimRequest;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Backend, LIMIT, TestDb, eventually, postgres_url, within};
use durably::{
    EventType, Job, RunFilter, RunStatus, StepContext, StepStatus, Timestamp, TriggerOptions,
    WaitOptions,
    store::{Fence, NewStep},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The job both runtimes define: `interop.mjs` has the same name, steps and output shape.
const JOB: &str = "interop-double";

#[derive(Serialize, Deserialize)]
struct Input {
    n: i64,
}

#[derive(Serialize, Deserialize)]
struct Output {
    doubled: i64,
    by: String,
}

fn double_job() -> Job<Input, Output> {
    Job::new(JOB, |step: StepContext, input: Input| async move {
        let doubled = step
            .run("double", move |_| async move { Ok(input.n * 2) })
            .await?;
        let by = step
            .run("sign", |_| async { Ok("rust".to_owned()) })
            .await?;
        step.progress(2, Some(2), Some("signed")).await?;
        Ok(Output { doubled, by })
    })
}

/// Where both runtimes work: a PostgreSQL URL and schema, or a SQLite file (schema `-`).
#[derive(Clone)]
struct Place {
    database: String,
    schema: String,
}

fn place_of(db: &TestDb) -> Place {
    match (&db.schema, &db.path) {
        (Some(schema), _) => Place {
            database: postgres_url(),
            schema: schema.clone(),
        },
        (None, Some(path)) => Place {
            database: path.display().to_string(),
            schema: "-".into(),
        },
        (None, None) => panic!("the TypeScript runtime cannot open an in-memory database"),
    }
}

/// Runs `node interop.mjs command database schema args…` to its end.
async fn node(command: &str, place: &Place, args: &[String]) -> std::process::Output {
    let mut node = std::process::Command::new("node");
    node.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop"))
        .args(["interop.mjs", command, &place.database, &place.schema])
        .args(args);
    tokio::task::spawn_blocking(move || node.output())
        .await
        .expect("join")
        .expect("run node")
}

/// Runs `node interop.mjs command database schema args…` and returns what it printed (JSON).
async fn typescript(command: &str, place: &Place, args: &[String]) -> Value {
    let output = node(command, place, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node interop.mjs {command} failed ({}): {}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Runs triggered by the TypeScript runtime, in a database it migrated, are executed by a Rust
/// worker; the TypeScript runtime reads their outputs, progress and steps back.
async fn runs_the_typescript_runtime_triggers_are_executed_here(backend: Backend) {
    let db = TestDb::new(backend);
    let place = place_of(&db);
    if backend == Backend::Postgres {
        let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA \"{}\"", place.schema))
            .await
            .expect("create schema");
    }
    assert_eq!(
        typescript("migrate", &place, &[]).await,
        json!({"migrated": true})
    );

    // Our migration finds upstream's version 1 and adds nothing upstream would see.
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    durably.register(double_job()).expect("register");
    let ids: Vec<String> =
        serde_json::from_value(typescript("trigger", &place, &["3".into()]).await)
            .expect("run ids");
    assert_eq!(ids.len(), 3);
    durably.start();
    for id in &ids {
        let run = within("a run the TypeScript runtime triggered", LIMIT, async {
            durably.wait_for_run(id, WaitOptions::new()).await
        })
        .await
        .expect("the run completes");
        assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    }
    durably.stop().await;

    // Our label filter finds the runs it triggered.
    let labelled = RunFilter::new().label("from", "typescript");
    let mut found: Vec<_> = durably
        .get_runs(&labelled)
        .await
        .expect("list")
        .into_iter()
        .map(|run| run.id)
        .collect();
    found.sort();
    assert_eq!(found, ids);

    let read = typescript("read", &place, &ids).await;
    for (n, entry) in read.as_array().expect("an array").iter().enumerate() {
        let run = &entry["run"];
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["jobName"], JOB);
        assert_eq!(run["input"], json!({"n": n}));
        assert_eq!(run["output"], json!({"doubled": 2 * n, "by": "rust"}));
        assert_eq!(run["labels"], json!({"from": "typescript"}));
        assert_eq!(
            run["progress"],
            json!({"current": 2, "total": 2, "message": "signed"})
        );
        assert_eq!(run["completedStepCount"], 2);
        let steps: Vec<(Value, Value, Value, Value)> = entry["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| {
                (
                    s["name"].clone(),
                    s["index"].clone(),
                    s["status"].clone(),
                    s["output"].clone(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            vec![
                (json!("double"), json!(0), json!("completed"), json!(2 * n)),
                (json!("sign"), json!(1), json!("completed"), json!("rust")),
            ],
            "{entry}"
        );
    }
}

/// Runs triggered here, in a database this crate migrated, are executed by the TypeScript
/// runtime's worker (`processOne`); their outputs and steps read back here.
async fn runs_triggered_here_are_executed_by_the_typescript_runtime(backend: Backend) {
    let db = TestDb::new(backend);
    let place = place_of(&db);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let job = durably.register(double_job()).expect("register");
    let labels = BTreeMap::from([("from".to_owned(), "rust".to_owned())]);
    let mut ids = Vec::new();
    for n in 0..3 {
        let options = TriggerOptions::new().labels(labels.clone());
        ids.push(
            job.trigger_with(Input { n }, options)
                .await
                .expect("trigger")
                .run
                .id,
        );
    }

    assert_eq!(typescript("work", &place, &[]).await["processed"], 3);
    // Its label filter (through `durably_run_labels`) finds the runs triggered here.
    let labelled = typescript("labelled", &place, &["from".into(), "rust".into()]).await;
    assert_eq!(labelled, json!(ids));

    for (n, id) in ids.iter().enumerate() {
        let n = n as i64;
        let run = durably.get_run(id).await.expect("read").expect("the run");
        assert_eq!(run.status, RunStatus::Completed, "{run:?}");
        assert_eq!(
            run.output,
            Some(json!({"doubled": 2 * n, "by": "typescript"}))
        );
        assert_eq!(run.labels, labels);
        // Its progress is not checked: upstream does not await the progress write (SPEC §3,
        // quirk 18), so the run may complete first and the fenced write then finds no lease.
        let steps = durably.get_steps(id).await.expect("steps");
        let steps: Vec<_> = steps
            .iter()
            .map(|s| (s.name.as_str(), s.index, s.status, s.output.clone()))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("double", 0, StepStatus::Completed, Some(json!(2 * n))),
                ("sign", 1, StepStatus::Completed, Some(json!("typescript"))),
            ]
        );
    }
}

/// A run that a Rust worker left half done (one step persisted, then its lease given back, as
/// after a lost lease) is finished by the TypeScript runtime, which returns the stored step
/// result instead of executing the step again.
async fn a_step_persisted_here_is_replayed_by_the_typescript_runtime(backend: Backend) {
    let db = TestDb::new(backend);
    let place = place_of(&db);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let job = durably.register(double_job()).expect("register");
    let id = job.trigger(Input { n: 5 }).await.expect("trigger").run.id;

    let store = durably.store();
    let now = Timestamp::now();
    let claimed = store
        .claim(
            &ClaimRequest::new("rust-worker", Duration::from_secs(60), 1),
            now,
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let fence = Fence::of(&claimed[0]);
    // A value the step function would never return (5 × 2 = 10): only a replay yields it.
    let step = NewStep {
        name: "double".into(),
        index: 0,
        status: StepStatus::Completed,
        output: Some(json!(999)),
        error: None,
        started_at: now,
        attempt: None,
    };
    store
        .persist_step(&fence, step, now)
        .await
        .expect("persist")
        .expect("the fence holds");
    assert!(store.release_lease(&fence, now).await.expect("release"));

    assert_eq!(typescript("work", &place, &[]).await["processed"], 1);
    let run = durably.get_run(&id).await.expect("read").expect("the run");
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(
        run.output,
        Some(json!({"doubled": 999, "by": "typescript"}))
    );
    // `sign` at index 2: upstream starts a resumed run's step index at its `current_step_index`
    // (1 here) and the replayed `double` advances it too (UPSTREAM.md §3.2, index drift).
    let names: Vec<_> = durably
        .get_steps(&id)
        .await
        .expect("steps")
        .into_iter()
        .map(|s| (s.name, s.index))
        .collect();
    assert_eq!(
        names,
        vec![("double".to_owned(), 0), ("sign".to_owned(), 2)]
    );
}

/// What a keyed run's execution returns: who executed it, and when (ms since the epoch).
#[derive(Serialize, Deserialize)]
struct Execution {
    by: String,
    started: u64,
    ended: u64,
}

fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Steps executed here: `(n, step name)`.
type Executed = Arc<Mutex<Vec<(i64, String)>>>;

/// `interop-keyed-{i}` as `interop.mjs` defines it: two 30 ms steps.
fn keyed_job(i: usize, executed: &Executed) -> Job<Input, Execution> {
    let executed = executed.clone();
    Job::new(
        format!("interop-keyed-{i}"),
        move |step: StepContext, input: Input| {
            let executed = executed.clone();
            async move {
                let started = epoch_millis();
                for name in ["first", "second"] {
                    let executed = executed.clone();
                    step.run(name, move |_| async move {
                        executed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((input.n, name.to_owned()));
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok(name.to_owned())
                    })
                    .await?;
                }
                let by = "rust".to_owned();
                Ok(Execution {
                    by,
                    started,
                    ended: epoch_millis(),
                })
            }
        },
    )
}

/// A TypeScript worker and a Rust worker drain one queue at once, with concurrency keys shared
/// by both (the same `hashtext(key)` advisory locks): every run completes, every step executes
/// exactly once across the two runtimes, and runs of one key never execute at the same time.
async fn typescript_and_rust_workers_drain_one_queue_with_shared_keys(backend: Backend) {
    const JOBS: usize = 10;
    const KEYS: usize = 4;
    let db = TestDb::new(backend);
    let place = place_of(&db);
    let durably = db
        .durably(|b| b.preserve_steps(true).max_concurrent_runs(4))
        .await;
    let errors = Arc::new(Mutex::new(Vec::new()));
    let _listener = {
        let errors = errors.clone();
        durably.on(EventType::WorkerError, move |event| {
            errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(event.clone());
        })
    };
    let executed = Executed::default();
    let handles: Vec<_> = (0..JOBS)
        .map(|i| durably.register(keyed_job(i, &executed)).expect("register"))
        .collect();
    // One pending run per job and key (upstream's unique index), so ten jobs share four keys.
    let mut keys = HashMap::new();
    for (i, handle) in handles.iter().enumerate() {
        for k in 0..KEYS {
            let n = (i * KEYS + k) as i64;
            let options = TriggerOptions::new().concurrency_key(format!("key-{k}"));
            let id = handle
                .trigger_with(Input { n }, options)
                .await
                .expect("trigger")
                .run
                .id;
            keys.insert(id, k);
        }
    }

    // The TypeScript worker starts first; ours joins once it has leased a run.
    let typescript_worker = tokio::spawn({
        let place = place.clone();
        async move { typescript("work", &place, &[]).await }
    });
    eventually("the TypeScript worker leases a run", LIMIT, || async {
        let runs = durably.get_runs(&RunFilter::new()).await.ok()?;
        runs.iter()
            .any(|run| run.lease_owner.as_deref() == Some("typescript-worker"))
            .then_some(())
    })
    .await;
    durably.start();
    let typescript_worker = within("the TypeScript worker", LIMIT, typescript_worker)
        .await
        .expect("join");
    let completed = RunFilter::new().status(RunStatus::Completed);
    eventually("every run completed", LIMIT, || async {
        let done = durably.get_runs(&completed).await.ok()?;
        (done.len() == JOBS * KEYS).then_some(())
    })
    .await;
    durably.stop().await;

    // No claim failed (a claim aborted as a deadlock victim is reported as a worker:error).
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(errors.is_empty(), "worker errors: {errors:?}");

    // Every step exactly once, across both runtimes.
    let mut steps: Vec<(i64, String)> = executed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let here = steps.len();
    let there: Vec<(i64, String)> =
        serde_json::from_value(typescript_worker["executed"].clone()).expect("executed steps");
    steps.extend(there.iter().cloned());
    steps.sort();
    let expected: Vec<(i64, String)> = (0..(JOBS * KEYS) as i64)
        .flat_map(|n| [(n, "first".to_owned()), (n, "second".to_owned())])
        .collect();
    assert_eq!(
        steps,
        expected,
        "{here} steps executed here, {} there",
        there.len()
    );
    assert!(!there.is_empty() && here > 0, "both runtimes executed runs");

    // Runs of one key one after another: ordered by start, each starts after the last ended.
    let mut by_key: HashMap<usize, Vec<Execution>> = HashMap::new();
    for run in durably.get_runs(&completed).await.expect("runs") {
        let execution: Execution =
            serde_json::from_value(run.output.clone().expect("output")).expect("an execution");
        assert!(["rust", "typescript"].contains(&execution.by.as_str()));
        by_key.entry(keys[&run.id]).or_default().push(execution);
    }
    for (key, mut executions) in by_key {
        executions.sort_by_key(|e| e.started);
        for pair in executions.windows(2) {
            assert!(
                pair[1].started >= pair[0].ended,
                "key-{key}: a run by {} started at {} before one by {} ended at {}",
                pair[1].by,
                pair[1].started,
                pair[0].by,
                pair[0].ended
            );
        }
    }
}

/// A run executing here, cancelled by the TypeScript runtime (which sends no `NOTIFY`), stops
/// here: the next lease renewal finds the run cancelled and fires the step's cancellation token,
/// and nothing this worker writes afterwards changes the run.
async fn a_cancel_by_the_typescript_runtime_stops_the_run_executing_here(backend: Backend) {
    let db = TestDb::new(backend);
    let place = place_of(&db);
    let durably = db
        .durably(|b| b.lease_renew_interval(Duration::from_millis(200)))
        .await;
    let started = common::Gate::new();
    let token_fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let job = durably
        .register(Job::new("interop-wait", {
            let (started, token_fired) = (started.clone(), token_fired.clone());
            move |step: StepContext, _: Input| {
                let (started, token_fired) = (started.clone(), token_fired.clone());
                async move {
                    step.run("wait", move |cancel| async move {
                        started.open();
                        tokio::select! {
                            _ = cancel.cancelled() => token_fired.store(true, Ordering::SeqCst),
                            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                        }
                        Ok("waited".to_owned())
                    })
                    .await?;
                    Ok("finished".to_owned())
                }
            }
        }))
        .expect("register");
    let id = job.trigger(Input { n: 1 }).await.expect("trigger").run.id;
    durably.start();
    within("the step starts", LIMIT, started.wait()).await;

    assert_eq!(
        typescript("cancel", &place, std::slice::from_ref(&id)).await,
        json!({"cancelled": id})
    );
    eventually("the step's cancellation token fires", LIMIT, || async {
        token_fired.load(Ordering::SeqCst).then_some(())
    })
    .await;
    durably.stop().await;
    let run = durably.get_run(&id).await.expect("read").expect("the run");
    assert_eq!(run.status, RunStatus::Cancelled, "{run:?}");
    assert_eq!(run.output, None);
    let steps = durably.get_steps(&id).await.expect("steps");
    assert!(
        steps.iter().all(|s| s.status != StepStatus::Completed),
        "no completed step was recorded after the cancel: {steps:?}"
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Crashed {
    first: String,
    second: String,
}

/// A TypeScript worker dies inside a run's second step; once its lease expires our worker takes
/// the run over: the first step returns the result the TypeScript runtime stored (it does not
/// run again here), the second runs here, and the run completes under the new lease.
async fn a_run_whose_typescript_worker_crashed_is_finished_here(backend: Backend) {
    let db = TestDb::new(backend);
    let place = place_of(&db);
    let durably = db.durably(|b| b.preserve_steps(true)).await;
    let first_here = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let job = durably
        .register(Job::new("interop-crash", {
            let first_here = first_here.clone();
            move |step: StepContext, _: Input| {
                let first_here = first_here.clone();
                async move {
                    let first = step
                        .run("first", move |_| async move {
                            first_here.store(true, Ordering::SeqCst);
                            Ok("first by rust".to_owned())
                        })
                        .await?;
                    let second = step
                        .run("second", |_| async { Ok("second by rust".to_owned()) })
                        .await?;
                    Ok(Crashed { first, second })
                }
            }
        }))
        .expect("register");
    let id = job.trigger(Input { n: 1 }).await.expect("trigger").run.id;

    let crashed = node("crash", &place, &[]).await;
    assert_eq!(
        crashed.status.code(),
        Some(3),
        "the TypeScript worker exits inside step 2: {}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    let left = durably.get_run(&id).await.expect("read").expect("the run");
    assert_eq!(left.status, RunStatus::Leased, "{left:?}");
    assert_eq!(
        left.lease_owner.as_deref(),
        Some("typescript-crashing-worker")
    );

    durably.start();
    let done = within("the run is taken over and completes", LIMIT, async {
        durably.wait_for_run(&id, WaitOptions::new()).await
    })
    .await
    .expect("the run completes");
    durably.stop().await;
    assert_eq!(done.status, RunStatus::Completed, "{done:?}");
    assert_eq!(
        done.output,
        Some(json!({"first": "first by typescript", "second": "second by rust"}))
    );
    assert!(done.lease_generation >= 2, "a new lease: {done:?}");
    assert!(
        !first_here.load(Ordering::SeqCst),
        "the first step ran again here"
    );
}

/// Runs that wait for their time here (a delayed run, a run between two attempts of its retry
/// policy) are `waiting` on durable waits: the TypeScript runtime's worker never claims them,
/// while it does claim an ordinary pending run of the same job.
async fn runs_waiting_for_their_time_are_never_claimed_by_the_typescript_runtime(backend: Backend) {
    let db = TestDb::new(backend);
    let place = place_of(&db);
    let durably = db.durably(|b| b).await;
    // The TypeScript runtime's job, defined here to fail its first execution and retry it an
    // hour later.
    let failing = Job::new(JOB, |step: StepContext, _input: Input| async move {
        step.run("double", |_| async move {
            Err::<i64, _>(durably::Error::Job("first execution fails".into()).into())
        })
        .await?;
        Ok(Output {
            doubled: 0,
            by: "rust".into(),
        })
    })
    .retry(durably::RetryPolicy::constant(2, Duration::from_secs(3600)));
    let job = durably.register(failing).expect("register");
    let delayed = job
        .trigger_with(
            Input { n: 1 },
            TriggerOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .expect("trigger delayed")
        .run
        .id;
    let backing_off = job.trigger(Input { n: 2 }).await.expect("trigger").run.id;
    durably.start();
    eventually(
        "the failed run waits for its next attempt",
        LIMIT,
        || async {
            let run = durably.get_run(&backing_off).await.expect("get")?;
            (run.status == RunStatus::Waiting).then_some(())
        },
    )
    .await;
    durably.stop().await;

    assert_eq!(typescript("work", &place, &[]).await["processed"], 0);
    for id in [&delayed, &backing_off] {
        let run = durably.get_run(id).await.expect("get").expect("run");
        assert_eq!(run.status, RunStatus::Waiting, "{run:?}");
    }
    // The same worker does take a pending run of that job.
    let pending = job.trigger(Input { n: 3 }).await.expect("trigger").run.id;
    assert_eq!(typescript("work", &place, &[]).await["processed"], 1);
    let run = durably.get_run(&pending).await.expect("get").expect("run");
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
}

/// Each scenario on PostgreSQL (a schema of the test database) and on a SQLite file.
macro_rules! interop_tests {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(all(durably_postgres_tests, durably_interop_tests)),
                    ignore = "needs DURABLY_TEST_POSTGRES_URL, node and `npm ci` in crates/durably/tests/interop"
                )]
                async fn $name() {
                    super::$name(Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(durably_interop_sqlite_tests),
                    ignore = "needs node and `npm ci` (with its native better-sqlite3 build) in crates/durably/tests/interop"
                )]
                async fn $name() {
                    super::$name(Backend::SqliteFile).await
                }
            )*
        }
    };
}

interop_tests!(
    runs_the_typescript_runtime_triggers_are_executed_here,
    runs_triggered_here_are_executed_by_the_typescript_runtime,
    a_step_persisted_here_is_replayed_by_the_typescript_runtime,
    typescript_and_rust_workers_drain_one_queue_with_shared_keys,
    a_cancel_by_the_typescript_runtime_stops_the_run_executing_here,
    a_run_whose_typescript_worker_crashed_is_finished_here,
    runs_waiting_for_their_time_are_never_claimed_by_the_typescript_runtime,
);
