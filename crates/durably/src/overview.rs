//! How the queues are doing, at a glance ([`crate::Store::run_overview`]): runs per status,
//! the oldest pending run, and for a recent window the runs that ended per time bucket and,
//! per job, how many completed and failed and how long they queued and ran (percentiles).
//!
//! Every backend reads the same four things (counts per status, the oldest pending run, the
//! runs that ended in the window grouped by job, bucket and status, and a bounded sample of
//! those runs' times) and [`Overview`] is assembled from them here, so that the figures mean
//! the same on every backend. A bucket is a clock minute (last hour) or a clock hour (last
//! day), so the database groups ended runs by a prefix of their stored completion time
//! (`2026-01-02T03:04` for a minute): no date arithmetic in SQL.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::run::RunStatus;
use crate::time::Timestamp;

/// The most ended runs whose times a backend reads for the percentiles of one overview: the
/// newest that ended in the window. Counts are exact whatever the number of runs; percentiles
/// describe these runs only when more ended ([`Overview::sampled`] tells how many were read).
pub const OVERVIEW_SAMPLE: u64 = 2_000;

/// The recent period an overview describes, and the size of its buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverviewWindow {
    /// The last hour in 60 buckets of one clock minute (the current minute last).
    LastHour,
    /// The last day in 24 buckets of one clock hour (the current hour last).
    LastDay,
}

impl OverviewWindow {
    /// Every window, shortest first.
    pub const ALL: [OverviewWindow; 2] = [OverviewWindow::LastHour, OverviewWindow::LastDay];

    /// The name used on the wire: `1h` or `24h`.
    pub fn as_str(self) -> &'static str {
        match self {
            OverviewWindow::LastHour => "1h",
            OverviewWindow::LastDay => "24h",
        }
    }

    /// The window named `text` (`1h`, `24h`).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.as_str() == text)
    }

    /// The length of one bucket.
    pub fn bucket(self) -> Duration {
        match self {
            OverviewWindow::LastHour => Duration::from_secs(60),
            OverviewWindow::LastDay => Duration::from_secs(3_600),
        }
    }

    /// How many buckets the window has.
    pub fn buckets(self) -> usize {
        match self {
            OverviewWindow::LastHour => 60,
            OverviewWindow::LastDay => 24,
        }
    }

    /// The start of the window at `now`: the start of the oldest bucket (`now`'s bucket is
    /// the newest).
    pub fn start(self, now: Timestamp) -> Timestamp {
        let bucket = self.bucket().as_millis() as i64;
        let current = now.as_millis().div_euclid(bucket) * bucket;
        Timestamp::from_millis(current - bucket * (self.buckets() as i64 - 1))
    }

    /// How many leading characters of a stored timestamp (`2026-01-02T03:04:05.678Z`) name
    /// its bucket: 16 for a minute, 13 for an hour.
    pub(crate) fn key_len(self) -> usize {
        match self {
            OverviewWindow::LastHour => 16,
            OverviewWindow::LastDay => 13,
        }
    }

    /// The bucket key of `at` (the prefix of its stored text, see [`OverviewWindow::key_len`]).
    pub(crate) fn key_of(self, at: Timestamp) -> String {
        let mut text = at.to_string();
        text.truncate(self.key_len());
        text
    }
}

/// Runs per status, over all time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusCounts {
    /// Waiting to be claimed.
    pub pending: u64,
    /// Claimed by a worker.
    pub leased: u64,
    /// Suspended on a durable wait (delayed runs too).
    pub waiting: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl StatusCounts {
    /// The count of `status`.
    pub fn get(&self, status: RunStatus) -> u64 {
        match status {
            RunStatus::Pending => self.pending,
            RunStatus::Leased => self.leased,
            RunStatus::Waiting => self.waiting,
            RunStatus::Completed => self.completed,
            RunStatus::Failed => self.failed,
            RunStatus::Cancelled => self.cancelled,
        }
    }

    fn slot(&mut self, status: RunStatus) -> &mut u64 {
        match status {
            RunStatus::Pending => &mut self.pending,
            RunStatus::Leased => &mut self.leased,
            RunStatus::Waiting => &mut self.waiting,
            RunStatus::Completed => &mut self.completed,
            RunStatus::Failed => &mut self.failed,
            RunStatus::Cancelled => &mut self.cancelled,
        }
    }

    /// All runs.
    pub fn total(&self) -> u64 {
        RunStatus::ALL.into_iter().map(|s| self.get(s)).sum()
    }
}

