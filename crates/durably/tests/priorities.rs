//! Run priorities (`TriggerOptions::priority`, issue 22 item 6): workers start claimable runs
//! of higher priority first and the oldest first within a priority, on every backend; a
//! delayed run takes its turn by its priority once due; over HTTP `priority` is a trigger
//! field and a run's JSON shows it when not 0.
mod common;
#[cfg(feature = "http")]
#[path = "http_support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};

use common::{Backend, TestDb, backend_tests};
use durably::{Job, RunStatus, StepContext, Timestamp, TriggerOptions};
use serde_json::{Value, json};

/// A job that records the order in which its runs execute.
fn recorder(order: Arc<Mutex<Vec<String>>>) -> Job<Value, Value> {
    Job::new("record", move |step: StepContext, input: Value| {
        let order = order.clone();
        async move {
            let name = input["name"].as_str().unwrap_or("?").to_owned();
            step.run("record", |_| async move { Ok(()) }).await?;
            order.lock().expect("order").push(name);
            Ok(Value::Null)
        }
    })
}

/// Runs triggered before any worker runs start by priority, then oldest first.
async fn runs_start_by_priority_then_oldest_first(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let job = durably.register(recorder(order.clone())).expect("register");
    for (name, priority) in [
        ("a0", 0),
        ("b3", 3),
        ("c-1", -1),
        ("d3", 3),
        ("e10", 10),
        ("f0", 0),
    ] {
        let triggered = job
            .trigger_with(
                json!({ "name": name }),
                TriggerOptions::new().priority(priority),
            )
            .await
            .expect("trigger");
        assert_eq!(triggered.run.priority, priority);
    }
    let processed = durably
        .process_until_idle(Some("w"), None)
        .await
        .expect("process");
    assert_eq!(processed, 6);
    assert_eq!(
        *order.lock().expect("order"),
        ["e10", "b3", "d3", "a0", "f0", "c-1"]
    );
    // Retriggering keeps the priority.
    let runs = durably
        .get_runs(&durably::RunFilter::new())
        .await
        .expect("runs");
    let e10 = runs
        .iter()
        .find(|run| run.input["name"] == "e10")
        .expect("e10");
    let again = durably.retrigger(&e10.id).await.expect("retrigger");
    assert_eq!(again.priority, 10);
}

/// A delayed run of high priority waits for its time, then goes before older runs of lower
/// priority ("run now" on its `delay` wait makes it due at once, without real time passing).
async fn a_due_delayed_run_takes_its_turn_by_priority(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let job = durably.register(recorder(order.clone())).expect("register");
    let delayed = job
        .trigger_with(
            json!({ "name": "delayed5" }),
            TriggerOptions::new()
                .priority(5)
                .start_at(Timestamp::now() + std::time::Duration::from_secs(3600)),
        )
        .await
        .expect("trigger");
    assert_eq!(delayed.run.status, RunStatus::Waiting);
    for name in ["p0-a", "p0-b"] {
        job.trigger(json!({ "name": name })).await.expect("trigger");
    }
    // Not due: only the pending runs are claimable.
    assert!(durably.process_one(Some("w")).await.expect("process"));
    assert_eq!(*order.lock().expect("order"), ["p0-a"]);
    durably.wake(&delayed.run.id).await.expect("wake");
    let processed = durably
        .process_until_idle(Some("w"), None)
        .await
        .expect("process");
    assert_eq!(processed, 2);
    assert_eq!(*order.lock().expect("order"), ["p0-a", "delayed5", "p0-b"]);
}

/// Over HTTP: `priority` is a trigger field (an integer; anything else is 400 and stores
/// nothing) and the run's JSON has `priority` when it is not 0.
#[cfg(feature = "http")]
async fn http_triggers_take_a_priority_and_show_it(backend: Backend) {
    use axum::http::StatusCode;
    use support::Api;

    let api = Api::new(backend, durably::http::HttpOptions::new()).await;
    let high = api
        .trigger("echo", json!({"value": 1}), json!({"priority": 7}))
        .await;
    let plain = api
        .trigger("echo", json!({"value": 2}), json!({"priority": null}))
        .await;
    let (status, run) = api.get_json(&format!("/run?runId={high}")).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["priority"], 7);
    let (status, run) = api.get_json(&format!("/run?runId={plain}")).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert!(
        run.get("priority").is_none(),
        "upstream's shape for priority 0: {run}"
    );
    let before = api.run_count().await;
    for bad in [json!("high"), json!(1.5), json!(4_294_967_296_i64)] {
        let (status, reply) = api
            .post_json(
                "/trigger",
                json!({"jobName": "echo", "input": {"value": 3}, "priority": bad}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {reply}");
        let message = reply["error"].as_str().expect("error");
        assert!(
            message.starts_with("priority must be an integer between -2147483648 and 2147483647"),
            "{message}"
        );
    }
    assert_eq!(api.run_count().await, before, "nothing stored");
}

#[cfg(not(feature = "http"))]
async fn http_triggers_take_a_priority_and_show_it(_backend: Backend) {}

backend_tests!(
    runs_start_by_priority_then_oldest_first,
    a_due_delayed_run_takes_its_turn_by_priority,
    http_triggers_take_a_priority_and_show_it,
);
