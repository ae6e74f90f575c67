//! A user's own `tracing` subscriber sees what the worker does: spans for runs and steps, and
//! events for claims, lease loss and failures. (Own test binary: it installs a global subscriber.)
mod common;

use durably::store::ClaimRequest;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durably::{Job, StepContext, Timestamp, TriggerOptions, WaitOptions, store::RunPatch};
use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Default)]
struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn contains(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .map(|lines| lines.iter().any(|l| l.contains(needle)))
            .unwrap_or(false)
    }
}

struct MessageVisitor(String);

impl tracing::field::Visit for MessageVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
        let mut visitor = MessageVisitor(format!("span {}", attrs.metadata().name()));
        attrs.record(&mut visitor);
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(visitor.0);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut visitor = MessageVisitor(format!("event {}", event.metadata().level()));
        event.record(&mut visitor);
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(visitor.0);
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Input {
    fail: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_subscriber_sees_run_and_step_spans_and_worker_events() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry()
        .with(recorder.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    tracing::subscriber::set_global_default(subscriber).expect("install subscriber");

    let db = common::TestDb::new(common::Backend::SqliteMemory);
    let durably = db.durably(|b| b).await;
    let job = durably
        .register(Job::new(
            "traced",
            |step: StepContext, input: Input| async move {
                step.run("only-step", |_| async move {
                    if input.fail {
                        Err("traced failure".to_owned().into())
                    } else {
                        Ok(1)
                    }
                })
                .await?;
                Ok(())
            },
        ))
        .expect("register");
    durably.start();
    let wait = || WaitOptions::new().timeout(Duration::from_secs(10));
    job.trigger_and_wait(Input { fail: false }, TriggerOptions::new(), wait())
        .await
        .expect("completes");
    let failed = job
        .trigger_and_wait(Input { fail: true }, TriggerOptions::new(), wait())
        .await;
    assert!(matches!(failed, Err(durably::Error::RunFailed { .. })));
    durably.stop().await;

    // A run whose lease is taken over: its worker's renewal is refused and it says so.
    let lost = durably
        .register(Job::new(
            "lease-lost",
            |step: StepContext, _: Input| async move {
                step.token().cancelled().await;
                Ok(())
            },
        ))
        .expect("register");
    let other = db
        .builder()
        .lease_duration(Duration::from_millis(300))
        .lease_renew_interval(Duration::from_millis(50))
        .build()
        .expect("build");
    other
        .register(Job::new(
            "lease-lost",
            |step: StepContext, _: Input| async move {
                step.token().cancelled().await;
                Ok(())
            },
        ))
        .expect("register");
    let run = lost
        .trigger(Input { fail: false })
        .await
        .expect("trigger")
        .run;
    other.start();
    common::eventually("run leased", Duration::from_secs(10), || async {
        let run = durably.get_run(&run.id).await.ok()??;
        (run.status == durably::RunStatus::Leased).then_some(())
    })
    .await;
    // Fake a takeover: bump the generation by expiring the lease and reclaiming it elsewhere.
    let store = durably.store().clone();
    store
        .admin()
        .expect("operator writes")
        .update_run(
            &run.id,
            RunPatch {
                lease_expires_at: Some(Some(Timestamp::now() - Duration::from_secs(1))),
                ..RunPatch::default()
            },
            Timestamp::now(),
        )
        .await
        .expect("expire");
    store
        .claim(
            &ClaimRequest::new("thief", Duration::from_secs(60), 1),
            Timestamp::now(),
        )
        .await
        .expect("reclaim");
    common::eventually("lease loss reported", Duration::from_secs(10), || async {
        recorder.contains("lease renewal refused").then_some(())
    })
    .await;
    other.stop().await;

    for needle in [
        "span durably.worker",
        "span durably.run",
        "durably.job.name=\"traced\"",
        "span durably.step",
        "durably.step.name=\"only-step\"",
        "claimed",
        "error=traced failure",
    ] {
        assert!(
            recorder.contains(needle),
            "no trace line contains {needle:?}"
        );
    }
}
