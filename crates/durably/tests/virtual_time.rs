//! The engine under a virtual clock: a current-thread runtime with paused time, the wall clock
//! following it (`durably::testing::use_virtual_wall_clock`) and the in-memory store. Leases of
//! the default 30 s expire, and are taken over, at once in real time; the first brick of the
//! deterministic simulation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use durably::testing::{MemoryStore, use_virtual_wall_clock};
use durably::{Durably, Job, RunStatus, StepContext, Timestamp};
use serde_json::json;

/// The virtual start: a fixed instant, so every run of the test sees the same times.
const START: i64 = 1_800_000_000_000;

/// Polls `check` every 100 ms of virtual time, at most `limit` of it.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?} of virtual time: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_run_abandoned_mid_step_is_taken_over_when_its_30_second_lease_expires() {
    use_virtual_wall_clock(Timestamp::from_millis(START));
    let store = MemoryStore::new();
    let first_calls = Arc::new(AtomicUsize::new(0));
    let second_calls = Arc::new(AtomicUsize::new(0));
    let job = || {
        let (first_calls, second_calls) = (first_calls.clone(), second_calls.clone());
        Job::new("virtual-abandoned", move |step: StepContext, base: u64| {
            let (first_calls, second_calls) = (first_calls.clone(), second_calls.clone());
            async move {
                let first = step
                    .run("first", |_| async move {
                        first_calls.fetch_add(1, Ordering::SeqCst);
                        Ok(base + 1)
                    })
                    .await?;
                let second = step
                    .run("second", |_| async move {
                        if second_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            // The first execution hangs until its worker abandons it.
                            std::future::pending::<()>().await;
                        }
                        Ok(first * 10)
                    })
                    .await?;
                Ok(json!({ "first": first, "second": second }))
            }
        })
    };
    // Default lease (30 s) and renewal (5 s).
    let lost = Durably::builder()
        .store(store.clone())
        .build()
        .expect("build");
    lost.migrate().await.expect("migrate");
    let handle = lost.register(job()).expect("register");
    lost.start();
    let id = handle.trigger(4).await.expect("trigger").run.id;
    let leased = eventually("the hanging step starts", Duration::from_secs(60), || {
        let (handle, id, second_calls) = (handle.clone(), id.clone(), second_calls.clone());
        async move {
            let run = handle.get_run(&id).await.expect("get_run")?;
            (second_calls.load(Ordering::SeqCst) == 1).then_some(run)
        }
    })
    .await;
    assert_eq!(leased.status, RunStatus::Leased);
    let lease_expires_at = leased.lease_expires_at.expect("a leased run has an expiry");
    // Renewed while it hangs: a minute later the lease still holds.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let held = handle.get_run(&id).await.expect("get").expect("run");
    assert_eq!(held.status, RunStatus::Leased);
    assert!(held.lease_expires_at.expect("expiry") > lease_expires_at);
    assert!(
        !lost.stop_within(Duration::ZERO).await,
        "the run was abandoned, not finished"
    );
    let abandoned_at = Timestamp::now();

    let rescuer = Durably::builder()
        .store(store.clone())
        .build()
        .expect("build");
    rescuer.register(job()).expect("register");
    rescuer.start();
    let run = eventually("the run is taken over", Duration::from_secs(120), || {
        let (rescuer, id) = (rescuer.clone(), id.clone());
        async move {
            let run = rescuer.get_run(&id).await.expect("get_run")?;
            run.status.is_terminal().then_some(run)
        }
    })
    .await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!({ "first": 5, "second": 50 })));
    assert!(run.lease_generation > held.lease_generation);
    let completed_at = run.completed_at.expect("completed at");
    // The last renewal's lease (30 s) runs out at most 30 s after the abandonment; an idle
    // worker looks every polling interval (1 s).
    assert!(
        completed_at.as_millis() - abandoned_at.as_millis() <= 31_000,
        "taken over once the last renewal's lease ran out, not later"
    );
    assert!(
        completed_at >= held.lease_expires_at.expect("expiry"),
        "not before the abandoned lease expired"
    );
    assert_eq!(
        first_calls.load(Ordering::SeqCst),
        1,
        "replayed, not re-run"
    );
    assert_eq!(
        second_calls.load(Ordering::SeqCst),
        2,
        "the hanging step ran again"
    );
    rescuer.stop().await;
}
