//! Shared harness of the behaviour suite: every test is written once against the public API
//! and run on every backend (SQLite file, SQLite in memory, PostgreSQL), the way River runs one
//! driver suite against every driver.
//!
//! PostgreSQL tests use the database named by `DURABLY_TEST_POSTGRES_URL`, each in a fresh schema
//! `durably_test_<ulid>` dropped afterwards. Without the variable they are reported as ignored
//! (see `build.rs`).
#![allow(dead_code, unused_macros, unused_imports)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use durably::{Durably, DurablyBuilder, PostgresOptions, PostgresStore, SqliteStore, Store};

/// The environment variable naming the PostgreSQL test database.
pub const POSTGRES_URL_VAR: &str = "DURABLY_TEST_POSTGRES_URL";

/// A storage backend under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    SqliteFile,
    SqliteMemory,
    /// A fresh schema in the database named by `DURABLY_TEST_POSTGRES_URL`.
    Postgres,
}

/// The PostgreSQL test database URL (panics when unset: such tests are ignored without it).
pub fn postgres_url() -> String {
    std::env::var(POSTGRES_URL_VAR)
        .unwrap_or_else(|_| panic!("{POSTGRES_URL_VAR} is not set: the PostgreSQL suite needs it"))
}

/// A fresh schema name for one test.
pub fn fresh_schema() -> String {
    format!("durably_test_{}", durably::new_id().to_lowercase())
}

/// A store on `schema` of the test database.
pub fn postgres_store(schema: &str) -> PostgresStore {
    PostgresStore::connect_with(
        &postgres_url(),
        PostgresOptions::default()
            .max_connections(8)
            .schema(Some(schema.to_owned())),
    )
    .expect("connect to the PostgreSQL test database")
}

/// Drops a test schema when dropped (best effort, on a thread of its own so it works from async
/// code and never hangs a test for long).
pub struct PgSchema {
    pub name: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let Ok(url) = std::env::var(POSTGRES_URL_VAR) else {
            return;
        };
        let name = self.name.clone();
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

/// A fresh, isolated database for one test (deleted when dropped).
pub struct TestDb {
    pub store: Arc<dyn Store>,
    pub backend: Backend,
    /// For file backends: the database path (other processes or stores may open it).
    pub path: Option<std::path::PathBuf>,
    /// For PostgreSQL: the test's own schema (other stores or processes may open it with
    /// [`postgres_store`]).
    pub schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgSchema>,
}

impl TestDb {
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::SqliteFile => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("durably.sqlite");
                let store = SqliteStore::open(&path).expect("open sqlite file");
                TestDb {
                    store: Arc::new(store),
                    backend,
                    path: Some(path),
                    schema: None,
                    _dir: Some(dir),
                    _pg: None,
                }
            }
            Backend::SqliteMemory => TestDb {
                store: Arc::new(SqliteStore::memory().expect("open sqlite memory")),
                backend,
                path: None,
                schema: None,
                _dir: None,
                _pg: None,
            },
            Backend::Postgres => {
                let name = fresh_schema();
                TestDb {
                    store: Arc::new(postgres_store(&name)),
                    backend,
                    path: None,
                    schema: Some(name.clone()),
                    _dir: None,
                    _pg: Some(PgSchema { name }),
                }
            }
        }
    }

    /// A builder on this database with fast test timings (polling 20 ms).
    pub fn builder(&self) -> DurablyBuilder {
        Durably::builder()
            .shared_store(self.store.clone())
            .polling_interval(Duration::from_millis(20))
    }

    /// A migrated instance with test timings, configured further by `configure`.
    pub async fn durably(
        &self,
        configure: impl FnOnce(DurablyBuilder) -> DurablyBuilder,
    ) -> Durably {
        let durably = configure(self.builder()).build().expect("build durably");
        durably.migrate().await.expect("migrate");
        durably
    }
}

/// Polls until the run is terminal (completed, failed or cancelled), within [`LIMIT`].
pub async fn terminal(durably: &Durably, id: &str) -> durably::Run {
    eventually("run reaches a terminal state", LIMIT, || async {
        durably
            .get_run(id)
            .await
            .expect("get_run")
            .filter(|run| run.status.is_terminal())
    })
    .await
}

