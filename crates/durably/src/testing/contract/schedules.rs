//! Contract: cron schedules ([`Store::upsert_schedule`] and the other schedule operations,
//! [`Store::fire_schedule`]): rows that keep their state across a new definition, and a firing
//! that is a compare-and-set on the schedule's next slot plus its runs, all or nothing, with
//! exactly one winner among concurrent firings.

use super::*;
use crate::schedules::{CatchUp, ScheduleFiring, ScheduleRecord, slot_idempotency_key};

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("timestamp")
}

fn record(name: &str, cron: &str, next: Timestamp, now: Timestamp) -> ScheduleRecord {
    ScheduleRecord {
        name: name.into(),
        job_name: "report".into(),
        cron: cron.into(),
        time_zone: "Europe/Paris".into(),
        input: json!({"kind": "daily"}),
        labels: Labels::from([("team".to_owned(), "ops".to_owned())]),
        catch_up: CatchUp::All { max: 3 },
        paused: false,
        next_fire_at: next,
        last_fired_at: None,
        created_at: now,
        updated_at: now,
    }
}

fn slot_run(name: &str, slot: Timestamp) -> NewRun {
    NewRun {
        idempotency_key: Some(slot_idempotency_key(name, slot)),
        labels: Labels::from([
            ("durably.schedule".to_owned(), name.to_owned()),
            ("durably.schedule.slot".to_owned(), slot.to_string()),
        ]),
        ..new_run("report", json!({"kind": "daily"}))
    }
}

async fn schedule(store: &Arc<dyn Store>, name: &str) -> ScheduleRecord {
    store
        .get_schedule(name)
        .await
        .expect("get_schedule")
        .unwrap_or_else(|| panic!("schedule {name} is stored"))
}

async fn runs_of(store: &Arc<dyn Store>, name: &str) -> Vec<crate::Run> {
    store
        .get_runs(&RunFilter {
            labels: Labels::from([("durably.schedule".to_owned(), name.to_owned())]),
            ..Default::default()
        })
        .await
        .expect("get_runs")
}

/// Contract: a schedule round-trips; a new definition replaces job, input, labels and catch-up
/// but keeps the pause, the last firing, the creation time, and the next slot unless the cron
/// expression or time zone changed; pause and resume (with a new next slot) only change a
/// schedule that is not already in that state; delete removes it; unknown names are `None` or
/// `false`.
pub async fn schedules_keep_their_state_across_definitions(store: Arc<dyn Store>) {
    assert!(store.keeps_schedules());
    let t0 = at("2030-01-01T00:00:00Z");
    let next = at("2030-01-02T02:00:00Z");
    let stored = store
        .upsert_schedule(record("nightly", "0 3 * * *", next, t0), t0)
        .await
        .expect("upsert");
    assert_eq!(stored, record("nightly", "0 3 * * *", next, t0));
    assert!(store.list_schedules().await.expect("list").len() == 1);
    assert_eq!(store.get_schedule("missing").await.expect("get"), None);

    let t1 = at("2030-01-01T01:00:00Z");
    let paused = store
        .pause_schedule("nightly", t1)
        .await
        .expect("pause")
        .expect("known");
    assert!(paused.paused);
    assert_eq!(paused.updated_at, t1);
    assert_eq!(
        store.pause_schedule("missing", t1).await.expect("pause"),
        None
    );

    // Same expression, new input: the pause and the next slot stay.
    let t2 = at("2030-01-01T02:00:00Z");
    let mut changed = record("nightly", "0 3 * * *", at("2030-01-09T02:00:00Z"), t2);
    changed.input = json!({"kind": "weekly"});
    changed.catch_up = CatchUp::Skip;
    let stored = store.upsert_schedule(changed, t2).await.expect("upsert");
    assert_eq!(stored.input, json!({"kind": "weekly"}));
    assert_eq!(stored.catch_up, CatchUp::Skip);
    assert!(stored.paused, "a new definition keeps the pause");
    assert_eq!(stored.next_fire_at, next, "same cron: same next slot");
    assert_eq!(stored.created_at, t0);
    assert_eq!(stored.updated_at, t2);

    // A new expression: the next slot is the given one.
    let moved = at("2030-01-01T03:30:00Z");
    let stored = store
        .upsert_schedule(record("nightly", "30 4 * * *", moved, t2), t2)
        .await
        .expect("upsert");
    assert_eq!(stored.next_fire_at, moved);

    let resumed_next = at("2030-01-05T03:30:00Z");
    let resumed = store
        .resume_schedule("nightly", resumed_next, t2)
        .await
        .expect("resume")
        .expect("known");
    assert!(!resumed.paused);
    assert_eq!(resumed.next_fire_at, resumed_next);
    // Resuming a running schedule changes nothing.
    let again = store
        .resume_schedule("nightly", at("2031-01-01T00:00:00Z"), t2)
        .await
        .expect("resume")
        .expect("known");
    assert_eq!(again.next_fire_at, resumed_next);

    assert!(store.delete_schedule("nightly").await.expect("delete"));
    assert!(!store.delete_schedule("nightly").await.expect("delete"));
    assert!(store.list_schedules().await.expect("list").is_empty());
}

