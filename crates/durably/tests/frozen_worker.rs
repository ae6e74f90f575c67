//! A worker that freezes (a paused VM, swap, a stalled network, SIGSTOP) longer than its lease
//! while another worker takes its run over and completes it must not run a step of that run
//! when it wakes up: it starts a step, or a held run, only while its lease is provably valid by
//! its own clock, counted from the *send* time of the claim or of its last successful renewal.
//!
//! Each test freezes worker A right after one kind of write committed (a step, a lease renewal,
//! a claim ahead with a completion, a claim of the worker loop), lets worker B take the run over
//! on the same database and complete it, thaws A and checks that no step ran twice.
mod common;

use durably::store::ClaimRequest;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::freezing::{Freezing, Trap};
use common::{Backend, Gate, LIMIT, TestDb, backend_tests, eventually, within};
use durably::{
    Durably, Job, JobHandle, RunStatus, StepContext, StepStatus, Timestamp,
    store::{Fence, NewStep},
};
use serde_json::{Value, json};

const LEASE: Duration = Duration::from_millis(1_000);
const RENEW: Duration = Duration::from_millis(200);

/// Every step execution, as `<worker> <run id> <step>`.
#[derive(Clone, Default)]
struct Trace(Arc<Mutex<Vec<String>>>);

impl Trace {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    /// Executions of `step` of `run`, by any worker.
    fn executions(&self, run: &str, step: &str) -> usize {
        let suffix = format!(" {run} {step}");
        self.lines().iter().filter(|l| l.ends_with(&suffix)).count()
    }
}

/// Two steps, each recorded; on worker A, after step one, the job waits for `pause` (outside
/// any step) when given.
fn two_steps(worker: &'static str, trace: Trace, pause: Option<Gate>) -> Job<Value, u64> {
    Job::new("two-steps", move |step: StepContext, _: Value| {
        let (trace, pause) = (trace.clone(), pause.clone());
        async move {
            let mut total = 0;
            for (k, name) in [(1u64, "one"), (2, "two")] {
                let (trace, line) = (trace.clone(), format!("{worker} {} {name}", step.run_id()));
                total += step
                    .run(name, |_| async move {
                        trace.push(line);
                        Ok(k)
                    })
                    .await?;
                if let (1, Some(pause)) = (k, &pause) {
                    pause.wait().await;
                }
            }
            Ok(total)
        }
    })
}

struct Setup {
    db: TestDb,
    freezing: Arc<Freezing>,
    a: Durably,
    b: Durably,
    /// B's handle of the job (B triggers: its worker is not started yet, so nothing is handed
    /// to a worker).
    job_b: JobHandle<Value, u64>,
    trace: Trace,
}

/// Worker A on a freezing store and worker B on the plain one, both with a 1 s lease and
/// `preserve_steps`; neither started.
async fn setup(
    backend: Backend,
    max_runs_a: usize,
    pause_a: Option<Gate>,
    preserve_steps: bool,
) -> Setup {
    let db = TestDb::new(backend);
    // The step policy is the store's: the wrapper wraps the view with the one asked for.
    let store = db
        .store
        .with_step_policy(preserve_steps)
        .expect("a view with the step policy");
    let freezing = Arc::new(Freezing::new(store));
    let trace = Trace::default();
    let a = Durably::builder()
        .shared_store(freezing.clone())
        .polling_interval(Duration::from_millis(20))
        .lease_duration(LEASE)
        .lease_renew_interval(RENEW)
        .max_concurrent_runs(max_runs_a)
        .preserve_steps(preserve_steps)
        .build()
        .expect("build A");
    a.migrate().await.expect("migrate");
    a.register(two_steps("A", trace.clone(), pause_a))
        .expect("register on A");
    let b = db
        .durably(|b| {
            b.lease_duration(LEASE)
                .lease_renew_interval(RENEW)
                .preserve_steps(preserve_steps)
        })
        .await;
    let job_b = b
        .register(two_steps("B", trace.clone(), None))
        .expect("register on B");
    Setup {
        db,
        freezing,
        a,
        b,
        job_b,
        trace,
    }
}

