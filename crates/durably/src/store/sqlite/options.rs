//! [`SqliteOptions`] and [`Synchronous`], and how a connection is configured with them.

use super::*;

/// SQLite's `synchronous` setting: how hard each commit waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// No fsync at all (fast, unsafe on power loss).
    Off,
    /// WAL default: durable against process crashes; the last commits may be lost on power loss.
    #[default]
    Normal,
    /// fsync on every commit, except commits that hold only claims and lease renewals: their
    /// loss in a power cut harms nothing, and the next synced commit flushes them.
    Full,
    /// Like `Full`, plus the directory.
    Extra,
}

impl Synchronous {
    pub(super) fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

impl std::str::FromStr for Synchronous {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "off" => Ok(Synchronous::Off),
            "normal" => Ok(Synchronous::Normal),
            "full" => Ok(Synchronous::Full),
            "extra" => Ok(Synchronous::Extra),
            other => Err(Error::Config(format!(
                "Invalid synchronous value: '{other}'. Valid values: off, normal, full, extra"
            ))),
        }
    }
}

/// Options for [`SqliteStore::open_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// `PRAGMA synchronous` (default [`Synchronous::Normal`]).
    pub synchronous: Synchronous,
    /// How long a connection waits for another process's lock (default 10 s).
    pub busy_timeout: Duration,
    /// The most writes committed in one transaction (default 512).
    pub max_group_commit: usize,
    /// Reader connections kept open (default 4).
    pub max_readers: usize,
    /// WAL pages after which a commit also checkpoints (`PRAGMA wal_autocheckpoint`; `0` turns
    /// automatic checkpoints off). `None` (the default) picks by [`Self::synchronous`]; see
    /// [`Self::effective_wal_autocheckpoint`]:
    /// - `normal` and `off`: 10,000 pages, 20 MB with the default [`Self::page_size`] (SQLite's
    ///   own default is 1,000 pages). Busy queues rewrite the same index pages over and over;
    ///   checkpointing less often copies each of them back to the database once instead of ten
    ///   times. The price: the checkpoint runs
    ///   inside the commit that crosses the threshold, so on a busy queue that commit (and the
    ///   writes queued behind it) takes tens of milliseconds, where at 1,000 pages it takes a
    ///   few, ten times as often.
    /// - `full` and `extra`: 1,000 pages, 2 MB. Every commit flushes the WAL, and a flush
    ///   of a WAL that is still growing must also flush the file's new size, which costs about
    ///   twice the flush of pages the WAL already holds (on this project's test machines: 200
    ///   against 120 µs). A checkpoint lets the WAL start again from its beginning, so a small
    ///   WAL turns to overwriting after 2 MB instead of 20.
    ///
    /// An idle worker truncates the WAL anyway (at most once a minute).
    pub wal_autocheckpoint: Option<u32>,
    /// How long the writer thread keeps looking for the next write after it finished one,
    /// yielding the CPU between looks, before it goes to sleep (default 100 µs; zero sleeps at
    /// once). A job's writes come one after another (claim, each step, completion); when the next
    /// one arrives within this window it starts without a thread wake-up, which on a small
    /// machine saves tens of microseconds per write. An idle store spins for nothing: the window
    /// only opens after a write.
    pub writer_spin: Duration,
    /// How long a caller waiting for its write to commit keeps checking for the result, letting
    /// the runtime's other tasks run in between (`tokio::task::yield_now`), before its task
    /// sleeps (default 50 µs; zero sleeps at once). A result that arrives within the window is
    /// picked up without waking a parked runtime thread. Only a caller whose write is alone in
    /// the queue spins: behind other writes its result is at least one commit away.
    pub reply_spin: Duration,
    /// How long the writer thread may hold a group open for the next writes of the runs its
    /// last group served (`None`, the default, picks by [`Self::synchronous`]; see
    /// [`Self::effective_commit_delay`]). A run's steps come one after another: when eight
    /// runs each wait for their step to commit, the writer commits the steps queued so far
    /// while the other runs, just answered, prepare their next ones, and groups settle at half
    /// the runs each. Holding the group until those runs' next writes are in (or the delay
    /// passes) makes one commit serve them all. The writes that arrive meanwhile run at once,
    /// inside the open transaction, so only the commit waits. Only writes in the middle of a
    /// run count (a step, progress, a log line, a completion that hands its slot to the next
    /// run), and only those of the last group: a lone run never waits, and a run that goes
    /// quiet costs at most one delay, once. Zero commits at once.
    pub commit_delay: Option<Duration>,
    /// The page size of a database file the store creates (`PRAGMA page_size`; default 2,048
    /// bytes, a power of two from 512 to 65,536). A database that already exists keeps the
    /// page size it was created with.
    ///
    /// Every commit writes each page it changed to the WAL in full, and a queue's writes change
    /// a few small rows spread over many pages (a run row and one entry in each of upstream's
    /// indexes on `durably_runs`). Pages half SQLite's default 4,096 bytes halve what each
    /// commit copies and checksums; measured with `durably bench` at concurrency 8 under
    /// `synchronous = normal`, about 15 % more one-step jobs per second. Large values (big step
    /// outputs) span more overflow pages, which costs little.
    pub page_size: u32,
    /// Keep a run's step rows (and their outputs) after it ends (upstream's `preserveSteps`,
    /// default `false`: a run that completes or is cancelled drops them in the same
    /// transaction; a failed run keeps them whatever this says, for `Durably::resume`, until it
    /// is resumed, deleted or purged). `Durably::builder().preserve_steps(true)` sets it for the stores the
    /// builder opens.
    pub preserve_steps: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(10),
            max_group_commit: 512,
            max_readers: 4,
            wal_autocheckpoint: None,
            writer_spin: Duration::from_micros(100),
            reply_spin: Duration::from_micros(50),
            commit_delay: None,
            page_size: 2_048,
            preserve_steps: false,
        }
    }
}