/// Contract: `due_schedules` lists the schedules not paused whose next slot is at or before
/// `now`, earliest first; a firing lands only from exactly the stored next slot of a schedule
/// that is not paused, moves it on, stores the last slot fired and enqueues the runs in the
/// same transaction; a second firing from the same slot changes nothing; a slot whose run
/// exists already (the schedule was reset) finds it by its idempotency key.
pub async fn fire_schedule_is_a_compare_and_set_with_its_runs(store: Arc<dyn Store>) {
    let t0 = at("2030-01-01T00:00:00Z");
    let slot = at("2030-01-01T00:10:00Z");
    let next = at("2030-01-01T00:20:00Z");
    for (name, first) in [
        ("b", slot),
        ("a", at("2030-01-01T00:05:00Z")),
        ("later", next),
    ] {
        store
            .upsert_schedule(record(name, "*/5 * * * *", first, t0), t0)
            .await
            .expect("upsert");
    }
    store.pause_schedule("later", t0).await.expect("pause");
    let due = store.due_schedules(slot, 10).await.expect("due");
    let names: Vec<_> = due.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(store.due_schedules(slot, 1).await.expect("due").len(), 1);
    assert!(
        store
            .due_schedules(next, 10)
            .await
            .expect("due")
            .iter()
            .all(|s| s.name != "later")
    );

    // A stale expected slot: nothing happens.
    let stale = ScheduleFiring::new(
        "b",
        at("2030-01-01T00:00:00Z"),
        next,
        Some(slot),
        vec![slot_run("b", slot)],
    );
    assert_eq!(store.fire_schedule(stale, slot).await.expect("fire"), None);
    assert!(runs_of(&store, "b").await.is_empty());

    let firing = ScheduleFiring::new("b", slot, next, Some(slot), vec![slot_run("b", slot)]);
    let fired = store
        .fire_schedule(firing.clone(), slot)
        .await
        .expect("fire")
        .expect("the compare-and-set holds");
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].disposition, Disposition::Created);
    assert_eq!(fired[0].run.status, RunStatus::Pending);
    assert_eq!(
        fired[0].run.idempotency_key.as_deref(),
        Some("schedule:b:2030-01-01T00:10:00.000Z")
    );
    let b = schedule(&store, "b").await;
    assert_eq!(b.next_fire_at, next);
    assert_eq!(b.last_fired_at, Some(slot));

    // The same firing again (another process that read the same slot): nothing.
    assert_eq!(
        store
            .fire_schedule(firing.clone(), slot)
            .await
            .expect("fire"),
        None
    );
    assert_eq!(runs_of(&store, "b").await.len(), 1);

    // A paused schedule does not fire.
    store.pause_schedule("later", slot).await.expect("pause");
    let paused = ScheduleFiring::new(
        "later",
        next,
        next,
        Some(next),
        vec![slot_run("later", next)],
    );
    assert_eq!(store.fire_schedule(paused, next).await.expect("fire"), None);
    assert!(runs_of(&store, "later").await.is_empty());

    // Reset to the fired slot: the slot's run is found, not created again.
    store.delete_schedule("b").await.expect("delete");
    store
        .upsert_schedule(record("b", "*/5 * * * *", slot, t0), t0)
        .await
        .expect("upsert");
    let again = store
        .fire_schedule(firing, slot)
        .await
        .expect("fire")
        .expect("the compare-and-set holds");
    assert_eq!(again[0].disposition, Disposition::Idempotent);
    assert_eq!(again[0].run.id, fired[0].run.id);
    assert_eq!(runs_of(&store, "b").await.len(), 1);

    // A firing of no run (every missed slot skipped) only moves the next slot.
    let skipped = ScheduleFiring::new("a", at("2030-01-01T00:05:00Z"), next, None, vec![]);
    let fired = store
        .fire_schedule(skipped, next)
        .await
        .expect("fire")
        .expect("holds");
    assert!(fired.is_empty());
    let a = schedule(&store, "a").await;
    assert_eq!((a.next_fire_at, a.last_fired_at), (next, None));
}

