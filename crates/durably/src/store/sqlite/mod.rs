//! Embedded SQLite backend (`rusqlite`, bundled SQLite).
//!
//! One writer thread owns the only writing connection and serves every write in order. When
//! several callers' writes queue up, it runs them in **one** `BEGIN IMMEDIATE` transaction and
//! acknowledges each caller only after the `COMMIT` (group commit). One failing operation never
//! takes the others down: a failed statement is undone by SQLite itself, so an operation that
//! fails having changed nothing is simply reported; the rare operations that could fail after a
//! write of their own (migrations, batch enqueues, purges) run in their own savepoint; and should
//! any other operation fail part-way (an I/O error), the transaction is rolled back, the
//! operations before it are told so, and the ones after it run in a new transaction. Reads use a small pool of separate
//! connections, so readers never wait behind the writer (WAL mode). An in-memory database
//! (`:memory:`) has a single connection, so its reads run on the writer thread too.

mod ops;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{ClaimRequest, Enqueued, Fence, NewLog, NewRun, NewStep, RunPatch, Store, WriterStats};
use crate::error::{Error, Result};
use crate::run::{Disposition, Log, Progress, Run, RunFilter, Step};
use crate::time::Timestamp;

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
    fn pragma_value(self) -> &'static str {
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
        }
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
    /// let full = SqliteOptions { synchronous: Synchronous::Full, ..SqliteOptions::default() };
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
    /// let full = SqliteOptions { synchronous: Synchronous::Full, ..SqliteOptions::default() };
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

/// What the writer thread runs for one queued write: given the connection (or `None` when the
/// transaction could not start) and whether to run in its own savepoint, it does its work and
/// returns what to report after `COMMIT`.
type WriteOp = Box<dyn FnOnce(Option<&Connection>, bool) -> (Completion, Failed) + Send>;
/// Whether the operation itself failed (its completion then carries the error).
type Failed = bool;
/// Reports an operation's result; receives the commit error, if the commit failed.
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;

enum Command {
    /// A write, batched with others into one transaction.
    Write(QueuedWrite),
    /// Work that must run outside any transaction (checkpoint, reads of an in-memory database).
    Direct(Box<dyn FnOnce(&Connection) + Send>),
}

/// A write waiting for the writer thread.
struct QueuedWrite {
    op: WriteOp,
    kind: WriteKind,
    /// [`WriterCounters::replied`] when the write was queued: a write queued after a group's
    /// results went out may be the next write of one of that group's runs.
    after: u64,
}

/// How the writer thread treats a write.
#[derive(Clone, Copy)]
struct WriteKind {
    /// The operation may fail after writing something itself, so it runs in a savepoint when
    /// other writes share its transaction.
    isolated: bool,
    /// Its commit must reach the disk before it is reported (under `synchronous = FULL`).
    synced: bool,
    /// A lease holder's write in the middle of a run (a step, progress, a log line): the same
    /// run usually writes again a moment after this one is reported.
    continues: bool,
}

impl WriteKind {
    const PLAIN: WriteKind = WriteKind {
        isolated: false,
        synced: true,
        continues: false,
    };
    const ISOLATED: WriteKind = WriteKind {
        isolated: true,
        synced: true,
        continues: false,
    };
    const UNSYNCED: WriteKind = WriteKind {
        isolated: false,
        synced: false,
        continues: false,
    };
    const CONTINUING: WriteKind = WriteKind {
        isolated: false,
        synced: true,
        continues: true,
    };
}

/// The embedded SQLite store. Cheap to clone; all clones share one writer thread.
///
/// ```
/// # async fn example() -> durably::Result<()> {
/// use durably::{SqliteStore, Store};
/// let store = SqliteStore::memory()?;
/// store.migrate().await?;
/// assert_eq!(store.schema_version().await?, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct WriterCounters {
    transactions: std::sync::atomic::AtomicU64,
    operations: std::sync::atomic::AtomicU64,
    /// Groups whose results the writer thread has sent.
    replied: std::sync::atomic::AtomicU64,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    reply_spin: Duration,
    /// Callers waiting for the writer thread.
    waiting: AtomicUsize,
    counters: Arc<WriterCounters>,
    readers: Option<ReaderPool>,
    location: String,
}

