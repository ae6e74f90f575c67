//! The behaviour suite: the end-to-end guarantees of durably that depend on the store, checked
//! through the public [`Durably`] API on a store given from outside (execution and steps,
//! recovery and fencing, keys, operations). Each test takes a fresh, migrated store built with
//! default options, builds the instances it needs on it, and panics on a violation;
//! [`crate::store_behaviour_tests!`] turns them into one test each.
//!
//! Every wait is bounded (a hang fails the test after [`LIMIT`]); no test relies on a sleep to
//! let something happen. Job names start with `behaviour-`.
#![allow(missing_docs)]

mod execution;
mod keys;
mod operations;
mod recovery;

pub use execution::*;
pub use keys::*;
pub use operations::*;
pub use recovery::*;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::{RunPatch, Store};
use crate::{Durably, DurablyBuilder, Event, EventKind, Run, Timestamp};

/// The hang guard of every wait in the suite: generous, only reached when something is stuck.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Runs `future`, failing the test if it takes longer than [`LIMIT`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {LIMIT:?}: {what}"))
}

/// Polls `check` every 10 ms until it returns `Some`, failing the test after [`LIMIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {LIMIT:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A migrated instance on `store` polling every 20 ms, configured further by `configure`.
async fn instance(
    store: &Arc<dyn Store>,
    configure: impl FnOnce(DurablyBuilder) -> DurablyBuilder,
) -> Durably {
    let builder = Durably::builder()
        .shared_store(store.clone())
        .polling_interval(Duration::from_millis(20));
    let durably = configure(builder).build().expect("build an instance");
    durably.migrate().await.expect("migrate");
    durably
}

/// The run `id`, which must exist.
async fn run_of(durably: &Durably, id: &str) -> Run {
    durably
        .get_run(id)
        .await
        .expect("get_run")
        .unwrap_or_else(|| panic!("run {id} exists"))
}

/// Polls until the run `id` is terminal.
async fn terminal(durably: &Durably, id: &str) -> Run {
    eventually(&format!("run {id} reaches a terminal state"), || async {
        durably
            .get_run(id)
            .await
            .expect("get_run")
            .filter(|run| run.status.is_terminal())
    })
    .await
}

/// Whether the store offers a view that preserves steps
/// ([`Store::with_step_policy`]); the tests that need one pass trivially without it.
fn has_preserving_view(store: &Arc<dyn Store>) -> bool {
    assert!(
        !store.preserves_steps(),
        "a store built with default options drops the steps of a run that ends"
    );
    store
        .with_step_policy(true)
        .is_some_and(|view| view.preserves_steps())
}

/// Sets a terminal run's `completed_at` through the operators' writes ([`Store::admin`]).
async fn backdate(store: &Arc<dyn Store>, id: &str, completed_at: Timestamp) {
    let patch = RunPatch {
        completed_at: Some(Some(completed_at)),
        ..RunPatch::default()
    };
    let admin = store
        .admin()
        .expect("this behaviour test fabricates states through `Store::admin`");
    assert!(
        admin
            .update_run(id, patch, Timestamp::now())
            .await
            .expect("update_run"),
        "run {id} exists"
    );
}

/// A one-shot gate: tasks [`wait`](Gate::wait) until someone [`open`](Gate::open)s it.
#[derive(Clone)]
struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new(tokio::sync::watch::channel(false).0))
    }

    fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut open = self.0.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}

/// Records every event of an instance.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    fn attach(durably: &Durably) -> Self {
        let recorder = Recorder::default();
        let sink = recorder.0.clone();
        durably.on_any(move |event| {
            sink.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(event.clone())
        });
        recorder
    }

    fn snapshot(&self) -> Vec<Event> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Every event emitted so far, once all were delivered (a sentinel went through the
    /// listener's queue).
    async fn flush(&self, durably: &Durably) -> Vec<Event> {
        let sentinel = durably.emit(EventKind::WorkerError {
            error: "flush".into(),
            context: "behaviour-suite-flush".into(),
            run_id: None,
        });
        eventually("the recorder sees every event", || async {
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
}

/// Counts calls, by index: how many times each of `n` things ran.
#[derive(Clone)]
struct Counts(Arc<Mutex<Vec<usize>>>);

impl Counts {
    fn new(n: usize) -> Self {
        Counts(Arc::new(Mutex::new(vec![0; n])))
    }

    fn hit(&self, i: usize) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[i] += 1;
    }

    fn get(&self) -> Vec<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
