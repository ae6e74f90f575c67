//! Cron schedules (`durably::schedules`): several instances sharing one database fire each
//! slot exactly once, catch-up policies after a gap, pause and resume, DST transitions in a
//! time zone, and refused definitions. On SQLite files and PostgreSQL (set
//! `DURABLY_TEST_POSTGRES_URL`), with a clock the test controls (`Schedules::at`); on the
//! memory store, the workers' own maintenance on a virtual clock.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{Backend, TestDb};
use durably::testing::{MemoryStore, use_virtual_wall_clock};
use durably::{
    CatchUp, Disposition, Durably, Error, FiredSlot, Job, RunFilter, RunStatus, Schedule,
    SqliteStore, StepContext, Store, Timestamp,
};
use serde_json::{Value, json};

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("timestamp")
}

fn report() -> Job<Value, Value> {
    Job::new(
        "report",
        |_: StepContext, input: Value| async move { Ok(input) },
    )
}

fn counter() -> Job<u64, u64> {
    Job::new("counter", |_: StepContext, n: u64| async move { Ok(n + 1) })
}

/// An instance on `store` with the test jobs.
async fn instance(store: Arc<dyn Store>) -> Durably {
    let durably = Durably::builder()
        .shared_store(store)
        .job(report())
        .job(counter())
        .build()
        .expect("build");
    durably.migrate().await.expect("migrate");
    durably
}

/// `n` stores of their own (own connections, own SQLite writer thread) on `db`'s database.
fn stores_on(db: &TestDb, n: usize) -> Vec<Arc<dyn Store>> {
    (0..n)
        .map(|_| -> Arc<dyn Store> {
            match db.backend {
                Backend::SqliteFile => Arc::new(
                    SqliteStore::open(db.path.as_ref().expect("path")).expect("open sqlite"),
                ),
                Backend::Postgres => {
                    Arc::new(common::postgres_store(db.schema.as_ref().expect("schema")))
                }
                Backend::SqliteMemory => db.store.clone(),
            }
        })
        .collect()
}

async fn fresh(backend: Backend) -> (TestDb, Durably) {
    let db = TestDb::new(backend);
    db.store.migrate().await.expect("migrate");
    let durably = instance(db.store.clone()).await;
    (db, durably)
}

/// The slot label of each run of schedule `name`, with how many runs carry it.
async fn runs_per_slot(durably: &Durably, name: &str) -> BTreeMap<String, usize> {
    let runs = durably
        .get_runs(&RunFilter::new().label("durably.schedule", name))
        .await
        .expect("runs");
    let mut slots = BTreeMap::new();
    for run in runs {
        let slot = run
            .labels
            .get("durably.schedule.slot")
            .expect("slot label")
            .clone();
        assert_eq!(
            run.idempotency_key.as_deref(),
            Some(format!("schedule:{name}:{slot}").as_str())
        );
        *slots.entry(slot).or_insert(0) += 1;
    }
    slots
}

fn slots_of(fired: &[FiredSlot], name: &str) -> Vec<Timestamp> {
    fired
        .iter()
        .filter(|f| f.schedule == name)
        .map(|f| f.slot)
        .collect()
}

/// Fires `name` at each of its next slots until one is after `until`; the slots fired.
async fn fire_through(durably: &Durably, name: &str, until: Timestamp) -> Vec<Timestamp> {
    let mut fired = Vec::new();
    loop {
        let next = durably
            .schedules()
            .get(name)
            .await
            .expect("get")
            .expect("schedule")
            .next_fire_at;
        if next > until {
            return fired;
        }
        fired.extend(slots_of(
            &durably.schedules().at(next).fire_due().await.expect("fire"),
            name,
        ));
    }
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::SqliteFile).await;
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
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_every_backend!(
    three_instances_fire_each_slot_of_a_day_exactly_once,
    catch_up_policies_decide_about_the_slots_missed_during_a_gap,
    a_paused_schedule_fires_nothing_and_resumes_from_the_next_slot,
    dst_transitions_in_europe_paris,
    invalid_schedules_are_refused_naming_the_value_and_store_nothing,
    a_new_definition_keeps_the_pause_and_the_next_slot,
    trigger_now_runs_the_schedule_at_once_and_leaves_it_as_it_was,
);