impl Setup {
    async fn trigger(&self) -> String {
        self.job_b.trigger(json!({})).await.expect("trigger").run.id
    }

    /// Waits for A to freeze, lets B take over and complete `runs`, thaws A and waits until A
    /// stopped (so whatever A would do after waking up is done).
    async fn take_over_and_thaw(&self, runs: &[String]) {
        within("worker A freezes", LIMIT, self.freezing.frozen.wait()).await;
        self.b.start();
        for id in runs {
            let run = eventually("B completes the run", LIMIT, || async {
                self.b
                    .get_run(id)
                    .await
                    .expect("get_run")
                    .filter(|run| run.status.is_terminal())
            })
            .await;
            assert_eq!(run.status, RunStatus::Completed, "run {id}: {run:?}");
            assert_eq!(run.output, Some(json!(3)));
        }
        self.freezing.thaw();
    }

    async fn stop(&self) {
        within("A stops", LIMIT, self.a.stop()).await;
        within("B stops", LIMIT, self.b.stop()).await;
        let _ = &self.db;
    }

    /// Every step of every run ran exactly once.
    fn assert_each_step_once(&self, runs: &[String]) {
        for id in runs {
            for step in ["one", "two"] {
                assert_eq!(
                    self.trace.executions(id, step),
                    1,
                    "step {step} of run {id}: {:?}",
                    self.trace.lines()
                );
            }
        }
    }
}

/// A freezes right after its step `one` committed; B completes the run meanwhile. A must not
/// run step `two` when the late reply arrives.
async fn frozen_after_a_step_write_runs_no_further_step(backend: Backend) {
    let s = setup(backend, 1, None, true).await;
    let id = s.trigger().await;
    s.freezing.arm(Trap::StepPersisted("one".into()));
    s.a.start();
    s.take_over_and_thaw(std::slice::from_ref(&id)).await;
    s.stop().await;
    s.assert_each_step_once(std::slice::from_ref(&id));
    assert_eq!(
        s.trace.lines(),
        [format!("A {id} one"), format!("B {id} two")]
    );
}

/// A's lease renewal commits, then A freezes until B has completed the run; the renewal's late
/// reply must not make A trust its lease again.
async fn frozen_after_a_renewal_runs_no_further_step(backend: Backend) {
    let pause = Gate::new();
    let s = setup(backend, 1, Some(pause.clone()), true).await;
    let id = s.trigger().await;
    s.a.start();
    eventually("A ran step one", LIMIT, || async {
        (s.trace.executions(&id, "one") == 1).then_some(())
    })
    .await;
    // A's job now waits outside any step while its keeper renews the lease.
    s.freezing.arm(Trap::LeaseRenewed);
    s.take_over_and_thaw(std::slice::from_ref(&id)).await;
    pause.open();
    s.stop().await;
    s.assert_each_step_once(std::slice::from_ref(&id));
    assert_eq!(
        s.trace.lines(),
        [format!("A {id} one"), format!("B {id} two")]
    );
}

/// A's completion claims two runs ahead for its slot, then A freezes; B completes both. A must
/// not start either when it wakes up.
async fn frozen_after_a_claim_ahead_starts_no_held_run(backend: Backend) {
    let s = setup(backend, 1, None, true).await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(s.trigger().await);
    }
    s.freezing.arm(Trap::CompletionClaimed);
    s.a.start();
    within("worker A freezes", LIMIT, s.freezing.frozen.wait()).await;
    // A completed the first run it claimed and holds the two others.
    let first = eventually("A completed one run", LIMIT, || async {
        runs.iter()
            .find(|id| s.trace.executions(id, "two") == 1)
            .cloned()
    })
    .await;
    let held: Vec<String> = runs.iter().filter(|id| **id != first).cloned().collect();
    s.take_over_and_thaw(&held).await;
    s.stop().await;
    s.assert_each_step_once(&runs);
    let by_a = s
        .trace
        .lines()
        .iter()
        .filter(|l| l.starts_with("A "))
        .count();
    assert_eq!(by_a, 2, "A ran only its first run: {:?}", s.trace.lines());
}

