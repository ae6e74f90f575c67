//! Embedded SQLite backend (`rusqlite`, bundled SQLite).
//!
//! One writer thread owns the only writing connection and serves every write in order. When
//! several callers' writes queue up, it runs them in **one** `BEGIN IMMEDIATE` transaction (each
//! inside its own savepoint, so one failing operation rolls back only itself) and acknowledges
//! each caller only after the `COMMIT` (group commit). Reads use a small pool of separate
//! connections, so readers never wait behind the writer (WAL mode). An in-memory database
//! (`:memory:`) has a single connection, so its reads run on the writer thread too.

mod ops;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Enqueued, Fence, NewLog, NewRun, NewStep, RunPatch, Store};
use crate::error::{Error, Result};
use crate::run::{Log, Progress, Run, RunFilter, Step};
use crate::time::Timestamp;

/// SQLite's `synchronous` setting: how hard each commit waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// No fsync at all (fast, unsafe on power loss).
    Off,
    /// WAL default: durable against process crashes; the last commits may be lost on power loss.
    #[default]
    Normal,
    /// fsync on every commit.
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
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(10),
            max_group_commit: 512,
            max_readers: 4,
        }
    }
}

/// What the writer thread runs for one queued write: given the connection (or `None` when the
/// transaction could not start) and whether other writes share the transaction (then the op runs
/// in its own savepoint, so its failure rolls back only itself), it does its work and returns
/// what to report after `COMMIT`.
type WriteOp = Box<dyn FnOnce(Option<&Connection>, bool) -> (Completion, Failed) + Send>;
/// Whether the operation itself failed (its completion then carries the error).
type Failed = bool;
/// Reports an operation's result; receives the commit error, if the commit failed.
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;

enum Command {
    /// A write, batched with others into one transaction.
    Write(WriteOp),
    /// Work that must run outside any transaction (checkpoint, reads of an in-memory database).
    Direct(Box<dyn FnOnce(&Connection) + Send>),
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

/// Counters of the writer thread, for monitoring group commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Write transactions committed (or attempted).
    pub transactions: u64,
    /// Write operations served; `operations / transactions` is the group-commit factor.
    pub operations: u64,
}

#[derive(Default)]
struct WriterCounters {
    transactions: std::sync::atomic::AtomicU64,
    operations: std::sync::atomic::AtomicU64,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    counters: Arc<WriterCounters>,
    readers: Option<ReaderPool>,
    location: String,
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
        let max_batch = options.max_group_commit.max(1);
        let counters = Arc::new(WriterCounters::default());
        let writer_counters = counters.clone();
        thread::Builder::new()
            .name("durably-sqlite-writer".into())
            .spawn(move || writer_loop(writer, receiver, max_batch, &writer_counters))
            .map_err(|e| Error::storage("open", e))?;

