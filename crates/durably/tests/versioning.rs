//! Changing job code while runs are in flight (docs/versioning.md), one test per rule: a run is
//! started by version 1 of a job on a SQLite file, completes its first steps and suspends on a
//! durable wait; the v1 instance stops; a new instance on the same file, with version 2 of the
//! job, resumes it once the wait is signalled. Replay matches completed steps by **name**.
//!
//! Also the replay rule for code outside steps (docs/guarantees.md): it runs on every
//! execution, its logs included.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durably::{Durably, Job, NewWait, Run, RunStatus, Step, StepContext, StepStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The step functions that really ran (not replayed), in order, as `name@version`.
type Ran = Arc<Mutex<Vec<String>>>;

fn ran() -> Ran {
    Arc::new(Mutex::new(Vec::new()))
}

fn taken(ran: &Ran) -> Vec<String> {
    std::mem::take(&mut *ran.lock().unwrap())
}

/// One step: its function records that it ran and returns `name@version`.
async fn step_named(
    step: &StepContext,
    name: &str,
    version: &str,
    ran: &Ran,
) -> durably::Result<String> {
    let output = format!("{name}@{version}");
    step.run(name, |_| async move {
        ran.lock().unwrap().push(output.clone());
        Ok(output)
    })
    .await
}

/// Job `order` of a given version: the steps `before`, then the durable wait `wait`, then the
/// steps `after`; its output is every step's output, in call order.
fn order(
    version: &'static str,
    before: &'static [&'static str],
    wait: &'static str,
    after: &'static [&'static str],
    ran: Ran,
) -> Job<Value, Vec<String>> {
    Job::new("order", move |step: StepContext, _input: Value| {
        let ran = ran.clone();
        async move {
            let mut outputs = Vec::new();
            for name in before {
                outputs.push(step_named(&step, name, version, &ran).await?);
            }
            let wait = step.prepare_wait(NewWait::new(wait)).await?;
            step.wait_for(&wait).await?;
            for name in after {
                outputs.push(step_named(&step, name, version, &ran).await?);
            }
            Ok(outputs)
        }
    })
}

/// An instance on the SQLite file `path` (steps preserved, so a finished run's steps can be
/// read), its worker started.
async fn instance(path: &Path, register: impl FnOnce(&Durably)) -> Durably {
    let durably = Durably::builder()
        .sqlite(path)
        .polling_interval(Duration::from_millis(20))
        .preserve_steps(true)
        .build()
        .expect("build");
    register(&durably);
    durably.init().await.expect("init");
    durably
}

/// An instance on the SQLite file `path` without a worker, to read what is stored.
async fn reader(path: &Path) -> Durably {
    let durably = Durably::builder().sqlite(path).build().expect("build");
    durably.migrate().await.expect("migrate");
    durably
}

async fn until_status(durably: &Durably, id: &str, done: impl Fn(RunStatus) -> bool) -> Run {
    until(durably, id, |run| done(run.status)).await
}