/// Three instances (each with its own connections) tick together every minute of a simulated
/// day, racing for the same slots: each slot of each schedule is fired by exactly one of them.
async fn three_instances_fire_each_slot_of_a_day_exactly_once(backend: Backend) {
    let db = TestDb::new(backend);
    db.store.migrate().await.expect("migrate");
    let mut instances = Vec::new();
    for store in stores_on(&db, 3) {
        instances.push(instance(store).await);
    }
    let t0 = at("2026-06-01T00:00:00Z");
    let schedules = instances[0].schedules().at(t0);
    schedules
        .upsert(
            Schedule::new("quarter", "*/15 * * * *", "report", json!({"every": "15m"}))
                .time_zone("Europe/Paris")
                .label("team", "ops"),
        )
        .await
        .expect("upsert quarter");
    schedules
        .upsert(
            Schedule::new("nightly", "0 0 3 * * *", "counter", json!(1)).time_zone("Europe/Paris"),
        )
        .await
        .expect("upsert nightly");

    let mut fired: Vec<FiredSlot> = Vec::new();
    for minute in 1..=24 * 60 {
        let now = t0 + Duration::from_secs(60 * minute);
        let ticks = instances
            .iter()
            .map(|durably| async move { durably.schedules().at(now).fire_due().await });
        for result in futures::future::join_all(ticks).await {
            fired.extend(result.expect("fire_due"));
        }
    }
    let quarter = slots_of(&fired, "quarter");
    assert_eq!(quarter.len(), 96, "every quarter of an hour, once");
    assert_eq!(quarter.iter().collect::<BTreeSet<_>>().len(), 96);
    assert_eq!(
        slots_of(&fired, "nightly"),
        vec![at("2026-06-01T01:00:00Z")],
        "03:00 CEST"
    );
    assert!(fired.iter().all(|f| f.disposition == Disposition::Created));

    let per_slot = runs_per_slot(&instances[1], "quarter").await;
    assert_eq!(per_slot.len(), 96);
    assert!(per_slot.values().all(|runs| *runs == 1), "{per_slot:?}");
    assert_eq!(runs_per_slot(&instances[2], "nightly").await.len(), 1);
    let run = &fired[0].run;
    assert_eq!(run.input, json!({"every": "15m"}));
    assert_eq!(run.labels.get("team").map(String::as_str), Some("ops"));
    assert_eq!(run.status, RunStatus::Pending);

    let stored = instances[2]
        .schedules()
        .get("quarter")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.next_fire_at, at("2026-06-02T00:15:00Z"));
    assert_eq!(stored.last_fired_at, Some(at("2026-06-02T00:00:00Z")));
}