/// Contract: a firing whose runs are refused (an invalid label key) rolls back: the schedule's
/// next slot stays and none of its runs exist.
pub async fn a_refused_run_rolls_the_whole_firing_back(store: Arc<dyn Store>) {
    let t0 = at("2030-01-01T00:00:00Z");
    let first = at("2030-01-01T00:05:00Z");
    let second = at("2030-01-01T00:10:00Z");
    store
        .upsert_schedule(record("s", "*/5 * * * *", first, t0), t0)
        .await
        .expect("upsert");
    let mut bad = slot_run("s", second);
    bad.labels.insert("bad key!".into(), "x".into());
    let firing = ScheduleFiring::new(
        "s",
        first,
        at("2030-01-01T00:15:00Z"),
        Some(second),
        vec![slot_run("s", first), bad],
    );
    let error = store
        .fire_schedule(firing, second)
        .await
        .expect_err("an invalid label key is refused");
    assert!(matches!(error, Error::Validation(_)), "{error:?}");
    assert_eq!(schedule(&store, "s").await.next_fire_at, first);
    assert!(runs_of(&store, "s").await.is_empty());
}

/// Contract: concurrent firings of one slot (processes that all read it due) have exactly one
/// winner, which creates the slot's one run; the others change nothing.
pub async fn concurrent_firings_of_a_slot_have_exactly_one_winner(store: Arc<dyn Store>) {
    let t0 = at("2030-01-01T00:00:00Z");
    for round in 0..5u32 {
        let name = format!("race-{round}");
        let slot = at("2030-01-01T00:01:00Z");
        store
            .upsert_schedule(record(&name, "* * * * *", slot, t0), t0)
            .await
            .expect("upsert");
        let firings = (0..8).map(|_| {
            let store = store.clone();
            let firing = ScheduleFiring::new(
                name.clone(),
                slot,
                at("2030-01-01T00:02:00Z"),
                Some(slot),
                vec![slot_run(&name, slot)],
            );
            tokio::spawn(async move { store.fire_schedule(firing, slot).await })
        });
        let results = within(
            "concurrent firings",
            Duration::from_secs(30),
            futures::future::join_all(firings),
        )
        .await;
        let winners = results
            .into_iter()
            .map(|joined| joined.expect("task").expect("fire"))
            .filter(Option::is_some)
            .count();
        assert_eq!(winners, 1, "round {round}");
        assert_eq!(runs_of(&store, &name).await.len(), 1, "round {round}");
    }
}
