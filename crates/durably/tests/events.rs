//! Events: the JSON of all 15 types, sequence numbers, listeners (filtering, unsubscribe,
//! panicking and slow listeners), run-level order, and per-run `subscribe` streams
//! (upstream events.shared, core-extensions subscribe, SPEC §1 events).
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Gate, LIMIT, Recorder, TestDb, backend_tests, eventually, within};
use durably::{
    Error, Event, EventKind, EventType, Job, Labels, LogLevel, Progress, StepContext, Timestamp,
    TriggerOptions, WaitOptions,
};
use futures::StreamExt;
use serde_json::{Value, json};

const TS: &str = "2026-03-29T12:34:56.789Z";

fn labels() -> Labels {
    [("env".to_string(), "test".to_string())].into()
}

fn leased(run_id: &str) -> EventKind {
    EventKind::RunLeased {
        run_id: run_id.into(),
        job_name: "test-job".into(),
        input: json!({"foo": "bar"}),
        lease_owner: "worker-1".into(),
        lease_expires_at: TS.into(),
        labels: Labels::new(),
    }
}

fn complete(run_id: &str) -> EventKind {
    EventKind::RunComplete {
        run_id: run_id.into(),
        job_name: "test-job".into(),
        output: json!(null),
        duration: 0,
        labels: Labels::new(),
    }
}

/// Serializes `kind` stamped with a fixed timestamp and sequence 7, checks it against
/// `expected` (which lacks `timestamp`/`sequence`) and that it parses back.
fn assert_json(kind: EventKind, mut expected: Value) {
    let event = Event {
        kind,
        timestamp: Timestamp::parse(TS).unwrap(),
        sequence: 7,
    };
    expected["timestamp"] = json!(TS);
    expected["sequence"] = json!(7);
    let actual = serde_json::to_value(&event).unwrap();
    assert_eq!(actual, expected);
    let back: Event = serde_json::from_value(actual).unwrap();
    assert_eq!(back, event);
}