/// Counts one caller waiting for the writer thread, for as long as it lives.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// No other caller was waiting when this one arrived.
    alone: bool,
}

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.shared.location)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with default options.
    /// `":memory:"` opens a private in-memory database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// A private in-memory database (gone when the last clone is dropped).
    pub fn memory() -> Result<Self> {
        Self::open(":memory:")
    }

    /// Opens the database at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref();
        let page_size = options.page_size;
        if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(Error::Config(format!(
                "Invalid SQLite page size: {page_size}. Use a power of two from 512 to 65536"
            )));
        }
        let in_memory = path.as_os_str() == ":memory:";
        let location = path.display().to_string();
        let writer = if in_memory {
            Connection::open_in_memory()
        } else {
            Connection::open(path)
        }
        .map_err(|e| {
            Error::storage(
                "open",
                format!("cannot open SQLite database {location}: {e}"),
            )
        })?;
        configure(&writer, &options, !in_memory)
            .map_err(|e| Error::storage("open", format!("cannot configure {location}: {e}")))?;

        let (commands, receiver) = mpsc::channel();
        let config = WriterConfig {
            max_batch: options.max_group_commit.max(1),
            spin: options.writer_spin,
            commit_delay: options.effective_commit_delay(),
        };
        let sync = CommitSync::new(options.synchronous);
        let counters = Arc::new(WriterCounters::default());
        let writer_counters = counters.clone();
        thread::Builder::new()
            .name("durably-sqlite-writer".into())
            .spawn(move || writer_loop(writer, receiver, config, sync, &writer_counters))
            .map_err(|e| Error::storage("open", e))?;

        let readers = (!in_memory).then(|| ReaderPool {
            path: path.to_path_buf(),
            options: options.clone(),
            idle: Arc::new(Mutex::new(Vec::new())),
        });
        Ok(SqliteStore {
            shared: Arc::new(Shared {
                commands,
                reply_spin: options.reply_spin,
                waiting: AtomicUsize::new(0),
                counters,
                readers,
                location,
            }),
        })
    }

    /// Group-commit counters of this store's writer thread.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            transactions: self
                .shared
                .counters
                .transactions
                .load(std::sync::atomic::Ordering::Relaxed),
            operations: self
                .shared
                .counters
                .operations
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The path this store was opened with.
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    /// Runs `work` on the writer thread inside the current group-commit transaction. The result
    /// is delivered after the transaction commits.
    ///
    /// `work` must be atomic on failure except for storage faults: when it returns an error,
    /// either nothing it ran changed a row (a failing statement is undone by SQLite itself) or
    /// the error is an I/O-class fault. Operations that can fail after writing use
    /// [`SqliteStore::write_isolated`].
    async fn write<R, F>(&self, operation: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.queue_write(operation, WriteKind::PLAIN, work).await
    }

    /// Like [`SqliteStore::write`], in its own savepoint when other writes share the
    /// transaction, so a failure after some of its statements succeeded undoes only itself.
    async fn write_isolated<R, F>(&self, operation: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.queue_write(operation, WriteKind::ISOLATED, work).await
    }

    /// Like [`SqliteStore::write`], for a write whose loss in an operating-system crash harms
    /// nothing: a claim or a lease renewal (the worker that made it dies in that crash too, and
    /// the run is claimable again). Under `synchronous = FULL` a group of only such writes
    /// commits without an fsync; the next synced commit makes it durable with its own.
    async fn write_unsynced<R, F>(&self, operation: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.queue_write(operation, WriteKind::UNSYNCED, work).await
    }

    /// Like [`SqliteStore::write`], for a lease holder's write in the middle of a run (a step,
    /// progress, a log line), which the same run usually follows with another write at once:
    /// the writer thread may hold its next group back for those (see
    /// [`SqliteOptions::commit_delay`]).
    async fn write_continuing<R, F>(&self, operation: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.queue_write(operation, WriteKind::CONTINUING, work)
            .await
    }

    async fn queue_write<R, F>(
        &self,
        operation: &'static str,
        kind: WriteKind,
        work: F,
    ) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel::<Result<R>>();
        let op: WriteOp = Box::new(move |conn, savepoint| {
            let outcome = match conn {
                Some(conn) if savepoint => in_savepoint(conn, work),
                Some(conn) => work(conn),
                None => Err(Error::storage(
                    operation,
                    "could not begin a write transaction",
                )),
            };
            let failed = outcome.is_err();
            let done: Completion = Box::new(move |commit_error| {
                let outcome = match (outcome, commit_error) {
                    (Ok(_), Some(message)) => Err(Error::storage(
                        operation,
                        format!("commit failed: {message}"),
                    )),
                    (outcome, _) => outcome,
                };
                let _ = reply.send(outcome);
            });
            (done, failed)
        });
        let after = self
            .shared
            .counters
            .replied
            .load(std::sync::atomic::Ordering::Acquire);
        self.send(
            operation,
            Command::Write(QueuedWrite { op, kind, after }),
            receiver,
        )
        .await
    }

    /// Runs `work` on the writer thread outside any transaction.
    async fn direct<R, F>(&self, operation: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel::<Result<R>>();
        let command = Command::Direct(Box::new(move |conn| {
            let _ = reply.send(work(conn));
        }));
        self.send(operation, command, receiver).await
    }

    async fn send<R>(
        &self,
        operation: &'static str,
        command: Command,
        receiver: oneshot::Receiver<Result<R>>,
    ) -> Result<R> {
        // Spin only for a write that is alone in the queue: behind others, its result is at
        // least one commit away, and spinning would take CPU from the writer thread.
        let waiting = Waiting::enter(&self.shared.waiting);
        self.shared
            .commands
            .send(command)
            .map_err(|_| Error::storage(operation, "the SQLite writer thread has stopped"))?;
        let dropped = || Error::storage(operation, "the SQLite writer thread dropped the request");
        let mut receiver = receiver;
        if waiting.alone && !self.shared.reply_spin.is_zero() {
            let until = Instant::now() + self.shared.reply_spin;
            loop {
                match receiver.try_recv() {
                    Ok(outcome) => return outcome,
                    Err(oneshot::error::TryRecvError::Closed) => return Err(dropped()),
                    Err(oneshot::error::TryRecvError::Empty) if Instant::now() < until => {
                        tokio::task::yield_now().await
                    }
                    Err(oneshot::error::TryRecvError::Empty) => break,
                }
            }
        }
        receiver.await.map_err(|_| dropped())?
    }

    /// Runs `work` on a reader connection (on the writer thread for in-memory databases).
    /// Dropping the returned future interrupts `work`'s statements (`sqlite3_interrupt`), or
    /// skips `work` if it has not started.
    async fn read<R, F>(&self, operation: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let abandon = Abandon::default();
        let state = abandon.0.clone();
        let work = move |conn: &Connection| {
            {
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(*state, ReadState::Abandoned) {
                    return Err(Error::storage(operation, "the read was abandoned"));
                }
                *state = ReadState::Running(conn.get_interrupt_handle());
            }
            let result = work(conn);
            *state.lock().unwrap_or_else(|p| p.into_inner()) = ReadState::Done;
            result
        };
        let result = match &self.shared.readers {
            None => self.direct(operation, work).await,
            Some(pool) => {
                let pool = pool.clone();
                tokio::task::spawn_blocking(move || pool.with_connection(operation, work))
                    .await
                    .map_err(|e| Error::storage(operation, e))?
            }
        };
        abandon.finished();
        result
    }
}

/// Where a read stands, for [`Abandon`].
#[derive(Default)]
enum ReadState {
    /// Not started.
    #[default]
    Waiting,
    /// Its statements run on the connection this handle interrupts.
    Running(rusqlite::InterruptHandle),
    /// Returned (an interrupt now would hit whatever the connection runs next).
    Done,
    /// Its caller went away.
    Abandoned,
}