/// Polls until the run is `waiting` (suspended on a durable wait), within [`LIMIT`].
pub async fn waiting(durably: &Durably, id: &str) -> durably::Run {
    eventually("run is waiting", LIMIT, || async {
        durably
            .get_run(id)
            .await
            .expect("get_run")
            .filter(|run| run.status == durably::RunStatus::Waiting)
    })
    .await
}

/// Polls `check` every 10 ms until it returns `Some`, failing the test after `limit`
/// (a generous bound that only guards against hangs).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `future`, failing the test if it takes longer than `limit` (hang guard).
pub async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

/// Generates one `#[tokio::test]` per backend for each listed `async fn name(backend: Backend)`.
///
/// ```ignore
/// async fn trigger_creates_pending_run(backend: Backend) { ... }
/// backend_tests!(trigger_creates_pending_run, other_test);
/// ```
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::SqliteFile).await
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::SqliteMemory).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(durably_postgres_tests),
                    ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
                )]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}
pub(crate) use backend_tests;

/// Holds `ACCESS EXCLUSIVE` on `durably_runs` of a PostgreSQL test schema, so that reads of it
/// wait, and counts the sessions waiting behind it.
pub struct RunsTableLock {
    locker: tokio_postgres::Client,
    observer: tokio_postgres::Client,
    locker_pid: i32,
}

impl RunsTableLock {
    /// Takes the lock in a transaction of its own.
    pub async fn take(schema: &str) -> Self {
        let connect = || async {
            let (client, connection) =
                tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
                    .await
                    .expect("connect");
            tokio::spawn(connection);
            client
        };
        let locker = connect().await;
        // Watched from a session of its own: inside the locker's transaction, pg_stat_activity
        // would stay the snapshot of its first read.
        let observer = connect().await;
        let locker_pid: i32 = locker
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        locker
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE \"{schema}\".durably_runs IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .expect("lock");
        RunsTableLock {
            locker,
            observer,
            locker_pid,
        }
    }

    /// How many sessions wait for the lock.
    pub async fn blocked(&self) -> i64 {
        self.observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&self.locker_pid],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
    }

    /// Lets go of the lock.
    pub async fn release(self) {
        self.locker.batch_execute("ROLLBACK").await.expect("unlock");
    }
}

/// The default hang guard of the behaviour suite.
pub const LIMIT: Duration = Duration::from_secs(10);

