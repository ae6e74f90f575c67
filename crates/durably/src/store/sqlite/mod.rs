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
//!
//! On wasm32 (feature `browser`) there are no threads: the one connection runs each write in
//! its own transaction and each read, inline on the caller's task (`inline.rs`), through the
//! same operations and SQL.

use crate::store::sqlite_sql as sql;
#[cfg(target_arch = "wasm32")]
mod inline;
mod ops;
mod options;
mod overview;
mod reader;
mod schedules;
mod schema;
mod store;
mod writer;

use std::path::{Path, PathBuf};
#[cfg(not(target_arch = "wasm32"))]
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
#[cfg(not(target_arch = "wasm32"))]
use std::thread;
use std::time::Duration;
#[cfg(not(target_arch = "wasm32"))]
use std::time::Instant;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::{
    AttemptStart, ClaimRequest, Enqueued, Fence, Finished, NewLog, NewRun, NewStep, RunAdmin,
    RunPatch, Signalled, Store, Transition, WriterStats,
};
use crate::attempts::StepAttempt;
use crate::error::{Error, Result};
use crate::maintenance::{Maintained, MaintenanceTask};
use crate::run::{Disposition, Log, Progress, Run, RunFilter, Step};
use crate::time::Timestamp;
use crate::waits::{self, DurableWait, NewWait};
use serde_json::Value;

use options::configure;
pub use options::{SqliteOptions, Synchronous};
use reader::*;
use writer::*;

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
    /// Step rows outlive their run (the options' `preserve_steps`; see
    /// [`Store::with_step_policy`] for views with the other policy).
    preserve_steps: bool,
}

#[derive(Default)]
struct WriterCounters {
    transactions: std::sync::atomic::AtomicU64,
    operations: std::sync::atomic::AtomicU64,
    /// Groups whose results the writer thread has sent.
    replied: std::sync::atomic::AtomicU64,
}

struct Shared {
    #[cfg(not(target_arch = "wasm32"))]
    commands: mpsc::Sender<Command>,
    /// The one connection, on wasm32 (no writer thread).
    #[cfg(target_arch = "wasm32")]
    inline: Mutex<inline::InlineWriter>,
    #[cfg(not(target_arch = "wasm32"))]
    reply_spin: Duration,
    /// Callers waiting for the writer thread.
    #[cfg(not(target_arch = "wasm32"))]
    waiting: AtomicUsize,
    counters: Arc<WriterCounters>,
    readers: Option<ReaderPool>,
    location: String,
}

/// Counts one caller waiting for the writer thread, for as long as it lives.
#[cfg(not(target_arch = "wasm32"))]
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// No other caller was waiting when this one arrived.
    alone: bool,
}