/// Interrupts a read whose future is dropped before it finished (an HTTP client that went
/// away, a timeout), so that it does not run on to its end on a reader (or, in memory, on the
/// writer thread). The state is locked around both the interrupt and the read's end, so an
/// interrupt never reaches a later statement of another read on the same connection.
#[derive(Default)]
struct Abandon(Arc<Mutex<ReadState>>);

impl Abandon {
    fn finished(self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = ReadState::Done;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*state {
            ReadState::Running(handle) => {
                handle.interrupt();
                *state = ReadState::Abandoned;
            }
            ReadState::Waiting => *state = ReadState::Abandoned,
            ReadState::Done | ReadState::Abandoned => {}
        }
    }
}

fn configure(
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

fn in_savepoint<R>(conn: &Connection, work: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
    let sql = |e| Error::storage("savepoint", e);
    conn.prepare_cached("SAVEPOINT durably_op")
        .and_then(|mut s| s.execute([]))
        .map_err(sql)?;
    match work(conn) {
        Ok(value) => {
            conn.prepare_cached("RELEASE durably_op")
                .and_then(|mut s| s.execute([]))
                .map_err(sql)?;
            Ok(value)
        }
        Err(error) => {
            let _ = conn.execute_batch("ROLLBACK TO durably_op; RELEASE durably_op;");
            Err(error)
        }
    }
}

/// How the writer thread groups writes into transactions.
struct WriterConfig {
    max_batch: usize,
    /// See [`SqliteOptions::writer_spin`].
    spin: Duration,
    /// See [`SqliteOptions::commit_delay`].
    commit_delay: Duration,
}

fn writer_loop(
    conn: Connection,
    commands: mpsc::Receiver<Command>,
    config: WriterConfig,
    mut sync: CommitSync,
    counters: &WriterCounters,
) {
    let mut carried: Option<Command> = None;
    // Continuing writes of the last group, and the value of `counters.replied` once its
    // results went out: each such write's run usually writes again right after.
    let mut expected = 0usize;
    let mut replied = 0u64;
    loop {
        let first = match carried.take() {
            Some(command) => command,
            None => match next_command(&commands, config.spin) {
                Some(command) => command,
                None => return, // every store handle is gone
            },
        };
        let write = match first {
            Command::Direct(work) => {
                work(&conn);
                continue;
            }
            Command::Write(write) => write,
        };
        let mut batch = vec![write];
        while batch.len() < config.max_batch {
            match commands.try_recv() {
                Ok(Command::Write(write)) => batch.push(write),
                Ok(direct) => {
                    carried = Some(direct);
                    break;
                }
                Err(_) => break,
            }
        }
        let gather = (carried.is_none() && !config.commit_delay.is_zero()).then(|| Gather {
            commands: &commands,
            expected: expected.min(config.max_batch),
            replied,
            delay: config.commit_delay,
            max_batch: config.max_batch,
        });
        let group = commit_batch(&conn, batch, gather, &mut sync, counters);
        carried = carried.or(group.carried);
        expected = group.continuing;
        replied = counters.replied.load(std::sync::atomic::Ordering::Acquire);
    }
}

/// How a group may be held open for the next writes of the runs the last group served: until
/// `expected` writes queued after that group's results went out (`replied`) are in it, or
/// `delay` has passed since the group's queued writes were done (yielding the CPU between
/// looks). Writes that arrive meanwhile run at once, inside the open transaction, so the wait
/// overlaps with their work and only the commit is held back.
struct Gather<'a> {
    commands: &'a mpsc::Receiver<Command>,
    expected: usize,
    replied: u64,
    delay: Duration,
    max_batch: usize,
}

impl Gather<'_> {
    /// Whether `write` is the next write of a run the last group served.
    fn returning(&self, write: &QueuedWrite) -> bool {
        write.after >= self.replied
    }

    /// The next command for a group that holds `size` writes of which `arrived` are returning
    /// ones, or `None` when the group should commit.
    fn next(&self, size: usize, arrived: usize, until: &mut Option<Instant>) -> Option<Command> {
        if arrived >= self.expected || size >= self.max_batch {
            return None;
        }
        loop {
            match self.commands.try_recv() {
                Ok(command) => return Some(command),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {
                    let until = *until.get_or_insert_with(|| Instant::now() + self.delay);
                    if Instant::now() >= until {
                        return None;
                    }
                    thread::yield_now();
                }
            }
        }
    }
}

/// Whether the writer's commits fsync. Under `FULL` (or `EXTRA`), a group of only unsynced
/// writes (claims, lease renewals) commits with `synchronous = NORMAL`: its WAL frames are
/// written but not flushed; the next synced commit flushes them with its own.
struct CommitSync {
    configured: Synchronous,
    /// The connection is set to commit without a flush (the open group needs none).
    relaxed: bool,
}

impl CommitSync {
    fn new(configured: Synchronous) -> Self {
        CommitSync {
            configured,
            relaxed: false,
        }
    }

    /// Sets the connection's mode for a group that does (or does not) need an fsync.
    fn prepare(&mut self, conn: &Connection, synced: bool) -> rusqlite::Result<()> {
        let may_relax = matches!(self.configured, Synchronous::Full | Synchronous::Extra);
        let relax = may_relax && !synced;
        if relax != self.relaxed {
            let sql = match (relax, self.configured) {
                (true, _) => "PRAGMA synchronous = NORMAL",
                (false, Synchronous::Extra) => "PRAGMA synchronous = EXTRA",
                (false, _) => "PRAGMA synchronous = FULL",
            };
            conn.prepare_cached(sql)?.raw_execute()?;
            self.relaxed = relax;
        }
        Ok(())
    }
}

/// The next command: looked for (yielding the CPU in between) for up to `spin`, then waited for.
/// `None` once every sender is gone.
fn next_command(commands: &mpsc::Receiver<Command>, spin: Duration) -> Option<Command> {
    if !spin.is_zero() {
        let until = Instant::now() + spin;
        loop {
            match commands.try_recv() {
                Ok(command) => return Some(command),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) if Instant::now() < until => thread::yield_now(),
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
    }
    commands.recv().ok()
}

/// Runs one cached transaction-control statement (`BEGIN IMMEDIATE`, `COMMIT`, `ROLLBACK`).
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Rolls back the open transaction, if SQLite has not already done so.
fn roll_back(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = control(conn, "ROLLBACK");
    }
}

