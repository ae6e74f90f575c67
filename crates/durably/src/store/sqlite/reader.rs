//! The reader pool, and reads abandoned by their caller (interrupted in SQLite).

use super::*;

/// Where a read stands, for [`Abandon`].
#[derive(Default)]
pub(super) enum ReadState {
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
pub(super) struct Abandon(pub(super) Arc<Mutex<ReadState>>);

impl Abandon {
    pub(super) fn finished(self) {
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

/// Reader connections to a file database, opened lazily and kept for reuse.
#[derive(Clone)]
pub(super) struct ReaderPool {
    pub(super) path: PathBuf,
    pub(super) options: SqliteOptions,
    pub(super) idle: Arc<Mutex<Vec<Connection>>>,
}

impl ReaderPool {
    pub(super) fn with_connection<R>(
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

    pub(super) fn open(&self) -> rusqlite::Result<Connection> {
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
