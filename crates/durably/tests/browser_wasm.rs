//! The engine in a browser (feature `browser`, target `wasm32-unknown-unknown`): a Rust job of
//! two steps runs to its end in a dedicated Web Worker of headless Chromium, on SQLite compiled
//! to WebAssembly (in memory, and in the origin's private file system), with tasks on the
//! worker's event loop and `setTimeout` timers.
//!
//! ```text
//! .ci/wasm-toolchain.sh && . ~/.cache/durably-wasm/env.sh
//! cargo test -p durably --target wasm32-unknown-unknown --no-default-features \
//!   --features browser --test browser_wasm
//! ```
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use durably::serde_json::{Value, json};
use durably::{
    Durably, Job, RunStatus, SqliteStore, StepContext, StepStatus, TriggerOptions, WaitOptions,
};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// A job of two steps: the second uses the first's output.
fn label_job() -> Job<Value, String> {
    Job::new(
        "print-label",
        |step: StepContext, order: Value| async move {
            let id = order["id"].as_u64().unwrap_or_default();
            let label = step
                .run(
                    "print-label",
                    move |_| async move { Ok(format!("label-{id}")) },
                )
                .await?;
            step.progress(1, Some(2), Some("label printed")).await?;
            let shipped = step
                .run("ship", {
                    let label = label.clone();
                    move |_| async move { Ok(format!("shipped {label}")) }
                })
                .await?;
            Ok(format!("{label}: {shipped}"))
        },
    )
}

fn in_memory() -> Durably {
    Durably::builder()
        .sqlite(":memory:")
        .preserve_steps(true)
        .polling_interval(Duration::from_millis(20))
        .build()
        .expect("an in-memory SQLite database opens in the worker")
}

/// Asserts the run's two step rows: both completed, in order, with their outputs.
async fn assert_steps(durably: &Durably, run_id: &str) {
    let steps = durably.get_steps(run_id).await.expect("steps");
    let rows: Vec<(&str, i64, StepStatus, Option<&Value>)> = steps
        .iter()
        .map(|step| {
            (
                step.name.as_str(),
                step.index,
                step.status,
                step.output.as_ref(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "print-label",
                0,
                StepStatus::Completed,
                Some(&json!("label-7"))
            ),
            (
                "ship",
                1,
                StepStatus::Completed,
                Some(&json!("shipped label-7"))
            ),
        ]
    );
}

/// The background worker (`init`: migrate, then the worker loop on `spawn_local`) picks the
/// run up and `trigger_and_wait` sees it complete.
#[wasm_bindgen_test]
async fn a_two_step_job_completes_on_the_background_worker() {
    let durably = in_memory();
    let job = durably.register(label_job()).expect("register");
    durably.init().await.expect("migrate and start the worker");
    assert!(durably.is_running());

    let done = job
        .trigger_and_wait(
            json!({ "id": 7 }),
            TriggerOptions::new(),
            WaitOptions::new().timeout(Duration::from_secs(30)),
        )
        .await
        .expect("the run completes");
    assert_eq!(done.output.as_deref(), Some("label-7: shipped label-7"));

    let run = durably
        .get_run(&done.id)
        .await
        .expect("read")
        .expect("the run");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.completed_step_count, 2);
    let progress = run.progress.expect("progress was reported");
    assert_eq!((progress.current, progress.total), (1, Some(2)));
    assert_steps(&durably, &done.id).await;

    durably.stop().await;
    assert!(!durably.is_running());
}

/// Without a background worker: the run is triggered, then processed on the caller's task.
#[wasm_bindgen_test]
async fn a_two_step_job_completes_when_processed_in_place() {
    let durably = in_memory();
    let job = durably.register(label_job()).expect("register");
    durably.migrate().await.expect("migrate");

    let triggered = job.trigger(json!({ "id": 7 })).await.expect("trigger");
    assert_eq!(triggered.run.status, RunStatus::Pending);
    let processed = durably
        .process_until_idle(Some("browser-test"), None)
        .await
        .expect("process");
    assert_eq!(processed, 1);

    let run = job
        .get_run(&triggered.run.id)
        .await
        .expect("read")
        .expect("the run");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output.as_deref(), Some("label-7: shipped label-7"));
    assert_steps(&durably, &run.id).await;
}

/// A database name no earlier test run used (OPFS keeps files across page loads).
fn fresh_name() -> String {
    let now = web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .expect("the clock is past 1970");
    format!("browser-test-{}.db", now.as_nanos())
}

async fn on_opfs(name: &str) -> Durably {
    let store = SqliteStore::open_opfs(name)
        .await
        .expect("OPFS opens in a dedicated worker");
    let durably = Durably::builder()
        .store(store)
        .preserve_steps(true)
        .build()
        .expect("build");
    durably.register(label_job()).expect("register");
    durably.migrate().await.expect("migrate");
    durably
}

/// A run triggered on one instance (the page before a reload) is still pending after the
/// database is closed and opened again, and completes there; a second reopening reads it.
#[wasm_bindgen_test]
async fn a_run_on_opfs_outlives_its_instance() {
    let name = fresh_name();
    let durably = on_opfs(&name).await;
    let triggered = durably
        .job::<Value, String>("print-label")
        .expect("registered")
        .trigger(json!({ "id": 7 }))
        .await
        .expect("trigger");
    drop(durably);

    let durably = on_opfs(&name).await;
    let pending = durably.get_run(&triggered.run.id).await.expect("read");
    assert_eq!(pending.map(|run| run.status), Some(RunStatus::Pending));
    let processed = durably
        .process_until_idle(Some("after-reload"), None)
        .await
        .expect("process");
    assert_eq!(processed, 1);
    drop(durably);

    let durably = on_opfs(&name).await;
    let run = durably
        .get_run(&triggered.run.id)
        .await
        .expect("read")
        .expect("the run was stored");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!("label-7: shipped label-7")));
    assert_steps(&durably, &run.id).await;
}