/// What one group left behind for the writer loop.
struct GroupOutcome {
    /// A command that arrived while the group was held open and must run after it.
    carried: Option<Command>,
    /// The group's writes in the middle of a run (see [`WriteKind::continues`]).
    continuing: usize,
}

fn commit_batch(
    conn: &Connection,
    batch: Vec<QueuedWrite>,
    gather: Option<Gather<'_>>,
    sync: &mut CommitSync,
    counters: &WriterCounters,
) -> GroupOutcome {
    use std::sync::atomic::Ordering::{Relaxed, Release};
    let mut outcome = GroupOutcome {
        carried: None,
        continuing: 0,
    };
    counters.transactions.fetch_add(1, Relaxed);
    let synced = batch.iter().any(|write| write.kind.synced);
    let began = sync
        .prepare(conn, synced)
        .and_then(|()| control(conn, "BEGIN IMMEDIATE"));
    if let Err(error) = began {
        tracing::warn!(%error, "SQLite could not begin a write transaction");
        counters.operations.fetch_add(batch.len() as u64, Relaxed);
        for write in batch {
            ((write.op)(None, false).0)(None);
        }
        return outcome;
    }
    // A write may be joined by others while the group is held open.
    let alone = batch.len() == 1 && gather.is_none();
    let mut arrived = gather.as_ref().map_or(0, |gather| {
        batch.iter().filter(|write| gather.returning(write)).count()
    });
    let mut until = None;
    let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
    let mut writes = batch.into_iter();
    loop {
        let write = match writes.next() {
            Some(write) => write,
            None => {
                let size = completions.len();
                match gather
                    .as_ref()
                    .and_then(|g| g.next(size, arrived, &mut until))
                {
                    Some(Command::Write(write)) if write.kind.synced && sync.relaxed => {
                        // This group commits without a flush; a write that needs one waits.
                        outcome.carried = Some(Command::Write(write));
                        break;
                    }
                    Some(Command::Write(write)) => {
                        if gather.as_ref().is_some_and(|g| g.returning(&write)) {
                            arrived += 1;
                        }
                        write
                    }
                    Some(direct) => {
                        outcome.carried = Some(direct);
                        break;
                    }
                    None => break,
                }
            }
        };
        counters.operations.fetch_add(1, Relaxed);
        let continues = write.kind.continues;
        let savepoint = write.kind.isolated && !alone;
        let changes_before = conn.total_changes();
        let (done, failed) = (write.op)(Some(conn), savepoint);
        if !failed {
            outcome.continuing += usize::from(continues);
            completions.push(done);
            continue;
        }
        // A failure that changed nothing (or was undone by its savepoint) leaves the
        // transaction as the other writes made it.
        let transaction_gone = conn.is_autocommit();
        let undone = savepoint || conn.total_changes() == changes_before;
        if undone && !transaction_gone && !alone {
            completions.push(done);
            continue;
        }
        // The operation failed part-way (or SQLite ended the transaction): undo everything,
        // tell the writes before it, and run the ones after it in a new transaction.
        roll_back(conn);
        done(None);
        let message = "rolled back with another write of the same transaction that failed part-way";
        if !completions.is_empty() {
            tracing::warn!("SQLite group commit rolled back: {message}");
        }
        completions.into_iter().for_each(|done| done(Some(message)));
        let rest: Vec<QueuedWrite> = writes.collect();
        outcome.continuing = 0;
        if !rest.is_empty() {
            let after = commit_batch(conn, rest, None, sync, counters);
            outcome.continuing = after.continuing;
        }
        return outcome;
    }
    let committed = control(conn, "COMMIT");
    counters.replied.fetch_add(1, Release);
    match committed {
        Ok(()) => completions.into_iter().for_each(|done| done(None)),
        Err(error) => {
            tracing::warn!(%error, "SQLite group commit failed");
            roll_back(conn);
            let message = error.to_string();
            completions
                .into_iter()
                .for_each(|done| done(Some(&message)));
        }
    }
    outcome
}