#[cfg(not(target_arch = "wasm32"))]
impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting {
            count,
            alone: before == 0,
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
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

/// Refuses, before SQLite's own `unable to open database file`, a path that looks like a
/// database URL of another kind (`mysql://…`) and a file whose directory does not exist.
fn check_file_location(path: &Path) -> Result<()> {
    let text = path.to_string_lossy();
    if let Some((scheme, _)) = text.split_once("://")
        && !scheme.contains(['/', '\\'])
    {
        return Err(Error::Config(format!(
            "Cannot open {text} as a SQLite database: durably does not support `{scheme}://` \
             URLs. Give a SQLite file path (`app.db`), a `postgres://` URL to \
             `Durably::builder().postgres(url)` (feature `postgres`) or a `libsql://` URL to \
             `Durably::builder().libsql(url, token)` (feature `libsql`)"
        )));
    }
    // (On wasm32 a path names a file of SQLite's virtual file system, not of a directory.)
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(directory) = path.parent()
        && !directory.as_os_str().is_empty()
        && !directory.is_dir()
    {
        return Err(Error::Config(format!(
            "Cannot open the SQLite database {text}: the directory {} does not exist (create it \
             first)",
            directory.display()
        )));
    }
    Ok(())
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
        Self::open_in_vfs(path.as_ref(), options, None)
    }

    /// Opens the database at `path` with `options`, through the SQLite VFS named `vfs` (the
    /// default one when `None`; another one has no WAL, as OPFS's).
    fn open_in_vfs(path: &Path, options: SqliteOptions, vfs: Option<&str>) -> Result<Self> {
        let page_size = options.page_size;
        if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(Error::Config(format!(
                "Invalid SQLite page size: {page_size}. Use a power of two from 512 to 65536"
            )));
        }
        let in_memory = path.as_os_str() == ":memory:";
        let location = path.display().to_string();
        if !in_memory {
            check_file_location(path)?;
        }
        let writer = match vfs {
            _ if in_memory => Connection::open_in_memory(),
            None => Connection::open(path),
            Some(vfs) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs),
        }
        .map_err(|e| {
            Error::storage(
                "open",
                format!("cannot open SQLite database {location}: {e}"),
            )
        })?;
        configure(&writer, &options, !in_memory && vfs.is_none())
            .map_err(|e| Error::storage("open", format!("cannot configure {location}: {e}")))?;

        #[cfg(target_arch = "wasm32")]
        return Ok(inline::open(writer, &options, location));
        #[cfg(not(target_arch = "wasm32"))]
        Self::start_writer(writer, path, options, location, in_memory)
    }

    /// The store around `writer`, served by a writer thread of its own.
    #[cfg(not(target_arch = "wasm32"))]
    fn start_writer(
        writer: Connection,
        path: &Path,
        options: SqliteOptions,
        location: String,
        in_memory: bool,
    ) -> Result<Self> {
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
            preserve_steps: options.preserve_steps,
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
            lease_renewal_statements: 0,
            lease_renewals: 0,
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

    #[cfg(not(target_arch = "wasm32"))]
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
            #[cfg(target_arch = "wasm32")]
            Some(pool) => pool.with_connection(operation, work),
            #[cfg(not(target_arch = "wasm32"))]
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
        assert_eq!(versions(&store).await, vec![1, 2, 3, 4, 100, 300]);
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
        assert_eq!(versions(&store).await, vec![1, 2, 3, 4, 300]);
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
            ..Default::default()
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
            assert_eq!(
                store.schema_version().await.expect("next read"),
                crate::store::SCHEMA_VERSION
            );
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
            ..Default::default()
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
            ..Default::default()
        };
        store.enqueue(run, now).await.expect("enqueue");
        assert_eq!(writer_sync_mode(&store).await, 2, "an enqueue is synced");

        let claimed = store
            .claim(&ClaimRequest::new("w", lease, 1), now)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        assert_eq!(writer_sync_mode(&store).await, 1, "a claim alone is not");
        let fence = Fence::of(&claimed[0]);
        let renewed = store.renew_lease(&fence, now, lease).await.expect("renew");
        assert!(renewed.is_some());
        assert_eq!(writer_sync_mode(&store).await, 1, "nor is a renewal");

        let completed = store
            .finish_run(&fence, Transition::Complete { output: None }, now, None)
            .await
            .expect("complete");
        assert!(completed.landed);
        assert_eq!(writer_sync_mode(&store).await, 2, "a completion is synced");
        let run = store
            .get_run(&fence.run_id)
            .await
            .expect("read")
            .expect("run");
        assert_eq!(run.status, crate::run::RunStatus::Completed);
    }

    /// The claim's lookups of pending runs walk an index in claim order (durably's for runs
    /// of a priority other than 0, upstream's `(status, created_at)` for the others): no sort
    /// of the pending runs, whatever the planner knows of the table.
    #[test]
    fn the_claim_walks_the_priority_index_without_sorting() {
        let conn = Connection::open_in_memory().expect("open");
        schema::migrate(&conn).expect("migrate");
        let with_rows = [false, true];
        for filled in with_rows {
            if filled {
                conn.execute_batch(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
                     INSERT INTO durably_runs (id, job_name, input, status, labels, \
                       current_step_index, completed_step_count, lease_generation, created_at, \
                       updated_at) \
                     SELECT printf('r%05d', i), 'job', '{}', \
                       CASE WHEN i % 4 = 0 THEN 'pending' ELSE 'completed' END, '{}', 0, 0, 0, \
                       '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z' FROM n; ANALYZE",
                )
                .expect("fill");
            }
            for statement in [
                sql::FIRST_FREE_PRIORITIZED,
                sql::OLDEST_FREE_PENDING,
                sql::FIRST_FREE_PRIORITIZED_RESUMABLE,
                sql::OLDEST_FREE_EXPIRED_LEASE,
                sql::OLDEST_FREE_RESUMABLE,
            ] {
                let plan: Vec<String> = conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {statement}"))
                    .expect("explain")
                    .query_map(["2026-01-01T00:00:00.000Z"], |row| row.get::<_, String>(3))
                    .expect("plan")
                    .collect::<rusqlite::Result<_>>()
                    .expect("rows");
                let plan = plan.join("\n");
                let index = match statement {
                    sql::FIRST_FREE_PRIORITIZED => Some("durably_rs_runs_pending_priority"),
                    sql::OLDEST_FREE_PENDING | sql::OLDEST_FREE_RESUMABLE => {
                        Some("idx_durably_runs_status_created")
                    }
                    sql::FIRST_FREE_PRIORITIZED_RESUMABLE => {
                        Some("durably_rs_runs_waiting_priority")
                    }
                    _ => None,
                };
                if let Some(index) = index {
                    assert!(plan.contains(index), "filled {filled}: {plan}");
                    assert!(!plan.contains("TEMP B-TREE"), "filled {filled}: {plan}");
                }
            }
        }
    }
}