async fn until(durably: &Durably, id: &str, done: impl Fn(&Run) -> bool) -> Run {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = durably
            .get_run(id)
            .await
            .expect("get_run")
            .expect("run exists");
        if done(&run) {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {id} stuck in {:?}",
            run.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A temporary directory holding the database file.
struct File {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn file() -> File {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.sqlite");
    File { _dir: dir, path }
}

/// Starts a run of `v1` (job `order`, input `input`) on `file` and returns its id once it is
/// suspended on its wait, the v1 instance stopped.
async fn start_with_v1(file: &File, v1: Job<Value, Vec<String>>, input: Value) -> String {
    let mut handle = None;
    let durably = instance(&file.path, |d| {
        handle = Some(d.register(v1).expect("register v1"));
    })
    .await;
    let id = handle
        .unwrap()
        .trigger(input)
        .await
        .expect("trigger")
        .run
        .id;
    until_status(&durably, &id, |s| s == RunStatus::Waiting).await;
    durably.stop().await;
    id
}

/// A new instance with `register`'s jobs on the same file signals the run's pending wait
/// `wait` and lets it run on until it ends or suspends again. Returns the run and its steps.
async fn resume_with(
    file: &File,
    id: &str,
    wait: &str,
    register: impl FnOnce(&Durably),
) -> (Run, Vec<Step>) {
    let durably = instance(&file.path, register).await;
    let pending = durably
        .get_waits(id)
        .await
        .expect("waits")
        .into_iter()
        .find(|w| w.name == wait)
        .expect("the wait of v1");
    durably
        .signal(&pending.id, json!("go"), "go-1")
        .await
        .expect("signal");
    // Resumed, then ended or suspended on another wait.
    let run = until(&durably, id, |run| {
        run.status.is_terminal()
            || (run.status == RunStatus::Waiting
                && run.waiting_on_wait_id.as_deref() != Some(pending.id.as_str()))
    })
    .await;
    let steps = durably.get_steps(id).await.expect("steps");
    durably.stop().await;
    (run, steps)
}

/// Starts the run every rule starts from: v1 runs steps `a` and `b`, then waits on `go`
/// (its step `c` comes after the wait). Returns the run's id.
async fn start_abc(file: &File) -> String {
    let v1_ran = ran();
    let id = start_with_v1(
        file,
        order("v1", &["a", "b"], "go", &["c"], v1_ran.clone()),
        json!({}),
    )
    .await;
    assert_eq!(taken(&v1_ran), ["a@v1", "b@v1"]);
    id
}

/// Resumes the run with version 2 of `order` (steps `before`, the wait `go`, steps `after`):
/// the run, its steps, and the step functions v2 really ran.
async fn resume_with_order(
    file: &File,
    id: &str,
    before: &'static [&'static str],
    after: &'static [&'static str],
) -> (Run, Vec<Step>, Vec<String>) {
    let v2_ran = ran();
    let v2 = order("v2", before, "go", after, v2_ran.clone());
    let (run, steps) = resume_with(file, id, "go", |d| {
        d.register(v2).expect("register v2");
    })
    .await;
    (run, steps, taken(&v2_ran))
}

fn output(run: &Run) -> Vec<String> {
    assert_eq!(run.status, RunStatus::Completed, "run: {:?}", run.error);
    serde_json::from_value(run.output.clone().expect("output")).expect("a list of outputs")
}

fn names(steps: &[Step]) -> Vec<(&str, i64)> {
    steps
        .iter()
        .filter(|s| s.status == StepStatus::Completed)
        .map(|s| (s.name.as_str(), s.index))
        .collect()
}

/// Renamed: the step under its new name is a new step and runs; the output stored under the old
/// name is never read again.
#[tokio::test]
async fn a_renamed_step_runs_again_under_its_new_name() {
    let file = file();
    let id = start_abc(&file).await;

    let (run, steps, v2_ran) = resume_with_order(&file, &id, &["a", "b-renamed"], &["c"]).await;
    assert_eq!(v2_ran, ["b-renamed@v2", "c@v2"]);
    assert_eq!(output(&run), ["a@v1", "b-renamed@v2", "c@v2"]);
    // The old step's row stays, unread.
    assert_eq!(
        names(&steps),
        [("a", 0), ("b", 1), ("b-renamed", 2), ("c", 3)]
    );
}

/// Added: a new step runs when the resumed run first reaches it, wherever it was inserted; the
/// completed steps around it are replayed. Indexes only grow (it is numbered after them).
#[tokio::test]
async fn an_added_step_runs_and_the_completed_ones_around_it_do_not() {
    let file = file();
    let id = start_abc(&file).await;

    let (run, steps, v2_ran) = resume_with_order(&file, &id, &["a", "inserted", "b"], &["c"]).await;
    assert_eq!(v2_ran, ["inserted@v2", "c@v2"]);
    assert_eq!(output(&run), ["a@v1", "inserted@v2", "b@v1", "c@v2"]);
    assert_eq!(
        names(&steps),
        [("a", 0), ("b", 1), ("inserted", 2), ("c", 3)]
    );
}

/// Removed: the job no longer asks for the step; its stored output is ignored (not an error)
/// and nothing else changes.
#[tokio::test]
async fn a_removed_steps_stored_output_is_ignored() {
    let file = file();
    let id = start_abc(&file).await;

    let (run, steps, v2_ran) = resume_with_order(&file, &id, &["a"], &["c"]).await;
    assert_eq!(v2_ran, ["c@v2"]);
    assert_eq!(output(&run), ["a@v1", "c@v2"]);
    assert_eq!(names(&steps), [("a", 0), ("b", 1), ("c", 2)]);
}

/// Reordered: completed steps are matched by name, not position, so each returns its own stored
/// output in the new order and none runs again.
#[tokio::test]
async fn reordered_completed_steps_each_return_their_own_output() {
    let file = file();
    let id = start_abc(&file).await;

    let (run, steps, v2_ran) = resume_with_order(&file, &id, &["b", "a"], &["c"]).await;
    assert_eq!(v2_ran, ["c@v2"]);
    assert_eq!(output(&run), ["b@v1", "a@v1", "c@v2"]);
    assert_eq!(names(&steps), [("a", 0), ("b", 1), ("c", 2)]);
}

/// A step kept under its name whose output type changed: the stored output no longer
/// deserializes, and the run fails with a message naming the step (nothing runs the step again).
#[tokio::test]
async fn a_step_whose_output_type_changed_fails_the_run() {
    let file = file();
    let id = start_abc(&file).await;

    let v2 = Job::new("order", |step: StepContext, _input: Value| async move {
        let total: u64 = step.run("b", |_| async { Ok(42) }).await?;
        Ok(vec![total.to_string()])
    });
    let (run, _) = resume_with(&file, &id, "go", |d| {
        d.register(v2).expect("register v2");
    })
    .await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.expect("error");
    assert!(
        error.starts_with(&format!(
            "Stored output of step \"b\" of run {id} does not match the step's type"
        )),
        "{error}"
    );
}

/// Waits are identified by name too: a renamed wait is a new wait, so the resumed run
/// suspends again on it, the signal sent to the old one spent.
#[tokio::test]
async fn a_renamed_wait_suspends_the_run_again() {
    let file = file();
    let v1_ran = ran();
    let id = start_with_v1(
        &file,
        order("v1", &["a"], "go", &["c"], v1_ran.clone()),
        json!({}),
    )
    .await;

    let v2_ran = ran();
    let v2 = order("v2", &["a"], "go-renamed", &["c"], v2_ran.clone());
    let (run, _) = resume_with(&file, &id, "go", |d| {
        d.register(v2).expect("register v2");
    })
    .await;
    assert_eq!(run.status, RunStatus::Waiting);
    assert!(taken(&v2_ran).is_empty());
    let waits: Vec<_> = reader(&file.path)
        .await
        .get_waits(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.name, w.status))
        .collect();
    assert_eq!(
        waits,
        [
            ("go".to_owned(), durably::WaitStatus::Resolved),
            ("go-renamed".to_owned(), durably::WaitStatus::Pending)
        ]
    );
}