/// Reader connections to a file database, opened lazily and kept for reuse.
#[derive(Clone)]
struct ReaderPool {
    path: PathBuf,
    options: SqliteOptions,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl ReaderPool {
    fn with_connection<R>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&Connection) -> Result<R>,
    ) -> Result<R> {
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let conn = match reused {
            Some(conn) => conn,
            None => self.open().map_err(|e| Error::storage(operation, e))?,
        };
        let result = work(&conn);
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < self.options.max_readers {
            idle.push(conn);
        }
        result
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.options.busy_timeout)?;
        conn.execute_batch("PRAGMA query_only=1;")?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<()> {
        self.write_isolated("migrate", schema::migrate).await
    }

    async fn schema_version(&self) -> Result<i64> {
        self.read("schema_version", schema::current_version).await
    }

    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued> {
        self.write("enqueue", move |conn| ops::enqueue(conn, &run, now))
            .await
    }

    async fn enqueue_and_claim(
        &self,
        run: NewRun,
        now: Timestamp,
        next: &ClaimRequest,
    ) -> Result<(Enqueued, Vec<Run>)> {
        let next = next.clone();
        // In its own savepoint when shared: a claim failing after the insert undoes the insert.
        // A claimed run usually writes its first step at once.
        let kind = WriteKind {
            isolated: true,
            synced: true,
            continues: next.max > 0,
        };
        self.queue_write("enqueue", kind, move |conn| {
            let enqueued = ops::enqueue(conn, &run, now)?;
            let claimed = match (next.max, enqueued.disposition) {
                (0, _) | (_, Disposition::Idempotent | Disposition::Coalesced) => Vec::new(),
                (max, Disposition::Created) => {
                    ops::claim(conn, &next.worker_id, now, next.lease, max)?
                }
            };
            Ok((enqueued, claimed))
        })
        .await
    }

    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        self.write_isolated("enqueue_many", move |conn| {
            // All or nothing: a failing item fails the whole write, which its savepoint (or,
            // alone, the transaction's rollback) undoes.
            runs.iter()
                .map(|run| ops::enqueue(conn, run, now))
                .collect()
        })
        .await
    }

    async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        let id = id.to_owned();
        self.read("get_run", move |conn| ops::get_run(conn, &id))
            .await
    }

    async fn get_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let filter = filter.clone();
        self.read("get_runs", move |conn| ops::get_runs(conn, &filter))
            .await
    }

    async fn get_steps(&self, run_id: &str) -> Result<Vec<Step>> {
        let run_id = run_id.to_owned();
        self.read("get_steps", move |conn| ops::get_steps(conn, &run_id))
            .await
    }

    async fn get_completed_step(&self, run_id: &str, name: &str) -> Result<Option<Step>> {
        let (run_id, name) = (run_id.to_owned(), name.to_owned());
        self.read("get_completed_step", move |conn| {
            ops::get_completed_step(conn, &run_id, &name)
        })
        .await
    }

    async fn get_logs(&self, run_id: &str) -> Result<Vec<Log>> {
        let run_id = run_id.to_owned();
        self.read("get_logs", move |conn| ops::get_logs(conn, &run_id))
            .await
    }

    async fn claim(
        &self,
        worker_id: &str,
        now: Timestamp,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Run>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let worker_id = worker_id.to_owned();
        self.write_unsynced("claim", move |conn| {
            ops::claim(conn, &worker_id, now, lease, max)
        })
        .await
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Option<Timestamp>> {
        let fence = fence.clone();
        self.write_unsynced("renew_lease", move |conn| {
            ops::renew_lease(conn, &fence, now, lease)
        })
        .await
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        let fence = fence.clone();
        self.write_unsynced("release_lease", move |conn| {
            ops::release_lease(conn, &fence, now)
        })
        .await
    }

    async fn persist_step(
        &self,
        fence: &Fence,
        step: NewStep,
        now: Timestamp,
    ) -> Result<Option<Step>> {
        let fence = fence.clone();
        self.write_continuing("persist_step", move |conn| {
            ops::persist_step(conn, &fence, step, now)
        })
        .await
    }

    async fn update_progress(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        now: Timestamp,
    ) -> Result<bool> {
        let fence = fence.clone();
        self.write_continuing("update_progress", move |conn| {
            ops::update_progress(conn, &fence, progress.as_ref(), now)
        })
        .await
    }

    async fn append_log(
        &self,
        fence: Option<&Fence>,
        log: NewLog,
        now: Timestamp,
    ) -> Result<Option<Log>> {
        let fence = fence.cloned();
        self.write_continuing("append_log", move |conn| {
            ops::append_log(conn, fence.as_ref(), log, now)
        })
        .await
    }

    async fn complete_run(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
        drop_steps: bool,
    ) -> Result<bool> {
        let fence = fence.clone();
        self.write("complete_run", move |conn| {
            ops::complete_run(conn, &fence, output.as_ref(), now, drop_steps)
        })
        .await
    }

    async fn complete_run_and_claim(
        &self,
        fence: &Fence,
        output: Option<Value>,
        now: Timestamp,
        drop_steps: bool,
        next: &ClaimRequest,
    ) -> Result<(bool, Vec<Run>)> {
        let (fence, next) = (fence.clone(), next.clone());
        // A hand-off usually claims a run whose first step follows at once.
        let kind = match next.max {
            0 => WriteKind::PLAIN,
            _ => WriteKind::CONTINUING,
        };
        self.queue_write("complete_run_and_claim", kind, move |conn| {
            let completed = ops::complete_run(conn, &fence, output.as_ref(), now, drop_steps)?;
            let claimed = match next.max {
                0 => Vec::new(),
                max => ops::claim(conn, &next.worker_id, now, next.lease, max)?,
            };
            Ok((completed, claimed))
        })
        .await
    }

    async fn fail_run(
        &self,
        fence: &Fence,
        error: &str,
        now: Timestamp,
        drop_steps: bool,
    ) -> Result<bool> {
        let (fence, error) = (fence.clone(), error.to_owned());
        self.write("fail_run", move |conn| {
            ops::fail_run(conn, &fence, &error, now, drop_steps)
        })
        .await
    }

    async fn cancel_run(&self, id: &str, now: Timestamp, drop_steps: bool) -> Result<bool> {
        let id = id.to_owned();
        self.write("cancel_run", move |conn| {
            ops::cancel_run(conn, &id, now, drop_steps)
        })
        .await
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write_isolated("delete_run", move |conn| ops::delete_run(conn, &id))
            .await
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        self.write_isolated("purge_runs", move |conn| {
            ops::purge_runs(conn, older_than, limit)
        })
        .await
    }

    async fn release_expired_leases(&self, now: Timestamp, drop_steps: bool) -> Result<Vec<Run>> {
        self.write_isolated("release_expired_leases", move |conn| {
            ops::release_expired_leases(conn, now, drop_steps)
        })
        .await
    }

    async fn update_run(&self, id: &str, patch: RunPatch, now: Timestamp) -> Result<bool> {
        let id = id.to_owned();
        self.write("update_run", move |conn| {
            ops::update_run(conn, &id, &patch, now)
        })
        .await
    }

    async fn checkpoint(&self) -> Result<bool> {
        let Some(readers) = &self.shared.readers else {
            return Ok(true); // in-memory: no WAL
        };
        let busy_timeout = readers.options.busy_timeout;
        self.direct("checkpoint", move |conn| {
            // Never waits for readers, since every write waits for the writer thread meanwhile:
            // with readers in the way it copies what it can (as `PASSIVE` does) and reports busy.
            // One row: (busy, WAL frames, frames checkpointed).
            let checkpoint = conn.busy_timeout(Duration::ZERO).and_then(|()| {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    row.get::<_, i64>(0)
                })
            });
            let restored = conn.busy_timeout(busy_timeout);
            let busy = checkpoint.map_err(|e| Error::storage("checkpoint", e))?;
            restored.map_err(|e| Error::storage("checkpoint", e))?;
            Ok(busy == 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds the writer thread until the returned sender fires, so the writes queued meanwhile
    /// are committed as one group.
    fn hold_writer(store: &SqliteStore) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        store
            .shared
            .commands
            .send(Command::Direct(Box::new(move |_| {
                let _ = started.send(());
                let _ = held.recv();
            })))
            .expect("writer running");
        running.recv().expect("writer held");
        release
    }

    fn insert_version(version: i64) -> impl FnOnce(&Connection) -> Result<()> + Send + 'static {
        move |conn| {
            conn.execute(
                "INSERT INTO durably_schema_versions (version, applied_at) VALUES (?1, 'x')",
                [version],
            )
            .map(drop)
            .map_err(|e| Error::storage("test", e))
        }
    }

    async fn versions(store: &SqliteStore) -> Vec<i64> {
        store
            .read("test", |conn| {
                conn.prepare("SELECT version FROM durably_schema_versions ORDER BY version")
                    .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
                    .map_err(|e| Error::storage("test", e))
            })
            .await
            .expect("read versions")
    }

    async fn group_of_three(
        store: &SqliteStore,
        middle: impl FnOnce(&Connection) -> Result<()> + Send + 'static,
    ) -> ([Result<()>; 3], u64) {
        let release = hold_writer(store);
        let before = store.stats();
        let mut first = Box::pin(store.write("first", insert_version(100)));
        let mut second = Box::pin(store.write("second", middle));
        let mut third = Box::pin(store.write("third", insert_version(300)));
        // The first poll queues each write; none can finish while the writer is held.
        assert!(futures::poll!(&mut first).is_pending());
        assert!(futures::poll!(&mut second).is_pending());
        assert!(futures::poll!(&mut third).is_pending());
        release.send(()).expect("release writer");
        let results = [first.await, second.await, third.await];
        let after = store.stats();
        assert_eq!(
            after.operations - before.operations,
            3,
            "three writes served"
        );
        (results, after.transactions - before.transactions)
    }

    #[tokio::test]
    async fn a_write_that_fails_without_writing_leaves_its_group_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("db.sqlite")).expect("open");
        store.migrate().await.expect("migrate");
        // A primary-key violation: SQLite undoes the statement, nothing else changed.
        let ([first, second, third], transactions) =
            group_of_three(&store, insert_version(1)).await;
        assert_eq!(transactions, 1, "one shared transaction");
        assert!(first.is_ok() && third.is_ok(), "{first:?} {third:?}");
        assert!(second.is_err());
        assert_eq!(versions(&store).await, vec![1, 100, 300]);
    }

    #[tokio::test]
    async fn a_write_that_fails_part_way_rolls_back_its_group_and_the_rest_still_lands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("db.sqlite")).expect("open");
        store.migrate().await.expect("migrate");
        // Writes a row, then fails: the shared transaction cannot keep the row.
        let part_way = |conn: &Connection| -> Result<()> {
            insert_version(200)(conn)?;
            Err(Error::storage("test", "failed after writing"))
        };
        let ([first, second, third], transactions) = group_of_three(&store, part_way).await;
        assert_eq!(
            transactions, 2,
            "the group, then the write after the failure"
        );
        let first = first.expect_err("the write before it was rolled back with it");
        assert!(first.to_string().contains("rolled back"), "{first}");
        assert!(second.is_err());
        assert!(
            third.is_ok(),
            "the write after it ran in a new transaction: {third:?}"
        );
        assert_eq!(versions(&store).await, vec![1, 300]);
    }

    /// A `PRAGMA` value of the writer connection.
    async fn writer_pragma(store: &SqliteStore, name: &'static str) -> i64 {
        store
            .direct("test", move |conn| {
                conn.pragma_query_value(None, name, |row| row.get(0))
                    .map_err(|e| Error::storage("test", e))
            })
            .await
            .expect("read a pragma")
    }

    /// The writer connection's `PRAGMA synchronous` (1 = NORMAL, 2 = FULL).
    async fn writer_sync_mode(store: &SqliteStore) -> i64 {
        writer_pragma(store, "synchronous").await
    }

    /// `writes` continuing writes one after another, as a run's steps come.
    async fn continuing_writes(store: SqliteStore, writes: usize) {
        for _ in 0..writes {
            store
                .write_continuing("test", |_| Ok(()))
                .await
                .expect("write");
        }
    }

    /// A queued write that runs `sql`, and where its reported outcome (the commit error, if
    /// any) arrives.
    fn sql_write(
        kind: WriteKind,
        after: u64,
        sql: &'static str,
    ) -> (QueuedWrite, mpsc::Receiver<Option<String>>) {
        let (reply, outcome) = mpsc::channel();
        let op: WriteOp = Box::new(move |conn, _savepoint| {
            let failed = conn.is_none_or(|conn| conn.execute_batch(sql).is_err());
            let done: Completion = Box::new(move |commit_error| {
                let _ = reply.send(commit_error.map(str::to_owned));
            });
            (done, failed)
        });
        (QueuedWrite { op, kind, after }, outcome)
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count")
    }

    /// An in-memory connection with a table `t`, for [`commit_batch`] run by hand.
    fn table_connection() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (x INTEGER)")
            .expect("table");
        conn
    }

    /// A group held for `expected` writes of the runs served before `replied` = 5.
    fn gather(commands: &mpsc::Receiver<Command>, expected: usize) -> Gather<'_> {
        Gather {
            commands,
            expected,
            replied: 5,
            delay: Duration::from_secs(30),
            max_batch: 512,
        }
    }

    #[test]
    fn a_held_group_runs_the_writes_that_arrive_and_commits_them_together() {
        let conn = table_connection();
        let counters = WriterCounters::default();
        let mut sync = CommitSync::new(Synchronous::Normal);
        let (queue, commands) = mpsc::channel();
        let (first, first_outcome) =
            sql_write(WriteKind::CONTINUING, 5, "INSERT INTO t VALUES (1)");
        let mut outcomes = vec![first_outcome];
        for sql in ["INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (3)"] {
            let (write, outcome) = sql_write(WriteKind::CONTINUING, 5, sql);
            queue.send(Command::Write(write)).expect("queue");
            outcomes.push(outcome);
        }
        let gather = gather(&commands, 3);
        let started = Instant::now();
        let group = commit_batch(&conn, vec![first], Some(gather), &mut sync, &counters);

        // The three writes of the last group's runs are all in: no wait for the delay.
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(group.carried.is_none());
        assert_eq!(group.continuing, 3);
        assert_eq!(
            counters
                .transactions
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            counters
                .operations
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        assert_eq!(rows(&conn), 3);
        for outcome in outcomes {
            assert_eq!(outcome.try_recv().expect("reported"), None);
        }
    }

    #[test]
    fn under_normal_a_group_of_claims_takes_in_the_steps_that_arrive() {
        let conn = table_connection();
        let counters = WriterCounters::default();
        let mut sync = CommitSync::new(Synchronous::Normal);
        let (queue, commands) = mpsc::channel();
        let (claim, _) = sql_write(WriteKind::UNSYNCED, 5, "INSERT INTO t VALUES (1)");
        let (step, step_outcome) = sql_write(WriteKind::CONTINUING, 5, "INSERT INTO t VALUES (2)");
        queue.send(Command::Write(step)).expect("queue");
        let group = commit_batch(
            &conn,
            vec![claim],
            Some(gather(&commands, 2)),
            &mut sync,
            &counters,
        );
        // No commit flushes under NORMAL, so nothing is left for the next group.
        assert!(group.carried.is_none());
        assert_eq!(rows(&conn), 2);
        assert_eq!(step_outcome.try_recv().expect("reported"), None);
    }

    #[test]
    fn under_full_a_group_without_a_flush_leaves_a_write_that_needs_one_to_the_next() {
        let conn = table_connection();
        let counters = WriterCounters::default();
        let mut sync = CommitSync::new(Synchronous::Full);
        let (queue, commands) = mpsc::channel();
        let (claim, claim_outcome) = sql_write(WriteKind::UNSYNCED, 5, "INSERT INTO t VALUES (1)");
        let (step, step_outcome) = sql_write(WriteKind::CONTINUING, 5, "INSERT INTO t VALUES (2)");
        queue.send(Command::Write(step)).expect("queue");
        let gather = gather(&commands, 2);
        let group = commit_batch(&conn, vec![claim], Some(gather), &mut sync, &counters);
        let synchronous = |conn: &Connection| -> i64 {
            conn.pragma_query_value(None, "synchronous", |row| row.get(0))
                .expect("synchronous")
        };
        // The claim committed on its own, without a flush; the step was not run in it.
        assert_eq!(synchronous(&conn), 1);
        assert_eq!(rows(&conn), 1);
        assert_eq!(claim_outcome.try_recv().expect("reported"), None);
        assert!(
            step_outcome.try_recv().is_err(),
            "the step was reported early"
        );
        let Some(Command::Write(step)) = group.carried else {
            panic!("the step was not handed back");
        };
        commit_batch(&conn, vec![step], None, &mut sync, &counters);
        assert_eq!(synchronous(&conn), 2);
        assert_eq!(rows(&conn), 2);
        assert_eq!(step_outcome.try_recv().expect("reported"), None);
    }

    fn store_with_commit_delay(dir: &Path, delay: Duration) -> SqliteStore {
        let options = SqliteOptions {
            synchronous: Synchronous::Full,
            commit_delay: Some(delay),
            ..SqliteOptions::default()
        };
        SqliteStore::open_with(dir.join("db.sqlite"), options).expect("open")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_writer_holds_a_group_for_the_next_writes_of_the_runs_it_just_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A delay far longer than any write takes: every group waits for the runs it expects.
        let store = store_with_commit_delay(dir.path(), Duration::from_secs(2));
        let before = store.stats().transactions;
        let writes = 20;
        let bound = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(
                continuing_writes(store.clone(), writes),
                continuing_writes(store.clone(), writes),
            )
        });
        bound.await.expect("the writes finish");
        let groups = store.stats().transactions - before;
        // Without the delay the two runs alternate (about one group per write, 40); with it,
        // after the first group, each holds one write of each run.
        assert!(
            groups <= writes as u64 + 1,
            "{groups} groups for 2 x {writes} writes"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_run_never_waits_for_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_commit_delay(dir.path(), Duration::from_secs(10));
        // One delay per write would take 200 s; the run's own next write ends every wait.
        let started = Instant::now();
        let bound = tokio::time::timeout(
            Duration::from_secs(60),
            continuing_writes(store.clone(), 20),
        );
        bound.await.expect("the writes finish");
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_new_database_gets_small_pages_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = SqliteStore::open(dir.path().join("fresh.sqlite")).expect("open");
        fresh.migrate().await.expect("migrate");
        assert_eq!(writer_pragma(&fresh, "page_size").await, 2_048);

        // A database created elsewhere with SQLite's default pages (the TypeScript runtime's).
        let existing = dir.path().join("existing.sqlite");
        Connection::open(&existing)
            .and_then(|conn| {
                conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE other (x INTEGER);")
            })
            .expect("create a database");
        let store = SqliteStore::open(&existing).expect("open");
        store.migrate().await.expect("migrate");
        assert_eq!(writer_pragma(&store, "page_size").await, 4_096);
        let run = NewRun {
            job_name: "job".into(),
            input: Value::Null,
            idempotency_key: None,
            concurrency_key: None,
            labels: Default::default(),
            coalesce: None,
        };
        let enqueued = store.enqueue(run, Timestamp::now()).await.expect("enqueue");
        assert_eq!(enqueued.run.status, crate::RunStatus::Pending);

        let memory = SqliteStore::open_with(
            ":memory:",
            SqliteOptions {
                page_size: 8_192,
                ..SqliteOptions::default()
            },
        )
        .expect("open");
        assert_eq!(writer_pragma(&memory, "page_size").await, 8_192);
    }

    /// A read whose future is dropped (a client gone, a timeout) is interrupted instead of
    /// running on, on a reader (file) and on the writer thread (memory); the connection then
    /// serves the next read; `get_runs_within` gives up with `Error::Timeout` on its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_read_is_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SqliteStore::open(dir.path().join("abandon.sqlite")).expect("open");
        let memory = SqliteStore::memory().expect("memory");
        for store in [file, memory] {
            store.migrate().await.expect("migrate");
            let (ended, end) = std::sync::mpsc::channel::<String>();
            let endless = store.read("test", move |conn| {
                let outcome = conn.query_row(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                     SELECT count(*) FROM c",
                    [],
                    |row| row.get::<_, i64>(0),
                );
                let _ = ended.send(format!("{outcome:?}"));
                Ok(())
            });
            let abandoned = tokio::time::timeout(Duration::from_millis(200), endless).await;
            assert!(abandoned.is_err(), "the endless read cannot finish");
            let outcome =
                tokio::task::spawn_blocking(move || end.recv_timeout(Duration::from_secs(10)))
                    .await
                    .expect("join")
                    .expect("the read was interrupted");
            assert!(outcome.contains("interrupted"), "{outcome}");
            assert_eq!(store.schema_version().await.expect("next read"), 1);
            let listed = store
                .get_runs_within(&RunFilter::new(), Duration::from_secs(5))
                .await
                .expect("a quick listing");
            assert!(listed.is_empty());
        }
    }

    #[tokio::test]
    async fn a_checkpoint_with_a_reader_in_the_way_reports_busy_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("busy.sqlite");
        let store = SqliteStore::open(&path).expect("open");
        store.migrate().await.expect("migrate");
        let run = || NewRun {
            job_name: "job".into(),
            input: Value::Null,
            idempotency_key: None,
            concurrency_key: None,
            labels: Default::default(),
            coalesce: None,
        };
        store
            .enqueue(run(), Timestamp::now())
            .await
            .expect("enqueue");
        assert!(
            store.checkpoint().await.expect("checkpoint"),
            "nothing in the way"
        );

        // A reader holds a snapshot that predates the next write.
        let reader = Connection::open(&path).expect("reader");
        reader.execute_batch("BEGIN").expect("begin");
        let runs: i64 = reader
            .query_row("SELECT count(*) FROM durably_runs", [], |row| row.get(0))
            .expect("read");
        assert_eq!(runs, 1);
        store
            .enqueue(run(), Timestamp::now())
            .await
            .expect("enqueue");
        let started = Instant::now();
        assert!(!store.checkpoint().await.expect("checkpoint"), "busy");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the checkpoint waited for the reader ({:?}; busy timeout 10 s)",
            started.elapsed()
        );
        // The writer's own busy timeout is back: writes still wait for locks as configured.
        assert_eq!(writer_pragma(&store, "busy_timeout").await, 10_000);

        reader.execute_batch("COMMIT").expect("end the read");
        assert!(store.checkpoint().await.expect("checkpoint"), "reader gone");
    }

    #[test]
    fn an_invalid_page_size_is_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in [0, 1_000, 256, 131_072] {
            let path = dir.path().join(format!("bad-{bad}.sqlite"));
            let options = SqliteOptions {
                page_size: bad,
                ..SqliteOptions::default()
            };
            let error = SqliteStore::open_with(&path, options).expect_err("refused");
            assert!(
                matches!(&error, Error::Config(message) if message.contains("page size")),
                "{error}"
            );
            assert!(!path.exists(), "{} was created", path.display());
        }
    }

    #[tokio::test]
    async fn the_wal_checkpoints_sooner_when_every_commit_is_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = |name: &str, options: SqliteOptions| {
            SqliteStore::open_with(dir.path().join(name), options).expect("open")
        };
        let normal = open("normal.sqlite", SqliteOptions::default());
        assert_eq!(writer_pragma(&normal, "wal_autocheckpoint").await, 10_000);
        let full = open(
            "full.sqlite",
            SqliteOptions {
                synchronous: Synchronous::Full,
                ..SqliteOptions::default()
            },
        );
        assert_eq!(writer_pragma(&full, "wal_autocheckpoint").await, 1_000);
        let chosen = open(
            "chosen.sqlite",
            SqliteOptions {
                synchronous: Synchronous::Full,
                wal_autocheckpoint: Some(0),
                ..SqliteOptions::default()
            },
        );
        assert_eq!(writer_pragma(&chosen, "wal_autocheckpoint").await, 0);
    }

    #[tokio::test]
    async fn under_full_only_groups_of_claims_and_renewals_skip_the_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SqliteOptions {
            synchronous: Synchronous::Full,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(dir.path().join("db.sqlite"), options).expect("open");
        store.migrate().await.expect("migrate");
        assert_eq!(writer_sync_mode(&store).await, 2);

        let now = Timestamp::now();
        let lease = Duration::from_secs(30);
        let run = NewRun {
            job_name: "job".into(),
            input: Value::Null,
            idempotency_key: None,
            concurrency_key: None,
            labels: Default::default(),
            coalesce: None,
        };
        store.enqueue(run, now).await.expect("enqueue");
        assert_eq!(writer_sync_mode(&store).await, 2, "an enqueue is synced");

        let claimed = store.claim("w", now, lease, 1).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(writer_sync_mode(&store).await, 1, "a claim alone is not");
        let fence = Fence {
            run_id: claimed[0].id.clone(),
            generation: claimed[0].lease_generation,
        };
        let renewed = store.renew_lease(&fence, now, lease).await.expect("renew");
        assert!(renewed.is_some());
        assert_eq!(writer_sync_mode(&store).await, 1, "nor is a renewal");

        let completed = store
            .complete_run(&fence, None, now, false)
            .await
            .expect("complete");
        assert!(completed);
        assert_eq!(writer_sync_mode(&store).await, 2, "a completion is synced");
        let run = store
            .get_run(&fence.run_id)
            .await
            .expect("read")
            .expect("run");
        assert_eq!(run.status, crate::run::RunStatus::Completed);
    }
}
