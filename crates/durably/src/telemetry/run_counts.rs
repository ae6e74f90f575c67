//! The run counts behind the gauges `durably.run.count` and `durably.run.oldest_pending_age`
//! (feature `otel`): read from the database ([`Store::run_counts`]: two reads through the
//! status indexes) only once something reads a gauge, then at most every [`COUNTS_EVERY`].
//!
//! Two readers fill the cache. A worker's maintenance task reads it every [`COUNTS_EVERY`],
//! busy or idle, when a gauge was read since its last pass (an OTLP exporter's periodic
//! reader). A gauge read that finds the counts older than [`COUNTS_EVERY`] (or none) starts a
//! read in the background, so the gauges also work where no worker runs (`durably serve
//! --metrics`): that scrape shows the counts it had, the next one the new counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::maintenance::{Maintained, MaintenanceTask};
use crate::overview::RunCounts;
use crate::runtime::{self, Instant, Spawner};
use crate::store::Store;
use crate::time::Timestamp;

/// How often the run counts are read from the database, at most (and only while something
/// reads the gauges).
pub(super) const COUNTS_EVERY: Duration = Duration::from_secs(30);

/// The last run counts read, whether a gauge was read since, and the store to read them from.
#[derive(Default)]
pub(super) struct CountsCache {
    /// The last counts and when their read started.
    last: Mutex<Option<(Instant, RunCounts)>>,
    /// A gauge was read since the maintenance task's last pass.
    observed: AtomicBool,
    /// A read started by a gauge is under way.
    reading: AtomicBool,
    /// Set once the engine exists ([`CountsCache::task`]).
    source: OnceLock<Source>,
}

struct Source {
    store: Arc<dyn Store>,
    spawner: Spawner,
}

impl CountsCache {
    /// The last counts read, for a gauge's callback; starts a read in the background when they
    /// are older than [`COUNTS_EVERY`] or missing.
    pub(super) fn last(self: &Arc<Self>) -> Option<RunCounts> {
        self.observed.store(true, Ordering::Relaxed);
        let last = self.last.lock().ok().and_then(|last| last.clone());
        let stale = last.as_ref().is_none_or(|(read_at, _)| {
            runtime::now().saturating_duration_since(*read_at) >= COUNTS_EVERY
        });
        if stale {
            self.read_in_background();
        }
        last.map(|(_, counts)| counts)
    }

    /// The maintenance task that reads the counts for a worker, over `store`; from now on a
    /// gauge's read can also read them itself.
    pub(super) fn task(self: &Arc<Self>, store: &Arc<dyn Store>) -> Arc<dyn MaintenanceTask> {
        let _ = self.source.set(Source {
            store: store.clone(),
            spawner: Spawner::capture(),
        });
        Arc::new(RunCountsRefresh {
            store: store.clone(),
            cache: self.clone(),
        })
    }

    fn read_in_background(self: &Arc<Self>) {
        let Some(source) = self.source.get() else {
            return;
        };
        if self.reading.swap(true, Ordering::AcqRel) {
            return;
        }
        let cache = self.clone();
        let store = source.store.clone();
        let spawned = source.spawner.spawn(async move {
            if let Err(error) = cache.read(store.as_ref()).await {
                tracing::debug!(%error, "the run counts of the gauges could not be read");
            }
            cache.reading.store(false, Ordering::Release);
        });
        if !spawned {
            self.reading.store(false, Ordering::Release);
        }
    }

    /// Reads the counts now and keeps them, unless a read started later already landed.
    async fn read(&self, store: &dyn Store) -> Result<()> {
        let started = runtime::now();
        let counts = store.run_counts(Timestamp::now()).await?;
        if let Ok(mut last) = self.last.lock()
            && last.as_ref().is_none_or(|(read_at, _)| *read_at <= started)
        {
            *last = Some((started, counts));
        }
        Ok(())
    }
}

/// Reads the counts every [`COUNTS_EVERY`], busy or idle, but only once a gauge was read since
/// the last time: with no meter reader (OpenTelemetry's no-op provider) it never queries.
struct RunCountsRefresh {
    store: Arc<dyn Store>,
    cache: Arc<CountsCache>,
}

#[async_trait]
impl MaintenanceTask for RunCountsRefresh {
    fn name(&self) -> &'static str {
        "run-counts"
    }

    fn every(&self) -> Duration {
        COUNTS_EVERY
    }

    fn runs_on_request(&self) -> bool {
        true
    }

    fn runs_while_busy(&self) -> bool {
        true
    }

    fn error_context(&self) -> &'static str {
        "run-counts"
    }

    async fn run(&self) -> Result<Maintained> {
        if self.cache.observed.swap(false, Ordering::Relaxed) {
            self.cache.read(self.store.as_ref()).await?;
        }
        Ok(Maintained::Done)
    }
}