async fn all_fifteen_event_types_serialize_as_upstream(_backend: Backend) {
    let labels_json = json!({"env": "test"});
    assert_json(
        EventKind::RunTrigger {
            run_id: "r1".into(),
            job_name: "j".into(),
            input: json!({"a": 1}),
            labels: labels(),
        },
        json!({"type": "run:trigger", "runId": "r1", "jobName": "j", "input": {"a": 1},
               "labels": labels_json}),
    );
    assert_json(
        EventKind::RunCoalesced {
            run_id: "r1".into(),
            job_name: "j".into(),
            status: durably::RunStatus::Pending,
            labels: labels(),
            skipped_input: json!({"value": "skipped"}),
            skipped_labels: Labels::new(),
        },
        json!({"type": "run:coalesced", "runId": "r1", "jobName": "j", "status": "pending", "labels": labels_json,
               "skippedInput": {"value": "skipped"}, "skippedLabels": {}}),
    );
    assert_json(
        EventKind::RunLeased {
            run_id: "r1".into(),
            job_name: "j".into(),
            input: json!({"a": 1}),
            lease_owner: "worker-1".into(),
            lease_expires_at: TS.into(),
            labels: labels(),
        },
        json!({"type": "run:leased", "runId": "r1", "jobName": "j", "input": {"a": 1},
               "leaseOwner": "worker-1", "leaseExpiresAt": TS, "labels": labels_json}),
    );
    assert_json(
        EventKind::RunLeaseRenewed {
            run_id: "r1".into(),
            job_name: "j".into(),
            lease_owner: "worker-1".into(),
            lease_expires_at: TS.into(),
            labels: labels(),
        },
        json!({"type": "run:lease-renewed", "runId": "r1", "jobName": "j",
               "leaseOwner": "worker-1", "leaseExpiresAt": TS, "labels": labels_json}),
    );
    assert_json(
        EventKind::RunComplete {
            run_id: "r1".into(),
            job_name: "j".into(),
            output: json!({"ok": true}),
            duration: 12,
            labels: labels(),
        },
        json!({"type": "run:complete", "runId": "r1", "jobName": "j", "output": {"ok": true},
               "duration": 12, "labels": labels_json}),
    );
    assert_json(
        EventKind::RunFail {
            run_id: "r1".into(),
            job_name: "j".into(),
            error: "boom".into(),
            failed_step_name: "step-a".into(),
            labels: labels(),
        },
        json!({"type": "run:fail", "runId": "r1", "jobName": "j", "error": "boom",
               "failedStepName": "step-a", "labels": labels_json}),
    );
    assert_json(
        EventKind::RunCancel {
            run_id: "r1".into(),
            job_name: "j".into(),
            labels: labels(),
        },
        json!({"type": "run:cancel", "runId": "r1", "jobName": "j", "labels": labels_json}),
    );
    assert_json(
        EventKind::RunDelete {
            run_id: "r1".into(),
            job_name: "j".into(),
            labels: labels(),
        },
        json!({"type": "run:delete", "runId": "r1", "jobName": "j", "labels": labels_json}),
    );
    assert_json(
        EventKind::RunProgress {
            run_id: "r1".into(),
            job_name: "j".into(),
            progress: Progress {
                current: 1,
                total: Some(3),
                message: Some("Step 1 of 3".into()),
            },
            labels: labels(),
        },
        json!({"type": "run:progress", "runId": "r1", "jobName": "j",
               "progress": {"current": 1, "total": 3, "message": "Step 1 of 3"},
               "labels": labels_json}),
    );
    assert_json(
        EventKind::RunProgress {
            run_id: "r1".into(),
            job_name: "j".into(),
            progress: Progress {
                current: 3,
                total: None,
                message: None,
            },
            labels: Labels::new(),
        },
        json!({"type": "run:progress", "runId": "r1", "jobName": "j",
               "progress": {"current": 3}, "labels": {}}),
    );
    assert_json(
        EventKind::StepStart {
            run_id: "r1".into(),
            job_name: "j".into(),
            step_name: "fetch".into(),
            step_index: 0,
            labels: labels(),
        },
        json!({"type": "step:start", "runId": "r1", "jobName": "j", "stepName": "fetch",
               "stepIndex": 0, "labels": labels_json}),
    );
    assert_json(
        EventKind::StepComplete {
            run_id: "r1".into(),
            job_name: "j".into(),
            step_name: "fetch".into(),
            step_index: 1,
            output: json!("hello"),
            duration: 5,
            labels: labels(),
        },
        json!({"type": "step:complete", "runId": "r1", "jobName": "j", "stepName": "fetch",
               "stepIndex": 1, "output": "hello", "duration": 5, "labels": labels_json}),
    );
    assert_json(
        EventKind::StepFail {
            error: "intentional error".into(),
            run_id: "r1".into(),
            job_name: "j".into(),
            step_name: "failing-step".into(),
            step_index: 2,
            labels: labels(),
        },
        json!({"type": "step:fail", "error": "intentional error", "runId": "r1",
               "jobName": "j", "stepName": "failing-step", "stepIndex": 2,
               "labels": labels_json}),
    );
    assert_json(
        EventKind::StepCancel {
            run_id: "r1".into(),
            job_name: "j".into(),
            step_name: "cancellable-step".into(),
            step_index: 0,
            labels: labels(),
        },
        json!({"type": "step:cancel", "runId": "r1", "jobName": "j",
               "stepName": "cancellable-step", "stepIndex": 0, "labels": labels_json}),
    );
    assert_json(
        EventKind::LogWrite {
            run_id: "r1".into(),
            job_name: "j".into(),
            labels: labels(),
            step_name: Some("my-step".into()),
            level: LogLevel::Warn,
            message: "careful".into(),
            data: Some(json!({"itemId": 123})),
        },
        json!({"type": "log:write", "runId": "r1", "jobName": "j", "labels": labels_json,
               "stepName": "my-step", "level": "warn", "message": "careful",
               "data": {"itemId": 123}}),
    );
    // No data: the key is absent; no step: `stepName` is null.
    assert_json(
        EventKind::LogWrite {
            run_id: "r1".into(),
            job_name: "j".into(),
            labels: Labels::new(),
            step_name: None,
            level: LogLevel::Info,
            message: "Hello from job".into(),
            data: None,
        },
        json!({"type": "log:write", "runId": "r1", "jobName": "j", "labels": {},
               "stepName": null, "level": "info", "message": "Hello from job"}),
    );
    assert_json(
        EventKind::WorkerError {
            error: "Lease renewal lost ownership for run r1".into(),
            context: "lease-renewal".into(),
            run_id: Some("r1".into()),
        },
        json!({"type": "worker:error", "error": "Lease renewal lost ownership for run r1",
               "context": "lease-renewal", "runId": "r1"}),
    );
    // Without a run: `runId` is absent.
    assert_json(
        EventKind::WorkerError {
            error: "Lease lost before completing run r1".into(),
            context: "run-completion".into(),
            run_id: None,
        },
        json!({"type": "worker:error", "error": "Lease lost before completing run r1",
               "context": "run-completion"}),
    );

    // The wire strings and the domain classification of all 15 types.
    let types = [
        (EventType::RunTrigger, "run:trigger", true),
        (EventType::RunCoalesced, "run:coalesced", true),
        (EventType::RunLeased, "run:leased", false),
        (EventType::RunLeaseRenewed, "run:lease-renewed", false),
        (EventType::RunComplete, "run:complete", true),
        (EventType::RunFail, "run:fail", true),
        (EventType::RunCancel, "run:cancel", true),
        (EventType::RunDelete, "run:delete", true),
        (EventType::RunProgress, "run:progress", false),
        (EventType::StepStart, "step:start", false),
        (EventType::StepComplete, "step:complete", false),
        (EventType::StepFail, "step:fail", false),
        (EventType::StepCancel, "step:cancel", false),
        (EventType::LogWrite, "log:write", false),
        (EventType::WorkerError, "worker:error", false),
    ];
    for (event_type, wire, domain) in types {
        assert_eq!(event_type.as_str(), wire);
        assert_eq!(event_type.is_domain(), domain, "{wire}");
    }
}