/// Versioning by a new job name: a worker claims runs of every job in the database, so a run
/// of a job no longer registered fails (`Unknown job: order`). Keep the old job registered
/// until its runs have drained.
#[tokio::test]
async fn a_run_of_a_job_no_longer_registered_fails() {
    let file = file();
    let v1_ran = ran();
    let id = start_with_v1(
        &file,
        order("v1", &["a"], "go", &["c"], v1_ran.clone()),
        json!({}),
    )
    .await;

    let v2_ran = ran();
    let v2 = Job::new("order-v2", |_step: StepContext, _input: Value| async move {
        Ok(Vec::<String>::new())
    });
    let (run, _) = resume_with(&file, &id, "go", |d| {
        d.register(v2).expect("register v2");
    })
    .await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("Unknown job: order"));
    assert!(taken(&v2_ran).is_empty());
}

/// The job's input as v1 stored it (no `version`) and as v2 triggers it.
#[derive(Serialize, Deserialize)]
struct OrderInput {
    #[serde(default = "version_1")]
    version: u32,
}

fn version_1() -> u32 {
    1
}

/// Versioning by a field of the input: v2 keeps v1's steps for runs started with version 1
/// (they replay and finish as v1 would), and runs started with version 2 take the new path.
#[tokio::test]
async fn a_version_field_in_the_input_keeps_old_runs_on_the_old_path() {
    let file = file();
    let id = start_abc(&file).await;

    let v2_ran = ran();
    let (run, _) = resume_with(&file, &id, "go", |d| {
        d.register(versioned_order(v2_ran.clone()))
            .expect("register v2");
    })
    .await;
    assert_eq!(taken(&v2_ran), ["c@v2"]);
    assert_eq!(output(&run), ["a@v1", "b@v1", "c@v2"]);

    // A new run asks for version 2 and takes the new path.
    let mut handle = None;
    let durably = instance(&file.path, |d| {
        handle = Some(
            d.register(versioned_order(v2_ran.clone()))
                .expect("register v2"),
        );
    })
    .await;
    let new_run = handle
        .unwrap()
        .trigger(OrderInput { version: 2 })
        .await
        .expect("trigger")
        .run;
    until_status(&durably, &new_run.id, |s| s == RunStatus::Waiting).await;
    durably.stop().await;
    assert_eq!(taken(&v2_ran), ["a@v2", "b-new@v2"]);
}

