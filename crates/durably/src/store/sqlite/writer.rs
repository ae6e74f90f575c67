//! The writer thread: one connection that executes every write, committing the writes queued
//! at once in one transaction (group commit), each in a savepoint of its own.

use super::*;
// The writer thread's own (the spin and gather loops); on wasm32 they never run.
#[cfg(target_arch = "wasm32")]
use std::{thread, time::Instant};

/// What the writer thread runs for one queued write: given the connection (or `None` when the
/// transaction could not start) and whether to run in its own savepoint, it does its work and
/// returns what to report after `COMMIT`.
pub(super) type WriteOp = Box<dyn FnOnce(Option<&Connection>, bool) -> (Completion, Failed) + Send>;
/// Whether the operation itself failed (its completion then carries the error).
pub(super) type Failed = bool;
/// Reports an operation's result; receives the commit error, if the commit failed.
pub(super) type Completion = Box<dyn FnOnce(Option<&str>) + Send>;

pub(super) enum Command {
    /// A write, batched with others into one transaction.
    Write(QueuedWrite),
    /// Work that must run outside any transaction (checkpoint, reads of an in-memory database).
    Direct(Box<dyn FnOnce(&Connection) + Send>),
}

/// A write waiting for the writer thread.
pub(super) struct QueuedWrite {
    pub(super) op: WriteOp,
    pub(super) kind: WriteKind,
    /// [`WriterCounters::replied`] when the write was queued: a write queued after a group's
    /// results went out may be the next write of one of that group's runs.
    pub(super) after: u64,
}

/// How the writer thread treats a write.
#[derive(Clone, Copy)]
pub(super) struct WriteKind {
    /// The operation may fail after writing something itself, so it runs in a savepoint when
    /// other writes share its transaction.
    pub(super) isolated: bool,
    /// Its commit must reach the disk before it is reported (under `synchronous = FULL`).
    pub(super) synced: bool,
    /// A lease holder's write in the middle of a run (a step, progress, a log line): the same
    /// run usually writes again a moment after this one is reported.
    pub(super) continues: bool,
}

impl WriteKind {
    pub(super) const PLAIN: WriteKind = WriteKind {
        isolated: false,
        synced: true,
        continues: false,
    };
    pub(super) const ISOLATED: WriteKind = WriteKind {
        isolated: true,
        synced: true,
        continues: false,
    };
    pub(super) const UNSYNCED: WriteKind = WriteKind {
        isolated: false,
        synced: false,
        continues: false,
    };
    pub(super) const CONTINUING: WriteKind = WriteKind {
        isolated: false,
        synced: true,
        continues: true,
    };
}

pub(super) fn in_savepoint<R>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<R>,
) -> Result<R> {
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
#[cfg(not(target_arch = "wasm32"))]
pub(super) struct WriterConfig {
    pub(super) max_batch: usize,
    /// See [`SqliteOptions::writer_spin`].
    pub(super) spin: Duration,
    /// See [`SqliteOptions::commit_delay`].
    pub(super) commit_delay: Duration,
}

#[cfg(not(target_arch = "wasm32"))]
pub(super) fn writer_loop(
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
pub(super) struct Gather<'a> {
    pub(super) commands: &'a mpsc::Receiver<Command>,
    pub(super) expected: usize,
    pub(super) replied: u64,
    pub(super) delay: Duration,
    pub(super) max_batch: usize,
}

impl Gather<'_> {
    /// Whether `write` is the next write of a run the last group served.
    pub(super) fn returning(&self, write: &QueuedWrite) -> bool {
        write.after >= self.replied
    }

    /// The next command for a group that holds `size` writes of which `arrived` are returning
    /// ones, or `None` when the group should commit.
    pub(super) fn next(
        &self,
        size: usize,
        arrived: usize,
        until: &mut Option<Instant>,
    ) -> Option<Command> {
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
pub(super) struct CommitSync {
    pub(super) configured: Synchronous,
    /// The connection is set to commit without a flush (the open group needs none).
    pub(super) relaxed: bool,
}

impl CommitSync {
    pub(super) fn new(configured: Synchronous) -> Self {
        CommitSync {
            configured,
            relaxed: false,
        }
    }

    /// Sets the connection's mode for a group that does (or does not) need an fsync.
    pub(super) fn prepare(&mut self, conn: &Connection, synced: bool) -> rusqlite::Result<()> {
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
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn next_command(commands: &mpsc::Receiver<Command>, spin: Duration) -> Option<Command> {
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
pub(super) fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Rolls back the open transaction, if SQLite has not already done so.
pub(super) fn roll_back(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = control(conn, "ROLLBACK");
    }
}

/// What one group left behind for the writer loop.
pub(super) struct GroupOutcome {
    /// A command that arrived while the group was held open and must run after it.
    pub(super) carried: Option<Command>,
    /// The group's writes in the middle of a run (see [`WriteKind::continues`]).
    pub(super) continuing: usize,
}

pub(super) fn commit_batch(
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