/// The pending run that has waited longest for a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OldestPending {
    /// The run.
    pub run_id: String,
    /// Its job.
    pub job_name: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// How long it has waited at the overview's `now`.
    pub age: Duration,
}

/// The runs that ended in one bucket of the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OverviewBucket {
    /// The start of the bucket (a clock minute or hour).
    pub start: Timestamp,
    /// Runs that completed in it.
    pub completed: u64,
    /// Runs that failed in it.
    pub failed: u64,
}

/// The median and the 95th percentile of durations (nearest rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Percentiles {
    /// The median.
    pub p50: Duration,
    /// The 95th percentile.
    pub p95: Duration,
    /// How many durations they describe.
    pub count: u64,
}

impl Percentiles {
    /// The percentiles of `millis` (`None` when empty). Sorts it.
    pub fn of_millis(millis: &mut [u64]) -> Option<Self> {
        if millis.is_empty() {
            return None;
        }
        millis.sort_unstable();
        let rank = |p: u64| {
            let n = millis.len() as u64;
            // nearest rank: the smallest value with at least p% of the values at or below it
            let index = (p * n).div_ceil(100).max(1) - 1;
            Duration::from_millis(millis[index as usize])
        };
        Some(Percentiles {
            p50: rank(50),
            p95: rank(95),
            count: millis.len() as u64,
        })
    }
}

/// One job in the window.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobOverview {
    /// The job.
    pub job_name: String,
    /// Its runs that completed in the window.
    pub completed: u64,
    /// Its runs that failed in the window.
    pub failed: u64,
    /// Time from trigger to first start (from the end of the delay for a delayed run) of its
    /// sampled runs that ended in the window.
    pub queue_latency: Option<Percentiles>,
    /// Time from first start to end of its sampled runs that ended in the window.
    pub duration: Option<Percentiles>,
}

/// Runs per status and the oldest pending run ([`crate::Store::run_counts`]): the part of an
/// overview cheap enough to read for every metrics scrape.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunCounts {
    /// The time the counts were taken at.
    pub now: Timestamp,
    /// Runs per status, over all time.
    pub counts: StatusCounts,
    /// The pending run that has waited longest, if any run is pending.
    pub oldest_pending: Option<OldestPending>,
}

impl From<&Overview> for RunCounts {
    fn from(overview: &Overview) -> Self {
        RunCounts {
            now: overview.now,
            counts: overview.counts,
            oldest_pending: overview.oldest_pending.clone(),
        }
    }
}

/// How the queues are doing ([`crate::Store::run_overview`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Overview {
    /// The time the overview was taken at.
    pub now: Timestamp,
    /// The window described by `buckets` and `jobs`.
    pub window: OverviewWindow,
    /// Runs per status, over all time.
    pub counts: StatusCounts,
    /// The pending run that has waited longest, if any run is pending.
    pub oldest_pending: Option<OldestPending>,
    /// The window's buckets, oldest first ([`OverviewWindow::buckets`] of them): runs that
    /// completed or failed (by their completion time).
    pub buckets: Vec<OverviewBucket>,
    /// Every job with a run that completed or failed in the window, by name.
    pub jobs: Vec<JobOverview>,
    /// How many ended runs the percentiles were computed from (at most [`OVERVIEW_SAMPLE`]).
    pub sampled: u64,
}

/// What a backend reads for an overview, in the domain's words (assembled by
/// [`OverviewRows::assemble`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct OverviewRows {
    /// `(status, count)` for every status with runs (unknown statuses are ignored).
    pub(crate) statuses: Vec<(String, i64)>,
    /// The oldest pending run: id, job, creation.
    pub(crate) oldest_pending: Option<(String, String, Timestamp)>,
    /// Runs that completed or failed since the window's start, grouped by job, bucket key
    /// ([`OverviewWindow::key_of`] of their completion) and status.
    pub(crate) ended: Vec<EndedGroup>,
    /// Up to [`OVERVIEW_SAMPLE`] of those runs, newest first.
    pub(crate) sample: Vec<EndedRun>,
}

/// A group of ended runs (see [`OverviewRows::ended`]).
#[derive(Clone, Debug)]
pub(crate) struct EndedGroup {
    pub(crate) job_name: String,
    pub(crate) bucket: String,
    pub(crate) status: String,
    pub(crate) count: i64,
}

/// The times of one ended run (see [`OverviewRows::sample`]).
#[derive(Clone, Debug)]
pub(crate) struct EndedRun {
    pub(crate) job_name: String,
    pub(crate) created_at: Timestamp,
    pub(crate) started_at: Option<Timestamp>,
    pub(crate) completed_at: Timestamp,
    /// When the run's `delay` wait (a delayed run) resolved, else its deadline.
    pub(crate) delay_end: Option<Timestamp>,
}