async fn sequence_starts_at_one_and_increments(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let before = Timestamp::now();
    let first = durably.emit(leased("run_1"));
    let second = durably.emit(complete("run_1"));
    let third = durably.emit(leased("run_2"));
    assert_eq!([first.sequence, second.sequence, third.sequence], [1, 2, 3]);
    assert_eq!(first.kind, leased("run_1"));
    let after = Timestamp::now();
    assert!(first.timestamp >= before && first.timestamp <= after);
    assert!(second.timestamp >= first.timestamp);
    // Another instance counts on its own.
    let other = db.durably(|b| b).await;
    assert_eq!(other.emit(leased("run_3")).sequence, 1);
}

async fn listeners_receive_only_their_type(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let leased_seen = Arc::new(Mutex::new(Vec::<Event>::new()));
    let second_seen = Arc::new(AtomicUsize::new(0));
    {
        let seen = leased_seen.clone();
        durably.on(EventType::RunLeased, move |e| {
            seen.lock().unwrap().push(e.clone())
        });
        let second = second_seen.clone();
        durably.on(EventType::RunLeased, move |_| {
            second.fetch_add(1, Ordering::SeqCst);
        });
    }
    let completes = Arc::new(AtomicUsize::new(0));
    {
        let completes = completes.clone();
        durably.on(EventType::RunComplete, move |_| {
            completes.fetch_add(1, Ordering::SeqCst);
        });
    }
    // A run:complete first, then a run:leased: the run:leased listener's queue is FIFO, so
    // seeing exactly the run:leased proves the run:complete never reached it.
    let complete_event = durably.emit(complete("run_1"));
    let leased_event = durably.emit(leased("run_1"));
    let seen = eventually("run:leased delivered", LIMIT, || async {
        let seen = leased_seen.lock().unwrap().clone();
        (!seen.is_empty()).then_some(seen)
    })
    .await;
    assert_eq!(seen, std::slice::from_ref(&leased_event));
    assert_eq!(seen[0].kind, leased("run_1"));
    eventually("both run:leased listeners called", LIMIT, || async {
        (second_seen.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    eventually("run:complete listener called once", LIMIT, || async {
        (completes.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert_eq!(complete_event.sequence + 1, leased_event.sequence);

    // A run:delete reaches a run:delete listener with its payload.
    let deletes = Arc::new(Mutex::new(Vec::<Event>::new()));
    {
        let deletes = deletes.clone();
        durably.on(EventType::RunDelete, move |e| {
            deletes.lock().unwrap().push(e.clone())
        });
    }
    let deleted = durably.emit(EventKind::RunDelete {
        run_id: "run_1".into(),
        job_name: "test-job".into(),
        labels: labels(),
    });
    let got = eventually("run:delete delivered", LIMIT, || async {
        deletes.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(got, deleted);
}

async fn unsubscribe_stops_delivery(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let calls = Arc::new(AtomicUsize::new(0));
    // The listener owns `alive`: once the listener is dropped nothing can call it again.
    let alive = Arc::new(());
    let unsubscribe = {
        let (calls, alive) = (calls.clone(), alive.clone());
        durably.on(EventType::RunLeased, move |_| {
            let _keep = &alive;
            calls.fetch_add(1, Ordering::SeqCst);
        })
    };
    durably.emit(leased("run_1"));
    eventually("first delivery", LIMIT, || async {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    unsubscribe.unsubscribe();
    eventually("listener released", LIMIT, || async {
        (Arc::strong_count(&alive) == 1).then_some(())
    })
    .await;
    durably.emit(leased("run_1"));
    durably.emit(leased("run_2"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn panicking_listener_is_isolated_and_reported(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let panicking_calls = Arc::new(AtomicUsize::new(0));
    let other_calls = Arc::new(AtomicUsize::new(0));
    let reported = Arc::new(Mutex::new(Vec::<(String, Event)>::new()));
    {
        let calls = panicking_calls.clone();
        durably.on(EventType::RunLeased, move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            panic!("listener boom");
        });
        let other = other_calls.clone();
        durably.on(EventType::RunLeased, move |_| {
            other.fetch_add(1, Ordering::SeqCst);
        });
        let reported = reported.clone();
        durably.on_error(move |message, event| {
            reported
                .lock()
                .unwrap()
                .push((message.to_string(), event.clone()))
        });
    }
    let first = durably.emit(leased("run_1"));
    eventually("other listener called", LIMIT, || async {
        (other_calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let reports = eventually("on_error called", LIMIT, || async {
        let seen = reported.lock().unwrap().clone();
        (!seen.is_empty()).then_some(seen)
    })
    .await;
    assert_eq!(reports.len(), 1);
    assert!(reports[0].0.contains("listener boom"), "{}", reports[0].0);
    assert_eq!(reports[0].1, first);
    assert_eq!(reports[0].1.event_type(), EventType::RunLeased);
    assert_eq!(reports[0].1.kind.run_id(), Some("run_1"));

    // The panicking listener keeps receiving later events.
    let second = durably.emit(leased("run_2"));
    eventually("second delivery to both", LIMIT, || async {
        (panicking_calls.load(Ordering::SeqCst) == 2 && other_calls.load(Ordering::SeqCst) == 2)
            .then_some(())
    })
    .await;
    let reports = eventually("second report", LIMIT, || async {
        let seen = reported.lock().unwrap().clone();
        (seen.len() == 2).then_some(seen)
    })
    .await;
    assert_eq!(reports[1].1, second);
}

async fn panicking_listener_does_not_stop_the_worker(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    durably.on_any(|_| panic!("listener panics on every event"));
    let job = durably
        .register(Job::new(
            "survives",
            |step: StepContext, n: u64| async move {
                step.run("double", |_| async move { Ok(n * 2) }).await
            },
        ))
        .unwrap();
    durably.start();
    for n in 1..=2 {
        let done = within(
            "run completes despite the listener",
            LIMIT,
            job.trigger_and_wait(n, TriggerOptions::new(), WaitOptions::new()),
        )
        .await
        .unwrap();
        assert_eq!(done.output, Some(n * 2));
    }
    durably.stop().await;
}

async fn slow_listener_does_not_delay_the_run(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (release, parked) = std::sync::mpsc::channel::<()>();
    let parked = Mutex::new(parked);
    let first_call_done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<EventType>::new()));
    {
        let (done, seen) = (first_call_done.clone(), seen.clone());
        durably.on_any(move |event| {
            let first = seen.lock().unwrap().is_empty();
            seen.lock().unwrap().push(event.event_type());
            if first {
                // Blocks this listener's thread until the test lets go (10 s at most).
                let _ = parked.lock().unwrap().recv_timeout(Duration::from_secs(10));
                done.store(true, Ordering::SeqCst);
            }
        });
    }
    let job = durably
        .register(Job::new("fast", |step: StepContext, n: u64| async move {
            step.run("s", |_| async move { Ok(n) }).await
        }))
        .unwrap();
    let id = job.trigger(5).await.unwrap().run.id;
    durably.start();
    let done = within(
        "run completes while the listener is blocked",
        LIMIT,
        durably.wait_for_run(&id, WaitOptions::new()),
    )
    .await
    .unwrap();
    assert_eq!(done.output, Some(json!(5)));
    // Ordering, not timing: the run completed while the listener was still inside its first call.
    assert!(!first_call_done.load(Ordering::SeqCst));
    release.send(()).unwrap();
    // It then catches up with every event, in order, including run:complete.
    let seen = eventually("listener catches up", LIMIT, || async {
        let seen = seen.lock().unwrap().clone();
        seen.contains(&EventType::RunComplete).then_some(seen)
    })
    .await;
    assert!(first_call_done.load(Ordering::SeqCst));
    assert_eq!(seen[0], EventType::RunTrigger);
    durably.stop().await;
}

async fn run_level_events_are_in_order(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let recorder = Recorder::attach(&durably);
    let job =
        durably
            .register(Job::new(
                "ordered-events",
                |step: StepContext, n: u64| async move {
                    step.run("only", |_| async move { Ok(n) }).await
                },
            ))
            .unwrap();
    // Triggered before the worker starts: `run:trigger` is emitted after the run is committed,
    // so a worker already polling could claim it (and emit `run:leased`) first.
    let id = job.trigger(1).await.unwrap().run.id;
    durably.start();
    let done = within(
        "run completes",
        LIMIT,
        durably.wait_for_run(&id, WaitOptions::new()),
    )
    .await
    .unwrap();
    durably.stop().await;
    let events: Vec<Event> = recorder
        .flush(&durably)
        .await
        .into_iter()
        .filter(|e| e.kind.run_id() == Some(done.id.as_str()))
        .collect();
    let types: Vec<_> = events.iter().map(|e| e.event_type().as_str()).collect();
    assert_eq!(
        types,
        [
            "run:trigger",
            "run:leased",
            "step:start",
            "step:complete",
            "run:complete"
        ]
    );
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    match &events[4].kind {
        EventKind::RunComplete {
            output, job_name, ..
        } => {
            assert_eq!(output, &json!(1));
            assert_eq!(job_name, "ordered-events");
        }
        other => panic!("unexpected {other:?}"),
    }
    match &events[1].kind {
        EventKind::RunLeased {
            input,
            lease_owner,
            lease_expires_at,
            ..
        } => {
            assert_eq!(input, &json!(1));
            assert!(lease_owner.starts_with("worker_"), "{lease_owner}");
            assert!(Timestamp::parse(lease_expires_at).is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn event_types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type().as_str()).collect()
}

/// A job with one step that waits on `gate` (when given) before returning `n`.
fn gated_job(name: &str, entered: &Gate, gate: &Gate) -> Job<u64, u64> {
    let (entered, gate) = (entered.clone(), gate.clone());
    Job::new(name, move |step: StepContext, n: u64| {
        let (entered, gate) = (entered.clone(), gate.clone());
        async move {
            step.progress(1, Some(2), Some("half")).await?;
            let value = step
                .run("work", |_| async move {
                    entered.open();
                    gate.wait().await;
                    Ok(n)
                })
                .await?;
            if n == 0 {
                return Err(Error::Job("zero is not allowed".into()));
            }
            Ok(value)
        }
    })
}

async fn subscribe_streams_a_live_run_and_ends(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    gate.open();
    let job = durably
        .register(gated_job("live-stream", &entered, &gate))
        .unwrap();
    let id = job.trigger(7).await.unwrap().run.id;
    let stream = durably.subscribe(&id);
    durably.start();
    let events: Vec<Event> = within("stream ends", LIMIT, stream.collect()).await;
    let types = event_types(&events);
    for expected in ["run:leased", "run:progress", "step:start", "step:complete"] {
        assert!(
            types.contains(&expected),
            "{expected} missing from {types:?}"
        );
    }
    assert_eq!(types.last(), Some(&"run:complete"));
    assert!(!types.contains(&"run:trigger"));
    assert!(events.iter().all(|e| e.kind.run_id() == Some(id.as_str())));
    durably.stop().await;
}

/// A run that another process executes (here another instance on the same database, whose
/// events never reach this one): the stream follows the store and ends with the run.
async fn subscribe_follows_a_run_executed_elsewhere(backend: Backend) {
    let db = TestDb::new(backend);
    let executor = db.durably(|b| b.preserve_steps(true)).await;
    let observer = db.durably(|b| b).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    let job = executor
        .register(gated_job("elsewhere", &entered, &gate))
        .unwrap();
    let id = job.trigger(7).await.unwrap().run.id;
    let mut stream = Box::pin(observer.subscribe(&id));
    executor.start();
    within("the step starts", LIMIT, entered.wait()).await;
    let mut events = Vec::new();
    while !event_types(&events).contains(&"run:progress") {
        let event = within("the observer sees the run start", LIMIT, stream.next()).await;
        events.push(event.expect("the stream is still open"));
    }
    gate.open();
    events.extend(within("the stream ends", LIMIT, stream.collect::<Vec<_>>()).await);
    let types = event_types(&events);
    let position = |kind: &str| types.iter().position(|t| *t == kind);
    assert!(
        position("run:leased") < position("run:progress"),
        "{types:?}"
    );
    assert!(
        position("run:progress") < position("step:complete"),
        "{types:?}"
    );
    assert_eq!(types.last(), Some(&"run:complete"), "{types:?}");
    assert_eq!(
        types.iter().filter(|t| **t == "run:leased").count(),
        1,
        "{types:?}"
    );
    assert!(events.iter().all(|e| e.kind.run_id() == Some(id.as_str())));
    match &events.last().unwrap().kind {
        EventKind::RunComplete { output, .. } => assert_eq!(output, &json!(7)),
        other => panic!("unexpected {other:?}"),
    }
    executor.stop().await;
}

async fn subscribe_streams_a_live_failure_and_ends(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    gate.open();
    let job = durably
        .register(gated_job("live-failure", &entered, &gate))
        .unwrap();
    let id = job.trigger(0).await.unwrap().run.id;
    let stream = durably.subscribe(&id);
    durably.start();
    let events: Vec<Event> = within("stream ends", LIMIT, stream.collect()).await;
    let types = event_types(&events);
    assert!(types.contains(&"step:complete"), "{types:?}");
    assert_eq!(types.last(), Some(&"run:fail"));
    match &events.last().unwrap().kind {
        EventKind::RunFail { error, .. } => assert_eq!(error, "zero is not allowed"),
        other => panic!("unexpected {other:?}"),
    }
    durably.stop().await;
}

async fn subscribe_after_the_end_yields_one_terminal_event(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    gate.open();
    let job = durably
        .register(gated_job("after-end", &entered, &gate))
        .unwrap();
    let completed = job.trigger(3).await.unwrap().run.id;
    let failed = job.trigger(0).await.unwrap().run.id;
    assert!(durably.process_one(None).await.unwrap());
    assert!(durably.process_one(None).await.unwrap());
    let cancelled = job.trigger(4).await.unwrap().run.id;
    durably.cancel(&cancelled).await.unwrap();

    let events: Vec<Event> =
        within("completed", LIMIT, durably.subscribe(&completed).collect()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].sequence, 0);
    match &events[0].kind {
        EventKind::RunComplete {
            run_id,
            job_name,
            output,
            duration,
            ..
        } => {
            assert_eq!(run_id, &completed);
            assert_eq!(job_name, "after-end");
            assert_eq!(output, &json!(3));
            assert_eq!(*duration, 0);
        }
        other => panic!("unexpected {other:?}"),
    }

    let events: Vec<Event> = within("failed", LIMIT, durably.subscribe(&failed).collect()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].sequence, 0);
    match &events[0].kind {
        EventKind::RunFail { run_id, error, .. } => {
            assert_eq!(run_id, &failed);
            assert_eq!(error, "zero is not allowed");
        }
        other => panic!("unexpected {other:?}"),
    }

    let events: Vec<Event> =
        within("cancelled", LIMIT, durably.subscribe(&cancelled).collect()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].sequence, 0);
    assert!(matches!(&events[0].kind, EventKind::RunCancel { run_id, .. } if *run_id == cancelled));
}

async fn delete_ends_a_pending_runs_stream(backend: Backend) {
    let db = TestDb::new(backend);
    // Only the in-process `run:delete` ends the stream here (a stream that follows the run in
    // the store could end first, on the cancel made below by "another process").
    let durably = db.durably(|b| b.follow_runs_elsewhere(false)).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    let job = durably
        .register(gated_job("delete-stream", &entered, &gate))
        .unwrap();
    let id = job.trigger(1).await.unwrap().run.id;
    let mut stream = Box::pin(durably.subscribe(&id));
    // The pending run has no current-state event: nothing arrives yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), stream.next())
            .await
            .is_err()
    );
    // Another process cancels it (no in-process event), then it is deleted here.
    assert!(
        durably
            .store()
            .cancel_run(&id, Timestamp::now())
            .await
            .unwrap()
    );
    durably.delete_run(&id).await.unwrap();
    let events: Vec<Event> = within("stream ends", LIMIT, stream.collect()).await;
    assert_eq!(event_types(&events), ["run:delete"]);
    assert!(events[0].sequence > 0);
}

async fn subscribing_to_a_leased_run_starts_with_its_state(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    let job = durably
        .register(gated_job("leased-stream", &entered, &gate))
        .unwrap();
    durably.start_as("stream-worker");
    let id = job.trigger(9).await.unwrap().run.id;
    within("step starts", LIMIT, entered.wait()).await;

    let mut stream = Box::pin(durably.subscribe(&id));
    let first = within("first event", LIMIT, stream.next()).await.unwrap();
    assert_eq!(first.sequence, 0);
    match &first.kind {
        EventKind::RunLeased {
            run_id,
            input,
            lease_owner,
            lease_expires_at,
            ..
        } => {
            assert_eq!(run_id, &id);
            assert_eq!(input, &json!(9));
            assert_eq!(lease_owner, "stream-worker");
            assert!(Timestamp::parse(lease_expires_at).is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    // Stored progress follows as a second current-state event.
    let second = within("second event", LIMIT, stream.next()).await.unwrap();
    assert_eq!(second.sequence, 0);
    match &second.kind {
        EventKind::RunProgress { progress, .. } => assert_eq!(progress.current, 1),
        other => panic!("unexpected {other:?}"),
    }
    gate.open();
    let rest: Vec<Event> = within("stream ends", LIMIT, stream.collect()).await;
    let types = event_types(&rest);
    assert_eq!(types, ["step:complete", "run:complete"]);
    assert!(rest.iter().all(|e| e.sequence > 0));
    durably.stop().await;
}

/// A subscription whose starting state already announced the run leased (read after another
/// process claimed it) does not repeat that `run:leased` when the relay of the same claim
/// arrives (`durably serve`'s mirror, which emits what other processes did); the next events
/// come through.
async fn a_relayed_claim_the_starting_state_announced_is_not_repeated(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    let job = durably
        .register(gated_job("relayed", &entered, &gate))
        .unwrap();
    let id = job.trigger(5).await.unwrap().run.id;
    let claimed = db
        .store
        .claim(
            &durably::store::ClaimRequest::new("elsewhere", Duration::from_secs(30), 1),
            Timestamp::now(),
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);

    let mut stream = Box::pin(durably.subscribe(&id));
    let first = within("first event", LIMIT, stream.next()).await.unwrap();
    match &first.kind {
        EventKind::RunLeased { lease_owner, .. } => assert_eq!(lease_owner, "elsewhere"),
        other => panic!("unexpected {other:?}"),
    }
    let relayed = |owner: &str| EventKind::RunLeased {
        run_id: id.clone(),
        job_name: "relayed".into(),
        input: json!(5),
        lease_owner: owner.into(),
        lease_expires_at: TS.into(),
        labels: Labels::new(),
    };
    durably.emit(relayed("elsewhere"));
    durably.emit(EventKind::RunProgress {
        run_id: id.clone(),
        job_name: "relayed".into(),
        progress: durably::Progress {
            current: 1,
            total: None,
            message: None,
        },
        labels: Labels::new(),
    });
    // A later claim by another worker is news.
    durably.emit(relayed("another"));
    durably.emit(EventKind::RunComplete {
        run_id: id.clone(),
        job_name: "relayed".into(),
        output: json!(10),
        duration: 1,
        labels: Labels::new(),
    });
    let rest: Vec<Event> = within("stream ends", LIMIT, stream.collect()).await;
    assert_eq!(
        event_types(&rest),
        ["run:progress", "run:leased", "run:complete"]
    );
}

async fn dropped_streams_do_not_break_later_emits(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    gate.open();
    let job = durably
        .register(gated_job("dropped", &entered, &gate))
        .unwrap();
    let id = job.trigger(2).await.unwrap().run.id;
    {
        let mut one = Box::pin(durably.subscribe(&id));
        let _ = tokio::time::timeout(Duration::from_millis(20), one.next()).await;
        let all = durably.subscribe_all();
        drop(all);
        drop(one);
    }
    let kept = durably.subscribe(&id);
    let mut all = Box::pin(durably.subscribe_all());
    let listener_calls = Arc::new(AtomicUsize::new(0));
    {
        let calls = listener_calls.clone();
        durably.on(EventType::RunComplete, move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
        });
    }
    durably.start();
    let events: Vec<Event> = within("kept stream ends", LIMIT, kept.collect()).await;
    assert_eq!(event_types(&events).last(), Some(&"run:complete"));
    eventually("listener still called", LIMIT, || async {
        (listener_calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // subscribe_all saw the whole run.
    let mut seen = Vec::new();
    while !seen.contains(&EventType::RunComplete) {
        let event = within("subscribe_all", LIMIT, all.next()).await.unwrap();
        seen.push(event.event_type());
    }
    assert_eq!(seen.first(), Some(&EventType::RunLeased));
    durably.stop().await;
    let run = durably.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.output, Some(json!(2)));
}

/// The run executes entirely between `subscribe` and the stream's first poll: the stream still
/// carries its live events (upstream registers its listeners at `subscribe`), ends at the
/// live `run:complete`, and adds no synthetic state after it.
async fn subscribe_keeps_events_emitted_before_the_first_poll(backend: Backend) {
    let db = TestDb::new(backend);
    let durably = db.durably(|b| b).await;
    let (entered, gate) = (Gate::new(), Gate::new());
    gate.open();
    let job = durably
        .register(gated_job("early-events", &entered, &gate))
        .unwrap();
    let id = job.trigger(6).await.unwrap().run.id;
    let stream = durably.subscribe(&id);
    assert!(durably.process_one(None).await.unwrap());
    let events: Vec<Event> = within("stream ends", LIMIT, stream.collect()).await;
    assert_eq!(
        event_types(&events),
        [
            "run:leased",
            "run:progress",
            "step:start",
            "step:complete",
            "run:complete"
        ]
    );
    assert!(
        events.iter().all(|e| e.sequence > 0),
        "all live: {events:?}"
    );
}

backend_tests!(
    subscribe_follows_a_run_executed_elsewhere,
    all_fifteen_event_types_serialize_as_upstream,
    sequence_starts_at_one_and_increments,
    listeners_receive_only_their_type,
    unsubscribe_stops_delivery,
    panicking_listener_is_isolated_and_reported,
    panicking_listener_does_not_stop_the_worker,
    slow_listener_does_not_delay_the_run,
    run_level_events_are_in_order,
    subscribe_streams_a_live_run_and_ends,
    subscribe_streams_a_live_failure_and_ends,
    subscribe_after_the_end_yields_one_terminal_event,
    delete_ends_a_pending_runs_stream,
    subscribing_to_a_leased_run_starts_with_its_state,
    a_relayed_claim_the_starting_state_announced_is_not_repeated,
    dropped_streams_do_not_break_later_emits,
    subscribe_keeps_events_emitted_before_the_first_poll,
);