/// After a gap of five hours, the slot due for less than a minute runs whatever the policy;
/// of the missed ones, `Skip` runs none, `One` the latest, `All { max: 3 }` the three latest.
async fn catch_up_policies_decide_about_the_slots_missed_during_a_gap(backend: Backend) {
    let (_db, durably) = fresh(backend).await;
    let t0 = at("2026-06-01T00:00:00Z");
    for (name, catch_up) in [
        ("skip", CatchUp::Skip),
        ("one", CatchUp::One),
        ("all", CatchUp::All { max: 3 }),
    ] {
        let stored = durably
            .schedules()
            .at(t0)
            .upsert(Schedule::new(name, "0 * * * *", "report", json!({})).catch_up(catch_up))
            .await
            .expect("upsert");
        assert_eq!(stored.next_fire_at, at("2026-06-01T01:00:00Z"));
        assert_eq!(stored.catch_up, catch_up);
    }
    let nothing = durably
        .schedules()
        .at(at("2026-06-01T00:59:59Z"))
        .fire_due()
        .await
        .expect("fire");
    assert!(nothing.is_empty());

    let back = at("2026-06-01T06:00:30Z");
    let fired = durably.schedules().at(back).fire_due().await.expect("fire");
    let hour = |h: u32| at(&format!("2026-06-01T{h:02}:00:00Z"));
    assert_eq!(slots_of(&fired, "skip"), vec![hour(6)]);
    assert_eq!(slots_of(&fired, "one"), vec![hour(5), hour(6)]);
    assert_eq!(
        slots_of(&fired, "all"),
        vec![hour(3), hour(4), hour(5), hour(6)]
    );
    for name in ["skip", "one", "all"] {
        let schedule = durably
            .schedules()
            .get(name)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(schedule.next_fire_at, hour(7), "{name}");
        assert_eq!(schedule.last_fired_at, Some(hour(6)), "{name}");
    }
    assert_eq!(runs_per_slot(&durably, "all").await.len(), 4);

    // A gap with no on-time slot: `Skip` fires nothing and moves on.
    let later = at("2026-06-01T09:30:00Z");
    let fired = durably
        .schedules()
        .at(later)
        .fire_due()
        .await
        .expect("fire");
    assert_eq!(slots_of(&fired, "skip"), vec![]);
    assert_eq!(slots_of(&fired, "one"), vec![hour(9)]);
    assert_eq!(slots_of(&fired, "all"), vec![hour(7), hour(8), hour(9)]);
    let skip = durably
        .schedules()
        .get("skip")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(skip.next_fire_at, hour(10));
    assert_eq!(skip.last_fired_at, Some(hour(6)));
}

