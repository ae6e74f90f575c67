//! Contract: the overview ([`Store::run_overview`]): runs per status, the oldest pending run,
//! and per bucket and per job the runs that ended in the window with their queue latency and
//! duration percentiles, the same on every backend; and the dashboard's run-id search
//! ([`crate::RunFilter::id_prefix`]) and time range ([`crate::RunFilter::created_since`],
//! [`crate::RunFilter::created_before`]).

use super::*;
use crate::overview::{OverviewWindow, Percentiles};

/// A run of `job` created at `created`, claimed `queued` later and ended `ran` after that
/// (failed when `fails`).
async fn ended_run(
    store: &Arc<dyn Store>,
    job: &str,
    created: Timestamp,
    queued: u64,
    ran: u64,
    fails: bool,
) -> String {
    let run = enqueue(store, new_run(job, json!({})), created).await;
    let started = created + ms(queued);
    let leased = claim(store, "worker", started, LEASE)
        .await
        .expect("claimed");
    assert_eq!(leased.id, run.id, "the only claimable run");
    let fence = Fence::of(&leased);
    let ended = started + ms(ran);
    let landed = match fails {
        true => store.fail_run(&fence, "boom", ended).await,
        false => store.complete_run(&fence, None, ended).await,
    };
    assert!(landed.expect("end"), "the lease holds");
    run.id
}

fn percentiles(p50: u64, p95: u64, count: u64) -> Option<(Duration, Duration, u64)> {
    Some((ms(p50), ms(p95), count))
}

fn shape(p: Option<Percentiles>) -> Option<(Duration, Duration, u64)> {
    p.map(|p| (p.p50, p.p95, p.count))
}

/// Contract: known runs in, exact figures out. Counts per status cover all time; the oldest
/// pending run is the one created first; only runs that completed or failed in the window fill
/// the buckets (by their completion minute or hour) and the jobs; queue latency runs from
/// creation to first start, duration from first start to end (nearest-rank percentiles).
pub async fn run_overview_counts_known_runs(store: Arc<dyn Store>) {
    let now = Timestamp::now();
    let hour = OverviewWindow::LastHour;
    // the start of the current minute: the newest bucket
    let minute = hour.start(now) + Duration::from_secs(59 * 60);
    let ten_ago = minute - Duration::from_secs(600);
    let five_ago = minute - Duration::from_secs(300);

    // empty: every bucket, no job, nothing pending
    let empty = store.run_overview(now, hour).await.expect("overview");
    assert_eq!(empty.counts.total(), 0);
    assert_eq!(empty.oldest_pending, None);
    assert_eq!(empty.buckets.len(), 60);
    assert!(empty.jobs.is_empty());

    // outside both windows: counted by status only
    ended_run(
        &store,
        "old",
        now - Duration::from_secs(30 * 3600),
        10,
        10,
        false,
    )
    .await;
    // in the window: job `a` completes three runs, job `b` fails one
    ended_run(&store, "a", ten_ago, 200, 1_000, false).await;
    ended_run(&store, "a", ten_ago + ms(2_000), 400, 3_000, false).await;
    ended_run(&store, "a", five_ago, 100, 2_000, false).await;
    ended_run(&store, "b", five_ago + ms(10_000), 50, 500, true).await;
    // cancelled, leased
    let cancelled = enqueue(&store, new_run("c", json!({})), now - ms(5_000)).await;
    assert!(store.cancel_run(&cancelled.id, now).await.expect("cancel"));
    let leased = enqueue(&store, new_run("c", json!({})), now - ms(4_000)).await;
    let claimed = claim(&store, "worker", now - ms(3_000), LEASE).await;
    assert_eq!(claimed.map(|r| r.id), Some(leased.id));
    // pending: the oldest is the one created first
    let oldest = enqueue(
        &store,
        new_run("p", json!({})),
        now - Duration::from_secs(1_200),
    )
    .await;
    enqueue(&store, new_run("p", json!({})), now - ms(60_000)).await;

    let overview = store.run_overview(now, hour).await.expect("overview");
    assert_eq!(overview.now, now);
    assert_eq!(overview.window, hour);
    let counts = overview.counts;
    assert_eq!(
        (counts.pending, counts.leased, counts.waiting),
        (2, 1, 0),
        "{counts:?}"
    );
    assert_eq!(
        (counts.completed, counts.failed, counts.cancelled),
        (4, 1, 1),
        "{counts:?}"
    );
    // the cheap read for gauges says the same
    let cheap = store.run_counts(now).await.expect("run_counts");
    assert_eq!(cheap, crate::overview::RunCounts::from(&overview));
    let pending = overview.oldest_pending.clone().expect("a pending run");
    assert_eq!(pending.run_id, oldest.id);
    assert_eq!(pending.job_name, "p");
    assert_eq!(pending.created_at, oldest.created_at);
    assert_eq!(pending.age, Duration::from_secs(1_200));

    assert_eq!(overview.buckets.len(), 60);
    assert_eq!(overview.buckets[0].start, hour.start(now));
    assert_eq!(overview.buckets[59].start, minute);
    let filled: Vec<(Timestamp, u64, u64)> = overview
        .buckets
        .iter()
        .filter(|b| b.completed + b.failed > 0)
        .map(|b| (b.start, b.completed, b.failed))
        .collect();
    assert_eq!(filled, vec![(ten_ago, 2, 0), (five_ago, 1, 1)]);

    let jobs: Vec<(&str, u64, u64)> = overview
        .jobs
        .iter()
        .map(|j| (j.job_name.as_str(), j.completed, j.failed))
        .collect();
    assert_eq!(jobs, vec![("a", 3, 0), ("b", 0, 1)]);
    let a = &overview.jobs[0];
    assert_eq!(shape(a.queue_latency), percentiles(200, 400, 3));
    assert_eq!(shape(a.duration), percentiles(2_000, 3_000, 3));
    let b = &overview.jobs[1];
    assert_eq!(shape(b.queue_latency), percentiles(50, 50, 1));
    assert_eq!(shape(b.duration), percentiles(500, 500, 1));
    assert_eq!(overview.sampled, 4);

    // the last day: the same runs ended in it, in hour buckets
    let day = store
        .run_overview(now, OverviewWindow::LastDay)
        .await
        .expect("overview");
    assert_eq!(day.buckets.len(), 24);
    let sum =
        |f: fn(&crate::overview::OverviewBucket) -> u64| day.buckets.iter().map(f).sum::<u64>();
    assert_eq!((sum(|b| b.completed), sum(|b| b.failed)), (3, 1));
    assert_eq!(day.jobs.len(), 2);
    assert_eq!(day.counts, counts);
}