/// A one-shot gate: tasks `wait` until someone `open`s it (opening is idempotent).
#[derive(Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Self {
        Gate(Arc::new(tokio::sync::watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// Records every event of an instance (through `on_any`).
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<std::sync::Mutex<Vec<durably::Event>>>);

impl Recorder {
    pub fn attach(durably: &Durably) -> Self {
        let recorder = Recorder::default();
        let sink = recorder.0.clone();
        durably.on_any(move |event| sink.lock().unwrap().push(event.clone()));
        recorder
    }

    /// The events delivered so far.
    pub fn snapshot(&self) -> Vec<durably::Event> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until every event emitted so far was delivered (a sentinel went through the
    /// listener's queue), then returns them without the sentinel.
    pub async fn flush(&self, durably: &Durably) -> Vec<durably::Event> {
        let sentinel = durably.emit(durably::EventKind::WorkerError {
            error: "flush".into(),
            context: "test-flush".into(),
            run_id: None,
        });
        eventually("recorder flush", LIMIT, || async {
            let seen = self.snapshot();
            seen.iter()
                .any(|e| e.sequence == sentinel.sequence)
                .then(|| {
                    seen.into_iter()
                        .filter(|e| e.sequence != sentinel.sequence)
                        .collect()
                })
        })
        .await
    }

    /// The flushed events of one type.
    pub async fn of(
        &self,
        durably: &Durably,
        event_type: durably::EventType,
    ) -> Vec<durably::Event> {
        self.flush(durably)
            .await
            .into_iter()
            .filter(|e| e.event_type() == event_type)
            .collect()
    }
}

/// How many of `events` have type `event_type`.
pub fn count(events: &[durably::Event], event_type: durably::EventType) -> usize {
    events
        .iter()
        .filter(|e| e.event_type() == event_type)
        .count()
}

pub mod freezing;

/// A pass-through store that counts calls and can gate a few of them.
pub mod instrumented {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use durably::maintenance::MaintenanceTask;
    use durably::store::{
        ClaimRequest, Enqueued, Fence, Finished, NewLog, NewRun, NewStep, RunAdmin, Store,
        Transition,
    };
    use durably::{Error, Log, Progress, Run, RunFilter, Step, Timestamp};
    use serde_json::Value;

    use super::Gate;

    /// How an intercepted store call answers instead of reaching the database.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Answer {
        /// As when the lease is lost: `renew_lease` → `Ok(None)`, `complete_run` / `fail_run` →
        /// `Ok(false)`. Nothing is written.
        Refuse,
        /// As when the database fails: `Err(Error::Storage)` whose message contains [`INJECTED`].
        /// Nothing is written.
        Fail,
    }

    /// The message of every injected storage failure.
    pub const INJECTED: &str = "injected failure: database unavailable";

    pub fn injected(operation: &'static str) -> Error {
        Error::storage(operation, INJECTED)
    }

    /// Answers the next `times` calls of one store operation with an [`Answer`].
    #[derive(Default)]
    pub struct Knob(Mutex<Option<(Answer, usize)>>);

    impl Knob {
        pub fn arm(&self, answer: Answer, times: usize) {
            *self.0.lock().expect("knob") = Some((answer, times));
        }

        /// The answer for this call, if it is intercepted.
        fn next(&self) -> Option<Answer> {
            let mut plan = self.0.lock().expect("knob");
            match plan.as_mut() {
                Some((answer, left)) if *left > 0 => {
                    *left -= 1;
                    Some(*answer)
                }
                _ => None,
            }
        }
    }

    /// A store that passes everything through to `inner` while counting calls (`get_run` reads,
    /// claims, expired-lease sweeps, hand-offs), and can hold `enqueue` back after it committed
    /// (so a worker can start the run before the trigger returns), hold a completion back after
    /// it committed, or open a gate once a claim returned a run; its [`Knob`]s make the next
    /// lease renewals, completion writes (`complete_run` and `complete_run_and_claim`), failure
    /// writes or expired-lease sweeps refuse or fail without reaching the database.
    pub struct Instrumented {
        pub inner: Arc<dyn Store>,
        /// Finished `get_run` calls.
        pub reads: Arc<std::sync::atomic::AtomicUsize>,
        /// `claim` calls.
        pub claims: Arc<std::sync::atomic::AtomicUsize>,
        /// `release_expired_leases` calls.
        pub sweeps: Arc<std::sync::atomic::AtomicUsize>,
        /// `enqueue_and_claim` calls (triggers handed to a worker).
        pub hand_offs: Arc<std::sync::atomic::AtomicUsize>,
        /// `complete_run_and_claim` with this output returns (after it wrote) only once the
        /// gate opens.
        pub hold_completion: Option<(Value, Gate)>,
        /// `enqueue` returns only once this gate opens.
        pub hold_enqueue: Option<Gate>,
        /// Opened once a claim returned a run.
        pub open_on_claim: Option<Gate>,
        pub renew: Knob,
        pub complete: Knob,
        pub fail: Knob,
        /// Sweeps fail with either answer.
        pub release: Knob,
    }

    impl Instrumented {
        /// Passes everything through to `inner`, counting, with no gates.
        pub fn over(inner: Arc<dyn Store>) -> Self {
            Instrumented {
                inner,
                reads: Arc::default(),
                claims: Arc::default(),
                sweeps: Arc::default(),
                hand_offs: Arc::default(),
                hold_completion: None,
                hold_enqueue: None,
                open_on_claim: None,
                renew: Knob::default(),
                complete: Knob::default(),
                fail: Knob::default(),
                release: Knob::default(),
            }
        }
    }

    #[async_trait::async_trait]
    impl Store for Instrumented {
        fn backend(&self) -> &'static str {
            self.inner.backend()
        }
        async fn migrate(&self) -> durably::Result<()> {
            self.inner.migrate().await
        }
        async fn schema_version(&self) -> durably::Result<i64> {
            self.inner.schema_version().await
        }
        async fn enqueue(&self, run: NewRun, now: Timestamp) -> durably::Result<Enqueued> {
            let enqueued = self.inner.enqueue(run, now).await;
            if let Some(gate) = &self.hold_enqueue {
                gate.wait().await;
            }
            enqueued
        }
        async fn enqueue_and_claim(
            &self,
            run: NewRun,
            now: Timestamp,
            next: &ClaimRequest,
        ) -> durably::Result<(Enqueued, Vec<Run>)> {
            self.hand_offs
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.enqueue_and_claim(run, now, next).await
        }
        async fn finish_run(
            &self,
            fence: &Fence,
            transition: Transition,
            now: Timestamp,
            then_claim: Option<&ClaimRequest>,
        ) -> durably::Result<Finished> {
            let refused = Finished::default();
            let held = match &transition {
                Transition::Complete { output } => {
                    match self.complete.next() {
                        Some(Answer::Refuse) => return Ok(refused),
                        Some(Answer::Fail) => return Err(injected("complete_run")),
                        None => {}
                    }
                    match &self.hold_completion {
                        Some((value, gate)) if output.as_ref() == Some(value) => Some(gate.clone()),
                        _ => None,
                    }
                }
                Transition::Fail { .. } => {
                    match self.fail.next() {
                        Some(Answer::Refuse) => return Ok(refused),
                        Some(Answer::Fail) => return Err(injected("fail_run")),
                        None => {}
                    }
                    None
                }
                _ => None,
            };
            let done = self
                .inner
                .finish_run(fence, transition, now, then_claim)
                .await;
            if let Some(gate) = held {
                gate.wait().await;
            }
            done
        }
        async fn enqueue_many(
            &self,
            runs: Vec<NewRun>,
            now: Timestamp,
        ) -> durably::Result<Vec<Enqueued>> {
            self.inner.enqueue_many(runs, now).await
        }
        async fn get_run(&self, id: &str) -> durably::Result<Option<Run>> {
            let run = self.inner.get_run(id).await;
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            run
        }
        async fn run_overview(
            &self,
            now: Timestamp,
            window: durably::OverviewWindow,
        ) -> durably::Result<durably::Overview> {
            self.inner.run_overview(now, window).await
        }
        async fn get_runs(&self, filter: &RunFilter) -> durably::Result<Vec<Run>> {
            self.inner.get_runs(filter).await
        }
        async fn get_steps(&self, run_id: &str) -> durably::Result<Vec<Step>> {
            self.inner.get_steps(run_id).await
        }
        async fn get_completed_step(
            &self,
            run_id: &str,
            name: &str,
        ) -> durably::Result<Option<Step>> {
            self.inner.get_completed_step(run_id, name).await
        }
        async fn get_logs(&self, run_id: &str) -> durably::Result<Vec<Log>> {
            self.inner.get_logs(run_id).await
        }
        async fn claim(&self, request: &ClaimRequest, now: Timestamp) -> durably::Result<Vec<Run>> {
            self.claims
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let claimed = self.inner.claim(request, now).await;
            if let (Ok(runs), Some(gate)) = (&claimed, &self.open_on_claim)
                && !runs.is_empty()
            {
                gate.open();
            }
            claimed
        }
        async fn renew_lease(
            &self,
            fence: &Fence,
            now: Timestamp,
            lease: Duration,
        ) -> durably::Result<Option<Timestamp>> {
            match self.renew.next() {
                Some(Answer::Refuse) => Ok(None),
                Some(Answer::Fail) => Err(injected("renew_lease")),
                None => self.inner.renew_lease(fence, now, lease).await,
            }
        }
        async fn release_lease(&self, fence: &Fence, now: Timestamp) -> durably::Result<bool> {
            self.inner.release_lease(fence, now).await
        }
        async fn begin_step_attempt(
            &self,
            fence: &Fence,
            attempt: durably::store::AttemptStart,
            now: Timestamp,
        ) -> durably::Result<bool> {
            self.inner.begin_step_attempt(fence, attempt, now).await
        }
        async fn set_step_attempt_metadata(
            &self,
            fence: &Fence,
            attempt_id: &str,
            metadata: Option<Value>,
            now: Timestamp,
        ) -> durably::Result<bool> {
            self.inner
                .set_step_attempt_metadata(fence, attempt_id, metadata, now)
                .await
        }
        async fn get_step_attempts(
            &self,
            run_id: &str,
        ) -> durably::Result<Vec<durably::StepAttempt>> {
            self.inner.get_step_attempts(run_id).await
        }
        async fn persist_step(
            &self,
            fence: &Fence,
            step: NewStep,
            now: Timestamp,
        ) -> durably::Result<Option<Step>> {
            self.inner.persist_step(fence, step, now).await
        }
        async fn prepare_wait(
            &self,
            fence: &Fence,
            wait: durably::waits::NewWait,
            now: Timestamp,
        ) -> durably::Result<Option<durably::DurableWait>> {
            self.inner.prepare_wait(fence, wait, now).await
        }

        async fn wait_result(
            &self,
            fence: &Fence,
            wait_id: &str,
            now: Timestamp,
        ) -> durably::Result<Option<durably::DurableWait>> {
            self.inner.wait_result(fence, wait_id, now).await
        }

        async fn signal_wait(
            &self,
            wait_id: &str,
            payload: serde_json::Value,
            signal_id: &str,
            now: Timestamp,
        ) -> durably::Result<durably::store::Signalled> {
            self.inner
                .signal_wait(wait_id, payload, signal_id, now)
                .await
        }

        async fn expire_due_waits(&self, now: Timestamp, limit: u64) -> durably::Result<u64> {
            self.inner.expire_due_waits(now, limit).await
        }

        async fn get_wait(&self, wait_id: &str) -> durably::Result<Option<durably::DurableWait>> {
            self.inner.get_wait(wait_id).await
        }

        async fn get_waits(&self, run_id: &str) -> durably::Result<Vec<durably::DurableWait>> {
            self.inner.get_waits(run_id).await
        }

        async fn update_progress(
            &self,
            fence: &Fence,
            progress: Option<Progress>,
            now: Timestamp,
        ) -> durably::Result<bool> {
            self.inner.update_progress(fence, progress, now).await
        }
        async fn append_log(
            &self,
            fence: Option<&Fence>,
            log: NewLog,
            now: Timestamp,
        ) -> durably::Result<Option<Log>> {
            self.inner.append_log(fence, log, now).await
        }
        async fn cancel_run(&self, id: &str, now: Timestamp) -> durably::Result<bool> {
            self.inner.cancel_run(id, now).await
        }
        async fn resume_run(&self, id: &str, now: Timestamp) -> durably::Result<Run> {
            self.inner.resume_run(id, now).await
        }
        async fn delete_run(&self, id: &str) -> durably::Result<bool> {
            self.inner.delete_run(id).await
        }
        async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> durably::Result<u64> {
            self.inner.purge_runs(older_than, limit).await
        }
        async fn release_expired_leases(&self, now: Timestamp) -> durably::Result<Vec<Run>> {
            self.sweeps
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match self.release.next() {
                Some(_) => Err(injected("release_expired_leases")),
                None => self.inner.release_expired_leases(now).await,
            }
        }
        fn preserves_steps(&self) -> bool {
            self.inner.preserves_steps()
        }
        fn admin(&self) -> Option<&dyn RunAdmin> {
            self.inner.admin()
        }
        fn maintenance_tasks(&self) -> Vec<Arc<dyn MaintenanceTask>> {
            self.inner.maintenance_tasks()
        }
        fn notifications(
            &self,
        ) -> Option<tokio::sync::broadcast::Receiver<durably::store::StoreNotice>> {
            self.inner.notifications()
        }
    }
}
pub use instrumented::{Answer, INJECTED, Instrumented, Knob};

pub use durably::testing::Ends;