/// Setters, one per option (the struct is `#[non_exhaustive]`: build it from
/// `SqliteOptions::default()`).
impl SqliteOptions {
    /// Sets [`synchronous`](Self::synchronous).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets [`busy_timeout`](Self::busy_timeout).
    pub fn busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// Sets [`max_group_commit`](Self::max_group_commit).
    pub fn max_group_commit(mut self, max_group_commit: usize) -> Self {
        self.max_group_commit = max_group_commit;
        self
    }

    /// Sets [`max_readers`](Self::max_readers).
    pub fn max_readers(mut self, max_readers: usize) -> Self {
        self.max_readers = max_readers;
        self
    }

    /// Sets [`wal_autocheckpoint`](Self::wal_autocheckpoint).
    pub fn wal_autocheckpoint(mut self, wal_autocheckpoint: Option<u32>) -> Self {
        self.wal_autocheckpoint = wal_autocheckpoint;
        self
    }

    /// Sets [`writer_spin`](Self::writer_spin).
    pub fn writer_spin(mut self, writer_spin: Duration) -> Self {
        self.writer_spin = writer_spin;
        self
    }

    /// Sets [`reply_spin`](Self::reply_spin).
    pub fn reply_spin(mut self, reply_spin: Duration) -> Self {
        self.reply_spin = reply_spin;
        self
    }

    /// Sets [`commit_delay`](Self::commit_delay).
    pub fn commit_delay(mut self, commit_delay: Option<Duration>) -> Self {
        self.commit_delay = commit_delay;
        self
    }

    /// Sets [`page_size`](Self::page_size).
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// Sets [`preserve_steps`](Self::preserve_steps).
    pub fn preserve_steps(mut self, preserve_steps: bool) -> Self {
        self.preserve_steps = preserve_steps;
        self
    }
}

impl SqliteOptions {
    /// The delay the writer thread uses: [`Self::commit_delay`], or when that is `None`,
    /// 100 µs under `synchronous = full | extra`, where each commit waits for the disk, and
    /// 50 µs otherwise. Measured with `durably bench` at concurrency 8: groups of 8 writes
    /// instead of 4, and 15-30 % more one-step jobs per second in both modes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use durably::{SqliteOptions, Synchronous};
    ///
    /// let full = SqliteOptions::default().synchronous(Synchronous::Full);
    /// assert_eq!(full.effective_commit_delay(), Duration::from_micros(100));
    /// assert_eq!(SqliteOptions::default().effective_commit_delay(), Duration::from_micros(50));
    /// ```
    pub fn effective_commit_delay(&self) -> Duration {
        self.commit_delay.unwrap_or(match self.synchronous {
            Synchronous::Full | Synchronous::Extra => Duration::from_micros(100),
            Synchronous::Normal | Synchronous::Off => Duration::from_micros(50),
        })
    }

    /// The `PRAGMA wal_autocheckpoint` the store sets: [`Self::wal_autocheckpoint`], or when that
    /// is `None`, 1,000 pages under `synchronous = full | extra` and 10,000 otherwise.
    ///
    /// ```
    /// use durably::{SqliteOptions, Synchronous};
    ///
    /// let full = SqliteOptions::default().synchronous(Synchronous::Full);
    /// assert_eq!(full.effective_wal_autocheckpoint(), 1_000);
    /// assert_eq!(SqliteOptions::default().effective_wal_autocheckpoint(), 10_000);
    /// ```
    pub fn effective_wal_autocheckpoint(&self) -> u32 {
        self.wal_autocheckpoint.unwrap_or(match self.synchronous {
            Synchronous::Full | Synchronous::Extra => 1_000,
            Synchronous::Normal | Synchronous::Off => 10_000,
        })
    }
}

pub(super) fn configure(
    conn: &Connection,
    options: &SqliteOptions,
    file_backed: bool,
) -> rusqlite::Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    // Takes effect only on a database without tables yet, so before anything creates one.
    conn.execute_batch(&format!("PRAGMA page_size={}", options.page_size))?;
    if file_backed {
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={}; PRAGMA temp_store=MEMORY; PRAGMA wal_autocheckpoint={};",
        options.synchronous.pragma_value(),
        options.effective_wal_autocheckpoint()
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}