/// Version 2 of `order`, branching on the input's version.
fn versioned_order(ran: Ran) -> Job<OrderInput, Vec<String>> {
    Job::new("order", move |step: StepContext, input: OrderInput| {
        let ran = ran.clone();
        async move {
            let before: &[&str] = match input.version {
                1 => &["a", "b"],
                _ => &["a", "b-new"],
            };
            let mut outputs = Vec::new();
            for name in before {
                outputs.push(step_named(&step, name, "v2", &ran).await?);
            }
            let wait = step.prepare_wait(NewWait::new("go")).await?;
            step.wait_for(&wait).await?;
            outputs.push(step_named(&step, "c", "v2", &ran).await?);
            Ok(outputs)
        }
    })
}

/// Code outside steps runs on every execution of the run, and so do its job-level logs; a
/// completed step's function (and the logs it wrote) do not.
#[tokio::test]
async fn code_outside_steps_runs_on_every_execution_logs_included() {
    let file = file();
    let executions = Arc::new(Mutex::new(0));
    let job = logging_order(executions.clone());
    let id = start_with_v1(&file, job, json!({})).await;
    assert_eq!(*executions.lock().unwrap(), 1);

    let logs_before: Vec<_> = reader(&file.path)
        .await
        .get_logs(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(logs_before, ["job function started", "step a ran"]);

    let (run, _) = resume_with(&file, &id, "go", |d| {
        d.register(logging_order(executions.clone()))
            .expect("register");
    })
    .await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(*executions.lock().unwrap(), 2);
    let logs: Vec<_> = reader(&file.path)
        .await
        .get_logs(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.message, l.step_name))
        .collect();
    assert_eq!(
        logs,
        [
            ("job function started".to_owned(), None),
            ("step a ran".to_owned(), Some("a".to_owned())),
            ("job function started".to_owned(), None),
        ]
    );
}

/// Counts the executions of its job function, logs outside and inside step `a`, then waits.
fn logging_order(executions: Arc<Mutex<u32>>) -> Job<Value, Vec<String>> {
    Job::new("order", move |step: StepContext, _input: Value| {
        let executions = executions.clone();
        async move {
            *executions.lock().unwrap() += 1;
            step.log().info("job function started", None).await?;
            let inside = step.clone();
            step.run("a", |_| async move {
                inside.log().info("step a ran", None).await?;
                Ok(1)
            })
            .await?;
            let wait = step.prepare_wait(NewWait::new("go")).await?;
            step.wait_for(&wait).await?;
            Ok(vec![])
        }
    })
}