        let readers = (!in_memory).then(|| ReaderPool {
            path: path.to_path_buf(),
            options: options.clone(),
            idle: Arc::new(Mutex::new(Vec::new())),
        });
        Ok(SqliteStore {
            shared: Arc::new(Shared {
                commands,
                counters,
                readers,
                location,
            }),
        })
    }

    /// Group-commit counters of this store's writer thread.
    pub fn stats(&self) -> WriterStats {
        use std::sync::atomic::Ordering::Relaxed;
        WriterStats {
            transactions: self.shared.counters.transactions.load(Relaxed),
            operations: self.shared.counters.operations.load(Relaxed),
        }
    }

    /// The path this store was opened with.
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    /// Runs `work` on the writer thread inside the current group-commit transaction (in its own
    /// savepoint when other writes share the transaction). The result is delivered after the
    /// transaction commits.
    async fn write<R, F>(&self, operation: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel::<Result<R>>();
        let op: WriteOp = Box::new(move |conn, shared| {
            let outcome = match conn {
                Some(conn) if shared => in_savepoint(conn, work),
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
        self.send(operation, Command::Write(op), receiver).await
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
        self.shared
            .commands
            .send(command)
            .map_err(|_| Error::storage(operation, "the SQLite writer thread has stopped"))?;
        receiver.await.map_err(|_| {
            Error::storage(operation, "the SQLite writer thread dropped the request")
        })?
    }

    /// Runs `work` on a reader connection (on the writer thread for in-memory databases).
    async fn read<R, F>(&self, operation: &'static str, work: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        match &self.shared.readers {
            None => self.direct(operation, work).await,
            Some(pool) => {
                let pool = pool.clone();
                tokio::task::spawn_blocking(move || pool.with_connection(operation, work))
                    .await
                    .map_err(|e| Error::storage(operation, e))?
            }
        }
    }
}

fn configure(
    conn: &Connection,
    options: &SqliteOptions,
    file_backed: bool,
) -> rusqlite::Result<()> {
    conn.busy_timeout(options.busy_timeout)?;
    if file_backed {
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={}; PRAGMA temp_store=MEMORY;",
        options.synchronous.pragma_value()
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

fn writer_loop(
    conn: Connection,
    commands: mpsc::Receiver<Command>,
    max_batch: usize,
    counters: &WriterCounters,
) {
    let mut carried: Option<Command> = None;
    loop {
        let first = match carried.take() {
            Some(command) => command,
            None => match commands.recv() {
                Ok(command) => command,
                Err(_) => return, // every store handle is gone
            },
        };
        let op = match first {
            Command::Direct(work) => {
                work(&conn);
                continue;
            }
            Command::Write(op) => op,
        };
        let mut batch = vec![op];
        while batch.len() < max_batch {
            match commands.try_recv() {
                Ok(Command::Write(op)) => batch.push(op),
                Ok(direct) => {
                    carried = Some(direct);
                    break;
                }
                Err(_) => break,
            }
        }
        counters
            .transactions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counters
            .operations
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        commit_batch(&conn, batch);
    }
}

fn commit_batch(conn: &Connection, batch: Vec<WriteOp>) {
    if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::warn!(%error, "SQLite could not begin a write transaction");
        for op in batch {
            (op(None, false).0)(None);
        }
        return;
    }
    let shared = batch.len() > 1;
    let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
    let mut failed_alone = false;
    for op in batch {
        let (done, failed) = op(Some(conn), shared);
        failed_alone |= failed && !shared;
        completions.push(done);
    }
    if failed_alone {
        // A lone operation failed without a savepoint: undo whatever it wrote.
        let _ = conn.execute_batch("ROLLBACK");
        completions.into_iter().for_each(|done| done(None));
        return;
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => completions.into_iter().for_each(|done| done(None)),
        Err(error) => {
            tracing::warn!(%error, "SQLite group commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            let message = error.to_string();
            completions
                .into_iter()
                .for_each(|done| done(Some(&message)));
        }
    }
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
        self.write("migrate", schema::migrate).await
    }

    async fn schema_version(&self) -> Result<i64> {
        self.read("schema_version", schema::current_version).await
    }

    async fn enqueue(&self, run: NewRun, now: Timestamp) -> Result<Enqueued> {
        self.write("enqueue", move |conn| ops::enqueue(conn, &run, now))
            .await
    }

    async fn enqueue_many(&self, runs: Vec<NewRun>, now: Timestamp) -> Result<Vec<Enqueued>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        self.write("enqueue_many", move |conn| {
            runs.iter()
                .map(|run| in_savepoint(conn, |conn| ops::enqueue(conn, run, now)))
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
        self.write("claim", move |conn| {
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
        self.write("renew_lease", move |conn| {
            ops::renew_lease(conn, &fence, now, lease)
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
        self.write("persist_step", move |conn| {
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
        self.write("update_progress", move |conn| {
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
        self.write("append_log", move |conn| {
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
        self.write("delete_run", move |conn| ops::delete_run(conn, &id))
            .await
    }

    async fn purge_runs(&self, older_than: Timestamp, limit: u64) -> Result<u64> {
        self.write("purge_runs", move |conn| {
            ops::purge_runs(conn, older_than, limit)
        })
        .await
    }

    async fn release_expired_leases(&self, now: Timestamp, drop_steps: bool) -> Result<Vec<Run>> {
        self.write("release_expired_leases", move |conn| {
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

    async fn checkpoint(&self) -> Result<()> {
        if self.shared.readers.is_none() {
            return Ok(()); // in-memory: no WAL
        }
        self.direct("checkpoint", |conn| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(|e| Error::storage("checkpoint", e))
        })
        .await
    }
}