/// A's worker loop claims the run, then A freezes before it starts it; B completes it.
async fn frozen_after_a_claim_starts_no_claimed_run(backend: Backend) {
    let s = setup(backend, 1, None, true).await;
    let id = s.trigger().await;
    s.freezing.arm(Trap::Claimed);
    s.a.start();
    s.take_over_and_thaw(std::slice::from_ref(&id)).await;
    s.stop().await;
    s.assert_each_step_once(std::slice::from_ref(&id));
    assert_eq!(
        s.trace.lines(),
        [format!("B {id} one"), format!("B {id} two")]
    );
}

/// A worker takes over a run whose first step a dead worker persisted, then freezes before its
/// read of the run's completed steps reaches the store; meanwhile another worker completes the
/// run and its steps are deleted (the default). When the read finally answers (no steps), the
/// frozen worker must not run the step.
async fn frozen_before_reading_the_steps_runs_no_step(backend: Backend) {
    // B drops the run's steps when it completes it (the default).
    let s = setup(backend, 1, None, false).await;
    // A worker that died after step one: one persisted step, a lease that has run out.
    let id = s.trigger().await;
    let now = Timestamp::now();
    let dead =
        s.db.store
            .claim(&ClaimRequest::new("dead", Duration::from_millis(1), 1), now)
            .await
            .expect("claim")
            .pop()
            .expect("the run");
    let one = NewStep {
        name: "one".into(),
        index: 0,
        status: StepStatus::Completed,
        output: Some(json!(1)),
        error: None,
        started_at: now,
        attempt: None,
    };
    s.db.store
        .persist_step(&Fence::of(&dead), one, now)
        .await
        .expect("persist")
        .expect("fenced by the dead worker's lease");

    s.freezing.arm(Trap::StepsRead);
    s.a.start();
    s.take_over_and_thaw(std::slice::from_ref(&id)).await;
    s.stop().await;
    assert_eq!(s.trace.lines(), [format!("B {id} two")]);
}

backend_tests!(
    frozen_after_a_step_write_runs_no_further_step,
    frozen_before_reading_the_steps_runs_no_step,
    frozen_after_a_renewal_runs_no_further_step,
    frozen_after_a_claim_ahead_starts_no_held_run,
    frozen_after_a_claim_starts_no_claimed_run,
);