impl EndedRun {
    /// Queue latency in milliseconds: from creation (or the end of the delay, when it ended
    /// between creation and the start) to the first start.
    fn queued_millis(&self) -> Option<u64> {
        let started = self.started_at?;
        let from = match self.delay_end {
            Some(end) if end > self.created_at && end <= started => end,
            _ => self.created_at,
        };
        Some(started.millis_since(from))
    }
}

impl OverviewRows {
    /// The overview these rows describe at `now`.
    /// The counts these rows describe at `now` (only `statuses` and `oldest_pending` are read).
    pub(crate) fn counts(&self, now: Timestamp) -> RunCounts {
        let mut counts = StatusCounts::default();
        for (status, count) in &self.statuses {
            if let Ok(status) = status.parse::<RunStatus>() {
                *counts.slot(status) += u64::try_from(*count).unwrap_or(0);
            }
        }
        let oldest_pending = self
            .oldest_pending
            .clone()
            .map(|(run_id, job_name, created_at)| OldestPending {
                run_id,
                job_name,
                created_at,
                age: Duration::from_millis(now.millis_since(created_at)),
            });
        RunCounts {
            now,
            counts,
            oldest_pending,
        }
    }

    /// The overview these rows describe at `now`.
    pub(crate) fn assemble(self, now: Timestamp, window: OverviewWindow) -> Overview {
        let RunCounts {
            counts,
            oldest_pending,
            ..
        } = self.counts(now);
        let start = window.start(now);
        let mut buckets: Vec<OverviewBucket> = (0..window.buckets())
            .map(|i| OverviewBucket {
                start: start + window.bucket() * i as u32,
                completed: 0,
                failed: 0,
            })
            .collect();
        let index: BTreeMap<String, usize> = buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (window.key_of(b.start), i))
            .collect();
        let mut jobs: BTreeMap<String, JobOverview> = BTreeMap::new();
        for group in self.ended {
            let count = u64::try_from(group.count).unwrap_or(0);
            let job = jobs
                .entry(group.job_name.clone())
                .or_insert_with(|| JobOverview {
                    job_name: group.job_name.clone(),
                    completed: 0,
                    failed: 0,
                    queue_latency: None,
                    duration: None,
                });
            let bucket = index.get(&group.bucket).map(|&i| &mut buckets[i]);
            match group.status.as_str() {
                "completed" => {
                    job.completed += count;
                    if let Some(bucket) = bucket {
                        bucket.completed += count;
                    }
                }
                "failed" => {
                    job.failed += count;
                    if let Some(bucket) = bucket {
                        bucket.failed += count;
                    }
                }
                _ => {}
            }
        }
        let sampled = self.sample.len() as u64;
        let mut times: BTreeMap<&str, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
        for run in &self.sample {
            let (queued, ran) = times.entry(run.job_name.as_str()).or_default();
            if let Some(millis) = run.queued_millis() {
                queued.push(millis);
            }
            if let Some(started) = run.started_at {
                ran.push(run.completed_at.millis_since(started));
            }
        }
        for (name, (mut queued, mut ran)) in times {
            if let Some(job) = jobs.get_mut(name) {
                job.queue_latency = Percentiles::of_millis(&mut queued);
                job.duration = Percentiles::of_millis(&mut ran);
            }
        }
        Overview {
            now,
            window,
            counts,
            oldest_pending,
            buckets,
            jobs: jobs.into_values().collect(),
            sampled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_at_a_bucket_boundary() {
        let now = Timestamp::parse("2026-01-02T03:04:05.678Z").expect("time");
        assert_eq!(
            OverviewWindow::LastHour.start(now).to_string(),
            "2026-01-02T02:05:00.000Z"
        );
        assert_eq!(
            OverviewWindow::LastDay.start(now).to_string(),
            "2026-01-01T04:00:00.000Z"
        );
        assert_eq!(OverviewWindow::LastHour.key_of(now), "2026-01-02T03:04");
        assert_eq!(OverviewWindow::LastDay.key_of(now), "2026-01-02T03");
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut values: Vec<u64> = (1..=100).collect();
        let p = Percentiles::of_millis(&mut values).expect("values");
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p95, Duration::from_millis(95));
        let p = Percentiles::of_millis(&mut [7]).expect("one value");
        assert_eq!(
            (p.p50, p.p95, p.count),
            (Duration::from_millis(7), Duration::from_millis(7), 1)
        );
        assert_eq!(Percentiles::of_millis(&mut []), None);
    }
}