/// Contract: [`crate::RunFilter::id_prefix`] lists the runs whose id starts with it (a whole id:
/// that run; the common prefix of all ids: all of them; an empty one: every run), with the
/// other filters.
pub async fn get_runs_filters_by_id_prefix(store: Arc<dyn Store>) {
    let now = Timestamp::now();
    let mut ids = Vec::new();
    for (i, job) in ["a", "a", "b"].into_iter().enumerate() {
        ids.push(
            enqueue(&store, new_run(job, json!({})), now + ms(i as u64))
                .await
                .id,
        );
    }
    let listed = |filter: RunFilter| {
        let store = store.clone();
        async move {
            let mut ids: Vec<String> = store
                .get_runs(&filter)
                .await
                .expect("get_runs")
                .into_iter()
                .map(|r| r.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut all = ids.clone();
    all.sort();
    assert_eq!(
        listed(RunFilter::new().id_prefix(ids[1].clone())).await,
        vec![ids[1].clone()]
    );
    let common: String = {
        let first = &ids[0];
        let len = ids
            .iter()
            .map(|id| {
                first
                    .chars()
                    .zip(id.chars())
                    .take_while(|(a, b)| a == b)
                    .count()
            })
            .min()
            .unwrap_or(0);
        first.chars().take(len).collect()
    };
    assert_eq!(
        listed(RunFilter::new().id_prefix(common.clone())).await,
        all
    );
    assert_eq!(listed(RunFilter::new().id_prefix("")).await, all);
    assert_eq!(
        listed(RunFilter::new().id_prefix("no-such-run-")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        listed(RunFilter::new().id_prefix(common).job_name("b")).await,
        vec![ids[2].clone()]
    );
    // a prefix is text, not a pattern
    assert_eq!(
        listed(RunFilter::new().id_prefix("%")).await,
        Vec::<String>::new()
    );
}

/// Contract: [`crate::RunFilter::created_since`] keeps the runs created at or after it and
/// [`crate::RunFilter::created_before`] those created strictly before it (a half-open range),
/// with the other filters and with pages; bounds beyond the years a timestamp is stored in
/// filter as the nearest stored one.
pub async fn get_runs_filters_by_creation_time(store: Arc<dyn Store>) {
    let base = Timestamp::now() - Duration::from_secs(3 * 24 * 3600);
    // created a day apart, the oldest (job "a") claimed so that two statuses are listed
    let offsets = [0u64, 24, 48, 72];
    let mut ids = Vec::new();
    for (i, hours) in offsets.into_iter().enumerate() {
        let job = if i % 2 == 0 { "a" } else { "b" };
        let created = base + Duration::from_secs(hours * 3600);
        ids.push(enqueue(&store, new_run(job, json!({})), created).await.id);
    }
    let leased = claim(
        &store,
        "worker",
        base + Duration::from_secs(80 * 3600),
        LEASE,
    )
    .await
    .expect("claimed");
    assert_eq!(leased.id, ids[0], "the oldest run is claimed");
    let at = |hours: u64| base + Duration::from_secs(hours * 3600);
    let listed = |filter: RunFilter| {
        let store = store.clone();
        async move {
            store
                .get_runs(&filter)
                .await
                .expect("get_runs")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<String>>()
        }
    };
    let newest_first = |picked: &[usize]| {
        picked
            .iter()
            .rev()
            .map(|&i| ids[i].clone())
            .collect::<Vec<_>>()
    };
    // the bounds are inclusive (since) and exclusive (before), to the millisecond
    assert_eq!(
        listed(RunFilter::new().created_since(at(24))).await,
        newest_first(&[1, 2, 3])
    );
    assert_eq!(
        listed(RunFilter::new().created_since(at(24) + ms(1))).await,
        newest_first(&[2, 3])
    );
    assert_eq!(
        listed(RunFilter::new().created_before(at(24))).await,
        newest_first(&[0])
    );
    assert_eq!(
        listed(RunFilter::new().created_before(at(24) + ms(1))).await,
        newest_first(&[0, 1])
    );
    assert_eq!(
        listed(
            RunFilter::new()
                .created_since(at(24))
                .created_before(at(72))
        )
        .await,
        newest_first(&[1, 2])
    );
    // an empty range, and one that ends before it starts
    assert_eq!(
        listed(
            RunFilter::new()
                .created_since(at(48))
                .created_before(at(48))
        )
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        listed(RunFilter::new().created_since(at(72)).created_before(at(0))).await,
        Vec::<String>::new()
    );
    // with the other filters, and in pages (both listing shapes)
    assert_eq!(
        listed(RunFilter::new().created_since(at(1)).job_name("a")).await,
        newest_first(&[2])
    );
    assert_eq!(
        listed(
            RunFilter::new()
                .created_before(at(60))
                .status(RunStatus::Leased)
        )
        .await,
        newest_first(&[0])
    );
    assert_eq!(
        listed(RunFilter::new().created_before(at(72)).limit(2)).await,
        newest_first(&[1, 2])
    );
    assert_eq!(
        listed(RunFilter::new().created_before(at(72)).limit(2).offset(2)).await,
        newest_first(&[0])
    );
    // bounds outside the stored years: the nearest stored one
    let all = newest_first(&[0, 1, 2, 3]);
    assert_eq!(
        listed(RunFilter::new().created_since(Timestamp::from_millis(i64::MIN))).await,
        all
    );
    assert_eq!(
        listed(RunFilter::new().created_before(Timestamp::from_millis(i64::MAX))).await,
        all
    );
    assert_eq!(
        listed(RunFilter::new().created_since(Timestamp::from_millis(i64::MAX))).await,
        Vec::<String>::new()
    );
}

/// Contract: a delayed run's queue latency runs from the end of its delay (its `delay` wait's
/// resolution), not from its creation.
pub async fn run_overview_measures_a_delayed_run_from_its_start_time(store: Arc<dyn Store>) {
    let now = Timestamp::now();
    let created = now - Duration::from_secs(10);
    let start_at = now - Duration::from_secs(5);
    let run = NewRun {
        start_at: Some(start_at),
        ..new_run("later", json!({}))
    };
    let delayed = store.enqueue(run, created).await.expect("enqueue").run;
    assert_eq!(delayed.status, RunStatus::Waiting);
    // the delay's deadline has passed (on the database's clock too): it resolves at it
    let expired = store.expire_due_waits(now, 10).await.expect("expire");
    assert_eq!(expired, 1);
    let started = start_at + ms(700);
    let leased = claim(&store, "worker", started, LEASE)
        .await
        .expect("the delayed run resumes");
    assert_eq!(leased.id, delayed.id);
    assert!(
        store
            .complete_run(&Fence::of(&leased), None, started + ms(300))
            .await
            .expect("complete")
    );
    let overview = store
        .run_overview(now, OverviewWindow::LastDay)
        .await
        .expect("overview");
    assert_eq!(overview.jobs.len(), 1);
    let job = &overview.jobs[0];
    assert_eq!((job.job_name.as_str(), job.completed), ("later", 1));
    assert_eq!(
        shape(job.queue_latency),
        percentiles(700, 700, 1),
        "from the end of the delay"
    );
    assert_eq!(shape(job.duration), percentiles(300, 300, 1));
}