/// The same with a real process: a worker process that stops (SIGSTOP) right after one of its
/// step writes committed, while this process takes the run over and completes it, runs no
/// further step once continued (SIGCONT). The child stops itself at that point, so the test is
/// deterministic: stopped at a random moment, a process may hold SQLite's write lock (or be in
/// the middle of a PostgreSQL transaction) and block every other writer until it continues.
mod sigstop {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};

    use super::*;
    use common::postgres_store;

    const ENV_DB: &str = "DURABLY_TEST_FROZEN_DB";
    const ENV_SCHEMA: &str = "DURABLY_TEST_FROZEN_SCHEMA";
    const ENV_LOG: &str = "DURABLY_TEST_FROZEN_LOG";
    const ENV_TRAP: &str = "DURABLY_TEST_FROZEN_TRAP";
    const STEPS: u64 = 40;
    /// The child stops once this step's write committed.
    const STOP_AFTER: &str = "s20";
    const CHILD_LEASE: Duration = Duration::from_millis(800);

    /// Appends `<pid> <what>` (a stopped process loses nothing it wrote, so no fsync).
    fn record(log: &Path, what: &str) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        file.write_all(format!("{} {what}\n", std::process::id()).as_bytes())
    }

    /// `STEPS` quick steps, each recorded; a step refused records `abandoned`.
    fn many_steps(log: PathBuf) -> Job<Value, u64> {
        Job::new("many-steps", move |step: StepContext, _: Value| {
            let log = log.clone();
            async move {
                for k in 1..=STEPS {
                    let log2 = log.clone();
                    let ran = step
                        .run(&format!("s{k}"), |_| async move {
                            record(&log2, &format!("s{k}"))?;
                            // Slow enough for the lease keeper to renew during the run.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            Ok(k)
                        })
                        .await;
                    if let Err(error) = ran {
                        record(&log, &format!("abandoned {error}")).expect("write the log");
                        return Err(error);
                    }
                }
                Ok(STEPS)
            }
        })
    }

    fn instance(store: Arc<dyn durably::Store>, log: &Path) -> Durably {
        let durably = Durably::builder()
            .shared_store(store)
            .lease_duration(CHILD_LEASE)
            .lease_renew_interval(RENEW)
            .polling_interval(Duration::from_millis(20))
            .build()
            .expect("build");
        durably
            .register(many_steps(log.to_path_buf()))
            .expect("register");
        durably
    }

    fn open_store(db: &str, schema: Option<&str>) -> Arc<dyn durably::Store> {
        match schema {
            Some(schema) => Arc::new(postgres_store(schema)),
            None => Arc::new(durably::SqliteStore::open(db).expect("open the SQLite file")),
        }
    }

    /// Entry point of the child process (run by the test below, not directly).
    #[test]
    #[ignore = "child-process entry point of the SIGSTOP tests"]
    fn child_worker() {
        let (Ok(db), Ok(log)) = (std::env::var(ENV_DB), std::env::var(ENV_LOG)) else {
            panic!("child_worker runs only as a child of the SIGSTOP tests");
        };
        let schema = std::env::var(ENV_SCHEMA).ok();
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let freezing = Arc::new(Freezing::new(open_store(&db, schema.as_deref())));
            freezing.stop_process_on_trap();
            freezing.arm(match std::env::var(ENV_TRAP).as_deref() {
                Ok("renewal") => Trap::LeaseRenewed,
                _ => Trap::StepPersisted(STOP_AFTER.into()),
            });
            let durably = instance(freezing, Path::new(&log));
            durably.init().await.expect("init");
            // Work until the parent kills this process.
            tokio::time::sleep(Duration::from_secs(120)).await;
            panic!("child was not killed within 120 s");
        });
    }

    /// The child process; continued and killed when dropped, also when the test fails.
    struct ChildWorker(Child);

    impl ChildWorker {
        fn signal(&self, signal: &str) {
            let status = Command::new("kill")
                .args([signal, &self.0.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} failed");
        }

        /// Whether the process is stopped (state `T` in `/proc/<pid>/stat`).
        fn is_stopped(&self) -> bool {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
            // `pid (comm) state ...`: the state follows the last `)`.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        }
    }

    impl Drop for ChildWorker {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-CONT", &self.0.id().to_string()])
                .status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `(pid, what)` per line of the execution log, in the order written.
    fn lines(log: &Path) -> Vec<(u32, String)> {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .map(|line| {
                let (pid, what) = line.split_once(' ').expect("log line");
                (pid.parse().expect("pid"), what.to_owned())
            })
            .collect()
    }

    /// Where the child stops itself.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum StopAt {
        /// Right after step `STOP_AFTER` committed.
        StepWrite,
        /// Right after its first lease renewal committed (its job goes on meanwhile on
        /// another thread, so the step in flight may run again on the parent).
        Renewal,
    }

    async fn sigstopped_worker_runs_no_step_after_the_takeover(backend: Backend, at: StopAt) {
        let db = TestDb::new(backend);
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("executions.log");
        let path = db
            .path
            .as_ref()
            .map(|path| path.display().to_string())
            .unwrap_or_default();
        let parent = instance(db.store.clone(), &log);
        parent.migrate().await.expect("migrate");
        let run = parent
            .trigger_json("many-steps", json!({}), Default::default())
            .await
            .expect("trigger")
            .run;

        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .args([
                "--ignored",
                "--exact",
                "sigstop::child_worker",
                "--nocapture",
            ])
            .env(ENV_DB, &path)
            .env(ENV_LOG, &log)
            .env(
                ENV_TRAP,
                match at {
                    StopAt::StepWrite => "step",
                    StopAt::Renewal => "renewal",
                },
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(schema) = &db.schema {
            command.env(ENV_SCHEMA, schema);
        }
        let child = ChildWorker(command.spawn().expect("spawn child worker"));
        let child_pid = child.0.id();
        eventually("the child stops itself", Duration::from_secs(60), || {
            let stopped = child.is_stopped();
            async move { stopped.then_some(()) }
        })
        .await;
        parent.start();
        let done = within(
            "the parent completes the run",
            Duration::from_secs(60),
            parent.wait_for_run(&run.id, Default::default()),
        )
        .await
        .expect("completed");
        assert_eq!(done.output, Some(json!(STEPS)));
        child.signal("-CONT");
        // The child wakes up inside the run; it must give the run up at its next step.
        eventually(
            "the child gives the run up",
            Duration::from_secs(30),
            || {
                let gave_up = lines(&log)
                    .iter()
                    .any(|(pid, what)| *pid == child_pid && what.starts_with("abandoned"));
                async move { gave_up.then_some(()) }
            },
        )
        .await;
        drop(child);
        parent.stop().await;

        let lines = lines(&log);
        let ran = |pid: u32| -> Vec<String> {
            lines
                .iter()
                .filter(|(p, what)| *p == pid && !what.starts_with("abandoned"))
                .map(|(_, what)| what.clone())
                .collect()
        };
        let (child_ran, parent_ran) = (ran(child_pid), ran(std::process::id()));
        let step = |k: u64| format!("s{k}");
        // No step ran in the child once the parent had taken the run over.
        let first_of_parent = lines
            .iter()
            .position(|(pid, _)| *pid == std::process::id())
            .expect("the parent ran steps");
        assert!(
            !lines[first_of_parent..]
                .iter()
                .any(|(pid, what)| *pid == child_pid && !what.starts_with("abandoned")),
            "the child ran a step after the takeover: {lines:?}"
        );
        // The child ran a prefix of the steps, the parent the rest, each once; only the step in
        // flight when the child stopped after a renewal may have run in both.
        let stopped_after = child_ran.len() as u64;
        assert_eq!(child_ran, (1..=stopped_after).map(step).collect::<Vec<_>>());
        let resumed_at = match at {
            StopAt::StepWrite => {
                assert_eq!(child_ran.last(), Some(&STOP_AFTER.to_owned()), "{lines:?}");
                stopped_after + 1
            }
            StopAt::Renewal => STEPS - parent_ran.len() as u64 + 1,
        };
        assert!(
            resumed_at == stopped_after + 1 || resumed_at == stopped_after,
            "{lines:?}"
        );
        assert_eq!(
            parent_ran,
            (resumed_at..=STEPS).map(step).collect::<Vec<_>>()
        );
    }

    // A process of its own needs a database it can open: a SQLite file or PostgreSQL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_file_stopped_after_a_step_write() {
        sigstopped_worker_runs_no_step_after_the_takeover(Backend::SqliteFile, StopAt::StepWrite)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_file_stopped_after_a_renewal() {
        sigstopped_worker_runs_no_step_after_the_takeover(Backend::SqliteFile, StopAt::Renewal)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(durably_postgres_tests),
        ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
    )]
    async fn postgres_stopped_after_a_step_write() {
        sigstopped_worker_runs_no_step_after_the_takeover(Backend::Postgres, StopAt::StepWrite)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(durably_postgres_tests),
        ignore = "set DURABLY_TEST_POSTGRES_URL to run the PostgreSQL suite"
    )]
    async fn postgres_stopped_after_a_renewal() {
        sigstopped_worker_runs_no_step_after_the_takeover(Backend::Postgres, StopAt::Renewal).await;
    }
}