/// A paused schedule fires nothing; resumed, it fires from its next slot after the resume:
/// the slots that passed while paused are skipped even with `CatchUp::All`.
async fn a_paused_schedule_fires_nothing_and_resumes_from_the_next_slot(backend: Backend) {
    let (_db, durably) = fresh(backend).await;
    let t0 = at("2026-06-01T00:00:00Z");
    let schedules = || durably.schedules();
    schedules()
        .at(t0)
        .upsert(
            Schedule::new("hourly", "0 * * * *", "report", json!({}))
                .catch_up(CatchUp::All { max: 10 }),
        )
        .await
        .expect("upsert");
    let fired = schedules()
        .at(at("2026-06-01T01:00:05Z"))
        .fire_due()
        .await
        .expect("fire");
    assert_eq!(slots_of(&fired, "hourly"), vec![at("2026-06-01T01:00:00Z")]);

    let paused = schedules()
        .at(at("2026-06-01T01:30:00Z"))
        .pause("hourly")
        .await
        .expect("pause");
    assert!(paused.paused);
    assert!(schedules().list().await.expect("list")[0].paused);
    for hour in 2..=5 {
        let now = at(&format!("2026-06-01T{hour:02}:00:05Z"));
        assert!(
            schedules()
                .at(now)
                .fire_due()
                .await
                .expect("fire")
                .is_empty()
        );
    }
    let resumed = schedules()
        .at(at("2026-06-01T05:30:00Z"))
        .resume("hourly")
        .await
        .expect("resume");
    assert!(!resumed.paused);
    assert_eq!(resumed.next_fire_at, at("2026-06-01T06:00:00Z"));
    assert!(
        schedules()
            .at(at("2026-06-01T05:30:00Z"))
            .fire_due()
            .await
            .expect("fire")
            .is_empty()
    );
    let fired = schedules()
        .at(at("2026-06-01T06:00:05Z"))
        .fire_due()
        .await
        .expect("fire");
    assert_eq!(slots_of(&fired, "hourly"), vec![at("2026-06-01T06:00:00Z")]);
    assert_eq!(runs_per_slot(&durably, "hourly").await.len(), 2);

    for missing in [
        schedules().pause("missing").await,
        schedules().resume("missing").await,
    ] {
        match missing {
            Err(Error::NotFound(message)) => assert!(message.contains("missing"), "{message}"),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    assert!(schedules().delete("hourly").await.expect("delete"));
    assert!(!schedules().delete("hourly").await.expect("delete"));
    assert_eq!(
        runs_per_slot(&durably, "hourly").await.len(),
        2,
        "runs outlive it"
    );
}

/// Europe/Paris: on 2026-03-29 clocks jump from 02:00 to 03:00, so 02:30 does not exist: a
/// daily 02:30 job runs once that day, at 03:00 CEST (the first instant after the gap). On
/// 2026-10-25 clocks go back from 03:00 to 02:00, so 02:30 happens twice: the daily job runs
/// once, at the first (CEST); an every-30-minutes job runs on every real half hour, both
/// passes of the repeated hour included.
async fn dst_transitions_in_europe_paris(backend: Backend) {
    let (_db, durably) = fresh(backend).await;
    let spring = at("2026-03-28T12:00:00Z");
    durably
        .schedules()
        .at(spring)
        .upsert(Schedule::new("daily", "30 2 * * *", "report", json!({})).time_zone("Europe/Paris"))
        .await
        .expect("upsert");
    assert_eq!(
        fire_through(&durably, "daily", at("2026-03-31T00:00:00Z")).await,
        vec![
            at("2026-03-29T01:00:00Z"), // 03:00 CEST: 02:30 does not exist
            at("2026-03-30T00:30:00Z"), // 02:30 CEST
        ]
    );

    // One schedule at a time: a firing fires every due schedule.
    assert!(durably.schedules().delete("daily").await.expect("delete"));
    let autumn = at("2026-10-24T12:00:00Z");
    let upsert = |name: &'static str, cron: &'static str| {
        let schedules = durably.schedules().at(autumn);
        async move {
            schedules
                .upsert(Schedule::new(name, cron, "report", json!({})).time_zone("Europe/Paris"))
                .await
                .expect("upsert")
        }
    };
    upsert("daily-autumn", "30 2 * * *").await;
    assert_eq!(
        fire_through(&durably, "daily-autumn", at("2026-10-27T00:00:00Z")).await,
        vec![
            at("2026-10-25T00:30:00Z"), // 02:30 CEST, the first of the two
            at("2026-10-26T01:30:00Z"), // 02:30 CET
        ]
    );
    assert!(
        durably
            .schedules()
            .delete("daily-autumn")
            .await
            .expect("delete")
    );
    upsert("half-hourly", "*/30 * * * *").await;
    let half_hours = fire_through(&durably, "half-hourly", at("2026-10-25T02:00:00Z")).await;
    let repeated: Vec<_> = half_hours
        .iter()
        .copied()
        .filter(|slot| *slot >= at("2026-10-24T23:30:00Z"))
        .collect();
    assert_eq!(
        repeated,
        vec![
            at("2026-10-24T23:30:00Z"), // 01:30 CEST
            at("2026-10-25T00:00:00Z"), // 02:00 CEST
            at("2026-10-25T00:30:00Z"), // 02:30 CEST
            at("2026-10-25T01:00:00Z"), // 02:00 CET
            at("2026-10-25T01:30:00Z"), // 02:30 CET
            at("2026-10-25T02:00:00Z"), // 03:00 CET
        ]
    );
    assert!(
        runs_per_slot(&durably, "half-hourly")
            .await
            .values()
            .all(|n| *n == 1),
        "one run per slot"
    );
}

/// Which error a refused definition gets.
type ErrorKind = fn(&Error) -> bool;

/// Invalid definitions are refused with an error naming the value and what to do, before
/// anything is stored; at build time too.
async fn invalid_schedules_are_refused_naming_the_value_and_store_nothing(backend: Backend) {
    let (_db, durably) = fresh(backend).await;
    let cases: Vec<(Schedule, &str, ErrorKind)> = vec![
        (
            Schedule::new("bad-cron", "61 * * * *", "report", json!({})),
            "\"61 * * * *\"",
            |e| matches!(e, Error::Validation(_)),
        ),
        (
            Schedule::new("bad-cron-fields", "* * *", "report", json!({})),
            "Use 5 fields",
            |e| matches!(e, Error::Validation(_)),
        ),
        (
            Schedule::new("bad-zone", "0 3 * * *", "report", json!({})).time_zone("Europe/Pariss"),
            "Unknown time zone \"Europe/Pariss\"",
            |e| matches!(e, Error::Validation(_)),
        ),
        (
            Schedule::new("bad-job", "0 3 * * *", "no-such-job", json!({})),
            "Job not found: no-such-job",
            |e| matches!(e, Error::NotFound(_)),
        ),
        (
            Schedule::new("bad-input", "0 3 * * *", "counter", json!("not a number")),
            "Invalid input",
            |e| matches!(e, Error::Validation(_)),
        ),
        (
            Schedule::new("bad-label", "0 3 * * *", "report", json!({})).label("bad key!", "x"),
            "bad key!",
            |e| matches!(e, Error::Validation(_)),
        ),
        (
            Schedule::new("", "0 3 * * *", "report", json!({})),
            "must not be empty",
            |e| matches!(e, Error::Validation(_)),
        ),
        (
            Schedule::new("never", "0 0 30 2 *", "report", json!({})),
            "never matches",
            |e| matches!(e, Error::Validation(_)),
        ),
        (
            Schedule::new("all-zero", "0 3 * * *", "report", json!({}))
                .catch_up(CatchUp::All { max: 0 }),
            "max of at least 1",
            |e| matches!(e, Error::Validation(_)),
        ),
    ];
    for (schedule, expected, kind) in cases {
        let name = schedule.name.clone();
        let error = durably.schedules().upsert(schedule).await.expect_err(&name);
        assert!(kind(&error), "{name}: {error:?}");
        assert!(error.to_string().contains(expected), "{name}: {error}");
    }
    assert!(durably.schedules().list().await.expect("list").is_empty());

    let built = Durably::builder()
        .shared_store(durably.store().clone())
        .job(report())
        .schedule(Schedule::new("nightly", "0 3 * * *", "report", json!({})).time_zone("Nowhere"))
        .build();
    match built {
        Err(Error::Validation(message)) => assert!(message.contains("Nowhere"), "{message}"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    let twice = Durably::builder()
        .shared_store(durably.store().clone())
        .job(report())
        .schedule(Schedule::new("nightly", "0 3 * * *", "report", json!({})))
        .schedule(Schedule::new("nightly", "0 4 * * *", "report", json!({})))
        .build();
    assert!(matches!(twice, Err(Error::Config(_))), "{twice:?}");
    assert!(durably.schedules().list().await.expect("list").is_empty());
}

/// Registering a schedule again (a redeploy) keeps an operator's pause and the next slot when
/// the expression is unchanged; a new expression starts from its first slot after now.
/// Schedules registered in code are stored by the first schedule call or maintenance pass.
async fn a_new_definition_keeps_the_pause_and_the_next_slot(backend: Backend) {
    let (db, durably) = fresh(backend).await;
    let t0 = at("2026-06-01T00:00:00Z");
    durably
        .schedules()
        .at(t0)
        .upsert(Schedule::new(
            "report",
            "0 3 * * *",
            "report",
            json!({"v": 1}),
        ))
        .await
        .expect("upsert");
    durably
        .schedules()
        .at(t0)
        .pause("report")
        .await
        .expect("pause");
    let t1 = at("2026-06-01T12:00:00Z");
    let again = durably
        .schedules()
        .at(t1)
        .upsert(Schedule::new(
            "report",
            "0 3 * * *",
            "report",
            json!({"v": 2}),
        ))
        .await
        .expect("upsert");
    assert!(again.paused);
    assert_eq!(again.input, json!({"v": 2}));
    assert_eq!(again.next_fire_at, at("2026-06-01T03:00:00Z"));
    assert_eq!(again.created_at, t0);
    let moved = durably
        .schedules()
        .at(t1)
        .upsert(Schedule::new(
            "report",
            "0 4 * * *",
            "report",
            json!({"v": 2}),
        ))
        .await
        .expect("upsert");
    assert_eq!(moved.next_fire_at, at("2026-06-02T04:00:00Z"));

    let coded = Durably::builder()
        .shared_store(stores_on(&db, 1).remove(0))
        .job(report())
        .schedule(Schedule::new("coded", "*/5 * * * *", "report", json!({})).label("from", "code"))
        .build()
        .expect("build");
    let listed = coded.schedules().at(t1).list().await.expect("list");
    let names: Vec<_> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["coded", "report"]);
    assert_eq!(listed[0].next_fire_at, at("2026-06-01T12:05:00Z"));
}

/// `trigger_now` enqueues a run of the schedule's job with its input and labels, labelled with
/// the schedule but no slot, a new run at every call, even while paused; the schedule's next
/// slot, last firing and pause stay as they were. An unknown name is `NotFound`.
async fn trigger_now_runs_the_schedule_at_once_and_leaves_it_as_it_was(backend: Backend) {
    let (_db, durably) = fresh(backend).await;
    let t0 = at("2026-06-01T00:00:00Z");
    let schedules = || durably.schedules();
    let before = schedules()
        .at(t0)
        .upsert(Schedule::new("nightly", "0 3 * * *", "counter", json!(41)).label("team", "data"))
        .await
        .expect("upsert");
    let first = schedules().trigger_now("nightly").await.expect("trigger");
    assert_eq!(first.job_name, "counter");
    assert_eq!(first.input, json!(41));
    assert_eq!(first.status, RunStatus::Pending);
    assert_eq!(first.labels.get("team").map(String::as_str), Some("data"));
    assert_eq!(
        first.labels.get("durably.schedule").map(String::as_str),
        Some("nightly")
    );
    assert!(
        !first.labels.contains_key("durably.slot"),
        "{:?}",
        first.labels
    );
    schedules().pause("nightly").await.expect("pause");
    let second = schedules()
        .trigger_now("nightly")
        .await
        .expect("trigger paused");
    assert_ne!(second.id, first.id, "every call is a new run");
    let after = schedules()
        .get("nightly")
        .await
        .expect("get")
        .expect("schedule");
    assert_eq!(after.next_fire_at, before.next_fire_at);
    assert_eq!(after.last_fired_at, None);
    assert!(after.paused);
    let runs = durably
        .get_runs(&RunFilter::new().label("durably.schedule", "nightly"))
        .await
        .expect("runs");
    assert_eq!(runs.len(), 2);
    match schedules().trigger_now("weekly").await {
        Err(Error::NotFound(message)) => assert!(message.contains("weekly"), "{message}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// A worker whose only slot is held by a long run still fires its schedules (the scheduler
/// runs while busy): on a virtual clock, a `*/10` seconds schedule fires every slot of the
/// minute during which a run holds the slot, and the fired runs wait for the slot.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_worker_with_every_slot_busy_still_fires_schedules() {
    let start = at("2026-06-01T00:00:00Z");
    use_virtual_wall_clock(start);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let durably = Durably::builder()
        .shared_store(store)
        .polling_interval(Duration::from_millis(200))
        .max_concurrent_runs(1)
        .job(report())
        .job(Job::new("hold", |step: StepContext, _: Value| async move {
            step.run("hold the slot", |_| async {
                tokio::time::sleep(Duration::from_secs(120)).await;
                Ok(())
            })
            .await
        }))
        .schedule(Schedule::new("tick", "*/10 * * * * *", "report", json!({})))
        .build()
        .expect("build");
    durably.migrate().await.expect("migrate");
    let hold = durably
        .trigger_json("hold", json!({}), Default::default())
        .await
        .expect("trigger hold")
        .run
        .id;
    durably.start();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let held = durably.get_run(&hold).await.expect("get").expect("hold");
    assert_eq!(
        held.status,
        RunStatus::Leased,
        "the long run holds the slot"
    );
    let per_slot = runs_per_slot(&durably, "tick").await;
    let expected: BTreeSet<String> = (1..=6)
        .map(|i| (start + Duration::from_secs(10 * i)).to_string())
        .collect();
    let got: BTreeSet<String> = per_slot.keys().cloned().collect();
    assert!(
        got.is_superset(&expected),
        "fired {got:?}, expected {expected:?}"
    );
    let pending = durably
        .get_runs(
            &RunFilter::new()
                .label("durably.schedule", "tick")
                .status(RunStatus::Pending),
        )
        .await
        .expect("runs");
    assert_eq!(
        pending.len(),
        per_slot.len(),
        "the fired runs wait for the slot"
    );
    durably.stop().await;
}

/// The workers' own maintenance fires the slots on the engine's clock (a virtual one here):
/// three instances started on one memory store for ten minutes of a `*/10` seconds schedule
/// registered in code by each; every slot runs once, and each run completes.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn started_workers_fire_each_slot_once_on_the_engine_clock() {
    let start = at("2026-06-01T00:00:00Z");
    use_virtual_wall_clock(start);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut instances = Vec::new();
    for worker in 0..3 {
        let durably = Durably::builder()
            .shared_store(store.clone())
            .polling_interval(Duration::from_millis(200))
            .job(report())
            .schedule(Schedule::new(
                "tick",
                "*/10 * * * * *",
                "report",
                json!({"n": 1}),
            ))
            .build()
            .expect("build");
        durably.migrate().await.expect("migrate");
        durably.start_as(format!("worker-{worker}"));
        instances.push(durably);
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    let end = Timestamp::now();
    for durably in &instances {
        durably.stop().await;
    }
    let per_slot = runs_per_slot(&instances[0], "tick").await;
    let last = at("2026-06-01T00:09:50Z");
    let expected: BTreeSet<String> = (1..=59)
        .map(|i| (start + Duration::from_secs(10 * i)).to_string())
        .filter(|slot| at(slot) <= last)
        .collect();
    let got: BTreeSet<String> = per_slot
        .keys()
        .filter(|slot| at(slot) <= last)
        .cloned()
        .collect();
    assert_eq!(got, expected, "every slot up to {last} (clock at {end})");
    assert!(per_slot.values().all(|n| *n == 1), "{per_slot:?}");
    let runs = instances[1]
        .get_runs(&RunFilter::new().status(RunStatus::Completed))
        .await
        .expect("runs");
    assert!(runs.len() >= expected.len() - 1, "{} completed", runs.len());
}

/// A store that keeps no schedules (one written outside this crate without the schedule
/// operations) refuses schedules at build time, and its workers run no scheduler.
#[tokio::test]
async fn a_store_without_schedules_refuses_them_at_build_time() {
    let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let without = || {
        durably::testing::sim::FaultyStore::new(
            inner.clone(),
            1,
            durably::testing::sim::FaultRates::none(),
        )
    };
    assert!(!without().keeps_schedules());
    let built = Durably::builder()
        .store(without())
        .job(report())
        .schedule(Schedule::new("nightly", "0 3 * * *", "report", json!({})))
        .build();
    match built {
        Err(Error::Config(message)) => assert!(message.contains("keeps no schedules"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let durably = Durably::builder()
        .store(without())
        .job(report())
        .build()
        .expect("build");
    durably.migrate().await.expect("migrate");
    assert!(matches!(
        durably.schedules().list().await,
        Err(Error::Config(_))
    ));
    durably.run_idle_maintenance().await; // no scheduler: nothing to report
}
